/* jobs-events.c - watching jobs: progress reports, GET /jobs/ID/events, streamed calls, and the
 * status page's running jobs (see jobs-private.h for what it shares with jobs.c).
 *
 * DESIGN
 * It owns no thread; it runs on whichever thread has news. An entry's news (seq numbers, the
 * latest progress, its watchers' streams) is guarded by jobs->news, a leaf taken under the jobs
 * lock (finishing, watching) and under the scheduler's lock (a run starts, progress), never the
 * other way round. A stream's `gone` callback (on_watcher_gone) comes from a thread that holds
 * none of these locks (stream.c promises it), so it may take the jobs lock and cancel a
 * streamed call nobody watches any more. */
#include "jobs-private.h"

#include <string.h>

#include "json.h"
#include "metrics.h"

/* ---- news: progress reports and event streams (GET /jobs/ID/events) ---- */

/* An event's id: "JOB.BOOT.SEQ". The job's id lets a streamed call's EventSource come back to
 * its job (Last-Event-ID on /fn/NAME); the process's random part makes numbers from before a
 * restart (counted again from 1) recognisable as such. */
#define EVENT_ID_MAX (ID_BYTES * 2 + 1 + 8 + 1 + 20 + 1)

static void
event_id (const Entry *entry, guint64 seq, gchar id[EVENT_ID_MAX])
{
  g_snprintf (id, EVENT_ID_MAX, "%s.%s.%" G_GUINT64_FORMAT, entry->id, entry->jobs->boot, seq);
}

/* A Last-Event-ID: the job it names (NULL when it is not one of ours) and, when it is from this
 * process, the event number (else 0: from before a restart, all is news). */
static gchar *
parse_event_id (CrunchJobs *self, const gchar *text, guint64 *seq)
{
  g_auto (GStrv) parts = text != NULL ? g_strsplit (text, ".", 4) : NULL;

  *seq = 0;
  if (parts == NULL || g_strv_length (parts) != 3 || !crunch_store_id_valid (parts[0]))
    return NULL;
  if (g_str_equal (parts[1], self->boot) &&
      !g_ascii_string_to_unsigned (parts[2], 10, 1, G_MAXUINT64, seq, NULL))
    *seq = 0;
  return g_strdup (parts[0]);
}

/* With jobs->news held: an event to every watcher (`end`: the last one, the streams end and
 * are dropped). A stream that has closed (its client left or reads nothing) stays until its
 * `gone` (on_watcher_gone()) drops it: that is where a streamed call nobody watches stops. */
static void
broadcast_locked (Entry *entry, guint64 seq, const gchar *event, const gchar *data, gboolean end)
{
  gchar id[EVENT_ID_MAX];

  if (entry->streams == NULL)
    return;
  event_id (entry, seq, id);
  for (guint i = entry->streams->len; i-- > 0;) {
    CrunchStream *stream = entry->streams->pdata[i];
    crunch_stream_event (stream, id, event, data);
    if (end) {
      crunch_stream_end (stream);
      g_ptr_array_remove_index_fast (entry->streams, i);
    }
  }
}

static gchar *
state_data (const Entry *entry, const gchar *state, guint attempts)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  crunch_json_member_string (b, "id", entry->id);
  crunch_json_member_string (b, "state", state);
  crunch_json_member_int (b, "attempts", attempts);
  json_builder_end_object (b);
  return jobs_json_line (b);
}

static gchar *
progress_data (gdouble fraction, const gchar *message)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "fraction");
  json_builder_add_double_value (b, fraction);
  if (message != NULL)
    crunch_json_member_string (b, "message", message);
  json_builder_end_object (b);
  return jobs_json_line (b);
}

/* The scheduler's lock is held (on_started()): the job runs. */
void
jobs_news_started (Entry *entry)
{
  CrunchJobs *self = entry->jobs;
  g_autofree gchar *data = state_data (entry, "running", g_atomic_int_get (&entry->attempts));

  g_mutex_lock (&self->news);
  entry->started = TRUE;
  entry->state_seq = ++entry->seq;
  broadcast_locked (entry, entry->seq, "state", data, FALSE);
  g_mutex_unlock (&self->news);
}

/* CrunchCallSpec.progress: the scheduler's lock is held. */
void
jobs_on_progress (CrunchCall *call, gdouble fraction, const gchar *message, gpointer data)
{
  Entry *entry = data;
  CrunchJobs *self = entry->jobs;
  g_autofree gchar *json = progress_data (fraction, message);

  g_mutex_lock (&self->news);
  entry->progress = fraction;
  g_free (entry->progress_message);
  entry->progress_message = g_strdup (message);
  entry->progress_seq = ++entry->seq;
  broadcast_locked (entry, entry->seq, "progress", json, FALSE);
  g_mutex_unlock (&self->news);
}

/* With the lock held (finish_locked()): the outcome is the last event. A job interrupted by a
 * shutdown has none here: its watchers reconnect to the next process. */
void
jobs_news_finished_locked (Entry *entry)
{
  CrunchJobs *self = entry->jobs;
  g_autofree gchar *outcome = NULL;
  gboolean watched;

  g_mutex_lock (&self->news);
  watched = entry->streams != NULL && entry->streams->len > 0;
  g_mutex_unlock (&self->news);
  /* (no watcher can come meanwhile: watching takes our lock) */
  if (watched && !entry->interrupted)
    outcome = jobs_describe_json_locked (entry, TRUE);
  g_mutex_lock (&self->news);
  entry->outcome_seq = ++entry->seq;
  if (outcome != NULL)
    broadcast_locked (entry, entry->seq, "outcome", outcome, TRUE);
  else if (entry->streams != NULL)
    for (guint i = 0; i < entry->streams->len; i++)
      crunch_stream_end (entry->streams->pdata[i]);
  g_clear_pointer (&entry->streams, g_ptr_array_unref);
  g_mutex_unlock (&self->news);
}

/* A watcher's stream, for its `gone` callback. */
typedef struct {
  CrunchJobs *jobs;
  gchar *id;
  CrunchStream *stream; /* not a reference: the stream calls us */
} Watcher;

static void
watcher_free (gpointer data)
{
  Watcher *w = data;

  g_free (w->id);
  g_free (w);
}

/* CrunchStreamGone: a watcher left. A streamed call nobody watches any more is cancelled, as a
 * synchronous call is when its client hangs up. Any thread, no lock held. */
static void
on_watcher_gone (gpointer data)
{
  Watcher *w = data;
  CrunchJobs *self = w->jobs;
  g_autoptr (CrunchCall) call = NULL;
  Entry *entry;

  g_mutex_lock (&self->lock);
  entry = g_hash_table_lookup (self->entries, w->id);
  if (entry != NULL) {
    g_mutex_lock (&self->news);
    if (entry->streams != NULL && g_ptr_array_remove (entry->streams, w->stream) &&
        entry->streams->len == 0 && entry->unwatched_stop && entry->t_done == 0) {
      entry->cancel_requested = TRUE; /* (not submitted yet: its submitter cancels it) */
      if (entry->call != NULL && crunch_call_ticket (entry->call) != NULL)
        call = crunch_call_ref (entry->call);
    }
    g_mutex_unlock (&self->news);
  }
  g_mutex_unlock (&self->lock);
  if (call != NULL)
    crunch_call_cancel (call, CRUNCH_JOB_CLIENT_GONE);
}

static void
send_event (CrunchStream *stream, const Entry *entry, guint64 seq, const gchar *event,
            const gchar *data)
{
  gchar id[EVENT_ID_MAX];

  event_id (entry, seq, id);
  crunch_stream_event (stream, id, event, data);
}

/* With both locks held: what a watcher that saw up to event `last` missed, oldest first. */
static void
catch_up_locked (Entry *entry, CrunchStream *stream, guint64 last, const gchar *outcome)
{
  g_autofree gchar *state = NULL, *progress = NULL;
  gboolean state_first;

  if (outcome == NULL && entry->state_seq > last)
    state = state_data (entry, entry->started ? "running" : "queued",
                        g_atomic_int_get (&entry->attempts));
  if (entry->progress_seq > last && outcome == NULL)
    progress = progress_data (entry->progress, entry->progress_message);
  state_first = state != NULL && (progress == NULL || entry->state_seq < entry->progress_seq);
  if (state_first)
    send_event (stream, entry, entry->state_seq, "state", state);
  if (progress != NULL)
    send_event (stream, entry, entry->progress_seq, "progress", progress);
  if (state != NULL && !state_first)
    send_event (stream, entry, entry->state_seq, "state", state);
  if (outcome != NULL)
    send_event (stream, entry, entry->outcome_seq, "outcome", outcome);
}

static CrunchReply
streams_full (gboolean client_full)
{
  CrunchReply reply =
      client_full ? crunch_reply_text (429, "this client has its share of event streams open "
                                            "([jobs] max_streams_per_client): close one first")
                  : crunch_reply_text (503, "too many event streams open ([jobs] max_streams)");

  crunch_metrics_rejection (client_full ? CRUNCH_REJECT_STREAMS_CLIENT : CRUNCH_REJECT_STREAMS);
  reply.retry_after = g_strdup ("5");
  return reply;
}

/* With the lock held: the job's events, from `last` on, in `stream` (NULL: a new one of
 * `client`'s). */
CrunchReply
jobs_watch_locked (CrunchJobs *self, Entry *entry, const gchar *last_id, CrunchStream *stream,
                   const gchar *client)
{
  gboolean client_full = FALSE;
  gboolean done = entry->t_done != 0 && !entry->interrupted;
  g_autofree gchar *outcome = done ? jobs_describe_json_locked (entry, TRUE) : NULL;
  guint64 last;
  g_autofree gchar *job = parse_event_id (self, last_id, &last);
  Watcher *w;

  if (g_strcmp0 (job, entry->id) != 0)
    last = 0; /* another job's, or none */
  g_mutex_lock (&self->news);
  if (done && entry->outcome_seq == 0) /* recovered finished: its outcome is news here */
    entry->outcome_seq = ++entry->seq;
  if (last > entry->seq)
    last = 0;
  g_mutex_unlock (&self->news);
  if (done && last != 0 && last >= entry->outcome_seq) /* it has the end: an EventSource stops */
    return (CrunchReply){.status = 204, .content_type = CRUNCH_TEXT_PLAIN};
  if (stream == NULL && (stream = crunch_stream_new (client, &client_full)) == NULL)
    return streams_full (client_full);
  w = g_new0 (Watcher, 1);
  *w = (Watcher){self, g_strdup (entry->id), stream};
  crunch_stream_set_gone (stream, on_watcher_gone, w, watcher_free);
  g_mutex_lock (&self->news);
  catch_up_locked (entry, stream, last, outcome);
  if (done) {
    crunch_stream_end (stream);
  } else {
    if (entry->streams == NULL)
      entry->streams = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_stream_unref);
    g_ptr_array_add (entry->streams, crunch_stream_ref (stream));
  }
  g_mutex_unlock (&self->news);
  return crunch_reply_stream (stream);
}

/* An EventSource back on a streamed call (its Last-Event-ID names the job): that job's events
 * again, never a second run. */
static CrunchReply
resume_streamed (CrunchJobs *self, const CrunchRequestInfo *info)
{
  guint64 seq;
  g_autofree gchar *job = parse_event_id (self, info->last_event_id, &seq);
  CrunchReply reply;
  Entry *entry;

  if (job == NULL)
    return crunch_reply_text (400, "Last-Event-ID: not an event id of this server");
  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, job);
  if (entry != NULL && info->owned && g_strcmp0 (entry->client, info->client) != 0)
    entry = NULL; /* [auth]: another key's */
  if (entry != NULL)
    reply = jobs_watch_locked (self, entry, info->last_event_id, NULL, info->client);
  else
    reply = crunch_reply_text (404,
                               "the streamed call's job %s is gone (deleted, or expired "
                               "after [jobs] ttl)",
                               job);
  g_mutex_unlock (&self->lock);
  return reply;
}

CrunchReply
crunch_jobs_stream_call (CrunchJobs *self, const CrunchRequestInfo *info, const CrunchFunction *fn,
                         GVariant *args)
{
  gboolean client_full;
  CrunchStream *stream;

  if (info->last_event_id != NULL)
    return resume_streamed (self, info);
  /* first: the caps refuse before any work */
  stream = crunch_stream_new (info->client, &client_full);
  if (stream == NULL)
    return streams_full (client_full);
  return jobs_submit_call (self, info, fn, args, stream);
}

/* GET /jobs/ID/events */
CrunchReply
jobs_events_handler (const CrunchRequestInfo *request, gpointer context)
{
  CrunchJobs *self = context;
  CrunchReply reply;
  Entry *entry;

  if (jobs_not_theirs (self, request))
    return jobs_no_such_job ();
  if (jobs_elsewhere (self, request->arg))
    return crunch_reply_text (421,
                              "job %s is run by another front end: its events are served "
                              "there (GET /jobs/%s works here)",
                              request->arg, request->arg);
  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, request->arg);
  reply = entry != NULL
              ? jobs_watch_locked (self, entry, request->last_event_id, NULL, request->client)
              : jobs_no_such_job ();
  g_mutex_unlock (&self->lock);
  return reply;
}

/* ---- the status page ---- */

#define STATUS_RUNNING_MAX 20

static gint
by_creation (gconstpointer a, gconstpointer b)
{
  const Entry *x = *(Entry *const *)a, *y = *(Entry *const *)b;

  return x->t_created < y->t_created ? -1 : x->t_created > y->t_created;
}

/* With both locks held. */
static void
append_running (GString *out, const Entry *entry, gint64 now)
{
  g_string_append (out, "{\"id\":");
  crunch_json_append_string (out, entry->id);
  g_string_append (out, ",\"fn\":");
  crunch_json_append_string (out, entry->fn_name);
  g_string_append (out, ",\"client\":");
  crunch_json_append_string (out, entry->client);
  g_string_append (out, ",\"age_seconds\":");
  crunch_json_append_seconds (out, MAX (0, now - entry->t_created) / 1e6);
  g_string_append (out, ",\"progress\":");
  if (entry->progress_seq != 0)
    crunch_json_append_seconds (out, entry->progress);
  else
    g_string_append (out, "null");
  g_string_append (out, ",\"message\":");
  if (entry->progress_message != NULL && entry->progress_seq != 0)
    crunch_json_append_string (out, entry->progress_message);
  else
    g_string_append (out, "null");
  g_string_append_c (out, '}');
}

void
crunch_jobs_render_running (GString *out, gpointer data)
{
  CrunchJobs *self = data;
  g_autoptr (GPtrArray) running = g_ptr_array_new ();
  GHashTableIter iter;
  gpointer value;
  gint64 now = g_get_real_time ();

  g_mutex_lock (&self->lock);
  g_mutex_lock (&self->news);
  g_hash_table_iter_init (&iter, self->entries);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Entry *entry = value;
    if (entry->visible && entry->t_done == 0 && entry->started)
      g_ptr_array_add (running, entry);
  }
  g_ptr_array_sort (running, by_creation);
  g_string_append (out, "\"running_jobs\":[");
  for (guint i = 0; i < MIN (running->len, STATUS_RUNNING_MAX); i++) {
    if (i > 0)
      g_string_append_c (out, ',');
    append_running (out, running->pdata[i], now);
  }
  g_string_append (out, "],");
  g_mutex_unlock (&self->news);
  g_mutex_unlock (&self->lock);
}
