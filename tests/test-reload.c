/* test-reload.c - SIGHUP: live settings change, a bad file changes nothing, requests in flight
 * finish. A reload is done when its log line appears; with libsystemd the tests also follow the
 * notify protocol (RELOADING=1 ... READY=1) and watch the thread count in STATUS=. */
#include <signal.h>
#include <string.h>

#include "harness.h"

#define WAIT_S 15.0

typedef struct {
  TestNotify *notify;
  TestServer *server;
} Fixture;

static void
fixture_start (Fixture *f, const gchar *ini)
{
  g_autofree gchar *socket_env = NULL;

  f->notify = test_notify_new ();
  socket_env = g_strdup_printf ("NOTIFY_SOCKET=%s", test_notify_path (f->notify));
  f->server = test_server_start_with (
      ini, NULL, &(TestServerSetup){.env = (const gchar *[]){socket_env, NULL}});
#ifdef HAVE_SYSTEMD
  g_free (test_notify_wait (f->notify, "READY=1", WAIT_S));
#endif
}

static void
fixture_stop (Fixture *f)
{
  g_assert_cmpint (test_server_stop (f->server), ==, 0);
  test_notify_free (f->notify);
}

static guint
count_reloads (TestServer *server)
{
  g_autofree gchar *log = test_server_log (server);

  return test_count (log, "configuration reloaded from") + test_count (log, "reload failed");
}

/* Writes the new file, sends SIGHUP and returns once crunchd has logged the outcome (and, with
 * libsystemd, notified RELOADING=1 and READY=1 again). */
static void
reload (Fixture *f, const gchar *ini)
{
  guint before = count_reloads (f->server);
  gint64 until = g_get_monotonic_time () + (gint64)(WAIT_S * G_USEC_PER_SEC);

  test_server_write_config (f->server, ini);
  test_server_signal (f->server, SIGHUP);
#ifdef HAVE_SYSTEMD
  g_autofree gchar *reloading = test_notify_wait (f->notify, "RELOADING=1", WAIT_S);
  g_autofree gchar *ready = test_notify_wait (f->notify, "READY=1", WAIT_S);
  g_assert_nonnull (reloading);
  g_assert_nonnull (ready);
#endif
  while (count_reloads (f->server) == before && g_get_monotonic_time () < until)
    g_usleep (10000);
  g_assert_cmpuint (count_reloads (f->server), ==, before + 1);
}

#ifdef HAVE_SYSTEMD
/* Waits for a STATUS= that contains `text` (status is refreshed every second). */
static void
assert_status (Fixture *f, const gchar *text)
{
  gint64 until = g_get_monotonic_time () + (gint64)(WAIT_S * G_USEC_PER_SEC);

  while (g_get_monotonic_time () < until) {
    g_autofree gchar *status = test_notify_wait (f->notify, "STATUS=", 1.5);
    if (status != NULL && strstr (status, text) != NULL)
      return;
  }
  g_error ("no STATUS= with \"%s\" within %.0f s", text, WAIT_S);
}
#endif

static long
get_status (TestServer *server, const gchar *path)
{
  g_autofree gchar *url = test_server_url (server, path);
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  return r->status;
}

static void
test_reload_max_n (void)
{
  Fixture f;

  fixture_start (&f, "[fib]\nmax_n = 30\n");
  g_assert_cmpint (get_status (f.server, "/fib/31"), ==, 400);
  g_assert_cmpint (get_status (f.server, "/fib/30"), ==, 200);
  reload (&f, "[fib]\nmax_n = 40\n");
  g_assert_cmpint (get_status (f.server, "/fib/31"), ==, 200);
  g_assert_cmpint (get_status (f.server, "/fib/41"), ==, 400);
  fixture_stop (&f);
}

#ifdef HAVE_SYSTEMD
/* Starts `n` calls of `path` at once and waits for STATUS= to show `expect` while they run. */
static void
observe_jobs (Fixture *f, guint n, const gchar *path, const gchar *expect)
{
  TestCall *calls[4];
  TestReply *replies[4];

  g_assert_cmpuint (n, <=, G_N_ELEMENTS (calls));
  for (guint i = 0; i < n; i++)
    calls[i] = test_call_start (test_server_url (f->server, path));
  assert_status (f, expect);
  for (guint i = 0; i < n; i++) {
    replies[i] = test_call_finish (calls[i]);
    g_assert_cmpint (replies[i]->status, ==, 200);
    test_reply_free (replies[i]);
  }
}

/* The worker pool grows on reload: two slow jobs run one after the other on one thread, side by
 * side after threads = 2. STATUS= shows what runs. The queue limit changes too. */
static void
test_reload_threads (void)
{
  Fixture f;
  g_autofree gchar *one = test_ini_with_spin ("[executor]\nthreads = 1\nqueue_limit = 8\n");
  g_autofree gchar *two = test_ini_with_spin ("[executor]\nthreads = 2\nqueue_limit = 20\n");
  const gchar *path = "/fn/spin?seconds=2.5"; /* STATUS= is refreshed every second */

  fixture_start (&f, one);
  assert_status (&f, "jobs: 0 running on 1 threads, 0 queued (limit 8)");
  observe_jobs (&f, 2, path, "jobs: 1 running on 1 threads, 1 queued (limit 8)");
  reload (&f, two);
  observe_jobs (&f, 2, path, "jobs: 2 running on 2 threads, 0 queued (limit 20)");
  fixture_stop (&f);
}
#endif

/* A file that does not load changes nothing: the old limits stay and the server answers. */
static void
test_reload_broken_file (void)
{
  Fixture f;
  g_autofree gchar *log = NULL;

  fixture_start (&f, "[fib]\nmax_n = 30\n");
  reload (&f, "[fib]\nmax_n = banana\n");
  g_assert_cmpint (get_status (f.server, "/fast"), ==, 200);
  g_assert_cmpint (get_status (f.server, "/fib/30"), ==, 200);
  g_assert_cmpint (get_status (f.server, "/fib/31"), ==, 400);
  log = test_server_log (f.server);
  g_assert_nonnull (strstr (log, "reload failed, keeping the running configuration"));
  g_assert_nonnull (strstr (log, "[fib] max_n"));
  fixture_stop (&f);
}

/* Settings read at start only (the listening daemon, worker processes, the job store) are
 * refused with a warning naming each changed key, the rest applies. Each reload compares with the
 * running values: the same file again warns again, the file put back warns no more (the [jobs]
 * keys were compared with the previous file, and [executor] kill_grace was not reported at all). */
static void
test_reload_restart_only (void)
{
  Fixture f;
  const gchar *changed = "[server]\nmax_connections = 600\n[executor]\nkill_grace = 2\n"
                         "[jobs]\nstore = sqlite\n[fib]\nmax_n = 31\n";
  const gchar *warning = "reload: changed keys that apply only after a restart, running values "
                         "kept: [server] max_connections, [executor] kill_grace, [jobs] store";

  fixture_start (&f, "[server]\nmax_connections = 500\n[jobs]\nstore = memory\n"
                     "[fib]\nmax_n = 30\n");
  reload (&f, changed);
  g_assert_cmpint (get_status (f.server, "/fib/31"), ==, 200);
  {
    g_autofree gchar *log = test_server_log (f.server);
    g_assert_nonnull (strstr (log, warning));
  }
  reload (&f, changed);
  reload (&f, "[server]\nmax_connections = 500\n[jobs]\nstore = memory\n[fib]\nmax_n = 30\n");
  {
    g_autofree gchar *log = test_server_log (f.server);
    g_assert_cmpuint (test_count (log, warning), ==, 2);
    g_assert_cmpuint (test_count (log, "apply only after a restart"), ==, 2);
  }
  fixture_stop (&f);
}

/* The job queue must fit in the connections in force: max_connections changes only at a restart,
 * so a reload that raises both is refused whole (it used to keep the old max_connections and take
 * the new queue_limit, and parked requests could then take every connection from /fast). */
static void
test_reload_queue_budget (void)
{
  Fixture f;
  g_autofree gchar *log = NULL;

  fixture_start (&f, "[server]\nmax_connections = 64\n[executor]\nthreads = 1\n"
                     "queue_limit = 40\n[fib]\nmax_n = 30\n");
  reload (&f, "[server]\nmax_connections = 100000\n[executor]\nthreads = 1\n"
              "queue_limit = 5000\n[fib]\nmax_n = 31\n");
  g_assert_cmpint (get_status (f.server, "/fib/31"), ==, 400); /* nothing of it applied */
  g_assert_cmpfloat (test_server_metric (f.server, "crunchd_queue_limit"), ==, 40);
  log = test_server_log (f.server);
  g_assert_nonnull (strstr (log, "reload failed, keeping the running configuration"));
  g_assert_nonnull (strstr (log, "[executor] queue_limit = '5000'"));
  g_assert_nonnull (strstr (log, "max_connections (64, in force until a restart)"));
  fixture_stop (&f);
}

/* Requests running and queued while the file is reloaded get their answers. */
static void
test_reload_in_flight (void)
{
  enum { CALLS = 3 };
  Fixture f;
  g_autofree gchar *before = test_ini_with_spin ("[executor]\nthreads = 1\n");
  g_autofree gchar *after = test_ini_with_spin ("[executor]\nthreads = 2\n[log]\nlevel = debug\n");
  const gchar *path = "/fn/spin?seconds=1.5";
  TestCall *calls[CALLS];
  TestReply *replies[CALLS];

  fixture_start (&f, before);
  for (guint i = 0; i < CALLS; i++)
    calls[i] = test_call_start (test_server_url (f.server, path));
#ifdef HAVE_SYSTEMD
  /* the first job runs; the others wait (or are still connecting): all are in flight */
  assert_status (&f, "jobs: 1 running on 1 threads, ");
#else
  g_usleep (300000);
#endif
  reload (&f, after);
  for (guint i = 0; i < CALLS; i++) {
    replies[i] = test_call_finish (calls[i]);
    g_assert_cmpint (replies[i]->curl_code, ==, 0);
    g_assert_cmpint (replies[i]->status, ==, 200);
    test_reply_free (replies[i]);
  }
  fixture_stop (&f);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/reload/max-n", test_reload_max_n);
#ifdef HAVE_SYSTEMD /* observed through STATUS= */
  g_test_add_func ("/reload/threads", test_reload_threads);
#endif
  g_test_add_func ("/reload/broken-file", test_reload_broken_file);
  g_test_add_func ("/reload/restart-only", test_reload_restart_only);
  g_test_add_func ("/reload/queue-budget", test_reload_queue_budget);
  g_test_add_func ("/reload/in-flight", test_reload_in_flight);
  return g_test_run ();
}
