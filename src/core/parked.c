/* parked.c - see parked.h.
 *
 * DESIGN
 * Threads: add()/remove() come from MHD threads (and whichever thread answers a call); the
 * watching runs on the timer thread it is handed (timer-thread.c, shared with the connection
 * guard): one timer whose ready time is the earliest deadline and which also fires when the
 * epoll set of parked sockets has a hang-up (EPOLLRDHUP/EPOLLHUP). add() moves the ready time
 * earlier when it must; both it and the timer set it under the lock, so neither undoes the
 * other. Entries live in a hash table keyed by a serial number that is also the epoll cookie, so
 * an event for an entry removed meanwhile finds nothing (no dangling pointers). A fired entry
 * stays registered (without events) until remove(), but never fires twice. `expire` runs without
 * the lock held, on a reference the timer took. free() removes the timer; the memory goes when
 * GLib drops the timer's callback data, after any dispatch under way. */
#include "parked.h"

#include <errno.h>
#include <sys/epoll.h>
#include <unistd.h>

struct CrunchParkedEntry {
  guint64 serial;
  gint fd;
  gint64 deadline_us;
  gpointer item;
  GSequenceIter *by_deadline; /* NULL once fired or without deadline */
  gboolean fired;
};

struct CrunchParked {
  GMutex lock;
  GHashTable *entries;  /* serial -> entry */
  GSequence *deadlines; /* entries ordered by deadline */
  gint64 next_wake_us;  /* the timer's ready time; G_MAXINT64 = no deadline */
  guint64 next_serial;
  gint epfd;
  GSource *timer;
  CrunchParkedExpire expire;
  gpointer expire_data;
  gpointer (*ref) (gpointer);
  GDestroyNotify unref;
};

static gint
by_deadline (gconstpointer a, gconstpointer b, gpointer user_data)
{
  const CrunchParkedEntry *x = a, *y = b;

  if (x->deadline_us != y->deadline_us)
    return x->deadline_us < y->deadline_us ? -1 : 1;
  return x->serial < y->serial ? -1 : (x->serial > y->serial);
}

/* With the lock held: the timer fires at `when` (monotonic), or only for a hang-up. */
static void
arm_locked (CrunchParked *self, gint64 when)
{
  self->next_wake_us = when;
  g_source_set_ready_time (self->timer, when == G_MAXINT64 ? -1 : when);
}

/* With the lock held: mark fired, take a reference for the caller. */
static gpointer
fire_locked (CrunchParked *self, CrunchParkedEntry *entry)
{
  entry->fired = TRUE;
  if (entry->by_deadline != NULL) {
    g_sequence_remove (entry->by_deadline);
    entry->by_deadline = NULL;
  }
  /* stop the level-triggered hang-up event from repeating */
  epoll_ctl (self->epfd, EPOLL_CTL_DEL, entry->fd, NULL);
  return self->ref (entry->item);
}

/* With the lock held: collect the entries whose deadline passed; re-arm for the next one. */
static void
collect_expired_locked (CrunchParked *self, GPtrArray *expired)
{
  gint64 now = g_get_monotonic_time ();

  while (g_sequence_get_length (self->deadlines) > 0) {
    CrunchParkedEntry *first = g_sequence_get (g_sequence_get_begin_iter (self->deadlines));
    if (first->deadline_us > now) {
      arm_locked (self, first->deadline_us);
      return;
    }
    g_ptr_array_add (expired, fire_locked (self, first));
  }
  arm_locked (self, G_MAXINT64);
}

/* With the lock held: the parked sockets whose client hung up. */
static void
collect_gone_locked (CrunchParked *self, GPtrArray *gone)
{
  struct epoll_event events[64];
  gint n;

  do {
    n = epoll_wait (self->epfd, events, G_N_ELEMENTS (events), 0);
    for (gint i = 0; i < n; i++) {
      CrunchParkedEntry *entry = g_hash_table_lookup (self->entries, &events[i].data.u64);
      if (entry != NULL && !entry->fired)
        g_ptr_array_add (gone, fire_locked (self, entry));
    }
  } while (n == G_N_ELEMENTS (events));
}

static void
expire_all (CrunchParked *self, GPtrArray *items, CrunchJobOutcome why)
{
  for (guint i = 0; i < items->len; i++) {
    self->expire (items->pdata[i], why, self->expire_data);
    self->unref (items->pdata[i]);
  }
}

/* The timer thread: a deadline passed, or a parked client hung up. */
static gboolean
on_timer (gpointer data)
{
  CrunchParked *self = data;
  g_autoptr (GPtrArray) expired = g_ptr_array_new ();
  g_autoptr (GPtrArray) gone = g_ptr_array_new ();

  g_mutex_lock (&self->lock);
  collect_expired_locked (self, expired);
  collect_gone_locked (self, gone);
  g_mutex_unlock (&self->lock);
  expire_all (self, expired, CRUNCH_JOB_TIMED_OUT);
  expire_all (self, gone, CRUNCH_JOB_CLIENT_GONE);
  return G_SOURCE_CONTINUE;
}

/* When GLib lets go of the timer's callback data: no callback runs any more. */
static void
release (gpointer data)
{
  CrunchParked *self = data;

  g_warn_if_fail (g_hash_table_size (self->entries) == 0);
  g_hash_table_unref (self->entries);
  g_sequence_free (self->deadlines);
  close (self->epfd);
  g_mutex_clear (&self->lock);
  g_free (self);
}

CrunchParked *
crunch_parked_new (CrunchTimerThread *timers, CrunchParkedExpire expire, gpointer data,
                   gpointer (*ref) (gpointer), GDestroyNotify unref)
{
  CrunchParked *self = g_new0 (CrunchParked, 1);

  g_mutex_init (&self->lock);
  self->entries = g_hash_table_new (g_int64_hash, g_int64_equal);
  self->deadlines = g_sequence_new (NULL);
  self->next_wake_us = G_MAXINT64;
  self->expire = expire;
  self->expire_data = data;
  self->ref = ref;
  self->unref = unref;
  self->epfd = epoll_create1 (EPOLL_CLOEXEC);
  if (self->epfd < 0)
    g_error ("parked: cannot set up epoll: %s", g_strerror (errno));
  self->timer = crunch_timer_thread_add_fd (timers, self->epfd, -1, on_timer, self, release);
  return self;
}

CrunchParkedEntry *
crunch_parked_add (CrunchParked *self, gint fd, gint64 deadline_us, gpointer item)
{
  CrunchParkedEntry *entry = g_new0 (CrunchParkedEntry, 1);
  struct epoll_event ev = {.events = EPOLLRDHUP};

  entry->fd = fd;
  entry->deadline_us = deadline_us;
  entry->item = self->ref (item);
  g_mutex_lock (&self->lock);
  entry->serial = self->next_serial++;
  g_hash_table_insert (self->entries, &entry->serial, entry);
  if (deadline_us != 0)
    entry->by_deadline = g_sequence_insert_sorted (self->deadlines, entry, by_deadline, NULL);
  ev.data.u64 = entry->serial;
  if (fd >= 0 && epoll_ctl (self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
    g_debug ("parked: cannot watch fd %d: %s", fd, g_strerror (errno));
  if (deadline_us != 0 && deadline_us < self->next_wake_us)
    arm_locked (self, deadline_us);
  g_mutex_unlock (&self->lock);
  return entry;
}

void
crunch_parked_remove (CrunchParked *self, CrunchParkedEntry *entry)
{
  if (entry == NULL)
    return;
  g_mutex_lock (&self->lock);
  g_hash_table_remove (self->entries, &entry->serial);
  if (entry->by_deadline != NULL)
    g_sequence_remove (entry->by_deadline);
  if (!entry->fired)
    epoll_ctl (self->epfd, EPOLL_CTL_DEL, entry->fd, NULL);
  g_mutex_unlock (&self->lock);
  self->unref (entry->item);
  g_free (entry);
}

guint
crunch_parked_count (CrunchParked *self)
{
  guint n;

  g_mutex_lock (&self->lock);
  n = g_hash_table_size (self->entries);
  g_mutex_unlock (&self->lock);
  return n;
}

void
crunch_parked_free (CrunchParked *self)
{
  if (self != NULL)
    crunch_timer_thread_remove (self->timer); /* release() frees the rest */
}
