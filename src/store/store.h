/* store.h - where asynchronous jobs are kept so that they outlive the process: the narrow
 * interface jobs.c writes through. The in-memory table in jobs.c is the live view and serves
 * every read; a store is the durable copy it is rebuilt from at start-up. `[jobs] store =
 * memory` has no store at all (jobs.c is given NULL).
 *
 * Writes are asynchronous and ordered: each is queued and applied by the store's own thread in
 * the order it was made, many to one transaction. `done`, when given, runs on that thread after
 * the transaction that holds the write committed (error NULL) or failed; it may call anything
 * but the store's blocking functions. A write without `done` (the later writes of an accepted
 * job) that fails is held by the SQLite store and tried again every second and at the stop. */
#pragma once

#include <glib.h>

typedef enum {
  CRUNCH_STORED_QUEUED,   /* accepted, waiting (or interrupted by a clean stop) */
  CRUNCH_STORED_RUNNING,  /* its computation started */
  CRUNCH_STORED_FINISHED, /* terminal: outcome (and result or error) are set */
} CrunchStoredState;

/* One job as stored. Strings and bytes are owned by the record. */
typedef struct {
  gchar *id;
  gchar *fn;      /* function name */
  GVariant *args; /* canonical arguments */
  gchar *client;
  gchar *idempotency_key; /* NULL: none */
  gchar *body_hash;       /* SHA-256 of the POST body, with idempotency_key */
  gint64 created;         /* wall clock, microseconds */
  CrunchStoredState state;
  guint attempts; /* how many times its computation started */
  guint crashes;  /* start-ups that found it running: the server died under it */
  /* when FINISHED */
  gchar *outcome; /* crunch_job_outcome_name(), or "cached" */
  gchar *error;
  GBytes *result;
  gint64 finished;          /* wall clock, microseconds */
  gint64 queued_us, run_us; /* -1: it never ran */
  gboolean coalesced;
  /* shared stores (nats.c) only */
  gchar *owner;              /* the front end that runs it */
  gint64 lease_until;        /* wall clock, microseconds: the owner renews it while it lives */
  gboolean cancel_requested; /* another front end asked for it to stop */
} CrunchStoredJob;

CrunchStoredJob *crunch_stored_job_copy (const CrunchStoredJob *record);
/* Stored arguments back: NULL unless `type` is a definite tuple type and `bytes` a value of it
 * in normal form (the file or message may be damaged or hostile). */
GVariant *crunch_store_args_from_bytes (const gchar *type, GBytes *bytes);
/* A job id as crunchd makes them: 32 lower-case hex digits. */
gboolean crunch_store_id_valid (const gchar *id);
void crunch_stored_job_free (CrunchStoredJob *record);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchStoredJob, crunch_stored_job_free)

typedef struct CrunchStore CrunchStore;
typedef void (*CrunchStoreDone) (const GError *error, gpointer data);
/* A job read from a shared store: `record` is the callee's (NULL: there is no such job). */
typedef void (*CrunchStoreGot) (CrunchStoredJob *record, const GError *error, gpointer data);

/* What a shared store tells the jobs API, on its thread. */
typedef struct {
  /* This front end now owns the job (its owner stopped renewing its lease): run it. Takes it. */
  void (*claimed) (CrunchStoredJob *record, gpointer data);
  /* Another front end asked for a job this one runs to be cancelled. */
  void (*cancel) (const gchar *id, gpointer data);
  /* Another front end took over a job this one was running (its lease lapsed): drop it. */
  void (*lost) (const gchar *id, gpointer data);
  gpointer data;
} CrunchStoreHooks;

typedef struct {
  const gchar *name;
  /* Every stored job (CrunchStoredJob*), and whether the last process stopped cleanly (free());
   * on the calling thread, once, before the first write. */
  GPtrArray *(*load) (CrunchStore *self, gboolean *clean_stop, GError **error);
  /* Inserts or replaces the whole record (copied). */
  void (*put) (CrunchStore *self, const CrunchStoredJob *record, CrunchStoreDone done,
               gpointer data);
  /* Sets the state and counters of a stored job. */
  void (*set_state) (CrunchStore *self, const gchar *id, CrunchStoredState state, guint attempts,
                     guint crashes, CrunchStoreDone done, gpointer data);
  void (*remove) (CrunchStore *self, const gchar *id);
  /* Blocks until every write queued before it has been applied (or has failed). */
  void (*barrier) (CrunchStore *self);
  /* Shared stores only (several front ends), NULL for the others. Reads the job, wherever it
   * runs; `got` on the store thread. */
  void (*get) (CrunchStore *self, const gchar *id, CrunchStoreGot got, gpointer data);
  /* Marks the job cancelled for its owner, wherever it runs. */
  void (*request_cancel) (CrunchStore *self, const gchar *id, CrunchStoreDone done, gpointer data);
  void (*set_hooks) (CrunchStore *self, const CrunchStoreHooks *hooks);
  /* Shared stores only: how long a finished job is kept ([jobs] ttl, at a reload); any thread. */
  void (*set_ttl) (CrunchStore *self, gint64 ttl_us);
  /* The largest result the store can keep, in bytes (0: no bound of its own). */
  guint64 (*max_result_size) (CrunchStore *self);
  /* Prometheus families (crunchd_store_*), from any thread. */
  void (*render_metrics) (CrunchStore *self, GString *out);
  /* Applies every queued write, records a clean stop, then closes (blocks). */
  void (*free) (CrunchStore *self);
} CrunchStoreClass;

struct CrunchStore {
  const CrunchStoreClass *klass;
};

static inline GPtrArray *
crunch_store_load (CrunchStore *self, gboolean *clean_stop, GError **error)
{
  return self->klass->load (self, clean_stop, error);
}

static inline void
crunch_store_barrier (CrunchStore *self)
{
  self->klass->barrier (self);
}

static inline void
crunch_store_put (CrunchStore *self, const CrunchStoredJob *record, CrunchStoreDone done,
                  gpointer data)
{
  self->klass->put (self, record, done, data);
}

static inline void
crunch_store_set_state (CrunchStore *self, const gchar *id, CrunchStoredState state, guint attempts,
                        guint crashes, CrunchStoreDone done, gpointer data)
{
  self->klass->set_state (self, id, state, attempts, crashes, done, data);
}

static inline void
crunch_store_remove (CrunchStore *self, const gchar *id)
{
  self->klass->remove (self, id);
}

static inline gboolean
crunch_store_shared (CrunchStore *self)
{
  return self != NULL && self->klass->get != NULL;
}

static inline void
crunch_store_set_ttl (CrunchStore *self, gint64 ttl_us)
{
  if (self != NULL && self->klass->set_ttl != NULL)
    self->klass->set_ttl (self, ttl_us);
}

static inline void
crunch_store_render_metrics (CrunchStore *self, GString *out)
{
  self->klass->render_metrics (self, out);
}

static inline void
crunch_store_free (CrunchStore *self)
{
  if (self != NULL)
    self->klass->free (self);
}

/* The ordered queue of a store's operations, as both stores use it: any thread pushes (each
 * item numbered in order), the store's thread pops and marks each done after its callback;
 * barrier() waits for everything pushed before it. */
typedef struct {
  GAsyncQueue *queue;
  GMutex lock;
  GCond cond;
  guint64 pushed, done;
  gint pending; /* pushed, not yet done (atomic) */
} CrunchStoreQueue;

void crunch_store_queue_init (CrunchStoreQueue *q);
void crunch_store_queue_clear (CrunchStoreQueue *q);
/* Numbers `item` (*seq, a member of it) and queues it, under one lock: in order. */
void crunch_store_queue_push (CrunchStoreQueue *q, gpointer item, guint64 *seq);
void crunch_store_queue_done (CrunchStoreQueue *q, guint64 seq);
void crunch_store_queue_barrier (CrunchStoreQueue *q);
