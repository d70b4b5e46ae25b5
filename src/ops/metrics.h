/* metrics.h - process-wide counters, gauges and histograms; Prometheus text output.
 *
 * Hooks (crunch_metrics_request(), crunch_metrics_job_*(), crunch_metrics_rejection()) may be
 * called from any thread at any rate: each is a handful of relaxed atomic additions, no lock.
 * Readers (the /metrics and /status.json handlers) add the counters up when asked. */
#pragma once

#include <glib.h>

#include "executor.h"
#include "routes.h"

/* What can happen to a compute request, per function: submitted, then one outcome; coalesced and
 * cache hits count requests that did not start a computation of their own. */
typedef enum {
  CRUNCH_JOB_EVENT_SUBMITTED,
  CRUNCH_JOB_EVENT_COMPLETED,   /* CRUNCH_JOB_OK */
  CRUNCH_JOB_EVENT_FAILED,      /* CRUNCH_JOB_FAILED */
  CRUNCH_JOB_EVENT_TIMED_OUT,   /* CRUNCH_JOB_TIMED_OUT */
  CRUNCH_JOB_EVENT_CLIENT_GONE, /* CRUNCH_JOB_CLIENT_GONE: cancelled, nobody waited */
  CRUNCH_JOB_EVENT_SHUTDOWN,    /* CRUNCH_JOB_SHUTDOWN */
  CRUNCH_JOB_EVENT_COALESCED,   /* a request joined an identical job already under way */
  CRUNCH_JOB_EVENT_CACHE_HIT,   /* a request was answered from a stored result */
  CRUNCH_JOB_EVENT_COUNT
} CrunchJobEvent;

/* Why a request was refused before any work (crunchd_rejections_total{reason=...}). */
typedef enum {
  CRUNCH_REJECT_QUEUE_FULL,         /* 503 */
  CRUNCH_REJECT_DRAINING,           /* 503 */
  CRUNCH_REJECT_CLIENT_LIMIT,       /* 429: the client's share of the queue is used up */
  CRUNCH_REJECT_BODY_TOO_LARGE,     /* 413 */
  CRUNCH_REJECT_STORE_FULL,         /* 503: POST /jobs, [jobs] max_stored */
  CRUNCH_REJECT_STORE_CLIENT_SHARE, /* 429: POST /jobs, [jobs] max_stored_per_client */
  CRUNCH_REJECT_STORE_ERROR,        /* 503: POST /jobs, the job store could not record it */
  CRUNCH_REJECT_STREAMS,            /* 503: an event stream past [jobs] max_streams */
  CRUNCH_REJECT_STREAMS_CLIENT,     /* 429: past [jobs] max_streams_per_client */
  CRUNCH_REJECT_DEADLINE,           /* 503: predicted queue wait + run time past its deadline */
  CRUNCH_REJECT_DECODER_FULL,       /* 503: too many large bodies waiting for the decoder */
  CRUNCH_REJECT_COUNT
} CrunchRejection;

/* Point-in-time values the metrics module cannot count itself; filled by the gauge source. */
typedef struct {
  guint jobs_queued;
  guint jobs_running;
  guint workers_busy;
  guint workers_total;
  guint queue_limit;
  guint connections_open;
  guint64 connections_timed_out; /* closed: no complete request within request_timeout */
  guint64 connections_made_room; /* closed: waiting, the oldest, when the table was nearly full */
  guint streams_open;            /* event streams (GET /jobs/ID/events) */
  guint bodies_decoding;         /* large request bodies waiting for the decoder or in it */
  gboolean draining;
} CrunchGauges;

/* What the owners of figures hand the ops endpoints (h2o's status handlers): gauges they fill
 * in, Prometheus families of their own, and whether they are ready. main.c wires them up, so
 * neither this module nor status.c names a server, scheduler or executor. Every member is
 * optional; each is called from whichever thread reads /metrics, /readyz or /status.json. */
typedef struct {
  void (*gauges) (CrunchGauges *gauges, gpointer data);
  void (*render) (GString *out, gpointer data);
  const gchar *(*not_ready) (gpointer data); /* why not, or NULL when ready */
  gchar *(*summary) (void);                  /* a line for the status page, or NULL */
  /* members of /status.json, each as "name":value followed by a comma */
  void (*status) (GString *out, gpointer data);
  gpointer data;
} CrunchMetricsSource;

/* Records the process start time. */
void crunch_metrics_init (void);
void crunch_metrics_set_enabled (gboolean enabled);
gboolean crunch_metrics_enabled (void);
/* Adds a source (copied); removes every source with this data. At most 8 at once. */
void crunch_metrics_add_source (const CrunchMetricsSource *source);
void crunch_metrics_remove_source (gpointer data);
void crunch_metrics_get_gauges (CrunchGauges *gauges);
/* The sources' members of /status.json. */
void crunch_metrics_status_members (GString *out);
/* The sources' status-page lines (free with g_strfreev). */
gchar **crunch_metrics_summaries (void);
/* The first source's reason not to be ready, or NULL. */
const gchar *crunch_metrics_not_ready (void);

/* ---- hooks ---- */

/* A request ended. route: the matched route, NULL when none matched. */
void crunch_metrics_request (const CrunchRoute *route, const gchar *method, guint status,
                             gint64 duration_us);
void crunch_metrics_rejection (CrunchRejection reason);
void crunch_metrics_job_event (const CrunchFunction *fn, CrunchJobEvent event);
/* A compute request got its answer: counts the outcome, and observes how long it waited for a
 * worker (queue_wait_us < 0: its job never started). Once per request. */
void crunch_metrics_job_answered (const CrunchFunction *fn, CrunchJobOutcome outcome,
                                  gint64 queue_wait_us);
/* A computation ended on a worker (once per job, however many requests shared it): observes its
 * run time and keeps it among the recent jobs for the status page. */
void crunch_metrics_job_ran (const CrunchJob *job);
/* A compute request parked (+1) or woke up (-1). */
void crunch_metrics_suspended_add (gint delta);

/* ---- readers ---- */

/* Prometheus text exposition format 0.0.4. */
GBytes *crunch_metrics_render (void);
#define CRUNCH_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

guint64 crunch_metrics_requests_total (void);
guint64 crunch_metrics_jobs_total (CrunchJobEvent event);
guint crunch_metrics_suspended (void);
gint64 crunch_metrics_start_time (void); /* real time, microseconds */

/* Per route label ("/fast", "/fib/", ..., and "none" for unmatched requests). */
guint crunch_metrics_n_routes (void);
const gchar *crunch_metrics_route_label (guint i);
guint64 crunch_metrics_route_requests (guint i);
/* The q-quantile (0..1) of the route's request durations since start, in seconds, interpolated
 * within histogram buckets; 0 when there were none. */
gdouble crunch_metrics_route_quantile (guint i, gdouble q);

typedef struct {
  gchar *function;
  gchar *args; /* GVariant text */
  const gchar *outcome;
  gdouble run_seconds;
  gint64 finished; /* real time, microseconds */
} CrunchJobRecord;
/* The `max` slowest (by run time) of the most recently finished jobs; free with
 * g_ptr_array_unref. */
GPtrArray *crunch_metrics_slowest_jobs (guint max);
