/* test-parked.c - parked.c as a timer service: the one timer mechanism of crunchd, its NATS
 * executor and crunchd-worker (deadlines, retries, heartbeats). */
#include "parked.h"

#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  gint fired;
  gint last_why;
} Counter;

static void
on_fire (gpointer item, CrunchJobOutcome why, gpointer data)
{
  Counter *c = item;

  g_atomic_int_set (&c->last_why, why);
  g_atomic_int_inc (&c->fired);
}

static gpointer
same (gpointer item)
{
  return item;
}

static void
nothing (gpointer item)
{
}

static const CrunchParkedKind kind = {on_fire, NULL, same, nothing};

/* Waits up to 5 s for the count to reach `n`. */
static gint
wait_fired (Counter *c, gint n)
{
  gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;

  while (g_atomic_int_get (&c->fired) < n && g_get_monotonic_time () < until)
    g_usleep (1000);
  return g_atomic_int_get (&c->fired);
}

static void
test_once_and_rearm (void)
{
  CrunchParked *timers = crunch_parked_new (on_fire, NULL, same, nothing);
  Counter c = {0}, never = {0};
  CrunchParkedEntry *t =
      crunch_parked_add_timer (timers, g_get_monotonic_time () + 20000, &c, &kind);
  CrunchParkedEntry *idle = crunch_parked_add_timer (timers, 0, &never, &kind);

  g_assert_cmpint (wait_fired (&c, 1), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&c.last_why), ==, CRUNCH_JOB_TIMED_OUT);
  g_usleep (50000); /* one shot: it stays disarmed */
  g_assert_cmpint (g_atomic_int_get (&c.fired), ==, 1);
  crunch_parked_rearm (timers, t, g_get_monotonic_time ()); /* fired, armed again */
  g_assert_cmpint (wait_fired (&c, 2), ==, 2);
  /* 10 s: even a test thread held up for long between the two calls disarms it in time */
  crunch_parked_rearm (timers, t, g_get_monotonic_time () + 10 * G_USEC_PER_SEC);
  crunch_parked_rearm (timers, t, 0); /* disarmed before it fires */
  g_usleep (60000);
  g_assert_cmpint (g_atomic_int_get (&c.fired), ==, 2);
  g_assert_cmpint (g_atomic_int_get (&never.fired), ==, 0);
  crunch_parked_remove (timers, t);
  crunch_parked_remove (timers, idle);
  crunch_parked_free (timers);
}

/* A re-arm to an earlier time than the watcher sleeps towards wakes it: the timer is not held
 * back by a later one. */
static void
test_rearm_earlier (void)
{
  CrunchParked *timers = crunch_parked_new (on_fire, NULL, same, nothing);
  Counter late = {0}, soon = {0};
  gint64 start = g_get_monotonic_time ();
  CrunchParkedEntry *a =
      crunch_parked_add_timer (timers, start + 10 * G_USEC_PER_SEC, &late, &kind);
  CrunchParkedEntry *b =
      crunch_parked_add_timer (timers, start + 10 * G_USEC_PER_SEC, &soon, &kind);

  g_usleep (20000); /* the watcher sleeps towards +10 s */
  crunch_parked_rearm (timers, b, g_get_monotonic_time () + 10000);
  g_assert_cmpint (wait_fired (&soon, 1), ==, 1);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 2 * G_USEC_PER_SEC);
  g_assert_cmpint (g_atomic_int_get (&late.fired), ==, 0);
  crunch_parked_remove (timers, a);
  crunch_parked_remove (timers, b);
  crunch_parked_free (timers);
}

/* Many timers re-armed from several threads at once (the NATS executor's heartbeats and
 * cancels): each fires exactly once per arming, in time. */
#define N_TIMERS 64

typedef struct {
  CrunchParked *timers;
  CrunchParkedEntry **entries;
  guint first;
} Rearmer;

static gpointer
rearm_half (gpointer data)
{
  Rearmer *r = data;

  for (guint i = r->first; i < N_TIMERS; i += 2)
    crunch_parked_rearm (r->timers, r->entries[i], g_get_monotonic_time () + 1000 * (i % 7));
  return NULL;
}

static void
test_rearm_threads (void)
{
  CrunchParked *timers = crunch_parked_new (on_fire, NULL, same, nothing);
  Counter c[N_TIMERS] = {0};
  CrunchParkedEntry *entries[N_TIMERS];
  Rearmer r[2] = {{timers, entries, 0}, {timers, entries, 1}};
  GThread *threads[2];

  for (guint i = 0; i < N_TIMERS; i++)
    entries[i] = crunch_parked_add_timer (timers, 0, &c[i], &kind);
  for (guint i = 0; i < 2; i++)
    threads[i] = g_thread_new ("rearm", rearm_half, &r[i]);
  for (guint i = 0; i < 2; i++)
    g_thread_join (threads[i]);
  for (guint i = 0; i < N_TIMERS; i++)
    g_assert_cmpint (wait_fired (&c[i], 1), ==, 1);
  g_usleep (20000);
  for (guint i = 0; i < N_TIMERS; i++) {
    g_assert_cmpint (g_atomic_int_get (&c[i].fired), ==, 1);
    crunch_parked_remove (timers, entries[i]);
  }
  crunch_parked_free (timers);
}

/* A deadline due before the watcher's next tick wakes it: a 5 ms timer added just after a socket
 * started the ticking (first tick 50 ms later) fires well before that tick. A round in which
 * this thread or the watcher was held back (a loaded machine) proves nothing and is repeated, a
 * bounded number of times; a timer that waited for the tick is late in every round. */
static void
test_deadline_before_tick (CrunchParked *parked)
{
  gboolean on_time = FALSE;

  for (guint tries = 0; !on_time && tries < 20; tries++) {
    Counter quiet = {0}, timed = {0};
    CrunchParkedEntry *watched, *timer;
    gint sv[2];
    gint64 t0;

    g_usleep (120000); /* past any tick: the watcher is idle */
    g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
    /* t0 before the watch, whose tick is due 50 ms after a moment inside it: a timer that
     * waited for that tick is at least 50 ms late by t0 in every round */
    t0 = g_get_monotonic_time ();
    watched = crunch_parked_watch (parked, sv[0], &quiet, &kind); /* starts the ticking */
    timer = crunch_parked_add_timer (parked, g_get_monotonic_time () + 5000, &timed, &kind);
    g_assert_cmpint (wait_fired (&timed, 1), ==, 1);
    on_time = g_get_monotonic_time () - t0 < 40000; /* not a whole tick late */
    g_assert_cmpint (g_atomic_int_get (&timed.last_why), ==, CRUNCH_JOB_TIMED_OUT);
    crunch_parked_remove (parked, timer);
    crunch_parked_remove (parked, watched);
    close (sv[0]);
    close (sv[1]);
  }
  g_assert_true (on_time);
}

/* Sockets: a hang-up is seen whether it comes before the socket joins the epoll set (at the
 * watcher's next tick) or after; one removed before that is never watched; a short deadline
 * still fires on time (it wakes the watcher). */
static void
test_hangups (void)
{
  CrunchParked *parked = crunch_parked_new (on_fire, NULL, same, nothing);
  Counter early = {0}, late = {0}, removed = {0};
  gint a[2], b[2], c[2];
  CrunchParkedEntry *e1, *e2, *e3;

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM, 0, a), ==, 0);
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM, 0, b), ==, 0);
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM, 0, c), ==, 0);
  e1 = crunch_parked_watch (parked, a[0], &early, &kind);
  close (a[1]); /* before the tick */
  e2 = crunch_parked_watch (parked, b[0], &late, &kind);
  e3 = crunch_parked_watch (parked, c[0], &removed, &kind);
  crunch_parked_remove (parked, e3);
  g_assert_cmpint (wait_fired (&early, 1), ==, 1);
  g_assert_cmpint (g_atomic_int_get (&early.last_why), ==, CRUNCH_JOB_CLIENT_GONE);
  g_usleep (120000); /* past the tick: b is watched now */
  close (b[1]);
  close (c[1]);
  g_assert_cmpint (wait_fired (&late, 1), ==, 1);
  g_usleep (100000);
  g_assert_cmpint (g_atomic_int_get (&removed.fired), ==, 0);
  crunch_parked_remove (parked, e1);
  crunch_parked_remove (parked, e2);
  test_deadline_before_tick (parked);
  crunch_parked_free (parked);
  close (a[0]);
  close (b[0]);
  close (c[0]);
}

/* A socket removed before the tick after it was added is never watched (no epoll_ctl), also
 * when its entry is the one that wakes an idle watcher: that wake-up only starts the ticking
 * (before, it added the socket at once, so every compute request on an idle server paid for two
 * epoll_ctl calls and a lock hand-off with the watcher). One still parked at the tick is. */
static void
test_answered_within_a_tick (void)
{
  CrunchParked *parked = crunch_parked_new (on_fire, NULL, same, nothing);
  Counter counter = {0};
  gint sv[2];
  guint rounds = 0, watched;

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM, 0, sv), ==, 0);
  /* five rounds that took less than a tick; a round in which this thread was held back longer
   * (a loaded machine) proves nothing and is repeated, a bounded number of times */
  for (guint tries = 0; rounds < 5 && tries < 50; tries++) {
    g_usleep (120000); /* past any tick: the watcher is idle */
    watched = crunch_parked_sockets_watched (parked);
    gint64 t0 = g_get_monotonic_time ();
    CrunchParkedEntry *e = crunch_parked_watch (parked, sv[0], &counter, &kind);
    g_usleep (5000); /* the watcher has woken up by now */
    crunch_parked_remove (parked, e);
    if (g_get_monotonic_time () - t0 >= 40000)
      continue;
    g_assert_cmpuint (crunch_parked_sockets_watched (parked), ==, watched);
    rounds++;
  }
  g_assert_cmpuint (rounds, ==, 5);
  {
    CrunchParkedEntry *e;

    watched = crunch_parked_sockets_watched (parked);
    e = crunch_parked_watch (parked, sv[0], &counter, &kind);
    g_usleep (120000);
    g_assert_cmpuint (crunch_parked_sockets_watched (parked), ==, watched + 1);
    crunch_parked_remove (parked, e);
  }
  g_assert_cmpint (g_atomic_int_get (&counter.fired), ==, 0);
  crunch_parked_free (parked);
  close (sv[0]);
  close (sv[1]);
}

int
main (int argc, char *argv[])
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/parked/timer/once-and-rearm", test_once_and_rearm);
  g_test_add_func ("/parked/timer/rearm-earlier", test_rearm_earlier);
  g_test_add_func ("/parked/timer/rearm-from-threads", test_rearm_threads);
  g_test_add_func ("/parked/hangups", test_hangups);
  g_test_add_func ("/parked/answered-within-a-tick", test_answered_within_a_tick);
  return g_test_run ();
}
