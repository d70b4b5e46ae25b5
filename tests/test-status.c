/* test-status.c - the live status page in a real browser (headless Chromium) while crunchd is
 * under load: the page must show live numbers (its request counter increases from sample to
 * sample) and fetch nothing but crunchd's own files. Saves a screenshot to
 * $CRUNCHD_TEST_OUTPUT/status.png (default tests/output/). While a slow job runs, the page's
 * progress bar follows the job's events (tests/browser/status-progress.mjs, with puppeteer-core):
 * screenshot status-progress.png. */
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

static TestServer *server;
static gint stop_load;

/* Background load for the page to show: /fast requests and jobs of a few hundred ms. */
static gpointer
load_thread (gpointer data)
{
  g_autofree gchar *fast = test_server_url (server, "/fast");
  g_autofree gchar *slow = g_strdup_printf ("%s/fib/%u", server->base, GPOINTER_TO_UINT (data));
  gint64 until = g_get_monotonic_time () + 60 * G_USEC_PER_SEC; /* bounded whatever happens */

  for (guint i = 0; !g_atomic_int_get (&stop_load) && g_get_monotonic_time () < until; i++) {
    test_reply_free (test_http ("GET", i % 10 == 0 ? slow : fast, NULL));
    g_usleep (5000);
  }
  return NULL;
}

/* The browser, or NULL (the test is skipped; under CI it fails, CI installs it). */
static gchar *
find_chromium (void)
{
  gchar *path = g_find_program_in_path ("chromium");

  if (path == NULL && g_getenv ("CI") != NULL)
    g_error ("chromium not found (Debian package chromium; scripts/install-deps installs it)");
  return path;
}

/* Runs headless Chromium on the status page with `extra` arguments; returns its stdout. A fresh
 * profile each time (removed after), no network use beyond the page itself, bounded in time. */
static gchar *
run_chromium (const gchar *chromium, const gchar *extra, const gchar *profile)
{
  g_autofree gchar *url = test_server_url (server, "/status");
  g_autofree gchar *quoted = g_shell_quote (profile);
  g_autofree gchar *cmd =
      g_strdup_printf ("timeout 120 %s --headless --no-sandbox --disable-gpu --no-first-run "
                       "--disable-background-networking --disable-component-update --disable-sync "
                       "--disable-default-apps --hide-scrollbars --user-data-dir=%s %s %s",
                       chromium, quoted, extra, url);
  g_autofree gchar *err = NULL;
  gchar *out = NULL;
  gint status;

  g_autofree gchar *cleanup = g_strdup_printf ("rm -rf %s", quoted);

  g_test_message ("%s", cmd);
  g_assert_true (g_spawn_command_line_sync (cmd, &out, &err, &status, NULL));
  g_spawn_command_line_sync (cleanup, NULL, NULL, NULL, NULL); /* the throwaway profile */
  if (!g_spawn_check_wait_status (status, NULL))
    g_error ("chromium failed:\n%s", err);
  return out;
}

static GArray *
parse_history (const gchar *dom)
{
  g_autoptr (GRegex) re = g_regex_new ("data-requests-history=\"([0-9,]*)\"", 0, 0, NULL);
  g_autoptr (GMatchInfo) match = NULL;
  g_autofree gchar *list = NULL;
  g_auto (GStrv) items = NULL;
  GArray *values = g_array_new (FALSE, FALSE, sizeof (guint64));

  if (!g_regex_match (re, dom, 0, &match))
    g_error ("no data-requests-history in the page:\n%s", dom);
  list = g_match_info_fetch (match, 1);
  items = g_strsplit (list, ",", -1);
  for (gchar **it = items; *it != NULL && **it != '\0'; it++) {
    guint64 v = g_ascii_strtoull (*it, NULL, 10);
    g_array_append_val (values, v);
  }
  return values;
}

static void
test_live_numbers (void)
{
  g_autofree gchar *chromium = find_chromium ();
  g_autofree gchar *profile = NULL, *dom = NULL;
  g_autoptr (GArray) history = NULL;

  if (chromium == NULL) {
    g_test_skip ("chromium not installed");
    return;
  }
  profile = g_dir_make_tmp ("crunchd-chromium-XXXXXX", NULL);
  /* virtual time: the page's one-second polls run as fast as the server answers them */
  dom = run_chromium (chromium, "--virtual-time-budget=6000 --dump-dom", profile);
  history = parse_history (dom);
  g_test_message ("requests counter as the page saw it: %u samples", history->len);
  g_assert_cmpuint (history->len, >=, 3);
  for (guint i = 1; i < history->len; i++)
    g_assert_cmpuint (g_array_index (history, guint64, i), >,
                      g_array_index (history, guint64, i - 1));
  g_assert_nonnull (strstr (dom, "class=\"live ok\""));
  g_assert_nonnull (strstr (dom, "<td>/fast</td>"));
  g_assert_nonnull (strstr (dom, "<td>fib</td>"));
  g_assert_null (strstr (dom, "no answer from crunchd"));
}

static void
test_screenshot (void)
{
  g_autofree gchar *chromium = find_chromium ();
  const gchar *dir = g_getenv ("CRUNCHD_TEST_OUTPUT");
  g_autofree gchar *outdir = g_strdup (dir != NULL ? dir : "tests/output");
  g_autofree gchar *png = g_build_filename (outdir, "status.png", NULL);
  g_autofree gchar *quoted = g_shell_quote (png);
  g_autofree gchar *extra = g_strdup_printf (
      "--window-size=1280,1000 --virtual-time-budget=6000 --screenshot=%s", quoted);
  g_autofree gchar *profile = NULL, *out = NULL, *data = NULL;
  gsize size = 0;

  if (chromium == NULL) {
    g_test_skip ("chromium not installed");
    return;
  }
  g_assert_cmpint (g_mkdir_with_parents (outdir, 0755), ==, 0);
  g_remove (png);
  profile = g_dir_make_tmp ("crunchd-chromium-XXXXXX", NULL);
  out = run_chromium (chromium, extra, profile);
  g_assert_true (g_file_get_contents (png, &data, &size, NULL));
  g_assert_cmpuint (size, >, 10000); /* a rendered page, not a blank one */
  g_assert_cmpmem (data, 8, "\x89PNG\r\n\x1a\n", 8);
  g_test_message ("screenshot: %s", png);
}

/* puppeteer-core's node_modules (scripts/install-deps), or NULL when it is not installed. */
static gchar *
puppeteer_modules (void)
{
  g_autofree gchar *modules =
      g_build_filename (g_get_user_cache_dir (), "crunchd", "npm", "node_modules", NULL);
  g_autofree gchar *package = g_build_filename (modules, "puppeteer-core", "package.json", NULL);

  if (g_file_test (package, G_FILE_TEST_EXISTS))
    return g_steal_pointer (&modules);
  if (g_getenv ("CI") != NULL)
    g_error ("puppeteer-core not found under %s (scripts/install-deps installs it)", modules);
  return NULL;
}

/* Runs the browser script on `url`; its one line of JSON. */
static JsonObject *
watch_page (const gchar *chromium, const gchar *modules, const gchar *url, const gchar *png)
{
  g_autofree gchar *script = g_build_filename (g_getenv ("CRUNCHD_SRCDIR"), "tests", "browser",
                                               "status-progress.mjs", NULL);
  const gchar *argv[] = {"timeout", "120", "node", script, modules, chromium, url, png, NULL};
  g_autofree gchar *out = NULL, *err = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();
  gint status;

  g_assert_true (g_spawn_sync (NULL, (gchar **)argv, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, &out,
                               &err, &status, NULL));
  if (!g_spawn_check_wait_status (status, NULL))
    g_error ("the browser script failed:\n%s%s", out, err);
  g_test_message ("the page saw: %s", out);
  g_assert_true (json_parser_load_from_data (parser, out, -1, NULL));
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

/* A slow job's progress bar moves with the events of the page's own EventSource. */
static void
test_progress_bar (void)
{
  g_autofree gchar *chromium = find_chromium ();
  g_autofree gchar *modules = puppeteer_modules ();
  const gchar *dir = g_getenv ("CRUNCHD_TEST_OUTPUT");
  g_autofree gchar *png =
      g_build_filename (dir != NULL ? dir : "tests/output", "status-progress.png", NULL);
  g_autofree gchar *ini = NULL, *jobs = NULL, *page = NULL, *events = NULL;
  g_autoptr (TestServer) s = NULL;
  g_autoptr (TestReply) posted = NULL;
  g_autoptr (JsonObject) seen = NULL;
  const gchar *id;
  JsonArray *fractions, *requests;
  gboolean watched = FALSE;

  if (chromium == NULL || modules == NULL) {
    g_test_skip ("chromium or puppeteer-core not installed");
    return;
  }
  ini = test_ini_with_spin ("[jobs]\nstore = memory\n");
  s = test_server_start (ini, NULL);
  jobs = test_server_url (s, "/jobs");
  posted = test_http_body ("POST", jobs, NULL,
                           "{\"fn\": \"spin\", \"args\": {\"seconds\": 60, \"grain\": 20}}");
  g_assert_cmpint (posted->status, ==, 202);
  id = (const gchar *)g_hash_table_lookup (posted->headers, "location") + 6;
  g_assert_cmpint (g_mkdir_with_parents (dir != NULL ? dir : "tests/output", 0755), ==, 0);
  page = test_server_url (s, "/status");
  seen = watch_page (chromium, modules, page, png);
  g_assert_cmpstr (json_object_get_string_member (seen, "job"), ==, id);
  g_assert_cmpstr (json_object_get_string_member (seen, "fn"), ==, "spin");
  fractions = json_object_get_array_member (seen, "events");
  g_assert_cmpuint (json_array_get_length (fractions), >=, 3);
  for (guint i = 1; i < json_array_get_length (fractions); i++)
    g_assert_cmpfloat (json_array_get_double_element (fractions, i), >,
                       json_array_get_double_element (fractions, i - 1));
  g_assert_true (g_str_has_suffix (json_object_get_string_member (seen, "width"), "%"));
  g_assert_nonnull (strstr (json_object_get_string_member (seen, "text"), " s"));
  events = g_strconcat ("/jobs/", id, "/events", NULL);
  requests = json_object_get_array_member (seen, "requests");
  for (guint i = 0; i < json_array_get_length (requests); i++)
    watched |= g_str_equal (json_array_get_string_element (requests, i), events);
  g_assert_true (watched);
  g_assert_true (g_file_test (png, G_FILE_TEST_EXISTS));
  g_test_message ("screenshot: %s", png);
  {
    g_autofree gchar *job = test_server_url (s, events + 0);
    job[strlen (job) - strlen ("/events")] = '\0';
    test_reply_free (test_http ("DELETE", job, NULL));
  }
}

/* Everything the page loads comes from crunchd: no absolute URLs in what it serves. */
static void
test_self_contained (void)
{
  const gchar *paths[] = {"/status", "/status/status.js", "/status/status.css"};

  for (gsize i = 0; i < G_N_ELEMENTS (paths); i++) {
    g_autofree gchar *url = test_server_url (server, paths[i]);
    g_autoptr (TestReply) r = test_http ("GET", url, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_null (strstr (r->body, "http://"));
    g_assert_null (strstr (r->body, "https://"));
    g_assert_null (strstr (r->body, "//cdn"));
  }
}

int
main (int argc, char **argv)
{
  GThread *load;
  gint status;

  g_test_init (&argc, &argv, NULL);
  server = test_server_start ("[fib]\nmax_n = 60\n", (const gchar *[]){"--threads=2", NULL});
  /* the page's tables then have rows from the first sample on */
  test_reply_free (test_http ("GET", server->base, NULL));
  for (gint i = 0; i < 2; i++) {
    g_autofree gchar *url = test_server_url (server, i == 0 ? "/fast" : "/fib/20");
    test_reply_free (test_http ("GET", url, NULL));
  }
  load = g_thread_new ("load", load_thread, GUINT_TO_POINTER (test_fib_n_for (server, 0.2)));
  g_test_add_func ("/status/self-contained", test_self_contained);
  g_test_add_func ("/status/live-numbers", test_live_numbers);
  g_test_add_func ("/status/screenshot", test_screenshot);
  g_test_add_func ("/status/progress-bar", test_progress_bar);
  status = g_test_run ();
  g_atomic_int_set (&stop_load, TRUE);
  g_thread_join (load);
  g_assert_cmpint (test_server_stop (server), ==, 0);
  return status;
}
