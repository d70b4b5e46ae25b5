/* scheduler.h - admission, priorities, per-client fairness, coalescing, and dispatch to the
 * executor.
 *
 * A *ticket* is one request waiting for an answer; a *job* is one computation. Identical tickets
 * for a pure function share one job (coalescing). A ticket is answered exactly once: by its job
 * finishing, or earlier by crunch_scheduler_abandon() (deadline passed, client gone). */
#pragma once

#include "executor.h"

/* Priority classes: 0 (lowest) to CRUNCH_PRIORITY_MAX; a waiting job of a higher class goes
 * first, and aging ([executor] priority_aging) lifts a class that has waited. */
#define CRUNCH_PRIORITY_MAX 9
#define CRUNCH_PRIORITY_LEVELS (CRUNCH_PRIORITY_MAX + 1)

/* Retry-After is at most this many seconds. */
#define CRUNCH_RETRY_AFTER_MAX 3600

typedef enum {
  CRUNCH_ADMIT_OK,
  CRUNCH_ADMIT_QUEUE_FULL,   /* -> 503 + Retry-After */
  CRUNCH_ADMIT_CLIENT_LIMIT, /* -> 429 + Retry-After */
  CRUNCH_ADMIT_DRAINING,     /* -> 503, the server is stopping */
  CRUNCH_ADMIT_DEADLINE,     /* -> 503 + Retry-After: predicted to miss its deadline */
} CrunchAdmit;

typedef struct CrunchTicket CrunchTicket;
typedef void (*CrunchTicketFunc) (CrunchTicket *ticket, gpointer data);
typedef void (*CrunchTicketProgressFunc) (CrunchTicket *ticket, gdouble fraction,
                                          const gchar *message, gpointer data);

/* Fields below `outcome` are written by the scheduler before `answered` is called and only read
 * after it. */
struct CrunchTicket {
  gint ref;
  const CrunchFunction *fn;
  GVariant *args;
  gchar *client;
  gint64 deadline_us; /* monotonic */
  guint priority;     /* its class, 0 to CRUNCH_PRIORITY_MAX (set before submit()) */
  gint64 t_submitted;
  CrunchTicketFunc answered; /* any thread, exactly once */
  gpointer answered_data;
  /* Optional: its job went to the executor, or it joined a running job. Called with the
   * scheduler's lock held (on the thread that dispatched it): it may only pass the news on, never
   * call the scheduler. Same data as `answered`. */
  CrunchTicketFunc started;
  /* Optional: its job's progress report (fraction never lower than the one before), on the
   * thread that got it, with the scheduler's lock held like `started`. Same data. */
  CrunchTicketProgressFunc progress;

  CrunchJobOutcome outcome;
  GBytes *result;
  gchar *error;
  gint64 t_started, t_finished; /* of the job that answered it (0 if it never ran) */
  gboolean coalesced;           /* it joined a job another ticket started */

  /* scheduler-private, under its lock */
  gint state;
  gpointer job;
};

CrunchTicket *crunch_ticket_new (const CrunchFunction *fn, GVariant *args, const gchar *client,
                                 gint64 deadline_us, CrunchTicketFunc answered, gpointer data);
CrunchTicket *crunch_ticket_ref (CrunchTicket *ticket);
void crunch_ticket_unref (CrunchTicket *ticket);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchTicket, crunch_ticket_unref)

typedef struct {
  guint threads;
  guint queue_limit;
  guint per_client_limit; /* 0 = none */
  gboolean coalesce;
  gint nice;
  guint cache_entries;       /* LRU result cache; 0 = off */
  CrunchWorkerPolicy policy; /* of local worker threads */
  gdouble priority_aging;    /* seconds a class waits unserved to count one class up; 0 = off */
  gboolean batching;         /* group calls of functions that declare max_batch > 1 */
  gdouble idle_grace;        /* policy auto: seconds starved before a job is raised */
  gdouble timeslice;         /* seconds between a computing worker's ticks; 0 = none */
} CrunchSchedulerSettings;

typedef struct CrunchScheduler CrunchScheduler;

CrunchScheduler *crunch_scheduler_new (const CrunchSchedulerSettings *settings);
/* Makes the executor jobs go to (NULL + error if it cannot); `finished` is the scheduler's. */
typedef CrunchExecutor *(*CrunchExecutorFactory) (const CrunchExecutorSettings *settings,
                                                  CrunchJobFunc finished, gpointer finished_data,
                                                  gpointer user_data, GError **error);
/* The same with another executor than the local pool (factory NULL = local). */
CrunchScheduler *crunch_scheduler_new_full (const CrunchSchedulerSettings *settings,
                                            CrunchExecutorFactory factory, gpointer factory_data,
                                            GError **error);
void crunch_scheduler_free (CrunchScheduler *self);
void crunch_scheduler_configure (CrunchScheduler *self, const CrunchSchedulerSettings *settings);

/* Two steps, because the connection must be suspended between them: admit() reserves a place
 * for `client` (or refuses at once), submit() hands over the ticket and never fails. */
CrunchAdmit crunch_scheduler_admit (CrunchScheduler *self, const gchar *client);

/* What admission knows of a call, for its prediction. */
typedef struct {
  const gchar *client;
  const CrunchFunction *fn; /* NULL: no prediction, never refused for its deadline */
  guint priority;
  gint64 deadline_us; /* monotonic; 0 = none */
} CrunchAdmitRequest;

/* Admission's prediction for a call (seconds), filled whatever the verdict. */
typedef struct {
  gdouble wait;      /* queue wait: the work that would run before it, over the workers */
  gdouble run;       /* its function's estimated run time; < 0: no estimate yet */
  gdouble timeout;   /* its deadline, from now */
  guint retry_after; /* for a refusal: 1 to CRUNCH_RETRY_AFTER_MAX */
} CrunchPrediction;

/* admit() with a priority class and a prediction: a call whose predicted wait plus run time
 * exceeds its deadline is refused (CRUNCH_ADMIT_DEADLINE) when its function has an estimate. */
CrunchAdmit crunch_scheduler_admit_call (CrunchScheduler *self, const CrunchAdmitRequest *request,
                                         CrunchPrediction *prediction);
/* The running estimate of fn's run time in seconds (an EWMA of its successful runs), or -1. */
gdouble crunch_scheduler_estimate (CrunchScheduler *self, const CrunchFunction *fn);
/* Prometheus families of its own: crunchd_function_run_estimate_seconds{function} and
 * crunchd_jobs_queued_by_priority{priority}. Any thread. */
void crunch_scheduler_render_metrics (CrunchScheduler *self, GString *out);
/* The /status.json member "batches" (a CrunchMetricsSource.status): per function that has run
 * batches, {function, max_batch, batches, mean_size, mean_wait_seconds}, then a comma. */
void crunch_scheduler_render_status (GString *out, gpointer self);
void crunch_scheduler_submit (CrunchScheduler *self, CrunchTicket *ticket);
/* A cached result for this call, or NULL (checked before admission: a hit needs no job). */
GBytes *crunch_scheduler_cached (CrunchScheduler *self, const CrunchFunction *fn, GVariant *args);
/* Answer the ticket now with `why` (TIMED_OUT, CLIENT_GONE); its job is dropped or cancelled
 * if no other ticket waits for it. No-op if the ticket was answered already. Any thread. */
void crunch_scheduler_abandon (CrunchScheduler *self, CrunchTicket *ticket, CrunchJobOutcome why);

/* Whether the ticket's job is on a thread now (for the jobs API's "running" state). Any thread. */
gboolean crunch_scheduler_ticket_running (CrunchScheduler *self, CrunchTicket *ticket);

/* The executor jobs go to, for its metrics and readiness (crunch_executor_render_metrics(),
 * crunch_executor_not_ready()). */
CrunchExecutor *crunch_scheduler_executor (CrunchScheduler *self);

/* Shutdown: refuse new tickets and answer every queued one (CRUNCH_JOB_SHUTDOWN). */
void crunch_scheduler_drain (CrunchScheduler *self);
/* Ask every running job to stop. */
void crunch_scheduler_cancel_running (CrunchScheduler *self, CrunchJobOutcome reason);
/* Answer the tickets of every running job now (`why`), leaving the jobs on their threads: at a
 * stop, for functions that ignore their cancel. */
void crunch_scheduler_answer_running (CrunchScheduler *self, CrunchJobOutcome why);

typedef struct {
  guint queued;  /* jobs waiting for a thread */
  guint running; /* jobs on a thread (each call of a batch counts) */
  guint busy;    /* worker slots in use (a batch is one) */
  guint threads;
  guint queue_limit;
  guint clients; /* clients with a ticket in flight */
  /* since start */
  guint64 jobs_started;
  guint64 tickets_coalesced;   /* answered by a job another ticket started */
  guint64 tickets_timed_out;   /* answered 504 */
  guint64 tickets_client_gone; /* their client hung up while waiting */
  guint64 jobs_cancelled;      /* dropped from the queue or stopped: nobody waited any more */
  guint64 rejected_queue_full;
  guint64 rejected_client_limit;
  guint64 rejected_deadline;
  guint cache_size;
  guint64 cache_hits, cache_misses;
} CrunchSchedulerStats;
void crunch_scheduler_get_stats (CrunchScheduler *self, CrunchSchedulerStats *stats);
