/* test-proxies.c - [server] trusted_proxies against the real binary: the client address behind a
 * trusted proxy (access log, per-client limit), and spoofed headers from anyone else ignored.
 * The tests connect from 127.0.0.1, so "trusting 127.0.0.1" makes the test client a proxy. */
#include <string.h>

#include "harness.h"

/* The access log line of the request with this id (its client field first), or NULL. */
static gchar *
access_line (TestServer *server, const gchar *request_id)
{
  g_autofree gchar *log = test_server_log (server);
  g_auto (GStrv) lines = g_strsplit (log ? log : "", "\n", -1);
  g_autofree gchar *quoted = g_strdup_printf ("\"%s\"", request_id);

  for (gchar **l = lines; *l != NULL; l++) {
    if (strstr (*l, quoted) != NULL && strstr (*l, "\"GET /fast ") != NULL)
      return g_strdup (*l);
  }
  return NULL;
}

/* GET /fast with one header; the client address the access log gives it. */
static gchar *
logged_client (TestServer *server, const gchar *header, guint i)
{
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autofree gchar *id = g_strdup_printf ("proxy-test-%u", i);
  g_autofree gchar *id_header = g_strdup_printf ("X-Request-Id: %s", id);
  g_autoptr (TestReply) r = test_http ("GET", url, (const gchar *[]){id_header, header, NULL});
  g_autofree gchar *line = NULL;
  const gchar *dash;

  g_assert_cmpint (r->status, ==, 200);
  for (gint tries = 0; line == NULL && tries < 200; tries++) {
    line = access_line (server, id);
    if (line == NULL)
      g_usleep (10000);
  }
  g_assert_nonnull (line);
  /* "... crunchd: CLIENT - - [date] ..." or "CLIENT - - [date] ..." */
  dash = strstr (line, " - - [");
  g_assert_nonnull (dash);
  for (const gchar *start = dash; start > line; start--) {
    if (start[-1] == ' ')
      return g_strndup (start, (gsize)(dash - start));
  }
  return g_strndup (line, (gsize)(dash - line));
}

static void
test_untrusted_ignored (void)
{
  TestServer *server = test_server_start ("[log]\naccess = common\naccess_buffer = 0\n", NULL);
  const gchar *spoofs[] = {"X-Forwarded-For: 203.0.113.7", "Forwarded: for=203.0.113.7"};

  for (guint i = 0; i < G_N_ELEMENTS (spoofs); i++) {
    g_autofree gchar *client = logged_client (server, spoofs[i], i);
    g_assert_cmpstr (client, ==, "127.0.0.1");
  }
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

typedef struct {
  const gchar *header, *client;
} Expect;

static void
check_clients (const gchar *ini, const Expect *cases, guint n)
{
  TestServer *server = test_server_start (ini, NULL);

  for (guint i = 0; i < n; i++) {
    g_autofree gchar *client = logged_client (server, cases[i].header, i);
    g_test_message ("%s", cases[i].header);
    g_assert_cmpstr (client, ==, cases[i].client);
  }
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

static void
test_trusted_used (void)
{
  const Expect xff[] = {
      {"X-Forwarded-For: 203.0.113.7", "203.0.113.7"},
      {"X-Forwarded-For: 198.51.100.1, 203.0.113.7, 10.1.2.3", "203.0.113.7"},
      {"X-Forwarded-For: [2001:db8::5]:4711", "2001:db8::5"},
      /* a client's own Forwarded, passed on by a proxy that writes X-Forwarded-For: ignored */
      {"Forwarded: for=192.0.2.60", "127.0.0.1"},
      /* malformed from a trusted proxy: the proxy's own address */
      {"X-Forwarded-For: not-an-address", "127.0.0.1"},
      {"X-Api-Nothing: 1", "127.0.0.1"},
  };
  const Expect rfc[] = {
      {"Forwarded: for=\"[2001:db8::5]:4711\";proto=https", "2001:db8::5"},
      {"Forwarded: for=192.0.2.60, for=10.0.0.1", "192.0.2.60"},
      {"X-Forwarded-For: 203.0.113.7", "127.0.0.1"},
      {"Forwarded: for=\"192.0.2.60", "127.0.0.1"},
  };

  check_clients ("[server]\ntrusted_proxies = 10.0.0.0/8, 127.0.0.1/32, ::1/128\n"
                 "[log]\naccess = common\naccess_buffer = 0\n",
                 xff, G_N_ELEMENTS (xff));
  check_clients ("[server]\ntrusted_proxies = 10.0.0.0/8, 127.0.0.1\nproxy_header = Forwarded\n"
                 "[log]\naccess = common\naccess_buffer = 0\n",
                 rfc, G_N_ELEMENTS (rfc));
}

/* With one slow request in flight for 203.0.113.1 and per_client_limit = 1: another client behind
 * the proxy is admitted (it then waits for the one worker and meets its short deadline: 504),
 * the same one gets 429. From an untrusted peer the header changes nothing: 429. */
static void
run_limit (gboolean trusted)
{
  g_autofree gchar *ini = g_strdup_printf (
      "[executor]\nper_client_limit = 1\ncoalesce = false\n[server]\nshutdown_timeout = 0\n%s",
      trusted ? "trusted_proxies = 127.0.0.1\n" : "");
  TestServer *server = test_server_start (ini, (const gchar *[]){"--threads=1", NULL});
  guint n = test_fib_n_for (server, 30);
  g_autofree gchar *url = g_strdup_printf ("%s/fib/%u", server->base, n);
  g_autofree gchar *other = g_strdup_printf ("%s/fib/%u", server->base, n - 1);
  GThread *held = test_http_many_async (
      url, 1, (const gchar *[]){"X-Forwarded-For: 203.0.113.1", "Request-Timeout: 2", NULL}, 0);
  g_autoptr (GArray) held_status = NULL;

  g_assert_cmpfloat (test_wait_metric (server, "crunchd_jobs_running", 1), ==, 1);
  g_autoptr (TestReply) second =
      test_http ("GET", other,
                 (const gchar *[]){"X-Forwarded-For: 203.0.113.2", "Request-Timeout: 0.2", NULL});
  g_autoptr (TestReply) same =
      test_http ("GET", other,
                 (const gchar *[]){"X-Forwarded-For: 203.0.113.1", "Request-Timeout: 0.2", NULL});
  g_assert_cmpint (second->status, ==, trusted ? 504 : 429);
  g_assert_cmpint (same->status, ==, 429);
  held_status = g_thread_join (held);
  g_assert_cmpint (g_array_index (held_status, glong, 0), ==, 504);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

static void
test_per_client_limit (void)
{
  run_limit (TRUE);
  run_limit (FALSE);
}

static void
test_bad_config (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("crunchd-proxies-XXXXXX", NULL);
  g_autofree gchar *path = g_build_filename (dir, "crunchd.ini", NULL);
  g_autofree gchar *arg = g_strdup_printf ("--config=%s", path);
  g_autofree gchar *out = NULL, *err = NULL, *expect = NULL;

  g_assert_true (
      g_file_set_contents (path, "[server]\ntrusted_proxies = 127.0.0.1, 10.0.0.1/8\n", -1, NULL));
  g_assert_cmpint (test_run_crunchd ((const gchar *[]){arg, "--check-config", NULL}, &out, &err),
                   ==, 78);
  expect = g_strdup_printf ("crunchd: %s: [server] trusted_proxies = '127.0.0.1, 10.0.0.1/8': "
                            "'10.0.0.1/8': expected an address or ADDRESS/PREFIX with no host bits "
                            "set below the prefix (for example 10.0.0.0/8 or ::1/128)\n",
                            path);
  g_assert_cmpstr (err, ==, expect);
  test_remove_dir (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/proxies/untrusted-ignored", test_untrusted_ignored);
  g_test_add_func ("/proxies/trusted-used", test_trusted_used);
  g_test_add_func ("/proxies/per-client-limit", test_per_client_limit);
  g_test_add_func ("/proxies/bad-config", test_bad_config);
  return g_test_run ();
}
