/* test-priority.c - priority classes, aging and the Crunch-Priority header (issue 16 part 2);
 * deadline-aware admission and computed Retry-After (part 3); against the real binary, with the
 * spin plugin and one worker. */
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

/* `crunchd --new-key NAME`: the group it prints with `extra` lines added; the token in *token. */
static gchar *
new_key (const gchar *name, const gchar *extra, gchar **token)
{
  g_autofree gchar *out = NULL, *err = NULL;
  const gchar *t, *group;

  g_assert_cmpint (test_run_crunchd ((const gchar *[]){"--new-key", name, NULL}, &out, &err), ==,
                   0);
  t = strstr (out, "\ntoken = ");
  g_assert_nonnull (t);
  t += strlen ("\ntoken = ");
  *token = g_strndup (t, strcspn (t, "\n"));
  group = strstr (out, "\n[");
  g_assert_nonnull (group);
  return g_strconcat (group + 1, extra, NULL);
}

typedef struct {
  TestServer *server;
  gchar *dir;        /* holds the keys file */
  gchar *low, *high; /* "Authorization: Bearer ..." of the two keys */
} Setup;

static void
setup_free (Setup *s)
{
  g_assert_cmpint (test_server_stop (s->server), ==, 0); /* (a TSan report would make it 66) */
  test_remove_dir (s->dir);
  g_free (s->dir);
  g_free (s->low);
  g_free (s->high);
  g_free (s);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Setup, setup_free)

/* One worker, jobs in memory, keys "low" and "high" of those priorities, and `extra` ini. */
static Setup *
start (guint low, guint high, const gchar *extra)
{
  Setup *s = g_new0 (Setup, 1);
  g_autofree gchar *lt = NULL, *ht = NULL, *lp = g_strdup_printf ("priority = %u\n", low);
  g_autofree gchar *hp = g_strdup_printf ("priority = %u\n", high);
  g_autofree gchar *l = new_key ("low", lp, &lt), *h = new_key ("high", hp, &ht);
  g_autofree gchar *keys = g_strconcat (l, h, NULL), *path = NULL, *base = NULL, *ini = NULL;

  s->dir = g_dir_make_tmp ("crunchd-prio-XXXXXX", NULL);
  path = g_build_filename (s->dir, "keys", NULL);
  g_assert_true (g_file_set_contents (path, keys, -1, NULL));
  base = g_strdup_printf (
      "[auth]\nkeys_file = %s\n[executor]\nthreads = 1\nqueue_limit = 500\nper_client_limit = 0\n"
      "coalesce = false\nnice = 0\n[jobs]\nstore = memory\nmax_stored = 2000\n"
      "max_stored_per_client = 0\n[server]\nshutdown_timeout = 0\n[log]\naccess = off\n%s",
      path, extra);
  ini = test_ini_with_spin (base);
  s->server = test_server_start (ini, NULL);
  s->low = g_strdup_printf ("Authorization: Bearer %s", lt);
  s->high = g_strdup_printf ("Authorization: Bearer %s", ht);
  return s;
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

/* POST /jobs for spin(seconds) with `headers`; the job's path. */
static gchar *
post (TestServer *server, const gchar *const *headers, gdouble seconds)
{
  g_autofree gchar *url = test_server_url (server, "/jobs");
  g_autofree gchar *body =
      g_strdup_printf ("{\"fn\": \"spin\", \"args\": {\"seconds\": %g, \"grain\": 5}}", seconds);
  g_autoptr (TestReply) r = test_http_body ("POST", url, headers, body);

  g_assert_cmpint (r->status, ==, 202);
  return g_strdup (g_hash_table_lookup (r->headers, "location"));
}

/* GET the job: its description. */
static JsonObject *
describe (TestServer *server, const gchar *header, const gchar *job)
{
  g_autofree gchar *url = test_server_url (server, job);
  g_autoptr (TestReply) r = test_http ("GET", url, (const gchar *[]){header, NULL});

  g_assert_cmpint (r->status, ==, 200);
  return parse (r);
}

static gboolean
is_state (TestServer *server, const gchar *header, const gchar *job, const gchar *state)
{
  g_autoptr (JsonObject) o = describe (server, header, job);

  return g_str_equal (json_object_get_string_member (o, "state"), state);
}

/* A flood of 50 low-priority jobs, then one high-priority job: it starts at the next free
 * worker (it waits about one job's run time, 0.2 s), long before the flood's last job (10 s).
 * The bound leaves 0.4 s for a loaded machine. */
static void
test_flood (void)
{
  g_autoptr (Setup) s = start (1, 9, "");
  const gchar *low[] = {s->low, NULL}, *high[] = {s->high, NULL};
  g_autofree gchar *last = NULL, *urgent = NULL;
  g_autoptr (JsonObject) o = NULL;
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  gdouble queued;

  for (gint i = 0; i < 50; i++) { /* 50 x 0.2 s: 10 s of work for the one worker */
    g_free (last);
    last = post (s->server, low, 0.2);
  }
  urgent = post (s->server, high, 0.05);
  while (!is_state (s->server, s->high, urgent, "done")) {
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (5000);
  }
  o = describe (s->server, s->high, urgent);
  queued = json_object_get_double_member (o, "queued_seconds");
  g_test_message ("the high-priority job waited %.3f s behind a flood of 50 x 0.2 s", queued);
  g_assert_cmpfloat (queued, <=, 0.6 * TEST_TIME_SCALE); /* about one job's 0.2 s */
  g_assert_true (is_state (s->server, s->low, last, "queued"));
}

/* priority_aging = 0.2: a class-0 job behind a steady stream of class-2 jobs outranks them once
 * it has waited about 0.4 s, and runs while they still wait; without aging it would wait 3 s. */
static void
test_aging (void)
{
  g_autoptr (Setup) s = start (0, 2, "[executor]\npriority_aging = 0.2\n");
  const gchar *low[] = {s->low, NULL}, *high[] = {s->high, NULL};
  g_autofree gchar *before = NULL, *job = NULL;
  g_autoptr (JsonObject) o = NULL;
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  guint more = 0;

  for (gint i = 0; i < 60; i++) { /* 3 s of work */
    g_free (before);
    before = post (s->server, high, 0.05);
  }
  job = post (s->server, low, 0.05);
  while (!is_state (s->server, s->low, job, "done")) {
    g_free (post (s->server, high, 0.05)); /* the high-priority load keeps coming */
    more++;
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (5000);
  }
  o = describe (s->server, s->low, job);
  g_test_message ("the low job waited %.3f s; %u more high jobs came meanwhile",
                  json_object_get_double_member (o, "queued_seconds"), more);
  g_assert_true (is_state (s->server, s->high, before, "queued"));
  g_assert_cmpfloat (json_object_get_double_member (o, "queued_seconds"), <, 1.5 * TEST_TIME_SCALE);
}

/* Without a key: [executor] default_priority (3 here); Crunch-Priority may lower it, never raise
 * it; a malformed one is a 400. */
static void
test_header (void)
{
  TestServer *server = NULL;
  g_autofree gchar *ini = test_ini_with_spin (
      "[executor]\nthreads = 1\ncoalesce = false\ndefault_priority = 3\n[jobs]\nstore = memory\n"
      "[server]\nshutdown_timeout = 0\n");
  g_autofree gchar *blocker = NULL, *lowered = NULL, *plain = NULL, *raised = NULL;
  g_autofree gchar *url = NULL;
  g_autoptr (TestReply) bad = NULL;
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  server = test_server_start (ini, NULL);
  /* 1 s: time for the three to queue up behind it; lowered runs 5 s (the stop cancels it), so it
   * is surely not done when raised is */
  blocker = post (server, NULL, 1.0);
  lowered = post (server, (const gchar *[]){"Crunch-Priority: 1", NULL}, 5.0);
  plain = post (server, NULL, 0.1);
  raised = post (server, (const gchar *[]){"Crunch-Priority: 9", NULL}, 0.1); /* stays 3 */
  while (!is_state (server, NULL, raised, "done")) {
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (5000);
  }
  g_assert_true (is_state (server, NULL, plain, "done"));    /* ran first: same class, FIFO */
  g_assert_false (is_state (server, NULL, lowered, "done")); /* last (it may just have started) */
  url = test_server_url (server, "/fn/spin?seconds=0");
  bad = test_http ("GET", url, (const gchar *[]){"Crunch-Priority: high", NULL});
  g_assert_cmpint (bad->status, ==, 400);
  g_assert_cmpstr (bad->body, ==, "Crunch-Priority: expected an integer from 0 to 9, got 'high'\n");
  g_free (url);
  url = test_server_url (server, "/jobs");
  g_clear_pointer (&bad, test_reply_free);
  bad = test_http_body ("POST", url, (const gchar *[]){"Crunch-Priority: -1", NULL},
                        "{\"fn\": \"spin\", \"args\": {\"seconds\": 0}}");
  g_assert_cmpint (bad->status, ==, 400);
  g_assert_cmpstr (bad->body, ==, "Crunch-Priority: expected an integer from 0 to 9, got '-1'\n");
  g_free (url);
  url = test_server_url (server, plain); /* only a submission reads the header */
  g_clear_pointer (&bad, test_reply_free);
  bad = test_http ("GET", url, (const gchar *[]){"Crunch-Priority: high", NULL});
  g_assert_cmpint (bad->status, ==, 200);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* GET /fn/spin?seconds=S with Request-Timeout: T. */
static TestReply *
spin_with_timeout (TestServer *server, gdouble seconds, const gchar *timeout)
{
  g_autofree gchar *path = g_strdup_printf ("/fn/spin?seconds=%g", seconds);
  g_autofree gchar *url = test_server_url (server, path);
  g_autofree gchar *header = g_strdup_printf ("Request-Timeout: %s", timeout);

  return test_http ("GET", url, (const gchar *[]){header, NULL});
}

static guint
retry_after (const TestReply *r)
{
  return (guint)g_ascii_strtoull (g_hash_table_lookup (r->headers, "retry-after"), NULL, 10);
}

/* Keeps `count` spin(0.1) calls waiting (their statuses come with g_thread_join()). */
static GThread *
fill (TestServer *server, guint count)
{
  g_autofree gchar *url = test_server_url (server, "/fn/spin?seconds=0.1&grain=5");

  return test_http_many_async (url, count, NULL, 0);
}

/* A refusal's body: "spin: predicted wait W s + run R s exceeds the deadline of 0.5 s", R the
 * estimate of spin(0.1) (more on a loaded machine, where a spin by the clock overruns). A 503
 * with the prediction is a refusal at admission: one after the deadline would be a 504. */
static void
assert_predicted (const TestReply *r)
{
  g_assert_cmpint (r->status, ==, 503);
  if (!g_regex_match_simple ("^spin: predicted wait [0-9.]+ s \\+ run 0\\.[1-4] s exceeds the "
                             "deadline of 0\\.5 s\n$",
                             r->body, 0, 0))
    g_error ("not a prediction: %s", r->body);
}

/* No estimate yet: not refused. With one: a call that cannot meet its deadline behind the queue
 * is refused at once with the prediction, Retry-After grows with the queue, one that fits is
 * admitted, and /metrics counts reason="deadline". */
static void
test_deadline (void)
{
  g_autofree gchar *ini = test_ini_with_spin (
      "[executor]\nthreads = 1\nqueue_limit = 100\nper_client_limit = 0\ncoalesce = false\n"
      "[server]\nshutdown_timeout = 0\n");
  TestServer *server = test_server_start (ini, NULL);
  g_autoptr (TestReply) first = NULL, shallow = NULL, fits = NULL, deep = NULL, m = NULL;
  g_autofree gchar *metrics = test_server_url (server, "/metrics");
  const gchar *queued, *estimate;
  GThread *a, *b;

  /* before any spin has finished there is no estimate: admitted, then 504 (sent after a fill, it
   * could come once the fill's first spin had finished, and be refused on its estimate) */
  first = spin_with_timeout (server, 0.1, "0.05");
  g_assert_cmpint (first->status, ==, 504);
  a = fill (server, 5);
  g_array_unref (g_thread_join (a)); /* now spin's estimate is about 0.1 s */

  a = fill (server, 10); /* about 1 s of work */
  g_assert_cmpfloat (test_wait_metric_at_least (server, "crunchd_jobs_queued", 7), >=, 7);
  shallow = spin_with_timeout (server, 0.1, "0.5");
  assert_predicted (shallow);
  fits = spin_with_timeout (server, 0.1, "5"); /* waits for the queue, then 200 */
  g_assert_cmpint (fits->status, ==, 200);
  b = fill (server, 30); /* about 3 s of work */
  g_assert_cmpfloat (test_wait_metric_at_least (server, "crunchd_jobs_queued", 25), >=, 25);
  deep = spin_with_timeout (server, 0.1, "0.5");
  assert_predicted (deep);
  g_strchomp (shallow->body);
  g_strchomp (deep->body);
  g_test_message ("%s: Retry-After %u s; deeper: %s: Retry-After %u s", shallow->body,
                  retry_after (shallow), deep->body, retry_after (deep));
  g_assert_cmpuint (retry_after (shallow), >=, 1);
  g_assert_cmpuint (retry_after (deep), >, retry_after (shallow));
  m = test_http ("GET", metrics, NULL);
  g_assert_nonnull (
      strstr (m->body, "\ncrunchd_rejections_total{reason=\"deadline\",status=\"503\"} 2\n"));
  /* the estimate admission used, and the jobs waiting in the default class */
  estimate = strstr (m->body, "\ncrunchd_function_run_estimate_seconds{function=\"spin\"} ");
  g_assert_nonnull (estimate);
  g_assert_cmpfloat (g_ascii_strtod (strchr (estimate, '}') + 2, NULL), >=, 0.1);
  g_assert_cmpfloat (g_ascii_strtod (strchr (estimate, '}') + 2, NULL), <, 0.45); /* as above */
  queued = strstr (m->body, "\ncrunchd_jobs_queued_by_priority{priority=\"5\"} ");
  g_assert_nonnull (queued);
  g_assert_cmpuint (g_ascii_strtoull (strchr (queued, '}') + 2, NULL, 10), >=, 10);
  g_assert_cmpint (test_server_stop (server), ==, 0);
  g_array_unref (g_thread_join (a));
  g_array_unref (g_thread_join (b));
}

/* A client over per_client_limit gets 429 with Retry-After from its own queued work: with three
 * spin(0.5) in flight (one runs, two wait), about 1.5 s, so 2. */
static void
test_client_limit (void)
{
  g_autofree gchar *ini =
      test_ini_with_spin ("[executor]\nthreads = 1\nper_client_limit = 3\ncoalesce = false\n"
                          "[server]\nshutdown_timeout = 0\n");
  TestServer *server = test_server_start (ini, NULL);
  g_autofree gchar *url = test_server_url (server, "/fn/spin?seconds=0.5&grain=5");
  g_autoptr (TestReply) once = test_http ("GET", url, NULL), limited = NULL;
  GThread *held;

  g_assert_cmpint (once->status, ==, 200); /* the estimate: 0.5 s */
  held = test_http_many_async (url, 3, NULL, 0);
  g_assert_cmpfloat (test_wait_metric (server, "crunchd_jobs_queued", 2), ==, 2);
  limited = test_http ("GET", url, NULL);
  g_assert_cmpint (limited->status, ==, 429);
  g_test_message ("429 with Retry-After %u s", retry_after (limited));
  g_assert_cmpuint (retry_after (limited), >=, 2);
  g_assert_cmpuint (retry_after (limited), <=, 3);
  g_assert_cmpint (test_server_stop (server), ==, 0);
  g_array_unref (g_thread_join (held));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/priority/flood", test_flood);
  g_test_add_func ("/priority/aging", test_aging);
  g_test_add_func ("/priority/header", test_header);
  g_test_add_func ("/priority/deadline", test_deadline);
  g_test_add_func ("/priority/client-limit", test_client_limit);
  return g_test_run ();
}
