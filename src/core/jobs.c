/* jobs.c - the store of asynchronous jobs.
 *
 * DESIGN
 * One mutex guards the table of entries, the queue of finished ones and the limits. Callers:
 * - the MHD polling threads: submit(), get(), delete() (never block beyond the mutex);
 * - whichever thread answers a call (a worker, the deadline watcher, the scheduler while
 *   draining, an HTTP thread cancelling it): on_answered(), which only marks the entry finished;
 * - the main thread: configure() on reload, cancel_all() and free() on shutdown.
 * A job is a compute call like a synchronous request's (call.c), so the cache, admission,
 * per-client limits, fairness, coalescing, its deadline and its metrics apply unchanged; only no
 * socket waits for it. DELETE cancels it with CLIENT_GONE. Calls are admitted, submitted and
 * cancelled outside our lock (the scheduler may answer at once, and on_answered() takes it);
 * crunch_call_running() calls nothing back: no lock-order cycle.
 * An entry lives from submit() until it is deleted or, once finished, until [jobs] ttl has
 * passed. Unfinished entries are never freed (their call's callback points at them). Expired
 * entries are purged lazily, at the start of every call: finished ones are queued in the order
 * they finished, so the oldest is always at the head. */
#include "jobs.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/random.h>

#include "args.h"
#include "json.h"
#include "metrics.h"

struct CrunchJobs {
  GMutex lock;
  CrunchCalls *calls;
  GHashTable *entries; /* id -> Entry* (owned) */
  GQueue finished;     /* Entry*, oldest first */
  GHashTable *held;    /* client -> entries it holds (GUINT_TO_POINTER) */
  gint64 ttl_us;
  guint max_stored, max_per_client;
};

typedef struct {
  CrunchJobs *store;
  gchar *id;
  const CrunchFunction *fn;
  gchar *client;    /* who submitted it: its share of the store */
  CrunchCall *call; /* its compute call (the jobs' `answered` marks it finished) */
  gboolean visible; /* admitted (or answered from the cache): its id is handed out */
  gint64 t_created; /* wall clock, for humans */
  gint64 t_submitted, deadline_us;
  gint64 t_done; /* monotonic; 0 while unfinished */
  gboolean cancel_requested;
} Entry;

#define ID_BYTES 16 /* 128 random bits */

/* With the lock held (the table frees entries as they are removed). */
static void
entry_free (gpointer data)
{
  Entry *entry = data;
  GHashTable *held = entry->store->held;
  guint count = GPOINTER_TO_UINT (g_hash_table_lookup (held, entry->client));

  if (count > 1)
    g_hash_table_insert (held, g_strdup (entry->client), GUINT_TO_POINTER (count - 1));
  else
    g_hash_table_remove (held, entry->client);
  g_free (entry->client);
  g_clear_pointer (&entry->call, crunch_call_unref);
  g_free (entry->id);
  g_free (entry);
}

CrunchJobs *
crunch_jobs_new (CrunchCalls *calls, const CrunchConfig *config)
{
  CrunchJobs *self = g_new0 (CrunchJobs, 1);

  g_mutex_init (&self->lock);
  self->calls = calls;
  self->entries = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, entry_free);
  self->held = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  g_queue_init (&self->finished);
  crunch_jobs_configure (self, config);
  return self;
}

void
crunch_jobs_configure (CrunchJobs *self, const CrunchConfig *config)
{
  g_mutex_lock (&self->lock);
  self->ttl_us = (gint64)(config->jobs_ttl * G_USEC_PER_SEC);
  self->max_stored = config->jobs_max_stored;
  self->max_per_client = config->jobs_max_stored_per_client;
  g_mutex_unlock (&self->lock);
}

void
crunch_jobs_cancel_all (CrunchJobs *self)
{
  g_autoptr (GPtrArray) calls = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_call_unref);
  GHashTableIter iter;
  gpointer value;

  g_mutex_lock (&self->lock);
  g_hash_table_iter_init (&iter, self->entries);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Entry *entry = value;
    if (entry->t_done == 0 && entry->visible)
      g_ptr_array_add (calls, crunch_call_ref (entry->call));
  }
  g_mutex_unlock (&self->lock);
  /* outside our lock: cancelling answers the call, and on_answered() takes the lock */
  for (guint i = 0; i < calls->len; i++)
    crunch_call_cancel (calls->pdata[i], CRUNCH_JOB_SHUTDOWN);
}

void
crunch_jobs_free (CrunchJobs *self)
{
  if (self == NULL)
    return;
  g_queue_clear (&self->finished);
  g_hash_table_unref (self->entries);
  g_hash_table_unref (self->held);
  g_mutex_clear (&self->lock);
  g_free (self);
}

/* With the lock held. */
static void
purge_locked (CrunchJobs *self)
{
  gint64 now = g_get_monotonic_time ();
  Entry *oldest;

  while ((oldest = g_queue_peek_head (&self->finished)) != NULL &&
         now - oldest->t_done >= self->ttl_us) {
    g_queue_pop_head (&self->finished);
    g_hash_table_remove (self->entries, oldest->id);
  }
}

/* With the lock held. */
static void
finish_locked (CrunchJobs *self, Entry *entry)
{
  entry->t_done = g_get_monotonic_time ();
  g_queue_push_tail (&self->finished, entry);
}

/* Any thread: the call has its answer (counted in the metrics by call.c). */
static void
on_answered (CrunchCall *call, gpointer data)
{
  Entry *entry = data;
  CrunchJobs *self = entry->store;

  g_mutex_lock (&self->lock);
  finish_locked (self, entry); /* from here on another thread may purge the entry */
  g_mutex_unlock (&self->lock);
}

/* ---- replies ---- */

static CrunchReply
reply_json (guint status, JsonBuilder *builder)
{
  g_autoptr (JsonNode) root = json_builder_get_root (builder);
  GString *text = g_string_new (NULL);

  /* not JsonGenerator: it prints 4.9e-05 s as 4.8999999999999998e-05 */
  crunch_json_append_object (text, json_node_get_object (root));
  g_string_append_c (text, '\n');
  return crunch_reply_bytes (status, g_string_free_to_bytes (text), "application/json");
}

/* With the lock held. A finished entry's ticket is only read: the scheduler wrote its answer
 * before calling on_answered(), which took this lock after. NULL for a cache hit. */
static const CrunchTicket *
ticket_of (const Entry *entry)
{
  return crunch_call_ticket (entry->call);
}

static CrunchJobOutcome
outcome_of (const Entry *entry)
{
  return ticket_of (entry) != NULL ? ticket_of (entry)->outcome : CRUNCH_JOB_OK;
}

static GBytes *
result_of (const Entry *entry)
{
  return ticket_of (entry) != NULL ? ticket_of (entry)->result : crunch_call_cached (entry->call);
}

static const gchar *
state_name (const Entry *entry)
{
  if (entry->t_done == 0)
    return crunch_call_running (entry->call) ? "running" : "queued";
  switch (outcome_of (entry)) {
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

static void
add_seconds (JsonBuilder *b, const gchar *name, gint64 us)
{
  json_builder_set_member_name (b, name);
  json_builder_add_double_value (b, us / 1e6);
}

static void
add_timings (JsonBuilder *b, const Entry *entry, gint64 now)
{
  const CrunchTicket *ticket = ticket_of (entry);
  gint64 started = entry->t_done && ticket ? ticket->t_started : 0;
  g_autoptr (GDateTime) created = g_date_time_new_from_unix_utc (entry->t_created / G_USEC_PER_SEC);
  g_autofree gchar *iso = g_date_time_format_iso8601 (created);

  json_builder_set_member_name (b, "created");
  json_builder_add_string_value (b, iso);
  /* while it runs only the total is known; once answered, the split */
  if (entry->t_done == 0) {
    add_seconds (b, "age_seconds", now - entry->t_submitted);
  } else if (started != 0) {
    add_seconds (b, "queued_seconds", MAX (0, started - entry->t_submitted));
    add_seconds (b, "run_seconds", ticket->t_finished - started);
  }
  if (entry->t_done != 0 && ticket != NULL && ticket->coalesced) { /* set before the answer */
    json_builder_set_member_name (b, "coalesced");
    json_builder_add_boolean_value (b, TRUE);
  }
  add_seconds (b, "deadline_seconds", entry->deadline_us - entry->t_submitted);
  /* when a finished job is forgotten; not said of an "expired" one, which reads as a
   * contradiction (its deadline passed; it is still kept [jobs] ttl) */
  if (entry->t_done && outcome_of (entry) != CRUNCH_JOB_TIMED_OUT)
    add_seconds (b, "expires_in_seconds", MAX (0, entry->store->ttl_us - (now - entry->t_done)));
}

static void
add_string (JsonBuilder *b, const gchar *name, const gchar *value)
{
  json_builder_set_member_name (b, name);
  json_builder_add_string_value (b, value);
}

static void
add_outcome (JsonBuilder *b, const Entry *entry)
{
  g_autofree gchar *url = g_strconcat ("/jobs/", entry->id, "/result", NULL);
  CrunchJobOutcome outcome;
  gsize size;
  gconstpointer data;

  /* not before: until it is done, a worker may be writing the ticket's outcome (TSan saw it) */
  if (entry->t_done == 0)
    return;
  outcome = outcome_of (entry);
  if (outcome == CRUNCH_JOB_OK) {
    data = g_bytes_get_data (result_of (entry), &size);
    add_string (b, "content_type", entry->fn->content_type);
    json_builder_set_member_name (b, "result_size");
    json_builder_add_int_value (b, (gint64)size);
    add_string (b, "result_url", url);
    /* text small enough to read inline; anything else from result_url */
    if (is_text (entry->fn->content_type) && size <= 65536 && g_utf8_validate (data, size, NULL)) {
      g_autofree gchar *text = g_strndup (data, size);
      add_string (b, "result", text);
    }
    return;
  }
  if (outcome == CRUNCH_JOB_FAILED || outcome == CRUNCH_JOB_UNAVAILABLE ||
      outcome == CRUNCH_JOB_CRASHED)
    add_string (b, "error",
                ticket_of (entry)->error ? ticket_of (entry)->error
                                         : "no worker could take the job");
  else if (outcome == CRUNCH_JOB_TIMED_OUT)
    add_string (b, "error", "deadline exceeded");
  else if (outcome == CRUNCH_JOB_SHUTDOWN)
    add_string (b, "error", "the server stopped");
  else
    add_string (b, "error", "cancelled by DELETE");
}

/* With the lock held. */
static CrunchReply
describe_locked (const Entry *entry, guint status)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();

  json_builder_begin_object (b);
  add_string (b, "id", entry->id);
  add_string (b, "fn", entry->fn->name);
  add_string (b, "state", state_name (entry));
  if (entry->cancel_requested) {
    json_builder_set_member_name (b, "cancel_requested");
    json_builder_add_boolean_value (b, TRUE);
  }
  if (crunch_call_cached (entry->call) != NULL) {
    json_builder_set_member_name (b, "cached");
    json_builder_add_boolean_value (b, TRUE);
  }
  add_timings (b, entry, g_get_monotonic_time ());
  add_outcome (b, entry);
  json_builder_end_object (b);
  return reply_json (status, b);
}

/* ---- the three verbs ---- */

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

/* With the lock held: a place in the store, or NULL when it is full (*client_full: when this
 * client holds its whole share). */
static Entry *
reserve_locked (CrunchJobs *self, const CrunchFunction *fn, const gchar *client,
                gboolean *client_full)
{
  guint held;
  Entry *entry;

  purge_locked (self);
  held = GPOINTER_TO_UINT (g_hash_table_lookup (self->held, client));
  *client_full = self->max_per_client > 0 && held >= self->max_per_client;
  if (*client_full || g_hash_table_size (self->entries) >= self->max_stored)
    return NULL;
  g_hash_table_insert (self->held, g_strdup (client), GUINT_TO_POINTER (held + 1));
  entry = g_new0 (Entry, 1);
  entry->store = self;
  entry->id = new_id ();
  entry->fn = fn;
  entry->client = g_strdup (client);
  entry->t_created = g_get_real_time ();
  entry->t_submitted = g_get_monotonic_time ();
  entry->deadline_us =
      entry->t_submitted + MAX (__atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED), 1);
  g_hash_table_insert (self->entries, entry->id, entry);
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
refused (const CrunchCallRefusal *refusal)
{
  CrunchReply reply = crunch_reply_text (refusal->status, "%s", refusal->message);

  reply.retry_after = g_strdup (refusal->retry_after);
  return reply;
}

static CrunchReply
accepted_locked (const Entry *entry)
{
  CrunchReply reply = describe_locked (entry, 202);

  reply.location = g_strconcat ("/jobs/", entry->id, NULL);
  return reply;
}

/* With the lock held: the call, or the reason there is none. */
static CrunchReply
admitted_locked (CrunchJobs *self, Entry *entry, CrunchCallAdmission admission)
{
  if (admission == CRUNCH_CALL_REFUSED) {
    CrunchReply reply = refused (crunch_call_refusal (entry->call));
    g_hash_table_remove (self->entries, entry->id);
    return reply;
  }
  entry->visible = TRUE;
  if (admission == CRUNCH_CALL_CACHED) /* a cache hit needs no job: it is done at once */
    finish_locked (self, entry);
  return accepted_locked (entry);
}

/* {"fn": NAME, "args": {...}}; `client` is the fairness key. */
static CrunchReply
crunch_jobs_submit (CrunchJobs *self, const gchar *body, gsize len, const gchar *client)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GVariant) args = NULL;
  g_autoptr (CrunchCall) call = NULL;
  const CrunchFunction *fn = NULL;
  CrunchCallAdmission admission;
  CrunchReply reply;
  gboolean client_full;
  Entry *entry;

  args = crunch_args_from_job_body (body, len, &fn, &error);
  if (args == NULL)
    return crunch_reply_text (400, "POST /jobs: %s", error->message);
  g_variant_ref_sink (args);

  g_mutex_lock (&self->lock);
  entry = reserve_locked (self, fn, client, &client_full);
  if (entry == NULL) {
    reply = store_full_locked (self, client, client_full);
    g_mutex_unlock (&self->lock);
    return reply;
  }
  entry->call = crunch_call_new (
      self->calls, &(CrunchCallSpec){fn, args, client, entry->deadline_us, -1, on_answered, entry});
  call = crunch_call_ref (entry->call);
  g_mutex_unlock (&self->lock);

  /* Outside the lock, here and below: the scheduler may answer the call at once, and
   * on_answered() takes the lock. */
  admission = crunch_call_admit (call);
  g_mutex_lock (&self->lock);
  reply = admitted_locked (self, entry, admission);
  g_mutex_unlock (&self->lock);
  /* From here on the entry may be answered and purged by another thread: only `call` is ours. */
  if (admission == CRUNCH_CALL_ADMITTED)
    crunch_call_submit (call);
  return reply;
}

/* The entry whose id was handed out (lock held), or NULL. */
static Entry *
find_locked (CrunchJobs *self, const gchar *id)
{
  Entry *entry;

  purge_locked (self);
  entry = g_hash_table_lookup (self->entries, id);
  /* an entry reserved but not yet admitted is not visible: its id has not been handed out */
  return entry != NULL && entry->visible ? entry : NULL;
}

static CrunchReply
no_such_job (void)
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
  entry = find_locked (self, id);
  reply = entry != NULL ? describe_locked (entry, status) : no_such_job ();
  g_mutex_unlock (&self->lock);
  return reply;
}

/* GET /jobs/ID */
static CrunchReply
describe_handler (const CrunchRequestInfo *request, gpointer context)
{
  return describe_id (context, request->arg, 200);
}

/* GET /jobs/ID/result */
static CrunchReply
result_handler (const CrunchRequestInfo *request, gpointer context)
{
  CrunchJobs *self = context;
  CrunchReply reply;
  Entry *entry;

  g_mutex_lock (&self->lock);
  entry = find_locked (self, request->arg);
  if (entry == NULL)
    reply = no_such_job ();
  else if (entry->t_done == 0 || outcome_of (entry) != CRUNCH_JOB_OK)
    reply = crunch_reply_text (409, "job %s is %s: no result", entry->id, state_name (entry));
  else
    reply = crunch_reply_bytes (200, g_bytes_ref (result_of (entry)), entry->fn->content_type);
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

  g_mutex_lock (&self->lock);
  entry = find_locked (self, request->arg);
  if (entry == NULL || entry->t_done != 0) {
    if (entry != NULL) {
      g_queue_remove (&self->finished, entry);
      g_hash_table_remove (self->entries, entry->id);
    }
    g_mutex_unlock (&self->lock);
    return entry != NULL ? (CrunchReply){.status = 204, .content_type = CRUNCH_TEXT_PLAIN}
                         : no_such_job ();
  }
  entry->cancel_requested = TRUE;
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
  return crunch_jobs_submit (context, request->body, request->body_len, request->client);
}

CrunchHandler
crunch_jobs_handler (const gchar *verb)
{
  static const CrunchNamedHandler handlers[] = {
      {"submit", submit_handler},
      {"describe", describe_handler},
      {"result", result_handler},
      {"delete", delete_handler},
      {NULL, NULL},
  };

  return crunch_handler_find (handlers, verb);
}
