/* scheduler.h - admission (queue bound) and dispatch of jobs to the executor. */
#pragma once

#include "executor.h"

typedef enum {
  CRUNCH_ADMIT_OK,
  CRUNCH_ADMIT_QUEUE_FULL, /* -> 503 + Retry-After */
  CRUNCH_ADMIT_DRAINING,   /* -> 503, the server is stopping */
} CrunchAdmit;

typedef struct CrunchScheduler CrunchScheduler;

/* Takes ownership of the executor's `finished` callback. */
CrunchScheduler *crunch_scheduler_new (guint threads, guint queue_limit, gint nice);
void crunch_scheduler_free (CrunchScheduler *self);

/* Two steps, because the connection must be suspended between them: admit() reserves a place in
 * the queue (or refuses at once), submit() hands over the job; it never fails. */
CrunchAdmit crunch_scheduler_admit (CrunchScheduler *self);
void crunch_scheduler_submit (CrunchScheduler *self, CrunchJob *job);

void crunch_scheduler_configure (CrunchScheduler *self, guint threads, guint queue_limit,
                                 gint nice);
/* Shutdown: refuse new jobs and answer every queued one (CRUNCH_JOB_SHUTDOWN). */
void crunch_scheduler_drain (CrunchScheduler *self);
/* Ask every running job to stop. */
void crunch_scheduler_cancel_running (CrunchScheduler *self, CrunchJobOutcome reason);

typedef struct {
  guint queued;
  guint running;
  guint threads;
  guint queue_limit;
} CrunchSchedulerStats;
void crunch_scheduler_get_stats (CrunchScheduler *self, CrunchSchedulerStats *stats);
