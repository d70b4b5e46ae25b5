/* idleguard.c - [executor] policy = auto: SCHED_IDLE workers, raised when starved.
 *
 * DESIGN
 * Under SCHED_IDLE a worker yields the CPU at once to the polling threads (the fast lane), and
 * to every other program on the machine: a busy neighbour would starve it. The guard bounds
 * that: each worker thread keeps a "starved" account, grown by every tick (100 ms) of a job in
 * which it had less than half a core and shrunk by every tick in which it had more; once the
 * account reaches `grace` seconds, the job's thread is raised to SCHED_OTHER (at its niceness,
 * [executor] nice) until the job ends. The account is the thread's, not the job's: while a
 * neighbour keeps taking the CPU, the thread's next job is raised after one starved tick instead of
 * another `grace`. Threads: one, "crunchd-guard", which sleeps while no guarded job runs. Workers
 * register around each job (enter/leave, under the guard's mutex); the guard reads their CPU clocks
 * and raises them with sched_setscheduler() on their thread id. A raised worker puts itself back
 * into SCHED_IDLE in leave(). Leaving SCHED_IDLE needs CAP_SYS_NICE or an RLIMIT_NICE that
 * allows `nice` (LimitNICE= under systemd): crunch_idle_guard_permitted() tries it. */
#include "idleguard.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define TICK_US (100 * 1000)

typedef struct {
  pid_t tid;
  clockid_t clock; /* the thread's CPU-time clock */
  gboolean busy;   /* running a guarded job */
  gboolean raised; /* its job runs at SCHED_OTHER */
  gint64 wall_us;  /* at the last sample */
  gint64 cpu_us;
  gint64 starved_us; /* the account, 0..grace */
} Slot;

struct CrunchIdleGuard {
  GMutex lock;
  GCond wake;
  GPtrArray *slots; /* Slot *, one per worker thread that ran a guarded job */
  guint busy;       /* slots with busy set */
  gint64 grace_us;
  guint64 raised; /* jobs raised, ever */
  gboolean stopping;
  GThread *thread;
};

static gint64
cpu_us (clockid_t clock)
{
  struct timespec ts;

  if (clock_gettime (clock, &ts) != 0)
    return 0;
  return (gint64)ts.tv_sec * G_USEC_PER_SEC + ts.tv_nsec / 1000;
}

/* With the lock held: one tick of every busy, not yet raised slot. */
static void
tick_locked (CrunchIdleGuard *self, gint64 now)
{
  for (guint i = 0; i < self->slots->len; i++) {
    Slot *s = self->slots->pdata[i];
    gint64 cpu, wall;

    if (!s->busy || s->raised)
      continue;
    cpu = cpu_us (s->clock);
    wall = now - s->wall_us;
    if (wall < TICK_US / 2)
      continue; /* it entered during this tick */
    if ((cpu - s->cpu_us) * 2 < wall)
      s->starved_us = MIN (s->starved_us + wall, self->grace_us);
    else
      s->starved_us = MAX (s->starved_us - wall, 0);
    s->wall_us = now;
    s->cpu_us = cpu;
    if (s->starved_us < self->grace_us)
      continue;
    /* The thread keeps its niceness across the change of policy. */
    if (sched_setscheduler (s->tid, SCHED_OTHER, &(struct sched_param){.sched_priority = 0}) != 0) {
      g_debug ("guard: could not raise worker %d: %s", (int)s->tid, g_strerror (errno));
      continue;
    }
    s->raised = TRUE;
    self->raised++;
    g_debug ("guard: worker %d had less than half a core for %.1f s: raised to SCHED_OTHER",
             (int)s->tid, (gdouble)self->grace_us / G_USEC_PER_SEC);
  }
}

static gpointer
guard_thread (gpointer data)
{
  CrunchIdleGuard *self = data;
  gint64 next = 0;

  g_mutex_lock (&self->lock);
  while (!self->stopping) {
    gint64 now = g_get_monotonic_time ();

    if (self->busy == 0) {
      g_cond_wait (&self->wake, &self->lock);
      next = 0;
      continue;
    }
    if (next == 0)
      next = now + TICK_US;
    if (now < next) {
      g_cond_wait_until (&self->wake, &self->lock, next);
      continue;
    }
    tick_locked (self, now);
    next = now + TICK_US;
  }
  g_mutex_unlock (&self->lock);
  return NULL;
}

CrunchIdleGuard *
crunch_idle_guard_new (gdouble grace)
{
  CrunchIdleGuard *self = g_new0 (CrunchIdleGuard, 1);

  g_mutex_init (&self->lock);
  g_cond_init (&self->wake);
  self->slots = g_ptr_array_new_with_free_func (g_free);
  crunch_idle_guard_set (self, grace);
  self->thread = g_thread_new ("crunchd-guard", guard_thread, self);
  return self;
}

void
crunch_idle_guard_set (CrunchIdleGuard *self, gdouble grace)
{
  g_mutex_lock (&self->lock);
  self->grace_us = (gint64)(grace * G_USEC_PER_SEC);
  g_mutex_unlock (&self->lock);
}

void
crunch_idle_guard_free (CrunchIdleGuard *self)
{
  if (self == NULL)
    return;
  g_mutex_lock (&self->lock);
  self->stopping = TRUE;
  g_cond_signal (&self->wake);
  g_mutex_unlock (&self->lock);
  g_thread_join (self->thread);
  g_ptr_array_unref (self->slots);
  g_cond_clear (&self->wake);
  g_mutex_clear (&self->lock);
  g_free (self);
}

/* The calling thread's slot (it is a worker's for the guard's whole life: the local executor's
 * pool keeps its threads, and there is one guard per executor). */
static __thread Slot *own_slot;

void
crunch_idle_guard_enter (CrunchIdleGuard *self)
{
  Slot *s = own_slot;

  g_mutex_lock (&self->lock);
  if (s == NULL) {
    s = own_slot = g_new0 (Slot, 1);
    s->tid = (pid_t)gettid ();
    pthread_getcpuclockid (pthread_self (), &s->clock); /* cannot fail for the calling thread */
    g_ptr_array_add (self->slots, s);
  }
  s->busy = TRUE;
  s->wall_us = g_get_monotonic_time ();
  s->cpu_us = cpu_us (s->clock);
  if (self->busy++ == 0)
    g_cond_signal (&self->wake);
  g_mutex_unlock (&self->lock);
}

void
crunch_idle_guard_leave (CrunchIdleGuard *self)
{
  Slot *s = own_slot;

  g_mutex_lock (&self->lock);
  s->busy = FALSE;
  self->busy--;
  if (s->raised) {
    /* entering SCHED_IDLE never needs a privilege */
    sched_setscheduler (0, SCHED_IDLE, &(struct sched_param){.sched_priority = 0});
    s->raised = FALSE;
  }
  g_mutex_unlock (&self->lock);
}

guint64
crunch_idle_guard_raised (CrunchIdleGuard *self)
{
  guint64 n;

  g_mutex_lock (&self->lock);
  n = self->raised;
  g_mutex_unlock (&self->lock);
  return n;
}

static gpointer
probe (gpointer data)
{
  gint nice = GPOINTER_TO_INT (data);
  struct sched_param param = {.sched_priority = 0};

  if (setpriority (PRIO_PROCESS, (id_t)gettid (), nice) != 0 ||
      sched_setscheduler (0, SCHED_IDLE, &param) != 0)
    return GINT_TO_POINTER (FALSE);
  return GINT_TO_POINTER (sched_setscheduler (0, SCHED_OTHER, &param) == 0);
}

gboolean
crunch_idle_guard_permitted (gint nice)
{
  GThread *thread = g_thread_new ("crunchd-probe", probe, GINT_TO_POINTER (nice));

  return GPOINTER_TO_INT (g_thread_join (thread));
}
