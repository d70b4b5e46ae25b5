/* test-batch-procs.c - batches in worker processes: a Python function declared with batch=N
 * (tests/python/batch.py) and a C batch function hosted by crunchd-worker --stdio
 * (tests/plugins/cbatch.so).
 *
 * /batch-procs/direct/... drive the batch path without the scheduler: the registry and the
 * process pools are set up as crunchd does at start-up, then crunch_function_run_batch() runs
 * groups of calls on real worker processes, as a worker thread of the local executor does with a
 * batch job, and a worker that breaks the protocol in its batch replies is killed. They hold in
 * any tree.
 * /batch-procs/http/... run the real binary and send requests at once: the scheduler groups the
 * queued calls into batch jobs, which go to one worker process each. */
#include <string.h>

#include "config.h"
#include "functions.h"
#include "harness.h"
#include "procpool.h"

/* ---- direct: crunch_function_run_batch() through the pools ---- */

typedef struct {
  gint reports;
  gdouble last;
} Progress;

static void
record_progress (gpointer data, gdouble fraction, const gchar *message)
{
  Progress *p = data;

  g_atomic_int_inc (&p->reports);
  p->last = fraction;
}

typedef struct {
  gchar *dir;
  CrunchConfig *config;
  CrunchProcPool *workers; /* crunchd-worker --stdio, for cbatch */
} Registry;

/* What crunchd does at start-up under [executor] backend = processes: C plugins registered (and
 * then hosted by crunchd-worker --stdio children), program plugins started. */
static void
registry_open (Registry *r)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *python = g_build_filename (g_getenv ("CRUNCHD_TEST_PYTHON"), "batch.py", NULL);
  g_autofree gchar *hostile =
      g_build_filename (g_getenv ("CRUNCHD_TEST_PYTHON"), "badbatch.py", NULL);
  g_autofree gchar *ini = NULL;
  g_autofree gchar *path = NULL;
  const gchar *argv[] = {g_getenv ("CRUNCHD_WORKER"), "--stdio", "--config", NULL, NULL};
  CrunchProcPoolSettings settings;

  g_assert_nonnull (argv[0]); /* set by make check */
  r->dir = g_dir_make_tmp ("crunchd-batch-XXXXXX", &error);
  g_assert_no_error (error);
  path = g_build_filename (r->dir, "crunchd.ini", NULL);
  ini = g_strdup_printf ("[executor]\nbackend = processes\nthreads = 2\nkill_grace = 1\n"
                         "retries = 0\n[plugins]\ndir = %s\nload = cbatch, %s, %s\n",
                         g_getenv ("CRUNCHD_TEST_PLUGINS"), python, hostile);
  g_assert_true (g_file_set_contents (path, ini, -1, &error));
  r->config = crunch_config_load (path, &error);
  g_assert_no_error (error);
  g_assert_true (crunch_functions_init (r->config, &error));
  g_assert_no_error (error);
  argv[3] = path;
  crunch_procpool_settings_from_config (r->config, "crunchd-worker", (gchar **)argv, &settings);
  r->workers = crunch_procpool_new (&settings);
  g_assert_true (crunch_procpool_host_functions (r->workers, &error));
  g_assert_no_error (error);
}

static void
registry_close (Registry *r)
{
  crunch_functions_reset ();
  crunch_procpools_free_all (); /* the worker pool too */
  crunch_config_free (r->config);
  test_remove_dir (r->dir);
  g_free (r->dir);
}

typedef struct {
  const CrunchFunction *fn;
  guint n;
  GVariant **args;
  CrunchCancel *cancels;
  const CrunchCancel **pointers;
  CrunchCancel all;
  Progress *progress;
  GBytes **results;
  GError **errors;
} Batch;

static Batch *
batch_new (const gchar *function, const gint64 *xs, guint n)
{
  Batch *b = g_new0 (Batch, 1);

  b->fn = crunch_functions_lookup (function);
  g_assert_nonnull (b->fn);
  b->n = n;
  b->args = g_new0 (GVariant *, n);
  b->cancels = g_new0 (CrunchCancel, n);
  b->pointers = g_new0 (const CrunchCancel *, n);
  b->progress = g_new0 (Progress, n);
  b->results = g_new0 (GBytes *, n);
  b->errors = g_new0 (GError *, n);
  for (guint i = 0; i < n; i++) {
    b->args[i] = g_variant_ref_sink (g_variant_new_parsed ("(%x,)", xs[i]));
    b->cancels[i].progress = record_progress;
    b->cancels[i].progress_data = &b->progress[i];
    b->pointers[i] = &b->cancels[i];
  }
  return b;
}

static void
batch_run (Batch *b)
{
  crunch_function_run_batch (b->fn, b->n, b->args, b->pointers, &b->all, b->results, b->errors);
  for (guint i = 0; i < b->n; i++)
    g_assert_true ((b->results[i] == NULL) != (b->errors[i] == NULL));
}

static void
batch_free (Batch *b)
{
  for (guint i = 0; i < b->n; i++) {
    g_variant_unref (b->args[i]);
    g_clear_pointer (&b->results[i], g_bytes_unref);
    g_clear_error (&b->errors[i]);
  }
  g_free (b->args);
  g_free (b->cancels);
  g_free (b->pointers);
  g_free (b->progress);
  g_free (b->results);
  g_free (b->errors);
  g_free (b);
}

static void
expect_result (Batch *b, guint i, const gchar *text)
{
  g_assert_no_error (b->errors[i]);
  g_assert_cmpmem (g_bytes_get_data (b->results[i], NULL), g_bytes_get_size (b->results[i]), text,
                   strlen (text));
}

static void
expect_error (Batch *b, guint i, gint code, const gchar *message)
{
  g_assert_null (b->results[i]);
  g_assert_error (b->errors[i], CRUNCH_FUNCTION_ERROR, code);
  if (message != NULL && !g_str_has_prefix (b->errors[i]->message, message))
    g_error ("call %u: '%s' does not start with '%s'", i, b->errors[i]->message, message);
}

/* Both functions run their batches through the pools' batch hook. */
static void
test_direct_hooks (void)
{
  Registry r;

  registry_open (&r);
  g_assert_true (crunch_functions_lookup ("pybatch")->run_batch == crunch_procpool_call_batch);
  g_assert_cmpuint (crunch_functions_lookup ("pybatch")->max_batch, ==, 16);
  g_assert_cmpint (crunch_functions_lookup ("pybatch")->max_delay_us, ==, 50000);
  g_assert_true (crunch_functions_lookup ("bsum")->run_batch == crunch_procpool_call_batch);
  g_assert_cmpuint (crunch_functions_lookup ("bsum")->max_batch, ==, 8);
  g_assert_null (crunch_functions_lookup ("fib")->run_batch); /* no batches: none */
  registry_close (&r);
}

/* One batch frame on one process: every call sees the batch's size; one bad call fails alone;
 * progress reaches every call. */
static void
test_direct_batch (gconstpointer data)
{
  const gchar *function = data;
  gboolean python = g_str_equal (function, "pybatch");
  static const gint64 xs[] = {1, 13, -7, 1};
  Registry r;
  Batch *b;

  registry_open (&r);
  b = batch_new (function, xs, 4);
  batch_run (b);
  expect_result (b, 0, "1:4");
  expect_error (b, 1, CRUNCH_FUNCTION_ERROR_FAILED,
                python ? "pybatch: ValueError: unlucky 13" : "bsum: unlucky 13");
  expect_result (b, 2, "-7:4");
  expect_result (b, 3, "1:4"); /* not pure: both calls ran */
  for (guint i = 0; i < 4; i++)
    g_assert_cmpint (g_atomic_int_get (&b->progress[i].reports), >=, 1);
  batch_free (b);
  registry_close (&r);
}

/* A batch that crashes its process is run again one call at a time on fresh processes: only the
 * call that crashes fails (502); the next batch gets a fresh process too. */
static void
test_direct_crash (gconstpointer data)
{
  const gchar *function = data;
  g_autofree gchar *crashed = g_strdup_printf ("%s crashed (", function);
  static const gint64 xs[] = {1, 14, 2};
  static const gint64 after[] = {3, 4};
  Registry r;
  Batch *b, *next;

  registry_open (&r);
  b = batch_new (function, xs, 3);
  batch_run (b);
  expect_result (b, 0, "1:1"); /* alone, after the crash */
  expect_error (b, 1, CRUNCH_FUNCTION_ERROR_CRASHED, crashed);
  expect_result (b, 2, "2:1");
  next = batch_new (function, after, 2);
  batch_run (next);
  expect_result (next, 0, "3:2");
  expect_result (next, 1, "4:2");
  batch_free (b);
  batch_free (next);
  registry_close (&r);
}

static gpointer
run_thread (gpointer data)
{
  batch_run (data);
  return NULL;
}

/* Every call of a running batch cancelled: the worker is told, and the batch ends soon. */
static void
test_direct_cancel (gconstpointer data)
{
  const gchar *function = data;
  static const gint64 xs[] = {15, 1};
  Registry r;
  Batch *b;
  GThread *thread;
  gint64 start;

  registry_open (&r);
  b = batch_new (function, xs, 2);
  thread = g_thread_new ("batch", run_thread, b);
  g_usleep (300000);
  start = g_get_monotonic_time ();
  for (guint i = 0; i < 2; i++)
    g_atomic_int_set (&b->cancels[i].flag, 1);
  g_atomic_int_set (&b->all.flag, 1);
  g_thread_join (thread);
  g_test_message ("cancelled after %" G_GINT64_FORMAT " us", g_get_monotonic_time () - start);
  g_assert_cmpint (g_get_monotonic_time () - start, <, 2 * TEST_TIME_SCALE * G_USEC_PER_SEC);
  for (guint i = 0; i < 2; i++)
    expect_error (b, i, CRUNCH_FUNCTION_ERROR_CANCELLED, NULL);
  batch_free (b);
  registry_close (&r);
}

/* A worker that breaks the protocol in a batch reply is killed, every call of the batch fails
 * (502, "protocol error: ..."), and the next batch gets a fresh process. */
static void
test_direct_hostile (void)
{
  static const struct {
    gint64 mode;
    const gchar *message;
  } cases[] = {
      {1, "pbad: protocol error: 2 results for a batch of 3 calls"},
      {2, "pbad: protocol error: result 2: bytes 2+2 outside the payload of 3"},
      {3, "pbad: protocol error: progress \"item\" 3 is not in 0 .. 2 of the batch"},
      {4, "pbad: protocol error: unexpected \"result\" (a batch runs)"},
      {5, "pbad: protocol error: a \"batch-result\" for call"},
  };
  Registry r;

  registry_open (&r);
  g_assert_true (crunch_functions_lookup ("pbad")->run_batch == crunch_procpool_call_batch);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const gint64 xs[] = {cases[c].mode, 7, 8};
    static const gint64 good[] = {0, 1, 2};
    Batch *b = batch_new ("pbad", xs, 3);
    Batch *next = batch_new ("pbad", good, 3);
    batch_run (b);
    for (guint i = 0; i < 3; i++)
      expect_error (b, i, CRUNCH_FUNCTION_ERROR_PROTOCOL, cases[c].message);
    batch_run (next);
    expect_result (next, 0, "0");
    expect_result (next, 2, "2");
    batch_free (b);
    batch_free (next);
  }
  registry_close (&r);
}

/* ---- http: the real binary (grouping needs the scheduler) ---- */

static TestServer *
start (void)
{
  g_autofree gchar *ini = g_strdup_printf (
      "[executor]\nthreads = 1\nretries = 0\n[plugins]\ndir = %s\nload = batch.py\n",
      g_getenv ("CRUNCHD_TEST_PYTHON"));

  return test_server_start (ini, NULL);
}

/* Sends GET /fn/pybatch?x=X for each of xs at once, after a call that keeps the one process
 * busy for 400 ms (so that they all wait in the queue together); their replies, in order. */
static TestReply **
call_all_at_once (TestServer *server, const gint64 *xs, guint n)
{
  TestReply **replies = g_new0 (TestReply *, n);
  TestCall **calls = g_new0 (TestCall *, n);
  TestCall *blocker = test_call_start (test_server_url (server, "/fn/pybatch?x=400"));
  g_autoptr (TestReply) blocked = NULL;

  g_usleep (100000);
  for (guint i = 0; i < n; i++) {
    g_autofree gchar *path = g_strdup_printf ("/fn/pybatch?x=%" G_GINT64_FORMAT, xs[i]);
    calls[i] = test_call_start (test_server_url (server, path));
  }
  for (guint i = 0; i < n; i++) {
    replies[i] = test_call_finish (calls[i]);
    g_test_message ("x=%" G_GINT64_FORMAT " -> %ld %s", xs[i], replies[i]->status,
                    replies[i]->body);
  }
  blocked = test_call_finish (blocker);
  g_assert_cmpint (blocked->status, ==, 200);
  g_free (calls);
  return replies;
}

/* The batch size a reply reports ("x:n"), checking that x is the caller's own. */
static guint
batch_size (TestReply *r, gint64 x)
{
  g_autofree gchar *prefix = g_strdup_printf ("%" G_GINT64_FORMAT ":", x);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_true (g_str_has_prefix (r->body, prefix)); /* the result landed with its caller */
  return (guint)g_ascii_strtoull (r->body + strlen (prefix), NULL, 10);
}

static void
free_replies (TestReply **replies, guint n)
{
  for (guint i = 0; i < n; i++)
    test_reply_free (replies[i]);
  g_free (replies);
}

/* 16 calls queued together run in batches: larger than one, and a call arriving
 * alone runs alone. */
static void
test_http_grouping (void)
{
  g_autoptr (TestServer) server = start ();
  gint64 xs[16];
  TestReply **replies;
  guint largest = 0;

  for (guint i = 0; i < 16; i++)
    xs[i] = i + 20;
  replies = call_all_at_once (server, xs, 16);
  for (guint i = 0; i < 16; i++)
    largest = MAX (largest, batch_size (replies[i], xs[i]));
  g_test_message ("largest batch: %u", largest);
  free_replies (replies, 16);
  {
    g_autofree gchar *url = test_server_url (server, "/fn/pybatch?x=7");
    g_autoptr (TestReply) alone = test_http ("GET", url, NULL);
    g_assert_cmpuint (batch_size (alone, 7), ==, 1);
  }
  g_assert_cmpuint (largest, >, 1);
}

/* One bad call among 16 fails alone (500), the others are answered (200), in batches. */
static void
test_http_bad_call (void)
{
  g_autoptr (TestServer) server = start ();
  gint64 xs[16];
  TestReply **replies;
  guint largest = 0;

  for (guint i = 0; i < 16; i++)
    xs[i] = i == 5 ? 13 : i + 20;
  replies = call_all_at_once (server, xs, 16);
  for (guint i = 0; i < 16; i++) {
    if (xs[i] == 13) {
      g_assert_cmpint (replies[i]->status, ==, 500);
      g_assert_nonnull (strstr (replies[i]->body, "pybatch: ValueError: unlucky 13"));
    } else {
      largest = MAX (largest, batch_size (replies[i], xs[i]));
    }
  }
  free_replies (replies, 16);
  g_assert_cmpuint (largest, >, 1);
}

/* The 15 calls queued together form one batch, and one of them crashes its process: the batch
 * runs again one call at a time, so that call alone gets 502. The next call gets a fresh
 * process. */
static void
test_http_crash (void)
{
  g_autoptr (TestServer) server = start ();
  gint64 xs[15];
  TestReply **replies;
  guint failed = 0;

  for (guint i = 0; i < 15; i++)
    xs[i] = i == 7 ? 14 : i + 20;
  replies = call_all_at_once (server, xs, 15);
  for (guint i = 0; i < 15; i++) {
    g_assert_true (replies[i]->status == 200 || replies[i]->status == 502);
    if (replies[i]->status == 502) {
      g_assert_true (g_str_has_prefix (replies[i]->body, "pybatch crashed ("));
      failed++;
    }
    if (xs[i] == 14)
      g_assert_cmpint (replies[i]->status, ==, 502);
  }
  free_replies (replies, 15);
  {
    g_autofree gchar *url = test_server_url (server, "/fn/pybatch?x=3");
    g_autoptr (TestReply) after = test_http ("GET", url, NULL);
    g_assert_cmpuint (batch_size (after, 3), ==, 1);
  }
  g_test_message ("%u calls failed with the crash", failed);
  g_assert_cmpuint (failed, ==, 1);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* a crash of a worker process is logged as a warning: expected here */
  g_log_set_always_fatal (G_LOG_LEVEL_ERROR | G_LOG_LEVEL_CRITICAL);
  if (g_getenv ("CRUNCHD_PYTHONDIR") != NULL)
    g_setenv ("PYTHONPATH", g_getenv ("CRUNCHD_PYTHONDIR"), TRUE);
  g_test_add_func ("/batch-procs/direct/hooks", test_direct_hooks);
  g_test_add_data_func ("/batch-procs/direct/python", "pybatch", test_direct_batch);
  g_test_add_data_func ("/batch-procs/direct/c", "bsum", test_direct_batch);
  g_test_add_data_func ("/batch-procs/direct/python-crash", "pybatch", test_direct_crash);
  g_test_add_data_func ("/batch-procs/direct/c-crash", "bsum", test_direct_crash);
  g_test_add_data_func ("/batch-procs/direct/python-cancel", "pybatch", test_direct_cancel);
  g_test_add_data_func ("/batch-procs/direct/c-cancel", "bsum", test_direct_cancel);
  g_test_add_func ("/batch-procs/direct/hostile", test_direct_hostile);
  g_test_add_func ("/batch-procs/http/grouping", test_http_grouping);
  g_test_add_func ("/batch-procs/http/bad-call", test_http_bad_call);
  g_test_add_func ("/batch-procs/http/crash", test_http_crash);
  return g_test_run ();
}
