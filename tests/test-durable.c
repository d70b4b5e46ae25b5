/* test-durable.c - async jobs that survive restarts ([jobs] store = sqlite), against the real
 * crunchd: kill -9 and SIGTERM with 200 jobs in flight, a poison job, idempotent retries, a full
 * database, a damaged or foreign one, a second crunchd on the same file, and
 * [jobs] max_result_size. */
#include <json-glib/json-glib.h>
#include <signal.h>
#include <string.h>

#include "harness.h"

typedef struct {
  gchar *dir; /* holds jobs.db: outlives each server */
  gchar *db;
} Fixture;

static void
fixture_set_up (Fixture *f, gconstpointer data)
{
  f->dir = g_dir_make_tmp ("crunchd-durable-XXXXXX", NULL);
  g_assert_nonnull (f->dir);
  f->db = g_build_filename (f->dir, "jobs.db", NULL);
}

static void
fixture_tear_down (Fixture *f, gconstpointer data)
{
  test_remove_dir (f->dir);
  g_free (f->db);
  g_free (f->dir);
}

static gchar *
ini_for (Fixture *f, const gchar *extra)
{
  return g_strdup_printf ("[executor]\nthreads = 2\nqueue_limit = 400\nper_client_limit = 400\n"
                          "coalesce = false\n[cache]\nentries = 0\n"
                          "[plugins]\ndir = %s\nload = spin, %s/hostile.so\n"
                          "[jobs]\nstore = sqlite\ndatabase = %s\nmax_stored_per_client = 0\n"
                          "[log]\naccess = off\n%s",
                          g_getenv ("CRUNCHD_PLUGINS"), g_getenv ("CRUNCHD_TEST_PLUGINS"), f->db,
                          extra);
}

static TestServer *
start (Fixture *f, const gchar *extra)
{
  g_autofree gchar *ini = ini_for (f, extra);
  return test_server_start (ini, NULL);
}

static TestReply *
call (TestServer *s, const gchar *method, const gchar *path, const gchar *const *headers,
      const gchar *body)
{
  g_autofree gchar *url = test_server_url (s, path);
  return test_http_body (method, url, headers, body);
}

static JsonObject *
parse (const TestReply *r)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  json_parser_load_from_data (parser, r->body, (gssize)r->body_len, &error);
  g_assert_no_error (error);
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

static gchar *
submit (TestServer *s, const gchar *body, const gchar *const *headers)
{
  g_autoptr (TestReply) r = call (s, "POST", "/jobs", headers, body);

  g_assert_cmpint (r->status, ==, 202);
  g_assert_nonnull (g_hash_table_lookup (r->headers, "location"));
  return g_strdup (g_hash_table_lookup (r->headers, "location"));
}

static JsonObject *
describe (TestServer *s, const gchar *location)
{
  g_autoptr (TestReply) r = call (s, "GET", location, NULL, NULL);

  g_assert_cmpint (r->status, ==, 200);
  return parse (r);
}

/* Polls until the job runs (bounded). */
static void
wait_running (TestServer *s, const gchar *location)
{
  gint64 until = g_get_monotonic_time () + (gint64)(20 * TEST_TIME_SCALE * G_USEC_PER_SEC);

  for (;;) {
    g_autoptr (JsonObject) d = describe (s, location);
    if (g_str_equal (json_object_get_string_member (d, "state"), "running"))
      return;
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (10000);
  }
}

/* Polls the database itself (python3's sqlite3, read-only) until the outcome of the job at
 * `location` (/jobs/ID) is on disk (only a finished row has one), 10 s x TEST_TIME_SCALE at
 * most. */
static void
wait_stored (Fixture *f, const gchar *location)
{
  const gchar *id = strrchr (location, '/') + 1;
  g_autofree gchar *limit = g_strdup_printf ("%g", 10 * TEST_TIME_SCALE);
  g_autoptr (GError) error = NULL;
  g_autoptr (GSubprocess) p = g_subprocess_new (
      G_SUBPROCESS_FLAGS_NONE, &error, "python3", "-c",
      "import sqlite3, sys, time\n"
      "end = time.monotonic() + float(sys.argv[3])\n"
      "while time.monotonic() < end:\n"
      "    c = sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True)\n"
      "    row = c.execute('SELECT outcome FROM jobs WHERE id = ?', (sys.argv[2],)).fetchone()\n"
      "    c.close()\n"
      "    if row and row[0] is not None: sys.exit(0)\n"
      "    time.sleep(0.02)\n"
      "sys.exit('not stored: ' + sys.argv[2])\n",
      f->db, id, limit, NULL);

  g_assert_no_error (error);
  g_assert_true (g_subprocess_wait_check (p, NULL, NULL));
}

/* Polls until every job has left queued/running; returns how many ended in each state. */
static GHashTable *
wait_all_finished (TestServer *s, GPtrArray *jobs, gdouble seconds)
{
  GHashTable *states = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  gint64 until = g_get_monotonic_time () + (gint64)(seconds * TEST_TIME_SCALE * G_USEC_PER_SEC);

  for (guint i = 0; i < jobs->len; i++) {
    for (;;) {
      g_autoptr (JsonObject) o = describe (s, jobs->pdata[i]);
      const gchar *state = json_object_get_string_member (o, "state");
      if (!g_str_equal (state, "queued") && !g_str_equal (state, "running")) {
        guint n = GPOINTER_TO_UINT (g_hash_table_lookup (states, state));
        g_hash_table_insert (states, g_strdup (state), GUINT_TO_POINTER (n + 1));
        break;
      }
      g_assert_cmpint (g_get_monotonic_time (), <, until);
      g_usleep (20000);
    }
  }
  return states;
}

static guint
count_of (GHashTable *states, const gchar *state)
{
  return GPOINTER_TO_UINT (g_hash_table_lookup (states, state));
}

/* 200 jobs of about 10 ms on 2 threads: most are queued, two running, some done. */
/* n spin jobs of `seconds` each. */
static GPtrArray *
submit_spins (TestServer *s, guint n, gdouble seconds)
{
  GPtrArray *jobs = g_ptr_array_new_with_free_func (g_free);
  gchar text[G_ASCII_DTOSTR_BUF_SIZE];
  g_autofree gchar *body =
      g_strdup_printf ("{\"fn\": \"spin\", \"args\": {\"seconds\": %s, \"grain\": 5}}",
                       g_ascii_dtostr (text, sizeof text, seconds));

  for (guint i = 0; i < n; i++)
    g_ptr_array_add (jobs, submit (s, body, NULL));
  return jobs;
}

static GPtrArray *
submit_many (TestServer *s, guint n)
{
  return submit_spins (s, n, 0.01);
}

/* Every job got its 202 before the kill; after the restart each reaches "done", and its
 * result is readable. Jobs that were running count a crash; the others do not. */
static void
check_all_done (TestServer *s, GPtrArray *jobs)
{
  g_autoptr (GHashTable) states = wait_all_finished (s, jobs, 60);
  guint crashed = 0, rerun = 0;

  g_assert_cmpuint (count_of (states, "done"), ==, jobs->len);
  for (guint i = 0; i < jobs->len; i++) {
    g_autoptr (JsonObject) o = describe (s, jobs->pdata[i]);
    g_autofree gchar *result = g_strconcat (jobs->pdata[i], "/result", NULL);
    g_autoptr (TestReply) r = call (s, "GET", result, NULL, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpint (json_object_get_int_member (o, "attempts"), >=, 1);
    crashed += json_object_has_member (o, "crashes");
    rerun += json_object_get_int_member (o, "attempts") > 1;
  }
  g_test_message ("%u jobs: %u were running at the crash, %u ran more than once", jobs->len,
                  crashed, rerun);
  g_assert_cmpuint (crashed, <=, 2 * 2); /* at most the running ones (2 threads) */
}

/* The restarted server's log says it found unfinished jobs. */
static void
assert_some_to_run_again (const gchar *log)
{
  const gchar *at = strstr (log, " finished kept, ");
  guint64 n;

  g_assert_nonnull (at);
  n = g_ascii_strtoull (at + strlen (" finished kept, "), NULL, 10);
  g_test_message ("%" G_GUINT64_FORMAT " jobs to run again", n);
  g_assert_cmpuint (n, >=, 1);
}

static void
test_kill9 (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "");
  g_autoptr (GPtrArray) jobs = submit_many (s, 200);
  g_autofree gchar *log = NULL;

  test_server_signal (s, SIGKILL);
  test_server_stop (s);
  s = start (f, "");
  log = test_server_log (s);
  g_assert_nonnull (strstr (log, "the last stop was not clean"));
  assert_some_to_run_again (log); /* the kill interrupted work: the test tests something */
  check_all_done (s, jobs);
  test_server_stop (s);
}

/* SIGTERM while jobs recovered after a crash run: they are interrupted, not done, and the log
 * does not say they are done (it did). */
static void
test_sigterm_while_recovering (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "");
  g_autoptr (GPtrArray) jobs = submit_spins (s, 2, 60);
  g_autofree gchar *log = NULL;

  wait_running (s, jobs->pdata[0]);
  test_server_signal (s, SIGKILL);
  test_server_stop (s);
  s = start (f, "[server]\nshutdown_timeout = 0.2\n");
  wait_running (s, jobs->pdata[0]);
  g_assert_cmpint (test_server_stop_with_log (s, &log), ==, 0);
  g_assert_nonnull (strstr (log, "one job at a time until the recovered jobs are done"));
  g_assert_null (strstr (log, "the recovered jobs are done;"));
}

static void
test_sigterm (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[server]\nshutdown_timeout = 0.05\n");
  /* 5 s of work on 2 threads: however slowly the 200 are accepted, some are left to interrupt */
  g_autoptr (GPtrArray) jobs = submit_spins (s, 200, 0.05);
  g_autoptr (GHashTable) states = NULL;
  g_autofree gchar *log = NULL;

  g_assert_cmpint (test_server_stop (s), ==, 0);
  s = start (f, "");
  log = test_server_log (s);
  assert_some_to_run_again (log);
  states = wait_all_finished (s, jobs, 60);
  g_assert_cmpuint (count_of (states, "done"), ==, jobs->len);
  for (guint i = 0; i < jobs->len; i++) {
    g_autoptr (JsonObject) o = describe (s, jobs->pdata[i]);
    g_assert_false (json_object_has_member (o, "crashes")); /* a clean stop is no crash */
  }
  test_server_stop (s);
}

/* SIGTERM lets a running async job finish within shutdown_timeout, as it does a synchronous
 * request: after the restart it is done, and ran once. */
static void
test_sigterm_lets_running_finish (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[server]\nshutdown_timeout = 10\n");
  g_autofree gchar *job =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.5, \"grain\": 10}}", NULL);
  g_autoptr (JsonObject) o = NULL;
  gint64 t0;

  wait_running (s, job);
  t0 = g_get_monotonic_time ();
  g_assert_cmpint (test_server_stop (s), ==, 0);
  g_test_message ("stopped after %.3f s", (g_get_monotonic_time () - t0) / 1e6);
  s = start (f, "");
  o = describe (s, job);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_cmpint (json_object_get_int_member (o, "attempts"), ==, 1);
  test_server_stop (s);
}

#define DRAIN_CONNECTIONS 20

/* The status of the answer on `conn` ("202"), or "" when it closed without one. */
static gchar *
read_status (GSocketConnection *conn)
{
  GInputStream *in = g_io_stream_get_input_stream (G_IO_STREAM (conn));
  gchar line[13] = "";
  gsize got = 0;

  g_socket_set_timeout (g_socket_connection_get_socket (conn), (guint)(10 * TEST_TIME_SCALE));
  g_input_stream_read_all (in, line, 12, &got, NULL, NULL);
  line[got] = '\0';
  return g_strdup (got == 12 ? line + 9 : "");
}

/* POST /jobs bodies completed on keep-alive connections just after SIGTERM, while crunchd
 * drains: each gets 202 or 503 (or the connection closes unanswered), and crunchd stops
 * cleanly. It used to park such a request after the drain had finished and abort in
 * MHD_stop_daemon(). */
static void
test_post_during_drain (Fixture *f, gconstpointer data)
{
  static const gchar body[] = "{\"fn\": \"spin\", \"args\": {\"seconds\": 0}}";
  g_autofree gchar *head = g_strdup_printf (
      "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", strlen (body));
  g_autoptr (GSocketClient) client = g_socket_client_new ();

  for (guint round = 0; round < 10; round++) {
    TestServer *s = start (f, "");
    GSocketConnection *conns[DRAIN_CONNECTIONS];
    g_autofree gchar *log = NULL;
    guint accepted = 0;

    for (guint i = 0; i < DRAIN_CONNECTIONS; i++) {
      g_autoptr (GError) error = NULL;
      GOutputStream *out;
      conns[i] = g_socket_client_connect_to_host (client, "127.0.0.1", s->port, NULL, &error);
      g_assert_no_error (error);
      out = g_io_stream_get_output_stream (G_IO_STREAM (conns[i]));
      g_assert_true (g_output_stream_write_all (out, head, strlen (head), NULL, NULL, NULL));
      g_assert_true (g_output_stream_write_all (out, body, strlen (body) - 1, NULL, NULL, NULL));
    }
    g_usleep (50000);
    test_server_signal (s, SIGTERM);
    g_usleep (round * 300);
    for (guint i = 0; i < DRAIN_CONNECTIONS; i++)
      g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (conns[i])),
                                 body + strlen (body) - 1, 1, NULL, NULL, NULL);
    for (guint i = 0; i < DRAIN_CONNECTIONS; i++) {
      g_autofree gchar *status = read_status (conns[i]);
      g_assert_true (g_strv_contains ((const gchar *const[]){"202", "503", "", NULL}, status));
      accepted += g_str_equal (status, "202");
      g_object_unref (conns[i]);
    }
    g_assert_cmpint (test_server_stop_with_log (s, &log), ==, 0);
    g_assert_null (strstr (log, "CRITICAL"));
    g_assert_null (strstr (log, "runtime check failed"));
    g_test_message ("round %u: %u of %d accepted during the drain", round, accepted,
                    DRAIN_CONNECTIONS);
  }
}

/* Runs crunchd until it stays up for 3 s (it crashes while its poison job runs, a moment after
 * it starts; 3 s leave a loaded machine room); returns how many times it died. */
static guint
crash_loop (Fixture *f, const gchar *ini_path, guint max)
{
  guint deaths = 0;

  for (guint i = 0; i < max; i++) {
    g_autoptr (GError) error = NULL;
    g_autoptr (GSubprocess) p =
        g_subprocess_new (G_SUBPROCESS_FLAGS_STDERR_SILENCE, &error, g_getenv ("CRUNCHD"),
                          "--config", ini_path, "--listen", "127.0.0.1:0", NULL);
    gint64 until = g_get_monotonic_time () + (gint64)(3 * TEST_TIME_SCALE * G_USEC_PER_SEC);

    g_assert_no_error (error);
    /* an identifier until it has exited (and been reaped) */
    while (g_get_monotonic_time () < until && g_subprocess_get_identifier (p) != NULL)
      g_usleep (20000);
    if (g_subprocess_get_identifier (p) == NULL) {
      deaths++;
      continue;
    }
    g_subprocess_send_signal (p, SIGTERM);
    g_subprocess_wait (p, NULL, NULL);
    return deaths;
  }
  return deaths;
}

/* A job that takes crunchd down (a plugin crashing in a worker thread) is run again after each
 * restart until it has been found running [jobs] max_crashes times; then it fails as poison and
 * the server stays up. A job that was running beside it at the first crash is a bystander: after
 * a crash recovered jobs run one at a time, so the later crashes are pinned on the culprit alone
 * and the bystander finishes. */
static void
test_poison (Fixture *f, gconstpointer data)
{
  static const gchar *const key[] = {"Idempotency-Key: poison-1", NULL};
  g_autofree gchar *ini = ini_for (f, "[jobs]\nmax_crashes = 2\n");
  g_autofree gchar *ini_path = g_build_filename (f->dir, "crunchd.ini", NULL);
  TestServer *s = start (f, "[jobs]\nmax_crashes = 2\n");
  g_autofree gchar *bystander =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.5, \"grain\": 10}}", NULL);
  g_autofree gchar *poison = NULL;
  g_autoptr (JsonObject) o = NULL, b = NULL;
  g_autoptr (TestReply) r = NULL;
  guint deaths;

  g_assert_true (g_file_set_contents (ini_path, ini, -1, NULL));
  wait_running (s, bystander); /* the bystander runs when the crash comes */
  /* its 202 may or may not get out before the crash: the key finds it again */
  r = call (s, "POST", "/jobs", key, "{\"fn\": \"crash\", \"args\": {\"n\": 1}}");
  g_test_message ("POST /jobs of the poison job: %ld", r->status);
  while (g_subprocess_get_identifier (s->proc) != NULL) /* it dies */
    g_usleep (10000);
  test_server_stop (s);
  deaths = crash_loop (f, ini_path, 8);
  g_test_message ("crunchd died %u more times before the poison job was failed", deaths);
  g_assert_cmpuint (deaths, >=, 1);
  g_assert_cmpuint (deaths, <=, 2);

  s = start (f, "[jobs]\nmax_crashes = 2\n");
  poison = submit (s, "{\"fn\": \"crash\", \"args\": {\"n\": 1}}", key);
  o = describe (s, poison);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "failed");
  g_assert_nonnull (strstr (json_object_get_string_member (o, "error"), "poison"));
  g_assert_cmpint (json_object_get_int_member (o, "crashes"), ==, 2);
  b = describe (s, bystander);
  g_test_message ("bystander: %s, crashes %" G_GINT64_FORMAT ", %s",
                  json_object_get_string_member (b, "state"),
                  json_object_get_int_member_with_default (b, "crashes", 0),
                  json_object_get_string_member_with_default (b, "error", ""));
  g_assert_cmpstr (json_object_get_string_member (b, "state"), ==, "done");
  /* 1 if its start was on disk at the first crash; 0 if the crash came first (CI's ASan run:
   * the poison job's write can overtake it, as wait_running() reads the table, not the file).
   * Never more: the later crashes are not pinned on it. */
  g_assert_cmpint (json_object_get_int_member_with_default (b, "crashes", 0), <=, 1);
  test_server_stop (s);
}

/* An async job whose function ignores its cancel (hostile.so's deaf) does not hold the stop:
 * crunchd ends kill_grace + 1 s after the cancel (status 1), and the job, handed back like any job
 * a stop interrupts, runs again after the restart. */
static void
test_stubborn_job_at_stop (Fixture *f, gconstpointer data)
{
  const gchar *extra = "[server]\nshutdown_timeout = 0.3\n[executor]\nkill_grace = 0.2\n";
  TestServer *s = start (f, extra);
  g_autofree gchar *deaf = submit (s, "{\"fn\": \"deaf\"}", NULL);
  g_autofree gchar *log = NULL;
  g_autoptr (JsonObject) o = NULL;

  wait_running (s, deaf);
  g_assert_cmpint (test_server_stop_with_log (s, &log), ==, 1);
  g_assert_nonnull (strstr (log, "stopped, leaving 1 job(s) on 1 thread(s)"));
  s = start (f, extra);
  wait_running (s, deaf);
  o = describe (s, deaf);
  g_assert_cmpint (json_object_get_int_member (o, "attempts"), ==, 2);
  g_assert_cmpint (test_server_stop (s), ==, 1);
}

/* After a restart without the plugin, its unfinished job fails saying why; a finished job whose
 * ttl ran out while crunchd was down is gone (404), one still within it is kept. */
static void
test_recovery_edges (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[jobs]\nttl = 1\n");
  g_autofree gchar *spin =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 10}}", NULL);
  g_autofree gchar *quick = submit (s, "{\"fn\": \"fib\", \"args\": {\"n\": 10}}", NULL);
  g_autoptr (GPtrArray) one = g_ptr_array_new ();
  g_autoptr (GHashTable) states = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autoptr (TestReply) gone = NULL;
  g_autofree gchar *ini = NULL;

  g_ptr_array_add (one, quick);
  states = wait_all_finished (s, one, 10);
  /* its outcome reaches the disk from the store thread a moment after it is visible: let it,
   * or the kill would make quick a job to run again rather than one whose ttl ran out */
  wait_stored (f, quick);
  test_server_signal (s, SIGKILL);
  test_server_stop (s);
  g_usleep ((gulong)(1.2 * G_USEC_PER_SEC)); /* quick's ttl runs out while crunchd is down */
  ini = g_strdup_printf ("[plugins]\nload =\n[jobs]\nstore = sqlite\ndatabase = %s\nttl = 1\n",
                         f->db);
  s = test_server_start (ini, NULL);
  o = describe (s, spin);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "failed");
  g_assert_nonnull (strstr (json_object_get_string_member (o, "error"),
                            "function 'spin' is no longer registered"));
  gone = call (s, "GET", quick, NULL, NULL);
  g_assert_cmpint (gone->status, ==, 404);
  test_server_stop (s);
}

static void
test_idempotency (Fixture *f, gconstpointer data)
{
  static const gchar *const key_a[] = {"Idempotency-Key: order-17", NULL};
  static const gchar *const bad_key[] = {"Idempotency-Key: \x01", NULL};
  /* a proxy in front might take the other one (an attack review) */
  static const gchar *const two_keys[] = {"Idempotency-Key: order-17", "Idempotency-Key: order-18",
                                          NULL};
  TestServer *s = start (f, "");
  g_autofree gchar *first = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}", key_a);
  /* the same call, written differently: the same job */
  g_autofree gchar *again =
      submit (s, "{ \"args\": {\"seconds\": 0.010}, \"fn\": \"spin\" }", key_a);
  g_autoptr (TestReply) other =
      call (s, "POST", "/jobs", key_a, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.02}}");
  g_autoptr (TestReply) bad =
      call (s, "POST", "/jobs", bad_key, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.02}}");
  g_autofree gchar *after = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autoptr (GPtrArray) jobs = g_ptr_array_new ();
  g_autoptr (GHashTable) states = NULL;

  g_assert_cmpstr (first, ==, again);
  g_assert_cmpint (other->status, ==, 422);
  g_assert_nonnull (strstr (other->body, "Idempotency-Key was used for a different request"));
  g_assert_null (strstr (other->body, first + strlen ("/jobs/"))); /* the id is a capability */
  g_assert_cmpint (bad->status, ==, 400);
  {
    g_autoptr (TestReply) twice =
        call (s, "POST", "/jobs", two_keys, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}");
    g_assert_cmpint (twice->status, ==, 400);
    g_assert_nonnull (strstr (twice->body, "Idempotency-Key: given more than once"));
  }
  g_ptr_array_add (jobs, first);
  g_clear_pointer (&states, g_hash_table_unref);
  states = wait_all_finished (s, jobs, 10); /* done before the stop: not interrupted */
  g_assert_cmpint (test_server_stop (s), ==, 0);

  s = start (f, ""); /* the key outlives a restart */
  after = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}", key_a);
  g_assert_cmpstr (after, ==, first);
  o = describe (s, after);
  g_assert_cmpint (json_object_get_int_member (o, "attempts"), ==, 1); /* it ran once */
  test_server_stop (s);
}

/* [jobs] max_database_size reached: POST /jobs gets 503 with the reason, the server goes on,
 * and /metrics counts it. */
static void
test_full (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[jobs]\nmax_database_size = 1\n");
  g_autofree gchar *text = g_strnfill (200000, 'x');
  g_autofree gchar *body =
      g_strdup_printf ("{\"fn\": \"length\", \"args\": {\"s\": \"%s\"}}", text);
  g_autoptr (TestReply) fast = NULL, metrics = NULL;
  guint accepted = 0;
  gboolean refused = FALSE;

  for (guint i = 0; i < 40 && !refused; i++) {
    g_autoptr (TestReply) r = call (s, "POST", "/jobs", NULL, body);
    if (r->status == 202) {
      accepted++;
      continue;
    }
    g_assert_cmpint (r->status, ==, 503);
    g_assert_nonnull (strstr (r->body, "the job store could not record the job"));
    g_assert_nonnull (strstr (r->body, "full"));
    g_assert_nonnull (g_hash_table_lookup (r->headers, "retry-after"));
    refused = TRUE;
  }
  g_test_message ("%u jobs of 200 kB fitted in 1 MiB", accepted);
  g_assert_true (refused);
  g_assert_cmpuint (accepted, >=, 1);
  fast = call (s, "GET", "/fast", NULL, NULL);
  g_assert_cmpint (fast->status, ==, 200);
  metrics = call (s, "GET", "/metrics", NULL, NULL);
  g_assert_nonnull (strstr (metrics->body, "reason=\"store_error\",status=\"503\"} 1"));
  g_assert_null (strstr (metrics->body, "crunchd_store_errors_total 0\n"));
  test_server_stop (s);
}

/* Exit 78 and a message naming the file; the file is left as it was. */
static void
assert_refused (Fixture *f, const gchar *why)
{
  g_autofree gchar *ini = ini_for (f, "");
  g_autofree gchar *ini_path = g_build_filename (f->dir, "crunchd.ini", NULL);
  g_autofree gchar *out = NULL, *err = NULL;
  gint status;

  g_assert_true (g_file_set_contents (ini_path, ini, -1, NULL));
  status = test_run_crunchd (
      (const gchar *const[]){"--config", ini_path, "--listen", "127.0.0.1:0", NULL}, &out, &err);
  g_test_message ("%s", err);
  g_assert_cmpint (status, ==, 78);
  g_assert_nonnull (strstr (err, f->db));
  g_assert_nonnull (strstr (err, why));
}

static void
test_damaged (Fixture *f, gconstpointer data)
{
  g_autofree gchar *garbage = g_strnfill (8192, 'J');
  g_autofree gchar *kept = NULL;
  gsize len;

  g_assert_true (g_file_set_contents (f->db, garbage, -1, NULL));
  assert_refused (f, "not a database");
  g_assert_true (g_file_get_contents (f->db, &kept, &len, NULL));
  g_assert_cmpmem (kept, len, garbage, strlen (garbage)); /* never started empty over it */
}

static void
test_foreign (Fixture *f, gconstpointer data)
{
  /* an SQLite file of some other program */
  g_autoptr (GError) error = NULL;
  g_autoptr (GSubprocess) p = g_subprocess_new (
      G_SUBPROCESS_FLAGS_NONE, &error, "python3", "-c",
      "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
      f->db, "CREATE TABLE accounts (id INTEGER)", NULL);

  g_assert_no_error (error);
  g_assert_true (g_subprocess_wait_check (p, NULL, NULL));
  assert_refused (f, "not a crunchd job database");
  /* left as it was: still in its own journal mode */
  g_clear_object (&p);
  p = g_subprocess_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error, "python3", "-c",
                        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
                        "print(c.execute('PRAGMA journal_mode').fetchone()[0])",
                        f->db, NULL);
  g_assert_no_error (error);
  {
    g_autofree gchar *mode = NULL;
    g_assert_true (g_subprocess_communicate_utf8 (p, NULL, NULL, &mode, NULL, &error));
    g_assert_cmpstr (g_strstrip (mode), ==, "delete");
  }
}

/* Another program (python3's sqlite3) takes the database's write lock and keeps it `seconds`;
 * returns once it has it. */
static GSubprocess *
lock_database (Fixture *f, gdouble seconds)
{
  gchar text[G_ASCII_DTOSTR_BUF_SIZE];
  g_autoptr (GError) error = NULL;
  g_autoptr (GDataInputStream) out = NULL;
  g_autofree gchar *line = NULL;
  GSubprocess *p = g_subprocess_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE, &error, "python3", "-c",
                                     "import sqlite3, sys, time\n"
                                     "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                                     "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
                                     "time.sleep(float(sys.argv[2])); c.execute('COMMIT')",
                                     f->db, g_ascii_dtostr (text, sizeof text, seconds), NULL);

  g_assert_no_error (error);
  out = g_data_input_stream_new (g_subprocess_get_stdout_pipe (p));
  line = g_data_input_stream_read_line (out, NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (line, ==, "locked");
  return p;
}

/* Another program holds the write lock for a moment (an operator's sqlite3 shell, a backup):
 * the job is accepted once the lock is free, and its later writes (running, done) land too. It
 * used to be refused at once (503). */
static void
test_outside_lock (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "");
  g_autoptr (GSubprocess) p = lock_database (f, 0.5);
  g_autofree gchar *id = NULL;
  g_autoptr (GPtrArray) jobs = g_ptr_array_new ();
  g_autoptr (JsonObject) o = NULL;
  gint64 t0 = g_get_monotonic_time ();

  id = submit (s, "{\"fn\": \"length\", \"args\": {\"s\": \"abc\"}}", NULL);
  g_test_message ("accepted after %.3f s", (g_get_monotonic_time () - t0) / 1e6);
  g_assert_true (g_subprocess_wait_check (p, NULL, NULL));
  g_ptr_array_add (jobs, id);
  g_hash_table_unref (wait_all_finished (s, jobs, 10));
  test_server_stop (s);
  /* on disk: done, with its result (a restart reads it back) */
  s = start (f, "");
  o = describe (s, id);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  test_server_stop (s);
}

/* The lock is kept longer than a write waits for it (2 s) while two accepted jobs finish and one
 * of them is deleted: their writes fail, are held (crunchd_store_held) and tried again every
 * second until they land, so a kill -9 afterwards finds one job done on disk and the other gone
 * (the job's removal replaced its held write, never overtook it). Such a write used to be logged
 * and lost: the restart found the job unfinished and ran it again. */
static void
test_outside_lock_held (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "");
  /* 3 s: the jobs still run once python3 has the lock, however slowly the machine starts it */
  g_autoptr (GPtrArray) jobs = submit_spins (s, 2, 3.0);
  g_autoptr (GSubprocess) p = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autoptr (TestReply) del = NULL, gone = NULL;
  const gchar *kept = jobs->pdata[0], *deleted = jobs->pdata[1];

  wait_running (s, kept);
  wait_running (s, deleted);
  p = lock_database (f, 8.0);
  for (guint i = 0; i < jobs->len; i++) { /* they end while the file is locked */
    g_autoptr (JsonObject) d = describe (s, jobs->pdata[i]);
    g_assert_cmpstr (json_object_get_string_member (d, "state"), ==, "running");
  }
  g_hash_table_unref (wait_all_finished (s, jobs, 10)); /* in memory */
  del = call (s, "DELETE", deleted, NULL, NULL);
  g_assert_cmpint (del->status, ==, 204);
  /* their writes waited 2 s for the lock, failed and are held */
  g_assert_cmpfloat (test_wait_metric (s, "crunchd_store_held", 2), ==, 2);
  g_assert_cmpfloat (test_server_metric (s, "crunchd_store_errors_total"), >=, 1);
  g_assert_true (g_subprocess_wait_check (p, NULL, NULL)); /* the lock is free */
  g_assert_cmpfloat (test_wait_metric (s, "crunchd_store_held", 0), ==, 0);
  wait_stored (f, kept);
  test_server_signal (s, SIGKILL);
  test_server_stop (s);
  s = start (f, "");
  o = describe (s, kept);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_cmpint (json_object_get_int_member (o, "attempts"), ==, 1);
  g_assert_false (json_object_has_member (o, "crashes"));
  gone = call (s, "GET", deleted, NULL, NULL);
  g_assert_cmpint (gone->status, ==, 404);
  test_server_stop (s);
}

/* SIGTERM while another program holds the lock (or the disk is full): crunchd cannot write that
 * the stop was clean, but the marker file it removes says so, and the restart counts no crash.
 * It used to count one for every job that was running, and recover them one at a time. */
static void
test_stop_while_locked (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[server]\nshutdown_timeout = 0.2\n");
  g_autoptr (GPtrArray) jobs = submit_spins (s, 1, 60);
  g_autoptr (GSubprocess) p = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autofree gchar *stop_log = NULL, *log = NULL;
  g_autofree gchar *marker = g_strconcat (f->db, ".running", NULL);

  wait_running (s, jobs->pdata[0]);
  g_assert_true (g_file_test (marker, G_FILE_TEST_EXISTS));
  p = lock_database (f, 60);
  /* its last writes wait for the lock in vain, the clean-stop flag's too */
  g_assert_cmpint (test_server_stop_with_log (s, &stop_log), ==, 0);
  g_assert_nonnull (strstr (stop_log, ".running says the stop was clean)"));
  g_subprocess_force_exit (p);
  g_subprocess_wait (p, NULL, NULL);
  g_assert_false (g_file_test (marker, G_FILE_TEST_EXISTS));
  s = start (f, "[server]\nshutdown_timeout = 0.2\n"); /* it runs the job again */
  log = test_server_log (s);
  g_assert_null (strstr (log, "the last stop was not clean"));
  o = describe (s, jobs->pdata[0]);
  g_assert_false (json_object_has_member (o, "crashes"));
  test_server_stop (s);
}

static void
test_in_use (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "");

  assert_refused (f, "in use by another process");
  test_server_stop (s);
}

static void
test_max_result_size (Fixture *f, gconstpointer data)
{
  TestServer *s = start (f, "[jobs]\nmax_result_size = 3\n");
  g_autofree gchar *small = submit (s, "{\"fn\": \"length\", \"args\": {\"s\": \"abc\"}}", NULL);
  g_autofree gchar *big = NULL;
  g_autoptr (JsonObject) o = NULL, p = NULL;
  g_autoptr (GPtrArray) jobs = g_ptr_array_new ();
  g_autoptr (GHashTable) states = NULL;

  g_autofree gchar *text = g_strnfill (1000, 'x');
  g_autofree gchar *body =
      g_strdup_printf ("{\"fn\": \"length\", \"args\": {\"s\": \"%s\"}}", text);

  big = submit (s, body, NULL); /* "1000": 4 bytes */
  g_ptr_array_add (jobs, small);
  g_ptr_array_add (jobs, big);
  states = wait_all_finished (s, jobs, 10);
  o = describe (s, big);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "failed");
  g_assert_nonnull (strstr (json_object_get_string_member (o, "error"), "max_result_size"));
  p = describe (s, small);
  g_assert_cmpstr (json_object_get_string_member (p, "state"), ==, "done");
  test_server_stop (s);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#define ADD(path, fn) g_test_add (path, Fixture, NULL, fixture_set_up, fn, fixture_tear_down)
  ADD ("/durable/kill9-200-in-flight", test_kill9);
  ADD ("/durable/sigterm-200-in-flight", test_sigterm);
  ADD ("/durable/sigterm-while-recovering", test_sigterm_while_recovering);
  ADD ("/durable/sigterm-lets-running-finish", test_sigterm_lets_running_finish);
  ADD ("/durable/post-during-drain", test_post_during_drain);
  ADD ("/durable/poison", test_poison);
  ADD ("/durable/stubborn-job-at-stop", test_stubborn_job_at_stop);
  ADD ("/durable/recovery-edges", test_recovery_edges);
  ADD ("/durable/idempotency", test_idempotency);
  ADD ("/durable/full-database", test_full);
  ADD ("/durable/damaged-file", test_damaged);
  ADD ("/durable/foreign-file", test_foreign);
  ADD ("/durable/in-use", test_in_use);
  ADD ("/durable/outside-lock", test_outside_lock);
  ADD ("/durable/outside-lock-held", test_outside_lock_held);
  ADD ("/durable/stop-while-locked", test_stop_while_locked);
  ADD ("/durable/max-result-size", test_max_result_size);
  return g_test_run ();
}
