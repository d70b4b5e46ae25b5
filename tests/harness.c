/* harness.c - see harness.h. */
#include "harness.h"

#include <curl/curl.h>
#include <gio/gunixsocketaddress.h>
#include <signal.h>
#include <sys/prctl.h>
#include <string.h>
#include <unistd.h>

/* In a ThreadSanitizer build, TSan is here to check crunchd (the child process, which inherits
 * TSAN_OPTIONS but not these defaults). The test clients' own threads are GLib's (GSubprocess,
 * GTask) and curl's, handing data over through GLib's futex locks, which TSan cannot see: they
 * would only report false positives. */
#ifdef __SANITIZE_THREAD__
const char *__tsan_default_options (void);
const char *
__tsan_default_options (void)
{
  return "report_bugs=0";
}
#endif

#define START_TIMEOUT_US (15 * G_USEC_PER_SEC)
#define STOP_TIMEOUT_US (30 * G_USEC_PER_SEC)

static const gchar *
crunchd_path (void)
{
  const gchar *path = g_getenv ("CRUNCHD");
  return path != NULL ? path : "src/crunchd";
}

/* "listening on http://127.0.0.1:PORT/", or https:// with [tls] (sets *tls) */
static gboolean
parse_port (const gchar *log, guint16 *port, gboolean *tls)
{
  const gchar *marker = "listening on http://127.0.0.1:";
  const gchar *tls_marker = "listening on https://127.0.0.1:";
  const gchar *at = strstr (log, marker);

  *tls = at == NULL && (at = strstr (log, tls_marker)) != NULL;
  if (at == NULL)
    return FALSE;
  *port = (guint16)g_ascii_strtoull (at + strlen (*tls ? tls_marker : marker), NULL, 10);
  return *port != 0;
}

/* If the test aborts, its server must not outlive it. */
static void
die_with_parent (gpointer data)
{
  prctl (PR_SET_PDEATHSIG, SIGKILL);
}

/* Socket activation by hand: the shell learns its own pid, which exec hands on to crunchd. */
static void
add_listen_fd (GSubprocessLauncher *launcher, GPtrArray *argv, gint fd)
{
  g_subprocess_launcher_take_fd (launcher, dup (fd), 3);
  g_ptr_array_add (argv, g_strdup ("/bin/sh"));
  g_ptr_array_add (argv, g_strdup ("-c"));
  g_ptr_array_add (argv, g_strdup ("export LISTEN_PID=$$ LISTEN_FDS=1; exec \"$0\" \"$@\""));
}

static void
apply_setup (GSubprocessLauncher *launcher, GPtrArray *argv, const TestServerSetup *setup)
{
  if (setup == NULL)
    return;
  for (const gchar *const *e = setup->env; e != NULL && *e != NULL; e++) {
    g_auto (GStrv) kv = g_strsplit (*e, "=", 2);
    g_subprocess_launcher_setenv (launcher, kv[0], kv[1] ? kv[1] : "", TRUE);
  }
  for (const gchar *const *w = setup->wrapper; w != NULL && *w != NULL; w++)
    g_ptr_array_add (argv, g_strdup (*w));
  if (setup->listen_fd > 0)
    add_listen_fd (launcher, argv, setup->listen_fd);
}

TestServer *
test_server_start (const gchar *ini, const gchar *const *args)
{
  return test_server_start_with (ini, args, NULL);
}

void
test_server_write_config (TestServer *server, const gchar *ini)
{
  g_autofree gchar *path = g_build_filename (server->dir, "crunchd.ini", NULL);
  g_autoptr (GError) error = NULL;

  g_file_set_contents (path, ini, -1, &error);
  g_assert_no_error (error);
}

TestServer *
test_server_start_with (const gchar *ini, const gchar *const *args, const TestServerSetup *setup)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) argv = g_ptr_array_new_with_free_func (g_free);
  g_autoptr (GSubprocessLauncher) launcher = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_NONE);
  TestServer *server = g_new0 (TestServer, 1);
  g_autofree gchar *ini_path = NULL;
  gint64 until = g_get_monotonic_time () + START_TIMEOUT_US;
  gboolean tls = FALSE;

  server->dir = g_dir_make_tmp ("crunchd-test-XXXXXX", &error);
  g_assert_no_error (error);
  ini_path = g_build_filename (server->dir, "crunchd.ini", NULL);
  server->log_path = g_build_filename (server->dir, "crunchd.log", NULL);
  g_assert_true (g_file_set_contents (ini_path, ini ? ini : "", -1, &error));

  g_subprocess_launcher_unsetenv (launcher, "NOTIFY_SOCKET");
  g_subprocess_launcher_unsetenv (launcher, "LISTEN_FDS");
  g_subprocess_launcher_unsetenv (launcher, "LISTEN_PID");
  g_subprocess_launcher_unsetenv (launcher, "WATCHDOG_USEC");
  /* as systemd's StateDirectory=: each server's default job database in its own directory */
  g_subprocess_launcher_setenv (launcher, "STATE_DIRECTORY", server->dir, TRUE);
  apply_setup (launcher, argv, setup);
  g_ptr_array_add (argv, g_strdup (crunchd_path ()));
  g_ptr_array_add (argv, g_strdup_printf ("--config=%s", ini_path));
  g_ptr_array_add (argv, g_strdup ("--listen=127.0.0.1:0"));
  for (const gchar *const *a = args; a != NULL && *a != NULL; a++)
    g_ptr_array_add (argv, g_strdup (*a));
  g_ptr_array_add (argv, NULL);

  g_subprocess_launcher_set_stderr_file_path (launcher, server->log_path);
  g_subprocess_launcher_set_child_setup (launcher, die_with_parent, NULL, NULL);
  server->proc = g_subprocess_launcher_spawnv (launcher, (const gchar *const *)argv->pdata, &error);
  g_assert_no_error (error);

  if (setup != NULL && setup->lazy_port != 0)
    server->port = setup->lazy_port;
  while (server->port == 0 && g_get_monotonic_time () < until) {
    g_autofree gchar *log = NULL;
    if (g_file_get_contents (server->log_path, &log, NULL, NULL) &&
        parse_port (log, &server->port, &tls))
      break;
    if (g_subprocess_get_identifier (server->proc) == NULL) /* exited */
      g_error ("crunchd exited during start-up:\n%s", log ? log : "");
    g_usleep (10000);
  }
  if (server->port == 0)
    g_error ("crunchd did not report its port within %d s",
             (gint)(START_TIMEOUT_US / G_USEC_PER_SEC));
  server->base = g_strdup_printf ("%s://127.0.0.1:%u", tls ? "https" : "http", server->port);
  return server;
}

void
test_server_signal (TestServer *server, gint signum)
{
  g_subprocess_send_signal (server->proc, signum);
}

gchar *
test_server_log (TestServer *server)
{
  gchar *log = NULL;

  g_file_get_contents (server->log_path, &log, NULL, NULL);
  return log;
}

gdouble
test_server_metric (TestServer *server, const gchar *series)
{
  g_autofree gchar *url = test_server_url (server, "/metrics");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autofree gchar *needle = g_strconcat ("\n", series, " ", NULL);
  const gchar *at = r->status == 200 ? strstr (r->body, needle) : NULL;

  return at != NULL ? g_ascii_strtod (at + strlen (needle), NULL) : -1;
}

/* Polls `series` until it is `value` (exactly, or at least), 10 s x TEST_TIME_SCALE at most. */
static gdouble
wait_metric (TestServer *server, const gchar *series, gdouble value, gboolean at_least)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC * TEST_TIME_SCALE;
  gdouble v;

  while ((v = test_server_metric (server, series)) != value && !(at_least && v > value) &&
         g_get_monotonic_time () < until)
    g_usleep (20000);
  return v;
}

gdouble
test_wait_metric (TestServer *server, const gchar *series, gdouble value)
{
  return wait_metric (server, series, value, FALSE);
}

gdouble
test_wait_metric_at_least (TestServer *server, const gchar *series, gdouble value)
{
  return wait_metric (server, series, value, TRUE);
}

guint
test_count (const gchar *text, const gchar *needle)
{
  guint n = 0;

  for (const gchar *at = text; at != NULL && (at = strstr (at, needle)) != NULL; at++)
    n++;
  return n;
}

gchar **
test_proc_stat (const gchar *path)
{
  g_autofree gchar *stat = NULL;
  const gchar *after_comm; /* the command name may hold spaces and ')' */

  if (!g_file_get_contents (path, &stat, NULL, NULL) || (after_comm = strrchr (stat, ')')) == NULL)
    return NULL;
  return g_strsplit (after_comm + 2, " ", -1);
}

GArray *
test_children (const gchar *pid)
{
  GArray *children = g_array_new (FALSE, FALSE, sizeof (GPid));
  g_autoptr (GDir) proc = g_dir_open ("/proc", 0, NULL);
  gint64 parent = g_ascii_strtoll (pid, NULL, 10);
  const gchar *name;

  while (proc != NULL && (name = g_dir_read_name (proc)) != NULL) {
    g_autofree gchar *path = g_build_filename ("/proc", name, "stat", NULL);
    g_auto (GStrv) fields = NULL;
    if (!g_ascii_isdigit (name[0]) || (fields = test_proc_stat (path)) == NULL ||
        g_strv_length (fields) < 2)
      continue;
    if (!g_str_equal (fields[0], "Z") && g_ascii_strtoll (fields[1], NULL, 10) == parent) {
      GPid child = (GPid)g_ascii_strtoll (name, NULL, 10);
      g_array_append_val (children, child);
    }
  }
  return children;
}

void
test_server_wait_log (TestServer *server, const gchar *text, guint count, gdouble seconds)
{
  gint64 until = g_get_monotonic_time () + (gint64)(seconds * G_USEC_PER_SEC);

  for (;;) {
    g_autofree gchar *log = test_server_log (server);
    if (test_count (log, text) >= count)
      return;
    if (g_get_monotonic_time () > until)
      g_error ("no '%s' (%u times) in crunchd's log after %g s", text, count, seconds);
    g_usleep (10000);
  }
}

gchar *
test_server_url (TestServer *server, const gchar *path)
{
  return g_strconcat (server->base, path, NULL);
}

void
test_remove_dir (const gchar *dir)
{
  g_autoptr (GDir) d = g_dir_open (dir, 0, NULL);
  const gchar *name;

  while (d != NULL && (name = g_dir_read_name (d)) != NULL) {
    g_autofree gchar *path = g_build_filename (dir, name, NULL);
    if (g_file_test (path, G_FILE_TEST_IS_DIR) && !g_file_test (path, G_FILE_TEST_IS_SYMLINK))
      test_remove_dir (path);
    else
      g_remove (path);
  }
  g_rmdir (dir);
}

void
test_free_ports (guint16 *ports, guint n)
{
  g_autoptr (GPtrArray) held = g_ptr_array_new_with_free_func (g_object_unref);
  g_autoptr (GInetAddress) lo = g_inet_address_new_loopback (G_SOCKET_FAMILY_IPV4);
  g_autoptr (GSocketAddress) any = g_inet_socket_address_new (lo, 0);

  for (guint i = 0; i < n; i++) {
    GSocket *sock =
        g_socket_new (G_SOCKET_FAMILY_IPV4, G_SOCKET_TYPE_STREAM, G_SOCKET_PROTOCOL_TCP, NULL);
    g_autoptr (GSocketAddress) bound = NULL;

    g_assert_true (g_socket_bind (sock, any, FALSE, NULL));
    bound = g_socket_get_local_address (sock, NULL);
    ports[i] = g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (bound));
    g_ptr_array_add (held, sock); /* bound until all are picked: no port comes twice */
  }
}

guint16
test_free_port (void)
{
  guint16 port;

  test_free_ports (&port, 1);
  return port;
}

gboolean
test_port_open (guint16 port)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) conn =
      g_socket_client_connect_to_host (client, "127.0.0.1", port, NULL, NULL);

  return conn != NULL;
}

/* A server that does not stop: where each of its threads is, if gdb is at hand (it is on CI's
 * machines), so that a hang seen once in CI can be understood from its log. */
void
test_log_backtraces (const gchar *pid)
{
  g_autofree gchar *gdb = g_find_program_in_path ("gdb");
  g_autofree gchar *out = NULL;
  g_autoptr (GSubprocess) proc = NULL;

  if (gdb == NULL)
    return;
  proc = g_subprocess_new (G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_MERGE, NULL,
                           "timeout", "60", gdb, "-p", pid, "-batch", "-nx", "-ex",
                           "thread apply all bt 30", NULL);
  if (proc != NULL && g_subprocess_communicate_utf8 (proc, NULL, NULL, &out, NULL, NULL))
    g_test_message ("its threads, as gdb saw them:\n%s", out);
}

/* Bounded wait: a server that does not stop is killed and the test fails. */
gint
test_server_stop (TestServer *server)
{
  return test_server_stop_with_log (server, NULL);
}

gint
test_server_stop_with_log (TestServer *server, gchar **log_out)
{
  gint64 until = g_get_monotonic_time () + STOP_TIMEOUT_US;
  gint status = -1;

  if (g_subprocess_get_identifier (server->proc) != NULL)
    g_subprocess_send_signal (server->proc, SIGTERM);
  while (g_subprocess_get_identifier (server->proc) != NULL && g_get_monotonic_time () < until) {
    g_main_context_iteration (NULL, FALSE);
    g_usleep (5000);
  }
  if (g_subprocess_get_identifier (server->proc) != NULL) {
    test_log_backtraces (g_subprocess_get_identifier (server->proc));
    g_subprocess_force_exit (server->proc);
    g_subprocess_wait (server->proc, NULL, NULL);
    g_test_message ("crunchd did not stop within %d s", (gint)(STOP_TIMEOUT_US / G_USEC_PER_SEC));
    g_test_fail ();
  } else {
    g_subprocess_wait (server->proc, NULL, NULL);
    status = g_subprocess_get_if_exited (server->proc)
                 ? g_subprocess_get_exit_status (server->proc)
                 : 128 + g_subprocess_get_term_sig (server->proc);
  }
  if (status != 0) {
    g_autofree gchar *log = test_server_log (server);
    g_test_message ("crunchd exit status %d; its log:\n%s", status, log ? log : "");
  }
  if (log_out != NULL)
    *log_out = test_server_log (server);
  test_remove_dir (server->dir);
  g_object_unref (server->proc);
  g_free (server->dir);
  g_free (server->log_path);
  g_free (server->base);
  g_free (server);
  return status;
}

gint
test_run_crunchd (const gchar *const *args, gchar **out, gchar **err)
{
  g_autoptr (GPtrArray) argv = g_ptr_array_new ();
  g_autoptr (GSubprocess) proc = NULL;
  g_autoptr (GError) error = NULL;

  g_ptr_array_add (argv, (gpointer)crunchd_path ());
  for (const gchar *const *a = args; *a != NULL; a++)
    g_ptr_array_add (argv, (gpointer)*a);
  g_ptr_array_add (argv, NULL);
  proc =
      g_subprocess_newv ((const gchar *const *)argv->pdata,
                         G_SUBPROCESS_FLAGS_STDOUT_PIPE | G_SUBPROCESS_FLAGS_STDERR_PIPE, &error);
  g_assert_no_error (error);
  g_subprocess_communicate_utf8 (proc, NULL, NULL, out, err, &error);
  g_assert_no_error (error);
  return g_subprocess_get_exit_status (proc);
}

/* ---- HTTP ---- */

static size_t
on_body (char *data, size_t size, size_t n, void *user)
{
  g_byte_array_append (user, (const guint8 *)data, size * n);
  return size * n;
}

static size_t
on_header (char *data, size_t size, size_t n, void *user)
{
  g_autofree gchar *line = g_strndup (data, size * n);
  gchar *colon = strchr (line, ':');

  if (colon != NULL) {
    *colon = '\0';
    g_hash_table_replace (user, g_ascii_strdown (g_strstrip (line), -1),
                          g_strdup (g_strstrip (colon + 1)));
  }
  return size * n;
}

TestReply *
test_http (const gchar *method, const gchar *url, const gchar *const *headers)
{
  return test_http_body (method, url, headers, NULL);
}

TestReply *
test_http_body (const gchar *method, const gchar *url, const gchar *const *headers,
                const gchar *data)
{
  CURL *curl = curl_easy_init ();
  struct curl_slist *list = NULL;
  GByteArray *body = g_byte_array_new ();
  TestReply *reply = g_new0 (TestReply, 1);

  reply->headers = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  for (const gchar *const *h = headers; h != NULL && *h != NULL; h++)
    list = curl_slist_append (list, *h);
  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_HTTPHEADER, list);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT, 120L);
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  if (g_str_equal (method, "HEAD"))
    curl_easy_setopt (curl, CURLOPT_NOBODY, 1L);
  else if (!g_str_equal (method, "GET"))
    curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
  if (data != NULL) {
    curl_easy_setopt (curl, CURLOPT_POSTFIELDS, data);
    curl_easy_setopt (curl, CURLOPT_POSTFIELDSIZE, (long)strlen (data));
  }
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, body);
  curl_easy_setopt (curl, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt (curl, CURLOPT_HEADERDATA, reply->headers);
  reply->curl_code = curl_easy_perform (curl);
  curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &reply->status);
  curl_easy_getinfo (curl, CURLINFO_TOTAL_TIME, &reply->seconds);
  curl_slist_free_all (list);
  curl_easy_cleanup (curl);
  reply->body_len = body->len;
  g_byte_array_append (body, (const guint8 *)"", 1);
  reply->body = (gchar *)g_byte_array_free (body, FALSE);
  reply->body_request_id = test_strip_request_id (reply->body);
  return reply;
}

gchar *
test_strip_request_id (gchar *body)
{
  static GRegex *suffix;
  g_autoptr (GMatchInfo) match = NULL;
  gint start;
  gchar *id;

  if (g_once_init_enter (&suffix))
    g_once_init_leave (&suffix,
                       g_regex_new (" \\(request id ([A-Za-z0-9._:-]{1,64})\\)\n$", 0, 0, NULL));
  if (body == NULL || !g_regex_match (suffix, body, 0, &match))
    return NULL;
  id = g_match_info_fetch (match, 1);
  g_match_info_fetch_pos (match, 0, &start, NULL);
  body[start] = '\n';
  body[start + 1] = '\0';
  return id;
}

void
test_reply_free (TestReply *reply)
{
  if (reply == NULL)
    return;
  g_free (reply->body);
  g_free (reply->body_request_id);
  g_hash_table_unref (reply->headers);
  g_free (reply);
}

struct TestCall {
  gchar *url;
  TestReply *reply;
  GThread *thread;
};

static gpointer
call_thread (gpointer data)
{
  TestCall *call = data;

  call->reply = test_http ("GET", call->url, NULL);
  return NULL;
}

TestCall *
test_call_start (gchar *url)
{
  TestCall *call = g_new0 (TestCall, 1);

  call->url = url;
  call->thread = g_thread_new ("client", call_thread, call);
  return call;
}

TestReply *
test_call_finish (TestCall *call)
{
  TestReply *reply;

  g_thread_join (call->thread);
  reply = call->reply;
  g_free (call->url);
  g_free (call);
  return reply;
}

gchar *
test_ini_with_spin (const gchar *ini)
{
  return g_strdup_printf ("%s[plugins]\ndir = %s\nload = spin\n", ini,
                          g_getenv ("CRUNCHD_PLUGINS"));
}

gdouble
test_time_fib (TestServer *server, guint n)
{
  g_autofree gchar *url = g_strdup_printf ("%s/fib/%u", server->base, n);
  gdouble best = G_MAXDOUBLE;

  /* the fastest of five, 20 ms apart: load only adds time, and workers at nice 10 run several
   * times slower beside a burst from another test; a time taken in such a burst planned jobs
   * that then ended long before the test expected (test-ops once saw its queue never fill) */
  for (guint i = 0; i < 5; i++) {
    g_autoptr (TestReply) r = test_http ("GET", url, NULL);
    g_assert_cmpint (r->status, ==, 200);
    best = MIN (best, r->seconds);
    g_usleep (20000);
  }
  return best;
}

guint
test_fib_n_for (TestServer *server, gdouble seconds)
{
  /* several ms: long enough to time well, short enough to repeat, and well inside a short
   * [fib] timeout (0.3 s in test-overload) also under ThreadSanitizer, which runs it 5-15x
   * slower: there a smaller base, scaled up the same way */
  const guint base = TEST_TIME_SCALE > 1 ? 28 : 32;
  const gdouble phi = 1.6180339887; /* naive fib(n+1) costs phi times fib(n) */
  gdouble t = test_time_fib (server, base);
  guint n = base;

  /* aim 50% above: small fibs pay proportionally more fixed overhead */
  while (t < seconds * 1.5 && n < 60) {
    t *= phi;
    n++;
  }
  return n;
}

/* ---- NOTIFY_SOCKET ---- */

struct TestNotify {
  GSocket *socket;
  gchar *dir;
  gchar *path;
};

TestNotify *
test_notify_new (void)
{
  TestNotify *notify = g_new0 (TestNotify, 1);
  g_autoptr (GError) error = NULL;
  g_autoptr (GSocketAddress) addr = NULL;

  notify->dir = g_dir_make_tmp ("crunchd-notify-XXXXXX", &error);
  g_assert_no_error (error);
  notify->path = g_build_filename (notify->dir, "notify", NULL);
  notify->socket = g_socket_new (G_SOCKET_FAMILY_UNIX, G_SOCKET_TYPE_DATAGRAM,
                                 G_SOCKET_PROTOCOL_DEFAULT, &error);
  g_assert_no_error (error);
  addr = g_unix_socket_address_new (notify->path);
  g_socket_bind (notify->socket, addr, FALSE, &error);
  g_assert_no_error (error);
  return notify;
}

const gchar *
test_notify_path (TestNotify *notify)
{
  return notify->path;
}

gchar *
test_notify_next (TestNotify *notify, gdouble seconds)
{
  gchar buf[4096];
  gssize n;
  g_autoptr (GError) error = NULL;

  g_socket_set_timeout (notify->socket, 0);
  if (!g_socket_condition_timed_wait (notify->socket, G_IO_IN, (gint64)(seconds * G_USEC_PER_SEC),
                                      NULL, NULL))
    return NULL;
  n = g_socket_receive (notify->socket, buf, sizeof buf - 1, NULL, &error);
  g_assert_no_error (error);
  buf[n] = '\0';
  return g_strdup (buf);
}

static gboolean
has_line (const gchar *message, const gchar *prefix)
{
  g_auto (GStrv) lines = g_strsplit (message, "\n", -1);

  for (gchar **l = lines; *l != NULL; l++) {
    if (g_str_has_prefix (*l, prefix))
      return TRUE;
  }
  return FALSE;
}

gchar *
test_notify_wait (TestNotify *notify, const gchar *prefix, gdouble seconds)
{
  gint64 until = g_get_monotonic_time () + (gint64)(seconds * G_USEC_PER_SEC);

  while (g_get_monotonic_time () < until) {
    gchar *message =
        test_notify_next (notify, (gdouble)(until - g_get_monotonic_time ()) / G_USEC_PER_SEC);
    if (message == NULL)
      return NULL;
    if (has_line (message, prefix))
      return message;
    g_free (message);
  }
  return NULL;
}

void
test_notify_free (TestNotify *notify)
{
  if (notify == NULL)
    return;
  g_object_unref (notify->socket);
  g_remove (notify->path);
  g_rmdir (notify->dir);
  g_free (notify->path);
  g_free (notify->dir);
  g_free (notify);
}

static size_t
discard (char *data, size_t size, size_t n, void *user)
{
  return size * n;
}

GArray *
test_http_many (const gchar *url, guint count, const gchar *const *headers, glong timeout_ms)
{
  CURLM *multi = curl_multi_init ();
  CURL **easy = g_new0 (CURL *, count);
  struct curl_slist *list = NULL;
  GArray *statuses = g_array_sized_new (FALSE, TRUE, sizeof (glong), count);
  gint running = 0;

  for (const gchar *const *h = headers; h != NULL && *h != NULL; h++)
    list = curl_slist_append (list, *h);
  curl_multi_setopt (multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 0L);
  for (guint i = 0; i < count; i++) {
    easy[i] = curl_easy_init ();
    curl_easy_setopt (easy[i], CURLOPT_URL, url);
    curl_easy_setopt (easy[i], CURLOPT_HTTPHEADER, list);
    curl_easy_setopt (easy[i], CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt (easy[i], CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (easy[i], CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt (easy[i], CURLOPT_FRESH_CONNECT, 1L);
    curl_easy_setopt (easy[i], CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 120000L);
    curl_multi_add_handle (multi, easy[i]);
  }
  do {
    curl_multi_perform (multi, &running);
    if (running > 0)
      curl_multi_poll (multi, NULL, 0, 100, NULL);
  } while (running > 0);
  for (guint i = 0; i < count; i++) {
    glong status = 0;
    curl_easy_getinfo (easy[i], CURLINFO_RESPONSE_CODE, &status);
    g_array_append_val (statuses, status);
    curl_multi_remove_handle (multi, easy[i]);
    curl_easy_cleanup (easy[i]);
  }
  curl_slist_free_all (list);
  curl_multi_cleanup (multi);
  g_free (easy);
  return statuses;
}

typedef struct {
  gchar *url;
  guint count;
  gchar **headers;
  glong timeout_ms;
} ManyArgs;

static gpointer
many_thread (gpointer data)
{
  ManyArgs *a = data;
  GArray *statuses =
      test_http_many (a->url, a->count, (const gchar *const *)a->headers, a->timeout_ms);
  g_free (a->url);
  g_strfreev (a->headers);
  g_free (a);
  return statuses;
}

GThread *
test_http_many_async (const gchar *url, guint count, const gchar *const *headers, glong timeout_ms)
{
  ManyArgs *a = g_new0 (ManyArgs, 1);

  a->url = g_strdup (url);
  a->count = count;
  a->headers = g_strdupv ((gchar **)headers);
  a->timeout_ms = timeout_ms;
  return g_thread_new ("many", many_thread, a);
}

gint64
test_log_total (const gchar *log, const gchar *name)
{
  const gchar *totals = g_strrstr (log, "totals:");
  g_autofree gchar *key = g_strconcat (" ", name, "=", NULL);
  const gchar *at = totals != NULL ? strstr (totals, key) : NULL;

  return at != NULL ? g_ascii_strtoll (at + strlen (key), NULL, 10) : -1;
}
