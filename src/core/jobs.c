/* jobs.c - the asynchronous jobs API and its table of jobs. Watching them (progress, event
 * streams, the status page's running jobs) is jobs-events.c; jobs-private.h is what both share.
 *
 * DESIGN
 * One mutex guards the table of entries, the queue of finished ones, the idempotency keys, the
 * backlog and the limits. Callers:
 * - the MHD polling threads: submit(), get(), delete() (never block beyond the mutex);
 * - whichever thread answers a call (a worker, the deadline watcher, the scheduler while
 *   draining, an HTTP thread cancelling it): on_answered(), which marks the entry finished;
 * - the scheduler, with its lock held, when a job starts: on_started(), which takes no lock of
 *   ours (attempts is atomic) and only queues a store write;
 * - the store thread, once a new job is on disk: on_stored(), which admits and submits it and
 *   answers the deferred POST;
 * - the main thread: recover() at start, the backlog timer, configure() on reload, cancel_all()
 *   and free() on shutdown.
 * Lock order: jobs -> scheduler (describe asks whether a call runs) -> store queue (a leaf).
 * A job is a compute call like a synchronous request's (call.c), so the cache, admission,
 * per-client limits, fairness, coalescing, its deadline and its metrics apply unchanged; only no
 * socket waits for it. Calls are admitted, submitted and cancelled outside our lock (the
 * scheduler may answer at once, and on_answered() takes it).
 *
 * With a store (sqlite.c), the table is rebuilt from it at start and every change is written
 * through it: POST /jobs answers 202 only once the job is on disk (the connection is parked
 * meanwhile), the start of each run and the outcome follow. A job found unfinished at start runs
 * again (attempts counts the runs); one found *running* counts a crash, and at [jobs]
 * max_crashes it fails as poison instead of taking the server down again. After a crash, until
 * the recovered jobs are done, main.c runs one job at a time and local threads pass a gate
 * (crunch_executor_set_gate(): the serial mutex, then the store's barrier) before each job, so
 * the one job running when the process dies is the only one on disk as running.
 * A stop by SIGTERM puts interrupted jobs back as queued: no crash is counted.
 *
 * An entry lives from submit() until it is deleted or, once finished, until [jobs] ttl has
 * passed. Unfinished entries are never freed (their call's callback points at them). Expired
 * entries are purged lazily, at the start of every call: finished ones are queued in the order
 * they finished, so the oldest is always at the head. */
#include "jobs-private.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/random.h>

#include "decode.h"
#include "executor.h"
#include "json.h"
#include "metrics.h"
#include "stream.h"

#define BACKLOG_RETRY_MS 100
#define IDEMPOTENCY_KEY_MAX 255

/* a shared store's hooks (below) */
static void on_claimed (CrunchStoredJob *record, gpointer data);
static void on_cancel_requested (const gchar *id, gpointer data);
static void on_lost (const gchar *id, gpointer data);

/* With the lock held (the table frees entries as they are removed). */
static void
entry_free (gpointer data)
{
  Entry *entry = data;
  CrunchJobs *self = entry->jobs;
  guint count = GPOINTER_TO_UINT (g_hash_table_lookup (self->held, entry->client));

  if (count > 1)
    g_hash_table_insert (self->held, g_strdup (entry->client), GUINT_TO_POINTER (count - 1));
  else
    g_hash_table_remove (self->held, entry->client);
  if (entry->key != NULL && g_hash_table_lookup (self->keys, entry->key) == entry)
    g_hash_table_remove (self->keys, entry->key);
  g_free (entry->key);
  g_free (entry->body_hash);
  g_free (entry->client);
  g_free (entry->fn_name);
  g_clear_pointer (&entry->args, g_variant_unref);
  g_clear_pointer (&entry->call, crunch_call_unref);
  g_clear_pointer (&entry->result, g_bytes_unref);
  g_free (entry->error);
  g_free (entry->progress_message);
  g_clear_pointer (&entry->pending_stream, crunch_stream_unref);
  if (entry->streams != NULL) { /* a watched job that goes away unfinished (shutdown) */
    for (guint i = 0; i < entry->streams->len; i++)
      crunch_stream_end (entry->streams->pdata[i]);
    g_ptr_array_unref (entry->streams);
  }
  g_free (entry->id);
  g_free (entry);
}

/* A local worker thread, before a job runs. After a crash (until the recovered jobs are done)
 * jobs pass one at a time, and each runs only once everything written before it is on disk: its
 * own start, and the end of the one before (written when that one's `finished` callback
 * returned, just before gate_leave()). A crash is then pinned on the one job running. */
static gboolean
gate_enter (gpointer data)
{
  CrunchJobs *self = data;

  if (g_atomic_int_get (&self->careful) == 0)
    return FALSE;
  g_mutex_lock (&self->serial);
  crunch_store_barrier (self->store);
  return TRUE;
}

static void
gate_leave (gpointer data)
{
  CrunchJobs *self = data;

  g_mutex_unlock (&self->serial);
}

CrunchJobs *
crunch_jobs_new (CrunchCalls *calls, const CrunchConfig *config, CrunchStore *store)
{
  CrunchJobs *self = g_new0 (CrunchJobs, 1);

  g_mutex_init (&self->lock);
  g_mutex_init (&self->serial);
  g_mutex_init (&self->news);
  g_snprintf (self->boot, sizeof self->boot, "%08x", g_random_int ());
  self->calls = calls;
  self->store = store;
  self->entries = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, entry_free);
  self->held = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  self->keys = g_hash_table_new (g_str_hash, g_str_equal);
  g_queue_init (&self->finished);
  g_queue_init (&self->backlog);
  crunch_jobs_configure (self, config);
  if (store != NULL)
    crunch_executor_set_gate (gate_enter, gate_leave, self);
  if (crunch_store_shared (store))
    store->klass->set_hooks (store,
                             &(CrunchStoreHooks){on_claimed, on_cancel_requested, on_lost, self});
  return self;
}

/* An open stream parks a connection, as a running or queued request does: the streams get what
 * the connection budget leaves beside queue_limit + threads, so that /fast keeps its quarter of
 * max_connections (the one in force: main.c puts it back into a reloaded config). */
static guint
max_streams_in_budget (const CrunchConfig *config)
{
  gint64 left = MAX (crunch_config_connections_spare (config, config->max_connections), 0);

  if (config->jobs_max_streams <= left)
    return config->jobs_max_streams;
  g_message ("[jobs] max_streams = %u: %" G_GINT64_FORMAT " at most, what 3/4 of [server] "
             "max_connections (%u) leaves beside queue_limit + threads",
             config->jobs_max_streams, left, config->max_connections);
  return (guint)left;
}

void
crunch_jobs_configure (CrunchJobs *self, const CrunchConfig *config)
{
  g_mutex_lock (&self->lock);
  self->ttl_us = (gint64)(config->jobs_ttl * G_USEC_PER_SEC);
  crunch_store_set_ttl (self->store, self->ttl_us); /* a shared store expires jobs itself */
  self->max_stored = config->jobs_max_stored;
  self->max_per_client = config->jobs_max_stored_per_client;
  self->max_result_size = config->jobs_max_result_size;
  self->max_crashes = config->jobs_max_crashes;
  self->default_priority = config->default_priority;
  g_mutex_unlock (&self->lock);
  crunch_streams_configure (max_streams_in_budget (config), config->jobs_max_streams_per_client,
                            config->jobs_stream_heartbeat);
}

void
crunch_jobs_cancel_all (CrunchJobs *self)
{
  g_autoptr (GPtrArray) calls = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_call_unref);
  GHashTableIter iter;
  gpointer value;

  /* the store thread's callbacks (admitting and submitting new jobs) are done: every job is
   * either submitted (cancelled below) or refused */
  if (self->store != NULL)
    crunch_store_barrier (self->store);
  g_mutex_lock (&self->lock);
  g_hash_table_iter_init (&iter, self->entries);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Entry *entry = value;
    if (entry->t_done == 0 && entry->visible && entry->call != NULL)
      g_ptr_array_add (calls, crunch_call_ref (entry->call));
  }
  g_mutex_unlock (&self->lock);
  /* outside our lock: cancelling answers the call, and on_answered() takes the lock */
  for (guint i = 0; i < calls->len; i++)
    crunch_call_cancel (calls->pdata[i], CRUNCH_JOB_SHUTDOWN);
}

void
crunch_jobs_close_store (CrunchJobs *self)
{
  crunch_store_free (self->store);
}

void
crunch_jobs_free (CrunchJobs *self)
{
  if (self == NULL)
    return;
  if (self->backlog_timer != 0)
    g_source_remove (self->backlog_timer);
  if (self->store != NULL)
    crunch_executor_set_gate (NULL, NULL, NULL);
  crunch_store_free (self->store); /* every write made so far reaches the disk */
  g_queue_clear (&self->finished);
  g_queue_clear (&self->backlog);
  g_hash_table_unref (self->entries);
  g_hash_table_unref (self->held);
  g_hash_table_unref (self->keys);
  g_mutex_clear (&self->serial);
  g_mutex_clear (&self->news);
  g_mutex_clear (&self->lock);
  g_free (self);
}

/* ---- the store ---- */

/* The entry as a record (borrowing its strings). */
static CrunchStoredJob
record_of (Entry *entry, CrunchStoredState state)
{
  return (CrunchStoredJob){
      .id = entry->id,
      .fn = entry->fn_name,
      .args = entry->args,
      .client = entry->client,
      .idempotency_key = entry->key ? strchr (entry->key, '\n') + 1 : NULL,
      .body_hash = entry->body_hash,
      .created = entry->t_created,
      .state = state,
      .attempts = g_atomic_int_get (&entry->attempts),
      .crashes = entry->crashes,
      .outcome =
          state == CRUNCH_STORED_FINISHED
              ? (gchar *)(entry->cached ? "cached" : crunch_job_outcome_name (entry->outcome))
              : NULL,
      .error = entry->error,
      .result = entry->result,
      .finished = g_get_real_time (),
      .queued_us = entry->queued_us,
      .run_us = entry->run_us,
      .coalesced = entry->coalesced,
  };
}

/* With the lock held. */
static void
store_forget (CrunchJobs *self, Entry *entry)
{
  /* a lost job is another front end's now: its record is not ours to remove */
  if (self->store != NULL && !entry->lost)
    crunch_store_remove (self->store, entry->id);
}

/* ---- finishing ---- */

/* With the lock held. */
static void
purge_locked (CrunchJobs *self)
{
  gint64 now = g_get_monotonic_time ();
  Entry *oldest;

  while ((oldest = g_queue_peek_head (&self->finished)) != NULL &&
         now - oldest->t_done >= self->ttl_us) {
    g_queue_pop_head (&self->finished);
    store_forget (self, oldest);
    g_hash_table_remove (self->entries, oldest->id);
  }
}

/* With the lock held: the entry has its outcome; it is kept [jobs] ttl from now, and the store
 * learns it (a job interrupted by a shutdown goes back to queued there, to run after the
 * restart). */
static void
finish_locked (CrunchJobs *self, Entry *entry)
{
  entry->t_done = g_get_monotonic_time ();
  /* an interrupted job is not finished: never purged, it runs again after the restart */
  if (!entry->interrupted)
    g_queue_push_tail (&self->finished, entry);
  if (entry->careful) {
    entry->careful = FALSE;
    if (g_atomic_int_dec_and_test (&self->careful) && self->recovered != NULL)
      g_idle_add (self->recovered, self->recovered_data);
  }
  jobs_news_finished_locked (entry);
  if (self->store == NULL || entry->lost)
    return;
  if (entry->interrupted) {
    crunch_store_set_state (self->store, entry->id, CRUNCH_STORED_QUEUED,
                            g_atomic_int_get (&entry->attempts), entry->crashes, NULL, NULL);
  } else {
    CrunchStoredJob record = record_of (entry, CRUNCH_STORED_FINISHED);
    crunch_store_put (self->store, &record, NULL, NULL);
  }
}

/* With the lock held: the ticket's answer, copied (a result over [jobs] max_result_size fails
 * the job instead: it would not fit where results are kept). */
static void
take_answer_locked (CrunchJobs *self, Entry *entry, const CrunchTicket *ticket)
{
  gboolean ran = ticket->t_started != 0;

  entry->outcome = ticket->outcome;
  entry->coalesced = ticket->coalesced;
  entry->queued_us = ran ? MAX (0, ticket->t_started - ticket->t_submitted) : -1;
  entry->run_us = ran ? ticket->t_finished - ticket->t_started : -1;
  entry->error = g_strdup (ticket->error);
  if (ticket->outcome == CRUNCH_JOB_OK) {
    gsize size = g_bytes_get_size (ticket->result);
    guint64 store_max = self->store != NULL && self->store->klass->max_result_size != NULL
                            ? self->store->klass->max_result_size (self->store)
                            : 0;
    gsize args_size = g_variant_get_size (entry->args);

    /* the job's record holds its arguments too */
    if (store_max > 0)
      store_max = store_max > args_size + 1 ? store_max - args_size : 1;
    if (self->max_result_size > 0 && size > self->max_result_size) {
      entry->outcome = CRUNCH_JOB_FAILED;
      entry->error = g_strdup_printf ("%s: result of %" G_GSIZE_FORMAT
                                      " bytes is larger than [jobs] max_result_size (%u)",
                                      entry->fn_name, size, self->max_result_size);
    } else if (store_max > 0 && size > store_max) {
      entry->outcome = CRUNCH_JOB_FAILED;
      entry->error =
          g_strdup_printf ("%s: result of %" G_GSIZE_FORMAT
                           " bytes is larger than the job store can keep (%" G_GUINT64_FORMAT
                           " bytes, one NATS message): results are not split",
                           entry->fn_name, size, store_max);
    } else {
      entry->result = g_bytes_ref (ticket->result);
    }
  }
  entry->interrupted = ticket->outcome == CRUNCH_JOB_SHUTDOWN && self->store != NULL;
}

/* Any thread: the call has its answer (counted in the metrics by call.c). The scheduler wrote
 * the ticket before calling us. */
static void
on_answered (CrunchCall *call, gpointer data)
{
  Entry *entry = data;
  CrunchJobs *self = entry->jobs;

  g_mutex_lock (&self->lock);
  take_answer_locked (self, entry, crunch_call_ticket (call));
  finish_locked (self, entry); /* from here on another thread may purge the entry */
  g_mutex_unlock (&self->lock);
}

/* The scheduler's lock is held: count the run and record it, nothing more. */
static void
on_started (CrunchCall *call, gpointer data)
{
  Entry *entry = data;
  guint attempts = (guint)g_atomic_int_add (&entry->attempts, 1) + 1;

  jobs_news_started (entry);
  if (entry->jobs->store != NULL)
    crunch_store_set_state (entry->jobs->store, entry->id, CRUNCH_STORED_RUNNING, attempts,
                            entry->crashes, NULL, NULL);
}

/* ---- replies ---- */

static const gchar *
state_name (const Entry *entry)
{
  if (entry->t_done == 0)
    return entry->remote_running || (entry->call != NULL && crunch_call_running (entry->call))
               ? "running"
               : "queued";
  if (entry->interrupted)
    return "queued"; /* it runs again after the restart */
  switch (entry->outcome) {
  case CRUNCH_JOB_OK:
    return "done";
  case CRUNCH_JOB_FAILED:
  case CRUNCH_JOB_UNAVAILABLE:
  case CRUNCH_JOB_CRASHED:
    return "failed";
  case CRUNCH_JOB_TIMED_OUT:
    return "expired";
  case CRUNCH_JOB_CLIENT_GONE:
  case CRUNCH_JOB_SHUTDOWN:
  case CRUNCH_JOB_PENDING:
    break;
  }
  return "cancelled";
}

static gboolean
is_text (const gchar *content_type)
{
  return g_str_has_prefix (content_type, "text/") ||
         g_str_has_prefix (content_type, "application/json");
}

static const gchar *
content_type_of (const Entry *entry)
{
  return entry->fn != NULL ? entry->fn->content_type : "application/octet-stream";
}

static void
add_seconds (JsonBuilder *b, const gchar *name, gint64 us)
{
  json_builder_set_member_name (b, name);
  json_builder_add_double_value (b, us / 1e6);
}

static void
add_timings (JsonBuilder *b, const Entry *entry, gint64 now)
{
  g_autoptr (GDateTime) created = g_date_time_new_from_unix_utc (entry->t_created / G_USEC_PER_SEC);
  g_autofree gchar *iso = g_date_time_format_iso8601 (created);

  crunch_json_member_string (b, "created", iso);
  /* while it runs only the total is known; once answered, the split */
  if (entry->t_done == 0) {
    add_seconds (b, "age_seconds", MAX (0, g_get_real_time () - entry->t_created));
  } else if (entry->run_us >= 0) {
    add_seconds (b, "queued_seconds", entry->queued_us);
    add_seconds (b, "run_seconds", entry->run_us);
  }
  if (entry->t_done != 0 && entry->coalesced) {
    crunch_json_member_bool (b, "coalesced", TRUE);
  }
  if (entry->deadline_us != 0)
    add_seconds (b, "deadline_seconds", entry->deadline_us - entry->t_submitted);
  /* when a finished job is forgotten; not said of an "expired" one, which reads as a
   * contradiction (its deadline passed; it is still kept [jobs] ttl) */
  if (entry->t_done && entry->outcome != CRUNCH_JOB_TIMED_OUT && !entry->interrupted)
    add_seconds (b, "expires_in_seconds", MAX (0, entry->jobs->ttl_us - (now - entry->t_done)));
}

static void
add_outcome (JsonBuilder *b, const Entry *entry)
{
  g_autofree gchar *url = g_strconcat ("/jobs/", entry->id, "/result", NULL);
  gsize size;
  gconstpointer data;

  if (entry->t_done == 0 || entry->interrupted)
    return;
  if (entry->outcome == CRUNCH_JOB_OK) {
    data = g_bytes_get_data (entry->result, &size);
    crunch_json_member_string (b, "content_type", content_type_of (entry));
    crunch_json_member_int (b, "result_size", (gint64)size);
    crunch_json_member_string (b, "result_url", url);
    /* text small enough to read inline; anything else from result_url */
    if (is_text (content_type_of (entry)) && size <= 65536 && g_utf8_validate (data, size, NULL)) {
      g_autofree gchar *text = g_strndup (data, size);
      crunch_json_member_string (b, "result", text);
    }
    return;
  }
  if (entry->outcome == CRUNCH_JOB_FAILED || entry->outcome == CRUNCH_JOB_UNAVAILABLE ||
      entry->outcome == CRUNCH_JOB_CRASHED)
    crunch_json_member_string (b, "error",
                               entry->error ? entry->error : "no worker could take the job");
  else if (entry->outcome == CRUNCH_JOB_TIMED_OUT)
    crunch_json_member_string (b, "error", "deadline exceeded");
  else if (entry->outcome == CRUNCH_JOB_SHUTDOWN)
    crunch_json_member_string (b, "error", "the server stopped");
  else
    crunch_json_member_string (b, "error", "cancelled by DELETE");
}

/* The latest progress report, if any ("progress": {"fraction": F, "message": M}). */
static void
add_progress (JsonBuilder *b, Entry *entry)
{
  CrunchJobs *self = entry->jobs;

  g_mutex_lock (&self->news);
  if (entry->progress_seq != 0 && entry->t_done == 0) {
    json_builder_set_member_name (b, "progress");
    json_builder_begin_object (b);
    json_builder_set_member_name (b, "fraction");
    json_builder_add_double_value (b, entry->progress);
    if (entry->progress_message != NULL)
      crunch_json_member_string (b, "message", entry->progress_message);
    json_builder_end_object (b);
  }
  g_mutex_unlock (&self->news);
}

/* The builder's object as text (not JsonGenerator: it prints 4.9e-05 s as
 * 4.8999999999999998e-05): one member per line, or all on one line (no newline at the end). */
static gchar *
json_text (JsonBuilder *b, gboolean one_line)
{
  g_autoptr (JsonNode) root = json_builder_get_root (b);
  GString *text = g_string_new (NULL);

  if (one_line)
    crunch_json_append_object_line (text, json_node_get_object (root));
  else
    crunch_json_append_object (text, json_node_get_object (root));
  return g_string_free (text, FALSE);
}

gchar *
jobs_json_line (JsonBuilder *b)
{
  return json_text (b, TRUE);
}

/* With the lock held: GET /jobs/ID's document. */
gchar *
jobs_describe_json_locked (Entry *entry, gboolean one_line)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  guint attempts = g_atomic_int_get (&entry->attempts);

  json_builder_begin_object (b);
  crunch_json_member_string (b, "id", entry->id);
  crunch_json_member_string (b, "fn", entry->fn_name);
  crunch_json_member_string (b, "state", state_name (entry));
  crunch_json_member_int (b, "attempts", attempts);
  if (entry->crashes > 0)
    crunch_json_member_int (b, "crashes", entry->crashes);
  if (entry->cancel_requested) {
    crunch_json_member_bool (b, "cancel_requested", TRUE);
  }
  if (entry->cached) {
    crunch_json_member_bool (b, "cached", TRUE);
  }
  add_timings (b, entry, g_get_monotonic_time ());
  add_progress (b, entry);
  add_outcome (b, entry);
  json_builder_end_object (b);
  return json_text (b, one_line);
}

/* With the lock held. */
static CrunchReply
describe_locked (Entry *entry, guint status)
{
  gchar *line = jobs_describe_json_locked (entry, FALSE);
  gsize len = strlen (line);

  line = g_realloc (line, len + 2);
  line[len] = '\n';
  line[len + 1] = '\0';
  return crunch_reply_bytes (status, g_bytes_new_take (line, len + 1), "application/json");
}

/* ---- submitting ---- */

static gchar *
new_id (void)
{
  guint8 bytes[ID_BYTES];
  gchar *id = g_malloc (2 * ID_BYTES + 1);

  /* the kernel's CSPRNG: ids are capabilities, whoever knows one may read or cancel the job */
  if (getrandom (bytes, sizeof bytes, 0) != sizeof bytes)
    g_error ("getrandom: %s", g_strerror (errno));
  for (gsize i = 0; i < ID_BYTES; i++)
    g_snprintf (id + 2 * i, 3, "%02x", bytes[i]);
  return id;
}

/* With the lock held: a new entry in the table (not yet visible). */
static Entry *
add_entry_locked (CrunchJobs *self, gchar *id, const gchar *fn_name, GVariant *args,
                  const gchar *client)
{
  Entry *entry = g_new0 (Entry, 1);
  guint held = GPOINTER_TO_UINT (g_hash_table_lookup (self->held, client));

  g_hash_table_insert (self->held, g_strdup (client), GUINT_TO_POINTER (held + 1));
  entry->jobs = self;
  entry->id = id;
  entry->fn_name = g_strdup (fn_name);
  entry->fn = crunch_functions_lookup (fn_name);
  entry->args = g_variant_ref (args);
  entry->client = g_strdup (client);
  entry->priority = self->default_priority;
  entry->queued_us = entry->run_us = -1;
  entry->seq = entry->state_seq = 1; /* "queued" */
  g_hash_table_insert (self->entries, entry->id, entry);
  return entry;
}

/* With the lock held: a place in the store, or NULL when it is full (*client_full: when this
 * client holds its whole share). */
static Entry *
reserve_locked (CrunchJobs *self, const CrunchFunction *fn, GVariant *args, const gchar *client,
                gboolean *client_full)
{
  guint held = GPOINTER_TO_UINT (g_hash_table_lookup (self->held, client));
  Entry *entry;

  *client_full = self->max_per_client > 0 && held >= self->max_per_client;
  if (*client_full || g_hash_table_size (self->entries) >= self->max_stored)
    return NULL;
  entry = add_entry_locked (self, new_id (), fn->name, args, client);
  entry->t_created = g_get_real_time ();
  return entry;
}

/* With the lock held: seconds until the oldest finished job (of `client`, or anyone's if NULL)
 * expires and makes room; at least 1. */
static gchar *
retry_after_locked (CrunchJobs *self, const gchar *client)
{
  gint64 wait_us = 0;

  for (GList *l = self->finished.head; l != NULL; l = l->next) {
    const Entry *oldest = l->data;
    if (client == NULL || g_str_equal (oldest->client, client)) {
      wait_us = self->ttl_us - (g_get_monotonic_time () - oldest->t_done);
      break;
    }
  }
  return g_strdup_printf ("%" G_GINT64_FORMAT, MAX (1, (wait_us + 999999) / G_USEC_PER_SEC));
}

/* With the lock held. One client at its share gets 429 alone, rather than having its finished
 * jobs expire early: a 202 promised the result stays readable for [jobs] ttl. */
static CrunchReply
store_full_locked (CrunchJobs *self, const gchar *client, gboolean client_full)
{
  CrunchReply reply;

  if (client_full) {
    crunch_metrics_rejection (CRUNCH_REJECT_STORE_CLIENT_SHARE);
    reply = crunch_reply_text (429,
                               "this client holds %u stored jobs ([jobs] max_stored_per_client): "
                               "DELETE finished ones, or retry later",
                               self->max_per_client);
  } else {
    crunch_metrics_rejection (CRUNCH_REJECT_STORE_FULL);
    reply = crunch_reply_text (503, "too many stored jobs ([jobs] max_stored = %u), retry later",
                               self->max_stored);
  }
  reply.retry_after = retry_after_locked (self, client_full ? client : NULL);
  return reply;
}

static CrunchReply
accepted_locked (Entry *entry)
{
  CrunchReply reply = describe_locked (entry, 202);

  reply.location = g_strconcat ("/jobs/", entry->id, NULL);
  return reply;
}

/* With the lock held: a call for the entry's next run (a reference for the caller). */
static CrunchCall *
new_call_locked (CrunchJobs *self, Entry *entry)
{
  entry->t_submitted = g_get_monotonic_time ();
  entry->deadline_us =
      entry->t_submitted + MAX (__atomic_load_n (&entry->fn->timeout_us, __ATOMIC_RELAXED), 1);
  entry->call = crunch_call_new (self->calls,
                                 &(CrunchCallSpec){entry->fn, entry->args, entry->client,
                                                   entry->deadline_us, -1, on_answered, entry,
                                                   on_started, jobs_on_progress, entry->priority});
  return crunch_call_ref (entry->call);
}

/* With the lock held: answered from the result cache, no run needed. */
static void
finish_cached_locked (CrunchJobs *self, Entry *entry, GBytes *cached)
{
  CrunchTicket answer = {.outcome = CRUNCH_JOB_OK, .result = cached};

  take_answer_locked (self, entry, &answer);
  entry->cached = TRUE;
  finish_locked (self, entry);
}

/* After submit(): a DELETE that came between admission and submit() found no ticket to cancel
 * and left the request with the entry (which may be gone by now: looked up by id). */
static void
cancel_if_requested (CrunchJobs *self, const gchar *id, CrunchCall *call)
{
  Entry *entry;
  gboolean cancel;

  g_mutex_lock (&self->lock);
  entry = g_hash_table_lookup (self->entries, id);
  cancel = entry != NULL && entry->call == call && entry->cancel_requested && entry->t_done == 0;
  g_mutex_unlock (&self->lock);
  if (cancel)
    crunch_call_cancel (call, CRUNCH_JOB_CLIENT_GONE);
}

/* Admission, outside the lock: the entry becomes visible with its 202, or is forgotten with the
 * refusal. Consumes `call`. With `later` (a POST waiting for the store), the answer goes there,
 * before the job is submitted: a job that takes the process down must not take its 202 along. */
static CrunchReply
admit_and_submit (CrunchJobs *self, Entry *entry, CrunchCall *call, CrunchLater *later)
{
  CrunchCallAdmission admission = crunch_call_admit (call);
  g_autofree gchar *id = g_strdup (entry->id);
  CrunchReply reply;

  g_mutex_lock (&self->lock);
  if (admission == CRUNCH_CALL_REFUSED) {
    const CrunchCallRefusal *refusal = crunch_call_refusal (call);
    g_clear_pointer (&entry->pending_stream, crunch_stream_unref);
    reply = crunch_reply_text (refusal->status, "%s", refusal->message);
    reply.retry_after = g_strdup (refusal->retry_after);
    store_forget (self, entry);
    g_hash_table_remove (self->entries, entry->id);
  } else {
    entry->visible = TRUE;
    if (admission == CRUNCH_CALL_CACHED) /* a cache hit needs no job: it is done at once */
      finish_cached_locked (self, entry, crunch_call_cached (call));
    if (entry->pending_stream != NULL) /* a streamed call: its answer is the job's events */
      reply = jobs_watch_locked (self, entry, NULL, g_steal_pointer (&entry->pending_stream), NULL);
    else
      reply = accepted_locked (entry);
  }
  g_mutex_unlock (&self->lock);
  if (later != NULL) {
    later->answer (later, &reply);
    reply = crunch_reply_later ();
  }
  /* From here on the entry may be answered and purged by another thread: only `call` is ours. */
  if (admission == CRUNCH_CALL_ADMITTED) {
    crunch_call_submit (call);
    cancel_if_requested (self, id, call);
  }
  crunch_call_unref (call);
  return reply;
}

/* Store thread: the new job is on disk (or could not be written). Answers its POST. */
static void
on_stored (const GError *error, gpointer data)
{
  Entry *entry = data;
  CrunchJobs *self = entry->jobs;
  CrunchCall *call = NULL;
  CrunchLater *later;
  CrunchReply reply;

  g_mutex_lock (&self->lock);
  later = g_steal_pointer (&entry->later);
  if (error != NULL) {
    g_queue_remove (&self->finished, entry);
    g_hash_table_remove (self->entries, entry->id);
  } else
    call = new_call_locked (self, entry);
  g_mutex_unlock (&self->lock);
  if (error == NULL) {
    admit_and_submit (self, entry, call, later);
    return;
  }
  crunch_metrics_rejection (CRUNCH_REJECT_STORE_ERROR);
  reply = crunch_reply_text (503, "the job store could not record the job: %s", error->message);
  reply.retry_after = g_strdup ("5");
  later->answer (later, &reply);
}

/* The Idempotency-Key's job for this client, when there is one (lock held): `*reply` is what to
 * answer instead of making a new job. */
static gboolean
idempotent_locked (CrunchJobs *self, const gchar *key, const gchar *hash, CrunchReply *reply)
{
  Entry *entry = g_hash_table_lookup (self->keys, key);

  if (entry == NULL)
    return FALSE;
  if (!entry->visible)
    *reply = crunch_reply_text (409, "a request with this Idempotency-Key is still being "
                                     "accepted: retry in a moment");
  else if (!g_str_equal (entry->body_hash, hash))
    /* not the job's id: it is a capability, and the key may have been guessed */
    *reply = crunch_reply_text (422, "this Idempotency-Key was used for a different request: "
                                     "use a new key for a new job");
  else
    *reply = accepted_locked (entry);
  return TRUE;
}

/* NULL, or why the header cannot be a key. */
static const gchar *
bad_idempotency_key (const gchar *key)
{
  gsize len = strlen (key);

  if (len == 0 || len > IDEMPOTENCY_KEY_MAX)
    return "Idempotency-Key: expected 1 to 255 characters";
  for (gsize i = 0; i < len; i++)
    if (key[i] < 0x20 || key[i] > 0x7e)
      return "Idempotency-Key: expected printable ASCII characters";
  return NULL;
}

/* What an Idempotency-Key promises: the same function and (canonical) arguments. */
static gchar *
request_hash (const CrunchFunction *fn, GVariant *args)
{
  g_autoptr (GChecksum) sum = g_checksum_new (G_CHECKSUM_SHA256);

  g_checksum_update (sum, (const guchar *)fn->name, strlen (fn->name) + 1);
  g_checksum_update (sum, g_variant_get_data (args), g_variant_get_size (args));
  return g_strdup (g_checksum_get_string (sum));
}

/* With the lock held: the job is written; the POST waits for the store (on_stored()). */
static CrunchReply
store_new_locked (CrunchJobs *self, Entry *entry, const CrunchRequestInfo *info)
{
  CrunchStoredJob record = record_of (entry, CRUNCH_STORED_QUEUED);
  CrunchReply reply;

  entry->later = info->defer (info->request); /* parked before the work is handed over */
  if (entry->later == NULL) {                 /* the server is stopping */
    g_hash_table_remove (self->entries, entry->id);
    crunch_metrics_rejection (CRUNCH_REJECT_DRAINING);
    reply = crunch_reply_text (503, "server is shutting down");
    reply.close = TRUE;
    return reply;
  }
  crunch_store_put (self->store, &record, on_stored, entry);
  return crunch_reply_later ();
}

/* A new job for the call; with `stream` (taken), a streamed call whose answer is its events. */
CrunchReply
jobs_submit_call (CrunchJobs *self, const CrunchRequestInfo *info, const CrunchFunction *fn,
                  GVariant *args, CrunchStream *stream)
{
  g_autoptr (CrunchStream) owned = stream;
  g_autofree gchar *key = NULL, *hash = NULL;
  CrunchReply reply;
  gboolean client_full;
  CrunchCall *call;
  Entry *entry;

  if (info->may_call != NULL && !info->may_call (info->request, fn->name, &reply))
    return reply; /* [auth]: 403 */
  if (info->idempotency_key != NULL) {
    const gchar *why = bad_idempotency_key (info->idempotency_key);
    if (why != NULL)
      return crunch_reply_text (400, "POST /jobs: %s", why);
    key = g_strconcat (info->client, "\n", info->idempotency_key, NULL);
    hash = request_hash (fn, args);
  }

  g_mutex_lock (&self->lock);
  purge_locked (self);
  if (key != NULL && idempotent_locked (self, key, hash, &reply)) {
    g_mutex_unlock (&self->lock);
    return reply;
  }
  entry = reserve_locked (self, fn, args, info->client, &client_full);
  if (entry == NULL) {
    reply = store_full_locked (self, info->client, client_full);
    g_mutex_unlock (&self->lock);
    return reply;
  }
  entry->priority = info->priority;
  if (key != NULL) {
    entry->key = g_steal_pointer (&key);
    entry->body_hash = g_steal_pointer (&hash);
    g_hash_table_insert (self->keys, entry->key, entry);
  }
  entry->pending_stream = g_steal_pointer (&owned);
  entry->unwatched_stop = entry->pending_stream != NULL;
  if (self->store != NULL) {
    reply = store_new_locked (self, entry, info);
    g_mutex_unlock (&self->lock);
    return reply;
  }
  call = new_call_locked (self, entry);
  g_mutex_unlock (&self->lock);
  /* Outside the lock: the scheduler may answer the call at once, and on_answered() takes it. */
  return admit_and_submit (self, entry, call, NULL);
}

/* {"fn": NAME, "args": {...}}; `client` is the fairness key. */
static CrunchReply
crunch_jobs_submit (CrunchJobs *self, const CrunchRequestInfo *info)
{
  const CrunchDecode *body = info->decoded;

  if (body->args == NULL)
    return crunch_reply_text (400, "POST /jobs: %s", body->error->message);
  return jobs_submit_call (self, info, body->fn, body->args, NULL);
}

/* ---- recovery ---- */

static gboolean pump_backlog (gpointer data);

static gboolean
backlog_timer_fired (gpointer data)
{
  CrunchJobs *self = data;

  g_mutex_lock (&self->lock);
  self->backlog_timer = 0;
  g_mutex_unlock (&self->lock);
  return pump_backlog (self);
}

/* With the lock held: recovered work is admitted like new work; what is refused now (the queue
 * is full) is retried every BACKLOG_RETRY_MS, never dropped. */
static void
retry_backlog_later_locked (CrunchJobs *self)
{
  if (self->backlog_timer == 0)
    self->backlog_timer = g_timeout_add (BACKLOG_RETRY_MS, backlog_timer_fired, self);
}

/* With the lock held: admission refused a recovered job. */
static void
refused_recovered_locked (CrunchJobs *self, Entry *entry)
{
  g_clear_pointer (&entry->call, crunch_call_unref);
  if (entry->cancel_requested) { /* DELETE came meanwhile */
    entry->outcome = CRUNCH_JOB_CLIENT_GONE;
    finish_locked (self, entry);
    return;
  }
  g_queue_push_head (&self->backlog, entry);
  retry_backlog_later_locked (self);
}

/* Main thread: submits recovered jobs, oldest first, while admission takes them. */
static gboolean
pump_backlog (gpointer data)
{
  CrunchJobs *self = data;
  gboolean refused = FALSE;

  while (!refused) {
    CrunchCallAdmission admission;
    g_autofree gchar *id = NULL;
    CrunchCall *call;
    Entry *entry;

    g_mutex_lock (&self->lock);
    entry = g_queue_pop_head (&self->backlog);
    if (entry != NULL) {
      call = new_call_locked (self, entry);
      id = g_strdup (entry->id);
    }
    g_mutex_unlock (&self->lock);
    if (entry == NULL)
      break;

    admission = crunch_call_admit (call);
    g_mutex_lock (&self->lock);
    refused = admission == CRUNCH_CALL_REFUSED && !entry->cancel_requested;
    if (admission == CRUNCH_CALL_REFUSED)
      refused_recovered_locked (self, entry);
    else if (admission == CRUNCH_CALL_CACHED)
      finish_cached_locked (self, entry, crunch_call_cached (call));
    g_mutex_unlock (&self->lock);
    if (admission == CRUNCH_CALL_ADMITTED) {
      crunch_call_submit (call);
      cancel_if_requested (self, id, call);
    }
    crunch_call_unref (call);
  }
  return G_SOURCE_REMOVE;
}

/* With the lock held: an unfinished job that will not run again. */
static void
fail_recovered_locked (CrunchJobs *self, Entry *entry, gchar *error)
{
  entry->outcome = CRUNCH_JOB_FAILED;
  entry->error = error;
  finish_locked (self, entry);
}

/* With the lock held: a job the last process did not finish. */
static void
recover_unfinished_locked (CrunchJobs *self, Entry *entry, const CrunchStoredJob *r,
                           gboolean clean_stop, guint *counts)
{
  /* found running after a crash: counted (after a clean stop a running record is only a write
   * that failed) */
  entry->crashes = r->crashes + (r->state == CRUNCH_STORED_RUNNING && !clean_stop);
  if (entry->crashes >= self->max_crashes) {
    fail_recovered_locked (
        self, entry,
        g_strdup_printf ("poison: it was running each of the %u times crunchd stopped "
                         "unexpectedly ([jobs] max_crashes), so it is not run again",
                         entry->crashes));
    counts[2]++;
  } else if (entry->fn == NULL) {
    fail_recovered_locked (self, entry,
                           g_strdup_printf ("function '%s' is no longer registered", r->fn));
    counts[2]++;
  } else {
    crunch_store_set_state (self->store, entry->id, CRUNCH_STORED_QUEUED,
                            g_atomic_int_get (&entry->attempts), entry->crashes, NULL, NULL);
    g_queue_push_tail (&self->backlog, entry);
    if (!clean_stop) {
      entry->careful = TRUE;
      g_atomic_int_inc (&self->careful);
    }
    counts[1]++;
  }
}

static CrunchJobOutcome
outcome_from_name (const gchar *name, gboolean *cached)
{
  *cached = g_strcmp0 (name, "cached") == 0;
  for (gint o = CRUNCH_JOB_OK; o <= CRUNCH_JOB_CRASHED; o++)
    if (g_strcmp0 (name, crunch_job_outcome_name (o)) == 0)
      return o;
  return *cached ? CRUNCH_JOB_OK : CRUNCH_JOB_FAILED;
}

/* With the lock held: a finished job, kept until its ttl runs out (FALSE: it already has). */
static gboolean
recover_finished_locked (CrunchJobs *self, Entry *entry, const CrunchStoredJob *r)
{
  gint64 age = MAX (0, g_get_real_time () - r->finished);

  if (age >= self->ttl_us)
    return FALSE;
  entry->outcome = outcome_from_name (r->outcome, &entry->cached);
  entry->error = g_strdup (r->error);
  entry->result = r->result ? g_bytes_ref (r->result) : g_bytes_new (NULL, 0);
  entry->queued_us = r->queued_us;
  entry->run_us = r->run_us;
  entry->coalesced = r->coalesced;
  entry->t_done = g_get_monotonic_time () - age;
  return TRUE;
}

static gint
by_finish (gconstpointer a, gconstpointer b)
{
  const Entry *x = *(Entry *const *)a, *y = *(Entry *const *)b;

  return (x->t_done > y->t_done) - (x->t_done < y->t_done);
}

/* With the lock held: a stored job in the table (visible: its id was handed out). */
static Entry *
entry_from_record_locked (CrunchJobs *self, const CrunchStoredJob *r)
{
  Entry *entry = add_entry_locked (self, g_strdup (r->id), r->fn, r->args, r->client);

  entry->visible = TRUE;
  entry->t_created = r->created;
  entry->attempts = r->attempts;
  entry->crashes = r->crashes;
  if (r->idempotency_key != NULL && r->body_hash != NULL) {
    entry->key = g_strconcat (r->client, "\n", r->idempotency_key, NULL);
    entry->body_hash = g_strdup (r->body_hash);
    g_hash_table_replace (self->keys, entry->key, entry); /* the table keeps this key string */
  }
  return entry;
}

/* With the lock held: the table as the store has it. counts: finished, to run, failed. */
static void
rebuild_locked (CrunchJobs *self, GPtrArray *records, gboolean clean_stop, guint *counts)
{
  g_autoptr (GPtrArray) finished = g_ptr_array_new ();

  for (guint i = 0; i < records->len; i++) {
    const CrunchStoredJob *r = records->pdata[i];
    Entry *entry = entry_from_record_locked (self, r);
    if (r->state != CRUNCH_STORED_FINISHED) {
      recover_unfinished_locked (self, entry, r, clean_stop, counts);
    } else if (recover_finished_locked (self, entry, r)) {
      g_ptr_array_add (finished, entry);
      counts[0]++;
    } else {
      store_forget (self, entry);
      g_hash_table_remove (self->entries, entry->id);
    }
  }
  /* the finished queue is in the order they finished: oldest (first to expire) at the head */
  g_ptr_array_sort (finished, by_finish);
  for (guint i = 0; i < finished->len; i++)
    g_queue_push_head (&self->finished, finished->pdata[finished->len - 1 - i]);
}

gboolean
crunch_jobs_recover (CrunchJobs *self, GError **error)
{
  g_autoptr (GPtrArray) records = NULL;
  gboolean clean_stop = TRUE;
  guint counts[3] = {0, 0, 0};

  if (self->store == NULL)
    return TRUE;
  records = crunch_store_load (self->store, &clean_stop, error);
  if (records == NULL)
    return FALSE;
  g_mutex_lock (&self->lock);
  rebuild_locked (self, records, clean_stop, counts);
  g_mutex_unlock (&self->lock);
  if (records->len > 0)
    g_message ("jobs: %u finished kept, %u to run again, %u failed%s", counts[0], counts[1],
               counts[2], clean_stop ? "" : " (the last stop was not clean)");
  return TRUE;
}

gboolean
crunch_jobs_recovering (CrunchJobs *self)
{
  return g_atomic_int_get (&self->careful) > 0;
}

void
crunch_jobs_resume (CrunchJobs *self, GSourceFunc recovered, gpointer data)
{
  g_mutex_lock (&self->lock);
  self->recovered = recovered;
  self->recovered_data = data;
  g_mutex_unlock (&self->lock);
  pump_backlog (self);
}

/* ---- a shared store: jobs of other front ends (nats.c) ---- */

/* Store thread: this front end took a job over (its owner died): run it, or fail it. */
static void
on_claimed (CrunchStoredJob *record, gpointer data)
{
  CrunchJobs *self = data;
  guint counts[3] = {0, 0, 0};
  Entry *old;

  g_mutex_lock (&self->lock);
  old = g_hash_table_lookup (self->entries, record->id);
  if (old != NULL && old->lost && old->t_done != 0) { /* ours once, lost, now back */
    g_queue_remove (&self->finished, old);
    g_hash_table_remove (self->entries, record->id);
    old = NULL;
  }
  if (old != NULL) {
    /* still here: running (ours again) or finished (its end was not written: write it) */
    old->lost = FALSE;
    if (old->t_done != 0 && !old->interrupted) {
      CrunchStoredJob again = record_of (old, CRUNCH_STORED_FINISHED);
      crunch_store_put (self->store, &again, NULL, NULL);
    }
  } else if (record->cancel_requested) { /* cancelled through another front end */
    Entry *entry = entry_from_record_locked (self, record);
    entry->cancel_requested = TRUE;
    entry->outcome = CRUNCH_JOB_CLIENT_GONE;
    finish_locked (self, entry);
  } else {
    recover_unfinished_locked (self, entry_from_record_locked (self, record), record, TRUE, counts);
  }
  g_mutex_unlock (&self->lock);
  g_message ("jobs: took over job %s (%s, attempt %u) from a front end that stopped renewing it",
             record->id, record->fn, record->attempts + 1);
  crunch_stored_job_free (record);
  g_idle_add (pump_backlog, self);
}

/* Store thread: another front end asked for a job this one runs to stop (`lost`: it took the
 * job over, so this run's outcome is not written). */
static void
stop_owned (CrunchJobs *self, const gchar *id, gboolean lost)
{
  g_autoptr (CrunchCall) call = NULL;
  Entry *entry;

  g_mutex_lock (&self->lock);
  entry = g_hash_table_lookup (self->entries, id);
  /* not yet accepted (on_stored() owns it until then): nothing to stop */
  if (entry != NULL && (!entry->visible || entry->later != NULL))
    entry = NULL;
  if (entry != NULL && lost)
    entry->lost = TRUE; /* finished or not: its record is another front end's now */
  if (entry != NULL && entry->t_done == 0) {
    entry->cancel_requested = TRUE;
    if (entry->call == NULL) { /* waiting for admission */
      g_queue_remove (&self->backlog, entry);
      entry->outcome = CRUNCH_JOB_CLIENT_GONE;
      finish_locked (self, entry);
    } else if (crunch_call_ticket (entry->call) != NULL) {
      call = crunch_call_ref (entry->call);
    }
  }
  g_mutex_unlock (&self->lock);
  if (call != NULL)
    crunch_call_cancel (call, CRUNCH_JOB_CLIENT_GONE);
}

static void
on_cancel_requested (const gchar *id, gpointer data)
{
  stop_owned (data, id, FALSE);
}

static void
on_lost (const gchar *id, gpointer data)
{
  stop_owned (data, id, TRUE);
}

typedef enum { REMOTE_DESCRIBE, REMOTE_RESULT, REMOTE_DELETE } RemoteVerb;

typedef struct {
  CrunchJobs *jobs;
  CrunchLater *later;
  RemoteVerb verb;
  gchar *owner; /* [auth]: only this client's job is answered; NULL: anyone's */
} Remote;

/* A job read from the shared store, as an entry outside the table; NULL when its ttl has run
 * out. Free with remote_entry_free(). */
static Entry *
remote_entry (CrunchJobs *self, const CrunchStoredJob *r)
{
  Entry *entry = g_new0 (Entry, 1);

  entry->jobs = self;
  entry->id = g_strdup (r->id);
  entry->fn_name = g_strdup (r->fn);
  entry->fn = crunch_functions_lookup (r->fn);
  entry->args = g_variant_ref (r->args);
  entry->client = g_strdup (r->client);
  entry->visible = TRUE;
  entry->t_created = r->created;
  entry->attempts = r->attempts;
  entry->crashes = r->crashes;
  entry->cancel_requested = r->cancel_requested;
  entry->queued_us = entry->run_us = -1;
  entry->remote_running = r->state == CRUNCH_STORED_RUNNING;
  if (r->state == CRUNCH_STORED_FINISHED && !recover_finished_locked (self, entry, r)) {
    entry->t_done = 1;
    entry->lost = TRUE; /* expired: say so with a 404 */
  }
  return entry;
}

static void
remote_entry_free (Entry *entry)
{
  g_free (entry->id);
  g_free (entry->fn_name);
  g_variant_unref (entry->args);
  g_free (entry->client);
  g_clear_pointer (&entry->result, g_bytes_unref);
  g_free (entry->error);
  g_free (entry);
}

/* Under the lock (for the limits it reads). */
static CrunchReply
remote_reply_locked (CrunchJobs *self, Entry *entry, RemoteVerb verb)
{
  if (entry->lost)
    return jobs_no_such_job ();
  switch (verb) {
  case REMOTE_DESCRIBE:
    return describe_locked (entry, 200);
  case REMOTE_RESULT:
    if (entry->t_done == 0 || entry->outcome != CRUNCH_JOB_OK)
      return crunch_reply_text (409, "job %s is %s: no result", entry->id, state_name (entry));
    return crunch_reply_bytes (200, g_bytes_ref (entry->result), content_type_of (entry));
  case REMOTE_DELETE:
    if (entry->t_done != 0) {
      crunch_store_remove (self->store, entry->id);
      return (CrunchReply){.status = 204, .content_type = CRUNCH_TEXT_PLAIN};
    }
    /* its owner sees the request at its next lease renewal and cancels it */
    self->store->klass->request_cancel (self->store, entry->id, NULL, NULL);
    entry->cancel_requested = TRUE;
    return describe_locked (entry, 202);
  }
  return jobs_no_such_job ();
}

/* Store thread: the job as the shared store has it; answers the parked request. */
static void
on_remote_got (CrunchStoredJob *record, const GError *error, gpointer data)
{
  Remote *remote = data;
  CrunchJobs *self = remote->jobs;
  CrunchReply reply;

  if (error != NULL) {
    reply = crunch_reply_text (503, "the job store could not be read: %s", error->message);
    reply.retry_after = g_strdup ("1");
  } else if (record == NULL ||
             (remote->owner != NULL && g_strcmp0 (record->client, remote->owner) != 0)) {
    reply = jobs_no_such_job ();
  } else {
    Entry *entry = remote_entry (self, record);
    g_mutex_lock (&self->lock);
    reply = remote_reply_locked (self, entry, remote->verb);
    g_mutex_unlock (&self->lock);
    remote_entry_free (entry);
  }
  crunch_stored_job_free (record);
  remote->later->answer (remote->later, &reply);
  g_free (remote->owner);
  g_free (remote);
}

/* A job this front end does not have: ask the shared store (the request waits, parked). */
static CrunchReply
remote (CrunchJobs *self, const CrunchRequestInfo *request, RemoteVerb verb)
{
  Remote *r = g_new0 (Remote, 1);
  CrunchReply reply;

  r->jobs = self;
  r->verb = verb;
  r->owner = request->owned ? g_strdup (request->client) : NULL;
  r->later = request->defer (request->request);
  if (r->later == NULL) {
    g_free (r->owner);
    g_free (r);
    reply = crunch_reply_text (503, "server is shutting down");
    reply.close = TRUE;
    return reply;
  }
  self->store->klass->get (self->store, request->arg, on_remote_got, r);
  return crunch_reply_later ();
}

/* ---- the other verbs ---- */

/* The entry whose id was handed out (lock held), or NULL. */
Entry *
jobs_find_locked (CrunchJobs *self, const gchar *id)
{
  Entry *entry;

  purge_locked (self);
  entry = g_hash_table_lookup (self->entries, id);
  /* an entry reserved but not yet admitted is not visible: its id has not been handed out */
  return entry != NULL && entry->visible && !entry->lost ? entry : NULL;
}

CrunchReply
jobs_no_such_job (void)
{
  return crunch_reply_text (404, "no such job (it never existed, was deleted, or expired after "
                                 "[jobs] ttl)");
}

static CrunchReply
describe_id (CrunchJobs *self, const gchar *id, guint status)
{
  CrunchReply reply;
  Entry *entry;

  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, id);
  reply = entry != NULL ? describe_locked (entry, status) : jobs_no_such_job ();
  g_mutex_unlock (&self->lock);
  return reply;
}

/* Whether a job this front end does not have is to be asked of the shared store. */
gboolean
jobs_elsewhere (CrunchJobs *self, const gchar *id)
{
  gboolean absent;

  if (!crunch_store_shared (self->store) || !crunch_store_id_valid (id))
    return FALSE;
  g_mutex_lock (&self->lock);
  absent = jobs_find_locked (self, id) == NULL;
  g_mutex_unlock (&self->lock);
  return absent;
}

/* [auth]: the job is here but another caller's, who is told it does not exist. */
gboolean
jobs_not_theirs (CrunchJobs *self, const CrunchRequestInfo *request)
{
  Entry *entry;
  gboolean other;

  if (!request->owned)
    return FALSE;
  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, request->arg);
  other = entry != NULL && g_strcmp0 (entry->client, request->client) != 0;
  g_mutex_unlock (&self->lock);
  return other;
}

/* GET /jobs/ID */
static CrunchReply
describe_handler (const CrunchRequestInfo *request, gpointer context)
{
  if (jobs_not_theirs (context, request))
    return jobs_no_such_job ();
  if (jobs_elsewhere (context, request->arg))
    return remote (context, request, REMOTE_DESCRIBE);
  return describe_id (context, request->arg, 200);
}

/* GET /jobs/ID/result */
static CrunchReply
result_handler (const CrunchRequestInfo *request, gpointer context)
{
  CrunchJobs *self = context;
  CrunchReply reply;
  Entry *entry;

  if (jobs_not_theirs (self, request))
    return jobs_no_such_job ();
  if (jobs_elsewhere (self, request->arg))
    return remote (self, request, REMOTE_RESULT);
  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, request->arg);
  if (entry == NULL)
    reply = jobs_no_such_job ();
  else if (entry->t_done == 0 || entry->interrupted || entry->outcome != CRUNCH_JOB_OK)
    reply = crunch_reply_text (409, "job %s is %s: no result", entry->id, state_name (entry));
  else
    reply = crunch_reply_bytes (200, g_bytes_ref (entry->result), content_type_of (entry));
  g_mutex_unlock (&self->lock);
  return reply;
}

/* DELETE /jobs/ID. Unfinished: cancel it (202, state "cancelled"). Finished: forget it (204). */
static CrunchReply
delete_handler (const CrunchRequestInfo *request, gpointer context)
{
  CrunchJobs *self = context;
  g_autoptr (CrunchCall) call = NULL;
  Entry *entry;

  if (jobs_not_theirs (self, request))
    return jobs_no_such_job ();
  if (jobs_elsewhere (self, request->arg))
    return remote (self, request, REMOTE_DELETE);
  g_mutex_lock (&self->lock);
  entry = jobs_find_locked (self, request->arg);
  if (entry == NULL || entry->t_done != 0) {
    if (entry != NULL) {
      g_queue_remove (&self->finished, entry);
      store_forget (self, entry);
      g_hash_table_remove (self->entries, entry->id);
    }
    g_mutex_unlock (&self->lock);
    return entry != NULL ? (CrunchReply){.status = 204, .content_type = CRUNCH_TEXT_PLAIN}
                         : jobs_no_such_job ();
  }
  entry->cancel_requested = TRUE;
  if (entry->call == NULL) { /* recovered, waiting for admission: in no queue but ours */
    g_queue_remove (&self->backlog, entry);
    entry->outcome = CRUNCH_JOB_CLIENT_GONE;
    finish_locked (self, entry);
  }
  if (entry->call == NULL || crunch_call_ticket (entry->call) == NULL) {
    /* (or being admitted: its submitter cancels it right after submit()) */
    g_mutex_unlock (&self->lock);
    return describe_id (self, request->arg, 202);
  }
  call = crunch_call_ref (entry->call);
  g_mutex_unlock (&self->lock);

  /* answers the call now (on_answered takes our lock); its job stops if nobody else waits */
  crunch_call_cancel (call, CRUNCH_JOB_CLIENT_GONE);
  return describe_id (self, request->arg, 202);
}

/* POST /jobs */
static CrunchReply
submit_handler (const CrunchRequestInfo *request, gpointer context)
{
  return crunch_jobs_submit (context, request);
}

CrunchHandler
crunch_jobs_handler (const gchar *verb)
{
  static const CrunchNamedHandler handlers[] = {
      {"submit", submit_handler}, {"describe", describe_handler},  {"result", result_handler},
      {"delete", delete_handler}, {"events", jobs_events_handler}, {NULL, NULL},
  };

  return crunch_handler_find (handlers, verb);
}
