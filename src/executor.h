/* executor.h - a job, and the interface of whatever runs jobs (local threads, later NATS). */
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
  CRUNCH_JOB_UNAVAILABLE, /* no worker could take it (remote executor) */
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
  gpointer scheduler_data; /* owned by the scheduler */
  /* The latest deadline of the tickets waiting for it (monotonic, 0 = none), for executors that
   * pass it on (NATS workers). The scheduler raises it as tickets join; read it atomically. */
  gint64 deadline_us;

  gint64 t_started, t_finished; /* monotonic microseconds */
  CrunchJobOutcome outcome;
  GBytes *result;
  gchar *error;
};

CrunchJob *crunch_job_new (const CrunchFunction *fn, GVariant *args);
CrunchJob *crunch_job_ref (CrunchJob *job);
void crunch_job_unref (CrunchJob *job);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchJob, crunch_job_unref)
/* Ask the job to stop; the first reason wins. Safe from any thread. */
gboolean crunch_job_cancel (CrunchJob *job, CrunchJobOutcome reason);
void crunch_job_run (CrunchJob *job);
const gchar *crunch_job_outcome_name (CrunchJobOutcome outcome);

typedef struct CrunchExecutor CrunchExecutor;
typedef struct {
  const gchar *name;
  /* Start the job; never fails. The executor calls `finished` exactly once per job, never from
   * inside submit() (the scheduler calls submit() with its lock held). */
  void (*submit) (CrunchExecutor *self, CrunchJob *job);
  void (*set_threads) (CrunchExecutor *self, guint threads);
  /* Every submitted job has finished when this returns. */
  void (*free) (CrunchExecutor *self);
} CrunchExecutorClass;

struct CrunchExecutor {
  const CrunchExecutorClass *klass;
  CrunchJobFunc finished;
  gpointer finished_data;
};

CrunchExecutor *crunch_local_executor_new (guint threads, gint nice, CrunchJobFunc finished,
                                           gpointer finished_data);
void crunch_local_executor_set_nice (CrunchExecutor *self, gint nice);

/* How worker threads are scheduled against the polling thread ([executor] policy). */
typedef enum {
  CRUNCH_WORKER_POLICY_OTHER, /* SCHED_OTHER at `nice` (the default) */
  CRUNCH_WORKER_POLICY_BATCH, /* SCHED_BATCH at `nice`: never preempts on wake-up */
  CRUNCH_WORKER_POLICY_IDLE,  /* SCHED_IDLE: runs only when nothing else wants the CPU */
} CrunchWorkerPolicy;

/* "other", "batch" or "idle" (validated by the config loader); anything else is "other". */
CrunchWorkerPolicy crunch_worker_policy_from_string (const gchar *name);
void crunch_local_executor_set_policy (CrunchExecutor *self, CrunchWorkerPolicy policy);

static inline void
crunch_executor_submit (CrunchExecutor *self, CrunchJob *job)
{
  self->klass->submit (self, job);
}

static inline void
crunch_executor_set_threads (CrunchExecutor *self, guint threads)
{
  self->klass->set_threads (self, threads);
}

static inline void
crunch_executor_free (CrunchExecutor *self)
{
  if (self != NULL)
    self->klass->free (self);
}
