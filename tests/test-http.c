/* test-http.c - every route and every error, against the real binary. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "idleguard.h"

static TestServer *server;

#define URL(path) g_autofree gchar *url = test_server_url (server, path)

static void
test_fast (void)
{
  URL ("/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "Hello!");
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==,
                   "text/plain; charset=utf-8");
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-length"), ==, "6");
}

static void
test_head (void)
{
  const gchar *paths[] = {"/fast", "/fib/10"};

  for (gsize i = 0; i < G_N_ELEMENTS (paths); i++) {
    URL (paths[i]);
    g_autoptr (TestReply) r = test_http ("HEAD", url, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpuint (r->body_len, ==, 0);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-length"), ==, i == 0 ? "6" : "2");
  }
}

static void
test_fib_values (void)
{
  const struct {
    const gchar *path, *body;
  } cases[] = {
      {"/fib/0", "0"},   {"/fib/1", "1"},      {"/fib/2", "1"},
      {"/fib/10", "55"}, {"/fib/25", "75025"}, {"/fib/007", "13"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    URL (cases[i].path);
    g_autoptr (TestReply) r = test_http ("GET", url, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, cases[i].body);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==,
                     "text/plain; charset=utf-8");
    g_assert_cmpuint (
        strlen (cases[i].body), ==,
        g_ascii_strtoull (g_hash_table_lookup (r->headers, "content-length"), NULL, 10));
  }
}

static void
test_errors (void)
{
  const struct {
    const gchar *method, *path;
    long status;
    const gchar *body;
  } cases[] = {
      {"GET", "/fib/abc", 400, "fib: N must be a non-negative integer, got 'abc'\n"},
      {"GET", "/fib/-1", 400, "fib: N must be a non-negative integer, got '-1'\n"},
      {"GET", "/fib/1x", 400, "fib: N must be a non-negative integer, got '1x'\n"},
      {"GET", "/fib/", 400, "fib: missing N: use /fib/N with 0 <= N <= 40\n"},
      {"GET", "/fib/99999999999999999999", 400,
       "fib: N = 99999999999999999999 exceeds the limit max_n = 40\n"},
      {"GET", "/fib/41", 400, "fib: N = 41 exceeds the limit max_n = 40\n"},
      {"GET", "/nope", 404, "no such route\n"},
      {"GET", "/fib", 404, "no such route\n"},
      {"GET", "/fastx", 404, "no such route\n"},
      {"POST", "/fast", 405, "method not allowed\n"},
      {"DELETE", "/fib/3", 405, "method not allowed\n"},
      {"BREW", "/fast", 405, "method not allowed\n"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    URL (cases[i].path);
    /* error bodies end with the request id, here the one the client sent */
    g_autofree gchar *id = g_strdup_printf ("X-Request-Id: err-%zu", i);
    g_autoptr (TestReply) r = test_http (cases[i].method, url, (const gchar *[]){id, NULL});
    g_autofree gchar *expect_id = g_strdup_printf ("err-%zu", i);
    g_test_message ("%s %s", cases[i].method, cases[i].path);
    g_assert_cmpint (r->status, ==, cases[i].status);
    g_assert_cmpstr (r->body, ==, cases[i].body);
    g_assert_cmpstr (r->body_request_id, ==, expect_id);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "x-request-id"), ==, expect_id);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==,
                     "text/plain; charset=utf-8");
    if (cases[i].status == 405)
      g_assert_cmpstr (g_hash_table_lookup (r->headers, "allow"), ==, "GET, HEAD");
  }
}

/* Several requests over one connection: curl reuses it if the server keeps it alive. */
static void
test_keep_alive (void)
{
  g_autoptr (GPtrArray) urls = g_ptr_array_new_with_free_func (g_free);
  g_autofree gchar *cmd = NULL, *out = NULL;
  gint status;

  g_ptr_array_add (urls, test_server_url (server, "/fast"));
  g_ptr_array_add (urls, test_server_url (server, "/fib/20"));
  g_ptr_array_add (urls, test_server_url (server, "/fast"));
  g_ptr_array_add (urls, test_server_url (server, "/nope"));
  g_ptr_array_add (urls, test_server_url (server, "/fib/21"));
  cmd = g_strdup_printf (
      "curl -s -w '%%{http_code} %%{num_connects}\\n' %s -o /dev/null %s -o /dev/null "
      "%s -o /dev/null %s -o /dev/null %s -o /dev/null",
      (gchar *)urls->pdata[0], (gchar *)urls->pdata[1], (gchar *)urls->pdata[2],
      (gchar *)urls->pdata[3], (gchar *)urls->pdata[4]);
  g_assert_true (g_spawn_command_line_sync (cmd, &out, NULL, &status, NULL));
  g_assert_cmpint (status, ==, 0);
  /* one new connection for the first request, none after */
  g_assert_cmpstr (out, ==, "200 1\n200 0\n200 0\n404 0\n200 0\n");
}

static void
test_simultaneous (void)
{
  enum { N = 20 };
  TestCall *calls[N];
  TestReply *replies[N];

  for (gint i = 0; i < N; i++)
    calls[i] = test_call_start (test_server_url (server, "/fib/30"));
  for (gint i = 0; i < N; i++) {
    replies[i] = test_call_finish (calls[i]);
    g_assert_cmpint (replies[i]->status, ==, 200);
    g_assert_cmpstr (replies[i]->body, ==, "832040");
    test_reply_free (replies[i]);
  }
}

/* The scheduling policy (field 41 of /proc/PID/task/TID/stat) of crunchd's worker threads. */
static gint
worker_policy (TestServer *s)
{
  g_autofree gchar *dir = g_strdup_printf ("/proc/%s/task", g_subprocess_get_identifier (s->proc));
  g_autoptr (GDir) tasks = g_dir_open (dir, 0, NULL);
  const gchar *tid;

  while (tasks != NULL && (tid = g_dir_read_name (tasks)) != NULL) {
    g_autofree gchar *path = g_strdup_printf ("%s/%s/comm", dir, tid);
    g_autofree gchar *comm = NULL;
    if (!g_file_get_contents (path, &comm, NULL, NULL) || !g_str_has_prefix (comm, "pool-"))
      continue;
    g_free (path);
    path = g_strdup_printf ("%s/%s/stat", dir, tid);
    g_auto (GStrv) fields = test_proc_stat (path);
    if (fields != NULL && g_strv_length (fields) > 38)
      return atoi (fields[38]); /* field 41 */
  }
  return -1;
}

/* [executor] policy = idle puts the workers under SCHED_IDLE (5) once they have run a job. */
static void
test_worker_policy (void)
{
  g_autoptr (TestServer) s = test_server_start ("[executor]\nthreads = 1\npolicy = idle\n", NULL);
  g_autofree gchar *url = test_server_url (s, "/fib/20");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpint (worker_policy (s), ==, 5);
}

/* The default, policy = auto: SCHED_IDLE workers where crunchd may raise them again (root, or
 * RLIMIT_NICE), else the normal policy, and crunchd says why. */
static void
test_worker_policy_auto (void)
{
  g_autoptr (TestServer) s = test_server_start ("[executor]\nthreads = 1\npolicy = auto\n", NULL);
  g_autofree gchar *url = test_server_url (s, "/fib/20");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autofree gchar *log = test_server_log (s);

  g_assert_cmpint (r->status, ==, 200);
  if (crunch_idle_guard_permitted (10)) {
    g_assert_cmpint (worker_policy (s), ==, 5);
  } else {
    g_assert_cmpint (worker_policy (s), ==, 0);
    g_assert_nonnull (strstr (log, "policy = auto: workers run as policy = other"));
  }
}

/* utime + stime of a child process, in clock ticks (/proc/PID/stat fields 14 and 15). */
static guint64
cpu_ticks (GSubprocess *p)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%s/stat", g_subprocess_get_identifier (p));
  g_auto (GStrv) fields = test_proc_stat (path);

  if (fields == NULL || g_strv_length (fields) < 13)
    return 0;
  return g_ascii_strtoull (fields[11], NULL, 10) + g_ascii_strtoull (fields[12], NULL, 10);
}

/* The idle guard: with every core taken by busy neighbours, a SCHED_IDLE job would get almost
 * no CPU (a few per mille); after idle_grace seconds it is raised to the normal policy at nice
 * 10, finishes, and its worker goes back to SCHED_IDLE. */
static void
test_idle_guard (void)
{
  g_autoptr (GPtrArray) hogs = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr (TestServer) s = NULL;
  g_autofree gchar *url = NULL;
  g_autoptr (TestReply) r = NULL;

  if (!crunch_idle_guard_permitted (10)) {
    g_test_skip ("this process may not raise a thread out of SCHED_IDLE");
    return;
  }
  s = test_server_start ("[executor]\nthreads = 1\npolicy = auto\nidle_grace = 0.3\n", NULL);
  url = test_server_url (s, "/fib/37");
  for (guint i = 0; i < g_get_num_processors (); i++)
    g_ptr_array_add (hogs, g_subprocess_new (G_SUBPROCESS_FLAGS_NONE, NULL, "sh", "-c",
                                             "while :; do :; done", NULL));
  /* until each has run 50 ms: a hog still starting (a busy machine) left a core to the job,
   * which then ended before its grace without being raised */
  for (guint i = 0; i < hogs->len; i++)
    while (cpu_ticks (hogs->pdata[i]) < 5)
      g_usleep (10 * 1000);
  r = test_http ("GET", url, NULL);
  for (guint i = 0; i < hogs->len; i++)
    g_subprocess_force_exit (hogs->pdata[i]);
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpfloat (test_server_metric (s, "crunchd_worker_raised_total"), ==, 1);
  g_assert_cmpint (worker_policy (s), ==, 5);
}

/* Runs a job of 1 s (a spin: by the clock, however loaded the machine) while requests for
 * `other` come every 15 ms for 0.9 s; returns the worker ticks the server has counted since it
 * started. (With 0.3 s, a loaded machine answered too few requests for 20 ticks.) */
static gdouble
ticks_during_job_with (TestServer *s, const gchar *other)
{
  g_autofree gchar *url = test_server_url (s, other);
  TestCall *call = test_call_start (test_server_url (s, "/fn/spin?seconds=1"));
  const gint64 until = g_get_monotonic_time () + 900 * 1000;
  g_autoptr (TestReply) r = NULL;

  while (g_get_monotonic_time () < until) {
    g_autoptr (TestReply) f = test_http ("GET", url, NULL);
    g_assert_cmpint (f->status, ==, 200);
    g_usleep (15 * 1000);
  }
  r = test_call_finish (call);
  g_assert_cmpint (r->status, ==, 200);
  return test_server_metric (s, "crunchd_worker_ticks_total");
}

static gdouble
ticks_during_job (TestServer *s)
{
  return ticks_during_job_with (s, "/fast");
}

/* ThreadSanitizer holds a signal back until the thread calls into libc, so there a job may get
 * no tick. */
#ifdef __SANITIZE_THREAD__
#define MIN_TICKS 0
#else
#define MIN_TICKS 20
#endif

/* [executor] timeslice: a worker computing while the fast lane answers requests gets timer ticks
 * (0.5 ms by default); 0 turns them off. */
static void
test_timeslice (void)
{
  g_autofree gchar *on_ini = test_ini_with_spin ("[executor]\nthreads = 1\n");
  g_autofree gchar *off_ini = test_ini_with_spin ("[executor]\nthreads = 1\ntimeslice = 0\n");
  g_autoptr (TestServer) on = test_server_start (on_ini, NULL);
  g_autoptr (TestServer) off = test_server_start (off_ini, NULL);

  g_assert_cmpfloat (ticks_during_job (off), ==, 0);
  /* compute requests alone are not the fast lane: no ticks */
  g_assert_cmpfloat (ticks_during_job_with (on, "/fib/1"), ==, 0);
  g_assert_cmpfloat (ticks_during_job (on), >=, MIN_TICKS);
}

/* Writes `ini`, sends SIGHUP and waits (up to 5 s) for crunchd's `n`th reload line. */
static void
reload (TestServer *s, const gchar *ini, guint n)
{
  test_server_write_config (s, ini);
  test_server_signal (s, SIGHUP);
  for (guint i = 0; i < 500; i++) {
    g_autofree gchar *log = test_server_log (s);
    if (test_count (log, "configuration reloaded") >= n)
      break;
    g_usleep (10 * 1000);
  }
}

/* A reload turns them on (and off). */
static void
test_timeslice_reload (void)
{
  g_autofree gchar *off = test_ini_with_spin ("[executor]\nthreads = 1\ntimeslice = 0\n");
  g_autofree gchar *on = test_ini_with_spin ("[executor]\nthreads = 1\ntimeslice = 0.001\n");
  g_autoptr (TestServer) s = test_server_start (off, NULL);
  gdouble before;

  g_assert_cmpfloat (ticks_during_job (s), ==, 0);
  reload (s, on, 1);
  before = ticks_during_job (s);
  g_assert_cmpfloat (before, >=, MIN_TICKS / 2);
  reload (s, off, 2);
  before = test_server_metric (s, "crunchd_worker_ticks_total");
  g_assert_cmpfloat (ticks_during_job (s), ==, before);
}

/* Threads of crunchd whose name (/proc/PID/task/TID/comm) is `name`. */
static guint
threads_named (TestServer *s, const gchar *name)
{
  g_autofree gchar *dir = g_strdup_printf ("/proc/%s/task", g_subprocess_get_identifier (s->proc));
  g_autoptr (GDir) tasks = g_dir_open (dir, 0, NULL);
  const gchar *tid;
  guint n = 0;

  while (tasks != NULL && (tid = g_dir_read_name (tasks)) != NULL) {
    g_autofree gchar *path = g_strdup_printf ("%s/%s/comm", dir, tid);
    g_autofree gchar *comm = NULL;
    if (g_file_get_contents (path, &comm, NULL, NULL) && g_str_equal (g_strchomp (comm), name))
      n++;
  }
  return n;
}

/* [server] threads: that many polling threads (MHD's pool) serve one listener, parked compute
 * requests included. */
static void
test_poll_threads (void)
{
  g_autoptr (TestServer) s =
      test_server_start ("[server]\nthreads = 3\n[executor]\nthreads = 2\n", NULL);
  g_autofree gchar *fast = test_server_url (s, "/fast");
  TestCall *calls[8];

  /* (each thread names itself once it runs) */
  for (gint64 until = g_get_monotonic_time () + 2 * G_USEC_PER_SEC * (gint64)TEST_TIME_SCALE;
       threads_named (s, "MHD-worker") < 3 && g_get_monotonic_time () < until;)
    g_usleep (10000);
  g_assert_cmpuint (threads_named (s, "MHD-worker"), ==, 3);
  for (guint i = 0; i < G_N_ELEMENTS (calls); i++)
    calls[i] = test_call_start (g_strdup_printf ("%s/fib/%u", s->base, 20 + i));
  for (guint i = 0; i < 20; i++) {
    g_autoptr (TestReply) r = test_http ("GET", fast, NULL);
    g_assert_cmpint (r->status, ==, 200);
  }
  for (guint i = 0; i < G_N_ELEMENTS (calls); i++) {
    g_autoptr (TestReply) r = test_call_finish (calls[i]);
    g_assert_cmpint (r->status, ==, 200);
  }
}

int
main (int argc, char **argv)
{
  const gchar *ini = "[fib]\nmax_n = 40\n[executor]\nqueue_limit = 64\n";
  gint status;

  g_test_init (&argc, &argv, NULL);
  server = test_server_start (ini, NULL);
  g_test_add_func ("/http/fast", test_fast);
  g_test_add_func ("/http/head", test_head);
  g_test_add_func ("/http/fib-values", test_fib_values);
  g_test_add_func ("/http/errors", test_errors);
  g_test_add_func ("/http/keep-alive", test_keep_alive);
  g_test_add_func ("/http/simultaneous", test_simultaneous);
  g_test_add_func ("/http/worker-policy", test_worker_policy);
  g_test_add_func ("/http/worker-policy-auto", test_worker_policy_auto);
  g_test_add_func ("/http/idle-guard", test_idle_guard);
  g_test_add_func ("/http/timeslice", test_timeslice);
  g_test_add_func ("/http/timeslice-reload", test_timeslice_reload);
  g_test_add_func ("/http/poll-threads", test_poll_threads);
  status = g_test_run ();
  g_assert_cmpint (test_server_stop (server), ==, 0);
  return status;
}
