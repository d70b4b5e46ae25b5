/* sqlite.c - the SQLite job store (see sqlite.h and store.h).
 *
 * DESIGN
 * One connection, opened and checked on the main thread (open() and load()), then owned by the
 * store thread alone. Any thread queues writes (put, set_state, remove) on an async queue; the
 * store thread takes everything queued (up to BATCH_MAX), applies it in one transaction, commits,
 * and only then runs the writes' `done` callbacks, outside every lock: group commit, so a burst of
 * POST /jobs costs one commit, not one each. A batch that fails is retried one write per
 * transaction, so one write that does not fit (SQLITE_FULL) fails alone (not when the file is
 * locked: then they all would). A failed write without `done` belongs to a job already accepted:
 * it is held (one per job, the newest state), tried again every RETRY_US (waiting for a lock only
 * briefly) and at stop, and the job's later writes join it, so the file never goes back in time.
 * Callbacks and barrier() still count every write in queue order. free() queues a stop after
 * everything else and joins the thread: every write made before it is applied or held.
 * Durability: WAL with synchronous = NORMAL by default: a commit is in the WAL file when it
 * returns, so it survives crunchd being killed at any moment; on power loss or a kernel crash the
 * last transactions may roll back. FULL also fsyncs every commit (one per batch). The file is
 * flock()ed: a second crunchd on it is refused at start instead of running the same jobs twice,
 * while readers (sqlite3 .backup) may still open it. */
#include "sqlite.h"

#include <errno.h>
#include <fcntl.h>
#include <glib/gstdio.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#define BATCH_MAX 512
#define SCHEMA_VERSION 1
/* How long a write waits for another program's lock on the file (an operator's sqlite3 shell,
 * a backup) before it fails. */
#define BUSY_TIMEOUT_MS 2000
/* How often held writes (accepted jobs' writes that failed) are tried again, and how long such a
 * try waits for a lock: new writes queue behind it. */
#define RETRY_US (1 * G_USEC_PER_SEC)
#define RETRY_BUSY_TIMEOUT_MS 100

typedef enum { OP_PUT, OP_STATE, OP_REMOVE, OP_STOP } OpKind;

typedef struct {
  OpKind kind;
  guint64 seq;
  CrunchStoredJob *record; /* PUT; STATE and REMOVE use its id (and state, counters) */
  CrunchStoreDone done;
  gpointer data;
} Op;

typedef struct {
  CrunchStore parent;
  gchar *path;
  gchar *marker;   /* path.running: exists while a crunchd runs on it (see take_clean_stop()) */
  gboolean marked; /* this process created it */
  gint lock_fd;    /* flock()ed: this process owns the file */
  sqlite3 *db;
  sqlite3_stmt *put, *state, *remove;
  CrunchStoreQueue queue; /* Op* */
  GThread *thread;
  /* store thread only: job id -> the held Op (see hold()), and when to try them again */
  GHashTable *held;
  gint64 next_retry;
  /* figures, atomic */
  guint64 writes, transactions, errors;
  gint held_count;     /* g_hash_table_size (held) */
  gint64 last_warning; /* monotonic, store thread only */
} SqliteStore;

static const gchar schema[] =
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id TEXT PRIMARY KEY NOT NULL, fn TEXT NOT NULL, args_type TEXT NOT NULL,"
    " args BLOB NOT NULL, client TEXT NOT NULL, idempotency_key TEXT, body_hash TEXT,"
    " created INTEGER NOT NULL, state INTEGER NOT NULL, attempts INTEGER NOT NULL,"
    " crashes INTEGER NOT NULL, outcome TEXT, error TEXT, result BLOB, finished INTEGER,"
    " queued_us INTEGER, run_us INTEGER, coalesced INTEGER) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID;"
    "INSERT OR IGNORE INTO meta VALUES ('clean_stop', 1)";

#define COLUMNS                                                                                    \
  "id, fn, args_type, args, client, idempotency_key, body_hash, created, state, attempts, "        \
  "crashes, outcome, error, result, finished, queued_us, run_us, coalesced"

/* ---- opening ---- */

static gboolean
fail (GError **error, SqliteStore *self, const gchar *what)
{
  g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "job database %s: %s: %s", self->path,
               what, self->db ? sqlite3_errmsg (self->db) : "cannot allocate");
  return FALSE;
}

static gboolean
exec (SqliteStore *self, const gchar *sql, GError **error)
{
  if (sqlite3_exec (self->db, sql, NULL, NULL, NULL) != SQLITE_OK)
    return fail (error, self, sql);
  return TRUE;
}

/* The first column of the first row of `sql` as text, or NULL (error set). */
static gchar *
query_text (SqliteStore *self, const gchar *sql, GError **error)
{
  sqlite3_stmt *stmt = NULL;
  gchar *text = NULL;

  if (sqlite3_prepare_v2 (self->db, sql, -1, &stmt, NULL) != SQLITE_OK) {
    fail (error, self, sql);
    return NULL;
  }
  if (sqlite3_step (stmt) == SQLITE_ROW)
    text = g_strdup ((const gchar *)sqlite3_column_text (stmt, 0));
  else
    fail (error, self, sql);
  sqlite3_finalize (stmt);
  if (text == NULL && error != NULL && *error == NULL)
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "job database %s: %s: no answer",
                 self->path, sql);
  return text;
}

/* One crunchd per file: an advisory lock on it, held until close (flock, which SQLite's own
 * POSIX locks do not see), so that readers such as an online backup can still open it. */
static gboolean
lock_file (SqliteStore *self, GError **error)
{
  self->lock_fd = open (self->path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (self->lock_fd < 0) {
    g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (errno),
                 "job database %s: cannot open it: %s", self->path, g_strerror (errno));
    return FALSE;
  }
  if (flock (self->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                 "job database %s is in use by another process (another crunchd?)", self->path);
    return FALSE;
  }
  return TRUE;
}

/* Write-ahead logging and the durability level. */
static gboolean
set_journal (SqliteStore *self, const CrunchSqliteSettings *settings, GError **error)
{
  g_autofree gchar *mode = query_text (self, "PRAGMA journal_mode = WAL", error);

  if (mode == NULL)
    return FALSE;
  if (g_ascii_strcasecmp (mode, "wal") != 0) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                 "job database %s: cannot use write-ahead logging (journal mode %s)", self->path,
                 mode);
    return FALSE;
  }
  return exec (self,
               settings->synchronous_full ? "PRAGMA synchronous = FULL"
                                          : "PRAGMA synchronous = NORMAL",
               error);
}

/* quick_check, then the schema: a file that is damaged or someone else's is refused. */
static gboolean
check_file (SqliteStore *self, GError **error)
{
  g_autofree gchar *check = query_text (self, "PRAGMA quick_check", error);
  g_autofree gchar *version = NULL;
  gint64 v;

  if (check == NULL)
    return FALSE;
  if (!g_str_equal (check, "ok")) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "job database %s is damaged: %s",
                 self->path, check);
    return FALSE;
  }
  if ((version = query_text (self, "PRAGMA user_version", error)) == NULL)
    return FALSE;
  v = g_ascii_strtoll (version, NULL, 10);
  if (v == 0) {
    g_autofree gchar *tables = query_text (self, "SELECT count(*) FROM sqlite_master", error);
    if (tables == NULL)
      return FALSE;
    if (!g_str_equal (tables, "0")) {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                   "%s is an SQLite database, but not a crunchd job database", self->path);
      return FALSE;
    }
    return exec (self, schema, error) && exec (self, "PRAGMA user_version = 1", error);
  }
  if (v != SCHEMA_VERSION) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                 "job database %s has schema version %" G_GINT64_FORMAT
                 " (this crunchd reads version %d)",
                 self->path, v, SCHEMA_VERSION);
    return FALSE;
  }
  return TRUE;
}

static gboolean
bound_size (SqliteStore *self, guint64 max_size, GError **error)
{
  g_autofree gchar *page = NULL;
  g_autofree gchar *sql = NULL;
  guint64 page_size;

  if (max_size == 0)
    return TRUE;
  if ((page = query_text (self, "PRAGMA page_size", error)) == NULL)
    return FALSE;
  page_size = MAX (g_ascii_strtoull (page, NULL, 10), 512);
  sql =
      g_strdup_printf ("PRAGMA max_page_count = %" G_GUINT64_FORMAT, MAX (max_size / page_size, 1));
  return exec (self, sql, error);
}

static gboolean
prepare (SqliteStore *self, GError **error)
{
  static const gchar put[] =
      "INSERT OR REPLACE INTO jobs (" COLUMNS ") VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
  static const gchar state[] = "UPDATE jobs SET state = ?2, attempts = ?3, crashes = ?4 "
                               "WHERE id = ?1";
  static const gchar remove[] = "DELETE FROM jobs WHERE id = ?1";

  if (sqlite3_prepare_v3 (self->db, put, -1, SQLITE_PREPARE_PERSISTENT, &self->put, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v3 (self->db, state, -1, SQLITE_PREPARE_PERSISTENT, &self->state, NULL) !=
          SQLITE_OK ||
      sqlite3_prepare_v3 (self->db, remove, -1, SQLITE_PREPARE_PERSISTENT, &self->remove, NULL) !=
          SQLITE_OK)
    return fail (error, self, "preparing statements");
  return TRUE;
}

static void
close_db (SqliteStore *self)
{
  sqlite3_finalize (self->put);
  sqlite3_finalize (self->state);
  sqlite3_finalize (self->remove);
  sqlite3_close (self->db);
  self->db = NULL;
  if (self->lock_fd >= 0) /* after SQLite's own descriptors: closing drops the lock */
    close (self->lock_fd);
  self->lock_fd = -1;
}

static const CrunchStoreClass sqlite_class;
static gpointer store_thread (gpointer data);

CrunchStore *
crunch_store_sqlite_open (const CrunchSqliteSettings *settings, GError **error)
{
  SqliteStore *self = g_new0 (SqliteStore, 1);
  gint flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  g_autofree gchar *dir = g_path_get_dirname (settings->path);

  self->parent.klass = &sqlite_class;
  self->path = g_strdup (settings->path);
  self->marker = g_strconcat (settings->path, ".running", NULL);
  self->lock_fd = -1;
  if (g_mkdir_with_parents (dir, 0750) != 0) {
    g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (errno),
                 "job database %s: cannot create its directory: %s", self->path,
                 g_strerror (errno));
  } else if (!lock_file (self, error)) {
    /* said */
  } else if (sqlite3_open_v2 (self->path, &self->db, flags, NULL) != SQLITE_OK) {
    fail (error, self, "cannot open it");
  } else if (sqlite3_busy_timeout (self->db, BUSY_TIMEOUT_MS) != SQLITE_OK) {
    fail (error, self, "cannot set its busy timeout");
  } else if (check_file (self, error) && set_journal (self, settings, error) &&
             bound_size (self, settings->max_size, error) && prepare (self, error)) {
    crunch_store_queue_init (&self->queue);
    return &self->parent;
  }
  close_db (self);
  g_free (self->path);
  g_free (self->marker);
  g_free (self);
  return NULL;
}

/* ---- loading (main thread, before the store thread starts) ---- */

static const gchar *
column_text (sqlite3_stmt *stmt, gint i)
{
  return (const gchar *)sqlite3_column_text (stmt, i);
}

static GBytes *
column_bytes (sqlite3_stmt *stmt, gint i)
{
  if (sqlite3_column_type (stmt, i) == SQLITE_NULL)
    return NULL;
  return g_bytes_new (sqlite3_column_blob (stmt, i), sqlite3_column_bytes (stmt, i));
}

/* The row's arguments, or NULL when they are not a well-formed value of their type. */
static GVariant *
column_args (sqlite3_stmt *stmt)
{
  g_autoptr (GBytes) bytes = column_bytes (stmt, 3);

  return crunch_store_args_from_bytes (column_text (stmt, 2), bytes);
}

static CrunchStoredJob *
read_row (sqlite3_stmt *stmt)
{
  g_autoptr (CrunchStoredJob) r = g_new0 (CrunchStoredJob, 1);

  r->id = g_strdup (column_text (stmt, 0));
  r->fn = g_strdup (column_text (stmt, 1));
  r->args = column_args (stmt);
  r->client = g_strdup (column_text (stmt, 4));
  r->idempotency_key = g_strdup (column_text (stmt, 5));
  r->body_hash = g_strdup (column_text (stmt, 6));
  r->created = sqlite3_column_int64 (stmt, 7);
  r->state = sqlite3_column_int (stmt, 8);
  r->attempts = sqlite3_column_int (stmt, 9);
  r->crashes = sqlite3_column_int (stmt, 10);
  r->outcome = g_strdup (column_text (stmt, 11));
  r->error = g_strdup (column_text (stmt, 12));
  r->result = column_bytes (stmt, 13);
  r->finished = sqlite3_column_int64 (stmt, 14);
  r->queued_us = sqlite3_column_int64 (stmt, 15);
  r->run_us = sqlite3_column_int64 (stmt, 16);
  r->coalesced = sqlite3_column_int (stmt, 17) != 0;
  /* ids go into Location headers and URLs: 32 lower-case hex digits or the row is damaged */
  if (!crunch_store_id_valid (r->id) || r->fn == NULL || r->args == NULL || r->client == NULL ||
      r->state > CRUNCH_STORED_FINISHED ||
      (r->state == CRUNCH_STORED_FINISHED && r->outcome == NULL))
    return NULL;
  return g_steal_pointer (&r);
}

/* Whether the last process stopped cleanly, and this one starts: the database says so, or, when
 * it could not be written at that stop (a full disk, another program's lock), the marker file
 * that process created at its start (meta 'marker' = 1) is gone, for removing it needs no space.
 * This process creates its own marker and writes both. */
static gboolean
take_clean_stop (SqliteStore *self, gboolean *clean_stop, GError **error)
{
  g_autofree gchar *value =
      query_text (self, "SELECT value FROM meta WHERE key = 'clean_stop'", error);
  g_autofree gchar *marked = NULL, *sql = NULL;
  gint fd;

  if (value == NULL)
    return FALSE;
  marked = query_text (self, "SELECT coalesce ((SELECT value FROM meta WHERE key = 'marker'), 0)",
                       error);
  if (marked == NULL)
    return FALSE;
  *clean_stop = g_str_equal (value, "1") ||
                (g_str_equal (marked, "1") && !g_file_test (self->marker, G_FILE_TEST_EXISTS));
  fd = open (self->marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0640);
  self->marked = fd >= 0;
  if (fd >= 0)
    close (fd);
  sql = g_strdup_printf ("INSERT OR REPLACE INTO meta VALUES ('clean_stop', 0), ('marker', %d)",
                         self->marked);
  return exec (self, sql, error);
}

static GPtrArray *
sqlite_load (CrunchStore *store, gboolean *clean_stop, GError **error)
{
  SqliteStore *self = (SqliteStore *)store;
  g_autoptr (GPtrArray) records =
      g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_stored_job_free);
  sqlite3_stmt *stmt = NULL;
  gint rc;

  if (sqlite3_prepare_v2 (self->db, "SELECT " COLUMNS " FROM jobs ORDER BY created", -1, &stmt,
                          NULL) != SQLITE_OK) {
    fail (error, self, "reading the jobs");
    return NULL;
  }
  while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
    CrunchStoredJob *record = read_row (stmt);
    if (record == NULL) {
      g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                   "job database %s is damaged: job %s cannot be read", self->path,
                   column_text (stmt, 0) ? column_text (stmt, 0) : "(no id)");
      sqlite3_finalize (stmt);
      return NULL;
    }
    g_ptr_array_add (records, record);
  }
  sqlite3_finalize (stmt);
  if (rc != SQLITE_DONE) {
    fail (error, self, "reading the jobs");
    return NULL;
  }
  if (!take_clean_stop (self, clean_stop, error))
    return NULL;
  self->thread = g_thread_new ("crunchd-store", store_thread, self);
  return g_steal_pointer (&records);
}

/* ---- writing (store thread) ---- */

static void
bind_text (sqlite3_stmt *stmt, gint i, const gchar *text)
{
  if (text != NULL)
    sqlite3_bind_text (stmt, i, text, -1, SQLITE_STATIC);
  else
    sqlite3_bind_null (stmt, i);
}

static void
bind_bytes (sqlite3_stmt *stmt, gint i, GBytes *bytes)
{
  gsize size;
  gconstpointer data;

  if (bytes == NULL) {
    sqlite3_bind_null (stmt, i);
    return;
  }
  data = g_bytes_get_data (bytes, &size);
  sqlite3_bind_blob64 (stmt, i, size ? data : "", size, SQLITE_STATIC);
}

static void
bind_record (sqlite3_stmt *stmt, const CrunchStoredJob *r)
{
  g_autoptr (GBytes) args = g_variant_get_data_as_bytes (r->args);

  bind_text (stmt, 1, r->id);
  bind_text (stmt, 2, r->fn);
  sqlite3_bind_text (stmt, 3, g_variant_get_type_string (r->args), -1, SQLITE_TRANSIENT);
  sqlite3_bind_blob64 (stmt, 4, g_bytes_get_size (args) ? g_bytes_get_data (args, NULL) : "",
                       g_bytes_get_size (args), SQLITE_TRANSIENT);
  bind_text (stmt, 5, r->client);
  bind_text (stmt, 6, r->idempotency_key);
  bind_text (stmt, 7, r->body_hash);
  sqlite3_bind_int64 (stmt, 8, r->created);
  sqlite3_bind_int (stmt, 9, r->state);
  sqlite3_bind_int (stmt, 10, r->attempts);
  sqlite3_bind_int (stmt, 11, r->crashes);
  bind_text (stmt, 12, r->outcome);
  bind_text (stmt, 13, r->error);
  bind_bytes (stmt, 14, r->result);
  sqlite3_bind_int64 (stmt, 15, r->finished);
  sqlite3_bind_int64 (stmt, 16, r->queued_us);
  sqlite3_bind_int64 (stmt, 17, r->run_us);
  sqlite3_bind_int (stmt, 18, r->coalesced);
}

static gboolean
apply (SqliteStore *self, Op *op)
{
  sqlite3_stmt *stmt = op->kind == OP_PUT     ? self->put
                       : op->kind == OP_STATE ? self->state
                                              : self->remove;
  gint rc;

  if (op->kind == OP_PUT) {
    bind_record (stmt, op->record);
  } else {
    bind_text (stmt, 1, op->record->id);
    if (op->kind == OP_STATE) {
      sqlite3_bind_int (stmt, 2, op->record->state);
      sqlite3_bind_int (stmt, 3, op->record->attempts);
      sqlite3_bind_int (stmt, 4, op->record->crashes);
    }
  }
  rc = sqlite3_step (stmt);
  sqlite3_reset (stmt);
  sqlite3_clear_bindings (stmt);
  return rc == SQLITE_DONE;
}

/* One transaction for `ops`: SQLITE_OK, or the failing call's code (and rolled back). */
static gint
transaction (SqliteStore *self, Op **ops, guint n, GError **error)
{
  gboolean ok = sqlite3_exec (self->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK;
  gint rc = SQLITE_OK;

  for (guint i = 0; ok && i < n; i++)
    ok = apply (self, ops[i]);
  if (ok)
    ok = sqlite3_exec (self->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK;
  if (!ok) {
    rc = sqlite3_errcode (self->db);
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "job database %s: %s", self->path,
                 sqlite3_errmsg (self->db));
    if (!sqlite3_get_autocommit (self->db))
      sqlite3_exec (self->db, "ROLLBACK", NULL, NULL, NULL);
  }
  __atomic_add_fetch (&self->transactions, 1, __ATOMIC_RELAXED);
  return ok ? SQLITE_OK : (rc != SQLITE_OK ? rc : SQLITE_ERROR);
}

/* The whole file is unavailable (another program's lock): every write would fail alike. */
static gboolean
locked_out (gint rc)
{
  return (rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED;
}

/* At most one line a second: a full disk fails every write. */
static void
warn (SqliteStore *self, const GError *error)
{
  if (g_get_monotonic_time () - self->last_warning >= G_USEC_PER_SEC) {
    self->last_warning = g_get_monotonic_time ();
    g_warning ("%s", error->message);
  }
}

static void
op_free (Op *op)
{
  crunch_stored_job_free (op->record);
  g_free (op);
}

/* Keeps an accepted job's write that failed (taken), merged with what is held for the job
 * already: the newest write wins, except that a state change updates a held record and is
 * dropped after a held removal. */
static void
hold (SqliteStore *self, Op *op)
{
  Op *old = g_hash_table_lookup (self->held, op->record->id);

  if (old != NULL && op->kind == OP_STATE && old->kind != OP_STATE) {
    if (old->kind == OP_PUT) {
      old->record->state = op->record->state;
      old->record->attempts = op->record->attempts;
      old->record->crashes = op->record->crashes;
    }
    op_free (op);
    return;
  }
  if (g_hash_table_size (self->held) == 0)
    self->next_retry = g_get_monotonic_time () + RETRY_US;
  g_hash_table_replace (self->held, op->record->id, op); /* frees `old` */
  g_atomic_int_set (&self->held_count, (gint)g_hash_table_size (self->held));
}

/* A later write of a job whose earlier one is held must go behind it, never before it. */
static gboolean
is_behind (SqliteStore *self, Op *op)
{
  return op->done == NULL && g_hash_table_size (self->held) > 0 &&
         g_hash_table_contains (self->held, op->record->id);
}

static void
finish_op (SqliteStore *self, Op *op, const GError *error)
{
  if (error != NULL) {
    __atomic_add_fetch (&self->errors, 1, __ATOMIC_RELAXED);
    warn (self, error);
  }
  __atomic_add_fetch (&self->writes, 1, __ATOMIC_RELAXED);
  if (op->done != NULL)
    op->done (error, op->data);
  crunch_store_queue_done (&self->queue, op->seq); /* after the callback: see barrier() */
  if (error != NULL && op->done == NULL)
    hold (self, op); /* no one to tell: an accepted job's, so it is tried again */
  else
    op_free (op);
}

/* Merged into the job's held write, in its place in the queue (barrier() counts in order). */
static void
finish_behind (SqliteStore *self, Op *op)
{
  __atomic_add_fetch (&self->writes, 1, __ATOMIC_RELAXED);
  crunch_store_queue_done (&self->queue, op->seq);
  hold (self, op);
}

/* Applies a batch (in queue order): together, or (if that fails, and not on a lock) one by one
 * until a lock; then the callbacks, in order. Writes of held jobs join their held write. */
static void
write_batch (SqliteStore *self, Op **ops, guint n)
{
  g_autoptr (GError) error = NULL;
  Op *todo[BATCH_MAX];
  gboolean behind[BATCH_MAX];
  guint m = 0;
  gint rc = SQLITE_OK;

  for (guint i = 0; i < n; i++)
    if (!(behind[i] = is_behind (self, ops[i])))
      todo[m++] = ops[i];
  if (m > 0)
    rc = transaction (self, todo, m, &error);
  if (rc == SQLITE_OK || m == 1 || locked_out (rc)) {
    for (guint i = 0; i < n; i++) {
      if (behind[i])
        finish_behind (self, ops[i]);
      else
        finish_op (self, ops[i], rc == SQLITE_OK ? NULL : error);
    }
    return;
  }
  for (guint i = 0; i < n; i++) {
    if (behind[i] || is_behind (self, ops[i])) { /* held before, or just now */
      finish_behind (self, ops[i]);
      continue;
    }
    if (!locked_out (rc)) {
      g_clear_error (&error);
      rc = transaction (self, &ops[i], 1, &error);
    }
    finish_op (self, ops[i], rc == SQLITE_OK ? NULL : error);
  }
}

/* Tries the held writes again (at most BATCH_MAX of them): together, or (if that fails, and not
 * on a lock) one by one until a lock. TRUE if some landed. */
static gboolean
retry_held (SqliteStore *self)
{
  g_autoptr (GError) error = NULL;
  Op *batch[BATCH_MAX];
  GHashTableIter iter;
  gpointer value;
  guint n = 0, before = g_hash_table_size (self->held);
  gint rc;

  g_hash_table_iter_init (&iter, self->held);
  while (n < BATCH_MAX && g_hash_table_iter_next (&iter, NULL, &value))
    batch[n++] = value;
  if (n == 0)
    return FALSE;
  rc = transaction (self, batch, n, &error);
  for (guint i = 0; rc == SQLITE_OK && i < n; i++)
    g_hash_table_remove (self->held, batch[i]->record->id);
  for (guint i = 0; rc != SQLITE_OK && n > 1 && !locked_out (rc) && i < n; i++) {
    gint one = transaction (self, &batch[i], 1, NULL);
    if (one == SQLITE_OK)
      g_hash_table_remove (self->held, batch[i]->record->id);
    else if (locked_out (one))
      break;
  }
  g_atomic_int_set (&self->held_count, (gint)g_hash_table_size (self->held));
  if (g_hash_table_size (self->held) == 0)
    g_message ("job database %s: writable again; the jobs' held writes are on disk", self->path);
  else if (error != NULL)
    warn (self, error);
  /* from the end of this try: a retry that waited for a lock must not follow at once */
  self->next_retry = g_get_monotonic_time () + RETRY_US;
  return g_hash_table_size (self->held) < before;
}

/* Tries every held write, BATCH_MAX at a time while they land, waiting `busy_ms` for a lock:
 * briefly while serving (writes of new jobs queue behind it), the full wait at the stop. */
static void
retry_all_held (SqliteStore *self, gint busy_ms)
{
  sqlite3_busy_timeout (self->db, busy_ms);
  while (retry_held (self) && g_hash_table_size (self->held) > 0)
    ;
  sqlite3_busy_timeout (self->db, BUSY_TIMEOUT_MS);
}

/* The next write, waiting no longer than the next retry of held writes (NULL: its time). */
static Op *
next_op (SqliteStore *self)
{
  gint64 wait;

  if (g_hash_table_size (self->held) == 0)
    return g_async_queue_pop (self->queue.queue);
  wait = self->next_retry - g_get_monotonic_time ();
  return wait > 0 ? g_async_queue_timeout_pop (self->queue.queue, (guint64)wait)
                  : g_async_queue_try_pop (self->queue.queue);
}

static gpointer
store_thread (gpointer data)
{
  SqliteStore *self = data;
  Op *batch[BATCH_MAX];
  gboolean stop = FALSE;

  self->held = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, (GDestroyNotify)op_free);
  while (!stop) {
    guint n = 0;
    Op *op = next_op (self);
    while (op != NULL) {
      if (op->kind == OP_STOP) {
        stop = TRUE;
        crunch_store_queue_done (&self->queue, op->seq);
        g_free (op);
        break;
      }
      batch[n++] = op;
      op = n < BATCH_MAX ? g_async_queue_try_pop (self->queue.queue) : NULL;
    }
    if (n > 0)
      write_batch (self, batch, n);
    if (g_hash_table_size (self->held) > 0 && g_get_monotonic_time () >= self->next_retry)
      retry_all_held (self, RETRY_BUSY_TIMEOUT_MS);
  }
  /* writes the last batch's callbacks made after the stop was queued */
  for (Op *op; (op = g_async_queue_try_pop (self->queue.queue)) != NULL;)
    write_batch (self, &op, 1);
  retry_all_held (self, BUSY_TIMEOUT_MS); /* a last try */
  if (g_hash_table_size (self->held) > 0)
    g_warning ("job database %s: the latest writes of %u jobs could not be made before the stop: "
               "after a restart they show an older state (a finished job may run again, a "
               "deleted one come back)",
               self->path, g_hash_table_size (self->held));
  return NULL;
}

static void
push (SqliteStore *self, OpKind kind, CrunchStoredJob *record, CrunchStoreDone done, gpointer data)
{
  Op *op = g_new0 (Op, 1);

  op->kind = kind;
  op->record = record;
  op->done = done;
  op->data = data;
  crunch_store_queue_push (&self->queue, op, &op->seq);
}

static void
sqlite_barrier (CrunchStore *store)
{
  crunch_store_queue_barrier (&((SqliteStore *)store)->queue);
}

static void
sqlite_put (CrunchStore *store, const CrunchStoredJob *record, CrunchStoreDone done, gpointer data)
{
  push ((SqliteStore *)store, OP_PUT, crunch_stored_job_copy (record), done, data);
}

static void
sqlite_set_state (CrunchStore *store, const gchar *id, CrunchStoredState state, guint attempts,
                  guint crashes, CrunchStoreDone done, gpointer data)
{
  CrunchStoredJob *r = g_new0 (CrunchStoredJob, 1);

  r->id = g_strdup (id);
  r->state = state;
  r->attempts = attempts;
  r->crashes = crashes;
  push ((SqliteStore *)store, OP_STATE, r, done, data);
}

static void
sqlite_remove (CrunchStore *store, const gchar *id)
{
  CrunchStoredJob *r = g_new0 (CrunchStoredJob, 1);

  r->id = g_strdup (id);
  push ((SqliteStore *)store, OP_REMOVE, r, NULL, NULL);
}

static void
sqlite_render_metrics (CrunchStore *store, GString *out)
{
  SqliteStore *self = (SqliteStore *)store;

  g_string_append_printf (
      out,
      "# HELP crunchd_store_writes_total Job store writes applied (or failed).\n"
      "# TYPE crunchd_store_writes_total counter\n"
      "crunchd_store_writes_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_transactions_total Job store transactions (one per batch of "
      "writes).\n"
      "# TYPE crunchd_store_transactions_total counter\n"
      "crunchd_store_transactions_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_errors_total Job store writes that failed (full disk, I/O error).\n"
      "# TYPE crunchd_store_errors_total counter\n"
      "crunchd_store_errors_total %" G_GUINT64_FORMAT "\n"
      "# HELP crunchd_store_pending Job store writes queued and not yet applied.\n"
      "# TYPE crunchd_store_pending gauge\n"
      "crunchd_store_pending %d\n"
      "# HELP crunchd_store_held Jobs whose latest write failed and is tried again every "
      "second.\n"
      "# TYPE crunchd_store_held gauge\n"
      "crunchd_store_held %d\n",
      __atomic_load_n (&self->writes, __ATOMIC_RELAXED),
      __atomic_load_n (&self->transactions, __ATOMIC_RELAXED),
      __atomic_load_n (&self->errors, __ATOMIC_RELAXED), g_atomic_int_get (&self->queue.pending),
      g_atomic_int_get (&self->held_count));
}

static void
sqlite_free (CrunchStore *store)
{
  SqliteStore *self = (SqliteStore *)store;
  g_autoptr (GError) error = NULL;

  if (self->thread != NULL) {
    push (self, OP_STOP, NULL, NULL, NULL);
    g_thread_join (self->thread);
    if (self->marked)
      g_unlink (self->marker);
    if (!exec (self, "UPDATE meta SET value = 1 WHERE key = 'clean_stop'", &error) && self->marked)
      g_warning ("%s (the removed %s says the stop was clean)", error->message, self->marker);
    else if (error != NULL)
      g_warning ("%s: the next start takes this stop for a crash", error->message);
  }
  crunch_store_queue_clear (&self->queue);
  g_clear_pointer (&self->held, g_hash_table_unref);
  close_db (self);
  g_free (self->path);
  g_free (self->marker);
  g_free (self);
}

static const CrunchStoreClass sqlite_class = {
    .name = "sqlite",
    .load = sqlite_load,
    .put = sqlite_put,
    .set_state = sqlite_set_state,
    .remove = sqlite_remove,
    .barrier = sqlite_barrier,
    .render_metrics = sqlite_render_metrics,
    .free = sqlite_free,
};
