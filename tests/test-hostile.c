/* test-hostile.c - malformed, abusive and abandoned requests against the real binary.
 *
 * Raw sockets on 127.0.0.1, because curl will not send most of these. Every case must end with
 * the right status or a clean close, and after every case the server must still answer /fast.
 * Leaks show up when the suite runs under ASan: test_server_stop() then fails on LSan's exit code.
 *
 * libmicrohttpd 0.9.75 answers some cases itself, before crunchd sees a request: a request line
 * or header past its per-connection memory (MHD_OPTION_CONNECTION_MEMORY_LIMIT, 32 KiB by
 * default) gets 414 (request line) or 431 (headers) and a close; syntax errors get 400 and a
 * close. Its error bodies are HTML, and for a bad Content-Length it repeats the status line
 * inside the body: we assert only the status and the close there. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <glib-unix.h>

#include "harness.h"

#define TIMEOUT_S 10.0 /* generous: ASan and a busy machine */
#define MAX_BODY 1000

static TestServer *server;

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

/* ---- a raw connection that reads HTTP/1.1 responses ---- */

typedef struct {
  gint fd;
  GString *in;
  gboolean closed; /* EOF or reset seen */
} Conn;

static gint
tcp_socket (const gchar *source)
{
  gint fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

  g_assert_cmpint (fd, >=, 0);
  if (source != NULL) {
    struct sockaddr_in from = {.sin_family = AF_INET};
    g_assert_cmpint (inet_pton (AF_INET, source, &from.sin_addr), ==, 1);
    g_assert_cmpint (bind (fd, (struct sockaddr *)&from, sizeof from), ==, 0);
  }
  return fd;
}

static struct sockaddr_in
server_addr (TestServer *s)
{
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons (s->port)};

  to.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
  return to;
}

/* source: a loopback address to connect from (per-IP limits), or NULL for 127.0.0.1 */
static Conn *
conn_open_from (TestServer *s, const gchar *source)
{
  Conn *c = g_new0 (Conn, 1);
  struct sockaddr_in to = server_addr (s);

  c->fd = tcp_socket (source);
  c->in = g_string_new (NULL);
  g_assert_cmpint (connect (c->fd, (struct sockaddr *)&to, sizeof to), ==, 0);
  return c;
}

static Conn *
conn_open (void)
{
  return conn_open_from (server, NULL);
}

static void
conn_free (Conn *c)
{
  close (c->fd);
  g_string_free (c->in, TRUE);
  g_free (c);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Conn, conn_free)

/* Closes with a TCP reset instead of a FIN: the abrupt end a crashed client produces. */
static void
conn_reset (Conn *c)
{
  struct linger lg = {.l_onoff = 1, .l_linger = 0};

  setsockopt (c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  conn_free (c);
}

/* Sends everything; a peer that closed early is not an error here (its answer tells). */
static void
conn_send (Conn *c, const void *data, gsize len)
{
  const gchar *p = data;

  while (len > 0) {
    gssize n = send (c->fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return;
    p += n;
    len -= (gsize)n;
  }
}

static void
conn_send_str (Conn *c, const gchar *text)
{
  conn_send (c, text, strlen (text));
}

/* One read into c->in, waiting at most until `until`. FALSE on timeout or close. */
static gboolean
conn_fill (Conn *c, gint64 until)
{
  gchar buf[65536];
  gint64 left = until - g_get_monotonic_time ();
  struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
  gssize n;

  if (c->closed || left <= 0 || poll (&pfd, 1, (gint)(left / 1000) + 1) <= 0)
    return FALSE;
  n = recv (c->fd, buf, sizeof buf, 0);
  if (n <= 0) {
    c->closed = TRUE;
    return FALSE;
  }
  g_string_append_len (c->in, buf, n);
  return TRUE;
}

typedef struct {
  guint status;
  gchar *headers; /* the raw header block, lower-cased */
  gchar *body;
} Response;

static void
response_free (Response *r)
{
  g_free (r->headers);
  g_free (r->body);
  g_free (r);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Response, response_free)

static gboolean
has_header (const Response *r, const gchar *line)
{
  g_autofree gchar *needle = g_ascii_strdown (line, -1);
  g_autofree gchar *with_eol = g_strconcat ("\r\n", needle, "\r\n", NULL);

  return strstr (r->headers, with_eol) != NULL;
}

/* Reads the next complete response (status line, headers, Content-Length body), or NULL if the
 * connection closes or the time runs out first. HEAD-style bodiless answers are not used here. */
static Response *
conn_read_response (Conn *c, gdouble timeout_s)
{
  gint64 until = g_get_monotonic_time () + (gint64)(timeout_s * G_USEC_PER_SEC);
  const gchar *end;
  gsize head_len, body_len = 0;
  Response *r;

  while ((end = g_strstr_len (c->in->str, c->in->len, "\r\n\r\n")) == NULL)
    if (!conn_fill (c, until))
      return NULL;
  head_len = (gsize)(end - c->in->str) + 4;
  r = g_new0 (Response, 1);
  r->headers = g_ascii_strdown (c->in->str, (gssize)head_len);
  g_assert_true (g_str_has_prefix (r->headers, "http/1.1 "));
  r->status = (guint)g_ascii_strtoull (r->headers + 9, NULL, 10);
  {
    const gchar *cl = strstr (r->headers, "\r\ncontent-length:");
    if (cl != NULL)
      body_len = (gsize)g_ascii_strtoull (cl + 17, NULL, 10);
  }
  while (c->in->len < head_len + body_len)
    if (!conn_fill (c, until)) {
      response_free (r);
      return NULL;
    }
  r->body = g_strndup (c->in->str + head_len, body_len);
  g_free (test_strip_request_id (r->body)); /* compare error messages without the id */
  g_string_erase (c->in, 0, (gssize)(head_len + body_len));
  return r;
}

/* TRUE if the server closes the connection (FIN or reset) within the time; data is dropped. */
static gboolean
conn_wait_closed (Conn *c, gdouble timeout_s)
{
  gint64 until = g_get_monotonic_time () + (gint64)(timeout_s * G_USEC_PER_SEC);

  while (conn_fill (c, until))
    g_string_truncate (c->in, 0);
  return c->closed;
}

/* One request on a fresh connection: its response (NULL if closed without one). */
static Response *
exchange (const void *request, gsize len)
{
  g_autoptr (Conn) c = conn_open ();

  conn_send (c, request, len);
  return conn_read_response (c, TIMEOUT_S);
}

#define EXCHANGE(literal) exchange (literal, sizeof literal - 1)

/* After every case: the server is alive and the fast lane answers. */
static void
assert_serving (TestServer *s)
{
  g_autofree gchar *url = test_server_url (s, "/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "Hello!");
}

/* ---- the cases ---- */

static void
test_oversized_headers (void)
{
  /* one huge header, then many small ones: both past MHD's 32 KiB connection memory */
  g_autoptr (GString) big = g_string_new ("GET /fast HTTP/1.1\r\nHost: x\r\nX-Big: ");
  g_autoptr (GString) many = g_string_new ("GET /fast HTTP/1.1\r\nHost: x\r\n");

  g_string_append_printf (big, "%0*d\r\n\r\n", 40000, 0);
  for (gint i = 0; i < 3000; i++)
    g_string_append_printf (many, "X-H%d: v\r\n", i);
  g_string_append (many, "\r\n");
  for (GString **req = (GString *[]){big, many, NULL}; *req != NULL; req++) {
    g_autoptr (Conn) c = conn_open ();
    conn_send (c, (*req)->str, (*req)->len);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 431);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  /* just under the limit is fine */
  {
    g_autoptr (GString) fits = g_string_new ("GET /fast HTTP/1.1\r\nHost: x\r\nX-Big: ");
    g_string_append_printf (fits, "%0*d\r\n\r\n", 8000, 0);
    g_autoptr (Response) r = exchange (fits->str, fits->len);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
  }
  assert_serving (server);
}

static void
test_long_uri (void)
{
  for (gsize n = 40000; n <= 1000000; n *= 25) {
    g_autoptr (GString) req = g_string_new ("GET /fib/");
    g_autoptr (Conn) c = conn_open ();
    g_string_append_printf (req, "%0*d HTTP/1.1\r\nHost: x\r\n\r\n", (gint)n, 1);
    conn_send (c, req->str, req->len);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 414);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  assert_serving (server);
}

static void
test_percent_encoding (void)
{
  const gchar *bad = "the request path is empty or has malformed percent-encoding (or %00)\n";
  const struct {
    const gchar *target;
    guint status;
    const gchar *body;
  } cases[] = {
      {"/f%61st", 200, "Hello!"},
      {"/fib/%31%30", 200, "55"},
      {"/fast?a=%zz&b=%00&c", 200, "Hello!"}, /* the query is not ours to judge */
      {"/fib/%zz", 400, NULL},
      {"/fib/1%", 400, NULL},
      {"/fib/1%4", 400, NULL},
      {"/fa%st", 400, NULL},
      /* regression: MHD's decoder made these "/fib/1" and "/fast" (200) */
      {"/fib/1%00", 400, NULL},
      {"/fast%00junk", 400, NULL},
      {"/fib/%2F10", 400, "fib: N must be a non-negative integer, got '/10'\n"},
      {"?a=1", 400, NULL}, /* no path at all */
      /* a function's arguments: a bad escape was read as an empty value ("got ''") */
      {"/fn/fib?n=%31%30", 200, "55"},
      {"/fn/fib?n=%zz", 400, "fib: argument 'n' has malformed percent-encoding (or %00)\n"},
      {"/fn/fib?n=1%00", 400, "fib: argument 'n' has malformed percent-encoding (or %00)\n"},
      {"/fn/fib?n=1%2", 400, "fib: argument 'n' has malformed percent-encoding (or %00)\n"},
      {"/fn/fib?%zz=1", 400, "fib: argument '' has malformed percent-encoding (or %00)\n"},
      {"/fn/fib?n=", 400, "fib: argument 'n' must be an integer from 0 to 40, got ''\n"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autofree gchar *req = g_strdup_printf ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n", cases[i].target);
    g_autoptr (Response) r = exchange (req, strlen (req));
    g_test_message ("GET %s", cases[i].target);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, cases[i].status);
    g_assert_cmpstr (r->body, ==, cases[i].body ? cases[i].body : bad);
  }
  assert_serving (server);
}

/* HEAD with Accept: text/event-stream is not streamed: it gets the plain call's headers and no
 * body. It was streamed, and libmicrohttpd 0.9.75 writes a chunked answer's last chunk even for
 * HEAD, so the next answer on the connection was read as "0". */
static void
test_head_not_streamed (void)
{
  g_autoptr (Conn) c = conn_open ();
  gint64 until = g_get_monotonic_time () + (gint64)(TIMEOUT_S * G_USEC_PER_SEC);
  const gchar *next;

  conn_send_str (c, "HEAD /fib/10 HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
                    "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  while (strstr (c->in->str, "Hello!") == NULL)
    g_assert_true (conn_fill (c, until));
  g_test_message ("%s", c->in->str);
  g_assert_true (g_str_has_prefix (c->in->str, "HTTP/1.1 200 "));
  g_assert_null (strstr (c->in->str, "event-stream"));
  next = strstr (c->in->str, "\r\n\r\n") + 4; /* the HEAD's headers end, the GET's answer follows */
  g_assert_true (g_str_has_prefix (next, "HTTP/1.1 200 "));
  assert_serving (server);
}

static void
test_nul_bytes (void)
{
  /* a NUL before the method or inside a header name: MHD's 400 and a close; MHD 0.9.75 cuts a
   * field value or a path at a raw NUL, so crunchd sees "a" (a value it never reads: 200) and
   * "/fa" (no such route: 404) */
#define REQ(literal) literal, sizeof literal - 1
  const struct {
    const gchar *request;
    gsize len;
    guint status;
    gboolean closes;
  } cases[] = {
      {REQ ("\0GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"), 400, TRUE},
      {REQ ("GET /fast HTTP/1.1\r\nHost: x\r\nX\0Y: 1\r\n\r\n"), 400, TRUE},
      {REQ ("GET /fast HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"), 200, FALSE},
      {REQ ("GET /fa\0st HTTP/1.1\r\nHost: x\r\n\r\n"), 404, FALSE},
  };
#undef REQ

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (Conn) c = conn_open ();
    conn_send (c, cases[i].request, cases[i].len);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_test_message ("case %zu", i);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, cases[i].status);
    if (cases[i].closes)
      g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  assert_serving (server);
}

static void
test_garbage (void)
{
  /* the start of a TLS ClientHello: no HTTP answer makes sense, a close does */
  const guint8 tls[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc,
                        0x03, 0x03, 0x5a, 0x5a, 0x0d, 0x0a, 0x0d, 0x0a};
  g_autoptr (GRand) rand = g_rand_new_with_seed (20261125);

  {
    g_autoptr (Conn) c = conn_open ();
    conn_send (c, tls, sizeof tls);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  {
    g_autoptr (Response) r = EXCHANGE ("hello there\r\n\r\n");
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 400);
  }
  /* random bytes ending in a blank line: an error status then a close, or just a close */
  for (gint i = 0; i < 30; i++) {
    gsize len = (gsize)g_rand_int_range (rand, 1, 4096);
    g_autofree guint8 *junk = g_malloc (len + 4);
    g_autoptr (Conn) c = conn_open ();
    for (gsize j = 0; j < len; j++)
      junk[j] = (guint8)g_rand_int_range (rand, 0, 256);
    memcpy (junk + len, "\r\n\r\n", 4);
    conn_send (c, junk, len + 4);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    if (r != NULL)
      g_assert_cmpuint (r->status, >=, 400);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  assert_serving (server);
}

static void
test_unknown_methods (void)
{
  const gchar *methods[] = {"FOO", "get", "PROPFIND", "CONNECT", "OPTIONS", "TRACE"};

  for (gsize i = 0; i < G_N_ELEMENTS (methods); i++) {
    g_autofree gchar *req = g_strdup_printf ("%s /fast HTTP/1.1\r\nHost: x\r\n\r\n", methods[i]);
    g_autoptr (Response) r = exchange (req, strlen (req));
    g_test_message ("%s /fast", methods[i]);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 405);
    g_assert_true (has_header (r, "Allow: GET, HEAD"));
    g_assert_cmpstr (r->body, ==, "method not allowed\n");
  }
  assert_serving (server);
}

/* A GET body is read and ignored: the next request on the connection is not mistaken for it. */
static void
test_body_on_get (void)
{
  g_autoptr (Conn) c = conn_open ();

  conn_send_str (c, "GET /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\n"
                    "GET /nope HTTP/1.1\r\n\r\n\r\n"
                    "GET /fib/10 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\nhello\r\n0\r\n\r\n"
                    "GET /fib/11 HTTP/1.1\r\nHost: x\r\n\r\n");
  const gchar *expect[] = {"Hello!", "55", "89"};
  for (gsize i = 0; i < G_N_ELEMENTS (expect); i++) {
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, expect[i]);
  }
  assert_serving (server);
}

static gchar *
chunked_body (gsize total)
{
  GString *s = g_string_new (NULL);

  for (gsize sent = 0; sent < total; sent += 1024) {
    g_string_append (s, "400\r\n");
    for (gint i = 0; i < 1024; i++)
      g_string_append_c (s, 'a');
    g_string_append (s, "\r\n");
  }
  g_string_append (s, "0\r\n\r\n");
  return g_string_free (s, FALSE);
}

static void
test_body_cap (void)
{
  /* Content-Length over the cap: 413 at once, without reading the body, then a close */
  {
    g_autoptr (Conn) c = conn_open ();
    conn_send_str (c, "POST /fib/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n");
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 413);
    g_assert_cmpstr (r->body, ==, "request body too large\n");
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  /* a chunked body over the cap: 413 once it ends (regression: was a close, no answer) */
  {
    g_autofree gchar *body = chunked_body (3 * MAX_BODY);
    g_autofree gchar *req = g_strconcat (
        "GET /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body, NULL);
    g_autoptr (Response) r = exchange (req, strlen (req));
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 413);
    g_assert_cmpstr (r->body, ==, "request body too large\n");
  }
  /* ... and one that goes on and on is cut off, not read forever */
  {
    g_autofree gchar *body = chunked_body (4 << 20);
    g_autoptr (Conn) c = conn_open ();
    conn_send_str (c, "GET /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    conn_send_str (c, body);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  /* at the cap is fine; broken lengths are MHD's 400 */
  {
    g_autofree gchar *body = g_strnfill (MAX_BODY, 'a');
    g_autofree gchar *req = g_strdup_printf (
        "GET /fast HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", MAX_BODY, body);
    g_autoptr (Response) r = exchange (req, strlen (req));
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
  }
  for (const gchar *const *cl = (const gchar *const[]){"abc", "-1", "1 2", NULL}; *cl != NULL;
       cl++) {
    g_autofree gchar *req =
        g_strdup_printf ("POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n", *cl);
    g_autoptr (Conn) c = conn_open ();
    conn_send_str (c, req);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_test_message ("Content-Length: %s", *cl);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 400);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
  }
  {
    g_autoptr (Response) r = EXCHANGE (
        "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 413);
  }
  assert_serving (server);
}

/* Several requests in one write, both lanes mixed: the answers come back in order. */
static void
test_pipelined (void)
{
  enum { FAST = 50 };
  g_autoptr (Conn) c = conn_open ();
  g_autoptr (GString) many = g_string_new (NULL);
  const struct {
    guint status;
    const gchar *body;
  } expect[] = {{200, "Hello!"},
                {200, "55"},
                {404, "no such route\n"},
                {200, "6765"},
                {400, "fib: N must be a non-negative integer, got 'x'\n"},
                {200, "Hello!"}};

  conn_send_str (c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /fib/10 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /fib/20 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /fib/x HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  for (gsize i = 0; i < G_N_ELEMENTS (expect); i++) {
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, expect[i].status);
    g_assert_cmpstr (r->body, ==, expect[i].body);
  }
  for (gint i = 0; i < FAST; i++)
    g_string_append_printf (many, "GET /fib/%d HTTP/1.1\r\nHost: x\r\n\r\n", i % 20);
  conn_send (c, many->str, many->len);
  for (gint i = 0; i < FAST; i++) {
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_autofree gchar *value = NULL;
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    value = g_strdup_printf ("%" G_GUINT64_FORMAT, fib ((guint)(i % 20)));
    g_assert_cmpstr (r->body, ==, value);
  }
  assert_serving (server);
}

static void
test_http10 (void)
{
  for (const gchar *const *req =
           (const gchar *const[]){"GET /fast HTTP/1.0\r\n\r\n", "GET /fib/5 HTTP/1.0\r\n\r\n",
                                  "GET /nope HTTP/1.0\r\n\r\n", NULL};
       *req != NULL; req++) {
    g_autoptr (Conn) c = conn_open ();
    conn_send_str (c, *req);
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, g_str_has_prefix (*req, "GET /nope") ? 404 : 200);
    g_assert_true (conn_wait_closed (c, TIMEOUT_S)); /* no keep-alive was asked for */
  }
  assert_serving (server);
}

static void
test_disconnect_mid_request (void)
{
  const gchar *partial[] = {
      "GET /fa",
      "GET /fast HTTP/1.1\r\nHost: x\r\nX-Half: ",
      "POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
      "GET /fast HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nabc",
  };

  for (gint reset = 0; reset <= 1; reset++)
    for (gsize i = 0; i < G_N_ELEMENTS (partial); i++) {
      Conn *c = conn_open ();
      conn_send_str (c, partial[i]);
      g_usleep (20000);
      if (reset)
        conn_reset (c);
      else
        conn_free (c);
    }
  assert_serving (server);
}

static void
test_disconnect_mid_response (void)
{
  enum { REQUESTS = 20000 };
  g_autoptr (GString) many = g_string_new (NULL);
  gint small = 4096;

  /* compute lane: the client is gone before its job ends */
  for (gint i = 0; i < 10; i++) {
    Conn *c = conn_open ();
    conn_send_str (c, "GET /fib/27 HTTP/1.1\r\nHost: x\r\n\r\n");
    if (i % 2)
      conn_reset (c);
    else
      conn_free (c);
  }
  /* fast lane: far more answers than the socket buffers hold, then a reset mid-stream */
  for (gint i = 0; i < REQUESTS; i++)
    g_string_append (many, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  for (gint reset = 0; reset <= 1; reset++) {
    Conn *c = conn_open ();
    setsockopt (c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    g_assert_cmpint (fcntl (c->fd, F_SETFL, O_NONBLOCK), ==, 0);
    conn_send (c, many->str, many->len); /* as much as fits */
    g_autoptr (Response) r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    if (reset)
      conn_reset (c);
    else
      conn_free (c);
  }
  assert_serving (server);
}

/* Slowloris: one byte a second. MHD's connection_timeout counts idle time, so a trickle keeps a
 * connection; it must not hold up anyone else, the per-IP limit caps how many one address holds,
 * and once the trickle stops the timeout closes it. */
static void
test_slowloris (void)
{
  enum { PER_IP = 8 };
  g_autoptr (TestServer) s = test_server_start ("[server]\nconnection_timeout = 2\n"
                                                "max_connections_per_ip = 8\n",
                                                NULL);
  const gchar *request = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n";
  Conn *slow[PER_IP];
  g_autoptr (Conn) refused = NULL;
  g_autofree gchar *fast = test_server_url (s, "/fast");

  for (gint i = 0; i < PER_IP; i++)
    slow[i] = conn_open_from (s, "127.0.0.2");
  for (gint second = 0; second < 4; second++) {
    for (gint i = 0; i < PER_IP; i++)
      conn_send (slow[i], request + second, 1);
    /* the fast lane (from 127.0.0.1) is not held up */
    g_autoptr (TestReply) r = test_http ("GET", fast, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpfloat (r->seconds, <, 1.0);
    g_usleep (G_USEC_PER_SEC);
  }
  for (gint i = 0; i < PER_IP; i++)
    g_assert_false (slow[i]->closed);
  /* the address's quota is used up: one more from it is closed at once */
  refused = conn_open_from (s, "127.0.0.2");
  conn_send_str (refused, request);
  g_assert_true (conn_wait_closed (refused, TIMEOUT_S));
  g_assert_null (conn_read_response (refused, 0.1));
  /* the trickle stops: connection_timeout (2 s) closes them all */
  for (gint i = 0; i < PER_IP; i++) {
    g_assert_true (conn_wait_closed (slow[i], 2 + TIMEOUT_S));
    conn_free (slow[i]);
  }
  assert_serving (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

static guint
count_fds (GPid pid)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%d/fd", pid);
  g_autoptr (GDir) dir = g_dir_open (path, 0, NULL);
  guint n = 0;

  while (dir != NULL && g_dir_read_name (dir) != NULL)
    n++;
  return n;
}

/* Opens `n` connections at once (non-blocking connects, then waits for all), from `source`
 * (a loopback address) or 127.0.0.1 if NULL. */
static gint *
open_many_from (TestServer *s, guint n, const gchar *source)
{
  gint *fds = g_new (gint, n);
  struct sockaddr_in to = server_addr (s);
  g_autofree struct pollfd *pfds = g_new0 (struct pollfd, n);
  gint64 until = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
  guint pending = n;

  for (guint i = 0; i < n; i++) {
    fds[i] = tcp_socket (source);
    g_unix_set_fd_nonblocking (fds[i], TRUE, NULL);
    if (connect (fds[i], (struct sockaddr *)&to, sizeof to) != 0)
      g_assert_cmpint (errno, ==, EINPROGRESS);
    pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLOUT};
  }
  while (pending > 0 && g_get_monotonic_time () < until) {
    g_assert_cmpint (poll (pfds, n, 1000), >=, 0);
    for (guint i = 0; i < n; i++) {
      gint err = 0;
      socklen_t len = sizeof err;
      if (pfds[i].fd < 0 || pfds[i].revents == 0)
        continue;
      g_assert_cmpint (getsockopt (fds[i], SOL_SOCKET, SO_ERROR, &err, &len), ==, 0);
      g_assert_cmpint (err, ==, 0);
      pfds[i].fd = -1;
      pending--;
    }
  }
  g_assert_cmpuint (pending, ==, 0);
  return fds;
}

static gint *
open_many (TestServer *s, guint n)
{
  return open_many_from (s, n, NULL);
}

/* 5,000 idle connections at once. crunchd is started with the common soft limit of 1024 open
 * files, so it must raise its own RLIMIT_NOFILE to hold them; then each gets its answer. */
static void
test_idle_connections (void)
{
  enum { N = 5000 };
  struct rlimit rl, low;
  g_autoptr (TestServer) s = NULL;
  g_autofree gint *fds = NULL;
  g_autoptr (GString) in = g_string_new (NULL);
  GPid pid;
  guint answered = 0;

  g_assert_cmpint (getrlimit (RLIMIT_NOFILE, &rl), ==, 0);
  if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < 2 * N + 200) {
    g_test_skip ("the hard RLIMIT_NOFILE is too low for this test");
    return;
  }
  low = rl;
  low.rlim_cur = 1024;
  g_assert_cmpint (setrlimit (RLIMIT_NOFILE, &low), ==, 0); /* crunchd inherits this */
  s = test_server_start ("[server]\nmax_connections = 6000\nconnection_timeout = 120\n"
                         "request_timeout = 120\nmax_connections_per_ip = 0\n",
                         NULL);
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? 2 * N + 200 : rl.rlim_max;
  g_assert_cmpint (setrlimit (RLIMIT_NOFILE, &rl), ==, 0);
  pid = (GPid)g_ascii_strtoll (g_subprocess_get_identifier (s->proc), NULL, 10);

  fds = open_many (s, N);
  /* accepted, not merely queued in the backlog: the server holds a descriptor for each */
  for (gint64 until = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
       count_fds (pid) < N && g_get_monotonic_time () < until;)
    g_usleep (50000);
  g_assert_cmpuint (count_fds (pid), >=, N);
  assert_serving (s);

  for (guint i = 0; i < N; i++) {
    Conn c = {.fd = fds[i], .in = in};
    conn_send_str (&c, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
  }
  for (guint i = 0; i < N; i++) {
    Conn c = {.fd = fds[i], .in = in};
    g_autoptr (Response) r = conn_read_response (&c, TIMEOUT_S);
    g_string_truncate (in, 0);
    if (r != NULL && r->status == 200)
      answered++;
    close (fds[i]);
  }
  g_assert_cmpuint (answered, ==, N);
  assert_serving (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* ---- attacks on the shipped defaults (data/crunchd.ini as it is) ---- */

static TestServer *
start_sample (void)
{
  const gchar *path = g_getenv ("CRUNCHD_SAMPLE_INI");
  g_autofree gchar *ini = NULL;

  g_assert_true (g_file_get_contents (path, &ini, NULL, NULL));
  return test_server_start (ini, NULL);
}

/* The value of one sample line of /metrics ("name{labels}"), or -1. */
static gint64
metric (TestServer *s, const gchar *sample)
{
  g_autofree gchar *url = test_server_url (s, "/metrics");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autofree gchar *needle = g_strconcat ("\n", sample, " ", NULL);
  const gchar *at = r->body != NULL ? strstr (r->body, needle) : NULL;

  return at != NULL ? g_ascii_strtoll (at + strlen (needle), NULL, 10) : -1;
}

/* A legitimate client (from 127.0.0.1, an address the attack does not use) asks for /fast on a
 * fresh connection: it must be answered within 1 s. Returns the time taken. */
static gdouble
legit_fast (TestServer *s)
{
  g_autofree gchar *url = test_server_url (s, "/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpfloat (r->seconds, <, 1.0 * TEST_TIME_SCALE);
  return r->seconds;
}

/* Open connections that MHD has not closed yet (EOF or reset not seen). */
static guint
count_open (gint *fds, guint n)
{
  guint open = 0;

  for (guint i = 0; i < n; i++) {
    gchar buf[256];
    gssize got;
    if (fds[i] < 0)
      continue;
    got = recv (fds[i], buf, sizeof buf, MSG_DONTWAIT);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      close (fds[i]);
      fds[i] = -1;
    } else {
      open++;
    }
  }
  return open;
}

static void
close_all (gint *fds, guint n)
{
  for (guint i = 0; i < n; i++)
    if (fds[i] >= 0)
      close (fds[i]);
}

/* 1,000 connections from one address, each sending its request header one byte a second. The
 * per-address default (256) caps how many it holds, request_timeout (10 s, counted from the
 * connection's start, not its last byte) closes those it has, and a client from another address
 * is answered within 1 s all along. */
static void
test_trickle_flood (void)
{
  enum { N = 1000 };
  g_autoptr (TestServer) s = start_sample ();
  const gchar *request = "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n";
  g_autofree gint *fds = open_many_from (s, N, "127.0.0.2");
  gint64 start = g_get_monotonic_time ();
  gdouble worst = 0;
  guint open = N, held = 0;

  for (guint second = 0; open > 0 && second < 20; second++) {
    for (guint i = 0; i < N; i++)
      if (fds[i] >= 0)
        send (fds[i], request + second, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    worst = MAX (worst, legit_fast (s));
    g_usleep (G_USEC_PER_SEC);
    open = count_open (fds, N);
    if (second == 2)
      held = open;
  }
  g_test_message ("trickle flood: %u of %d held after 3 s, all closed after %.1f s; "
                  "legitimate /fast at worst %.1f ms",
                  held, N, (g_get_monotonic_time () - start) / 1e6, worst * 1e3);
  g_assert_cmpuint (held, <=, 256); /* max_connections_per_ip */
  g_assert_cmpuint (held, >, 0);
  g_assert_cmpuint (open, ==, 0);
  /* closed by the deadline, not by the idle timeout (30 s), which a trickle never reaches */
  g_assert_cmpfloat ((g_get_monotonic_time () - start) / 1e6, <, 10 + 3 * TEST_TIME_SCALE);
  g_assert_cmpint (metric (s, "crunchd_connections_closed_total{reason=\"request_timeout\"}"), >=,
                   held);
  close_all (fds, N);
  worst = legit_fast (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* 3,000 connections from 50 addresses that send nothing: three times the connection table.
 * The oldest waiting connections make room for new ones, so a new client is answered within 1 s,
 * and when the attackers leave every slot comes back. */
static void
test_silent_flood (void)
{
  enum { ADDRESSES = 50, PER_ADDRESS = 60 };
  g_autoptr (TestServer) s = start_sample ();
  gint *fds[ADDRESSES];
  gdouble worst = 0;
  gint64 made_room, open;

  for (guint a = 0; a < ADDRESSES; a++) {
    g_autofree gchar *source = g_strdup_printf ("127.0.1.%u", a + 1);
    fds[a] = open_many_from (s, PER_ADDRESS, source);
    if (a % 10 == 9)
      worst = MAX (worst, legit_fast (s));
  }
  for (guint i = 0; i < 5; i++) {
    worst = MAX (worst, legit_fast (s));
    g_usleep (G_USEC_PER_SEC / 5);
  }
  made_room = metric (s, "crunchd_connections_closed_total{reason=\"made_room\"}");
  g_test_message ("silent flood: %d connections, %" G_GINT64_FORMAT
                  " closed to make room; legitimate /fast at worst %.1f ms",
                  ADDRESSES * PER_ADDRESS, made_room, worst * 1e3);
  g_assert_cmpint (made_room, >=, ADDRESSES * PER_ADDRESS - 1024);
  for (guint a = 0; a < ADDRESSES; a++) {
    close_all (fds[a], PER_ADDRESS);
    g_free (fds[a]);
  }
  /* recovered: the table empties (the scrape's own connection aside; the one before may still be
   * closing on another polling thread, so the value that ended the wait is the one judged), and
   * a burst of clients is served */
  open = metric (s, "crunchd_connections_open");
  for (gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;
       open > 1 && g_get_monotonic_time () < until;) {
    g_usleep (50000);
    open = metric (s, "crunchd_connections_open");
  }
  g_assert_cmpint (open, <=, 1);
  {
    g_autofree gchar *url = test_server_url (s, "/fast");
    g_autoptr (GArray) statuses = test_http_many (url, 200, NULL, 0);
    for (guint i = 0; i < statuses->len; i++)
      g_assert_cmpint (g_array_index (statuses, long, i), ==, 200);
  }
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* 600 identical slow requests from 12 addresses (50 each, under the per-client limit) share one
 * job: before, every one of them parked a connection, past queue_limit (which counts jobs), until
 * the table was full. Now every ticket counts: at most queue_limit + threads park, the rest get
 * 503 at once, and a new client is answered. */
static void
test_coalesced_flood (void)
{
  enum { ADDRESSES = 12, EACH = 50 };
  g_autoptr (TestServer) s = start_sample ();
  const gchar *request = "GET /fib/92 HTTP/1.1\r\nHost: x\r\n\r\n";
  gint *fds[ADDRESSES];
  Conn conns[ADDRESSES][EACH];
  gboolean answered[ADDRESSES][EACH] = {{FALSE}};
  guint refused = 0, rounds = 0;
  gint64 parked, limit = 256 + g_get_num_processors (); /* queue_limit + threads */

  for (guint a = 0; a < ADDRESSES; a++) {
    g_autofree gchar *source = g_strdup_printf ("127.0.2.%u", a + 1);
    fds[a] = open_many_from (s, EACH, source);
    for (guint i = 0; i < EACH; i++) {
      send (fds[a][i], request, strlen (request), MSG_NOSIGNAL);
      conns[a][i] = (Conn){.fd = fds[a][i], .in = g_string_new (NULL)};
    }
  }
  g_usleep (G_USEC_PER_SEC / 2 * TEST_TIME_SCALE);
  parked = metric (s, "crunchd_connections_suspended");
  /* the refused are answered already, but a sanitized build on a busy machine may still be
   * writing the last few (TSan once had 341 of 342 after 5 s): rounds until all are read, or 5 s */
  for (gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;
       refused < ADDRESSES * EACH - limit && g_get_monotonic_time () < until; rounds++)
    for (guint a = 0; a < ADDRESSES; a++)
      for (guint i = 0; i < EACH; i++) {
        if (answered[a][i])
          continue;
        g_autoptr (Response) r = conn_read_response (&conns[a][i], 0.001);
        if (r != NULL) {
          refused += r->status == 503;
          answered[a][i] = TRUE;
        }
      }
  g_test_message (
      "coalesced flood: %d requests, %u refused (%u round(s) of reading), %" G_GINT64_FORMAT
      " parked; legitimate /fast in %.1f ms",
      ADDRESSES * EACH, refused, rounds, parked, legit_fast (s) * 1e3);
  g_assert_cmpint (parked, <=, limit);
  g_assert_cmpint (parked, >, 0);
  g_assert_cmpuint (refused, >=, ADDRESSES * EACH - limit);
  for (guint a = 0; a < ADDRESSES; a++) {
    for (guint i = 0; i < EACH; i++)
      g_string_free (conns[a][i].in, TRUE);
    close_all (fds[a], EACH);
    g_free (fds[a]);
  }
  assert_serving (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* A request every 0.3 s for the same slow result keeps its shared job wanted; the job still
 * stops at its function's deadline (1 s here), so another client's job gets the one worker. */
static void
test_coalesced_deadline (void)
{
  g_autoptr (TestServer) s =
      test_server_start ("[executor]\nthreads = 1\n[fib]\ntimeout = 1\n", NULL);
  const gchar *slow = "GET /fib/92 HTTP/1.1\r\nHost: x\r\n\r\n";
  g_autoptr (GPtrArray) keep = g_ptr_array_new_with_free_func ((GDestroyNotify)conn_free);
  g_autofree gchar *url = test_server_url (s, "/fib/20");
  TestCall *other = NULL;
  g_autoptr (TestReply) r = NULL;

  for (guint i = 0; i < 10; i++) {
    Conn *c = conn_open_from (s, "127.0.0.7");
    conn_send_str (c, slow);
    g_ptr_array_add (keep, c);
    /* from 127.0.0.1 at 0.6 s, while the shared job still runs: its own deadline (1.6 s) leaves
     * 0.6 s after the shared job's stop at 1 s (0.3 s was too little under ASan in CI) */
    if (i == 2)
      other = test_call_start (g_steal_pointer (&url));
    g_usleep (G_USEC_PER_SEC * 3 / 10);
  }
  r = test_call_finish (other);
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "6765");
  for (guint i = 0; i < keep->len; i++) {
    g_autoptr (Response) slow_answer = conn_read_response (keep->pdata[i], 3 * TEST_TIME_SCALE);
    g_assert_nonnull (slow_answer);
    g_assert_cmpuint (slow_answer->status, ==, 504);
  }
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* A parked connection (its request is computing) is never the one closed, neither by the request
 * deadline nor to make room. */
static void
test_parked_kept (void)
{
  g_autofree gchar *ini = test_ini_with_spin ("[server]\nrequest_timeout = 1\n"
                                              "max_connections = 64\n"
                                              "[executor]\nthreads = 1\nqueue_limit = 8\n");
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  /* 2 s by the clock: parked past request_timeout and while the table overflows */
  const gchar *request = "GET /fn/spin?seconds=2 HTTP/1.1\r\nHost: x\r\n\r\n";
  g_autoptr (Conn) parked = conn_open_from (s, "127.0.0.3");
  g_autoptr (Response) r = NULL;
  g_autofree gint *fds = NULL;

  conn_send_str (parked, request);
  g_usleep (G_USEC_PER_SEC / 5);
  fds = open_many_from (s, 120, "127.0.0.4"); /* twice the table: room is made, oldest first */
  r = conn_read_response (parked, 10 * TEST_TIME_SCALE);
  g_assert_nonnull (r);
  g_assert_cmpuint (r->status, ==, 200);
  close_all (fds, 120);
  assert_serving (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* JSON that json-glib accepts but reads wrongly or loosely (an attack review): an integer beyond
 * 64 bits wrapped into range, \u0000 cut a string short, a repeated name kept its last value,
 * hex, leading zeros and a second value were read. Each is a 400 saying what was wrong. */
static void
test_lax_json (void)
{
  g_autoptr (TestServer) s = start_sample ();
  g_autofree gchar *jobs = test_server_url (s, "/jobs");
  g_autofree gchar *fn = test_server_url (s, "/fn/fib");
  const gchar *json[] = {"Content-Type: application/json", NULL};
  const struct {
    gboolean job;
    const gchar *body, *why;
  } cases[] = {
      {FALSE, "{\"n\": 18446744073709551615}", "an integer beyond 64 bits"},
      {FALSE, "{\"n\": -9223372036854775809}", "an integer beyond 64 bits"},
      {FALSE, "{\"n\": 1, \"n\": 90}", "a member name given twice"},
      {FALSE, "{\"n\": 0x10}", "a hex number (JSON numbers are decimal)"},
      {FALSE, "{\"n\": 5} // five", "a comment (JSON has none)"},
      {FALSE, "{\"n\": 05}", "a number with a leading zero"},
      {FALSE, "{\"n\": 5}{\"n\": 6}", "more than one value"},
      {TRUE, "{\"fn\": \"fi\\u0000b\", \"args\": {\"n\": 5}}", "\\u0000 in a string"},
      {TRUE, "{\"fn\": \"fib\", \"args\": {\"n\": 5}, \"fn\": \"fib\"}",
       "a member name given twice"},
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (TestReply) r =
        test_http_body ("POST", cases[i].job ? jobs : fn, json, cases[i].body);
    g_assert_cmpint (r->status, ==, 400);
    g_assert_nonnull (strstr (r->body, "not strict JSON (RFC 8259): "));
    g_assert_nonnull (strstr (r->body, cases[i].why));
    g_assert_nonnull (r->body_request_id);
  }
  {
    g_autoptr (TestReply) r = test_http_body ("POST", fn, json, "{\"n\": 9223372036854775807}");
    g_assert_cmpint (r->status, ==, 400); /* in range for JSON, beyond fib's max_n */
    g_assert_null (strstr (r->body, "not strict JSON"));
  }
  assert_serving (s);
}

/* JSON nested 100,000 levels deep (a 200 KB body, far below max_body_size) on both routes that
 * read JSON: 400 naming the limit, never a crash (json-glib's parser recurses per level). */
static void
test_deep_json (void)
{
  enum { DEPTH = 100000 };
  g_autoptr (TestServer) s = start_sample ();
  g_autoptr (GString) body = g_string_new ("{\"fn\": \"fib\", \"args\": {\"n\": ");
  g_autofree gchar *jobs = test_server_url (s, "/jobs");
  g_autofree gchar *fn = test_server_url (s, "/fn/fib");
  const gchar *json[] = {"Content-Type: application/json", NULL};

  for (guint i = 0; i < DEPTH; i++)
    g_string_append_c (body, '[');
  for (guint i = 0; i < DEPTH; i++)
    g_string_append_c (body, ']');
  g_string_append (body, "}}");
  g_assert_cmpuint (body->len, >, 200000);
  {
    g_autoptr (TestReply) r = test_http_body ("POST", jobs, json, body->str);
    g_assert_cmpint (r->status, ==, 400);
    g_assert_nonnull (strstr (r->body, "deeper than 32 levels"));
    g_assert_nonnull (r->body_request_id);
  }
  {
    g_autoptr (TestReply) r =
        test_http_body ("POST", fn, json, body->str + strlen ("{\"fn\": \"fib\", \"args\": "));
    g_assert_cmpint (r->status, ==, 400);
    g_assert_nonnull (strstr (r->body, "deeper than 32 levels"));
  }
  {
    /* json-glib reads 'single quotes' and comments, which would hide brackets from a scan that
     * knows only "strings": such bodies nested 200,000 deep crashed crunchd (attack review) */
    const gchar *hiding[] = {"{\"x\": ['\"', ", "{\"x\": /* \" */ "};
    for (guint h = 0; h < G_N_ELEMENTS (hiding); h++) {
      g_autoptr (GString) sneaky = g_string_new (hiding[h]);
      for (guint i = 0; i < 2 * DEPTH; i++)
        g_string_append_c (sneaky, '[');
      g_autoptr (TestReply) r = test_http_body ("POST", h == 0 ? fn : jobs, json, sneaky->str);
      g_assert_cmpint (r->status, ==, 400);
      g_assert_nonnull (strstr (r->body, "not strict JSON"));
    }
    g_autoptr (GString) quoted = g_string_new ("{'n':");
    for (guint i = 0; i < 3500; i++)
      g_string_append (quoted, "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[['" /* 30 deep */
                               "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]',");
    g_autoptr (TestReply) r = test_http_body ("POST", jobs, json, quoted->str);
    g_assert_cmpint (r->status, ==, 400);
    g_assert_nonnull (strstr (r->body, "not strict JSON"));
  }
  {
    /* 32 levels are fine for the parser: the answer is about the argument, not the nesting */
    g_autoptr (GString) ok = g_string_new ("{\"n\": ");
    for (guint i = 0; i < 31; i++)
      g_string_append_c (ok, '[');
    for (guint i = 0; i < 31; i++)
      g_string_append_c (ok, ']');
    g_string_append_c (ok, '}');
    g_autoptr (TestReply) r = test_http_body ("POST", fn, json, ok->str);
    g_assert_cmpint (r->status, ==, 400);
    g_assert_nonnull (strstr (r->body, "argument 'n' must be an integer"));
  }
  assert_serving (s);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* A JSON array of `count` small numbers in an object of fib's arguments: about the costliest JSON
 * there is for its size (json-glib takes about 150 ms for each MiB of it). */
static gchar *
costly_json (guint count)
{
  GString *body = g_string_new ("{\"n\": 5, \"pad\": [1");

  for (guint i = 1; i < count; i++)
    g_string_append (body, ",1");
  g_string_append (body, "]}");
  return g_string_free (body, FALSE);
}

static gchar *
raw_post (const gchar *path, const gchar *body)
{
  return g_strdup_printf ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          "Content-Length: %zu\r\n\r\n%s",
                          path, strlen (body), body);
}

/* A large body is decoded off the polling thread (decode.c): while json-glib works through a
 * 2 MiB body for hundreds of milliseconds, /fast keeps answering. Before, the polling thread
 * parsed it, and two clients posting such bodies in a loop held /fast at 53 req/s, 150 ms each.
 * Large bodies still get every answer a small one gets, and one being decoded when SIGTERM
 * comes is answered before crunchd exits. */
static void
test_large_bodies (void)
{
  g_autoptr (TestServer) s = test_server_start ("[server]\nmax_body_size = 4194304\n", NULL);
  g_autofree gchar *costly = costly_json (1 << 20);
  g_autofree gchar *request = raw_post ("/fn/fib", costly);
  g_autofree gchar *fn = test_server_url (s, "/fn/fib");
  g_autofree gchar *jobs = test_server_url (s, "/jobs");
  const gchar *json[] = {"Content-Type: application/json", NULL};
  g_autoptr (Conn) fast = conn_open_from (s, NULL);
  gdouble worst = 0, total;
  guint answered = 0;
  gint64 t0;

  g_assert_cmpuint (strlen (costly), >, 2000000);
  {
    g_autoptr (Conn) big = conn_open_from (s, NULL);
    g_autoptr (Response) r = NULL;
    struct pollfd pfd = {.fd = big->fd, .events = POLLIN};
    t0 = g_get_monotonic_time ();
    conn_send_str (big, request);
    /* /fast on another kept-alive connection, every 10 ms, until the big one is answered */
    while (poll (&pfd, 1, 10) == 0 && g_get_monotonic_time () - t0 < TIMEOUT_S * G_USEC_PER_SEC) {
      gint64 t = g_get_monotonic_time ();
      g_autoptr (Response) f = NULL;
      conn_send_str (fast, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n");
      f = conn_read_response (fast, TIMEOUT_S);
      g_assert_nonnull (f);
      g_assert_cmpuint (f->status, ==, 200);
      worst = MAX (worst, (g_get_monotonic_time () - t) / 1e6);
      if (++answered == 5) /* 50 ms in: its body is with the decoder */
        g_assert_cmpint (metric (s, "crunchd_bodies_decoding"), ==, 1);
    }
    r = conn_read_response (big, TIMEOUT_S);
    total = (g_get_monotonic_time () - t0) / 1e6;
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 400);
    g_assert_cmpstr (r->body, ==, "fib: unknown argument 'pad' (arguments: n)\n");
    g_test_message ("2 MiB body answered in %.3f s; meanwhile %u /fast, the slowest %.4f s", total,
                    answered, worst);
    /* the polling thread never waited for the parse */
    g_assert_cmpuint (answered, >=, 5);
    g_assert_cmpfloat (worst, <, total / 3);
  }
  {
    /* valid: past the inline limit with blanks only */
    g_autofree gchar *body = g_strdup_printf ("{\"n\": 20%*s}", 3000, "");
    g_autofree gchar *job =
        g_strdup_printf ("{\"fn\": \"fib\", \"args\": {\"n\": 21}%*s}", 3000, "");
    g_autofree gchar *job_bad = g_strdup_printf ("{\"fn\": \"fob\"%*s}", 3000, "");
    g_autoptr (TestReply) r = test_http_body ("POST", fn, json, body);
    g_autoptr (TestReply) j = test_http_body ("POST", jobs, json, job);
    g_autoptr (TestReply) bad = test_http_body ("POST", jobs, json, job_bad);
    const gchar *stream_headers[] = {"Content-Type: application/json", "Accept: text/event-stream",
                                     NULL};
    g_autoptr (TestReply) st = test_http_body ("POST", fn, stream_headers, body);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, "6765");
    g_assert_cmpint (j->status, ==, 202);
    g_assert_nonnull (strstr (j->body, "\"fn\": \"fib\""));
    g_assert_cmpint (bad->status, ==, 400);
    g_assert_cmpstr (bad->body, ==, "POST /jobs: no such function 'fob'\n");
    g_assert_nonnull (bad->body_request_id);
    g_assert_cmpint (st->status, ==, 200);
    g_assert_nonnull (strstr (st->body, "6765"));
  }
  {
    /* SIGTERM while a large body is being decoded: it is in flight, so it gets its answer */
    g_autoptr (Conn) big = conn_open_from (s, NULL);
    g_autoptr (Response) r = NULL;
    conn_send_str (big, request);
    g_usleep (total * G_USEC_PER_SEC / 4);
    test_server_signal (s, SIGTERM);
    r = conn_read_response (big, TIMEOUT_S);
    g_assert_nonnull (r);
    /* 503 only on a machine so busy that its body had not even arrived by then */
    g_assert_true (r->status == 400 || r->status == 503);
  }
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

/* utime + stime of the server, in clock ticks (/proc/PID/stat fields 14 and 15). */
static guint64
server_cpu_ticks (TestServer *s)
{
  g_autofree gchar *path = g_strdup_printf ("/proc/%s/stat", g_subprocess_get_identifier (s->proc));
  g_auto (GStrv) fields = test_proc_stat (path);

  g_assert_nonnull (fields);
  return g_ascii_strtoull (fields[11], NULL, 10) + g_ascii_strtoull (fields[12], NULL, 10);
}

/* Opens `n` connections and sends `request` on each. */
static Conn **
send_on_many (TestServer *s, guint n, const gchar *request)
{
  Conn **conns = g_new0 (Conn *, n);

  for (guint i = 0; i < n; i++) {
    conns[i] = conn_open_from (s, NULL);
    conn_send_str (conns[i], request);
  }
  return conns;
}

/* One response on each of `n` connections (each must come): statuses[i] = its status. Frees the
 * connections and the array. */
static void
read_each (Conn **conns, guint n, guint *statuses)
{
  for (guint i = 0; i < n; i++) {
    g_autoptr (Response) r = conn_read_response (conns[i], 4 * TIMEOUT_S);
    g_assert_nonnull (r);
    statuses[i] = r->status;
    conn_free (conns[i]);
  }
  g_free (conns);
}

static guint
count_status (const guint *statuses, guint n, guint status)
{
  guint count = 0;

  for (guint i = 0; i < n; i++)
    count += statuses[i] == status;
  return count;
}

/* `n` copies of `costly` on connections of their own (*ahead), and a quarter of a decode later,
 * while they wait or are being decoded, `request` on another: its response. */
static Response *
behind_costly (TestServer *s, guint n, const gchar *costly, gdouble one, const gchar *request,
               Conn ***ahead)
{
  g_autoptr (Conn) c = conn_open_from (s, NULL);

  *ahead = send_on_many (s, n, costly);
  g_usleep (one * G_USEC_PER_SEC / 4);
  conn_send_str (c, request);
  return conn_read_response (c, TIMEOUT_S);
}

/* The decoder's queue (review of the decoder): shorter bodies go first, at most max_connections
 * / 8 bodies wait (503 beyond), a body whose client has gone is not decoded, and at SIGTERM what
 * still waits gets 503 at once instead of being decoded first. */
static void
test_decoder_queue (void)
{
  enum { AHEAD = 6, COSTLY = 8, LIMIT = 8 };
  g_autoptr (TestServer) s =
      test_server_start ("[server]\nmax_body_size = 4194304\nmax_connections = 64\n"
                         "[executor]\nqueue_limit = 16\n",
                         NULL);
  g_autofree gchar *costly = costly_json (1 << 20);
  g_autofree gchar *request = raw_post ("/fn/fib", costly);
  g_autofree gchar *small_body = g_strdup_printf ("{\"n\": 20%*s}", 2000, "");
  g_autofree gchar *small = raw_post ("/fn/fib", small_body);
  guint before_small = 0, statuses[3 * LIMIT];
  gint64 t0;
  gdouble one, one_cpu;

  {
    /* one alone: how long a decode takes here */
    g_autoptr (Conn) c = conn_open_from (s, NULL);
    g_autoptr (Response) r = NULL;
    guint64 ticks = server_cpu_ticks (s);
    t0 = g_get_monotonic_time ();
    conn_send_str (c, request);
    r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 400);
    one = (g_get_monotonic_time () - t0) / 1e6;
    one_cpu = (server_cpu_ticks (s) - ticks) / (gdouble)sysconf (_SC_CLK_TCK);
  }
  {
    /* a small body sent after six costly ones overtakes those still waiting */
    Conn **conns = NULL;
    g_autoptr (Response) r = behind_costly (s, AHEAD, request, one, small, &conns);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, "6765");
    for (guint i = 0; i < AHEAD; i++) {
      struct pollfd pfd = {.fd = conns[i]->fd, .events = POLLIN};
      before_small += poll (&pfd, 1, 0) > 0;
    }
    read_each (conns, AHEAD, statuses);
    g_assert_cmpuint (count_status (statuses, AHEAD, 400), ==, AHEAD);
    g_test_message ("one decode %.3f s; costly bodies answered before the small one: %u of %d", one,
                    before_small, AHEAD);
    g_assert_cmpuint (before_small, <=, 4); /* those already being decoded (at most 4 threads) */
  }
  {
    /* the deadline counts from the end of the request: a wait for the decoder is part of it */
    g_autofree gchar *hurried =
        g_strdup_printf ("POST /fn/fib HTTP/1.1\r\nHost: x\r\nRequest-Timeout: "
                         "0.05\r\nContent-Length: %zu\r\n\r\n%s",
                         strlen (small_body), small_body);
    Conn **conns = NULL;
    g_autoptr (Response) r = behind_costly (s, 4, request, one, hurried, &conns);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 504);
    g_assert_cmpstr (r->body, ==, "fib: deadline of 0.05 s exceeded before the call could start\n");
    read_each (conns, 4, statuses);
  }
  {
    /* three times the limit at once: the ones past it get 503 at once */
    guint refused;
    read_each (send_on_many (s, 3 * LIMIT, request), 3 * LIMIT, statuses);
    refused = count_status (statuses, 3 * LIMIT, 503);
    g_assert_cmpuint (refused + count_status (statuses, 3 * LIMIT, 400), ==, 3 * LIMIT);
    g_assert_cmpuint (refused, >=, LIMIT);
    g_assert_cmpint (metric (s, "crunchd_rejections_total{reason=\"decoder_full\",status=\"503\"}"),
                     ==, refused);
    g_assert_cmpint (metric (s, "crunchd_bodies_decoding"), ==, 0);
  }
  {
    /* bodies whose clients left while they waited cost no decoding: two keep the decoder
     * threads busy (on this 2-core machine; more cores decode up to two of the others too), six
     * wait behind them and their clients close */
    const gchar *left =
        "crunchd_http_requests_total{route=\"/fn/\",method=\"POST\",status=\"499\"}";
    gint64 left_before = MAX (metric (s, left), 0);
    guint64 ticks = server_cpu_ticks (s);
    Conn **live = send_on_many (s, 2, request);
    Conn **gone = send_on_many (s, COSTLY - 2, request);
    gdouble cpu;
    g_usleep (one * G_USEC_PER_SEC / 4);
    for (guint i = 0; i < COSTLY - 2; i++)
      conn_free (gone[i]);
    g_free (gone);
    read_each (live, 2, statuses);
    g_assert_cmpuint (count_status (statuses, 2, 400), ==, 2);
    g_assert_cmpfloat (test_wait_metric (s, "crunchd_connections_suspended", 0), ==, 0);
    cpu = (server_cpu_ticks (s) - ticks) / (gdouble)sysconf (_SC_CLK_TCK);
    g_test_message ("%.2f s of CPU for 2 bodies and %d abandoned ones (one body: %.2f s)", cpu,
                    COSTLY - 2, one_cpu);
    /* not decoded: no 400, the access log's 499 (client closed request) */
    g_assert_cmpint (metric (s, left) - left_before, >=, COSTLY - 4);
  }
  {
    /* SIGTERM: the bodies being decoded are answered, the rest get 503 without being decoded */
    Conn **conns = send_on_many (s, COSTLY, request);
    guint unavailable;
    gdouble answered;
    g_usleep (one * G_USEC_PER_SEC / 4);
    t0 = g_get_monotonic_time ();
    test_server_signal (s, SIGTERM);
    read_each (conns, COSTLY, statuses);
    unavailable = count_status (statuses, COSTLY, 503);
    g_assert_cmpuint (unavailable + count_status (statuses, COSTLY, 400), ==, COSTLY);
    answered = (g_get_monotonic_time () - t0) / 1e6;
    g_test_message ("after SIGTERM: %u of %d got 503, all answered in %.3f s", unavailable, COSTLY,
                    answered);
    g_assert_cmpuint (unavailable, >=, COSTLY - 4);
    /* only those being decoded were finished (all eight were answered in 5.5 s here) */
    g_assert_cmpfloat (answered, <, 8 * one);
    g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
  }
}

/* RFC 9112 6.1, 6.3: framing a proxy could read differently is refused and the connection
 * closed, so the bytes after the header never become a second request (request smuggling). */
static void
test_ambiguous_framing (void)
{
  static const gchar *const cases[] = {
      /* Content-Length and Transfer-Encoding, with a smuggled request behind */
      "POST /fn/fib HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n"
      "\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n"
      "\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* two Content-Length values */
      "POST /fn/fib HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n"
      "{}GET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* a transfer coding crunchd does not speak */
      "POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"
      "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* two transfer codings: MHD reads the first, a proxy may read the last (attack review) */
      "POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* a field name with a space before the colon, and a folded line glued onto a name */
      "POST /jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 4\r\n"
      "\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nX-A: 1\r\n Transfer-Encoding: "
      "chunked\r\n\r\n0\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* a bare CR in a value; no Host, two Hosts (RFC 9112 3.2) */
      "GET /fast HTTP/1.1\r\nHost: x\r\nX-B: a\rb\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /fast HTTP/1.1\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /fast HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      /* a method that is no token */
      "G\001T /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
      "G(T /fast HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n",
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (Conn) c = conn_open ();
    g_autoptr (Response) r = NULL;
    g_test_message ("case %u", i);
    conn_send_str (c, cases[i]);
    r = conn_read_response (c, TIMEOUT_S);
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 400);
    g_assert_true (has_header (r, "connection: close"));
    g_assert_true (conn_wait_closed (c, TIMEOUT_S));
    g_assert_null (strstr (c->in->str, "Hello!")); /* the second request was never served */
  }
  {
    /* the same length twice is one length (RFC 9110 8.6) */
    g_autoptr (Response) r = EXCHANGE ("POST /fn/fib HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n"
                                       "Content-Length: 8\r\n\r\n{\"n\": 7}");
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, "13");
  }
  {
    /* the absolute form of the request target, which a server must accept (RFC 9112 3.2.2; it
     * got 404, found by an attack review) */
    g_autoptr (Response) r = EXCHANGE ("GET http://x:80/fib/7 HTTP/1.1\r\nHost: x\r\n\r\n");
    g_autoptr (Response) upper = EXCHANGE ("GET HTTPS://x/fib/8 HTTP/1.1\r\nHost: x\r\n\r\n");
    g_assert_nonnull (r);
    g_assert_cmpuint (r->status, ==, 200);
    g_assert_cmpstr (r->body, ==, "13");
    g_assert_nonnull (upper);
    g_assert_cmpuint (upper->status, ==, 200);
    g_assert_cmpstr (upper->body, ==, "21");
  }
  assert_serving (server);
}

/* A JSON POST /jobs body for fib(n) on a kept-alive raw connection; the status. */
static guint
post_job (Conn *c, guint n, gchar **retry_after)
{
  g_autofree gchar *body = g_strdup_printf ("{\"fn\": \"fib\", \"args\": {\"n\": %u}}", n);
  g_autofree gchar *request = g_strdup_printf ("POST /jobs HTTP/1.1\r\nHost: x\r\n"
                                               "Content-Type: application/json\r\n"
                                               "Content-Length: %zu\r\n\r\n%s",
                                               strlen (body), body);
  g_autoptr (Response) r = NULL;
  const gchar *at;

  conn_send_str (c, request);
  r = conn_read_response (c, TIMEOUT_S);
  g_assert_nonnull (r);
  at = strstr (r->headers, "\r\nretry-after: ");
  if (retry_after != NULL)
    *retry_after = at != NULL ? g_strndup (at + 15, strcspn (at + 15, "\r")) : NULL;
  return r->status;
}

/* 1,000 trivial jobs from one address: that client stops at its share of the store (100 of
 * max_stored 1000) with 429 and a Retry-After, and another client still gets 202. */
static void
test_job_store_share (void)
{
  g_autoptr (TestServer) s = start_sample ();
  g_autoptr (Conn) greedy = conn_open_from (s, "127.0.0.5");
  g_autoptr (Conn) other = conn_open_from (s, "127.0.0.6");
  g_autofree gchar *retry_after = NULL;
  guint accepted = 0, refused = 0;

  for (guint i = 0; i < 1000; i++) {
    g_autofree gchar *ra = NULL;
    guint status = post_job (greedy, i % 20, &ra);
    if (status == 202)
      accepted++;
    else if (status == 429) {
      refused++;
      g_assert_nonnull (ra);
      g_clear_pointer (&retry_after, g_free);
      retry_after = g_steal_pointer (&ra);
    } else
      g_assert_cmpuint (status, ==, 202);
  }
  g_test_message ("one client: %u accepted, %u refused (Retry-After: %s)", accepted, refused,
                  retry_after);
  g_assert_cmpuint (accepted, ==, 100);
  g_assert_cmpuint (refused, ==, 900);
  /* its oldest finished job expires after [jobs] ttl (300 s) */
  g_assert_cmpint (g_ascii_strtoll (retry_after, NULL, 10), >, 250);
  g_assert_cmpint (g_ascii_strtoll (retry_after, NULL, 10), <=, 300);
  for (guint i = 0; i < 10; i++)
    g_assert_cmpuint (post_job (other, i, NULL), ==, 202);
  g_assert_cmpint (metric (s, "crunchd_rejections_total{reason=\"store_client_share\",status="
                              "\"429\"}"),
                   ==, 900);
  g_assert_cmpint (test_server_stop (g_steal_pointer (&s)), ==, 0);
}

int
main (int argc, char **argv)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[fib]\nmax_n = 40\n[server]\nmax_body_size = %d\n", MAX_BODY);
  gint status;

  struct rlimit rl;

  g_test_init (&argc, &argv, NULL);
  /* the floods hold thousands of sockets */
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit (RLIMIT_NOFILE, &rl);
  }
  server = test_server_start (ini, NULL);
  g_test_add_func ("/hostile/oversized-headers", test_oversized_headers);
  g_test_add_func ("/hostile/long-uri", test_long_uri);
  g_test_add_func ("/hostile/percent-encoding", test_percent_encoding);
  g_test_add_func ("/hostile/head-not-streamed", test_head_not_streamed);
  g_test_add_func ("/hostile/nul-bytes", test_nul_bytes);
  g_test_add_func ("/hostile/garbage", test_garbage);
  g_test_add_func ("/hostile/unknown-methods", test_unknown_methods);
  g_test_add_func ("/hostile/body-on-get", test_body_on_get);
  g_test_add_func ("/hostile/body-cap", test_body_cap);
  g_test_add_func ("/hostile/pipelined", test_pipelined);
  g_test_add_func ("/hostile/http10", test_http10);
  g_test_add_func ("/hostile/disconnect-mid-request", test_disconnect_mid_request);
  g_test_add_func ("/hostile/disconnect-mid-response", test_disconnect_mid_response);
  g_test_add_func ("/hostile/slowloris", test_slowloris);
  g_test_add_func ("/hostile/idle-connections", test_idle_connections);
  g_test_add_func ("/hostile/deep-json", test_deep_json);
  g_test_add_func ("/hostile/lax-json", test_lax_json);
  g_test_add_func ("/hostile/large-bodies", test_large_bodies);
  g_test_add_func ("/hostile/decoder-queue", test_decoder_queue);
  g_test_add_func ("/hostile/ambiguous-framing", test_ambiguous_framing);
  g_test_add_func ("/hostile/trickle-flood", test_trickle_flood);
  g_test_add_func ("/hostile/silent-flood", test_silent_flood);
  g_test_add_func ("/hostile/parked-kept", test_parked_kept);
  g_test_add_func ("/hostile/coalesced-flood", test_coalesced_flood);
  g_test_add_func ("/hostile/coalesced-deadline", test_coalesced_deadline);
  g_test_add_func ("/hostile/job-store-share", test_job_store_share);
  status = g_test_run ();
  g_assert_cmpint (test_server_stop (server), ==, 0);
  return status;
}
