/* conns.c - see conns.h.
 *
 * DESIGN
 * Threads: the daemon's MHD polling threads (one, or a pool: [server] threads; each connection
 * stays on one) open, complete, end and close connections; the
 * deadline timer (one entry on the compute calls' watcher thread, parked.c, due at the oldest
 * waiting connection's deadline) runs on that thread; /metrics readers take the stats. The
 * guard is reference-counted: a timer that fires holds a reference, so free() never pulls it
 * from under one. One mutex
 * guards the queue, the counts and each connection's state; it is never held while calling out.
 * A connection is WAITING (in the waiting queue, oldest first: a connection joins at the tail
 * when it opens or when its request ends, so the queue is also in deadline order), ANSWERING
 * (its request is complete and its answer is being sent: in the answering queue, oldest first),
 * PARKED (its request is computing: in no queue, never closed) or CLOSING (shut down by us; MHD
 * has yet to notice). To make room, the oldest waiting connection goes first; only when none
 * waits, the oldest one answering for at least a second (a slow reader of pipelined answers). MHD
 * tells us a connection is closed before it closes the socket, so the fd we shut down is always
 * still that connection's. The timer is armed only when it is not already: it may fire for a
 * connection that has left the queue since, and then re-arms for the new head; at most one wake-up
 * per deadline. */
#include "conns.h"

#include <sys/socket.h>

/* Connections kept free for newcomers: past max_connections - HEADROOM, a new connection closes
 * the oldest waiting one. */
#define HEADROOM(max) MAX ((max) / 16, 1)
/* A connection answering for less than this is not closed to make room: its answer is on its
 * way. */
#define MIN_ANSWERING_US G_USEC_PER_SEC
/* Closes are logged at most this often, as counts. */
#define REPORT_INTERVAL_US (10 * G_USEC_PER_SEC)

typedef enum { WAITING, ANSWERING, PARKED, CLOSING } ConnState;

struct CrunchConn {
  CrunchConns *guard;
  gint fd;
  ConnState state;
  gint64 since;             /* monotonic: when it entered its queue */
  GList link;               /* in guard->waiting while WAITING, guard->answering while ANSWERING */
  gboolean client_verified; /* its TLS client certificate passed ([tls] client_ca) */
};

struct CrunchConns {
  gint ref;
  GMutex lock;
  gchar *name;
  guint max_connections;
  gint64 timeout_us; /* 0 = none */
  GQueue waiting;    /* CrunchConn, oldest first */
  GQueue answering;  /* CrunchConn, oldest first */
  guint open, closing;
  guint64 timed_out, made_room;
  guint64 reported_timed_out, reported_made_room;
  gint64 next_report;
  CrunchParked *watcher;
  CrunchParkedEntry *timer; /* NULL: not armed */
  gint64 armed;             /* its deadline; -1: not armed */
  gboolean stopped;         /* freed: fire no more */
};

static void on_timer (gpointer item, CrunchJobOutcome why, gpointer data);
static void arm_locked (CrunchConns *self);

static gpointer
conns_ref (gpointer data)
{
  CrunchConns *self = data;

  g_atomic_int_inc (&self->ref);
  return self;
}

static void
conns_unref (gpointer data)
{
  CrunchConns *self = data;

  if (!g_atomic_int_dec_and_test (&self->ref))
    return;
  g_mutex_clear (&self->lock);
  g_free (self->name);
  g_free (self);
}

static const CrunchParkedKind timer_kind = {on_timer, NULL, conns_ref, conns_unref};

CrunchConns *
crunch_conns_new (guint max_connections, const gchar *name, CrunchParked *watcher)
{
  CrunchConns *self = g_new0 (CrunchConns, 1);

  g_mutex_init (&self->lock);
  self->name = g_strdup (name);
  self->max_connections = max_connections;
  g_queue_init (&self->waiting);
  g_queue_init (&self->answering);
  self->armed = -1;
  self->ref = 1;
  self->watcher = watcher;
  return self;
}

void
crunch_conns_set_timeout (CrunchConns *self, guint seconds)
{
  g_mutex_lock (&self->lock);
  self->timeout_us = (gint64)seconds * G_USEC_PER_SEC;
  self->armed = -1;
  arm_locked (self); /* for the new deadline */
  g_mutex_unlock (&self->lock);
}

/* With the lock held: the timer fires at the oldest deadline, or to report closes not yet
 * logged. Only moved earlier (or set): a late wake-up re-arms itself. */
static void
arm_locked (CrunchConns *self)
{
  CrunchConn *oldest = g_queue_peek_head (&self->waiting);
  gint64 when = -1;

  if (oldest != NULL && self->timeout_us > 0)
    when = oldest->since + self->timeout_us;
  if (self->timed_out + self->made_room > self->reported_timed_out + self->reported_made_room)
    when = when < 0 ? self->next_report : MIN (when, self->next_report);
  if (when >= 0 && !self->stopped && (self->armed < 0 || when < self->armed)) {
    crunch_parked_remove (self->watcher, self->timer);
    self->timer = crunch_parked_add_timer (self->watcher, when, self, &timer_kind);
    self->armed = when;
  }
}

/* With the lock held: the queue the connection is in, if any. */
static GQueue *
queue_of (CrunchConns *self, CrunchConn *conn)
{
  return conn->state == WAITING     ? &self->waiting
         : conn->state == ANSWERING ? &self->answering
                                    : NULL;
}

/* With the lock held: out of its queue, into `state`'s (at the tail). */
static void
move_locked (CrunchConns *self, CrunchConn *conn, ConnState state)
{
  GQueue *from = queue_of (self, conn), *to;

  if (from != NULL)
    g_queue_unlink (from, &conn->link);
  conn->state = state;
  to = queue_of (self, conn);
  if (to != NULL) {
    conn->since = g_get_monotonic_time ();
    g_queue_push_tail_link (to, &conn->link);
  }
  if (state == WAITING)
    arm_locked (self);
}

/* With the lock held: a connection is closed; MHD will report it closed. */
static void
close_locked (CrunchConns *self, CrunchConn *conn)
{
  move_locked (self, conn, CLOSING);
  self->closing++;
  shutdown (conn->fd, SHUT_RDWR);
}

/* With the lock held: who makes room for a newcomer, or NULL. */
static CrunchConn *
victim_locked (CrunchConns *self)
{
  CrunchConn *answering = g_queue_peek_head (&self->answering);

  if (self->waiting.head != NULL)
    return self->waiting.head->data;
  if (answering != NULL && g_get_monotonic_time () - answering->since >= MIN_ANSWERING_US)
    return answering;
  return NULL;
}

CrunchConn *
crunch_conns_opened (CrunchConns *self, gint fd)
{
  CrunchConn *conn = g_new0 (CrunchConn, 1);

  conn->guard = self;
  conn->fd = fd;
  conn->link.data = conn;
  g_mutex_lock (&self->lock);
  self->open++;
  /* closing ones still count in MHD's table, but they are on their way out */
  if (self->open - self->closing > self->max_connections - HEADROOM (self->max_connections)) {
    CrunchConn *victim = victim_locked (self);
    if (victim != NULL) {
      close_locked (self, victim);
      self->made_room++;
    }
  }
  move_locked (self, conn, WAITING);
  g_mutex_unlock (&self->lock);
  return conn;
}

void
crunch_conns_request_complete (CrunchConn *conn)
{
  CrunchConns *self = conn->guard;

  g_mutex_lock (&self->lock);
  if (conn->state == WAITING)
    move_locked (self, conn, ANSWERING);
  g_mutex_unlock (&self->lock);
}

void
crunch_conns_request_parked (CrunchConn *conn, gboolean parked)
{
  CrunchConns *self = conn->guard;

  g_mutex_lock (&self->lock);
  if (conn->state != CLOSING)
    move_locked (self, conn, parked ? PARKED : ANSWERING);
  g_mutex_unlock (&self->lock);
}

gboolean
crunch_conns_client_verified (const CrunchConn *conn)
{
  return conn->client_verified;
}

void
crunch_conns_set_client_verified (CrunchConn *conn)
{
  conn->client_verified = TRUE;
}

void
crunch_conns_request_ended (CrunchConn *conn)
{
  CrunchConns *self = conn->guard;

  g_mutex_lock (&self->lock);
  if (conn->state != CLOSING) /* answered, or answered before it was complete (413, 400) */
    move_locked (self, conn, WAITING);
  g_mutex_unlock (&self->lock);
}

void
crunch_conns_closed (CrunchConn *conn)
{
  CrunchConns *self = conn->guard;

  g_mutex_lock (&self->lock);
  if (conn->state == CLOSING)
    self->closing--;
  else
    move_locked (self, conn, PARKED); /* out of its queue */
  self->open--;
  g_mutex_unlock (&self->lock);
  g_free (conn);
}

/* With the lock held: one line for the closes since the last one, at most every 10 s. */
static void
report_locked (CrunchConns *self, gint64 now)
{
  guint64 timed_out = self->timed_out - self->reported_timed_out;
  guint64 made_room = self->made_room - self->reported_made_room;

  if (timed_out + made_room == 0 || now < self->next_report)
    return;
  g_message ("%s: closed %" G_GUINT64_FORMAT " connection(s) that sent no complete request "
             "within [server] request_timeout (%" G_GINT64_FORMAT " s) and %" G_GUINT64_FORMAT
             " to make room for newer ones (the table was nearly full)",
             self->name, timed_out, self->timeout_us / G_USEC_PER_SEC, made_room);
  self->reported_timed_out = self->timed_out;
  self->reported_made_room = self->made_room;
  self->next_report = now + REPORT_INTERVAL_US;
}

/* The watcher thread: the oldest deadline (or a report) is due. */
static void
on_timer (gpointer item, CrunchJobOutcome why, gpointer data)
{
  CrunchConns *self = item;
  gint64 now = g_get_monotonic_time ();
  CrunchConn *oldest;

  g_mutex_lock (&self->lock);
  if (self->stopped) {
    g_mutex_unlock (&self->lock);
    return;
  }
  crunch_parked_remove (self->watcher, g_steal_pointer (&self->timer));
  self->armed = -1;
  while (self->timeout_us > 0 && (oldest = g_queue_peek_head (&self->waiting)) != NULL &&
         now >= oldest->since + self->timeout_us) {
    close_locked (self, oldest);
    self->timed_out++;
  }
  report_locked (self, now);
  arm_locked (self);
  g_mutex_unlock (&self->lock);
}

void
crunch_conns_get_stats (CrunchConns *self, CrunchConnsStats *stats)
{
  g_mutex_lock (&self->lock);
  *stats = (CrunchConnsStats){self->open, self->timed_out, self->made_room};
  g_mutex_unlock (&self->lock);
}

void
crunch_conns_free (CrunchConns *self)
{
  if (self == NULL)
    return;
  g_warn_if_fail (self->open == 0);
  g_mutex_lock (&self->lock);
  self->next_report = 0;
  report_locked (self, g_get_monotonic_time ()); /* what the last interval has not said yet */
  self->stopped = TRUE;
  crunch_parked_remove (self->watcher, g_steal_pointer (&self->timer));
  g_mutex_unlock (&self->lock);
  conns_unref (self); /* a timer firing now holds another reference */
}
