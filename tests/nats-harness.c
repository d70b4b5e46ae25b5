/* nats-harness.c - see nats-harness.h. */
#include "nats-harness.h"

#include <curl/curl.h>
#include <gio/gio.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>

#define START_TIMEOUT_US (15 * G_USEC_PER_SEC)
#define STOP_TIMEOUT_US (20 * G_USEC_PER_SEC)

static void
die_with_parent (gpointer data)
{
  prctl (PR_SET_PDEATHSIG, SIGKILL);
}

static GSubprocess *
spawn (const gchar *const *argv, const gchar *log_path)
{
  g_autoptr (GSubprocessLauncher) launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_NONE);
  g_autoptr (GError) error = NULL;
  GSubprocess *proc;

  g_subprocess_launcher_set_stderr_file_path (launcher, log_path);
  g_subprocess_launcher_set_stdout_file_path (launcher, log_path);
  g_subprocess_launcher_set_child_setup (launcher, die_with_parent, NULL, NULL);
  g_subprocess_launcher_unsetenv (launcher, "NOTIFY_SOCKET");
  proc = g_subprocess_launcher_spawnv (launcher, argv, &error);
  g_assert_no_error (error);
  return proc;
}

/* Bounded: SIGTERM (or `signum`), then SIGKILL. Returns the exit status (128+signal). */
static gint
reap (GSubprocess *proc, gint signum)
{
  gint64 until = g_get_monotonic_time () + STOP_TIMEOUT_US;

  if (g_subprocess_get_identifier (proc) != NULL)
    g_subprocess_send_signal (proc, signum);
  while (g_subprocess_get_identifier (proc) != NULL && g_get_monotonic_time () < until) {
    g_main_context_iteration (NULL, FALSE);
    g_usleep (2000);
  }
  if (g_subprocess_get_identifier (proc) != NULL) {
    g_test_message ("pid %s did not stop; killing it", g_subprocess_get_identifier (proc));
    test_log_backtraces (g_subprocess_get_identifier (proc));
    g_subprocess_force_exit (proc);
    g_test_fail ();
  }
  g_subprocess_wait (proc, NULL, NULL);
  return g_subprocess_get_if_exited (proc) ? g_subprocess_get_exit_status (proc)
                                           : 128 + g_subprocess_get_term_sig (proc);
}

/* ---- nats-server ---- */

static void
nats_spawn (TestNats *nats)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
  g_autofree gchar *log = g_build_filename (nats->dir, "nats-server.log", NULL);
  gint64 until = g_get_monotonic_time () + START_TIMEOUT_US;

  g_ptr_array_add (argv, g_strdup ("nats-server"));
  g_ptr_array_add (argv, g_strdup ("-a"));
  g_ptr_array_add (argv, g_strdup ("127.0.0.1"));
  g_ptr_array_add (argv, g_strdup_printf ("--port=%u", nats->port));
  g_ptr_array_add (argv, g_strdup_printf ("--http_port=%u", nats->monitor_port));
  if (nats->cluster_port != 0) {
    g_ptr_array_add (argv, g_strdup ("--cluster_name=crunchd-test"));
    g_ptr_array_add (argv, g_strdup_printf ("--cluster=nats://127.0.0.1:%u", nats->cluster_port));
    if (nats->routes != NULL)
      g_ptr_array_add (argv, g_strdup_printf ("--routes=%s", nats->routes));
  }
  if (nats->conf != NULL) {
    g_ptr_array_add (argv, g_strdup ("-c"));
    g_ptr_array_add (argv, g_strdup (nats->conf));
  }
  if (nats->jetstream) {
    g_ptr_array_add (argv, g_strdup ("-js"));
    g_ptr_array_add (argv, g_strdup_printf ("--store_dir=%s", nats->dir));
  }
  g_ptr_array_add (argv, NULL);
  nats->proc = spawn ((const gchar *const *)argv->pdata, log);
  while (!test_port_open (nats->port)) {
    if (g_subprocess_get_identifier (nats->proc) == NULL || g_get_monotonic_time () > until) {
      g_autofree gchar *text = NULL;
      g_file_get_contents (log, &text, NULL, NULL);
      g_error ("nats-server did not start on port %u:\n%s", nats->port, text ? text : "");
    }
    g_usleep (5000);
  }
}

static TestNats *
nats_start (gboolean cluster, const gchar *routes, gboolean jetstream, const gchar *conf)
{
  TestNats *nats = g_new0 (TestNats, 1);
  g_autoptr (GError) error = NULL;
  guint16 ports[3];

  nats->dir = g_dir_make_tmp ("crunchd-nats-XXXXXX", &error);
  g_assert_no_error (error);
  test_free_ports (ports, 3);
  nats->port = ports[0];
  nats->monitor_port = ports[1];
  if (cluster)
    nats->cluster_port = ports[2];
  nats->routes = g_strdup (routes);
  nats->url = g_strdup_printf ("nats://127.0.0.1:%u", nats->port);
  nats->jetstream = jetstream;
  if (conf != NULL) {
    nats->conf = g_build_filename (nats->dir, "nats.conf", NULL);
    g_assert_true (g_file_set_contents (nats->conf, conf, -1, NULL));
  }
  nats_spawn (nats);
  return nats;
}

TestNats *
test_nats_start (gboolean cluster, const gchar *routes)
{
  return nats_start (cluster, routes, FALSE, NULL);
}

TestNats *
test_nats_start_js (void)
{
  return nats_start (FALSE, NULL, TRUE, NULL);
}

TestNats *
test_nats_start_conf (const gchar *conf)
{
  return nats_start (FALSE, NULL, FALSE, conf);
}

void
test_nats_kill (TestNats *nats)
{
  if (nats->proc != NULL)
    reap (nats->proc, SIGKILL);
  g_clear_object (&nats->proc);
}

void
test_nats_restart (TestNats *nats)
{
  g_assert_null (nats->proc);
  nats_spawn (nats);
}

void
test_nats_free (TestNats *nats)
{
  if (nats == NULL)
    return;
  if (nats->proc != NULL)
    reap (nats->proc, SIGTERM);
  g_clear_object (&nats->proc);
  test_remove_dir (nats->dir);
  g_free (nats->dir);
  g_free (nats->routes);
  g_free (nats->conf);
  g_free (nats->url);
  g_free (nats);
}

/* ---- crunchd-worker ---- */

static const gchar *
worker_path (void)
{
  const gchar *path = g_getenv ("CRUNCHD_WORKER");
  return path != NULL ? path : "src/crunchd-worker";
}

TestWorker *
test_worker_start (const gchar *ini, const gchar *id, guint threads)
{
  TestWorker *w = g_new0 (TestWorker, 1);
  g_autoptr (GError) error = NULL;
  g_autofree gchar *ini_path = NULL, *config = NULL, *threads_arg = NULL, *id_arg = NULL;
  gint64 until = g_get_monotonic_time () + START_TIMEOUT_US;

  w->dir = g_dir_make_tmp ("crunchd-worker-XXXXXX", &error);
  g_assert_no_error (error);
  w->id = g_strdup (id);
  ini_path = g_build_filename (w->dir, "worker.ini", NULL);
  w->log_path = g_build_filename (w->dir, "worker.log", NULL);
  g_assert_true (g_file_set_contents (ini_path, ini, -1, NULL));
  config = g_strdup_printf ("--config=%s", ini_path);
  threads_arg = g_strdup_printf ("--threads=%u", threads);
  id_arg = g_strdup_printf ("--id=%s", id);
  const gchar *argv[] = {worker_path (), config, threads_arg, id_arg, NULL};
  w->proc = spawn (argv, w->log_path);
  for (;;) {
    g_autofree gchar *log = NULL;
    g_file_get_contents (w->log_path, &log, NULL, NULL);
    if (log != NULL && strstr (log, " ready: ") != NULL)
      break;
    if (g_subprocess_get_identifier (w->proc) == NULL || g_get_monotonic_time () > until)
      g_error ("crunchd-worker %s did not get ready:\n%s", id, log ? log : "");
    g_usleep (5000);
  }
  return w;
}

void
test_worker_signal (TestWorker *w, gint signum)
{
  g_subprocess_send_signal (w->proc, signum);
}

void
test_worker_free (TestWorker *w)
{
  if (w == NULL)
    return;
  if (g_subprocess_get_identifier (w->proc) != NULL)
    reap (w->proc, SIGKILL);
  g_object_unref (w->proc);
  test_remove_dir (w->dir);
  g_free (w->dir);
  g_free (w->log_path);
  g_free (w->id);
  g_free (w);
}

gint
test_worker_stop (TestWorker *w)
{
  return test_worker_stop_with_log (w, NULL);
}

gint
test_worker_stop_status (TestWorker *w, gchar **log)
{
  gint status = reap (w->proc, SIGTERM);

  g_file_get_contents (w->log_path, log, NULL, NULL);
  if (status != 0) /* into the test's log, where CI looks for sanitizer reports */
    g_test_message ("crunchd-worker %s: exit %d, log:\n%s", w->id, status, *log ? *log : "");
  test_worker_free (w);
  return status;
}

gint
test_worker_stop_with_log (TestWorker *w, gchar **out)
{
  g_autofree gchar *log = NULL;
  g_autofree gchar *id = g_strdup (w->id);
  gint status = test_worker_stop_status (w, &log), done = -1;
  const gchar *at = log ? strstr (log, " stopped: ") : NULL;

  if (at != NULL)
    done = (gint)g_ascii_strtoll (at + strlen (" stopped: "), NULL, 10);
  if (status == 0 && done < 0) /* (a failed one's log is in the test's log already) */
    g_test_message ("crunchd-worker %s: exit 0, log:\n%s", id, log ? log : "");
  g_assert_cmpint (status, ==, 0);
  if (out != NULL)
    *out = g_steal_pointer (&log);
  return done;
}

/* ---- load ---- */

typedef struct {
  const gchar *url;
  guint total, concurrency;
  gint next;
  TestLoad *load;
  GArray *latencies;
  GMutex lock;
} LoadRun;

static gpointer
load_thread (gpointer data)
{
  LoadRun *run = data;
  CURL *curl = curl_easy_init ();

  curl_easy_setopt (curl, CURLOPT_URL, run->url);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT, 60L);
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt (curl, CURLOPT_NOBODY, 0L);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, fwrite);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, NULL);
  while ((guint)g_atomic_int_add (&run->next, 1) < run->total) {
    FILE *sink = fopen ("/dev/null", "w");
    long status = 0;
    gdouble seconds = 0;
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, sink);
    if (curl_easy_perform (curl) == CURLE_OK)
      curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo (curl, CURLINFO_TOTAL_TIME, &seconds);
    fclose (sink);
    g_mutex_lock (&run->lock);
    run->load->counts[CLAMP (status, 0, 599)]++;
    run->load->answered += status != 0;
    run->load->max_seconds = MAX (run->load->max_seconds, seconds);
    if (run->latencies != NULL)
      g_array_append_val (run->latencies, seconds);
    g_mutex_unlock (&run->lock);
  }
  curl_easy_cleanup (curl);
  return NULL;
}

void
test_load (const gchar *url, guint total, guint concurrency, TestLoad *load, GArray *latencies)
{
  LoadRun run = {
      .url = url, .total = total, .concurrency = concurrency, .load = load, .latencies = latencies};
  g_autoptr (GPtrArray) threads = g_ptr_array_new ();

  g_mutex_init (&run.lock);
  for (guint i = 0; i < concurrency; i++)
    g_ptr_array_add (threads, g_thread_new ("load", load_thread, &run));
  for (guint i = 0; i < threads->len; i++)
    g_thread_join (threads->pdata[i]);
  g_mutex_clear (&run.lock);
}

typedef struct {
  gchar *url;
  guint total, concurrency;
  TestLoad *load;
} LoadArgs;

static gpointer
load_async (gpointer data)
{
  LoadArgs *a = data;

  test_load (a->url, a->total, a->concurrency, a->load, NULL);
  g_free (a->url);
  g_free (a);
  return NULL;
}

GThread *
test_load_start (const gchar *url, guint total, guint concurrency, TestLoad *load)
{
  LoadArgs *a = g_new0 (LoadArgs, 1);

  a->url = g_strdup (url);
  a->total = total;
  a->concurrency = concurrency;
  a->load = load;
  return g_thread_new ("load", load_async, a);
}

void
test_load_join (GThread *thread)
{
  g_thread_join (thread);
}
