/* store.h - where asynchronous jobs are kept so that they outlive the process: the narrow
 * interface jobs.c writes through. The in-memory table in jobs.c is the live view and serves
 * every read; a store is the durable copy it is rebuilt from at start-up. `[jobs] store =
 * memory` has no store at all (jobs.c is given NULL).
 *
 * Writes are asynchronous and ordered: each is queued and applied by the store's own thread in
 * the order it was made, many to one transaction. `done`, when given, runs on that thread after
 * the transaction that holds the write committed (error NULL) or failed; it may call anything
 * but the store's blocking functions. */
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
} CrunchStoredJob;

void crunch_stored_job_free (CrunchStoredJob *record);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchStoredJob, crunch_stored_job_free)

typedef struct CrunchStore CrunchStore;
typedef void (*CrunchStoreDone) (const GError *error, gpointer data);

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
