/* executor.h - a job, and the interface of whatever runs jobs: local threads (executor.c) and
 * NATS workers (executor-nats.c). An executor contributes its own metrics and readiness through
 * its class, so the ops endpoints never name a backend. */
#pragma once

#include <glib.h>

#include "functions.h"

typedef enum {
  CRUNCH_JOB_PENDING,
  CRUNCH_JOB_OK,
  CRUNCH_JOB_FAILED,      /* the function reported an error */
  CRUNCH_JOB_TIMED_OUT,   /* its deadline passed */
  CRUNCH_JOB_CLIENT_GONE, /* nobody waits for it any more */
  CRUNCH_JOB_SHUTDOWN,    /* the server is stopping */
  CRUNCH_JOB_UNAVAILABLE, /* no worker could take it (remote executor), or the function is
                           * unavailable (crash-looping in worker processes) -> 503 */
  CRUNCH_JOB_CRASHED,     /* its worker process died or broke the protocol -> 502 */
} CrunchJobOutcome;

typedef struct CrunchJob CrunchJob;
typedef void (*CrunchJobFunc) (CrunchJob *job, gpointer user_data);

/* A job is one computation. The scheduler holds a reference while it is queued or running, the
 * executor while it runs. Fields from `t_started` on are written by the thread that runs it, before
 * the executor's `finished` callback, and only read after it. */
struct CrunchJob {
  gint ref;
  const CrunchFunction *fn;
  GVariant *args;
  CrunchCancel cancel;     /* its flag holds the CrunchJobOutcome that asked to stop */
  gpointer scheduler;      /* the scheduler it came from (it outlives its jobs) */
  gpointer scheduler_data; /* owned by the scheduler; NULL once the job has finished there */
  guint64 executor_key;    /* the executor's name for it while it runs there */
  /* The latest deadline of the tickets waiting for it (monotonic, 0 = none), for executors that
   * pass it on (NATS workers). The scheduler raises it as tickets join; read it atomically. */
  gint64 deadline_us;

  gint64 t_started, t_finished; /* monotonic microseconds */
  CrunchJobOutcome outcome;
  GBytes *result;
  gchar *error;

  /* A batch (crunch_job_new_batch(), for a function whose max_batch > 1): `items` are the calls
   * it computes at once, jobs of their own whose outcomes crunch_job_run() sets (the batch's own
   * is OK). Its cancel flag is set once every item's is. `gather`, set by the scheduler, is
   * called first by the thread that runs it: it may add items (waiting up to the function's
   * max_delay for them), and the list is fixed once it returns. */
  GPtrArray *items;
  void (*gather) (CrunchJob *batch);
};

CrunchJob *crunch_job_new (const CrunchFunction *fn, GVariant *args);
CrunchJob *crunch_job_new_batch (const CrunchFunction *fn);
CrunchJob *crunch_job_ref (CrunchJob *job);
void crunch_job_unref (CrunchJob *job);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchJob, crunch_job_unref)
/* Ask the job to stop; the first reason wins. Safe from any thread. */
gboolean crunch_job_cancel (CrunchJob *job, CrunchJobOutcome reason);
void crunch_job_run (CrunchJob *job);
const gchar *crunch_job_outcome_name (CrunchJobOutcome outcome);

/* A gate every job run by local threads passes (NULL: none): enter() just before it runs,
 * and, when enter() returned TRUE, leave() once its `finished` callback has returned. The jobs
 * API installs it with a durable store: after a crash, jobs pass one at a time, each with its
 * start on disk and the previous one's end written before it runs. */
void crunch_executor_set_gate (gboolean (*enter) (gpointer data), void (*leave) (gpointer data),
                               gpointer data);

/* How worker threads are scheduled against the polling thread ([executor] policy). */
typedef enum {
  CRUNCH_WORKER_POLICY_OTHER, /* SCHED_OTHER at `nice` (the default) */
  CRUNCH_WORKER_POLICY_BATCH, /* SCHED_BATCH at `nice`: never preempts on wake-up */
  CRUNCH_WORKER_POLICY_IDLE,  /* SCHED_IDLE: runs only when nothing else wants the CPU */
  CRUNCH_WORKER_POLICY_AUTO,  /* local workers SCHED_IDLE with a starvation guard (idleguard.h)
                               * where the process may raise them again, else OTHER */
} CrunchWorkerPolicy;

/* "other", "batch", "idle" or "auto" (validated by the config loader); anything else is
 * "other". */
CrunchWorkerPolicy crunch_worker_policy_from_string (const gchar *name);
/* Gives the calling thread this niceness and policy (cheap when they are already in force): a
 * thread that runs jobs calls it before each job, so a reload applies to the next one. Only the
 * local executor guards workers: here "auto" is "other". */
void crunch_worker_thread_prepare (gint nice, CrunchWorkerPolicy policy);

/* What an executor can be told, at start and on reload. */
typedef struct {
  guint threads;             /* jobs it runs at once (local threads; NATS: jobs in flight) */
  gint nice;                 /* of threads that run jobs in this process */
  CrunchWorkerPolicy policy; /* likewise */
  gdouble idle_grace;        /* policy auto: seconds starved before a job is raised */
  gdouble timeslice;         /* seconds between a computing thread's ticks; 0 = none */
} CrunchExecutorSettings;

typedef struct CrunchExecutor CrunchExecutor;
typedef struct {
  const gchar *name;
  gboolean batches; /* it runs batch jobs (through crunch_job_run()) */
  /* Start the job; never fails. The executor calls `finished` exactly once per job, never from
   * inside submit() or cancel() (the scheduler calls both with its lock held). */
  void (*submit) (CrunchExecutor *self, CrunchJob *job);
  /* The job's cancel flag has just been set (crunch_job_cancel()): make it stop or answer it
   * soon. A job running a function sees the flag itself; this is for what the flag cannot
   * reach (a remote worker, a queue of the executor's own). */
  void (*cancel) (CrunchExecutor *self, CrunchJob *job);
  void (*apply) (CrunchExecutor *self, const CrunchExecutorSettings *settings);
  /* Optional: Prometheus families of its own, appended to /metrics (any thread). */
  void (*render_metrics) (CrunchExecutor *self, GString *out);
  /* Optional: why it cannot take jobs now (for /readyz), or NULL when it can (any thread). */
  const gchar *(*not_ready) (CrunchExecutor *self);
  /* Every submitted job has finished when this returns. */
  void (*free) (CrunchExecutor *self);
} CrunchExecutorClass;

struct CrunchExecutor {
  const CrunchExecutorClass *klass;
  CrunchJobFunc finished;
  gpointer finished_data;
};

CrunchExecutor *crunch_local_executor_new (const CrunchExecutorSettings *settings,
                                           CrunchJobFunc finished, gpointer finished_data);

static inline void
crunch_executor_submit (CrunchExecutor *self, CrunchJob *job)
{
  self->klass->submit (self, job);
}

static inline void
crunch_executor_cancel (CrunchExecutor *self, CrunchJob *job)
{
  self->klass->cancel (self, job);
}

static inline void
crunch_executor_apply (CrunchExecutor *self, const CrunchExecutorSettings *settings)
{
  self->klass->apply (self, settings);
}

static inline void
crunch_executor_render_metrics (CrunchExecutor *self, GString *out)
{
  if (self->klass->render_metrics != NULL)
    self->klass->render_metrics (self, out);
}

static inline const gchar *
crunch_executor_not_ready (CrunchExecutor *self)
{
  return self->klass->not_ready != NULL ? self->klass->not_ready (self) : NULL;
}

static inline void
crunch_executor_free (CrunchExecutor *self)
{
  if (self != NULL)
    self->klass->free (self);
}
