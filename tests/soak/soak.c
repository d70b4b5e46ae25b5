/* soak.c - a bounded soak test of the real binary: SOAK_SECONDS (default 60) of mixed load.
 *
 * Not part of `make check` (it takes a minute): `make soak`, and .ci/run runs it against the
 * ASan+UBSan build. CLIENTS threads loop over: /fast; /fib/N with random N and often a short
 * `Request-Timeout`; and requests whose client hangs up (FIN or reset) before the answer. The
 * server has 2 workers, a small queue and a per-client cap, so there are 504s, 503s and 429s.
 * Alongside them an attacker (from other loopback addresses, so the per-address limit does not
 * shield the clients from it) runs in waves: 1,200 silent connections from 6 addresses, 100
 * connections trickling a header one byte a second, JSON bodies nested 100,000 levels deep on
 * POST /jobs and POST /fn/fib (each must get 400), and POST /jobs in a loop from one address
 * (202 until that client's share of the job store is full, then 429). It stops 5 s before the
 * end, so the late RSS is measured without its connections.
 *
 * It asserts: every request that was not rejected got its right answer (/fast "Hello!", /fib/N
 * its value, or a 504 past its deadline); the server's RSS late in the run is not much above
 * its RSS early in the run (both are printed); and on SIGTERM the server drains and exits 0,
 * so ASan found no error and LSan no leak (either makes the exit status non-zero). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib-unix.h>

#include "harness.h"

#define CLIENTS 12
#define FIB_MIN 15
#define FIB_MAX 30

typedef struct {
  guint64 fast, fib_ok, timed_out, queue_full, client_limit, aborted, wrong;
} Counts;

typedef struct {
  TestServer *server;
  gint64 until;
  guint32 seed;
  Counts counts;
} Client;

static guint64
fib (guint n)
{
  guint64 a = 0, b = 1;

  for (; n > 0; n--) {
    guint64 t = a + b;
    a = b;
    b = t;
  }
  return a;
}

static void
request_fast (Client *c)
{
  g_autofree gchar *url = test_server_url (c->server, "/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  if (r->status == 200 && g_str_equal (r->body, "Hello!")) {
    c->counts.fast++;
    return;
  }
  c->counts.wrong++;
  g_printerr ("GET /fast: status %ld (curl %d) body '%.80s'\n", r->status, r->curl_code, r->body);
}

static void
request_fib (Client *c, GRand *rand)
{
  const gchar *timeouts[] = {NULL, NULL, "0.005", "0.05", "0.5"};
  const gchar *timeout = timeouts[g_rand_int_range (rand, 0, G_N_ELEMENTS (timeouts))];
  guint n = (guint)g_rand_int_range (rand, FIB_MIN, FIB_MAX + 1);
  g_autofree gchar *path = g_strdup_printf ("/fib/%u", n);
  g_autofree gchar *url = test_server_url (c->server, path);
  g_autofree gchar *header = timeout ? g_strconcat ("Request-Timeout: ", timeout, NULL) : NULL;
  g_autofree gchar *value = g_strdup_printf ("%" G_GUINT64_FORMAT, fib (n));
  g_autoptr (TestReply) r = test_http ("GET", url, (const gchar *[]){header, NULL});

  switch (r->status) {
  case 200:
    if (g_str_equal (r->body, value)) {
      c->counts.fib_ok++;
      return;
    }
    break;
  case 504:
    c->counts.timed_out++;
    return;
  case 503:
    if (g_hash_table_contains (r->headers, "retry-after")) {
      c->counts.queue_full++;
      return;
    }
    break;
  case 429:
    if (g_hash_table_contains (r->headers, "retry-after")) {
      c->counts.client_limit++;
      return;
    }
    break;
  default:
    break;
  }
  c->counts.wrong++;
  g_printerr ("GET %s (%s): status %ld (curl %d) body '%.80s'\n", path, header ? header : "-",
              r->status, r->curl_code, r->body);
}

/* A client that hangs up before its answer: after 0-30 ms, with a FIN or a reset. */
static void
request_abort (Client *c, GRand *rand)
{
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons (c->server->port)};
  g_autofree gchar *req = g_strdup_printf ("GET /fib/%d HTTP/1.1\r\nHost: x\r\n\r\n",
                                           g_rand_int_range (rand, FIB_MAX - 4, FIB_MAX + 1));
  gint fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  to.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  g_assert_cmpint (fd, >=, 0);
  if (connect (fd, (struct sockaddr *)&to, sizeof to) == 0) {
    g_assert_cmpint (send (fd, req, strlen (req), MSG_NOSIGNAL), ==, (gssize)strlen (req));
    g_usleep ((gulong)g_rand_int_range (rand, 0, 30000));
    if (g_rand_boolean (rand)) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      setsockopt (fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
  }
  close (fd);
  c->counts.aborted++;
}

static gpointer
client_thread (gpointer data)
{
  Client *c = data;
  g_autoptr (GRand) rand = g_rand_new_with_seed (c->seed);

  while (g_get_monotonic_time () < c->until) {
    gint dice = g_rand_int_range (rand, 0, 100);
    if (dice < 40)
      request_fast (c);
    else if (dice < 90)
      request_fib (c, rand);
    else
      request_abort (c, rand);
  }
  return NULL;
}

/* ---- the attacker ---- */

typedef struct {
  TestServer *server;
  gint64 until;
  guint64 silent, trickled, deep_refused, jobs_accepted, jobs_refused, jobs_queue_full, wrong;
} Attacker;

/* A non-blocking connection from `source` (a loopback address); -1 if the server refused it. */
static gint
attack_connect (TestServer *server, const gchar *source)
{
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons (server->port)};
  struct sockaddr_in from = {.sin_family = AF_INET};
  gint fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

  g_assert_cmpint (fd, >=, 0);
  to.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  inet_pton (AF_INET, source, &from.sin_addr);
  g_assert_cmpint (bind (fd, (struct sockaddr *)&from, sizeof from), ==, 0);
  if (connect (fd, (struct sockaddr *)&to, sizeof to) != 0 && errno != EINPROGRESS) {
    close (fd);
    return -1;
  }
  return fd;
}

/* One request on a fresh connection from `source`; the status, 0 if none came. */
static guint
attack_request (TestServer *server, const gchar *source, const gchar *request, gsize len)
{
  gint fd = attack_connect (server, source);
  g_autoptr (GString) in = g_string_new (NULL);
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;
  guint status = 0;

  g_unix_set_fd_nonblocking (fd, FALSE, NULL);
  for (gsize sent = 0; sent < len;) {
    gssize n = send (fd, request + sent, len - sent, MSG_NOSIGNAL);
    if (n <= 0)
      break;
    sent += (gsize)n;
  }
  while (strstr (in->str, "\r\n") == NULL && g_get_monotonic_time () < until) {
    gchar buf[4096];
    struct timeval tv = {.tv_sec = 1};
    gssize n;
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    n = recv (fd, buf, sizeof buf, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN))
      break;
    if (n > 0)
      g_string_append_len (in, buf, n);
  }
  close (fd);
  if (g_str_has_prefix (in->str, "HTTP/1.1 "))
    status = (guint)g_ascii_strtoull (in->str + 9, NULL, 10);
  return status;
}

static gchar *
deep_request (const gchar *path, const gchar *prefix, const gchar *suffix)
{
  enum { DEPTH = 100000 };
  g_autoptr (GString) body = g_string_new (prefix);

  for (guint i = 0; i < DEPTH; i++)
    g_string_append_c (body, '[');
  for (guint i = 0; i < DEPTH; i++)
    g_string_append_c (body, ']');
  g_string_append (body, suffix);
  return g_strdup_printf ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                          path, body->len, body->str);
}

/* One wave (about 4 s): silent and trickling connections held while the bodies and the jobs go
 * in, then all closed. */
static void
attack_wave (Attacker *a, const gchar *deep_jobs, const gchar *deep_fn)
{
  enum { SILENT_ADDRESSES = 6, SILENT_EACH = 200, TRICKLE = 100 };
  static const gchar header[] = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n";
  g_autoptr (GArray) held = g_array_new (FALSE, FALSE, sizeof (gint));
  const gchar *job = "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 31\r\nConnection: close\r\n\r\n"
                     "{\"fn\": \"fib\", \"args\": {\"n\": 9}}";

  for (guint i = 0; i < SILENT_ADDRESSES * SILENT_EACH; i++) {
    g_autofree gchar *source = g_strdup_printf ("127.0.2.%u", 1 + i / SILENT_EACH);
    gint fd = attack_connect (a->server, source);
    if (fd >= 0) {
      g_array_append_val (held, fd);
      a->silent++;
    }
  }
  for (guint i = 0; i < TRICKLE; i++) {
    gint fd = attack_connect (a->server, "127.0.3.1");
    if (fd >= 0)
      g_array_append_val (held, fd);
  }
  for (guint second = 0; second < 4 && g_get_monotonic_time () < a->until; second++) {
    for (guint i = SILENT_ADDRESSES * SILENT_EACH; i < held->len; i++)
      if (send (g_array_index (held, gint, i), header + second, 1, MSG_NOSIGNAL) == 1)
        a->trickled++;
    for (const gchar *const *deep = (const gchar *const[]){deep_jobs, deep_fn, NULL}; *deep;
         deep++) {
      guint status = attack_request (a->server, "127.0.3.2", *deep, strlen (*deep));
      if (status == 400)
        a->deep_refused++;
      else {
        a->wrong++;
        g_printerr ("attacker: deep body answered %u\n", status);
      }
    }
    for (guint i = 0; i < 20; i++) {
      guint status = attack_request (a->server, "127.0.3.3", job, strlen (job));
      if (status == 202)
        a->jobs_accepted++;
      else if (status == 429)
        a->jobs_refused++;
      else if (status == 503)
        a->jobs_queue_full++; /* the soak's small job queue */
      else {
        a->wrong++;
        g_printerr ("attacker: POST /jobs answered %u\n", status);
      }
    }
    g_usleep (G_USEC_PER_SEC);
  }
  for (guint i = 0; i < held->len; i++)
    close (g_array_index (held, gint, i));
}

static gpointer
attacker_thread (gpointer data)
{
  Attacker *a = data;
  g_autofree gchar *deep_jobs =
      deep_request ("/jobs", "{\"fn\": \"fib\", \"args\": {\"n\": ", "}}");
  g_autofree gchar *deep_fn = deep_request ("/fn/fib", "{\"n\": ", "}");

  while (g_get_monotonic_time () < a->until)
    attack_wave (a, deep_jobs, deep_fn);
  return NULL;
}

static gdouble
rss_mib (TestServer *server)
{
  g_autofree gchar *path =
      g_strdup_printf ("/proc/%s/status", g_subprocess_get_identifier (server->proc));
  g_autofree gchar *text = NULL;
  const gchar *line;

  g_assert_true (g_file_get_contents (path, &text, NULL, NULL));
  line = strstr (text, "VmRSS:");
  g_assert_nonnull (line);
  return g_ascii_strtod (line + 6, NULL) / 1024.0; /* kB */
}

static void
test_soak (void)
{
  const gchar *env = g_getenv ("SOAK_SECONDS");
  gdouble seconds = env ? g_ascii_strtod (env, NULL) : 60;
  TestServer *server = test_server_start ("[executor]\nthreads = 2\nqueue_limit = 6\n"
                                          "per_client_limit = 10\n"
                                          "[fib]\ntimeout = 0.5\n[log]\naccess = off\n",
                                          NULL);
  gint64 start = g_get_monotonic_time ();
  Client clients[CLIENTS];
  GThread *threads[CLIENTS];
  Counts total = {0};
  gdouble early = 0, late, peak = 0;
  gboolean sampled = FALSE;
  Attacker attacker = {.server = server,
                       .until = start + (gint64)(MAX (seconds - 5, 1) * G_USEC_PER_SEC)};
  GThread *attack;

  g_assert_cmpfloat (seconds, >, 0);
  attack = g_thread_new ("soak-attacker", attacker_thread, &attacker);
  for (gint i = 0; i < CLIENTS; i++) {
    clients[i] = (Client){.server = server,
                          .until = start + (gint64)(seconds * G_USEC_PER_SEC),
                          .seed = g_test_rand_int ()};
    threads[i] = g_thread_new ("soak-client", client_thread, &clients[i]);
  }
  /* "early" once the allocator has warmed up (a fifth of the run), "late" at the end */
  while (g_get_monotonic_time () < start + (gint64)(seconds * G_USEC_PER_SEC)) {
    g_usleep (G_USEC_PER_SEC / 2);
    gdouble now = rss_mib (server);
    peak = MAX (peak, now);
    if (!sampled && g_get_monotonic_time () >= start + (gint64)(seconds * G_USEC_PER_SEC / 5)) {
      early = now;
      sampled = TRUE;
    }
  }
  for (gint i = 0; i < CLIENTS; i++) {
    g_thread_join (threads[i]);
    total.fast += clients[i].counts.fast;
    total.fib_ok += clients[i].counts.fib_ok;
    total.timed_out += clients[i].counts.timed_out;
    total.queue_full += clients[i].counts.queue_full;
    total.client_limit += clients[i].counts.client_limit;
    total.aborted += clients[i].counts.aborted;
    total.wrong += clients[i].counts.wrong;
  }
  g_thread_join (attack);
  late = rss_mib (server);
  g_test_message ("soak %.0f s, %d clients: /fast 200 %" G_GUINT64_FORMAT
                  ", /fib 200 %" G_GUINT64_FORMAT ", 504 %" G_GUINT64_FORMAT
                  ", 503 %" G_GUINT64_FORMAT ", 429 %" G_GUINT64_FORMAT
                  ", hung up %" G_GUINT64_FORMAT ", wrong or missing %" G_GUINT64_FORMAT,
                  seconds, CLIENTS, total.fast, total.fib_ok, total.timed_out, total.queue_full,
                  total.client_limit, total.aborted, total.wrong);
  g_test_message ("server RSS: early %.1f MiB, late %.1f MiB, peak %.1f MiB", early, late, peak);
  g_test_message ("attacker: %" G_GUINT64_FORMAT " silent connections, %" G_GUINT64_FORMAT
                  " trickled bytes, %" G_GUINT64_FORMAT
                  " deep bodies refused; jobs %" G_GUINT64_FORMAT " accepted, %" G_GUINT64_FORMAT
                  " refused (store share), %" G_GUINT64_FORMAT
                  " refused (queue full); %" G_GUINT64_FORMAT " unexpected answers",
                  attacker.silent, attacker.trickled, attacker.deep_refused, attacker.jobs_accepted,
                  attacker.jobs_refused, attacker.jobs_queue_full, attacker.wrong);
  g_assert_cmpuint (total.wrong, ==, 0);
  g_assert_cmpuint (attacker.wrong, ==, 0);
  g_assert_cmpuint (attacker.deep_refused, >, 0);
  g_assert_cmpuint (attacker.silent, >, 0);
  g_assert_cmpuint (attacker.jobs_accepted, <=, 100); /* [jobs] max_stored_per_client */
  g_assert_cmpuint (attacker.jobs_refused, >, 0);
  /* the load really was mixed: every kind of outcome happened */
  g_assert_cmpuint (total.fast, >, 0);
  g_assert_cmpuint (total.fib_ok, >, 0);
  g_assert_cmpuint (total.timed_out, >, 0);
  g_assert_cmpuint (total.queue_full + total.client_limit, >, 0);
  g_assert_cmpuint (total.aborted, >, 0);
  /* stable: no steady growth after warm-up (a leak of one small block per request would add
   * tens of MiB over the tens of thousands of requests) */
  g_assert_cmpfloat (late, <=, early * 1.25 + 8);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

int
main (int argc, char **argv)
{
  struct rlimit rl;

  g_test_init (&argc, &argv, NULL);
  /* the attacker holds over a thousand sockets at once */
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit (RLIMIT_NOFILE, &rl);
  }
  g_test_add_func ("/soak/mixed-load", test_soak);
  return g_test_run ();
}
