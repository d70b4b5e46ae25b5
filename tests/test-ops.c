/* test-ops.c - the ops endpoints against the real binary: /metrics (checked by promtool),
 * /healthz, /readyz, [metrics] listen, request ids and the access log formats. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define assert_contains(text, part)                                                                \
  do {                                                                                             \
    if (strstr ((text), (part)) == NULL)                                                           \
      g_error ("%s:%d: '%s' not found in:\n%s", __FILE__, __LINE__, (part), (text));               \
  } while (0)

static TestReply *
get (TestServer *server, const gchar *path)
{
  g_autofree gchar *url = test_server_url (server, path);

  return test_http ("GET", url, NULL);
}

/* promtool is the reference parser; CI installs it, elsewhere its absence skips the check. */
static gboolean
promtool_check (const gchar *text)
{
  g_autofree gchar *promtool = g_find_program_in_path ("promtool");
  g_autoptr (GSubprocess) proc = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *out = NULL, *err = NULL;

  if (promtool == NULL) {
    if (g_getenv ("CI") != NULL)
      g_error ("promtool not found (Debian package prometheus)");
    g_test_message ("promtool not found: format not checked");
    return FALSE;
  }
  proc = g_subprocess_new (G_SUBPROCESS_FLAGS_STDIN_PIPE | G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                               G_SUBPROCESS_FLAGS_STDERR_MERGE,
                           &error, promtool, "check", "metrics", NULL);
  g_assert_no_error (error);
  g_assert_true (g_subprocess_communicate_utf8 (proc, text, NULL, &out, &err, &error));
  g_assert_no_error (error);
  if (!g_subprocess_get_if_exited (proc) || g_subprocess_get_exit_status (proc) != 0)
    g_error ("promtool check metrics failed:\n%s", out);
  return TRUE;
}

static void
test_metrics (void)
{
  g_autoptr (TestServer) server = test_server_start ("", (const gchar *[]){"--threads=2", NULL});
  g_autoptr (TestReply) r = NULL;

  for (gint i = 0; i < 3; i++)
    test_reply_free (get (server, "/fast"));
  test_reply_free (get (server, "/fib/10"));
  test_reply_free (get (server, "/nope"));
  /* A request is counted when it ends (MHD_OPTION_NOTIFY_COMPLETED), which with several polling
   * threads may come a moment after its client has the answer and has sent the next one: scrape
   * again (bounded) until the earlier requests are all in, this scrape's own connection alone
   * open. */
  r = get (server, "/metrics");
  for (gint64 until = g_get_monotonic_time () + 2 * G_USEC_PER_SEC;
       (strstr (r->body, "\ncrunchd_connections_open 1\n") == NULL ||
        strstr (r->body, "\ncrunchd_http_request_duration_seconds_count{route=\"/fib/\"} 1\n") ==
            NULL ||
        strstr (r->body, "route=\"none\",method=\"GET\",status=\"404\"} 1\n") == NULL) &&
       g_get_monotonic_time () < until;) {
    g_usleep (10000);
    test_reply_free (r);
    r = get (server, "/metrics");
  }
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==,
                   "text/plain; version=0.0.4; charset=utf-8");
  promtool_check (r->body);
  assert_contains (
      r->body, "\ncrunchd_http_requests_total{route=\"/fast\",method=\"GET\",status=\"200\"} 3\n");
  assert_contains (
      r->body, "\ncrunchd_http_requests_total{route=\"none\",method=\"GET\",status=\"404\"} 1\n");
  assert_contains (r->body, "\ncrunchd_http_request_duration_seconds_count{route=\"/fib/\"} 1\n");
  assert_contains (r->body, "\ncrunchd_jobs_submitted_total{function=\"fib\"} 1\n");
  assert_contains (r->body, "\ncrunchd_jobs_finished_total{function=\"fib\",outcome=\"ok\"} 1\n");
  assert_contains (r->body, "\ncrunchd_job_run_seconds_count{function=\"fib\"} 1\n");
  assert_contains (r->body, "\ncrunchd_workers 2\n");
  assert_contains (r->body, "\ncrunchd_connections_open 1\n"); /* this scrape's own */
  assert_contains (r->body, "\ncrunchd_build_info{version=\"" PACKAGE_VERSION "\"} 1\n");
  assert_contains (r->body, "\nprocess_start_time_seconds ");
}

static void
test_health (void)
{
  g_autoptr (TestServer) server = test_server_start ("", NULL);
  g_autoptr (TestReply) h = get (server, "/healthz");
  g_autoptr (TestReply) r = get (server, "/readyz");

  g_assert_cmpint (h->status, ==, 200);
  g_assert_cmpstr (h->body, ==, "ok\n");
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "ready\n");
}

/* Polls `path` until its status is `status` (bounded). */
static TestReply *
wait_status (TestServer *server, const gchar *path, long status)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  while (TRUE) {
    TestReply *r = get (server, path);
    if (r->status == status || g_get_monotonic_time () > until)
      return r;
    test_reply_free (r);
    g_usleep (20000);
  }
}

/* One worker busy and the one queue place taken: not ready, and compute requests get 503. The
 * busy worker runs an async fib(60) (hours) until DELETE stops it, so no job's length depends on
 * the machine's speed or load (a fib timed at a busy moment once ended before the queue filled). */
static void
test_readyz_queue_full (void)
{
  g_autoptr (TestServer) server =
      test_server_start ("[executor]\nthreads = 1\nqueue_limit = 1\n", NULL);
  g_autofree gchar *jobs = test_server_url (server, "/jobs");
  g_autoptr (TestReply) posted = NULL, ready = NULL, refused = NULL, metrics = NULL;
  g_autoptr (TestReply) deleted = NULL, reply = NULL;
  g_autofree gchar *job = NULL;
  TestCall *call;

  posted = test_http_body ("POST", jobs, NULL, "{\"fn\": \"fib\", \"args\": {\"n\": 60}}");
  g_assert_cmpint (posted->status, ==, 202);
  job = test_server_url (server, g_hash_table_lookup (posted->headers, "location"));
  g_assert_cmpfloat (test_wait_metric (server, "crunchd_workers_busy", 1), ==, 1);
  /* queued behind it, its connection suspended */
  call = test_call_start (test_server_url (server, "/fib/20"));
  ready = wait_status (server, "/readyz", 503);
  g_assert_cmpint (ready->status, ==, 503);
  g_assert_cmpstr (ready->body, ==, "not ready: job queue full\n");
  g_assert_nonnull (ready->body_request_id);
  refused = get (server, "/fib/5");
  g_assert_cmpint (refused->status, ==, 503);
  metrics = get (server, "/metrics");
  assert_contains (metrics->body,
                   "\ncrunchd_rejections_total{reason=\"queue_full\",status=\"503\"} 1\n");
  assert_contains (metrics->body, "\ncrunchd_jobs_queued 1\n");
  assert_contains (metrics->body, "\ncrunchd_workers_busy 1\n");
  assert_contains (metrics->body, "\ncrunchd_connections_suspended 1\n");
  /* cancelling the running job frees the worker for the queued request */
  deleted = test_http ("DELETE", job, NULL);
  g_assert_cmpint (deleted->status, ==, 202);
  reply = test_call_finish (call);
  g_assert_cmpint (reply->status, ==, 200);
  g_assert_cmpstr (reply->body, ==, "6765");
  test_reply_free (wait_status (server, "/readyz", 200));
}

static guint16
ops_port (TestServer *server)
{
  const gchar *marker = "/status) on http://127.0.0.1:";
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  /* the ops listener starts after the public one, whose line the harness waited for */
  while (g_get_monotonic_time () < until) {
    g_autofree gchar *log = test_server_log (server);
    const gchar *at = log != NULL ? strstr (log, marker) : NULL;
    if (at != NULL)
      return (guint16)g_ascii_strtoull (at + strlen (marker), NULL, 10);
    g_usleep (10000);
  }
  g_error ("no ops listener line in the log");
}

/* [metrics] listen: ops routes move to their own address, and it keeps answering while
 * draining, so /readyz can say 503. */
static void
test_separate_listen (void)
{
  g_autofree gchar *ini =
      test_ini_with_spin ("[metrics]\nlisten = 127.0.0.1:0\n"
                          /* the drain waits for the job however slow a loaded machine makes it */
                          "[server]\nshutdown_timeout = 120\n");
  g_autoptr (TestServer) server = test_server_start (ini, (const gchar *[]){"--threads=1", NULL});
  g_autofree gchar *ops = g_strdup_printf ("http://127.0.0.1:%u", ops_port (server));
  g_autofree gchar *ops_metrics = g_strconcat (ops, "/metrics", NULL);
  g_autofree gchar *ops_fast = g_strconcat (ops, "/fast", NULL);
  g_autofree gchar *ops_ready = g_strconcat (ops, "/readyz", NULL);
  g_autoptr (TestReply) pub = get (server, "/metrics");
  g_autoptr (TestReply) m = test_http ("GET", ops_metrics, NULL);
  g_autoptr (TestReply) f = test_http ("GET", ops_fast, NULL);
  g_autoptr (TestReply) r = NULL;
  /* 2 s by the clock, so it still runs when /readyz is asked during the drain, however loaded
   * the machine (a fib timed at a busy moment may end much sooner than planned) */
  TestCall *call = test_call_start (test_server_url (server, "/fn/spin?seconds=2"));
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  g_assert_cmpint (pub->status, ==, 404);
  g_assert_cmpint (m->status, ==, 200);
  g_assert_cmpint (f->status, ==, 404);
  for (gboolean running = FALSE; !running && g_get_monotonic_time () < until;) {
    g_autoptr (TestReply) now = test_http ("GET", ops_metrics, NULL);
    running = strstr (now->body, "\ncrunchd_jobs_running 1\n") != NULL;
    if (!running)
      g_usleep (20000);
  }
  test_server_signal (server, SIGTERM);
  do {
    g_clear_pointer (&r, test_reply_free);
    r = test_http ("GET", ops_ready, NULL);
  } while (r->status != 503 && g_get_monotonic_time () < until && (g_usleep (20000), TRUE));
  g_assert_cmpint (r->status, ==, 503);
  g_assert_cmpstr (r->body, ==, "not ready: draining\n");
  g_autoptr (TestReply) reply = test_call_finish (call);
  g_assert_cmpint (reply->status, ==, 200);
}

static gchar *
stop_and_read_log (TestServer *server)
{
  g_autofree gchar *log = NULL;

  test_server_signal (server, SIGTERM);
  /* the log is removed with the server: read it once crunchd has stopped writing */
  for (gint i = 0; i < 500 && g_subprocess_get_identifier (server->proc) != NULL; i++)
    g_usleep (10000);
  log = test_server_log (server);
  g_assert_cmpint (test_server_stop (server), ==, 0);
  return g_steal_pointer (&log);
}

static void
test_request_ids (void)
{
  TestServer *server = test_server_start ("", NULL);
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autoptr (TestReply) given =
      test_http ("GET", url, (const gchar *[]){"X-Request-Id: trace-42 <b>", NULL});
  g_autoptr (TestReply) made = test_http ("GET", url, NULL);
  g_autoptr (GRegex) generated = g_regex_new ("^[0-9a-f]{8}-[0-9a-f]{8}$", 0, 0, NULL);
  const gchar *id = g_hash_table_lookup (made->headers, "x-request-id");
  g_autofree gchar *log = NULL;

  g_assert_cmpstr (g_hash_table_lookup (given->headers, "x-request-id"), ==, "trace-42b");
  g_assert_nonnull (id);
  g_assert_true (g_regex_match (generated, id, 0, NULL));
  log = stop_and_read_log (server);
  assert_contains (log, "\"GET /fast HTTP/1.1\" 200 6 \"trace-42b\" ");
  assert_contains (log, id);
}

static void
test_access_formats (void)
{
  TestServer *server = test_server_start ("[log]\naccess = json\n", NULL);
  g_autofree gchar *url = test_server_url (server, "/fib/10");
  g_autofree gchar *log = NULL, *off_log = NULL, *common_log = NULL;

  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: json-1", NULL}));
  log = stop_and_read_log (server);
  assert_contains (log, "\"remote\":\"127.0.0.1\",\"method\":\"GET\",\"path\":\"/fib/10\","
                        "\"protocol\":\"HTTP/1.1\",\"status\":200,\"bytes\":2,"
                        "\"request_id\":\"json-1\",\"duration_ms\":");
  assert_contains (log, ",\"queue_ms\":");
  g_assert_null (strstr (log, "\"run_ms\":null"));

  server = test_server_start ("[log]\naccess = common\n", NULL);
  g_free (url);
  url = test_server_url (server, "/nope");
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: clf-1", NULL}));
  common_log = stop_and_read_log (server);
  assert_contains (common_log, "] \"GET /nope HTTP/1.1\" 404 33 \"clf-1\" ");

  /* access lines are info records: a [log] level above info (here message) drops them */
  server = test_server_start ("[log]\naccess = common\nlevel = message\n", NULL);
  g_free (url);
  url = test_server_url (server, "/fast");
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: quiet-1", NULL}));
  g_free (common_log);
  common_log = stop_and_read_log (server);
  g_assert_null (strstr (common_log, "quiet-1"));

  server = test_server_start ("[log]\naccess = off\n", NULL);
  g_free (url);
  url = test_server_url (server, "/fast");
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: off-1", NULL}));
  off_log = stop_and_read_log (server);
  g_assert_null (strstr (off_log, "off-1"));
}

/* The JSON access line's time: now, in the local zone (TZ), and moving on with the clock. The
 * zone is looked up once a second per thread (looking it up per request, through GLib's
 * g_date_time_new_now_local(), cost a stat() and a readlink() of /etc/localtime each: JSON logging
 * was 0.6 x the common format's req/s). */
static void
test_access_json_time (void)
{
  const gchar *env[] = {"TZ=XYZ-05:30", NULL};
  TestServerSetup setup = {.env = env};
  TestServer *server = test_server_start_with ("[log]\naccess = json\n", NULL, &setup);
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autofree gchar *log = NULL;
  GDateTime *times[2];
  const gchar *at;
  gint64 t0 = g_get_real_time ();

  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: tz-1", NULL}));
  g_usleep (1200000);
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: tz-2", NULL}));
  log = stop_and_read_log (server);
  for (guint i = 0; i < 2; i++) {
    g_autofree gchar *id = g_strdup_printf ("\"request_id\":\"tz-%u\"", i + 1);
    const gchar *line = strstr (log, id), *start;
    g_autofree gchar *text = NULL;

    g_assert_nonnull (line);
    for (start = line; start > log && start[-1] != '\n'; start--)
      ;
    at = strstr (start, "{\"time\":\"");
    g_assert_true (at != NULL && at < line);
    at += strlen ("{\"time\":\"");
    text = g_strndup (at, strcspn (at, "\""));
    g_test_message ("request %u: %s", i + 1, text);
    g_assert_true (g_str_has_suffix (text, "+05:30"));
    times[i] = g_date_time_new_from_iso8601 (text, NULL);
    g_assert_nonnull (times[i]);
  }
  g_assert_cmpint (llabs (g_date_time_to_unix (times[0]) - t0 / G_USEC_PER_SEC), <=, 5);
  g_assert_cmpint (g_date_time_difference (times[1], times[0]), >=, 1100000);
  g_date_time_unref (times[0]);
  g_date_time_unref (times[1]);
}

/* Whether crunchd's log has `needle` within `seconds`. */
static gboolean
log_shows (TestServer *server, const gchar *needle, gdouble seconds)
{
  gint64 until = g_get_monotonic_time () + (gint64)(seconds * G_USEC_PER_SEC);

  do {
    g_autofree gchar *log = test_server_log (server);
    if (strstr (log, needle) != NULL)
      return TRUE;
    g_usleep (20000);
  } while (g_get_monotonic_time () < until);
  return FALSE;
}

/* The access log's writer thread holds lines up to [log] access_flush (or access_buffer bytes)
 * and loses none at exit; access_buffer = 0 writes each line at once. */
static void
test_access_buffered (void)
{
  TestServer *server = test_server_start ("[log]\naccess = common\naccess_flush = 60\n", NULL);
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autofree gchar *log = NULL;
  g_autoptr (TestServer) now = NULL, soon = NULL;

  for (guint i = 0; i < 50; i++) {
    g_autofree gchar *id = g_strdup_printf ("X-Request-Id: buf-%u", i);
    test_reply_free (test_http ("GET", url, (const gchar *[]){id, NULL}));
  }
  g_assert_false (log_shows (server, "\"buf-", 0.3)); /* held: 50 lines are far from 64 KiB */
  log = stop_and_read_log (server);                   /* SIGTERM: written at exit */
  for (guint i = 0; i < 50; i++) {
    g_autofree gchar *id = g_strdup_printf ("\"buf-%u\"", i);
    const gchar *at = strstr (log, id);
    g_assert_nonnull (at);
    g_assert_null (strstr (at + 1, id)); /* once */
  }
  now = test_server_start ("[log]\naccess = common\naccess_buffer = 0\n", NULL);
  g_free (url);
  url = test_server_url (now, "/fast");
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: direct-1", NULL}));
  g_assert_true (log_shows (now, "\"direct-1\"", 2 * TEST_TIME_SCALE));
  soon = test_server_start ("[log]\naccess = common\naccess_flush = 0.1\n", NULL);
  g_free (url);
  url = test_server_url (soon, "/fast");
  test_reply_free (test_http ("GET", url, (const gchar *[]){"X-Request-Id: soon-1", NULL}));
  g_assert_true (log_shows (soon, "\"soon-1\"", 2 * TEST_TIME_SCALE));
}

static void
test_metrics_disabled (void)
{
  g_autoptr (TestServer) server = test_server_start ("[metrics]\nenabled = false\n", NULL);
  g_autoptr (TestReply) m = get (server, "/metrics");
  g_autoptr (TestReply) h = get (server, "/healthz");

  g_assert_cmpint (m->status, ==, 404);
  g_assert_cmpstr (m->body, ==, "metrics are disabled ([metrics] enabled = false)\n");
  g_assert_cmpint (h->status, ==, 200);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/ops/metrics", test_metrics);
  g_test_add_func ("/ops/health", test_health);
  g_test_add_func ("/ops/readyz-queue-full", test_readyz_queue_full);
  g_test_add_func ("/ops/separate-listen", test_separate_listen);
  g_test_add_func ("/ops/request-ids", test_request_ids);
  g_test_add_func ("/ops/access-formats", test_access_formats);
  g_test_add_func ("/ops/access-json-time", test_access_json_time);
  g_test_add_func ("/ops/access-buffered", test_access_buffered);
  g_test_add_func ("/ops/metrics-disabled", test_metrics_disabled);
  return g_test_run ();
}
