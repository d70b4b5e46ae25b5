/* jobs-private.h - what jobs.c (the table, submitting, recovery, the store) and jobs-events.c
 * (progress, event streams, the status page's running jobs) share: the table's types and the
 * few functions each calls of the other. Nothing outside these two files includes it. */
#pragma once

#include <json-glib/json-glib.h>

#include "jobs.h"
#include "stream.h"

struct CrunchJobs {
  GMutex lock;
  CrunchCalls *calls;
  CrunchStore *store;    /* NULL: memory only */
  GHashTable *entries;   /* id -> Entry* (owned) */
  GQueue finished;       /* Entry*, oldest first */
  GHashTable *held;      /* client -> entries it holds (GUINT_TO_POINTER) */
  GHashTable *keys;      /* "client\nIdempotency-Key" -> Entry* */
  GQueue backlog;        /* recovered Entry* waiting for admission, oldest first */
  guint backlog_timer;   /* main loop source retrying the backlog, 0 = none */
  gint careful;          /* recovered jobs after a crash still unfinished (atomic) */
  GMutex serial;         /* held by the one job running while careful (gate_enter()) */
  GSourceFunc recovered; /* main loop, once careful is back to 0 */
  gpointer recovered_data;
  gint64 ttl_us;
  guint max_stored, max_per_client, max_result_size, max_crashes;
  guint default_priority; /* the class of recovered jobs (the store does not keep one) */
  /* A leaf under both our lock and the scheduler's (which holds it when a job starts or reports
   * progress): every entry's news, below. */
  GMutex news;
  gchar boot[9]; /* this process's part of every event id (random), so ids never repeat */
};

typedef struct {
  CrunchJobs *jobs;
  gchar *id;
  const CrunchFunction *fn; /* NULL: recovered, and its function is no longer registered */
  gchar *fn_name;
  GVariant *args;
  gchar *client;                   /* who submitted it: its share of the store */
  gchar *key;                      /* its place in jobs->keys, or NULL */
  gchar *body_hash;                /* of the function and arguments, with an idempotency key */
  CrunchCall *call;                /* its compute call, NULL before one is made */
  CrunchLater *later;              /* the POST waiting for the store, NULL once answered */
  gboolean visible;                /* its id has been handed out */
  gboolean careful;                /* counted in jobs->careful */
  guint priority;                  /* its class (CrunchCallSpec.priority) */
  gint64 t_created;                /* wall clock, for humans */
  gint64 t_submitted, deadline_us; /* monotonic, of the current run */
  gint64 t_done;                   /* monotonic; 0 while unfinished */
  gboolean cancel_requested;
  guint attempts; /* runs started (atomic: on_started() has no lock) */
  guint crashes;
  /* the outcome, from t_done on */
  CrunchJobOutcome outcome;
  gboolean cached, coalesced;
  gboolean interrupted;    /* stopped by a shutdown: queued again in the store */
  gboolean lost;           /* shared store: another front end took it over (not ours to write) */
  gboolean remote_running; /* a copy read from a shared store: its owner runs it */
  GBytes *result;
  gchar *error;
  gint64 queued_us, run_us; /* -1: it never ran */
  /* Its news, under jobs->news. Every event has the next number (`seq`); a watcher that comes
   * back with Last-Event-ID N is sent what changed after N. */
  guint64 seq, state_seq, progress_seq, outcome_seq; /* 0: no such event yet */
  gboolean started;                                  /* a run has started ("running") */
  gboolean unwatched_stop;      /* a streamed call: cancelled when its last watcher leaves */
  gdouble progress;             /* the latest report, valid once progress_seq != 0 */
  gchar *progress_message;      /* or NULL */
  CrunchStream *pending_stream; /* a streamed call's, until it is accepted (our lock) */
  GPtrArray *streams;           /* CrunchStream*, watching it (NULL: none yet) */
} Entry;

#define ID_BYTES 16 /* 128 random bits */

/* jobs.c, with the lock held: */
Entry *jobs_find_locked (CrunchJobs *self, const gchar *id);
gchar *jobs_describe_json_locked (Entry *entry, gboolean one_line);
/* jobs.c: */
gchar *jobs_json_line (JsonBuilder *b);
CrunchReply jobs_no_such_job (void);
gboolean jobs_not_theirs (CrunchJobs *self, const CrunchRequestInfo *request);
gboolean jobs_elsewhere (CrunchJobs *self, const gchar *id);
CrunchReply jobs_submit_call (CrunchJobs *self, const CrunchRequestInfo *info,
                              const CrunchFunction *fn, GVariant *args, CrunchStream *stream);

/* jobs-events.c: the news of an entry. started: the scheduler's lock is held (on_started()). */
void jobs_news_started (Entry *entry);
/* With the lock held (finish_locked()). */
void jobs_news_finished_locked (Entry *entry);
/* CrunchCallSpec.progress of a job's call: the scheduler's lock is held. */
void jobs_on_progress (CrunchCall *call, gdouble fraction, const gchar *message, gpointer data);
/* With the lock held: the entry's events from Last-Event-ID `last_id` on, in `stream` (NULL: a
 * new one of `client`'s). */
CrunchReply jobs_watch_locked (CrunchJobs *self, Entry *entry, const gchar *last_id,
                               CrunchStream *stream, const gchar *client);
/* GET /jobs/ID/events */
CrunchReply jobs_events_handler (const CrunchRequestInfo *request, gpointer context);
