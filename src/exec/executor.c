/* executor.c - jobs, and the local executor: a GThreadPool.
 *
 * DESIGN
 * The scheduler decides *which* job runs next and never hands the executor more jobs than it has
 * threads, so the pool's own queue stays (almost) empty and fairness is not undone here.
 * Threads: the pool's workers call crunch_job_run(), then the `finished` callback (the scheduler),
 * which ends by resuming the waiting connection; after that the worker only drops its reference.
 * Workers lower their own CPU priority (`nice`, and the SCHED_BATCH or SCHED_IDLE policy) so
 * the MHD polling thread wins the CPU when every core computes; both are re-read per job, so a
 * reload applies them. Under policy auto they run SCHED_IDLE and the idle guard (idleguard.c, a
 * thread of its own) raises a job that has been starved for too long. A worker that runs the
 * function's code itself (not a child process's) gets a timer tick every [executor] timeslice
 * while the fast lane answers requests (timeslice.c), so a woken polling thread does not wait for
 * the kernel's scheduler tick. */
#include "executor.h"

#include "idleguard.h"
#include "timeslice.h"

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

CrunchJob *
crunch_job_new (const CrunchFunction *fn, GVariant *args)
{
  CrunchJob *job = g_new0 (CrunchJob, 1);

  job->ref = 1;
  job->fn = fn;
  job->args = g_variant_ref_sink (args);
  return job;
}

CrunchJob *
crunch_job_new_batch (const CrunchFunction *fn)
{
  CrunchJob *job = crunch_job_new (fn, g_variant_new ("()"));

  job->items = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_job_unref);
  return job;
}

CrunchJob *
crunch_job_ref (CrunchJob *job)
{
  g_atomic_int_inc (&job->ref);
  return job;
}

void
crunch_job_unref (CrunchJob *job)
{
  if (job == NULL || !g_atomic_int_dec_and_test (&job->ref))
    return;
  g_variant_unref (job->args);
  g_clear_pointer (&job->items, g_ptr_array_unref);
  g_clear_pointer (&job->result, g_bytes_unref);
  g_free (job->error);
  g_free (job);
}

gboolean
crunch_job_cancel (CrunchJob *job, CrunchJobOutcome reason)
{
  return g_atomic_int_compare_and_exchange (&job->cancel.flag, 0, (gint)reason);
}

static CrunchJobOutcome
outcome_of_error (const GError *error)
{
  if (error == NULL || error->domain != CRUNCH_FUNCTION_ERROR)
    return CRUNCH_JOB_FAILED;
  switch (error->code) {
  case CRUNCH_FUNCTION_ERROR_CRASHED:
  case CRUNCH_FUNCTION_ERROR_PROTOCOL:
    return CRUNCH_JOB_CRASHED;
  case CRUNCH_FUNCTION_ERROR_UNAVAILABLE:
    return CRUNCH_JOB_UNAVAILABLE;
  default:
    return CRUNCH_JOB_FAILED;
  }
}

/* Records the outcome of a run that gave `job->result` or `error`. */
static void
settle (CrunchJob *job, const GError *error)
{
  if (job->result != NULL) {
    job->outcome = CRUNCH_JOB_OK;
  } else if (crunch_cancelled (&job->cancel)) {
    job->outcome = (CrunchJobOutcome)g_atomic_int_get (&job->cancel.flag);
  } else {
    job->outcome = outcome_of_error (error);
    job->error = g_strdup (error ? error->message : "the function returned no result");
  }
}

/* A batch: its items' calls at once, each item settled on its own. */
static void
run_batch (CrunchJob *batch)
{
  guint n;
  gint64 t;

  if (batch->gather != NULL)
    batch->gather (batch);
  n = batch->items->len;
  g_autofree GVariant **args = g_new (GVariant *, n + 1);
  g_autofree const CrunchCancel **cancels = g_new (const CrunchCancel *, n + 1);
  g_autofree GBytes **results = g_new0 (GBytes *, n + 1);
  g_autofree GError **errors = g_new0 (GError *, n + 1);

  t = g_get_monotonic_time ();
  batch->t_started = t;
  for (guint i = 0; i < n; i++) {
    CrunchJob *item = batch->items->pdata[i];
    item->t_started = t;
    item->cancel.deadline_us = __atomic_load_n (&item->deadline_us, __ATOMIC_RELAXED);
    args[i] = item->args;
    cancels[i] = &item->cancel;
  }
  batch->cancel.deadline_us = __atomic_load_n (&batch->deadline_us, __ATOMIC_RELAXED);
  crunch_function_run_batch (batch->fn, n, args, cancels, &batch->cancel, results, errors);
  t = g_get_monotonic_time ();
  batch->t_finished = t;
  batch->outcome = CRUNCH_JOB_OK;
  for (guint i = 0; i < n; i++) {
    CrunchJob *item = batch->items->pdata[i];
    item->t_finished = t;
    item->result = results[i];
    settle (item, errors[i]);
    g_clear_error (&errors[i]);
  }
}

/* Runs the function (or the batch) and records the outcome; any thread. */
void
crunch_job_run (CrunchJob *job)
{
  g_autoptr (GError) error = NULL;

  if (job->items != NULL) {
    run_batch (job);
    return;
  }
  job->t_started = g_get_monotonic_time ();
  job->cancel.deadline_us = __atomic_load_n (&job->deadline_us, __ATOMIC_RELAXED);
  if (!crunch_cancelled (&job->cancel))
    job->result = crunch_function_run (job->fn, job->args, &job->cancel, &error);
  job->t_finished = g_get_monotonic_time ();
  settle (job, error);
}

const gchar *
crunch_job_outcome_name (CrunchJobOutcome outcome)
{
  static const gchar *const names[] = {"pending",     "ok",       "failed",      "timed-out",
                                       "client-gone", "shutdown", "unavailable", "crashed"};
  return names[outcome];
}

/* ---- the local executor ---- */

typedef struct {
  CrunchExecutor parent;
  GThreadPool *pool;
  gint nice;
  gint policy;            /* CrunchWorkerPolicy in force: auto is resolved to idle or other */
  gint guarded;           /* policy auto as SCHED_IDLE: jobs pass the guard */
  CrunchIdleGuard *guard; /* made at the first apply that needs it, kept until free */
} LocalExecutor;

CrunchWorkerPolicy
crunch_worker_policy_from_string (const gchar *name)
{
  if (g_strcmp0 (name, "batch") == 0)
    return CRUNCH_WORKER_POLICY_BATCH;
  if (g_strcmp0 (name, "idle") == 0)
    return CRUNCH_WORKER_POLICY_IDLE;
  if (g_strcmp0 (name, "auto") == 0)
    return CRUNCH_WORKER_POLICY_AUTO;
  return CRUNCH_WORKER_POLICY_OTHER;
}

/* Under SCHED_IDLE a woken polling thread preempts a worker at once, where nice 10 only weighs
 * the shares (bench/NOTES.md: the polling thread waited 0.4-1.8 us per request instead of
 * 2.8-5.2 us while every core computed). Leaving SCHED_IDLE again may need privileges (EPERM):
 * then the thread keeps its old policy, as a failed setpriority() keeps the old niceness. */
static void
set_thread_policy (CrunchWorkerPolicy policy)
{
  static __thread gint applied = CRUNCH_WORKER_POLICY_OTHER;
  static const int policies[] = {SCHED_OTHER, SCHED_BATCH, SCHED_IDLE};
  struct sched_param param = {.sched_priority = 0};

  if (policy == CRUNCH_WORKER_POLICY_AUTO)
    policy = CRUNCH_WORKER_POLICY_OTHER;
  if (applied == (gint)policy)
    return;
  /* With a thread id, sched_setscheduler() changes that thread alone. */
  if (sched_setscheduler ((pid_t)gettid (), policies[policy], &param) != 0)
    g_debug ("could not set worker scheduling policy %d: %s", policy, g_strerror (errno));
  else {
    applied = (gint)policy;
    crunch_timeslice_policy_changed ();
  }
}

static void
set_thread_nice (gint nice)
{
  static __thread gint applied = 0;

  if (applied == nice)
    return;
  /* On Linux, PRIO_PROCESS with a thread id sets that thread's niceness alone. */
  if (setpriority (PRIO_PROCESS, (id_t)gettid (), nice) != 0)
    g_debug ("could not set worker niceness to %d: %s", nice, g_strerror (errno));
  applied = nice;
}

void
crunch_worker_thread_prepare (gint nice, CrunchWorkerPolicy policy)
{
  set_thread_policy (policy);
  set_thread_nice (nice);
}

static struct {
  gboolean (*enter) (gpointer data);
  void (*leave) (gpointer data);
  gpointer data;
} gate;

void
crunch_executor_set_gate (gboolean (*enter) (gpointer data), void (*leave) (gpointer data),
                          gpointer data)
{
  gate.leave = leave;
  gate.data = data;
  __atomic_store_n (&gate.enter, enter, __ATOMIC_RELEASE);
}

static void
local_worker (gpointer data, gpointer user_data)
{
  CrunchJob *job = data;
  LocalExecutor *self = user_data;
  gboolean (*enter) (gpointer) = __atomic_load_n (&gate.enter, __ATOMIC_ACQUIRE);
  gboolean held = enter != NULL && enter (gate.data);

  gboolean guarded = g_atomic_int_get (&self->guarded);
  CrunchWorkerPolicy policy =
      guarded ? CRUNCH_WORKER_POLICY_IDLE : (CrunchWorkerPolicy)g_atomic_int_get (&self->policy);
  /* Ticks where the function's code runs on this thread (not in a child process it waits for)
   * and a woken thread does not preempt it at once anyway (SCHED_IDLE) */
  gboolean here = job->fn->run == NULL && (job->items == NULL || job->fn->run_batch == NULL) &&
                  policy != CRUNCH_WORKER_POLICY_IDLE;

  crunch_worker_thread_prepare (g_atomic_int_get (&self->nice), policy);
  if (guarded)
    crunch_idle_guard_enter (self->guard);
  if (here)
    crunch_timeslice_enter ();
  crunch_job_run (job);
  if (here)
    crunch_timeslice_leave ();
  if (guarded)
    crunch_idle_guard_leave (self->guard);
  self->parent.finished (job, self->parent.finished_data);
  if (held)
    gate.leave (gate.data);
  crunch_job_unref (job);
}

static void
local_submit (CrunchExecutor *parent, CrunchJob *job)
{
  LocalExecutor *self = (LocalExecutor *)parent;

  g_thread_pool_push (self->pool, crunch_job_ref (job), NULL);
}

/* The flag is all a function on one of our threads needs, and the scheduler never hands us
 * more jobs than threads, so nothing waits in the pool's queue to be dropped. */
static void
local_cancel (CrunchExecutor *parent, CrunchJob *job)
{
}

/* Policy auto: SCHED_IDLE under the guard where this process may raise a worker again, else
 * plain SCHED_OTHER (said once per start or reload). */
static void
apply_policy (LocalExecutor *self, const CrunchExecutorSettings *settings)
{
  gboolean guarded = FALSE;

  if (settings->policy == CRUNCH_WORKER_POLICY_AUTO) {
    guarded = crunch_idle_guard_permitted (settings->nice);
    if (!guarded)
      g_message ("[executor] policy = auto: workers run as policy = other, because this process "
                 "may not raise a thread out of SCHED_IDLE at nice %d (it needs CAP_SYS_NICE or "
                 "RLIMIT_NICE >= %d; under systemd LimitNICE=+%d)",
                 settings->nice, 20 - settings->nice, settings->nice);
    else if (self->guard == NULL)
      g_atomic_pointer_set (&self->guard, crunch_idle_guard_new (settings->idle_grace));
    else
      crunch_idle_guard_set (self->guard, settings->idle_grace);
  }
  g_atomic_int_set (&self->nice, settings->nice);
  g_atomic_int_set (&self->policy, (gint)(settings->policy == CRUNCH_WORKER_POLICY_AUTO
                                              ? CRUNCH_WORKER_POLICY_OTHER
                                              : settings->policy));
  g_atomic_int_set (&self->guarded, guarded);
  crunch_timeslice_set (settings->timeslice);
}

static void
local_apply (CrunchExecutor *parent, const CrunchExecutorSettings *settings)
{
  LocalExecutor *self = (LocalExecutor *)parent;

  g_thread_pool_set_max_threads (self->pool, (gint)settings->threads, NULL);
  apply_policy (self, settings);
}

static void
local_render_metrics (CrunchExecutor *parent, GString *out)
{
  LocalExecutor *self = (LocalExecutor *)parent;
  CrunchIdleGuard *guard = g_atomic_pointer_get (&self->guard);

  g_string_append_printf (
      out,
      "# HELP crunchd_worker_raised_total Jobs the idle guard raised out of SCHED_IDLE after "
      "idle_grace seconds with less than half a core ([executor] policy = auto).\n"
      "# TYPE crunchd_worker_raised_total counter\n"
      "crunchd_worker_raised_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_worker_ticks_total Timer ticks that interrupted a computing worker while "
      "the fast lane answered requests ([executor] timeslice).\n"
      "# TYPE crunchd_worker_ticks_total counter\n"
      "crunchd_worker_ticks_total %" G_GUINT64_FORMAT "\n",
      guard != NULL ? crunch_idle_guard_raised (guard) : 0, crunch_timeslice_ticks ());
}

static void
local_free (CrunchExecutor *parent)
{
  LocalExecutor *self = (LocalExecutor *)parent;

  /* wait = TRUE: queued jobs still run, so every job reaches `finished`. */
  g_thread_pool_free (self->pool, FALSE, TRUE);
  crunch_idle_guard_free (self->guard);
  g_free (self);
}

static const CrunchExecutorClass local_class = {
    .name = "local",
    .batches = TRUE,
    .submit = local_submit,
    .cancel = local_cancel,
    .apply = local_apply,
    .render_metrics = local_render_metrics,
    .free = local_free,
};

CrunchExecutor *
crunch_local_executor_new (const CrunchExecutorSettings *settings, CrunchJobFunc finished,
                           gpointer finished_data)
{
  LocalExecutor *self = g_new0 (LocalExecutor, 1);

  self->parent.klass = &local_class;
  self->parent.finished = finished;
  self->parent.finished_data = finished_data;
  apply_policy (self, settings);
  /* exclusive: the threads are ours, start now, and keep their niceness */
  self->pool = g_thread_pool_new (local_worker, self, (gint)settings->threads, TRUE, NULL);
  return &self->parent;
}
