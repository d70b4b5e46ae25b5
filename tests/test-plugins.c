/* test-plugins.c - loading plugins, calling functions over /fn/<name>, argument validation. */
#include <curl/curl.h>
#include <signal.h>
#include <string.h>

#include "harness.h"

static TestServer *server;

#define URL(path) g_autofree gchar *url = test_server_url (server, path)

static const gchar *
env_dir (const gchar *name)
{
  const gchar *dir = g_getenv (name);
  g_assert_nonnull (dir); /* set by make check */
  return dir;
}

/* ---- loading ---- */

static gint
check_config (const gchar *ini, gchar **err)
{
  g_autofree gchar *path = NULL;
  g_autofree gchar *arg = NULL;
  g_autofree gchar *out = NULL;
  gint fd = g_file_open_tmp ("crunchd-plugins-XXXXXX.ini", &path, NULL);
  gint status;

  g_assert_cmpint (fd, >=, 0);
  close (fd);
  g_assert_true (g_file_set_contents (path, ini, -1, NULL));
  arg = g_strdup_printf ("--config=%s", path);
  status = test_run_crunchd ((const gchar *const[]){arg, "--check-config", NULL}, &out, err);
  g_remove (path);
  return status;
}

static void
test_load_ok (void)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[plugins]\ndir = %s\nload = mandelbrot, spin, %s/alltypes.so\n",
                       env_dir ("CRUNCHD_PLUGINS"), env_dir ("CRUNCHD_TEST_PLUGINS"));
  g_autofree gchar *err = NULL;

  g_assert_cmpint (check_config (ini, &err), ==, 0);
}

static void
test_load_failures (void)
{
  const gchar *tp = env_dir ("CRUNCHD_TEST_PLUGINS");
  const struct {
    const gchar *load, *expect;
  } cases[] = {
      {"nosuch", "plugin 'nosuch': no such file @/nosuch.so ([plugins] dir = @)"},
      {"noentry", "plugin 'noentry': @/noentry.so has no entry point 'crunchd_plugin'"},
      {"badabi", "plugin 'badabi': built for plugin ABI 3, this crunchd loads ABI 1 to 2"},
      {"dup", "plugin 'dup': function 'fib' is already registered by plugin 'builtin'"},
      {"alltypes, alltypes",
       "plugin 'alltypes': function 'slow' is already registered by plugin 'alltypes'"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autofree gchar *ini = g_strdup_printf ("[plugins]\ndir = %s\nload = %s\n", tp, cases[i].load);
    g_auto (GStrv) parts = g_strsplit (cases[i].expect, "@", -1);
    g_autofree gchar *expect = g_strjoinv (tp, parts);
    g_autofree gchar *err = NULL;
    g_test_message ("load = %s", cases[i].load);
    g_assert_cmpint (check_config (ini, &err), ==, 78);
    if (strstr (err, expect) == NULL)
      g_error ("expected '%s' in: %s", expect, err);
  }
}

/* ---- calling ---- */

static void
expect (const gchar *method, const gchar *path, const gchar *body, long status, const gchar *text)
{
  URL (path);
  g_autoptr (TestReply) r = test_http_body (method, url, NULL, body);

  g_test_message ("%s %s %s", method, path, body ? body : "");
  g_assert_cmpint (r->status, ==, status);
  g_assert_cmpstr (r->body, ==, text);
}

static void
test_fib_through_fn (void)
{
  expect ("GET", "/fn/fib?n=10", NULL, 200, "55");
  expect ("POST", "/fn/fib", "{\"n\": 25}", 200, "75025");
  expect ("GET", "/fib/25", NULL, 200, "75025");
  expect ("GET", "/fn/fib?n=41", NULL, 400,
          "fib: argument 'n' must be an integer from 0 to 40, got '41'\n");
  expect ("GET", "/fn/fib", NULL, 400,
          "fib: missing argument 'n': must be an integer from 0 to 40\n");
  expect ("GET", "/fn/nope?n=1", NULL, 404, "no such function 'nope'\n");
  expect ("DELETE", "/fn/fib", NULL, 405, "method not allowed\n");
}

static void
test_types_valid (void)
{
  expect ("GET", "/fn/echo?i=-5&f=0.25&s=h%C3%A9&b=AAH%2F", NULL, 200,
          "i=-5 f=0.25 s=hé d=7 b=0001ff");
  expect ("GET", "/fn/echo?i=1000&f=-1&s=12345678&d=0", NULL, 200, "i=1000 f=-1 s=12345678 d=0 b=");
  expect ("POST", "/fn/echo", "{\"i\": 3, \"f\": 1, \"s\": \"x\", \"b\": \"/w==\", \"d\": 10}", 200,
          "i=3 f=1 s=x d=10 b=ff");
  expect ("POST", "/fn/echo", "{\"i\": 3, \"f\": 0.5, \"s\": \"x\"}", 200, "i=3 f=0.5 s=x d=7 b=");
}

static void
test_types_invalid (void)
{
  const struct {
    const gchar *method, *path, *body, *message;
  } cases[] = {
      /* int */
      {"GET", "/fn/echo?i=abc&f=0&s=x", NULL,
       "echo: argument 'i' must be an integer from -1000 to 1000, got 'abc'"},
      {"GET", "/fn/echo?i=1001&f=0&s=x", NULL,
       "echo: argument 'i' must be an integer from -1000 to 1000, got '1001'"},
      {"GET", "/fn/echo?i=1.5&f=0&s=x", NULL,
       "echo: argument 'i' must be an integer from -1000 to 1000, got '1.5'"},
      {"GET", "/fn/echo?i=&f=0&s=x", NULL,
       "echo: argument 'i' must be an integer from -1000 to 1000, got ''"},
      {"POST", "/fn/echo", "{\"i\": \"1\", \"f\": 0, \"s\": \"x\"}",
       "echo: argument 'i' must be an integer from -1000 to 1000, got a string"},
      {"POST", "/fn/echo", "{\"i\": 1.0, \"f\": 0, \"s\": \"x\"}",
       "echo: argument 'i' must be an integer from -1000 to 1000, got a number"},
      /* float */
      {"GET", "/fn/echo?i=1&f=2&s=x", NULL,
       "echo: argument 'f' must be a number from -1 to 1, got '2'"},
      {"GET", "/fn/echo?i=1&f=nan&s=x", NULL,
       "echo: argument 'f' must be a number from -1 to 1, got 'nan'"},
      {"GET", "/fn/echo?i=1&f=0.5x&s=x", NULL,
       "echo: argument 'f' must be a number from -1 to 1, got '0.5x'"},
      {"POST", "/fn/echo", "{\"i\": 1, \"f\": true, \"s\": \"x\"}",
       "echo: argument 'f' must be a number from -1 to 1, got a boolean"},
      /* string */
      {"GET", "/fn/echo?i=1&f=0&s=", NULL,
       "echo: argument 's' must be a UTF-8 string of 1 to 8 characters, got 0 characters"},
      {"GET", "/fn/echo?i=1&f=0&s=123456789", NULL,
       "echo: argument 's' must be a UTF-8 string of 1 to 8 characters, got 9 characters"},
      {"GET", "/fn/echo?i=1&f=0&s=%FF", NULL,
       "echo: argument 's' must be a UTF-8 string of 1 to 8 characters, got invalid UTF-8"},
      {"POST", "/fn/echo", "{\"i\": 1, \"f\": 0, \"s\": [1]}",
       "echo: argument 's' must be a UTF-8 string of 1 to 8 characters, got an array"},
      /* bytes */
      {"GET", "/fn/echo?i=1&f=0&s=x&b=AAA", NULL,
       "echo: argument 'b' must be base64 of 0 to 4 bytes, got invalid base64"},
      {"GET", "/fn/echo?i=1&f=0&s=x&b=AAAAAAAA", NULL,
       "echo: argument 'b' must be base64 of 0 to 4 bytes, got 6 bytes"},
      {"POST", "/fn/echo", "{\"i\": 1, \"f\": 0, \"s\": \"x\", \"b\": 5}",
       "echo: argument 'b' must be base64 of 0 to 4 bytes, got an integer"},
      /* names and shape */
      {"GET", "/fn/echo?i=1&f=0", NULL,
       "echo: missing argument 's': must be a UTF-8 string of 1 to 8 characters"},
      {"GET", "/fn/echo?i=1&f=0&s=x&zz=1", NULL,
       "echo: unknown argument 'zz' (arguments: i, f, s, b, d)"},
      {"GET", "/fn/echo?i=1&i=2&f=0&s=x", NULL, "echo: argument 'i' given more than once"},
      /* echoed input stays valid UTF-8 (the body is text/plain; charset=utf-8) and short */
      {"GET", "/fn/echo?i=1&f=0&s=x&%FF=1", NULL,
       "echo: unknown argument '\xEF\xBF\xBD' (arguments: i, f, s, b, d)"},
      {"GET",
       "/fn/echo?i=1&f=0&s=x&"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1",
       NULL,
       "echo: unknown argument "
       "'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...' "
       "(arguments: i, f, s, b, d)"},
      {"POST", "/fn/echo", "[1, 2]", "echo: the request body must be a JSON object of arguments"},
      {"POST", "/fn/echo", "{\"i\": ", NULL},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    URL (cases[i].path);
    g_autoptr (TestReply) r = test_http_body (cases[i].method, url, NULL, cases[i].body);
    g_test_message ("%s %s %s", cases[i].method, cases[i].path, cases[i].body ? cases[i].body : "");
    g_assert_cmpint (r->status, ==, 400);
    if (cases[i].message != NULL) {
      g_autofree gchar *line = g_strconcat (cases[i].message, "\n", NULL);
      g_assert_cmpstr (r->body, ==, line);
    } else {
      g_assert_true (g_str_has_prefix (r->body, "echo: the request body is not strict JSON "));
    }
  }
}

/* POST bodies are kept up to [server] max_body_size; beyond it 413, as for any route. */
static void
test_body_cap (void)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[server]\nmax_body_size = 64\n[plugins]\ndir = %s\n"
                       "load = %s/alltypes.so\n",
                       env_dir ("CRUNCHD_PLUGINS"), env_dir ("CRUNCHD_TEST_PLUGINS"));
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *url = test_server_url (s, "/fn/echo");
  g_autofree gchar *query_url = test_server_url (s, "/fn/echo?i=1");
  /* 64 bytes exactly, then one more */
  const gchar *fits =
      "{\"i\": 1, \"f\": 0.5, \"s\": \"abcdefgh\",     \"b\": \"AAAA\"}            ";
  g_autofree gchar *over = g_strconcat (fits, " ", NULL);
  g_autoptr (TestReply) a = test_http_body ("POST", url, NULL, fits);
  g_autoptr (TestReply) b = test_http_body ("POST", url, NULL, over);
  g_autoptr (TestReply) c = test_http_body ("POST", query_url, NULL, "{}");

  g_assert_cmpuint (strlen (fits), ==, 64);
  g_assert_cmpint (a->status, ==, 200);
  g_assert_cmpstr (a->body, ==, "i=1 f=0.5 s=abcdefgh d=7 b=000000");
  g_assert_cmpint (b->status, ==, 413);
  g_assert_cmpstr (b->body, ==, "request body too large\n");
  g_assert_cmpint (c->status, ==, 400);
  g_assert_cmpstr (c->body, ==,
                   "echo: with POST the arguments go in the JSON body, not in the query string\n");
}

/* Plugins are not loaded or unloaded on SIGHUP: the change is reported, the old set serves. */
static void
test_reload_keeps_plugins (void)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[plugins]\ndir = %s\nload = spin\n", env_dir ("CRUNCHD_PLUGINS"));
  g_autofree gchar *changed =
      g_strdup_printf ("[plugins]\ndir = %s\nload = mandelbrot\n", env_dir ("CRUNCHD_PLUGINS"));
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *path = g_build_filename (s->dir, "crunchd.ini", NULL);
  g_autofree gchar *spin = test_server_url (s, "/fn/spin?seconds=0");
  g_autofree gchar *mandel = test_server_url (s, "/fn/mandelbrot?size=1");
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  g_autoptr (TestReply) a = NULL, b = NULL;

  g_assert_true (g_file_set_contents (path, changed, -1, NULL));
  test_server_signal (s, SIGHUP);
  for (;;) {
    g_autofree gchar *log = test_server_log (s);
    if (strstr (log, "configuration reloaded") != NULL) {
      g_assert_nonnull (
          strstr (log, "apply only after a restart, running values kept: [plugins] load"));
      g_assert_null (strstr (log, "[plugins] dir")); /* unchanged */
      break;
    }
    g_assert_cmpint (g_get_monotonic_time (), <, until);
    g_usleep (20000);
  }
  a = test_http ("GET", spin, NULL);
  b = test_http ("GET", mandel, NULL);
  g_assert_cmpint (a->status, ==, 200);
  g_assert_cmpint (b->status, ==, 404);
}

static void
test_binary_result (void)
{
  URL ("/fn/mandelbrot?size=100&iter=50");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  const guchar *png = (const guchar *)r->body;
  /* signature + IHDR + IDAT(zlib header, one stored block, adler) + IEND */
  gsize expected = 8 + 25 + 12 + (2 + 5 + 100 * 101 + 4) + 12;

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==, "image/png");
  g_assert_cmpuint (r->body_len, ==, expected);
  g_assert_cmpmem (png, 8, "\x89PNG\r\n\x1a\n", 8);
  g_assert_cmpmem (png + 12, 4, "IHDR", 4);
  g_assert_cmpuint (png[16] << 24 | png[17] << 16 | png[18] << 8 | png[19], ==, 100);
  g_assert_cmpmem (png + r->body_len - 8, 4, "IEND", 4);
  g_assert_cmpint (memchr (png, 0, r->body_len) != NULL, ==, TRUE); /* really binary */
}

static void
test_plugin_error (void)
{
  expect ("GET", "/fn/fail", NULL, 500, "fail: failed on purpose\n");
}

/* GET with a client that gives up after `ms`: the status, or 0 if it gave up. */
static long
get_within (const gchar *url, glong ms)
{
  CURL *curl = curl_easy_init ();
  long status = 0;

  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, ms);
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (curl, CURLOPT_NOBODY, 1L);
  if (curl_easy_perform (curl) == CURLE_OK)
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup (curl);
  return status;
}

/* With one worker: after a long call is abandoned, does a short one get through soon? */
static gboolean
abandoned_work_is_cancelled (TestServer *s, const gchar *long_path)
{
  g_autofree gchar *long_url = test_server_url (s, long_path);
  g_autofree gchar *short_url = test_server_url (s, "/fn/echo?i=1&f=0&s=x");

  g_assert_cmpint (get_within (long_url, 300), ==, 0);
  return get_within (short_url, 3000) == 200;
}

static gchar *
one_worker_ini (const gchar *extra)
{
  return g_strdup_printf ("[executor]\nthreads = 1\n[server]\nshutdown_timeout = "
                          "0.2\n[plugins]\ndir = %s\nload = spin, %s/alltypes.so\n%s",
                          env_dir ("CRUNCHD_PLUGINS"), env_dir ("CRUNCHD_TEST_PLUGINS"), extra);
}

/* Cancellation on client hang-up: plugin functions get it exactly as fib does. */
static void
test_cancel_on_hang_up (void)
{
  g_autofree gchar *ini = one_worker_ini ("[fib]\nmax_n = 92\n");
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_assert_true (abandoned_work_is_cancelled (s, "/fib/70"));
  g_assert_true (abandoned_work_is_cancelled (s, "/fn/spin?seconds=20&grain=50"));
}

/* The same for deadlines: spin's own deadline is 30 s, so it gets a short one via the
 * `slow` function of the test plugin (deadline 0.5 s). */
static void
test_cancel_on_deadline (void)
{
  g_autofree gchar *ini = one_worker_ini ("[fib]\nmax_n = 92\ntimeout = 0.5\n");
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *fib_url = test_server_url (s, "/fib/70");
  g_autofree gchar *slow_url = test_server_url (s, "/fn/slow?seconds=20");
  g_autofree gchar *echo_url = test_server_url (s, "/fn/echo?i=1&f=0&s=x");
  g_autoptr (TestReply) fib = test_http ("GET", fib_url, NULL);
  g_autoptr (TestReply) slow = NULL;

  g_assert_cmpint (fib->status, ==, 504);
  slow = test_http ("GET", slow_url, NULL);
  g_assert_cmpint (slow->status, ==, 504);
  g_assert_cmpstr (slow->body, ==, "slow: deadline of 0.5 s exceeded\n");
  g_assert_cmpfloat (slow->seconds, <, 5.0);
  /* and the one worker is free again: the plugin really stopped */
  g_assert_cmpint (get_within (echo_url, 3000), ==, 200);
}

int
main (int argc, char **argv)
{
  g_autofree gchar *ini = NULL;
  gint status;

  g_test_init (&argc, &argv, NULL);
  ini = g_strdup_printf (
      "[fib]\nmax_n = 40\n[plugins]\ndir = %s\nload = mandelbrot, spin, %s/alltypes.so\n",
      env_dir ("CRUNCHD_PLUGINS"), env_dir ("CRUNCHD_TEST_PLUGINS"));
  server = test_server_start (ini, NULL);
  g_test_add_func ("/plugins/load-ok", test_load_ok);
  g_test_add_func ("/plugins/load-failures", test_load_failures);
  g_test_add_func ("/plugins/fib-through-fn", test_fib_through_fn);
  g_test_add_func ("/plugins/types-valid", test_types_valid);
  g_test_add_func ("/plugins/types-invalid", test_types_invalid);
  g_test_add_func ("/plugins/binary-result", test_binary_result);
  g_test_add_func ("/plugins/body-cap", test_body_cap);
  g_test_add_func ("/plugins/reload-keeps-plugins", test_reload_keeps_plugins);
  g_test_add_func ("/plugins/plugin-error", test_plugin_error);
  g_test_add_func ("/plugins/cancel-on-hang-up", test_cancel_on_hang_up);
  g_test_add_func ("/plugins/cancel-on-deadline", test_cancel_on_deadline);
  status = g_test_run ();
  g_assert_cmpint (test_server_stop (server), ==, 0);
  return status;
}
