/* test-store.c - the SQLite job store (sqlite.c) on a file of its own, against another
 * connection that holds the write lock longer than a write waits for it (2 s): an accepted job's
 * failed write is held and tried again, a later write of the same job never overtakes it, and the
 * stop makes a last try. */
#include "sqlite.h"

#include <glib/gstdio.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  gchar *dir;
  gchar *path;
  CrunchStore *store;
  sqlite3 *other; /* another program's connection to the same file */
} Fixture;

static void
fixture_set_up (Fixture *f, gconstpointer data)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) jobs = NULL;
  gboolean clean_stop;

  f->dir = g_dir_make_tmp ("crunchd-store-XXXXXX", &error);
  g_assert_no_error (error);
  f->path = g_build_filename (f->dir, "jobs.db", NULL);
  f->store = crunch_store_sqlite_open (&(CrunchSqliteSettings){.path = f->path}, &error);
  g_assert_no_error (error);
  jobs = crunch_store_load (f->store, &clean_stop, &error); /* starts the store thread */
  g_assert_no_error (error);
  g_assert_cmpuint (jobs->len, ==, 0);
  g_assert_cmpint (sqlite3_open (f->path, &f->other), ==, SQLITE_OK);
  sqlite3_busy_timeout (f->other, 10000); /* waits for a write the store is making */
}

static void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  g_clear_pointer (&f->store, crunch_store_free);
  sqlite3_close (f->other);
  for (const gchar *const *suffix = (const gchar *const[]){"", "-wal", "-shm", NULL}; *suffix;
       suffix++) {
    g_autofree gchar *file = g_strconcat (f->path, *suffix, NULL);
    g_remove (file);
  }
  g_assert_cmpint (g_rmdir (f->dir), ==, 0);
  g_free (f->path);
  g_free (f->dir);
}

#define ID "0123456789abcdef0123456789abcdef"

static void
put_job (Fixture *f, const gchar *id, CrunchStoredState state)
{
  CrunchStoredJob record = {
      .id = (gchar *)id,
      .fn = "length",
      .args = g_variant_new ("(s)", "abc"),
      .client = "127.0.0.1",
      .created = g_get_real_time (),
      .state = state,
      .attempts = 1,
      .outcome = state == CRUNCH_STORED_FINISHED ? "done" : NULL,
      .result = state == CRUNCH_STORED_FINISHED ? g_bytes_new_static ("3", 1) : NULL,
      .queued_us = -1,
      .run_us = -1,
  };

  g_variant_ref_sink (record.args);
  crunch_store_put (f->store, &record, NULL, NULL); /* copies it */
  g_variant_unref (record.args);
  g_clear_pointer (&record.result, g_bytes_unref);
}

static void
put (Fixture *f, CrunchStoredState state)
{
  put_job (f, ID, state);
}

static void
other_exec (Fixture *f, const gchar *sql)
{
  g_assert_cmpint (sqlite3_exec (f->other, sql, NULL, NULL, NULL), ==, SQLITE_OK);
}

/* A job's state on disk as the other connection reads it, with its counters; -1: no row. */
static gint
stored_row (Fixture *f, const gchar *id, gint *attempts, gint *crashes)
{
  sqlite3_stmt *stmt;
  gint state = -1;

  g_assert_cmpint (sqlite3_prepare_v2 (f->other,
                                       "SELECT state, attempts, crashes FROM jobs WHERE id = ?1",
                                       -1, &stmt, NULL),
                   ==, SQLITE_OK);
  sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
  if (sqlite3_step (stmt) == SQLITE_ROW) {
    state = sqlite3_column_int (stmt, 0);
    if (attempts != NULL)
      *attempts = sqlite3_column_int (stmt, 1);
    if (crashes != NULL)
      *crashes = sqlite3_column_int (stmt, 2);
  }
  sqlite3_finalize (stmt);
  return state;
}

static gint
stored_state (Fixture *f)
{
  return stored_row (f, ID, NULL, NULL);
}

static gint
metric (Fixture *f, const gchar *name)
{
  g_autoptr (GString) out = g_string_new ("\n");
  g_autofree gchar *needle = g_strconcat ("\n", name, " ", NULL);
  const gchar *at;

  crunch_store_render_metrics (f->store, out);
  at = strstr (out->str, needle);
  g_assert_nonnull (at);
  return atoi (at + strlen (needle));
}

/* Warnings that say the job database was locked (the store's thread logs them). */
static gint locked_warnings;

static void
on_warning (const gchar *domain, GLogLevelFlags level, const gchar *message, gpointer data)
{
  g_test_message ("%s", message);
  if (g_str_has_suffix (message, "jobs.db: database is locked"))
    g_atomic_int_inc (&locked_warnings);
}

/* Takes the write lock on the other connection, then gives the store a write that will wait
 * for it in vain (2 s) and be held. */
static void
finish_while_locked (Fixture *f)
{
  other_exec (f, "BEGIN IMMEDIATE");
  g_atomic_int_set (&locked_warnings, 0);
  put (f, CRUNCH_STORED_FINISHED);
}

/* Polls crunchd_store_held until it is `n` (10 s at most). */
static void
wait_held (Fixture *f, gint n)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  while (metric (f, "crunchd_store_held") != n) {
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (10000);
  }
}

/* The job finishes while the file is locked: its write is held, then lands once the lock is free,
 * tried again within a second. */
static void
test_held_then_written (Fixture *f, gconstpointer data)
{
  put (f, CRUNCH_STORED_RUNNING);
  crunch_store_barrier (f->store);
  g_assert_cmpint (stored_state (f), ==, CRUNCH_STORED_RUNNING);
  finish_while_locked (f);
  wait_held (f, 1);
  g_assert_cmpint (g_atomic_int_get (&locked_warnings), ==, 1);
  g_assert_cmpint (metric (f, "crunchd_store_errors_total"), ==, 1);
  other_exec (f, "COMMIT");
  wait_held (f, 0);
  g_assert_cmpint (stored_state (f), ==, CRUNCH_STORED_FINISHED);
}

/* The job is removed after its write was held, before the retry: the removal takes the held
 * write's place, so the row does not come back when the retry runs. */
static void
test_removal_not_overtaken (Fixture *f, gconstpointer data)
{
  put (f, CRUNCH_STORED_RUNNING);
  crunch_store_barrier (f->store);
  finish_while_locked (f);
  wait_held (f, 1);
  g_assert_cmpint (g_atomic_int_get (&locked_warnings), ==, 1);
  /* removed before the lock is freed: a retry (every second) cannot come between the two */
  crunch_store_remove (f->store, ID);
  crunch_store_barrier (f->store);
  g_assert_cmpint (metric (f, "crunchd_store_held"), ==, 1); /* merged, not written before it */
  other_exec (f, "COMMIT");
  wait_held (f, 0);
  g_assert_cmpint (stored_state (f), ==, -1);
}

typedef struct {
  gint called;
  gboolean failed;
} Answer;

static void
on_done (const GError *error, gpointer data)
{
  Answer *answer = data;

  answer->failed = error != NULL;
  g_atomic_int_set (&answer->called, 1);
}

/* A new job's first write (POST /jobs waits for its answer). */
static void
put_new (Fixture *f, Answer *answer)
{
  CrunchStoredJob record = {.id = "ffffffffffffffffffffffffffffffff",
                            .fn = "length",
                            .args = g_variant_ref_sink (g_variant_new ("(s)", "abc")),
                            .state = CRUNCH_STORED_QUEUED};

  crunch_store_put (f->store, &record, on_done, answer);
  g_variant_unref (record.args);
}

/* Writes queued while one waits for the lock form the next batch, which fails after one wait (the
 * file is locked for all of them), not one wait each. While they are held, a new job's write
 * still gets its answer after about the 2 s a write waits: a retry of held writes waits for the
 * lock only briefly. */
static void
test_locked_batch (Fixture *f, gconstpointer data)
{
  Answer answer = {0};
  gint64 t0 = g_get_monotonic_time ();
  gdouble took;

  finish_while_locked (f);
  g_usleep (500000); /* the store thread waits for the lock with the first write */
  for (guint i = 1; i <= 8; i++) {
    g_autofree gchar *id = g_strdup_printf ("%032x", i);
    put_job (f, id, CRUNCH_STORED_FINISHED);
  }
  wait_held (f, 9);
  took = (g_get_monotonic_time () - t0) / 1e6;
  g_test_message ("9 writes held after %.2f s", took);
  g_assert_cmpfloat (took, <, 5.5); /* two waits of 2 s; a wait each would be 18 s */
  g_assert_cmpint (g_atomic_int_get (&locked_warnings), >=, 1); /* at most one a second */
  t0 = g_get_monotonic_time ();
  put_new (f, &answer);
  while (!g_atomic_int_get (&answer.called)) {
    g_assert_cmpfloat ((g_get_monotonic_time () - t0) / 1e6, <, 10);
    g_usleep (10000);
  }
  took = (g_get_monotonic_time () - t0) / 1e6;
  g_test_message ("a new job's write failed after %.2f s", took);
  g_assert_true (answer.failed);
  g_assert_cmpfloat (took, <, 2.8);
  other_exec (f, "COMMIT");
  wait_held (f, 0);
}

/* What is held for a job is its newest state: a state change updates a held record, a removal
 * replaces it and a state change after a removal is dropped, so the retry writes where each job
 * ended. */
static void
test_merges (Fixture *f, gconstpointer data)
{
  const gchar *removed = "00000000000000000000000000000001";
  gint attempts = 0, crashes = 0;

  other_exec (f, "BEGIN IMMEDIATE");
  put_job (f, ID, CRUNCH_STORED_QUEUED);
  put_job (f, removed, CRUNCH_STORED_FINISHED);
  wait_held (f, 2);
  crunch_store_set_state (f->store, ID, CRUNCH_STORED_RUNNING, 2, 1, NULL, NULL);
  crunch_store_remove (f->store, removed);
  crunch_store_set_state (f->store, removed, CRUNCH_STORED_RUNNING, 3, 0, NULL, NULL);
  crunch_store_barrier (f->store);
  g_assert_cmpint (metric (f, "crunchd_store_held"), ==, 2);
  other_exec (f, "COMMIT");
  wait_held (f, 0);
  g_assert_cmpint (stored_row (f, ID, &attempts, &crashes), ==, CRUNCH_STORED_RUNNING);
  g_assert_cmpint (attempts, ==, 2);
  g_assert_cmpint (crashes, ==, 1);
  g_assert_cmpint (stored_row (f, removed, NULL, NULL), ==, -1);
}

/* A write queued behind a held one of its job still counts in queue order: a barrier returns
 * only once every write before it has its answer, here a new job's that waits for the lock. */
static void
test_barrier_in_order (Fixture *f, gconstpointer data)
{
  Answer answer = {0};

  finish_while_locked (f);
  wait_held (f, 1);
  put_new (f, &answer);
  crunch_store_set_state (f->store, ID, CRUNCH_STORED_FINISHED, 2, 0, NULL, NULL);
  crunch_store_barrier (f->store);
  g_assert_cmpint (g_atomic_int_get (&answer.called), ==, 1);
  g_assert_true (answer.failed);
  other_exec (f, "COMMIT");
}

static gpointer
commit_later (gpointer data)
{
  Fixture *f = data;

  g_usleep (500000);
  other_exec (f, "COMMIT");
  return NULL;
}

/* More writes held than two transactions take (512 each), and the lock is freed while the store
 * stops: its last try writes them all. */
static void
test_many_at_stop (Fixture *f, gconstpointer data)
{
  sqlite3_stmt *stmt;
  GThread *thread;

  finish_while_locked (f);
  for (guint i = 1; i < 1100; i++) {
    g_autofree gchar *id = g_strdup_printf ("%032x", i);
    put_job (f, id, CRUNCH_STORED_FINISHED);
  }
  wait_held (f, 1100);
  thread = g_thread_new ("commit", commit_later, f);
  g_clear_pointer (&f->store, crunch_store_free); /* its last try waits for the lock */
  g_thread_join (thread);
  g_assert_cmpint (sqlite3_prepare_v2 (f->other, "SELECT count(*) FROM jobs", -1, &stmt, NULL), ==,
                   SQLITE_OK);
  g_assert_cmpint (sqlite3_step (stmt), ==, SQLITE_ROW);
  g_assert_cmpint (sqlite3_column_int (stmt, 0), ==, 1100);
  sqlite3_finalize (stmt);
}

/* The stop tries the held writes once more. */
static void
test_written_at_stop (Fixture *f, gconstpointer data)
{
  put (f, CRUNCH_STORED_RUNNING);
  crunch_store_barrier (f->store); /* else the store may hold the lock when the other takes it */
  finish_while_locked (f);
  wait_held (f, 1);
  g_assert_cmpint (g_atomic_int_get (&locked_warnings), ==, 1);
  other_exec (f, "COMMIT");
  g_clear_pointer (&f->store, crunch_store_free);
  g_assert_cmpint (stored_state (f), ==, CRUNCH_STORED_FINISHED);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* the store warns of every failed write: expected here, and counted */
  g_log_set_always_fatal (G_LOG_FATAL_MASK | G_LOG_LEVEL_CRITICAL);
  g_log_set_handler ("crunchd", G_LOG_LEVEL_WARNING, on_warning, NULL);
#define ADD(path, fn) g_test_add (path, Fixture, NULL, fixture_set_up, fn, fixture_tear_down)
  ADD ("/store/held-then-written", test_held_then_written);
  ADD ("/store/removal-not-overtaken", test_removal_not_overtaken);
  ADD ("/store/locked-batch", test_locked_batch);
  ADD ("/store/merges", test_merges);
  ADD ("/store/barrier-in-order", test_barrier_in_order);
  ADD ("/store/written-at-stop", test_written_at_stop);
  ADD ("/store/many-at-stop", test_many_at_stop);
  return g_test_run ();
}
