/* jobs.h - the asynchronous jobs API: POST /jobs, GET /jobs/<id>[/result], DELETE /jobs/<id>.
 *
 * An async job is an ordinary CrunchJob that goes through the same admission and scheduler as a
 * synchronous call (same queue bound, fairness, deadline, cancellation), only nobody's connection
 * waits for it: its outcome is kept in a store under an unguessable id (128 random bits) for
 * [jobs] ttl seconds after it finishes, and the store holds at most [jobs] max_stored jobs. */
#pragma once

#include "call.h"
#include "config.h"

typedef struct CrunchJobs CrunchJobs;

/* An answer for the server to send. */
typedef struct {
  guint status;
  GBytes *body;
  const gchar *content_type;
  gchar *location;    /* Location header, or NULL */
  gchar *retry_after; /* Retry-After header, or NULL */
} CrunchJobsReply;

void crunch_jobs_reply_clear (CrunchJobsReply *reply);

CrunchJobs *crunch_jobs_new (CrunchCalls *calls, const CrunchConfig *config);
void crunch_jobs_configure (CrunchJobs *self, const CrunchConfig *config);
/* Cancels every unfinished job (the server is stopping); their outcomes arrive later. */
void crunch_jobs_cancel_all (CrunchJobs *self);
/* Call after the scheduler is freed (no job can finish any more), before the calls service. */
void crunch_jobs_free (CrunchJobs *self);

/* `body` is {"fn": NAME, "args": {...}}; `client` is the fairness key. */
CrunchJobsReply crunch_jobs_submit (CrunchJobs *self, const gchar *body, gsize len,
                                    const gchar *client);
/* `path` is what follows "/jobs/": "<id>" or "<id>/result". */
CrunchJobsReply crunch_jobs_get (CrunchJobs *self, const gchar *path);
CrunchJobsReply crunch_jobs_delete (CrunchJobs *self, const gchar *path);
