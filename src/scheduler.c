/* scheduler.c - decides when a job runs.
 *
 * DESIGN
 * One mutex guards the queue, the set of running jobs and the counters. Callers:
 * - the MHD polling thread: admit(), submit() (never blocks beyond the mutex);
 * - worker threads, through on_finished(): a job ended, so dispatch the next one;
 * - the main thread: configure() on reload, drain() and cancel_running() on shutdown.
 * The executor is given at most `threads` jobs at a time; the rest wait here, so the order in
 * which they run is decided here (FIFO) and the queue bound is exact. A job's done callback (the
 * server's, which resumes the connection) is always called outside the mutex. */
#include "scheduler.h"

struct CrunchScheduler {
  GMutex lock;
  CrunchExecutor *executor;
  GQueue queue;        /* CrunchJob*, waiting for a thread */
  GHashTable *running; /* CrunchJob* set */
  guint reserved;      /* admitted, not yet submitted */
  guint threads;
  guint queue_limit;
  gboolean draining;
};

static void
finish (CrunchJob *job, CrunchJobOutcome outcome)
{
  job->outcome = outcome;
  job->done (job, job->done_data);
  crunch_job_unref (job);
}

/* With the lock held: start as many queued jobs as there are free threads. */
static void
dispatch_locked (CrunchScheduler *self)
{
  while (g_hash_table_size (self->running) < self->threads && !g_queue_is_empty (&self->queue)) {
    CrunchJob *job = g_queue_pop_head (&self->queue);
    g_hash_table_add (self->running, job);
    crunch_executor_submit (self->executor, job);
  }
}

/* Executor callback, on a worker thread. */
static void
on_finished (CrunchJob *job, gpointer data)
{
  CrunchScheduler *self = data;

  g_mutex_lock (&self->lock);
  g_hash_table_remove (self->running, job);
  dispatch_locked (self);
  g_mutex_unlock (&self->lock);
  job->done (job, job->done_data);
  crunch_job_unref (job); /* the scheduler's reference */
}

CrunchScheduler *
crunch_scheduler_new (guint threads, guint queue_limit, gint nice)
{
  CrunchScheduler *self = g_new0 (CrunchScheduler, 1);

  g_mutex_init (&self->lock);
  g_queue_init (&self->queue);
  self->running = g_hash_table_new (NULL, NULL);
  self->threads = threads;
  self->queue_limit = queue_limit;
  self->executor = crunch_local_executor_new (threads, nice, on_finished, self);
  return self;
}

void
crunch_scheduler_free (CrunchScheduler *self)
{
  if (self == NULL)
    return;
  crunch_scheduler_drain (self);
  crunch_executor_free (self->executor); /* waits for running jobs */
  g_hash_table_unref (self->running);
  g_mutex_clear (&self->lock);
  g_free (self);
}

CrunchAdmit
crunch_scheduler_admit (CrunchScheduler *self)
{
  CrunchAdmit verdict = CRUNCH_ADMIT_OK;

  g_mutex_lock (&self->lock);
  if (self->draining)
    verdict = CRUNCH_ADMIT_DRAINING;
  else if (self->queue.length + self->reserved >= self->queue_limit)
    verdict = CRUNCH_ADMIT_QUEUE_FULL;
  else
    self->reserved++;
  g_mutex_unlock (&self->lock);
  return verdict;
}

void
crunch_scheduler_submit (CrunchScheduler *self, CrunchJob *job)
{
  gboolean refused;

  crunch_job_ref (job);
  job->t_submitted = g_get_monotonic_time ();
  g_mutex_lock (&self->lock);
  self->reserved--;
  refused = self->draining;
  if (!refused) {
    g_queue_push_tail (&self->queue, job);
    dispatch_locked (self);
  }
  g_mutex_unlock (&self->lock);
  if (refused)
    finish (job, CRUNCH_JOB_SHUTDOWN);
}

void
crunch_scheduler_configure (CrunchScheduler *self, guint threads, guint queue_limit, gint nice)
{
  g_mutex_lock (&self->lock);
  self->threads = threads;
  self->queue_limit = queue_limit;
  crunch_executor_set_threads (self->executor, threads);
  crunch_local_executor_set_nice (self->executor, nice);
  dispatch_locked (self);
  g_mutex_unlock (&self->lock);
}

void
crunch_scheduler_drain (CrunchScheduler *self)
{
  GQueue dropped = G_QUEUE_INIT;

  g_mutex_lock (&self->lock);
  self->draining = TRUE;
  dropped = self->queue;
  g_queue_init (&self->queue);
  g_mutex_unlock (&self->lock);
  for (GList *l = dropped.head; l != NULL; l = l->next)
    finish (l->data, CRUNCH_JOB_SHUTDOWN);
  g_queue_clear (&dropped);
}

void
crunch_scheduler_cancel_running (CrunchScheduler *self, CrunchJobOutcome reason)
{
  GHashTableIter iter;
  gpointer job;

  g_mutex_lock (&self->lock);
  g_hash_table_iter_init (&iter, self->running);
  while (g_hash_table_iter_next (&iter, &job, NULL))
    crunch_job_cancel (job, reason);
  g_mutex_unlock (&self->lock);
}

void
crunch_scheduler_get_stats (CrunchScheduler *self, CrunchSchedulerStats *stats)
{
  g_mutex_lock (&self->lock);
  stats->queued = self->queue.length;
  stats->running = g_hash_table_size (self->running);
  stats->threads = self->threads;
  stats->queue_limit = self->queue_limit;
  g_mutex_unlock (&self->lock);
}
