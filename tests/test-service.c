/* test-service.c - crunchd as systemd runs it: sd_notify protocol, watchdog, socket activation. */
#include <signal.h>
#include <string.h>

#include "harness.h"

#define WAIT_S 15.0 /* generous: start-up under ASan on a loaded machine */

static TestServer *
start_notified (TestNotify *notify, const gchar *const *extra_env)
{
  g_autofree gchar *socket_env = g_strdup_printf ("NOTIFY_SOCKET=%s", test_notify_path (notify));
  const gchar *env[4] = {socket_env, NULL};

  for (guint i = 0; extra_env != NULL && extra_env[i] != NULL && i < 2; i++)
    env[i + 1] = extra_env[i];
  return test_server_start_with ("", (const gchar *[]){"--threads=1", NULL},
                                 &(TestServerSetup){.env = env});
}

static void
assert_notified (TestNotify *notify, const gchar *prefix)
{
  g_autofree gchar *message = test_notify_wait (notify, prefix, WAIT_S);

  if (message == NULL)
    g_error ("no %s notification within %.0f s", prefix, WAIT_S);
}

static void
assert_fast (TestServer *server)
{
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "Hello!");
}

/* READY=1 once listening, STATUS= follows the traffic, STOPPING=1 on SIGTERM. */
static void
test_notify_lifecycle (void)
{
  g_autoptr (TestNotify) notify = test_notify_new ();
  TestServer *server = start_notified (notify, NULL);
  g_autofree gchar *status = NULL;

  assert_notified (notify, "READY=1");
  status = test_notify_wait (notify, "STATUS=", WAIT_S);
  g_assert_nonnull (status);
  g_assert_nonnull (strstr (status, "0 requests served"));
  g_assert_nonnull (strstr (status, "on 1 threads"));
  assert_fast (server);
  g_clear_pointer (&status, g_free);
  /* sent on the next 1 s tick, because the figure changed */
  status = test_notify_wait (notify, "STATUS=1 requests served", 5.0);
  g_assert_nonnull (status);

  test_server_signal (server, SIGTERM);
  assert_notified (notify, "STOPPING=1");
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* Without WatchdogSec= there are no pings; WATCHDOG_USEC=200000 gives one every 100 ms. */
static void
test_notify_watchdog (void)
{
  g_autoptr (TestNotify) quiet = test_notify_new ();
  g_autoptr (TestNotify) notify = test_notify_new ();
  TestServer *server = start_notified (quiet, NULL);
  TestServer *watched = start_notified (notify, (const gchar *[]){"WATCHDOG_USEC=200000", NULL});
  g_autofree gchar *none = NULL;
  gint64 start;
  guint pings = 0;

  assert_notified (quiet, "READY=1");
  assert_notified (notify, "READY=1");
  none = test_notify_wait (quiet, "WATCHDOG=1", 1.0);
  g_assert_null (none);

  while ((none = test_notify_next (notify, 0)) != NULL) /* pings sent so far */
    g_clear_pointer (&none, g_free);
  start = g_get_monotonic_time ();
  while (g_get_monotonic_time () - start < G_USEC_PER_SEC) {
    g_autofree gchar *ping = test_notify_wait (notify, "WATCHDOG=1", 1.0);
    if (ping != NULL)
      pings++;
  }
  g_test_message ("%u watchdog pings in %.2f s", pings,
                  (g_get_monotonic_time () - start) / (gdouble)G_USEC_PER_SEC);
  g_assert_cmpuint (pings, >=, 4); /* 10 expected; a busy machine may delay a few */
  g_assert_cmpint (test_server_stop (watched), ==, 0);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* SIGHUP: RELOADING=1 with MONOTONIC_USEC=, then READY=1 again. */
static void
test_notify_reload (void)
{
  g_autoptr (TestNotify) notify = test_notify_new ();
  TestServer *server = start_notified (notify, NULL);
  g_autofree gchar *reloading = NULL;

  assert_notified (notify, "READY=1");
  test_server_signal (server, SIGHUP);
  reloading = test_notify_wait (notify, "RELOADING=1", WAIT_S);
  g_assert_nonnull (reloading);
  g_assert_nonnull (strstr (reloading, "\nMONOTONIC_USEC="));
  assert_notified (notify, "READY=1");
  assert_fast (server);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* Until something accepts connections on 127.0.0.1:port (10 s x TEST_TIME_SCALE at most). */
static void
wait_listening (guint16 port)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC * TEST_TIME_SCALE;

  while (!test_port_open (port)) {
    if (g_get_monotonic_time () > until)
      g_error ("nothing listens on 127.0.0.1:%u", port);
    g_usleep (20 * 1000);
  }
}

static void
test_activation_systemd_socket_activate (void)
{
  g_autofree gchar *tool = g_find_program_in_path ("systemd-socket-activate");
  g_autofree gchar *listen = NULL;
  guint16 port = test_free_port ();
  TestServer *server;

  if (tool == NULL) {
    g_test_skip ("systemd-socket-activate is not installed");
    return;
  }
  g_autofree gchar *log = NULL;
  g_autofree gchar *expect = NULL;

  listen = g_strdup_printf ("127.0.0.1:%u", port);
  server = test_server_start_with (
      "", NULL,
      &(TestServerSetup){.wrapper = (const gchar *[]){tool, "-l", listen, "-E", "G_SLICE", NULL},
                         .lazy_port = port});
  wait_listening (port); /* the tool binds after it starts: a fixed 0.3 s once missed in CI */
  assert_fast (server);
  /* crunchd served on the socket it was given, not on --listen's 127.0.0.1:0 (read the log
   * after exit: MHD may answer before the main thread has logged the address) */
  g_assert_cmpint (test_server_stop_with_log (server, &log), ==, 0);
  expect = g_strdup_printf ("listening on http://%s/", listen);
  g_assert_nonnull (strstr (log, expect));
}

typedef struct {
  guint16 port;
  TestReply *reply;
} GapCall;

static gpointer
gap_call (gpointer data)
{
  GapCall *call = data;
  g_autofree gchar *url = g_strdup_printf ("http://127.0.0.1:%u/fast", call->port);

  call->reply = test_http ("GET", url, NULL);
  return NULL;
}

/* systemd keeps the socket across a restart: the stopped crunchd must not shut it down, and a
 * client that connects while no crunchd runs is answered by the next one. */
static void
test_activation_survives_restart (void)
{
  g_autoptr (GSocket) listener =
      g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
  g_autoptr (GInetAddress) lo = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any = g_inet_socket_address_new (lo, 0);
  g_autoptr (GSocketAddress) bound = NULL;
  TestServerSetup setup = {0};
  GapCall call = {0};
  GThread *thread;
  TestServer *server;

  g_assert_true (g_socket_bind (listener, any, TRUE, NULL));
  g_assert_true (g_socket_listen (listener, NULL));
  bound = g_socket_get_local_address (listener, NULL);
  call.port = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
  setup.listen_fd = g_socket_get_fd (listener);

  server = test_server_start_with ("", NULL, &setup);
  g_assert_cmpuint (server->port, ==, call.port);
  assert_fast (server);
  g_assert_cmpint (test_server_stop (server), ==, 0);

  thread = g_thread_new ("gap", gap_call, &call); /* waits in the kernel's accept queue */
  g_usleep (200000);
  server = test_server_start_with ("", NULL, &setup);
  g_thread_join (thread);
  g_assert_cmpint (call.reply->curl_code, ==, 0);
  g_assert_cmpint (call.reply->status, ==, 200);
  test_reply_free (call.reply);
  assert_fast (server);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* Built --without-systemd: the environment systemd would set is ignored, crunchd binds from its
 * configuration and serves as usual. */
static void
test_without_systemd (void)
{
  g_autoptr (TestNotify) notify = test_notify_new ();
  g_autoptr (GSocket) listener =
      g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
  g_autofree gchar *socket_env = g_strdup_printf ("NOTIFY_SOCKET=%s", test_notify_path (notify));
  g_autofree gchar *ready = NULL;
  TestServer *server =
      test_server_start_with ("", NULL,
                              &(TestServerSetup){.env = (const gchar *[]){socket_env, NULL},
                                                 .listen_fd = g_socket_get_fd (listener)});

  assert_fast (server);
  ready = test_notify_wait (notify, "READY=1", 0.5);
  g_assert_null (ready);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* The mask of process or thread `dir` (/proc/PID or /proc/PID/task/TID) blocks all of SIGHUP,
 * SIGINT and SIGTERM (1), none of them (0), or some (-1). */
static gint
blocks_stop_signals (const gchar *dir)
{
  g_autofree gchar *path = g_build_filename (dir, "status", NULL);
  g_autofree gchar *text = NULL;
  const gchar *line;
  guint64 mask, want = (1u << (SIGHUP - 1)) | (1u << (SIGINT - 1)) | (1u << (SIGTERM - 1));

  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  line = strstr (text, "\nSigBlk:");
  g_assert_nonnull (line);
  mask = g_ascii_strtoull (line + strlen ("\nSigBlk:"), NULL, 16);
  return (mask & want) == want ? 1 : (mask & want) == 0 ? 0 : -1;
}

/* Stop and reload signals are taken by one thread (crunchd-signals, in sigwaitinfo()): every
 * thread blocks them, also one made by a reload; a worker process gets the usual mask. Under
 * ThreadSanitizer, a SIGTERM that the kernel gave an idle pool thread was never handled (CI:
 * crunchd ignored it for 30 s). */
static void
test_signals_one_thread (void)
{
  TestServer *s = test_server_start ("[executor]\nbackend = processes\nthreads = 1\n", NULL);
  const gchar *pid = g_subprocess_get_identifier (s->proc);
  g_autofree gchar *task_dir = g_strdup_printf ("/proc/%s/task", pid);
  g_autofree gchar *url = test_server_url (s, "/fib/20");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autoptr (GDir) tasks = NULL;
  g_autoptr (GArray) children = NULL;
  const gchar *name;
  guint threads = 0, signal_threads = 0;

  g_assert_cmpint (r->status, ==, 200);
  test_server_write_config (s, "[executor]\nbackend = processes\nthreads = 3\n");
  test_server_signal (s, SIGHUP);
  test_server_wait_log (s, "configuration reloaded from", 1, WAIT_S);
  g_clear_pointer (&r, test_reply_free);
  r = test_http ("GET", url, NULL); /* on the threads the reload made */
  g_assert_cmpint (r->status, ==, 200);
  tasks = g_dir_open (task_dir, 0, NULL);
  while ((name = g_dir_read_name (tasks)) != NULL) {
    g_autofree gchar *dir = g_build_filename (task_dir, name, NULL);
    g_autofree gchar *comm_path = g_build_filename (dir, "comm", NULL);
    g_autofree gchar *comm = NULL;
    g_assert_true (g_file_get_contents (comm_path, &comm, NULL, NULL));
    if (g_str_has_prefix (comm, "crunchd-signals")) {
      signal_threads++; /* in sigwaitinfo(), which unblocks them for the wait */
      continue;
    }
    g_assert_cmpint (blocks_stop_signals (dir), ==, 1);
    threads++;
  }
  children = test_children (pid);
  for (guint i = 0; i < children->len; i++) {
    g_autofree gchar *dir = g_strdup_printf ("/proc/%d", (gint)g_array_index (children, GPid, i));
    g_assert_cmpint (blocks_stop_signals (dir), ==, 0);
  }
  g_test_message ("%u threads block SIGHUP, SIGINT and SIGTERM; %u worker process(es) do not",
                  threads, children->len);
  g_assert_cmpuint (threads, >=, 4);
  g_assert_cmpuint (signal_threads, ==, 1);
  g_assert_cmpuint (children->len, >=, 1);
  g_assert_cmpint (test_server_stop (s), ==, 0);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
#ifdef HAVE_SYSTEMD
  const gboolean with_systemd = TRUE;
#else
  const gboolean with_systemd = FALSE;
#endif
  if (!with_systemd) {
    g_test_add_func ("/service/without-systemd", test_without_systemd);
    return g_test_run ();
  }
  g_test_add_func ("/service/notify/lifecycle", test_notify_lifecycle);
  g_test_add_func ("/service/signals-one-thread", test_signals_one_thread);
  g_test_add_func ("/service/notify/watchdog", test_notify_watchdog);
  g_test_add_func ("/service/notify/reload", test_notify_reload);
  g_test_add_func ("/service/activation/systemd-socket-activate",
                   test_activation_systemd_socket_activate);
  g_test_add_func ("/service/activation/survives-restart", test_activation_survives_restart);
  return g_test_run ();
}
