/* parked.c - see parked.h.
 *
 * DESIGN
 * Threads: add()/remove() come from MHD threads; the watcher thread waits in epoll_wait() for a
 * hang-up (EPOLLRDHUP/EPOLLHUP on a parked socket), a wake-up (eventfd: an earlier deadline was
 * added, or shutdown), or the earliest deadline. Entries live in a hash table keyed by a serial
 * number that is also the epoll cookie, so an event for an entry removed meanwhile finds nothing
 * (no dangling pointers). A fired entry stays registered (without events) until remove(), but
 * never fires twice. `expire` runs without the lock held, on a reference the watcher took. An
 * entry may bring a kind of its own (add_timer()): the connection guard's deadline timer shares
 * this thread with the compute calls' deadlines and hang-ups. A timer entry can be re-armed
 * (rearm()), fired or not, which is all the NATS executor and crunchd-worker need: they run a
 * CrunchParked of their own as their timer service, so every deadline, retry and heartbeat in
 * both programs goes through this one mechanism.
 * Costs per parked request are kept off the common path (most compute requests are answered in
 * milliseconds): a socket is added to the epoll set only at the first tick after it was parked
 * (`unarmed` until then; EPOLLRDHUP is level-triggered, so a client that left meanwhile is seen at
 * once), and while anything is parked or unarmed the watcher wakes every TICK_US by itself
 * ("ticking"), so a new entry wakes it (an eventfd write) only when it is idle or the entry's
 * deadline comes before the next tick. The first tick is TICK_US after the entry that started
 * the ticking, not at that wake-up. A request answered within a tick costs no system call here
 * at all, and the watcher wakes at most once a tick however many come and go. */
#include "parked.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* The watcher's period while entries are unarmed, and the longest a socket stays unarmed. */
#define TICK_US (50 * 1000)

struct CrunchParkedEntry {
  guint64 serial;
  gint fd;
  gint64 deadline_us;
  gpointer item;
  const CrunchParkedKind *kind;
  GSequenceIter *by_deadline; /* NULL once fired or without deadline */
  gboolean fired;
  gboolean armed;   /* its fd is in the epoll set */
  gboolean unarmed; /* it waits in self->unarmed for the next tick */
  GList unarmed_link;
};

struct CrunchParked {
  GMutex lock;
  GHashTable *entries;  /* serial -> entry */
  GSequence *deadlines; /* entries ordered by deadline */
  gint64 next_wake_us;  /* what the watcher sleeps towards; G_MAXINT64 = no deadline */
  guint64 next_serial;
  gint epfd, wakefd;
  GQueue unarmed;   /* entries whose fd the next tick adds to the epoll set */
  gboolean ticking; /* the watcher wakes every TICK_US by itself */
  gint64 tick_us;   /* while ticking: when the next tick is due */
  guint64 watched;  /* sockets that joined the epoll set, ever */
  gboolean stop;
  GThread *thread;
  CrunchParkedKind kind; /* of entries added without one */
};

/* A fired entry's item (a reference) and what to do with it, collected under the lock. */
typedef struct {
  gpointer item;
  const CrunchParkedKind *kind;
} Fired;

#define WAKE_COOKIE G_MAXUINT64

static gint
by_deadline (gconstpointer a, gconstpointer b, gpointer user_data)
{
  const CrunchParkedEntry *x = a, *y = b;

  if (x->deadline_us != y->deadline_us)
    return x->deadline_us < y->deadline_us ? -1 : 1;
  return x->serial < y->serial ? -1 : (x->serial > y->serial);
}

static void
wake (CrunchParked *self)
{
  guint64 one = 1;

  if (write (self->wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
    g_warning ("parked: eventfd write: %s", g_strerror (errno));
}

/* With the lock held: its socket is watched no more (or will not be). */
static void
disarm_locked (CrunchParked *self, CrunchParkedEntry *entry)
{
  if (entry->armed)
    epoll_ctl (self->epfd, EPOLL_CTL_DEL, entry->fd, NULL);
  else if (entry->unarmed)
    g_queue_unlink (&self->unarmed, &entry->unarmed_link);
  entry->armed = entry->unarmed = FALSE;
}

/* With the lock held (the watcher, at a tick): the sockets parked since the last tick join the
 * epoll set; the tick goes on while there were any. */
static void
arm_locked (CrunchParked *self, gint64 now)
{
  GList *link;

  self->ticking = self->unarmed.length > 0;
  self->tick_us = now + TICK_US;
  while ((link = g_queue_pop_head_link (&self->unarmed)) != NULL) {
    CrunchParkedEntry *entry = link->data;
    struct epoll_event ev = {.events = EPOLLRDHUP, .data.u64 = entry->serial};
    entry->unarmed = FALSE;
    if (epoll_ctl (self->epfd, EPOLL_CTL_ADD, entry->fd, &ev) < 0)
      g_debug ("parked: cannot watch fd %d: %s", entry->fd, g_strerror (errno));
    else
      entry->armed = TRUE;
    self->watched += entry->armed;
  }
}

/* With the lock held: mark fired, take a reference for the caller. */
static Fired
fire_locked (CrunchParked *self, CrunchParkedEntry *entry)
{
  entry->fired = TRUE;
  if (entry->by_deadline != NULL) {
    g_sequence_remove (entry->by_deadline);
    entry->by_deadline = NULL;
  }
  /* stop the level-triggered hang-up event from repeating */
  disarm_locked (self, entry);
  return (Fired){entry->kind->ref (entry->item), entry->kind};
}

static void
expire_all (GArray *fired, CrunchJobOutcome why)
{
  for (guint i = 0; i < fired->len; i++) {
    Fired *f = &g_array_index (fired, Fired, i);
    f->kind->expire (f->item, why, f->kind->data);
    f->kind->unref (f->item);
  }
}

/* With the lock held: collect the entries whose deadline passed by `now`; return ms until the
 * next one. */
static gint
collect_expired (CrunchParked *self, GArray *expired, gint64 now)
{
  while (g_sequence_get_length (self->deadlines) > 0) {
    CrunchParkedEntry *first = g_sequence_get (g_sequence_get_begin_iter (self->deadlines));
    if (first->deadline_us > now) {
      self->next_wake_us = first->deadline_us;
      /* round up, so we do not wake a hair early and spin */
      return (gint)MIN ((first->deadline_us - now + 999) / 1000, G_MAXINT);
    }
    Fired f = fire_locked (self, first);
    g_array_append_val (expired, f);
  }
  self->next_wake_us = G_MAXINT64;
  return -1;
}

static void
watch_once (CrunchParked *self)
{
  struct epoll_event events[64];
  g_autoptr (GArray) expired = g_array_new (FALSE, FALSE, sizeof (Fired));
  g_autoptr (GArray) gone = g_array_new (FALSE, FALSE, sizeof (Fired));
  gint64 now;
  gint timeout, n;

  g_mutex_lock (&self->lock);
  now = g_get_monotonic_time ();
  if (self->ticking && now >= self->tick_us)
    arm_locked (self, now);
  timeout = collect_expired (self, expired, now);
  if (self->ticking) {
    /* round up, as collect_expired() does */
    gint tick = (gint)MAX ((self->tick_us - now + 999) / 1000, 0);
    if (timeout < 0 || timeout > tick) {
      timeout = tick;
      self->next_wake_us = self->tick_us;
    }
  }
  g_mutex_unlock (&self->lock);
  expire_all (expired, CRUNCH_JOB_TIMED_OUT);
  if (expired->len > 0)
    return; /* time moved on: recompute the timeout */

  n = epoll_wait (self->epfd, events, G_N_ELEMENTS (events), timeout);
  g_mutex_lock (&self->lock);
  for (gint i = 0; i < n; i++) {
    CrunchParkedEntry *entry;
    if (events[i].data.u64 == WAKE_COOKIE) {
      guint64 count;
      if (read (self->wakefd, &count, sizeof count) < 0 && errno != EAGAIN)
        g_warning ("parked: eventfd read: %s", g_strerror (errno));
      continue;
    }
    entry = g_hash_table_lookup (self->entries, &events[i].data.u64);
    if (entry != NULL && !entry->fired) {
      Fired f = fire_locked (self, entry);
      g_array_append_val (gone, f);
    }
  }
  g_mutex_unlock (&self->lock);
  expire_all (gone, CRUNCH_JOB_CLIENT_GONE);
}

static gpointer
watcher (gpointer data)
{
  CrunchParked *self = data;

  while (!g_atomic_int_get (&self->stop))
    watch_once (self);
  return NULL;
}

CrunchParked *
crunch_parked_new (CrunchParkedExpire expire, gpointer data, gpointer (*ref) (gpointer),
                   GDestroyNotify unref)
{
  CrunchParked *self = g_new0 (CrunchParked, 1);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_COOKIE};

  g_mutex_init (&self->lock);
  self->entries = g_hash_table_new (g_int64_hash, g_int64_equal);
  self->deadlines = g_sequence_new (NULL);
  self->next_wake_us = G_MAXINT64;
  self->kind = (CrunchParkedKind){expire, data, ref, unref};
  self->epfd = epoll_create1 (EPOLL_CLOEXEC);
  self->wakefd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (self->epfd < 0 || self->wakefd < 0 ||
      epoll_ctl (self->epfd, EPOLL_CTL_ADD, self->wakefd, &ev) < 0)
    g_error ("parked: cannot set up epoll: %s", g_strerror (errno));
  self->thread = g_thread_new ("crunchd-parked", watcher, self);
  return self;
}

/* With the lock held: put the entry in the deadline order; TRUE if the watcher must wake up
 * because it sleeps towards a later time. */
static gboolean
schedule_locked (CrunchParked *self, CrunchParkedEntry *entry, gint64 deadline_us)
{
  entry->deadline_us = deadline_us;
  if (deadline_us == 0)
    return FALSE;
  entry->by_deadline = g_sequence_insert_sorted (self->deadlines, entry, by_deadline, NULL);
  if (deadline_us >= self->next_wake_us)
    return FALSE;
  self->next_wake_us = deadline_us;
  return TRUE;
}

static CrunchParkedEntry *
add (CrunchParked *self, gint fd, gint64 deadline_us, gpointer item, const CrunchParkedKind *kind)
{
  CrunchParkedEntry *entry = g_new0 (CrunchParkedEntry, 1);
  gboolean earlier, start_ticking = FALSE;

  entry->fd = fd;
  entry->kind = kind;
  entry->item = kind->ref (item);
  entry->unarmed_link.data = entry;
  g_mutex_lock (&self->lock);
  entry->serial = self->next_serial++;
  g_hash_table_insert (self->entries, &entry->serial, entry);
  if (fd >= 0) { /* watched from the next tick on */
    g_queue_push_tail_link (&self->unarmed, &entry->unarmed_link);
    entry->unarmed = TRUE;
    if (!self->ticking) { /* the first tick is a whole TICK_US away */
      self->ticking = TRUE;
      self->tick_us = g_get_monotonic_time () + TICK_US;
      start_ticking = self->tick_us < self->next_wake_us;
      if (start_ticking)
        self->next_wake_us = self->tick_us;
    }
  }
  earlier = schedule_locked (self, entry, deadline_us);
  g_mutex_unlock (&self->lock);
  if (earlier || start_ticking)
    wake (self);
  return entry;
}

CrunchParkedEntry *
crunch_parked_add (CrunchParked *self, gint fd, gint64 deadline_us, gpointer item)
{
  return add (self, fd, deadline_us, item, &self->kind);
}

CrunchParkedEntry *
crunch_parked_watch (CrunchParked *self, gint fd, gpointer item, const CrunchParkedKind *kind)
{
  return add (self, fd, 0, item, kind);
}

CrunchParkedEntry *
crunch_parked_add_timer (CrunchParked *self, gint64 deadline_us, gpointer item,
                         const CrunchParkedKind *kind)
{
  return add (self, -1, deadline_us, item, kind);
}

void
crunch_parked_rearm (CrunchParked *self, CrunchParkedEntry *entry, gint64 deadline_us)
{
  gboolean earlier;

  g_return_if_fail (entry->fd < 0);
  g_mutex_lock (&self->lock);
  if (entry->by_deadline != NULL) {
    g_sequence_remove (entry->by_deadline);
    entry->by_deadline = NULL;
  }
  entry->fired = FALSE;
  earlier = schedule_locked (self, entry, deadline_us);
  g_mutex_unlock (&self->lock);
  if (earlier)
    wake (self);
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
  disarm_locked (self, entry);
  g_mutex_unlock (&self->lock);
  entry->kind->unref (entry->item);
  g_free (entry);
}

guint64
crunch_parked_sockets_watched (CrunchParked *self)
{
  guint64 n;

  g_mutex_lock (&self->lock);
  n = self->watched;
  g_mutex_unlock (&self->lock);
  return n;
}

void
crunch_parked_free (CrunchParked *self)
{
  if (self == NULL)
    return;
  g_atomic_int_set (&self->stop, TRUE);
  wake (self);
  g_thread_join (self->thread);
  g_warn_if_fail (g_hash_table_size (self->entries) == 0);
  g_hash_table_unref (self->entries);
  g_sequence_free (self->deadlines);
  close (self->epfd);
  close (self->wakefd);
  g_mutex_clear (&self->lock);
  g_free (self);
}
