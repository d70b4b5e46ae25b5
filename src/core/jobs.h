/* jobs.h - the asynchronous jobs API: POST /jobs, GET /jobs/<id>[/result|/events],
 * DELETE /jobs/<id>.
 *
 * An async job is an ordinary CrunchJob that goes through the same admission and scheduler as a
 * synchronous call (same queue bound, fairness, deadline, cancellation), only nobody's connection
 * waits for it: its outcome is kept in a store under an unguessable id (128 random bits) for
 * [jobs] ttl seconds after it finishes, and the store holds at most [jobs] max_stored jobs.
 * With a durable store (store.h) jobs survive restarts: see jobs.c. */
#pragma once

#include "call.h"
#include "config.h"
#include "routes.h"
#include "store.h"

typedef struct CrunchJobs CrunchJobs;

/* `store` (taken; NULL: jobs live in memory only) keeps jobs across restarts. */
CrunchJobs *crunch_jobs_new (CrunchCalls *calls, const CrunchConfig *config, CrunchStore *store);
/* Rebuilds the jobs from the store; FALSE (and an error that names the file) if the store
 * cannot be read. Before serving. */
gboolean crunch_jobs_recover (CrunchJobs *self, GError **error);
/* Whether jobs recovered after an unclean stop (a crash) are still unfinished: while they are,
 * the caller runs one job at a time, so that a crash is pinned on the one job that caused it. */
gboolean crunch_jobs_recovering (CrunchJobs *self);
/* Starts the recovered jobs again; `recovered` runs on the main loop once no recovered job is left
 * unfinished (if crunch_jobs_recovering() was TRUE). */
void crunch_jobs_resume (CrunchJobs *self, GSourceFunc recovered, gpointer data);
void crunch_jobs_configure (CrunchJobs *self, const CrunchConfig *config);
/* Cancels every unfinished job (the server is stopping); their outcomes arrive later. */
void crunch_jobs_cancel_all (CrunchJobs *self);
/* Call after the scheduler is freed (no job can finish any more), before the calls service.
 * Writes everything to the store and closes it. */
void crunch_jobs_free (CrunchJobs *self);
/* For an exit that leaves jobs on their threads (functions that ignore their cancel): every
 * write made to the job store so far reaches the disk and the store closes; nothing else is
 * freed, for those threads may still read it until the process ends. */
void crunch_jobs_close_store (CrunchJobs *self);

/* GET/POST /fn/NAME with Accept: text/event-stream: the call becomes a job (as POST /jobs would
 * make it; `info` as for the jobs lane) whose events (GET /jobs/ID/events) are the answer; the job
 * is cancelled if every watcher leaves before it ends. */
CrunchReply crunch_jobs_stream_call (CrunchJobs *self, const CrunchRequestInfo *info,
                                     const CrunchFunction *fn, GVariant *args);

/* For /status.json: "running_jobs":[{"id", "fn", "client", "age_seconds", "progress",
 * "message"}, ...], (the oldest 20 running jobs, with a trailing comma). Any thread. */
void crunch_jobs_render_running (GString *out, gpointer jobs);

/* The handler of a jobs route by its verb in the route table ("submit", "describe", "result",
 * "delete"); its context is the CrunchJobs. NULL for an unknown verb. */
CrunchHandler crunch_jobs_handler (const gchar *verb);
