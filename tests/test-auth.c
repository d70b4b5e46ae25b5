/* test-auth.c - API keys against the real binary: 401/403/429 and their headers, public routes,
 * the ops permission and listener, jobs owned by their key, --new-key output pasted into a keys
 * file, a bad keys file (exit 78), and keys reloaded under load with nothing dropped. */
#include <signal.h>
#include <string.h>

#include "harness.h"

typedef struct {
  gchar *dir;  /* holds the keys file */
  gchar *path; /* the keys file */
} Keys;

static void
keys_free (Keys *keys)
{
  test_remove_dir (keys->dir);
  g_free (keys->dir);
  g_free (keys->path);
  g_free (keys);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Keys, keys_free)

/* `crunchd --new-key NAME`: the group it prints (as pasted into a keys file) with `extra` lines
 * added, and the token in *token. */
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

static void
keys_write (Keys *keys, const gchar *text)
{
  g_autoptr (GError) error = NULL;

  g_file_set_contents (keys->path, text, -1, &error);
  g_assert_no_error (error);
}

static Keys *
keys_new (const gchar *text)
{
  Keys *keys = g_new0 (Keys, 1);

  keys->dir = g_dir_make_tmp ("crunchd-auth-XXXXXX", NULL);
  keys->path = g_build_filename (keys->dir, "keys", NULL);
  keys_write (keys, text);
  return keys;
}

static TestServer *
start (const Keys *keys, const gchar *extra)
{
  g_autofree gchar *base = g_strdup_printf ("[auth]\nkeys_file = %s\n"
                                            "[log]\naccess = common\naccess_buffer = 0\n"
                                            "[executor]\nthreads = 2\n%s",
                                            keys->path, extra);
  g_autofree gchar *ini = test_ini_with_spin (base);

  return test_server_start (ini, NULL);
}

static gchar *
bearer (const gchar *token)
{
  return g_strdup_printf ("Authorization: Bearer %s", token);
}

/* One request as `token` (NULL: none); the reply. */
static TestReply *
as (TestServer *server, const gchar *token, const gchar *method, const gchar *path,
    const gchar *body)
{
  g_autofree gchar *url = test_server_url (server, path);
  g_autofree gchar *header = token != NULL ? bearer (token) : NULL;

  return test_http_body (method, url, (const gchar *[]){header, NULL}, body);
}

static void
expect (TestServer *server, const gchar *token, const gchar *method, const gchar *path,
        const gchar *body, glong status)
{
  g_autoptr (TestReply) r = as (server, token, method, path, body);

  g_test_message ("%s %s -> %ld", method, path, r->status);
  g_assert_cmpint (r->status, ==, status);
}

static void
test_keys (void)
{
  g_autofree gchar *alice = NULL, *admin = NULL;
  g_autofree gchar *a = new_key ("alice", "functions = fi*\n", &alice);
  g_autofree gchar *b = new_key ("admin", "ops = true\n", &admin);
  g_autofree gchar *text = g_strconcat (a, b, NULL);
  g_autoptr (Keys) keys = keys_new (text);
  g_autoptr (TestServer) server = start (keys, "");
  g_autoptr (TestReply) none = as (server, NULL, "GET", "/fib/10", NULL);
  g_autoptr (TestReply) wrong = as (server, "not-a-key", "GET", "/fib/10", NULL);
  g_autoptr (TestReply) right = as (server, alice, "GET", "/fib/10", NULL);
  g_autofree gchar *log = NULL;

  g_assert_cmpint (none->status, ==, 401);
  g_assert_cmpstr (g_hash_table_lookup (none->headers, "www-authenticate"), ==,
                   "Bearer realm=\"crunchd\"");
  g_assert_cmpstr (none->body, ==, "an API key is required: Authorization: Bearer TOKEN\n");
  g_assert_cmpint (wrong->status, ==, 401);
  g_assert_cmpstr (g_hash_table_lookup (wrong->headers, "www-authenticate"), ==,
                   "Bearer realm=\"crunchd\", error=\"invalid_token\"");
  g_assert_cmpint (right->status, ==, 200);
  g_assert_cmpstr (right->body, ==, "55");
  /* a function the key's globs do not cover: 403, on /fn/ and through POST /jobs */
  expect (server, alice, "GET", "/fn/spin?seconds=0.01", NULL, 403);
  expect (server, alice, "POST", "/jobs", "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}", 403);
  expect (server, admin, "GET", "/fn/spin?seconds=0.01", NULL, 200);
  /* public routes need no key */
  expect (server, NULL, "GET", "/fast", NULL, 200);
  expect (server, NULL, "GET", "/healthz", NULL, 200);
  expect (server, NULL, "GET", "/fn", NULL, 401);
  /* ops routes on the public listener need ops = true */
  expect (server, NULL, "GET", "/metrics", NULL, 401);
  expect (server, alice, "GET", "/metrics", NULL, 403);
  g_autoptr (TestReply) metrics = as (server, admin, "GET", "/metrics", NULL);
  g_assert_cmpint (metrics->status, ==, 200);
  g_assert_nonnull (
      strstr (metrics->body, "crunchd_auth_requests_total{key=\"alice\",result=\"ok\"} 1\n"));
  g_assert_nonnull (strstr (metrics->body,
                            "crunchd_auth_requests_total{key=\"alice\",result=\"forbidden\"} 3\n"));
  g_assert_nonnull (
      strstr (metrics->body, "crunchd_auth_requests_total{key=\"\",result=\"unauthorized\"} 4\n"));
  g_assert_null (strstr (metrics->body, alice));
  log = test_server_log (server);
  g_assert_nonnull (strstr (log, "127.0.0.1 - alice ["));
  g_assert_null (strstr (log, alice)); /* the token is never logged */
}

/* [metrics] listen: the ops routes live there, open without a key. */
static void
test_ops_listener (void)
{
  g_autofree gchar *alice = NULL;
  g_autofree gchar *a = new_key ("alice", "", &alice);
  g_autoptr (Keys) keys = keys_new (a);
  g_autoptr (TestServer) server = start (keys, "[metrics]\nlisten = 127.0.0.1:0\n");
  const gchar *marker = "/status) on http://127.0.0.1:";
  g_autofree gchar *log = NULL, *url = NULL;
  const gchar *at = NULL;

  for (gint tries = 0; at == NULL && tries < 500; tries++) {
    g_free (log);
    log = test_server_log (server);
    at = strstr (log, marker);
    if (at == NULL)
      g_usleep (10000);
  }
  g_assert_nonnull (at);
  url = g_strdup_printf ("http://127.0.0.1:%u/metrics",
                         (guint)g_ascii_strtoull (at + strlen (marker), NULL, 10));
  g_autoptr (TestReply) open = test_http ("GET", url, NULL);
  g_assert_cmpint (open->status, ==, 200);
  expect (server, alice, "GET", "/metrics", NULL, 404); /* not served on the public one */
}

static void
test_rate (void)
{
  g_autofree gchar *slow = NULL, *one = NULL, *watcher = NULL;
  g_autofree gchar *a = new_key ("slow", "rate = 1/min\nburst = 2\n", &slow);
  g_autofree gchar *b = new_key ("one", "max_in_flight = 1\n", &one);
  g_autofree gchar *c = new_key ("watcher", "ops = true\n", &watcher);
  g_autofree gchar *text = g_strconcat (a, b, c, NULL);
  g_autoptr (Keys) keys = keys_new (text);
  g_autoptr (TestServer) server = start (keys, "");
  g_autofree gchar *spin = test_server_url (server, "/fn/spin?seconds=1");
  g_autofree gchar *header = bearer (one);
  GThread *held;
  g_autoptr (GArray) statuses = NULL;

  expect (server, slow, "GET", "/fn", NULL, 200);
  expect (server, slow, "GET", "/fn", NULL, 200);
  g_autoptr (TestReply) over = as (server, slow, "GET", "/fn", NULL);
  g_assert_cmpint (over->status, ==, 429);
  /* the bucket is empty and fills at one a minute: 60 s, or 59 if the first request was a second
   * ago */
  g_assert_true (g_strv_contains ((const gchar *const[]){"59", "60", NULL},
                                  g_hash_table_lookup (over->headers, "retry-after")));
  g_assert_cmpstr (over->body, ==, "key slow is over its rate of 1/min\n");

  held = test_http_many_async (spin, 1, (const gchar *[]){header, NULL}, 0);
  /* once the held request runs (seen in /metrics by another key, not after a fixed wait, which
   * missed under load), a second one of `one` is refused */
  for (gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;;) {
    g_autoptr (TestReply) m = as (server, watcher, "GET", "/metrics", NULL);
    g_assert_cmpint (m->status, ==, 200);
    if (strstr (m->body, "\ncrunchd_jobs_running 1\n") != NULL)
      break;
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (10000);
  }
  g_autoptr (TestReply) busy = as (server, one, "GET", "/fn", NULL);
  g_assert_cmpint (busy->status, ==, 429);
  g_assert_cmpstr (g_hash_table_lookup (busy->headers, "retry-after"), ==, "1");
  statuses = g_thread_join (held);
  g_assert_cmpint (g_array_index (statuses, glong, 0), ==, 200);
  /* its place is free once the request has ended, which its polling thread records a moment
   * after the client has the answer */
  for (gint64 until = g_get_monotonic_time () + G_USEC_PER_SEC; g_get_monotonic_time () < until;) {
    g_autoptr (TestReply) r = as (server, one, "GET", "/fn", NULL);
    if (r->status == 200)
      break;
    g_usleep (10000);
  }
  expect (server, one, "GET", "/fn", NULL, 200);
}

/* A job belongs to the key that created it: any other key is told it does not exist. */
static void
test_jobs_owner (void)
{
  g_autofree gchar *alice = NULL, *bob = NULL;
  g_autofree gchar *a = new_key ("alice", "", &alice);
  g_autofree gchar *b = new_key ("bob", "", &bob);
  g_autofree gchar *text = g_strconcat (a, b, NULL);
  g_autoptr (Keys) keys = keys_new (text);
  g_autoptr (TestServer) server = start (keys, "");
  g_autoptr (TestReply) created =
      as (server, alice, "POST", "/jobs", "{\"fn\": \"fib\", \"args\": {\"n\": 10}}");
  const gchar *job = g_hash_table_lookup (created->headers, "location");
  g_autofree gchar *result = NULL, *events = NULL;

  g_assert_cmpint (created->status, ==, 202);
  g_assert_nonnull (job);
  result = g_strconcat (job, "/result", NULL);
  events = g_strconcat (job, "/events", NULL);
  expect (server, bob, "GET", job, NULL, 404);
  expect (server, bob, "GET", result, NULL, 404);
  expect (server, bob, "GET", events, NULL, 404);
  expect (server, alice, "GET", events, NULL, 200);
  expect (server, bob, "DELETE", job, NULL, 404);
  expect (server, NULL, "GET", job, NULL, 401);
  expect (server, alice, "GET", job, NULL, 200);
}

/* A keys file that cannot be used stops crunchd at start (exit 78), naming what is wrong. */
static void
test_bad_keys (void)
{
  g_autoptr (Keys) keys = keys_new ("[alice]\nsha256 = 1234\n");
  g_autofree gchar *ini = g_build_filename (keys->dir, "crunchd.ini", NULL);
  g_autofree gchar *config = g_strdup_printf ("--config=%s", ini);
  g_autofree gchar *text = g_strdup_printf ("[auth]\nkeys_file = keys\n");
  g_autofree gchar *out = NULL, *err = NULL, *expected = NULL;
  const gchar *args[] = {config, "--listen=127.0.0.1:0", NULL};

  g_assert_true (g_file_set_contents (ini, text, -1, NULL));
  g_assert_cmpint (test_run_crunchd (args, &out, &err), ==, 78);
  expected = g_strdup_printf ("crunchd: %s: [alice] sha256 = '1234': expected 64 hex digits, the "
                              "SHA-256 of the token (crunchd --new-key NAME prints it)\n",
                              keys->path);
  g_assert_cmpstr (err, ==, expected);
  g_clear_pointer (&out, g_free);
  g_clear_pointer (&err, g_free);
  g_unlink (keys->path);
  g_assert_cmpint (test_run_crunchd (args, &out, &err), ==, 78);
  g_assert_true (g_str_has_prefix (err, "crunchd: "));
  g_assert_nonnull (strstr (err, ": [auth] keys_file = 'keys': "));
  g_assert_nonnull (strstr (err, ini));
}

typedef struct {
  TestServer *server;
  const gchar *token;
  gint stop;
  gint total; /* atomic: read while the loop runs */
  guint failed;
} Load;

/* A client loop: synchronous compute requests with a key that stays valid throughout. */
static gpointer
load_loop (gpointer data)
{
  Load *load = data;

  while (!g_atomic_int_get (&load->stop)) {
    g_autoptr (TestReply) r = as (load->server, load->token, "GET", "/fn/spin?seconds=0.005", NULL);
    g_atomic_int_inc (&load->total);
    if (r->status != 200) {
      g_printerr ("# under reload: %ld %s", r->status, r->body ? r->body : "");
      load->failed++;
    }
  }
  return NULL;
}

/* Waits until the load loop has made `more` requests more than `since` (bounded), so that
 * requests run between reloads however slowly a sanitized build on a busy machine goes. */
static void
wait_load (Load *load, gint since, gint more)
{
  gint64 until = g_get_monotonic_time () + (gint64)(5 * G_USEC_PER_SEC * TEST_TIME_SCALE);

  while (g_atomic_int_get (&load->total) < since + more && g_get_monotonic_time () < until)
    g_usleep (5000);
}

/* Reloads (SIGHUP) and waits until the log says the n-th one is done. */
static void
reload (TestServer *server, const gchar *needle, guint n)
{
  test_server_signal (server, SIGHUP);
  for (gint tries = 0; tries < 1000; tries++) {
    g_autofree gchar *log = test_server_log (server);
    if (test_count (log, needle) >= n)
      return;
    g_usleep (10000);
  }
  g_error ("reload %u: no '%s' in the log", n, needle);
}

static void
test_reload_under_load (void)
{
  g_autofree gchar *stay = NULL, *gone = NULL, *added = NULL;
  g_autofree gchar *s = new_key ("stay", "", &stay);
  g_autofree gchar *g = new_key ("gone", "", &gone);
  g_autofree gchar *a = new_key ("added", "", &added);
  g_autofree gchar *before = g_strconcat (s, g, NULL), *after = g_strconcat (a, s, NULL);
  g_autoptr (Keys) keys = keys_new (before);
  g_autoptr (TestServer) server = start (keys, "");
  Load load = {server, stay, FALSE, 0, 0};
  GThread *thread;

  thread = g_thread_new ("load", load_loop, &load);
  g_usleep (200000);
  expect (server, gone, "GET", "/fib/5", NULL, 200);
  expect (server, added, "GET", "/fib/5", NULL, 401);
  for (guint i = 1; i <= 6; i++) {
    keys_write (keys, i % 2 ? after : before);
    reload (server, "configuration reloaded", i);
    wait_load (&load, g_atomic_int_get (&load.total), 4);
  }
  keys_write (keys, after);
  reload (server, "configuration reloaded", 7);
  expect (server, gone, "GET", "/fib/5", NULL, 401);
  expect (server, added, "GET", "/fib/5", NULL, 200);
  /* a bad keys file on reload: logged, and the running keys stay */
  keys_write (keys, "[stay]\nsha256 = nope\n");
  reload (server, "reload failed", 1);
  expect (server, added, "GET", "/fib/5", NULL, 200);
  expect (server, gone, "GET", "/fib/5", NULL, 401);
  g_atomic_int_set (&load.stop, TRUE);
  g_thread_join (thread);
  g_test_message ("%d requests during the reloads", load.total);
  g_assert_cmpuint (load.failed, ==, 0);
  g_assert_cmpint (load.total, >, 20);
  g_autofree gchar *log = test_server_log (server);
  g_assert_nonnull (strstr (log, "[stay] sha256 = 'nope'"));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/auth/keys", test_keys);
  g_test_add_func ("/auth/ops-listener", test_ops_listener);
  g_test_add_func ("/auth/rate", test_rate);
  g_test_add_func ("/auth/jobs-owner", test_jobs_owner);
  g_test_add_func ("/auth/bad-keys", test_bad_keys);
  g_test_add_func ("/auth/reload-under-load", test_reload_under_load);
  return g_test_run ();
}
