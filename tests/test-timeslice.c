/* test-timeslice.c - timeslice.c: while requests come (the fast lane's) a computing thread gets a
 * tick every interval; none when it is idle, when no request comes, or once requests have stopped
 * for 100 ms; the timer goes with its thread; a sleep inside a job may end early (the EINTR that
 * crunchd-plugin(3) documents). */
#include "timeslice.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* Spins for `ms` milliseconds, calling into libc (where ThreadSanitizer delivers signals). */
static void
spin (guint ms)
{
  const gint64 until = g_get_monotonic_time () + ms * 1000;

  while (g_get_monotonic_time () < until)
    ;
}

/* POSIX timers of this process (/proc/self/timers has one "ID: n" line each). */
static guint
timers (void)
{
  g_autofree gchar *text = NULL;
  guint n = 0;

  g_assert_true (g_file_get_contents ("/proc/self/timers", &text, NULL, NULL));
  for (const gchar *p = text; (p = strstr (p, "ID: ")) != NULL; p++)
    n++;
  return n;
}

typedef struct {
  guint ms;                 /* how long the job computes */
  gint started;             /* atomic: the job has begun */
  guint64 ticks_computing;  /* during the job */
  gboolean armed_at_end;    /* just before the job ends */
  gboolean armed_when_idle; /* 20 ms after it */
  guint64 ticks_idle;       /* in those 20 ms */
} Run;

static gpointer
computing_thread (gpointer data)
{
  Run *run = data;
  guint64 before = crunch_timeslice_ticks ();

  crunch_timeslice_enter ();
  g_atomic_int_set (&run->started, 1);
  spin (run->ms);
  run->armed_at_end = crunch_timeslice_armed ();
  crunch_timeslice_leave ();
  run->ticks_computing = crunch_timeslice_ticks () - before;
  before = crunch_timeslice_ticks ();
  g_usleep (20 * 1000); /* g_usleep sleeps again after a signal */
  run->armed_when_idle = crunch_timeslice_armed ();
  run->ticks_idle = crunch_timeslice_ticks () - before;
  return NULL;
}

/* Until another thread sets *flag (it has begun). */
static void
wait_set (gint *flag)
{
  while (!g_atomic_int_get (flag))
    g_usleep (100);
}

/* Runs `run` on a thread of its own while "requests" come every 11 ms for `busy_ms` from the
 * job's start (a mark counts at most every 10 ms). */
static void
run_job (Run *run, guint busy_ms)
{
  GThread *t = g_thread_new ("computing", computing_thread, run);
  gint64 until;

  wait_set (&run->started);
  until = g_get_monotonic_time () + busy_ms * 1000;
  while (g_get_monotonic_time () < until) {
    crunch_timeslice_busy (g_get_monotonic_time ());
    g_usleep (11 * 1000);
  }
  g_thread_join (t);
}

/* Long enough for the last mark to be forgotten. */
static void
quiet (void)
{
  g_usleep (120 * 1000);
}

/* 1 ms ticks: a 60 ms job while requests come gets about 50 (from the first mark on); the first
 * tick after it stops the timer, so an idle thread is not woken; the timer goes with its
 * thread. */
static void
test_ticks_while_busy (void)
{
  Run run = {.ms = 60};
  guint before = timers ();

  crunch_timeslice_set (0.001);
  run_job (&run, 60);
  g_assert_cmpuint (run.ticks_computing, >=, 10);
  g_assert_cmpuint (run.ticks_computing, <=, 70);
  g_assert_true (run.armed_at_end);
  g_assert_false (run.armed_when_idle);
  g_assert_cmpuint (run.ticks_idle, ==, 0);
  g_assert_cmpuint (timers (), ==, before);
}

/* No request while it runs: a job gets no ticks, even one that starts just after a request. */
static void
test_quiet (void)
{
  Run run = {.ms = 50};

  crunch_timeslice_set (0.001);
  quiet ();
  crunch_timeslice_busy (g_get_monotonic_time ());
  run_job (&run, 0);
  g_assert_cmpuint (run.ticks_computing, ==, 0);
  g_assert_false (run.armed_at_end);
}

/* Once the requests have stopped for 100 ms, a job that still computes gets no more ticks. */
static void
test_quiet_stops (void)
{
  Run run = {.ms = 400};

  crunch_timeslice_set (0.001);
  quiet ();
  run_job (&run, 30);
  g_assert_cmpuint (run.ticks_computing, >=, 30);
  g_assert_cmpuint (run.ticks_computing, <=, 200);
  g_assert_false (run.armed_at_end);
}

/* 0 turns it off: no ticks even while requests come. */
static void
test_off (void)
{
  Run run = {.ms = 40};

  crunch_timeslice_set (0);
  run_job (&run, 40);
  g_assert_cmpuint (run.ticks_computing, ==, 0);
  g_assert_false (run.armed_at_end);
}

static gpointer
sleeping_thread (gpointer data)
{
  gint *result = data;
  gint64 t0;
  struct timespec ts = {0, 200 * 1000 * 1000}; /* 200 ms */

  crunch_timeslice_enter ();
  g_atomic_int_set (&result[2], 1);
  t0 = g_get_monotonic_time ();
  result[0] = nanosleep (&ts, &ts) == 0 ? 0 : errno;
  result[1] = (gint)((g_get_monotonic_time () - t0) / 1000);
  crunch_timeslice_leave ();
  return NULL;
}

/* What crunchd-plugin(3) warns about: while requests come, a sleep inside a job ends at a tick
 * with EINTR. */
static void
test_sleep_interrupted (void)
{
  gint result[3] = {-1, -1, 0};
  GThread *t;

  crunch_timeslice_set (0.001);
  quiet ();
  t = g_thread_new ("sleeping", sleeping_thread, result);
  wait_set (&result[2]);
  crunch_timeslice_busy (g_get_monotonic_time ());
  g_thread_join (t);
  g_assert_cmpint (result[0], ==, EINTR);
  g_assert_cmpint (result[1], <, 150);
}

static gpointer
blocked_thread (gpointer data)
{
  gint *state = data;
  struct timespec ts = {0, 200 * 1000 * 1000}; /* 200 ms, resumed after each signal */

  crunch_timeslice_enter ();
  g_atomic_int_set (&state[0], 1);
  while (nanosleep (&ts, &ts) != 0 && errno == EINTR)
    ;
  crunch_timeslice_leave ();
  g_atomic_int_set (&state[1], 1);
  return NULL;
}

/* A job blocked in a call (a plugin waiting for I/O) holds no CPU: while requests come it gets
 * at most two ticks per mark (the first takes its count of voluntary switches, the next sees it
 * slept), not one per interval (200 in these 200 ms). */
static void
test_blocked (void)
{
  gint state[2] = {0, 0};
  guint marks = 0;
  guint64 before, ticks;
  GThread *t;

  crunch_timeslice_set (0.001);
  quiet ();
  t = g_thread_new ("blocked", blocked_thread, state);
  wait_set (&state[0]);
  before = crunch_timeslice_ticks ();
  while (!g_atomic_int_get (&state[1])) {
    crunch_timeslice_busy (g_get_monotonic_time ());
    marks++;
    g_usleep (11 * 1000);
  }
  g_thread_join (t);
  ticks = crunch_timeslice_ticks () - before;
  g_test_message ("%u marks, %" G_GUINT64_FORMAT " ticks", marks, ticks);
  g_assert_cmpuint (ticks, >=, 1); /* the timer did run */
  g_assert_cmpuint (ticks, <=, 2 * marks);
}

/* A new interval (a reload) applies to timers started from then on. */
static void
test_new_interval (void)
{
  Run fast = {.ms = 40}, slow = {.ms = 40};

  crunch_timeslice_set (0.001);
  run_job (&fast, 40);
  crunch_timeslice_set (0.01);
  run_job (&slow, 40);
  g_assert_cmpuint (fast.ticks_computing, >=, 8);
  g_assert_cmpuint (slow.ticks_computing, <=, 5);
}

/* A reload to 0 stops the ticks of a job already running, though requests keep coming. */
static void
test_off_stops_running (void)
{
  Run run = {.ms = 300};
  GThread *t;
  guint64 at_off = 0, at_end;
  gint64 start, off_at = 0;

  crunch_timeslice_set (0.001);
  quiet ();
  t = g_thread_new ("computing", computing_thread, &run);
  wait_set (&run.started);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < 250 * 1000) {
    crunch_timeslice_busy (g_get_monotonic_time ());
    if (off_at == 0 && g_get_monotonic_time () - start >= 60 * 1000) {
      crunch_timeslice_set (0);
      off_at = g_get_monotonic_time ();
    } else if (at_off == 0 && off_at != 0 && g_get_monotonic_time () - off_at >= 10 * 1000) {
      at_off = crunch_timeslice_ticks ();
    }
    g_usleep (11 * 1000);
  }
  at_end = crunch_timeslice_ticks ();
  g_thread_join (t);
  g_assert_cmpuint (at_off, >, 0);
  g_assert_cmpuint (at_end - at_off, <=, 1);
}

/* se.slice (ns) of the calling thread from /proc, or -1 where the kernel does not show it. */
static gint64
own_slice (void)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/self/task/%d/sched", (int)gettid ());
  g_autofree gchar *text = NULL;
  const gchar *line;

  if (!g_file_get_contents (path, &text, NULL, NULL) ||
      (line = strstr (text, "\nse.slice ")) == NULL)
    return -1;
  return g_ascii_strtoll (strchr (line, ':') + 1, NULL, 10);
}

/* Whether this kernel honours a normal thread's own slice (sched_setattr, Linux 6.12). */
static gboolean
custom_slices (void)
{
  struct utsname u;
  guint major = 0, minor = 0;

  return uname (&u) == 0 && sscanf (u.release, "%u.%u", &major, &minor) == 2 &&
         (major > 6 || (major == 6 && minor >= 12));
}

static gpointer
slice_thread (gpointer data)
{
  gint64 *slices = data;

  crunch_timeslice_set (0.001);
  crunch_timeslice_enter ();
  slices[0] = own_slice ();
  crunch_timeslice_leave ();
  crunch_timeslice_set (0);
  crunch_timeslice_enter ();
  slices[1] = own_slice ();
  crunch_timeslice_leave ();
  return NULL;
}

/* A computing thread asks for a slice as long as the interval, and for the kernel's own again
 * when ticks are turned off. */
static void
test_slice (void)
{
  gint64 slices[2] = {0, 0};

  if (!custom_slices ()) {
    g_test_skip ("the kernel has no slices of a thread's own (Linux 6.12)");
    return;
  }
  g_thread_join (g_thread_new ("slice", slice_thread, slices));
  g_assert_cmpint (slices[0], ==, 1000000);
  g_assert_cmpint (slices[1], !=, 1000000);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/timeslice/ticks-while-busy", test_ticks_while_busy);
  g_test_add_func ("/timeslice/quiet", test_quiet);
  g_test_add_func ("/timeslice/quiet-stops", test_quiet_stops);
  g_test_add_func ("/timeslice/off", test_off);
  g_test_add_func ("/timeslice/sleep-interrupted", test_sleep_interrupted);
  g_test_add_func ("/timeslice/blocked", test_blocked);
  g_test_add_func ("/timeslice/new-interval", test_new_interval);
  g_test_add_func ("/timeslice/off-stops-running", test_off_stops_running);
  g_test_add_func ("/timeslice/slice", test_slice);
  return g_test_run ();
}
