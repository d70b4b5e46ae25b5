/* nats.c - the JetStream job store (see nats.h and store.h).
 *
 * DESIGN
 * A job is one key (its id) in a JetStream key-value bucket; its value is the stored job (a small
 * JSON header, then the argument and result bytes, never base64). Every change is a
 * compare-and-swap on the key's revision (kvStore_Create for a new job, kvStore_Update with the
 * revision last seen), so two front ends never both believe they own a job.
 * Ownership: the front end that writes a job unfinished owns it and names itself (a random id
 * per process) and a lease (wall clock). Its store thread renews the leases of the jobs it owns
 * every lease/3, and at each renewal sees what other front ends wrote: a cancel request (the
 * hooks' cancel()) or a takeover (lost()). Every `lease`, it also scans the bucket: an unfinished
 * job whose lease has lapsed (its owner died) is claimed with a CAS, counted as a crash if it was
 * running, and handed to the jobs API to run (claimed()); finished jobs past [jobs] ttl are
 * deleted. A crunchd that restarts has a new id: it takes its old jobs back like any other.
 * Threads: any thread queues writes and reads on an async queue; the store thread alone talks to
 * the bucket and owns the table of jobs it runs (`own`); callbacks run on it, outside every lock.
 * A value must fit in one NATS message: a result larger than the server's max_payload (minus the
 * header) is refused, and the jobs API fails that job with a message saying so. */
#include "nats.h"

#include <json-glib/json-glib.h>
#include <string.h>
#include <sys/random.h>

#include "json.h"
#include "nats-link.h"

#define MAGIC "CJ1\n"
#define HEADER_ROOM 4096 /* bytes kept for the header and NATS's own headers */
#define CAS_TRIES 5
#define MAX_TIME_US G_GINT64_CONSTANT (253402300799000000) /* 9999-12-31 */
#define MAX_COUNT 1000000

typedef enum { OP_PUT, OP_STATE, OP_REMOVE, OP_GET, OP_CANCEL, OP_STOP } OpKind;

typedef struct {
  OpKind kind;
  guint64 seq;
  CrunchStoredJob *record; /* PUT: the job; the others use its id (STATE: state, counters) */
  CrunchStoreDone done;
  CrunchStoreGot got;
  gpointer data;
} Op;

typedef struct {
  CrunchStoredJob *record; /* as last written */
  guint64 revision;
} Own;

typedef struct {
  CrunchStore parent;
  natsConnection *nc;
  jsCtx *js;
  kvStore *kv;
  gchar *bucket, *owner;
  gint64 lease_us, ttl_us;
  guint64 max_value;
  CrunchStoreQueue queue; /* Op* */
  GThread *thread;
  GHashTable *own; /* id -> Own*, store thread only */
  CrunchStoreHooks hooks;
  gint64 next_scan;
  guint64 writes, errors, claims, lost; /* atomic */
} NatsStore;

static void
own_free (gpointer data)
{
  Own *own = data;

  crunch_stored_job_free (own->record);
  g_free (own);
}

/* ---- the value: "CJ1\n", u32 header length, JSON header, u32 args length, args, result ---- */

static gchar *
header_json (const CrunchStoredJob *r)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) root = NULL;

  json_builder_begin_object (b);
  crunch_json_member_string (b, "id", r->id);
  crunch_json_member_string (b, "fn", r->fn);
  crunch_json_member_string (b, "args_type", g_variant_get_type_string (r->args));
  crunch_json_member_string (b, "client", r->client);
  crunch_json_member_string (b, "idempotency_key", r->idempotency_key);
  crunch_json_member_string (b, "body_hash", r->body_hash);
  crunch_json_member_int (b, "created", r->created);
  crunch_json_member_int (b, "state", r->state);
  crunch_json_member_int (b, "attempts", r->attempts);
  crunch_json_member_int (b, "crashes", r->crashes);
  crunch_json_member_string (b, "outcome", r->outcome);
  crunch_json_member_string (b, "error", r->error);
  crunch_json_member_int (b, "finished", r->finished);
  crunch_json_member_int (b, "queued_us", r->queued_us);
  crunch_json_member_int (b, "run_us", r->run_us);
  crunch_json_member_int (b, "coalesced", r->coalesced);
  crunch_json_member_string (b, "owner", r->owner);
  crunch_json_member_int (b, "lease_until", r->lease_until);
  crunch_json_member_int (b, "cancel_requested", r->cancel_requested);
  json_builder_end_object (b);
  root = json_builder_get_root (b);
  return json_to_string (root, FALSE);
}

static void
append_u32 (GByteArray *out, guint32 v)
{
  guint32 be = GUINT32_TO_BE (v);

  g_byte_array_append (out, (const guint8 *)&be, 4);
}

static GBytes *
encode (const CrunchStoredJob *r)
{
  g_autofree gchar *header = header_json (r);
  GByteArray *out = g_byte_array_new ();
  gsize args_len = g_variant_get_size (r->args);

  g_byte_array_append (out, (const guint8 *)MAGIC, 4);
  append_u32 (out, (guint32)strlen (header));
  g_byte_array_append (out, (const guint8 *)header, (guint)strlen (header));
  append_u32 (out, (guint32)args_len);
  g_byte_array_append (out, g_variant_get_data (r->args), (guint)args_len);
  if (r->result != NULL)
    g_byte_array_append (out, g_bytes_get_data (r->result, NULL),
                         (guint)g_bytes_get_size (r->result));
  return g_byte_array_free_to_bytes (out);
}

static gboolean
take_u32 (const guint8 **p, gsize *left, guint32 *v)
{
  guint32 be;

  if (*left < 4)
    return FALSE;
  memcpy (&be, *p, 4);
  *v = GUINT32_FROM_BE (be);
  *p += 4;
  *left -= 4;
  return TRUE;
}

static gchar *
get_string (JsonObject *o, const gchar *name)
{
  JsonNode *n = json_object_get_member (o, name);

  return n != NULL && json_node_get_value_type (n) == G_TYPE_STRING
             ? g_strdup (json_node_get_string (n))
             : NULL;
}

static void
read_header (CrunchStoredJob *r, JsonObject *o)
{
  gint64 state;

  r->id = get_string (o, "id");
  r->fn = get_string (o, "fn");
  r->client = get_string (o, "client");
  r->idempotency_key = get_string (o, "idempotency_key");
  r->body_hash = get_string (o, "body_hash");
  r->created = json_object_get_int_member_with_default (o, "created", 0);
  state = json_object_get_int_member_with_default (o, "state", 0);
  r->state = state >= 0 && state <= CRUNCH_STORED_FINISHED ? (CrunchStoredState)state
                                                           : CRUNCH_STORED_FINISHED + 1;
  r->attempts =
      (guint)CLAMP (json_object_get_int_member_with_default (o, "attempts", 0), 0, MAX_COUNT + 1);
  r->crashes =
      (guint)CLAMP (json_object_get_int_member_with_default (o, "crashes", 0), 0, MAX_COUNT + 1);
  r->outcome = get_string (o, "outcome");
  r->error = get_string (o, "error");
  r->finished = json_object_get_int_member_with_default (o, "finished", 0);
  r->queued_us = json_object_get_int_member_with_default (o, "queued_us", -1);
  r->run_us = json_object_get_int_member_with_default (o, "run_us", -1);
  r->coalesced = json_object_get_int_member_with_default (o, "coalesced", 0) != 0;
  r->owner = get_string (o, "owner");
  r->lease_until = json_object_get_int_member_with_default (o, "lease_until", 0);
  r->cancel_requested = json_object_get_int_member_with_default (o, "cancel_requested", 0) != 0;
}

/* Numbers another program may have put in the bucket, bounded before anyone computes with them. */
static gboolean
in_range (const CrunchStoredJob *r)
{
  return r->created >= 0 && r->created <= MAX_TIME_US && r->finished >= 0 &&
         r->finished <= MAX_TIME_US && r->lease_until >= 0 && r->lease_until <= MAX_TIME_US &&
         r->attempts <= MAX_COUNT && r->crashes <= MAX_COUNT && r->queued_us >= -1 &&
         r->run_us >= -1;
}

/* The stored job, or NULL when the value is not one (never trusted: another program may write
 * to the bucket). */
static CrunchStoredJob *
decode (const guint8 *p, gsize left)
{
  g_autoptr (CrunchStoredJob) r = g_new0 (CrunchStoredJob, 1);
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autofree gchar *header = NULL, *type = NULL;
  g_autoptr (GBytes) args = NULL;
  guint32 hlen, alen;

  if (left < 4 || memcmp (p, MAGIC, 4) != 0)
    return NULL;
  p += 4;
  left -= 4;
  if (!take_u32 (&p, &left, &hlen) || hlen > left || hlen > 65536)
    return NULL;
  header = g_strndup ((const gchar *)p, hlen);
  p += hlen;
  left -= hlen;
  if (!take_u32 (&p, &left, &alen) || alen > left ||
      !json_parser_load_from_data (parser, header, -1, NULL) ||
      !JSON_NODE_HOLDS_OBJECT (json_parser_get_root (parser)))
    return NULL;
  read_header (r, json_node_get_object (json_parser_get_root (parser)));
  type = get_string (json_node_get_object (json_parser_get_root (parser)), "args_type");
  args = g_bytes_new (p, alen);
  r->args = crunch_store_args_from_bytes (type, args);
  r->result = g_bytes_new (p + alen, left - alen);
  if (!crunch_store_id_valid (r->id) || r->fn == NULL || r->args == NULL || r->client == NULL ||
      r->state > CRUNCH_STORED_FINISHED ||
      (r->state == CRUNCH_STORED_FINISHED && r->outcome == NULL) || !in_range (r))
    return NULL;
  return g_steal_pointer (&r);
}

/* ---- the bucket (store thread) ---- */

static void
set_error (GError **error, NatsStore *self, natsStatus s, const gchar *what)
{
  g_autofree gchar *context =
      g_strdup_printf ("job store (NATS bucket %s): %s", self->bucket, what);

  crunch_nats_set_error (error, s, context);
}

/* The job and its revision; NULL when there is none (or it is not a job), *status says which. */
static CrunchStoredJob *
kv_read (NatsStore *self, const gchar *id, guint64 *revision, natsStatus *status)
{
  kvEntry *entry = NULL;
  CrunchStoredJob *r;

  *status = kvStore_Get (&entry, self->kv, id);
  if (*status != NATS_OK)
    return NULL;
  r = decode (kvEntry_Value (entry), (gsize)kvEntry_ValueLen (entry));
  *revision = kvEntry_Revision (entry);
  kvEntry_Destroy (entry);
  if (r != NULL && !g_str_equal (r->id, id)) { /* a value under another job's key */
    crunch_stored_job_free (r);
    r = NULL;
  }
  return r;
}

/* Writes the job: created when `last` is 0, else only if its revision is still `last`. */
static natsStatus
kv_write (NatsStore *self, const CrunchStoredJob *r, guint64 last, guint64 *revision)
{
  g_autoptr (GBytes) value = encode (r);
  gsize len;
  gconstpointer data = g_bytes_get_data (value, &len);

  if (len > self->max_value)
    return NATS_MAX_PAYLOAD;
  __atomic_add_fetch (&self->writes, 1, __ATOMIC_RELAXED);
  if (last == 0)
    return kvStore_Create (revision, self->kv, r->id, data, (int)len);
  return kvStore_Update (revision, self->kv, r->id, data, (int)len, last);
}

typedef enum {
  OURS,    /* still ours, own->revision up to date */
  LOST,    /* another front end took it over, or it is gone: dropped (lost() called) */
  UNKNOWN, /* the bucket could not be read now (or the job was never written): try later */
} Reconciled;

/* Someone else wrote a job we own (its revision moved): a cancel request is taken (the hooks'
 * cancel()) and the write goes on; a takeover (another owner) drops the job (lost()). A read that
 * fails (NATS unreachable for a moment) proves nothing: UNKNOWN, and the job stays ours. */
static Reconciled
reconcile (NatsStore *self, Own *own)
{
  guint64 revision = 0;
  natsStatus s = NATS_OK;
  g_autoptr (CrunchStoredJob) now = NULL;

  if (own->revision == 0)
    return UNKNOWN;
  now = kv_read (self, own->record->id, &revision, &s);
  if (now == NULL && s != NATS_OK && s != NATS_NOT_FOUND)
    return UNKNOWN;
  if (now == NULL || g_strcmp0 (now->owner, self->owner) != 0) {
    g_autofree gchar *id = g_strdup (own->record->id);
    __atomic_add_fetch (&self->lost, 1, __ATOMIC_RELAXED);
    g_hash_table_remove (self->own, id);
    if (self->hooks.lost != NULL)
      self->hooks.lost (id, self->hooks.data);
    return LOST;
  }
  if (now->cancel_requested && !own->record->cancel_requested) {
    own->record->cancel_requested = TRUE;
    if (self->hooks.cancel != NULL)
      self->hooks.cancel (own->record->id, self->hooks.data);
  }
  own->revision = revision;
  return OURS;
}

/* Writes a job we own (own->record, updated by the caller) with its lease renewed; a finished
 * one is ours no more. */
static natsStatus
write_own (NatsStore *self, Own *own)
{
  natsStatus s = NATS_ERR;
  gboolean finished = own->record->state == CRUNCH_STORED_FINISHED;
  g_autofree gchar *id = g_strdup (own->record->id);

  for (gint i = 0; i < CAS_TRIES; i++) {
    guint64 revision = 0;
    own->record->lease_until = finished ? 0 : g_get_real_time () + self->lease_us;
    s = kv_write (self, own->record, own->revision, &revision);
    if (s == NATS_OK) {
      own->revision = revision;
      break;
    }
    if (s == NATS_MAX_PAYLOAD || reconcile (self, own) != OURS)
      return s;
  }
  if (s == NATS_OK && finished)
    g_hash_table_remove (self->own, id);
  return s;
}

/* A finished job too large for one message: stored failed, without its result, rather than
 * left unfinished (it would run again and again). */
static natsStatus
write_without_result (NatsStore *self, Own *own)
{
  gsize size = own->record->result ? g_bytes_get_size (own->record->result) : 0;

  g_clear_pointer (&own->record->result, g_bytes_unref);
  g_free (own->record->outcome);
  own->record->outcome = g_strdup ("failed");
  g_free (own->record->error);
  own->record->error = g_strdup_printf ("the job and its result (%" G_GSIZE_FORMAT
                                        " bytes) are larger than one NATS message "
                                        "(%" G_GUINT64_FORMAT " bytes): results are not split",
                                        size, self->max_value);
  return write_own (self, own);
}

static void
apply_put (NatsStore *self, Op *op, GError **error)
{
  Own *own = g_hash_table_lookup (self->own, op->record->id);
  g_autofree gchar *id = NULL;
  natsStatus s;

  op->record->owner = g_strdup (self->owner);
  if (own == NULL) { /* a new job (a finished one from the cache included) */
    own = g_new0 (Own, 1);
    g_hash_table_insert (self->own, g_strdup (op->record->id), own);
  } else {
    op->record->cancel_requested |= own->record->cancel_requested;
    crunch_stored_job_free (own->record);
  }
  own->record = g_steal_pointer (&op->record);
  id = g_strdup (own->record->id);
  s = write_own (self, own); /* may drop `own` */
  if (s == NATS_MAX_PAYLOAD && own->record->state == CRUNCH_STORED_FINISHED)
    s = write_without_result (self, own);
  if (s == NATS_MAX_PAYLOAD)
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_MESSAGE_TOO_LARGE,
                 "job store (NATS bucket %s): the job is larger than a NATS message may be "
                 "(%" G_GUINT64_FORMAT " bytes)",
                 self->bucket, self->max_value);
  else if (s != NATS_OK)
    set_error (error, self, s, "writing a job");
  if (s != NATS_OK) /* not written: not ours to renew */
    g_hash_table_remove (self->own, id);
}

static void
apply_state (NatsStore *self, Op *op, GError **error)
{
  Own *own = g_hash_table_lookup (self->own, op->record->id);
  natsStatus s;

  if (own == NULL) /* not (or no longer) ours */
    return;
  own->record->state = op->record->state;
  own->record->attempts = op->record->attempts;
  own->record->crashes = op->record->crashes;
  s = write_own (self, own);
  if (s != NATS_OK)
    set_error (error, self, s, "writing a job's state");
}

/* Another front end's request: the owner sees the flag at its next renewal. */
static void
apply_cancel (NatsStore *self, Op *op, GError **error)
{
  for (gint i = 0; i < CAS_TRIES; i++) {
    guint64 revision = 0, written;
    natsStatus s;
    g_autoptr (CrunchStoredJob) r = kv_read (self, op->record->id, &revision, &s);
    if (r == NULL || r->state == CRUNCH_STORED_FINISHED || r->cancel_requested)
      return;
    r->cancel_requested = TRUE;
    s = kv_write (self, r, revision, &written);
    if (s == NATS_OK)
      return;
  }
  set_error (error, self, NATS_ERR, "asking for a job to be cancelled");
}

static void
apply_get (NatsStore *self, Op *op)
{
  g_autoptr (GError) error = NULL;
  guint64 revision;
  natsStatus s;
  CrunchStoredJob *r = kv_read (self, op->record->id, &revision, &s);

  if (r == NULL && s != NATS_OK && s != NATS_NOT_FOUND)
    set_error (&error, self, s, "reading a job");
  op->got (r, error, op->data);
}

/* ---- leases: renewing ours, claiming the dead's (store thread) ---- */

static void
renew_leases (NatsStore *self)
{
  g_autoptr (GPtrArray) ids = g_ptr_array_new_with_free_func (g_free);
  GHashTableIter iter;
  gpointer key;

  g_hash_table_iter_init (&iter, self->own);
  while (g_hash_table_iter_next (&iter, &key, NULL))
    g_ptr_array_add (ids, g_strdup (key));
  for (guint i = 0; i < ids->len; i++) {
    Own *own = g_hash_table_lookup (self->own, ids->pdata[i]);
    /* a renewal also sees what others wrote: reconcile() first */
    if (own != NULL && reconcile (self, own) == OURS)
      write_own (self, own);
  }
}

/* An unfinished job whose owner's lease lapsed: ours now, if the CAS says so. */
static void
claim (NatsStore *self, CrunchStoredJob *r, guint64 revision)
{
  Own *own;
  guint64 written = 0;

  r->crashes += r->state == CRUNCH_STORED_RUNNING; /* its owner died while it ran */
  r->state = CRUNCH_STORED_QUEUED;
  g_free (r->owner);
  r->owner = g_strdup (self->owner);
  r->lease_until = g_get_real_time () + self->lease_us;
  if (kv_write (self, r, revision, &written) != NATS_OK)
    return; /* another front end was faster */
  __atomic_add_fetch (&self->claims, 1, __ATOMIC_RELAXED);
  own = g_new0 (Own, 1);
  own->record = crunch_stored_job_copy (r);
  own->revision = written;
  g_hash_table_insert (self->own, g_strdup (r->id), own);
  if (self->hooks.claimed != NULL)
    self->hooks.claimed (crunch_stored_job_copy (r), self->hooks.data);
}

static void
scan_one (NatsStore *self, const gchar *id, gint64 now)
{
  guint64 revision = 0;
  natsStatus s;
  g_autoptr (CrunchStoredJob) r = kv_read (self, id, &revision, &s);

  if (r == NULL)
    return;
  if (r->state == CRUNCH_STORED_FINISHED) {
    /* expired: whoever sees it first deletes it */
    if (now - r->finished >= __atomic_load_n (&self->ttl_us, __ATOMIC_RELAXED))
      kvStore_Delete (self->kv, id);
  } else if (r->lease_until < now) {
    claim (self, r, revision);
  }
}

static void
scan (NatsStore *self)
{
  kvKeysList keys = {0};
  kvWatchOptions options;
  gint64 now = g_get_real_time ();

  kvWatchOptions_Init (&options);
  options.Timeout = 5000;
  if (kvStore_Keys (&keys, self->kv, &options) != NATS_OK)
    return; /* NATS_NOT_FOUND: empty */
  for (gint i = 0; i < keys.Count; i++)
    if (!g_hash_table_contains (self->own, keys.Keys[i]) && crunch_store_id_valid (keys.Keys[i]))
      scan_one (self, keys.Keys[i], now);
  kvKeysList_Destroy (&keys);
}

static void
tick (NatsStore *self)
{
  renew_leases (self);
  if (g_get_monotonic_time () >= self->next_scan) {
    scan (self);
    self->next_scan = g_get_monotonic_time () + self->lease_us;
  }
}

/* A clean stop: the jobs still ours (interrupted, queued again) get an expired lease, so
 * another front end (or this one, restarted) takes them over at its next scan. */
static void
release_all (NatsStore *self)
{
  GHashTableIter iter;
  gpointer value;

  g_hash_table_iter_init (&iter, self->own);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Own *own = value;
    guint64 revision;
    own->record->lease_until = 0;
    kv_write (self, own->record, own->revision, &revision);
  }
}

/* ---- the store thread ---- */

static void
finish_op (NatsStore *self, Op *op, const GError *error)
{
  if (error != NULL) {
    __atomic_add_fetch (&self->errors, 1, __ATOMIC_RELAXED);
    g_warning ("%s", error->message);
  }
  if (op->done != NULL)
    op->done (error, op->data);
  crunch_store_queue_done (&self->queue, op->seq); /* after the callback: see barrier() */
  crunch_stored_job_free (op->record);
  g_free (op);
}

static void
apply (NatsStore *self, Op *op)
{
  g_autoptr (GError) error = NULL;

  switch (op->kind) {
  case OP_PUT:
    apply_put (self, op, &error);
    break;
  case OP_STATE:
    apply_state (self, op, &error);
    break;
  case OP_REMOVE:
    g_hash_table_remove (self->own, op->record->id);
    kvStore_Delete (self->kv, op->record->id);
    break;
  case OP_GET:
    apply_get (self, op);
    break;
  case OP_CANCEL:
    apply_cancel (self, op, &error);
    break;
  case OP_STOP:
    release_all (self);
    break;
  }
  finish_op (self, op, error);
}

static gpointer
store_thread (gpointer data)
{
  NatsStore *self = data;
  gboolean stop = FALSE;

  gint64 next_tick = g_get_monotonic_time ();

  while (!stop) {
    gint64 wait = MAX (next_tick - g_get_monotonic_time (), 0);
    Op *op = g_async_queue_timeout_pop (self->queue.queue, (guint64)wait);
    if (op != NULL) {
      stop = op->kind == OP_STOP;
      apply (self, op);
    }
    /* on time however busy the queue is: leases must be renewed */
    if (!stop && g_get_monotonic_time () >= next_tick) {
      tick (self);
      next_tick = g_get_monotonic_time () + self->lease_us / 3;
    }
  }
  for (Op *op; (op = g_async_queue_try_pop (self->queue.queue)) != NULL;) /* by callbacks */
    apply (self, op);
  return NULL;
}

static void
push (NatsStore *self, OpKind kind, CrunchStoredJob *record, CrunchStoreDone done,
      CrunchStoreGot got, gpointer data)
{
  Op *op = g_new0 (Op, 1);

  op->kind = kind;
  op->record = record;
  op->done = done;
  op->got = got;
  op->data = data;
  crunch_store_queue_push (&self->queue, op, &op->seq);
}

static CrunchStoredJob *
id_record (const gchar *id)
{
  CrunchStoredJob *r = g_new0 (CrunchStoredJob, 1);

  r->id = g_strdup (id);
  return r;
}

/* ---- the class ---- */

/* Nothing to load: jobs in the bucket belong to their owners, and this process (a new owner)
 * claims those whose owner is gone once their leases lapse. */
static GPtrArray *
nats_load (CrunchStore *store, gboolean *clean_stop, GError **error)
{
  NatsStore *self = (NatsStore *)store;

  *clean_stop = TRUE;
  self->next_scan = 0; /* the first tick scans */
  self->thread = g_thread_new ("crunchd-store", store_thread, self);
  return g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_stored_job_free);
}

static void
nats_put (CrunchStore *store, const CrunchStoredJob *record, CrunchStoreDone done, gpointer data)
{
  push ((NatsStore *)store, OP_PUT, crunch_stored_job_copy (record), done, NULL, data);
}

static void
nats_set_state (CrunchStore *store, const gchar *id, CrunchStoredState state, guint attempts,
                guint crashes, CrunchStoreDone done, gpointer data)
{
  CrunchStoredJob *r = id_record (id);

  r->state = state;
  r->attempts = attempts;
  r->crashes = crashes;
  push ((NatsStore *)store, OP_STATE, r, done, NULL, data);
}

static void
nats_remove (CrunchStore *store, const gchar *id)
{
  push ((NatsStore *)store, OP_REMOVE, id_record (id), NULL, NULL, NULL);
}

static void
nats_get (CrunchStore *store, const gchar *id, CrunchStoreGot got, gpointer data)
{
  push ((NatsStore *)store, OP_GET, id_record (id), NULL, got, data);
}

static void
nats_request_cancel (CrunchStore *store, const gchar *id, CrunchStoreDone done, gpointer data)
{
  push ((NatsStore *)store, OP_CANCEL, id_record (id), done, NULL, data);
}

/* Before load(): the store thread reads them. */
static void
nats_set_hooks (CrunchStore *store, const CrunchStoreHooks *hooks)
{
  ((NatsStore *)store)->hooks = *hooks;
}

static void
nats_set_ttl (CrunchStore *store, gint64 ttl_us)
{
  __atomic_store_n (&((NatsStore *)store)->ttl_us, ttl_us, __ATOMIC_RELAXED);
}

static guint64
nats_max_result_size (CrunchStore *store)
{
  return ((NatsStore *)store)->max_value;
}

static void
nats_barrier (CrunchStore *store)
{
  crunch_store_queue_barrier (&((NatsStore *)store)->queue);
}

static void
nats_render_metrics (CrunchStore *store, GString *out)
{
  NatsStore *self = (NatsStore *)store;

  g_string_append_printf (
      out,
      "# HELP crunchd_store_writes_total Job store writes (NATS key-value updates).\n"
      "# TYPE crunchd_store_writes_total counter\n"
      "crunchd_store_writes_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_errors_total Job store operations that failed.\n"
      "# TYPE crunchd_store_errors_total counter\n"
      "crunchd_store_errors_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_claims_total Jobs taken over from a front end whose lease lapsed.\n"
      "# TYPE crunchd_store_claims_total counter\n"
      "crunchd_store_claims_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_lost_total Jobs another front end took over from this one.\n"
      "# TYPE crunchd_store_lost_total counter\n"
      "crunchd_store_lost_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_pending Job store operations queued and not yet applied.\n"
      "# TYPE crunchd_store_pending gauge\n"
      "crunchd_store_pending %d\n",
      __atomic_load_n (&self->writes, __ATOMIC_RELAXED),
      __atomic_load_n (&self->errors, __ATOMIC_RELAXED),
      __atomic_load_n (&self->claims, __ATOMIC_RELAXED),
      __atomic_load_n (&self->lost, __ATOMIC_RELAXED), g_atomic_int_get (&self->queue.pending));
}

static void
close_nats (NatsStore *self)
{
  if (self->kv != NULL)
    kvStore_Destroy (self->kv);
  if (self->js != NULL)
    jsCtx_Destroy (self->js);
  if (self->nc != NULL) {
    natsConnection_Close (self->nc);
    natsConnection_Destroy (self->nc);
  }
}

/* Jobs still ours are left in the bucket with their leases: another front end (or this one,
 * restarted) takes them over when the leases lapse. */
static void
nats_free (CrunchStore *store)
{
  NatsStore *self = (NatsStore *)store;

  if (self->thread != NULL) {
    push (self, OP_STOP, NULL, NULL, NULL, NULL);
    g_thread_join (self->thread);
  }
  crunch_store_queue_clear (&self->queue);
  g_hash_table_unref (self->own);
  close_nats (self);
  g_free (self->bucket);
  g_free (self->owner);
  g_free (self);
}

static const CrunchStoreClass nats_class = {
    .name = "nats",
    .load = nats_load,
    .put = nats_put,
    .set_state = nats_set_state,
    .remove = nats_remove,
    .barrier = nats_barrier,
    .get = nats_get,
    .request_cancel = nats_request_cancel,
    .set_hooks = nats_set_hooks,
    .set_ttl = nats_set_ttl,
    .max_result_size = nats_max_result_size,
    .render_metrics = nats_render_metrics,
    .free = nats_free,
};

/* The bucket, made if it does not exist yet. */
static natsStatus
open_bucket (NatsStore *self)
{
  kvConfig config;
  natsStatus s = js_KeyValue (&self->kv, self->js, self->bucket);

  if (s != NATS_NOT_FOUND)
    return s;
  kvConfig_Init (&config);
  config.Bucket = self->bucket;
  config.Description = "crunchd asynchronous jobs";
  config.History = 1;
  return js_CreateKeyValue (&self->kv, self->js, &config);
}

CrunchStore *
crunch_store_nats_open (const CrunchNatsStoreSettings *settings, GError **error)
{
  NatsStore *self = g_new0 (NatsStore, 1);
  guint8 bytes[8];
  gboolean connected = FALSE;
  natsStatus s;

  self->parent.klass = &nats_class;
  self->bucket = g_strdup (settings->bucket);
  if (getrandom (bytes, sizeof bytes, 0) != sizeof bytes)
    g_error ("getrandom failed");
  self->owner =
      g_strdup_printf ("%s-%02x%02x%02x%02x%02x%02x%02x%02x", g_get_host_name (), bytes[0],
                       bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]);
  self->lease_us = (gint64)(settings->lease * G_USEC_PER_SEC);
  self->ttl_us = (gint64)(settings->ttl * G_USEC_PER_SEC);
  self->own = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, own_free);
  crunch_store_queue_init (&self->queue);
  self->nc = crunch_nats_connect (settings->config, "crunchd job store", FALSE,
                                  &(CrunchNatsHandlers){0}, &connected, error);
  if (self->nc != NULL && !connected) {
    set_error (error, self, NATS_NO_SERVER, "no NATS server answers ([nats] servers)");
  } else if (self->nc != NULL) {
    jsOptions options;
    jsOptions_Init (&options);
    /* a request that hangs must not outlast the lease it is renewing */
    options.Wait = MAX (self->lease_us / 4000, 100);
    s = natsConnection_JetStream (&self->js, self->nc, &options);
    if (s == NATS_OK)
      s = open_bucket (self);
    if (s == NATS_OK) {
      self->max_value = (guint64)MAX (natsConnection_GetMaxPayload (self->nc) - HEADER_ROOM, 0);
      return &self->parent;
    }
    set_error (error, self, s, "opening the key-value bucket (is JetStream on? nats-server -js)");
  }
  self->thread = NULL;
  nats_free (&self->parent);
  return NULL;
}
