/* test-jobs.c - the asynchronous jobs API: lifecycle, cancel, expiry, the store bound. */
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

static const gchar *
env_dir (const gchar *name)
{
  const gchar *dir = g_getenv (name);
  g_assert_nonnull (dir); /* set by make check */
  return dir;
}

static TestServer *
start (const gchar *extra)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[executor]\nthreads = 2\n[plugins]\ndir = %s\nload = mandelbrot, spin\n%s",
                       env_dir ("CRUNCHD_PLUGINS"), extra);
  return test_server_start (ini, NULL);
}

static TestReply *
call (TestServer *s, const gchar *method, const gchar *path, const gchar *body)
{
  g_autofree gchar *url = test_server_url (s, path);
  return test_http_body (method, url, NULL, body);
}

static JsonObject *
parse (const TestReply *r)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GError) error = NULL;

  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==, "application/json");
  json_parser_load_from_data (parser, r->body, (gssize)r->body_len, &error);
  g_assert_no_error (error);
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

/* POST /jobs -> 202; returns the Location path. */
static gchar *
submit (TestServer *s, const gchar *body)
{
  g_autoptr (TestReply) r = call (s, "POST", "/jobs", body);
  g_autoptr (JsonObject) o = NULL;
  const gchar *location;

  g_assert_cmpint (r->status, ==, 202);
  o = parse (r);
  location = g_hash_table_lookup (r->headers, "location");
  g_assert_nonnull (location);
  g_assert_true (g_str_has_prefix (location, "/jobs/"));
  g_assert_cmpuint (strlen (location + 6), ==, 32); /* 128 bits in hex */
  g_assert_cmpstr (json_object_get_string_member (o, "id"), ==, location + 6);
  g_assert_true (g_strv_contains ((const gchar *const[]){"queued", "running", "done", NULL},
                                  json_object_get_string_member (o, "state")));
  return g_strdup (location);
}

/* Polls until the job is in `state` (bounded). */
static void
wait_state (TestServer *s, const gchar *location, const gchar *state)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  for (;;) {
    g_autoptr (TestReply) r = call (s, "GET", location, NULL);
    g_autoptr (JsonObject) o = parse (r);
    if (g_str_equal (json_object_get_string_member (o, "state"), state)) {
      g_assert_true (json_object_has_member (o, "age_seconds"));
      return;
    }
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (10000);
  }
}

/* Polls until the job leaves queued/running (bounded); returns its description. */
static JsonObject *
wait_finished (TestServer *s, const gchar *location)
{
  gint64 until = g_get_monotonic_time () + 20 * G_USEC_PER_SEC;

  while (g_get_monotonic_time () < until) {
    g_autoptr (TestReply) r = call (s, "GET", location, NULL);
    g_autoptr (JsonObject) o = NULL;
    const gchar *state;
    g_assert_cmpint (r->status, ==, 200);
    o = parse (r);
    state = json_object_get_string_member (o, "state");
    if (!g_str_equal (state, "queued") && !g_str_equal (state, "running"))
      return g_steal_pointer (&o);
    g_usleep (20000);
  }
  g_error ("job %s did not finish within 20 s", location);
}

/* Durations read as people write them (0.000049, 2.1, 299.5), never 4.8999999999999998e-05:
 * plain notation, at most 4 significant digits. */
static void
assert_readable_seconds (TestServer *s, const gchar *location)
{
  g_autoptr (TestReply) r = call (s, "GET", location, NULL);
  g_autoptr (GRegex) member = g_regex_new ("\"([a-z_]+_seconds)\": ([^,\n]*)", 0, 0, NULL);
  g_autoptr (GMatchInfo) match = NULL;
  guint seen = 0;

  g_regex_match (member, r->body, 0, &match);
  for (; g_match_info_matches (match); g_match_info_next (match, NULL), seen++) {
    g_autofree gchar *name = g_match_info_fetch (match, 1);
    g_autofree gchar *value = g_match_info_fetch (match, 2);
    const gchar *d;
    g_test_message ("%s: %s", name, value);
    g_assert_true (g_regex_match_simple ("^[0-9]+(\\.[0-9]{1,6})?$", value, 0, 0));
    /* significant digits: after the leading zeros, not counting the point */
    d = value + strspn (value, "0.");
    g_assert_cmpuint (strlen (d) - (strchr (d, '.') ? 1 : 0), <=, strchr (value, '.') ? 4 : 5);
  }
  g_assert_cmpuint (seen, >=, 3); /* queued, run, deadline, expires_in */
}

static void
test_lifecycle (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *job = submit (s, "{\"fn\": \"fib\", \"args\": {\"n\": 27}}");
  g_autoptr (JsonObject) o = wait_finished (s, job);
  g_autofree gchar *result_path = g_strconcat (job, "/result", NULL);
  g_autoptr (TestReply) raw = call (s, "GET", result_path, NULL);
  g_autoptr (TestReply) del = NULL, gone = NULL;

  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_cmpstr (json_object_get_string_member (o, "fn"), ==, "fib");
  g_assert_cmpstr (json_object_get_string_member (o, "result"), ==, "196418");
  g_assert_cmpstr (json_object_get_string_member (o, "result_url"), ==, result_path);
  g_assert_true (json_object_has_member (o, "queued_seconds"));
  g_assert_cmpfloat (json_object_get_double_member (o, "run_seconds"), >=, 0);
  g_assert_cmpfloat (json_object_get_double_member (o, "expires_in_seconds"), >, 0);
  assert_readable_seconds (s, job);
  g_assert_cmpint (raw->status, ==, 200);
  g_assert_cmpstr (raw->body, ==, "196418");

  del = call (s, "DELETE", job, NULL); /* finished: forgotten */
  g_assert_cmpint (del->status, ==, 204);
  gone = call (s, "GET", job, NULL);
  g_assert_cmpint (gone->status, ==, 404);
}

static void
test_binary_job (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *job =
      submit (s, "{\"fn\": \"mandelbrot\", \"args\": {\"size\": 64, \"iter\": 20}}");
  g_autoptr (JsonObject) o = wait_finished (s, job);
  g_autofree gchar *result_path = g_strconcat (job, "/result", NULL);
  g_autoptr (TestReply) raw = call (s, "GET", result_path, NULL);

  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_false (json_object_has_member (o, "result")); /* binary: only via result_url */
  g_assert_cmpstr (json_object_get_string_member (o, "content_type"), ==, "image/png");
  g_assert_cmpint (raw->status, ==, 200);
  g_assert_cmpstr (g_hash_table_lookup (raw->headers, "content-type"), ==, "image/png");
  g_assert_cmpint (raw->body_len, ==, json_object_get_int_member (o, "result_size"));
  g_assert_cmpmem (raw->body, 8, "\x89PNG\r\n\x1a\n", 8);
}

static void
test_cancel (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *job =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 20, \"grain\": 50}}");
  g_autofree gchar *result_path = g_strconcat (job, "/result", NULL);
  g_autoptr (TestReply) del = NULL, result = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autofree gchar *expected = NULL;
  gint64 t0;

  wait_state (s, job, "running");
  t0 = g_get_monotonic_time ();
  del = call (s, "DELETE", job, NULL);
  g_assert_cmpint (del->status, ==, 202);
  o = wait_finished (s, job);
  g_test_message ("cancelled after %.3f s", (g_get_monotonic_time () - t0) / 1e6);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "cancelled");
  g_assert_true (json_object_get_boolean_member (o, "cancel_requested"));
  g_assert_cmpint (g_get_monotonic_time () - t0, <, 5 * G_USEC_PER_SEC);
  result = call (s, "GET", result_path, NULL);
  g_assert_cmpint (result->status, ==, 409);
  expected = g_strdup_printf ("job %s is cancelled: no result\n", job + strlen ("/jobs/"));
  g_assert_cmpstr (result->body, ==, expected);
  g_assert_nonnull (result->body_request_id); /* like every error body */
  g_assert_cmpstr (result->body_request_id, ==,
                   g_hash_table_lookup (result->headers, "x-request-id"));
}

/* A job whose deadline passes is stopped and reported "expired", like /fib's 504. */
static void
test_expired (void)
{
  g_autoptr (TestServer) s = start ("[fib]\nmax_n = 92\ntimeout = 0.3\n");
  g_autofree gchar *job = submit (s, "{\"fn\": \"fib\", \"args\": {\"n\": 70}}");
  g_autoptr (TestReply) sync = call (s, "GET", "/fib/70", NULL);
  g_autoptr (JsonObject) o = NULL;
  gint64 t0 = g_get_monotonic_time ();

  g_assert_cmpint (sync->status, ==, 504);
  o = wait_finished (s, job);
  g_assert_cmpint (g_get_monotonic_time () - t0, <, 5 * G_USEC_PER_SEC);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "expired");
  g_assert_cmpstr (json_object_get_string_member (o, "error"), ==, "deadline exceeded");
  /* an expired job does not also say when it "expires" (it is kept [jobs] ttl all the same) */
  g_assert_false (json_object_has_member (o, "expires_in_seconds"));
  g_assert_true (json_object_has_member (o, "deadline_seconds"));
}

static void
test_expiry (void)
{
  g_autoptr (TestServer) s = start ("[jobs]\nttl = 0.5\n");
  g_autofree gchar *job = submit (s, "{\"fn\": \"fib\", \"args\": {\"n\": 5}}");
  g_autoptr (JsonObject) o = wait_finished (s, job);
  g_autoptr (TestReply) gone = NULL;

  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_usleep (700000);
  gone = call (s, "GET", job, NULL);
  g_assert_cmpint (gone->status, ==, 404);
  g_assert_cmpstr (gone->body, ==,
                   "no such job (it never existed, was deleted, or expired after [jobs] ttl)\n");
}

static void
test_bound (void)
{
  g_autoptr (TestServer) s = start ("[jobs]\nmax_stored = 2\nttl = 60\n");
  const gchar *spin = "{\"fn\": \"spin\", \"args\": {\"seconds\": 20, \"grain\": 50}}";
  g_autofree gchar *a = submit (s, spin);
  g_autofree gchar *b = submit (s, spin);
  g_autoptr (TestReply) full = call (s, "POST", "/jobs", spin);
  g_autoptr (TestReply) del = NULL, after = NULL, again = NULL;
  g_autoptr (JsonObject) o = NULL;
  g_autofree gchar *c = NULL;

  g_assert_cmpint (full->status, ==, 503);
  g_assert_nonnull (g_hash_table_lookup (full->headers, "retry-after"));
  g_assert_cmpstr (full->body, ==, "too many stored jobs ([jobs] max_stored = 2), retry later\n");
  /* cancelled but still stored: still full */
  del = call (s, "DELETE", a, NULL);
  o = wait_finished (s, a);
  after = call (s, "POST", "/jobs", spin);
  g_assert_cmpint (after->status, ==, 503);
  /* forgotten: room again */
  g_clear_pointer (&del, test_reply_free);
  del = call (s, "DELETE", a, NULL);
  g_assert_cmpint (del->status, ==, 204);
  c = submit (s, "{\"fn\": \"fib\", \"args\": {\"n\": 3}}");
  again = call (s, "DELETE", b, NULL);
  g_assert_cmpint (again->status, ==, 202);
}

/* The same admission as a synchronous call: the client's in-flight limit (429) and the queue
 * bound (503) count async jobs too. */
static void
test_limits (void)
{
  g_autoptr (TestServer) s =
      start ("[executor]\nthreads = 1\nqueue_limit = 2\nper_client_limit = 2\n");
  const gchar *spin = "{\"fn\": \"spin\", \"args\": {\"seconds\": 20, \"grain\": 50}}";
  g_autofree gchar *a = submit (s, spin);
  g_autofree gchar *b = submit (s, spin);
  g_autoptr (TestReply) over = call (s, "POST", "/jobs", spin);
  g_autoptr (TestReply) sync = call (s, "GET", "/fn/spin?seconds=0.01", NULL);
  g_autoptr (TestReply) da = NULL, db = NULL;

  g_assert_cmpint (over->status, ==, 429);
  g_assert_nonnull (g_hash_table_lookup (over->headers, "retry-after"));
  g_assert_cmpint (sync->status, ==, 429); /* the jobs count against the client's share */
  wait_state (s, a, "running");            /* one worker: the first runs, the second waits */
  wait_state (s, b, "queued");
  da = call (s, "DELETE", a, NULL);
  db = call (s, "DELETE", b, NULL);
  g_assert_cmpint (da->status, ==, 202);
  g_assert_cmpint (db->status, ==, 202);
}

/* A pure function's identical jobs share one computation, as identical requests do. */
static void
test_coalescing (void)
{
  g_autoptr (TestServer) s = start ("[executor]\nthreads = 1\n");
  const gchar *body = "{\"fn\": \"mandelbrot\", \"args\": {\"size\": 400, \"iter\": 3000}}";
  g_autofree gchar *a = submit (s, body);
  g_autofree gchar *b = submit (s, body);
  g_autoptr (JsonObject) oa = wait_finished (s, a);
  g_autoptr (JsonObject) ob = wait_finished (s, b);

  g_assert_cmpstr (json_object_get_string_member (oa, "state"), ==, "done");
  g_assert_cmpstr (json_object_get_string_member (ob, "state"), ==, "done");
  g_assert_false (json_object_has_member (oa, "coalesced"));
  g_assert_true (json_object_get_boolean_member (ob, "coalesced"));
  g_assert_cmpint (json_object_get_int_member (oa, "result_size"), ==,
                   json_object_get_int_member (ob, "result_size"));
}

/* Metrics count a plugin function's calls, synchronous or as jobs, like fib's. */
static void
test_metrics (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autoptr (TestReply) sync = call (s, "GET", "/fn/spin?seconds=0.01", NULL);
  g_autofree gchar *job = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}");
  g_autoptr (JsonObject) o = wait_finished (s, job);
  g_autoptr (TestReply) m = call (s, "GET", "/metrics", NULL);

  g_assert_cmpint (sync->status, ==, 200);
  g_assert_cmpstr (json_object_get_string_member (o, "state"), ==, "done");
  g_assert_cmpint (m->status, ==, 200);
  g_assert_nonnull (strstr (m->body, "\ncrunchd_jobs_submitted_total{function=\"spin\"} 2\n"));
  g_assert_nonnull (
      strstr (m->body, "\ncrunchd_jobs_finished_total{function=\"spin\",outcome=\"ok\"} 2\n"));
}

static void
test_bad_requests (void)
{
  g_autoptr (TestServer) s = start ("");
  const struct {
    const gchar *method, *path, *body;
    long status;
    const gchar *message;
  } cases[] = {
      {"POST", "/jobs", "{", 400, NULL},
      {"POST", "/jobs", "[]", 400,
       "POST /jobs: the request body must be a JSON object {\"fn\": NAME, \"args\": {...}}\n"},
      {"POST", "/jobs", "{\"args\": {}}", 400,
       "POST /jobs: \"fn\" must be the name of a function\n"},
      {"POST", "/jobs", "{\"fn\": \"nope\"}", 400, "POST /jobs: no such function 'nope'\n"},
      {"POST", "/jobs", "{\"fn\": \"fib\", \"x\": 1}", 400,
       "POST /jobs: unknown member: expected only \"fn\" and \"args\"\n"},
      {"POST", "/jobs", "{\"fn\": \"fib\", \"args\": 3}", 400,
       "POST /jobs: \"args\" must be a JSON object\n"},
      {"POST", "/jobs", "{\"fn\": \"fib\", \"args\": {\"n\": -1}}", 400,
       "POST /jobs: fib: argument 'n' must be an integer from 0 to 92, got -1\n"},
      {"GET", "/jobs/0123456789abcdef0123456789abcdef", NULL, 404, NULL},
      {"DELETE", "/jobs/nope", NULL, 404, NULL},
      {"GET", "/jobs", NULL, 405, "method not allowed\n"},
      {"PUT", "/jobs/x", NULL, 405, "method not allowed\n"},
      {"DELETE", "/jobs/x/result", NULL, 405, "method not allowed\n"},
      {"GET", "/jobs/x/other", NULL, 404, "no such route\n"},
  };
  /* every error names the request id; a 405 says what is allowed */
  const gchar *allow[G_N_ELEMENTS (cases)] = {
      [9] = "POST", [10] = "GET, HEAD, DELETE", [11] = "GET, HEAD"};

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (TestReply) r = call (s, cases[i].method, cases[i].path, cases[i].body);
    g_test_message ("%s %s %s", cases[i].method, cases[i].path, cases[i].body);
    g_assert_cmpint (r->status, ==, cases[i].status);
    g_assert_nonnull (r->body_request_id);
    if (cases[i].message != NULL)
      g_assert_cmpstr (r->body, ==, cases[i].message);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "allow"), ==, allow[i]);
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/jobs/lifecycle", test_lifecycle);
  g_test_add_func ("/jobs/binary", test_binary_job);
  g_test_add_func ("/jobs/cancel", test_cancel);
  g_test_add_func ("/jobs/expired-by-deadline", test_expired);
  g_test_add_func ("/jobs/ttl", test_expiry);
  g_test_add_func ("/jobs/bound", test_bound);
  g_test_add_func ("/jobs/limits", test_limits);
  g_test_add_func ("/jobs/coalescing", test_coalescing);
  g_test_add_func ("/jobs/metrics", test_metrics);
  g_test_add_func ("/jobs/bad-requests", test_bad_requests);
  return g_test_run ();
}
