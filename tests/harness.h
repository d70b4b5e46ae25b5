/* harness.h - start the real crunchd on an ephemeral loopback port and talk HTTP to it. */
#pragma once

#include <gio/gio.h>
#include <glib/gstdio.h>

/* Upper time bounds in tests are multiplied by this. ThreadSanitizer slows threads 5-15x, and
 * unevenly, so its build relaxes them; ordering and counting assertions stay exact. */
#ifdef __SANITIZE_THREAD__
#define TEST_TIME_SCALE 10.0
#else
#define TEST_TIME_SCALE 1.0
#endif

typedef struct {
  GSubprocess *proc;
  gchar *dir;      /* temporary directory: crunchd.ini, crunchd.log */
  gchar *log_path; /* crunchd's stderr */
  guint16 port;
  gchar *base; /* "http://127.0.0.1:PORT" */
} TestServer;

/* Writes `ini` to a temporary crunchd.ini and starts crunchd --listen 127.0.0.1:0 with it,
 * plus `args` (NULL-terminated, may be NULL). Fails the test if it does not come up. */
TestServer *test_server_start (const gchar *ini, const gchar *const *args);

/* How to run crunchd as systemd would; every field is optional (zero = not used). */
typedef struct {
  const gchar *const *env;     /* extra "NAME=value" (NOTIFY_SOCKET, WATCHDOG_USEC, ...) */
  const gchar *const *wrapper; /* argv put in front of crunchd, e.g. systemd-socket-activate */
  gint listen_fd;              /* > 0: a listening socket handed over as socket activation */
  guint16 lazy_port;           /* != 0: the wrapper listens here and starts crunchd on the first
                                * connection (systemd-socket-activate): do not wait for start-up */
} TestServerSetup;
TestServer *test_server_start_with (const gchar *ini, const gchar *const *args,
                                    const TestServerSetup *setup);
/* Replaces the server's crunchd.ini (for SIGHUP reload tests). */
void test_server_write_config (TestServer *server, const gchar *ini);
/* SIGTERM, wait (bounded), return the exit status; frees the server. */
gint test_server_stop (TestServer *server);
/* The same, and hands over crunchd's whole log (stderr) in *log. */
gint test_server_stop_with_log (TestServer *server, gchar **log);
/* Where each thread of process `pid` is (gdb, if installed), as a test message. */
void test_log_backtraces (const gchar *pid);
void test_server_signal (TestServer *server, gint signum);
gchar *test_server_log (TestServer *server);
/* How many times `needle` occurs in `text` (0 for NULL text). */
guint test_count (const gchar *text, const gchar *needle);
/* The fields of a /proc stat file (e.g. "/proc/PID/stat") from field 3, the state, on: field N
 * is [N - 3]. NULL if it cannot be read. */
gchar **test_proc_stat (const gchar *path);
/* The live (not zombie) child processes of `pid`, as GPid. */
GArray *test_children (const gchar *pid);
/* Waits until `text` occurs `count` times in the server's log; fails the test after `seconds`. */
void test_server_wait_log (TestServer *server, const gchar *text, guint count, gdouble seconds);
gchar *test_server_url (TestServer *server, const gchar *path);
/* The value of one series (name and labels, as printed) on the server's /metrics, or -1. */
gdouble test_server_metric (TestServer *server, const gchar *series);

/* Removes a temporary directory and everything in it. */
void test_remove_dir (const gchar *dir);

/* A loopback port nobody listens on right now (bound and released: a small race until the
 * caller binds it again). */
guint16 test_free_port (void);
/* `n` such ports, all different (a process that needs several: two calls of test_free_port()
 * return the same port about once in 16,000). */
void test_free_ports (guint16 *ports, guint n);
/* TRUE if something accepts connections on 127.0.0.1:port now. */
gboolean test_port_open (guint16 port);

/* Runs crunchd with arguments to completion; returns exit status, stderr/stdout in out params. */
gint test_run_crunchd (const gchar *const *args, gchar **out, gchar **err);

typedef struct {
  long status;
  gchar *body;
  gsize body_len;
  GHashTable *headers; /* lower-case name -> value */
  gdouble seconds;     /* total time */
  gint curl_code;
  gchar *body_request_id; /* an error body's "(request id X)" suffix, removed from body */
} TestReply;

/* One request on a fresh connection. method: "GET", "HEAD", "POST", ... headers: NULL-terminated
 * "Name: value" strings or NULL. */
TestReply *test_http (const gchar *method, const gchar *url, const gchar *const *headers);
/* The same with a request body (NUL-terminated text, e.g. JSON), or none when `data` is NULL. */
TestReply *test_http_body (const gchar *method, const gchar *url, const gchar *const *headers,
                           const gchar *data);
void test_reply_free (TestReply *reply);

/* One GET on a thread of its own, for requests that must be in flight together: start it (the
 * call takes `url`), then collect its reply. */
typedef struct TestCall TestCall;
TestCall *test_call_start (gchar *url);
TestReply *test_call_finish (TestCall *call);
/* Error bodies end with " (request id X)": cuts that off `body` (in place, keeping the final
 * newline) so tests compare the message alone, and returns X (free it), or NULL if absent. */
gchar *test_strip_request_id (gchar *body);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (TestReply, test_reply_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (TestServer, test_server_stop)

/* A unix datagram socket standing in for systemd's NOTIFY_SOCKET. */
typedef struct TestNotify TestNotify;
TestNotify *test_notify_new (void);
const gchar *test_notify_path (TestNotify *notify);
/* The next datagram received within `seconds`, or NULL. */
gchar *test_notify_next (TestNotify *notify, gdouble seconds);
/* The next datagram with a line that starts with `prefix` ("READY=1", "STATUS="), skipping
 * others; NULL if none came within `seconds`. */
gchar *test_notify_wait (TestNotify *notify, const gchar *prefix, gdouble seconds);
void test_notify_free (TestNotify *notify);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (TestNotify, test_notify_free)

/* Polls the metric `series` until it is `value` (for at most 10 s x TEST_TIME_SCALE); returns the
 * last value read. */
gdouble test_wait_metric (TestServer *server, const gchar *series, gdouble value);
/* The same until it is at least `value`. */
gdouble test_wait_metric_at_least (TestServer *server, const gchar *series, gdouble value);
/* `ini` followed by a [plugins] section that loads the example plugin spin (/fn/spin?seconds=S
 * keeps a worker busy for S seconds by the clock): for jobs that must outlast a check however
 * loaded the machine, which a timed fib cannot promise. */
gchar *test_ini_with_spin (const gchar *ini);
/* The time a single /fib/n takes on this server, the fastest of a few, in seconds. */
gdouble test_time_fib (TestServer *server, guint n);
/* The smallest n whose /fib/n is expected to take at least `seconds` (from timing fib(base)). */
guint test_fib_n_for (TestServer *server, gdouble seconds);

/* `count` simultaneous requests for `url`, each on its own connection (curl multi, one thread).
 * timeout_ms > 0 makes clients hang up after that long. Returns the statuses (0 = no answer). */
GArray *test_http_many (const gchar *url, guint count, const gchar *const *headers,
                        glong timeout_ms);
/* Runs test_http_many() on a thread; join with g_thread_join() to get the GArray. */
GThread *test_http_many_async (const gchar *url, guint count, const gchar *const *headers,
                               glong timeout_ms);
/* The value of `name=` in the log's last "totals:" line, or -1. */
gint64 test_log_total (const gchar *log, const gchar *name);
