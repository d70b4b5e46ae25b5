/* timeslice.c - while the fast lane answers requests, threads computing in crunchd's process get
 * a timer tick every [executor] timeslice seconds.
 *
 * DESIGN
 * Why: a worker at nice 10 that computes keeps its CPU after the HTTP polling thread (or the
 * client beside it) wakes on that CPU until the kernel next accounts the worker's run time, at
 * its own scheduler tick: up to 4 ms with the 250 Hz tick of Debian's kernels, which was the
 * loaded /fast p99 of bench E4b. A tick of ours accounts it sooner: the handler reads the
 * thread's CPU clock, which makes the kernel update the running thread's run time (update_curr())
 * and, if its slice is over, switch to the thread due the CPU on the way back. Each computing
 * thread also asks for a slice as long as the interval (Linux 6.12+; older kernels ignore it), so
 * its slice is over by the next tick. Measured: loaded p99 4 ms without ticks, 1.7 ms with ticks
 * and the default 0.75 ms slice, 0.4-0.9 ms with both. The kernel still decides, so shares stay
 * those of nice. (Not sched_yield(): since Linux 6.17 a yield forfeits the rest of the slice, and
 * a worker yielding every 0.5 ms beside a busy neighbour starved: fib(34) took 100 s, not 0.25 s.)
 *
 * How: a POSIX timer per computing thread (CLOCK_MONOTONIC, SIGEV_THREAD_ID) sends it SIGRTMIN
 * every interval. A tick is not free (about 45 us of CPU on the VM of bench/NOTES.md, a
 * microsecond or two on bare metal), so timers run only while they can help. The HTTP side calls
 * crunch_timeslice_busy() as each request answered inline ends (not compute requests: with jobs
 * of 28 ms, ticks on their arrivals cost E6 5-19 % of its jobs/s here); at most every MARK_US
 * that starts the timers of computing threads whose timer is off. The handler stops its timer
 * when it finds the thread idle, no such request for QUIET_US (by the clock: ticks that come
 * while the thread waits for a CPU arrive as one), the interval changed (a reload; the next
 * mark starts it again), or the thread slept since the previous tick (its count of voluntary
 * context switches moved: a plugin's blocking call holds no CPU, and a timer on the monotonic
 * clock would wake it every interval; so it gets two ticks per mark, not one per interval). A job's
 * start starts nothing: a job shorter than MARK_US seldom gets a tick (it needs none), a stream of
 * short jobs costs no system call per job, and a long one gets ticks within MARK_US of a request
 * that comes while it runs. The handler uses SA_RESTART, but a signal still ends some blocking
 * calls early with EINTR (poll, nanosleep): crunchd-plugin(3) tells plugin authors.
 *
 * Threads: none of its own. Each computing thread owns one Slot (its timer, and atomics its
 * handler and the marking thread share); `lock` guards the list of slots, which the marking
 * thread walks and a thread leaves when it ends. Arming is CAS(armed 0 -> interval) then
 * timer_settime(); disarming (the handler, on its own thread) is timer_settime() then armed = 0;
 * a race that leaves a timer running with armed = 0 ends at its next tick (armed != interval). */
#include "timeslice.h"

#include <errno.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MARK_US 10000   /* crunch_timeslice_busy() looks at the slots at most this often */
#define QUIET_US 100000 /* ticks stop this long after the HTTP side's last request */

typedef struct {
  timer_t timer;
  gint64 armed;   /* atomic: the interval the timer runs at (us); 0 = off */
  gint computing; /* atomic */
  glong nvcsw;    /* voluntary context switches at the last tick, -1 = to be taken (written by
                   * its thread's handler only) */
} Slot;

static gint64 interval_us; /* atomic; 0 = off */
static gint64 busy_at;     /* atomic: the last mark, g_get_monotonic_time() */
static guint64 ticks;      /* atomic */
static GMutex lock;        /* guards `slots` */
static GPtrArray *slots;
static __thread Slot *self_slot;
static __thread gint64 slice_us; /* the scheduler slice this thread asked for; 0 = none */

static void
arm (Slot *s, gint64 us)
{
  struct itimerspec its;

  its.it_interval.tv_sec = us / G_USEC_PER_SEC;
  its.it_interval.tv_nsec = (us % G_USEC_PER_SEC) * 1000;
  its.it_value = its.it_interval;
  if (timer_settime (s->timer, 0, &its, NULL) != 0)
    __atomic_store_n (&s->armed, 0, __ATOMIC_RELAXED);
}

static void
on_tick (int signo)
{
  const int saved = errno;
  Slot *s = self_slot;
  const struct itimerspec off = {{0, 0}, {0, 0}};
  struct timespec t;
  struct rusage ru;
  gint64 us;
  glong seen;

  (void)signo;
  if (s == NULL)
    goto out;
  /* Decided by the clock, not by counting ticks: ticks that come while the thread waits for a
   * CPU arrive as one. A timer at an old interval (a reload) or turned off stops too; the next
   * mark starts it at the new one. So does one whose thread slept since the previous tick. */
  us = __atomic_load_n (&interval_us, __ATOMIC_ACQUIRE);
  if (__atomic_load_n (&s->computing, __ATOMIC_RELAXED) && us > 0 &&
      us == __atomic_load_n (&s->armed, __ATOMIC_RELAXED) &&
      clock_gettime (CLOCK_MONOTONIC, &t) == 0 &&
      t.tv_sec * G_USEC_PER_SEC + t.tv_nsec / 1000 - __atomic_load_n (&busy_at, __ATOMIC_RELAXED) <
          QUIET_US &&
      getrusage (RUSAGE_THREAD, &ru) == 0 &&
      ((seen = __atomic_exchange_n (&s->nvcsw, ru.ru_nvcsw, __ATOMIC_RELAXED)) == -1 ||
       seen == ru.ru_nvcsw)) {
    /* Reading its own CPU clock makes the kernel account the thread's run time now
     * (update_curr()), and so see that its slice is over and another thread should run. */
    clock_gettime (CLOCK_THREAD_CPUTIME_ID, &t);
    __atomic_add_fetch (&ticks, 1, __ATOMIC_RELAXED);
    goto out;
  }
  timer_settime (s->timer, 0, &off, NULL);
  __atomic_store_n (&s->nvcsw, -1, __ATOMIC_RELAXED); /* the next start's first tick takes it */
  __atomic_store_n (&s->armed, 0, __ATOMIC_RELAXED);
out:
  errno = saved;
}

/* A thread's slot goes when the thread ends. */
static void
slot_free (gpointer data)
{
  Slot *s = data;

  self_slot = NULL;
  __atomic_signal_fence (__ATOMIC_SEQ_CST);
  g_mutex_lock (&lock);
  g_ptr_array_remove_fast (slots, s);
  g_mutex_unlock (&lock);
  timer_delete (s->timer);
  g_free (s);
}

static GPrivate owner = G_PRIVATE_INIT (slot_free);

static Slot *
slot_get (void)
{
  struct sigevent ev = {0};
  Slot *s;

  if (self_slot != NULL)
    return self_slot;
  s = g_new0 (Slot, 1);
  s->nvcsw = -1;
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = SIGRTMIN;
  ev._sigev_un._tid = gettid ();
  if (timer_create (CLOCK_MONOTONIC, &ev, &s->timer) != 0) {
    g_debug ("timeslice: timer_create failed: %s", g_strerror (errno));
    g_free (s);
    return NULL;
  }
  g_mutex_lock (&lock);
  g_ptr_array_add (slots, s);
  g_mutex_unlock (&lock);
  g_private_set (&owner, s);
  self_slot = s;
  return s;
}

static void
install_handler (void)
{
  static gsize done;

  if (g_once_init_enter (&done)) {
    struct sigaction sa = {0};
    slots = g_ptr_array_new ();
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset (&sa.sa_mask);
    if (sigaction (SIGRTMIN, &sa, NULL) != 0)
      g_error ("timeslice: sigaction: %s", g_strerror (errno));
    g_once_init_leave (&done, 1);
  }
}

/* Asks the kernel (Linux 6.12+; older ones ignore it) for a slice of `us` for the calling
 * thread, keeping its policy and niceness: a slice that runs no longer than a tick's interval
 * is over at the next tick. 0: the kernel's own slice again. */
static void
set_slice (gint64 us)
{
  struct { /* struct sched_attr of sched_setattr(2), which glibc 2.36 does not declare */
    guint32 size, policy;
    guint64 flags;
    gint32 nice;
    guint32 priority;
    guint64 runtime, deadline, period;
  } attr = {0};

  if (syscall (SYS_sched_getattr, 0, &attr, sizeof attr, 0) != 0)
    return;
  attr.size = sizeof attr;
  attr.flags = 0;
  attr.runtime = (guint64)us * 1000;
  if (syscall (SYS_sched_setattr, 0, &attr, 0) != 0)
    g_debug ("timeslice: sched_setattr: %s", g_strerror (errno));
}

void
crunch_timeslice_set (gdouble seconds)
{
  const gint64 us = seconds > 0 ? MAX ((gint64)(seconds * G_USEC_PER_SEC + 0.5), 1) : 0;

  if (us > 0)
    install_handler ();
  __atomic_store_n (&interval_us, us, __ATOMIC_RELEASE); /* after install_handler()'s list */
}

void
crunch_timeslice_busy (gint64 now)
{
  gint64 last = __atomic_load_n (&busy_at, __ATOMIC_RELAXED);
  gint64 us;

  if (now - last < MARK_US || !__atomic_compare_exchange_n (&busy_at, &last, now, FALSE,
                                                            __ATOMIC_RELAXED, __ATOMIC_RELAXED))
    return;
  us = __atomic_load_n (&interval_us, __ATOMIC_ACQUIRE);
  if (us <= 0)
    return;
  g_mutex_lock (&lock);
  for (guint i = 0; i < slots->len; i++) {
    Slot *s = slots->pdata[i];
    gint64 off = 0;
    if (__atomic_load_n (&s->computing, __ATOMIC_RELAXED) &&
        __atomic_compare_exchange_n (&s->armed, &off, us, FALSE, __ATOMIC_RELAXED,
                                     __ATOMIC_RELAXED))
      arm (s, us);
  }
  g_mutex_unlock (&lock);
}

void
crunch_timeslice_enter (void)
{
  const gint64 us = __atomic_load_n (&interval_us, __ATOMIC_ACQUIRE);
  Slot *s;

  if (us <= 0) {
    if (slice_us != 0) { /* turned off: back to the kernel's slice */
      set_slice (0);
      slice_us = 0;
    }
    return;
  }
  if ((s = slot_get ()) == NULL)
    return;
  if (slice_us != us) {
    set_slice (us);
    slice_us = us;
  }
  __atomic_store_n (&s->computing, 1, __ATOMIC_RELAXED);
}

void
crunch_timeslice_leave (void)
{
  if (self_slot != NULL)
    __atomic_store_n (&self_slot->computing, 0, __ATOMIC_RELAXED);
}

void
crunch_timeslice_policy_changed (void)
{
  slice_us = 0;
}

guint64
crunch_timeslice_ticks (void)
{
  return __atomic_load_n (&ticks, __ATOMIC_RELAXED);
}

gboolean
crunch_timeslice_armed (void)
{
  return self_slot != NULL && __atomic_load_n (&self_slot->armed, __ATOMIC_RELAXED) != 0;
}
