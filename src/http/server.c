/* server.c - libmicrohttpd front end.
 *
 * DESIGN
 * Threads: each MHD daemon (one per listen address) runs its own internal polling threads
 * (epoll; [server] threads of them, a thread pool, for a public daemon; one for the ops daemon).
 * All access-handler calls and all MHD_queue_response() calls happen on those threads. Worker,
 * watcher and decoder threads touch a connection only through on_answered() or on_decoded(),
 * whose one action is MHD_resume_connection(): the last thing any of them does with a request.
 *
 * Life of a request: first call allocates a CrunchRequest into *req_cls;
 * body chunks are kept up to max_body_size (beyond it counted and dropped); the final call routes
 * it. A JSON body over CRUNCH_DECODE_INLINE_MAX is not parsed on a polling thread: the request is
 * counted in flight, suspended and handed to the decoder (decode.c), whose thread resumes it as
 * a job's would; route_decoded() then carries on in its lane with the result. Fast lane: answered
 * at once. Compute lane: parse arguments (400), then a compute call
 * (call.c): admission (cache hit, or 503/429), MHD_suspend_connection() *before* the call is
 * submitted. While suspended, the connection is "parked": the call watches its deadline and its
 * socket for a hang-up. Whoever answers first - its job finishing, the deadline (504), the
 * client leaving - resumes the connection; MHD calls the handler again and it queues the answer.
 * on_completed() (MHD_OPTION_NOTIFY_COMPLETED) is the one place a request ends: it counts it in
 * the metrics, writes the access log, frees the request and, while draining, reports when the
 * last compute request is gone, so the main thread knows MHD_stop_daemon() is safe.
 * With [metrics] listen, one more daemon serves only the ops routes (CRUNCH_LANE_OPS) and the
 * public ones stop serving them; it stays up while draining, so /readyz can say 503.
 * Locks: proxies_lock only, a leaf: a polling thread reads [server] trusted_proxies under it
 * for each request's client address, the main thread replaces them on reload. The order of the
 * others is in the README ("Source code layout"). With [auth] keys_file, a routed request is
 * checked by auth.c before its lane sees it; the grant it gets (the caller's key) is held until
 * on_completed(). With [tls], the public daemons speak HTTPS:
 * tls.c hands GnuTLS the certificate, and a request without a verified client certificate (with
 * [tls] client_ca) is refused before anything else. */
#include "server.h"

#include <arpa/inet.h>
#include <gio/gio.h>
#include <microhttpd.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

#include "accesslog.h"
#include "args.h"
#include "call.h"
#include "conns.h"
#include "decode.h"
#include "forwarded.h"
#include "headers.h"
#include "logging.h"
#include "metrics.h"
#include "requestid.h"
#include "routes.h"
#include "status.h"
#include "stream.h"
#include "tls.h"

/* [server] threads = 0: one polling thread per core, up to this many. */
#define MAX_AUTO_POLL_THREADS 4
/* Decoder threads for large request bodies (decode.c): one per core, up to this many. */
#define MAX_DECODER_THREADS 4
/* Requests that may wait for the decoder at once: an eighth of max_connections, up to this. */
#define MAX_DECODE_WAITING 64

/* Longest Request-Timeout / client key header value we look at. */
#define MAX_HEADER_VALUE 128

/* How much of a chunked body past max_body_size is read (and dropped) to be able to answer 413. */
#define BODY_DISCARD_EXCESS (G_GUINT64_CONSTANT (1) << 20)

/* The access handler's closure: which server, and whether this daemon is the ops one. */
typedef struct {
  CrunchServer *server;
  gboolean ops;
} Listener;

struct CrunchServer {
  CrunchScheduler *scheduler; /* for its gauges */
  CrunchCalls *calls;
  CrunchJobs *jobs;          /* the asynchronous jobs API; NULL: not served */
  CrunchTls *tls;            /* HTTPS on the public daemons; NULL: plain HTTP */
  CrunchAuth *auth;          /* API keys; NULL: everyone is let in */
  CrunchDecoder *decoder;    /* large request bodies are decoded there (decode.c) */
  void (*busy) (gint64 now); /* told of every request answered inline (timeslice.c), or NULL */
  GPtrArray *daemons;
  GArray *quiesced;         /* listen sockets handed back by MHD at drain: closed in free() */
  gboolean activated;       /* the listen sockets came from systemd */
  GPtrArray *guards;        /* CrunchConns, one per daemon, the ops one included */
  gchar *client_key_header; /* NULL: clients are told apart by IP address */
  GRWLock proxies_lock;     /* guards proxies: read per request, replaced on reload */
  CrunchProxies *proxies;   /* [server] trusted_proxies */
  gint proxy_header;        /* atomic: a CrunchProxyHeader, the one header they write */
  guint poll_threads;       /* per public daemon (MHD's thread pool); the ops daemon has one */
  guint max_connections, max_connections_per_ip, connection_timeout;
  guint request_timeout;  /* atomic */
  guint default_priority; /* atomic: [executor] default_priority */
  gchar **listen;
  gchar *metrics_listen;
  struct MHD_Daemon *ops_daemon; /* NULL: ops routes are served by the public daemons */
  gboolean has_ops;              /* ops_daemon is wanted; fixed before any daemon starts */
  Listener public_listener, ops_listener;
  gint64 max_body_size; /* atomic */
  gint in_flight;       /* compute requests past their checks and not yet completed */
  gint decoding;        /* requests handed to the decoder and not back yet, atomic */
  guint decode_limit;   /* how many of them may wait at once; more get 503 */
  gint resuming;        /* threads inside resume() */
  guint64 served;       /* requests answered (any status), atomic; for STATUS= */
  gint draining;
  gint drained_fired;
  GSourceFunc drained;
  gpointer drained_data;
};

typedef struct {
  CrunchServer *server;
  struct MHD_Connection *connection;
  CrunchConn *conn; /* the connection guard's record of it */
  gint64 t_start;
  gint64 t_complete; /* its body ended: a compute deadline counts from here */
  gchar *method, *path;
  const gchar *protocol;
  gchar request_id[CRUNCH_REQUEST_ID_MAX + 1];
  gchar client[CRUNCH_ADDRESS_MAX]; /* its address, behind trusted proxies the one they name */
  gboolean ops;                     /* arrived on the ops daemon */
  gboolean suspended;               /* counted in crunch_metrics_suspended() */
  const CrunchRoute *route;
  guint64 body_bytes;
  GByteArray *body;      /* up to max_body_size; POST /fn/<name> and /jobs read it */
  CrunchCall *call;      /* compute lane */
  gboolean in_flight;    /* counted in server->in_flight until it ends */
  gint64 timeout_us;     /* the deadline it was given, for the 504 message */
  gboolean cached;       /* answered from the result cache */
  gboolean complete;     /* its header and body have arrived */
  CrunchAuthGrant grant; /* who is calling, with [auth] keys_file */
  CrunchLater later;     /* jobs lane: a reply given later by another thread */
  CrunchReply later_reply;
  CrunchStream *stream; /* its body is this event stream */
  gboolean deferred;
  /* A large body goes to the decoder: BODY_DECODING while it is there (parked), then the
   * request carries on in route_lane() with `arg` and the result in `decode` */
  enum { BODY_INLINE, BODY_DECODING, BODY_DECODED } body_state;
  CrunchDecode decode;
  gchar *arg;
  guint status;
  gsize bytes;
} CrunchRequest;

/* ---- responses: the one place that renders answers and error pages ---- */

static enum MHD_Result
queue (CrunchRequest *req, guint status, struct MHD_Response *resp, const gchar *content_type)
{
  enum MHD_Result ret;

  MHD_add_response_header (resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  MHD_add_response_header (resp, CRUNCH_REQUEST_ID_HEADER, req->request_id);
  ret = MHD_queue_response (req->connection, status, resp);
  MHD_destroy_response (resp);
  req->status = status;
  return ret;
}

static void
free_bytes (void *bytes)
{
  g_bytes_unref (bytes);
}

static void
add_header (struct MHD_Response *resp, const gchar *name, const gchar *value)
{
  if (value != NULL)
    MHD_add_response_header (resp, name, value);
}

static void leave_flight (CrunchServer *server);

/* A request that will be suspended: counted first, then the drain looked at (both sequentially
 * consistent, as in drain()). Either the drain waits for it, or FALSE: not counted, refuse it. */
static gboolean
enter_flight (CrunchServer *server)
{
  g_atomic_int_inc (&server->in_flight);
  if (!g_atomic_int_get (&server->draining))
    return TRUE;
  leave_flight (server);
  return FALSE;
}

/* enter_flight() for a request, once: one handed to the decoder is in flight already when it
 * goes on to be computed or deferred. */
static gboolean
request_enter_flight (CrunchRequest *req)
{
  if (!req->in_flight && !enter_flight (req->server))
    return FALSE;
  req->in_flight = TRUE;
  return TRUE;
}

static gint connection_fd (struct MHD_Connection *connection);

/* An event stream. It does not hold up a drain (a client that reads slowly could, for as long as
 * it likes): the drain ends every stream (crunch_streams_end_all()), an ended stream never
 * suspends its connection again, and MHD_stop_daemon() closes what is left. A deferred request
 * (a streamed call waiting for the store) stops counting in flight here; one that starts while
 * the server drains ends after what it has. */
static enum MHD_Result
respond_stream (CrunchRequest *req, CrunchReply *reply)
{
  CrunchServer *server = req->server;
  struct MHD_Response *resp;
  enum MHD_Result ret;

  req->stream = g_steal_pointer (&reply->stream);
  if (req->in_flight) {
    req->in_flight = FALSE;
    leave_flight (server);
  }
  if (g_atomic_int_get (&server->draining))
    crunch_stream_end (req->stream);
  resp = MHD_create_response_from_callback (MHD_SIZE_UNKNOWN, 4096, crunch_stream_read,
                                            crunch_stream_ref (req->stream),
                                            (MHD_ContentReaderFreeCallback)crunch_stream_unref);
  if (resp == NULL) { /* out of memory: close the connection */
    crunch_stream_unref (req->stream);
    crunch_reply_clear (reply);
    return MHD_NO;
  }
  MHD_add_response_header (resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
  MHD_add_response_header (resp, "X-Accel-Buffering", "no"); /* nginx in front: do not buffer */
  crunch_stream_attach (req->stream, req->connection, connection_fd (req->connection),
                        crunch_calls_watcher (server->calls));
  ret = queue (req, reply->status, resp, reply->content_type);
  crunch_reply_clear (reply);
  return ret;
}

/* The one place an answer becomes an MHD response (and consumes the reply). An error (status
 * >= 400 with a text body) is an error page: its line and " (request id ID)". */
static enum MHD_Result
respond_reply (CrunchRequest *req, CrunchReply *reply)
{
  gsize size = reply->text != NULL ? strlen (reply->text) : 0;
  gconstpointer data = reply->bytes != NULL ? g_bytes_get_data (reply->bytes, &size) : reply->text;
  struct MHD_Response *resp;
  enum MHD_Result ret;

  if (reply->stream != NULL)
    return respond_stream (req, reply);
  if (reply->status >= 400 && g_str_has_prefix (reply->content_type, "text/plain")) {
    g_autofree gchar *line = g_strchomp (g_strndup (data, size));
    g_autofree gchar *page = g_strdup_printf ("%s (request id %s)\n", line, req->request_id);
    size = strlen (page);
    resp = MHD_create_response_from_buffer (size, page, MHD_RESPMEM_MUST_COPY);
  } else if (reply->bytes != NULL) {
    resp = MHD_create_response_from_buffer_with_free_callback_cls (size, (void *)data, free_bytes,
                                                                   g_bytes_ref (reply->bytes));
  } else {
    resp = MHD_create_response_from_buffer (size, (void *)data, MHD_RESPMEM_PERSISTENT);
  }
  add_header (resp, MHD_HTTP_HEADER_ALLOW, reply->allow);
  add_header (resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, reply->authenticate);
  add_header (resp, MHD_HTTP_HEADER_LOCATION, reply->location);
  add_header (resp, MHD_HTTP_HEADER_RETRY_AFTER, reply->retry_after);
  add_header (resp, MHD_HTTP_HEADER_CONNECTION, reply->close ? "close" : NULL);
  req->bytes = size;
  ret = queue (req, reply->status, resp, reply->content_type);
  crunch_reply_clear (reply);
  return ret;
}

/* A short plain-text error; the request id is added by respond_reply(). */
static enum MHD_Result
respond_error (CrunchRequest *req, guint status, const gchar *message)
{
  CrunchReply reply = crunch_reply_text (status, "%s", message);

  return respond_reply (req, &reply);
}

static enum MHD_Result
respond_bytes (CrunchRequest *req, guint status, GBytes *bytes, const gchar *content_type)
{
  CrunchReply reply = crunch_reply_bytes (status, g_bytes_ref (bytes), content_type);

  return respond_reply (req, &reply);
}

/* 503 with Retry-After: 1, closing the connection when the server is stopping. */
static enum MHD_Result
respond_unavailable (CrunchRequest *req, const gchar *message, gboolean close)
{
  CrunchReply reply = crunch_reply_text (MHD_HTTP_SERVICE_UNAVAILABLE, "%s", message);

  reply.retry_after = g_strdup ("1");
  reply.close = close;
  return respond_reply (req, &reply);
}

static void
set_suspended (CrunchRequest *req, gboolean suspended)
{
  if (req->suspended != suspended)
    crunch_metrics_suspended_add (suspended ? 1 : -1);
  req->suspended = suspended;
}

static enum MHD_Result
respond_ticket (CrunchRequest *req)
{
  const CrunchTicket *ticket = crunch_call_ticket (req->call);
  g_autofree gchar *message = NULL;

  set_suspended (req, FALSE);
  crunch_conns_request_parked (req->conn, FALSE);
  switch (ticket->outcome) {
  case CRUNCH_JOB_OK:
    return respond_bytes (req, MHD_HTTP_OK, ticket->result, ticket->fn->content_type);
  case CRUNCH_JOB_FAILED:
    return respond_error (req, MHD_HTTP_INTERNAL_SERVER_ERROR, ticket->error);
  case CRUNCH_JOB_CRASHED:
    return respond_error (req, MHD_HTTP_BAD_GATEWAY, ticket->error);
  case CRUNCH_JOB_TIMED_OUT:
    message = g_strdup_printf ("%s: deadline of %.3g s exceeded", ticket->fn->name,
                               req->timeout_us / 1e6);
    return respond_error (req, MHD_HTTP_GATEWAY_TIMEOUT, ticket->error ? ticket->error : message);
  case CRUNCH_JOB_SHUTDOWN:
    return respond_unavailable (req, "server is shutting down", TRUE);
  case CRUNCH_JOB_UNAVAILABLE:
    return respond_unavailable (req, ticket->error ? ticket->error : "no worker available", FALSE);
  case CRUNCH_JOB_CLIENT_GONE:
  case CRUNCH_JOB_PENDING:
    break;
  }
  return MHD_NO; /* nobody to answer: close the connection */
}

/* ---- the compute lane ---- */

/* Any thread but a polling thread: the last touch of a suspended request. libmicrohttpd may
 * answer it, and the drain end, before MHD_resume_connection() has returned (it wakes the
 * polling thread last), so crunch_server_free() waits for `resuming` to be 0 before it stops
 * the daemon that call still uses. */
static void
resume (CrunchRequest *req)
{
  CrunchServer *server = req->server; /* req may be gone when the call returns */

  g_atomic_int_inc (&server->resuming);
  MHD_resume_connection (req->connection);
  g_atomic_int_add (&server->resuming, -1);
}

/* Worker or watcher thread: the call has its answer. */
static void
on_answered (CrunchCall *call, gpointer data)
{
  resume (data);
}

static void
peer_address (struct MHD_Connection *connection, gchar buf[CRUNCH_ADDRESS_MAX])
{
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  const struct sockaddr *sa = info ? info->client_addr : NULL;

  g_strlcpy (buf, "unknown", CRUNCH_ADDRESS_MAX);
  if (sa != NULL && sa->sa_family == AF_INET)
    inet_ntop (AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, CRUNCH_ADDRESS_MAX);
  else if (sa != NULL && sa->sa_family == AF_INET6)
    inet_ntop (AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, CRUNCH_ADDRESS_MAX);
}

typedef struct {
  const gchar *name;
  GString *joined; /* NULL: no such field */
} JoinedField;

static enum MHD_Result
join_field (void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  JoinedField *f = cls;

  if (g_ascii_strcasecmp (key, f->name) != 0)
    return MHD_YES;
  if (f->joined == NULL)
    f->joined = g_string_new (value);
  else
    g_string_append_printf (f->joined, ", %s", value ? value : "");
  return MHD_YES;
}

/* Every field `name` of the request, joined with ", " (RFC 9110 5.3), or NULL. */
static gchar *
joined_header (struct MHD_Connection *connection, const gchar *name)
{
  JoinedField f = {name, NULL};

  MHD_get_connection_values (connection, MHD_HEADER_KIND, join_field, &f);
  return f.joined != NULL ? g_string_free (f.joined, FALSE) : NULL;
}

/* The client's address: the peer's, or behind a trusted proxy the one its headers name. */
static void
resolve_client (CrunchRequest *req)
{
  CrunchServer *server = req->server;
  gboolean rfc =
      __atomic_load_n (&server->proxy_header, __ATOMIC_RELAXED) == CRUNCH_PROXY_HEADER_FORWARDED;
  const gchar *name = rfc ? "Forwarded" : "X-Forwarded-For";
  gchar peer[CRUNCH_ADDRESS_MAX];
  g_autofree gchar *value = NULL;

  peer_address (req->connection, peer);
  g_strlcpy (req->client, peer, sizeof req->client);
  g_rw_lock_reader_lock (&server->proxies_lock);
  /* only the header the proxies write: the other one a client may have sent through them */
  if (crunch_proxies_contains (server->proxies, peer)) {
    value = joined_header (req->connection, name);
    if (crunch_forwarded_client (server->proxies, peer, rfc ? value : NULL, rfc ? NULL : value,
                                 req->client) == CRUNCH_FORWARDED_MALFORMED)
      g_debug ("request %s from trusted proxy %s: unreadable %s header, using the proxy's address",
               req->request_id, peer, name);
  }
  g_rw_lock_reader_unlock (&server->proxies_lock);
}

/* The fairness key: the caller's API key name; else the configured header's value if the request
 * has one, else the address. */
static gchar *
client_key (CrunchRequest *req)
{
  const gchar *value = NULL;

  if (req->grant.key != NULL)
    return g_strdup_printf ("auth:%s", crunch_auth_grant_name (&req->grant));
  if (req->server->client_key_header != NULL)
    value = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                         req->server->client_key_header);
  if (value != NULL && *value != '\0')
    return g_strdup_printf ("key:%.*s", MAX_HEADER_VALUE, value);
  return g_strdup (req->client);
}

/* The deadline: the function's timeout, or a shorter one the client asks for with
 * `Request-Timeout: SECONDS`. FALSE (and a message) if the header is malformed. */
static gboolean
request_deadline (CrunchRequest *req, const CrunchFunction *fn, gint64 *deadline, gchar **why)
{
  gint64 timeout_us = __atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED);
  const gchar *value =
      MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Request-Timeout");
  gint64 asked_us;

  if (value != NULL) {
    if (!crunch_header_request_timeout (value, &asked_us)) {
      *why = g_strdup_printf ("Request-Timeout: expected a positive number of seconds, got '%.*s'",
                              MAX_HEADER_VALUE, value);
      return FALSE;
    }
    timeout_us = MIN (timeout_us, asked_us);
  }
  req->timeout_us = MAX (timeout_us, 1);
  *deadline = req->t_complete + req->timeout_us; /* a wait for the decoder counts */
  return TRUE;
}

/* The call's class: its key's `priority` (without one, [executor] default_priority), or a lower
 * one it asks for with `Crunch-Priority: N`; never higher. FALSE (and a message) if the header
 * is malformed. */
static gboolean
request_priority (CrunchRequest *req, guint *priority, gchar **why)
{
  gint cap = crunch_auth_grant_priority (&req->grant);
  const gchar *value =
      MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Crunch-Priority");
  guint64 asked;

  *priority =
      cap >= 0 ? (guint)cap : __atomic_load_n (&req->server->default_priority, __ATOMIC_RELAXED);
  if (value == NULL)
    return TRUE;
  if (!g_ascii_string_to_unsigned (value, 10, 0, CRUNCH_PRIORITY_MAX, &asked, NULL)) {
    *why = g_strdup_printf ("Crunch-Priority: expected an integer from 0 to %d, got '%.*s'",
                            CRUNCH_PRIORITY_MAX, MAX_HEADER_VALUE, value);
    return FALSE;
  }
  *priority = MIN (*priority, (guint)asked);
  return TRUE;
}

static gint
connection_fd (struct MHD_Connection *connection)
{
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CONNECTION_FD);
  return info != NULL ? info->connect_fd : -1;
}

#define REPEATED "\001"  /* a key no query string can produce: marks a repeated name */
#define MALFORMED "\002" /* and one that marks a malformed percent-encoding */

static enum MHD_Result
collect_query_arg (void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                   const char *value, size_t value_size)
{
  GHashTable *values = cls;

  /* unescape_path() leaves "\0" with length 1 for a malformed escape or %00 */
  if (strlen (key) != key_size || (value != NULL && strlen (value) != value_size)) {
    g_hash_table_insert (values, g_strdup (MALFORMED), g_strdup (key));
    return MHD_NO;
  }
  if (g_hash_table_contains (values, key)) {
    g_hash_table_insert (values, g_strdup (REPEATED), g_strdup (key));
    return MHD_NO;
  }
  g_hash_table_insert (values, g_strdup (key), g_strdup (value ? value : ""));
  return MHD_YES;
}

/* The request's body, to be decoded for `fn`, the function whose arguments it holds, or NULL: a
 * POST /jobs body names its own. */
static void
body_decode (CrunchRequest *req, const CrunchFunction *fn)
{
  req->decode = (CrunchDecode){.body = req->body ? (const gchar *)req->body->data : "",
                               .len = req->body ? req->body->len : 0,
                               .fn = fn};
}

/* A body short enough to decode on the polling thread (decode.h), decoded. */
static void
decode_here (CrunchRequest *req, const CrunchFunction *fn)
{
  body_decode (req, fn);
  crunch_decode_run (&req->decode);
  req->body_state = BODY_DECODED;
}

/* /fn/<name>: arguments from the query string (GET, HEAD) or a JSON object body (POST). */
static GVariant *
parse_fn_call (CrunchRequest *req, const CrunchFunction *fn, GError **error)
{
  g_autoptr (GHashTable) values = NULL;

  if (g_str_equal (req->method, "POST") &&
      MHD_get_connection_values (req->connection, MHD_GET_ARGUMENT_KIND, NULL, NULL) > 0) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "%s: with POST the arguments go in the JSON body, not in the query string",
                 fn->name);
    return NULL;
  }
  if (g_str_equal (req->method, "POST")) {
    if (req->body_state == BODY_INLINE)
      decode_here (req, fn);
    if (req->decode.args == NULL)
      g_propagate_error (error, g_steal_pointer (&req->decode.error));
    return g_steal_pointer (&req->decode.args); /* not floating */
  }
  values = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  MHD_get_connection_values_n (req->connection, MHD_GET_ARGUMENT_KIND, collect_query_arg, values);
  if (g_hash_table_contains (values, MALFORMED)) {
    g_autofree gchar *name = crunch_args_echo (g_hash_table_lookup (values, MALFORMED));
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "%s: argument '%s' has malformed percent-encoding (or %%00)", fn->name, name);
    return NULL;
  }
  if (g_hash_table_contains (values, REPEATED)) {
    g_autofree gchar *name = crunch_args_echo (g_hash_table_lookup (values, REPEATED));
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "%s: argument '%s' given more than once", fn->name, name);
    return NULL;
  }
  return crunch_args_from_query (fn, values, error);
}

static enum MHD_Result start_compute (CrunchRequest *req, const CrunchFunction *fn, GVariant *args);
static CrunchLater *request_defer (gpointer data);

/* Decoder thread: not worth decoding once the server drains or the client has closed its side
 * (as the hang-up watcher sees it); route_decoded() answers 503, or nobody. */
static gboolean
decode_wanted (CrunchDecode *decode, gpointer data)
{
  CrunchRequest *req = data;
  struct pollfd pfd = {.fd = connection_fd (req->connection), .events = POLLRDHUP};

  if (g_atomic_int_get (&req->server->draining))
    return FALSE;
  return pfd.fd < 0 || poll (&pfd, 1, 0) <= 0 ||
         (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0;
}

/* Decoder thread: the last touch of the request. */
static void
on_decoded (CrunchDecode *decode, gpointer data)
{
  CrunchRequest *req = data;

  g_atomic_int_add (&req->server->decoding, -1);
  resume (req);
}

/* A POST body too long to decode on the polling thread (decode.h). */
static gboolean
wants_decoder (CrunchRequest *req)
{
  return req->body_state == BODY_INLINE && req->body != NULL &&
         req->body->len > CRUNCH_DECODE_INLINE_MAX && g_str_equal (req->method, "POST");
}

/* The body goes to the decoder the way a job goes to the executor: counted in flight, suspended,
 * handed over; on_decoded() resumes the request and route_decoded() carries on with it. `fn`:
 * the function whose arguments it holds, or NULL: a POST /jobs body names its own. */
static enum MHD_Result
decode_later (CrunchRequest *req, const gchar *arg, const CrunchFunction *fn)
{
  CrunchServer *server = req->server;

  if (g_atomic_int_add (&server->decoding, 1) >= (gint)server->decode_limit) {
    g_atomic_int_add (&server->decoding, -1);
    crunch_metrics_rejection (CRUNCH_REJECT_DECODER_FULL);
    return respond_unavailable (req, "too many large request bodies waiting to be decoded", FALSE);
  }
  if (!request_enter_flight (req)) {
    g_atomic_int_add (&server->decoding, -1);
    crunch_metrics_rejection (CRUNCH_REJECT_DRAINING);
    return respond_unavailable (req, "server is shutting down", TRUE);
  }
  req->body_state = BODY_DECODING;
  req->arg = g_strdup (arg);
  body_decode (req, fn);
  req->decode.wanted = decode_wanted;
  req->decode.done = on_decoded;
  req->decode.data = req;
  MHD_suspend_connection (req->connection);
  set_suspended (req, TRUE);
  crunch_conns_request_parked (req->conn, TRUE);
  crunch_decoder_submit (server->decoder, &req->decode);
  return MHD_YES;
}

/* Accept names text/event-stream, and not with q=0 (a client that accepts anything gets the
 * plain answer). */
static gboolean
wants_event_stream (struct MHD_Connection *connection)
{
  const gchar *accept = MHD_lookup_connection_value (connection, MHD_HEADER_KIND, "Accept");
  g_auto (GStrv) ranges = NULL;

  if (accept == NULL || strlen (accept) > MAX_HEADER_VALUE * 8)
    return FALSE;
  ranges = g_strsplit (accept, ",", 64);
  for (guint i = 0; ranges[i] != NULL; i++) {
    g_auto (GStrv) parts = g_strsplit (ranges[i], ";", 16);
    gboolean refused = FALSE;
    if (g_ascii_strcasecmp (g_strstrip (parts[0]), "text/event-stream") != 0)
      continue;
    for (guint j = 1; parts[j] != NULL; j++) {
      const gchar *param = g_strstrip (parts[j]);
      if (g_ascii_strncasecmp (param, "q=", 2) == 0)
        refused = g_ascii_strtod (param + 2, NULL) <= 0;
    }
    return !refused;
  }
  return FALSE;
}

static gboolean request_may_call (gpointer data, const gchar *function, CrunchReply *refusal);

/* What the jobs API reads of a request (the jobs lane, and streamed calls); returns the client
 * key it points to, for the caller to free. */
static gchar *
jobs_request_info (CrunchRequest *req, CrunchRequestInfo *info)
{
  info->client = client_key (req);
  info->idempotency_key =
      MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Idempotency-Key");
  info->last_event_id =
      MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND, "Last-Event-ID");
  info->defer = request_defer;
  info->request = req;
  info->owned = req->grant.on;
  info->may_call = request_may_call;
  return (gchar *)info->client;
}

/* A call with Accept: text/event-stream becomes a job whose events answer it (jobs.c). */
static enum MHD_Result
stream_compute (CrunchRequest *req, const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *client = NULL, *why = NULL;
  CrunchRequestInfo info = {.method = req->method};
  CrunchReply reply;

  if (req->server->jobs == NULL)
    return respond_error (req, MHD_HTTP_NOT_ACCEPTABLE,
                          "event streams need the jobs API, which this server does not serve");
  if (!request_priority (req, &info.priority, &why))
    return respond_error (req, MHD_HTTP_BAD_REQUEST, why);
  client = jobs_request_info (req, &info);
  info.idempotency_key = NULL; /* a streamed call is not a POST /jobs */
  reply = crunch_jobs_stream_call (req->server->jobs, &info, fn, args);
  if (reply.status == 0) /* deferred: answered by later_answer() */
    return MHD_YES;
  return respond_reply (req, &reply);
}

/* Resolves the function and its canonical arguments; a bad request is answered here. /fib/N
 * keeps its own path syntax; /fn/<name> takes declared arguments. */
static enum MHD_Result
route_compute (CrunchRequest *req, const CrunchRoute *route, const gchar *arg)
{
  const CrunchFunction *fn = crunch_functions_lookup (route->name ? route->name : arg);
  g_autoptr (GError) error = NULL;
  g_autoptr (GVariant) args = NULL;
  CrunchReply refusal;

  if (fn == NULL) {
    g_autofree gchar *name = crunch_args_echo (arg);
    g_autofree gchar *message = g_strdup_printf ("no such function '%s'", name);
    return respond_error (req, MHD_HTTP_NOT_FOUND, message);
  }
  if (!crunch_auth_may_call (&req->grant, fn->name, &refusal))
    return respond_reply (req, &refusal);
  if (route->name == NULL && wants_decoder (req))
    return decode_later (req, arg, fn);
  args = route->name != NULL ? fn->parse (fn, arg, &error) : parse_fn_call (req, fn, &error);
  if (args == NULL)
    return respond_error (req, MHD_HTTP_BAD_REQUEST, error->message);
  g_variant_take_ref (args); /* floating (query string), or the body's, owned */
  /* never HEAD: its answer has no body to stream (and libmicrohttpd 0.9.75 would still end a
   * chunked one, putting the connection out of step) */
  if (!g_str_equal (req->method, "HEAD") && wants_event_stream (req->connection))
    return stream_compute (req, fn, args);
  return start_compute (req, fn, args); /* (borrowed: the call takes its own reference) */
}

static enum MHD_Result
respond_refusal (CrunchRequest *req, const CrunchCallRefusal *refusal)
{
  CrunchReply reply = crunch_reply_text (refusal->status, "%s", refusal->message);

  reply.retry_after = g_strdup (refusal->retry_after);
  reply.close = refusal->close;
  return respond_reply (req, &reply);
}

static enum MHD_Result
start_compute (CrunchRequest *req, const CrunchFunction *fn, GVariant *args)
{
  CrunchServer *server = req->server;
  g_autofree gchar *client = NULL, *why = NULL;
  gint64 deadline;
  guint priority;

  if (!request_deadline (req, fn, &deadline, &why) || !request_priority (req, &priority, &why))
    return respond_error (req, MHD_HTTP_BAD_REQUEST, why);
  if (deadline <= g_get_monotonic_time ()) { /* spent waiting for the decoder */
    g_autofree gchar *message =
        g_strdup_printf ("%s: deadline of %.3g s exceeded before the call could start", fn->name,
                         req->timeout_us / 1e6);
    return respond_error (req, MHD_HTTP_GATEWAY_TIMEOUT, message);
  }
  /* Before admission: counted after it, a request admitted just as the drain found nothing in
   * flight could be suspended still when MHD_stop_daemon() ran (an abort, or no answer). */
  if (!request_enter_flight (req)) {
    crunch_metrics_rejection (CRUNCH_REJECT_DRAINING);
    return respond_unavailable (req, "server is shutting down", TRUE);
  }
  client = client_key (req);
  req->call =
      crunch_call_new (server->calls, &(CrunchCallSpec){.fn = fn,
                                                        .args = args,
                                                        .client = client,
                                                        .deadline_us = deadline,
                                                        .watch_fd = connection_fd (req->connection),
                                                        .answered = on_answered,
                                                        .data = req,
                                                        .priority = priority});
  switch (crunch_call_admit (req->call)) {
  case CRUNCH_CALL_CACHED:
    req->cached = TRUE;
    return respond_bytes (req, MHD_HTTP_OK, crunch_call_cached (req->call), fn->content_type);
  case CRUNCH_CALL_REFUSED:
    return respond_refusal (req, crunch_call_refusal (req->call));
  case CRUNCH_CALL_ADMITTED:
    break;
  }
  /* Suspend first: the job may finish (and resume us) before submit() even returns. */
  MHD_suspend_connection (req->connection);
  set_suspended (req, TRUE);
  crunch_conns_request_parked (req->conn, TRUE);
  crunch_call_submit (req->call);
  return MHD_YES;
}

void
crunch_server_set_jobs (CrunchServer *self, CrunchJobs *jobs)
{
  self->jobs = jobs;
}

void
crunch_server_set_tls (CrunchServer *self, CrunchTls *tls)
{
  self->tls = tls;
}

void
crunch_server_set_auth (CrunchServer *self, CrunchAuth *auth)
{
  self->auth = auth;
}

void
crunch_server_set_busy_hook (CrunchServer *self, void (*busy) (gint64 now))
{
  self->busy = busy;
}

/* With [tls] client_ca, a public request must come with a client certificate that verifies:
 * checked on a connection's first request (a signature check), remembered for the rest. */
static gboolean
client_certificate_missing (CrunchRequest *req)
{
  const union MHD_ConnectionInfo *info;

  if (req->ops || crunch_tls_client_ca (req->server->tls) == NULL ||
      crunch_conns_client_verified (req->conn))
    return FALSE;
  info = MHD_get_connection_info (req->connection, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  if (info == NULL || !crunch_tls_client_verified (info->tls_session))
    return TRUE;
  crunch_conns_set_client_verified (req->conn);
  return FALSE;
}

/* ---- the access handler ---- */

static enum MHD_Result
respond_too_large (CrunchRequest *req)
{
  crunch_metrics_rejection (CRUNCH_REJECT_BODY_TOO_LARGE);
  return respond_error (req, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
}

/* With a separate ops daemon, ops routes live there and only there. */
static gboolean
served_here (CrunchRequest *req, const CrunchRoute *route)
{
  return !req->server->has_ops || (route->lane == CRUNCH_LANE_OPS) == req->ops;
}

/* Any thread, once: the deferred reply; resuming is the last touch of the request. */
static void
later_answer (CrunchLater *later, CrunchReply *reply)
{
  CrunchRequest *req = (CrunchRequest *)((gchar *)later - G_STRUCT_OFFSET (CrunchRequest, later));

  req->later_reply = *reply;
  resume (req);
}

/* A request counted in flight has ended: the last one while draining fires `drained`. */
static void
leave_flight (CrunchServer *server)
{
  if (g_atomic_int_dec_and_test (&server->in_flight) && g_atomic_int_get (&server->draining) &&
      g_atomic_int_compare_and_exchange (&server->drained_fired, 0, 1))
    g_idle_add (server->drained, server->drained_data);
}

/* CrunchRequestInfo.defer: parked like a compute request, and counted in flight so that a drain
 * waits for its answer. */
static CrunchLater *
request_defer (gpointer data)
{
  CrunchRequest *req = data;

  if (!request_enter_flight (req))
    return NULL;
  req->deferred = TRUE;
  req->later.answer = later_answer;
  MHD_suspend_connection (req->connection);
  set_suspended (req, TRUE);
  crunch_conns_request_parked (req->conn, TRUE);
  return &req->later;
}

/* The handler's deferred reply has come: the request resumed. */
static enum MHD_Result
respond_later (CrunchRequest *req)
{
  CrunchReply reply = req->later_reply;

  req->later_reply = (CrunchReply){0};
  set_suspended (req, FALSE);
  crunch_conns_request_parked (req->conn, FALSE);
  return respond_reply (req, &reply);
}

/* CrunchRequestInfo.may_call: POST /jobs names its function in the body. */
static gboolean
request_may_call (gpointer data, const gchar *function, CrunchReply *refusal)
{
  CrunchRequest *req = data;

  return crunch_auth_may_call (&req->grant, function, refusal);
}

/* The fast, ops and jobs lanes: the row's handler, resolved by the lane's owner. */
static enum MHD_Result
respond_handler (CrunchRequest *req, const CrunchRoute *route, const gchar *arg)
{
  g_autofree gchar *client = NULL, *why = NULL;
  CrunchRequestInfo info = {.method = req->method, .arg = arg};
  CrunchHandler handler = route->handler;
  gpointer context = NULL;
  CrunchReply reply;

  if (route->lane == CRUNCH_LANE_OPS) {
    handler = crunch_status_handler (route->name);
  } else if (route->lane == CRUNCH_LANE_JOBS) {
    if (req->server->jobs == NULL)
      return respond_error (req, MHD_HTTP_NOT_FOUND, "no such route");
    handler = crunch_jobs_handler (route->name);
    context = req->server->jobs;
    client = jobs_request_info (req, &info);
    if (g_str_equal (route->name, "submit")) {
      /* only a submission has a class: another verb ignores the header */
      g_autofree gchar *keys =
          info.idempotency_key != NULL ? joined_header (req->connection, "Idempotency-Key") : NULL;
      if (!request_priority (req, &info.priority, &why))
        return respond_error (req, MHD_HTTP_BAD_REQUEST, why);
      /* two keys: a proxy in front may have taken the other one */
      if (g_strcmp0 (keys, info.idempotency_key) != 0)
        return respond_error (req, MHD_HTTP_BAD_REQUEST,
                              "POST /jobs: Idempotency-Key: given more than once");
      if (wants_decoder (req))
        return decode_later (req, arg, NULL);
      if (req->body_state == BODY_INLINE)
        decode_here (req, NULL);
      info.decoded = &req->decode;
    }
  }
  reply = handler (&info, context);
  if (reply.status == 0) /* deferred: answered by later_answer() */
    return MHD_YES;
  return respond_reply (req, &reply);
}

/* [auth]: FALSE when the request has been refused (401, 403, 429). */
static gboolean
authorize (CrunchRequest *req, const CrunchRoute *route)
{
  g_autofree gchar *authorization = NULL;
  CrunchReply refusal;

  if (req->server->auth == NULL)
    return TRUE;
  /* every field, joined: two Authorization fields are no valid token */
  authorization = joined_header (req->connection, MHD_HTTP_HEADER_AUTHORIZATION);
  if (crunch_auth_check (req->server->auth, route, req->ops, authorization, &req->grant, &refusal))
    return TRUE;
  respond_reply (req, &refusal);
  return FALSE;
}

static enum MHD_Result
route_lane (CrunchRequest *req, const CrunchRoute *route, const gchar *arg)
{
  if (route->lane == CRUNCH_LANE_COMPUTE)
    return route_compute (req, route, arg);
  return respond_handler (req, route, arg);
}

/* The decoder has resumed the request: on to its lane, as if it had been decoded here (routed
 * and authorized already). */
static enum MHD_Result
route_decoded (CrunchRequest *req)
{
  req->body_state = BODY_DECODED;
  set_suspended (req, FALSE);
  crunch_conns_request_parked (req->conn, FALSE);
  if (req->decode.args == NULL && req->decode.error == NULL) { /* skipped by decode_wanted() */
    if (!g_atomic_int_get (&req->server->draining))
      return MHD_NO; /* the client has gone: nobody to answer */
    crunch_metrics_rejection (CRUNCH_REJECT_DRAINING);
    return respond_unavailable (req, "server is shutting down", TRUE);
  }
  return route_lane (req, req->route, req->arg);
}

static enum MHD_Result
route_request (CrunchRequest *req)
{
  g_autofree gchar *arg = NULL;
  CrunchRouteMatch match;
  CrunchRouteStatus found;

  if (req->body_bytes > (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED))
    return respond_too_large (req);
  if (*req->path == '\0') /* none, or emptied by unescape_path() */
    return respond_error (req, MHD_HTTP_BAD_REQUEST,
                          "the request path is empty or has malformed percent-encoding (or %00)");

  found = crunch_routes_match (req->method, req->path, &match);
  if (found != CRUNCH_ROUTE_NOT_FOUND && !served_here (req, match.route))
    found = CRUNCH_ROUTE_NOT_FOUND;
  req->route = found != CRUNCH_ROUTE_NOT_FOUND ? match.route : NULL;
  switch (found) {
  case CRUNCH_ROUTE_NOT_FOUND:
    return respond_error (req, MHD_HTTP_NOT_FOUND, "no such route");
  case CRUNCH_ROUTE_METHOD_NOT_ALLOWED: {
    CrunchReply reply = crunch_reply_text (MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed");
    reply.allow = match.allow;
    return respond_reply (req, &reply);
  }
  case CRUNCH_ROUTE_FOUND:
    break;
  }
  if (!authorize (req, match.route))
    return MHD_YES; /* answered */
  arg = match.arg_len > 0 ? g_strndup (match.arg, match.arg_len) : NULL;
  return route_lane (req, match.route, arg ? arg : "");
}

/* First call: Content-Length already over the cap can be refused before the body is read. */
static gboolean
declared_body_too_large (CrunchRequest *req)
{
  const gchar *value = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_CONTENT_LENGTH);
  guint64 length;

  return value != NULL && crunch_header_content_length (value, &length) &&
         length > (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED);
}

typedef struct {
  guint lengths;           /* Content-Length fields */
  const gchar *length;     /* the first one's value */
  gboolean lengths_differ; /* two of them disagree */
  guint encodings;         /* Transfer-Encoding fields */
  const gchar *encoding;   /* the last one */
  guint hosts;             /* Host fields */
  const gchar *malformed;  /* what is wrong with a field, if anything */
} Framing;

/* `key` starts as `name` does but is longer: a folded or padded field name. */
static gboolean
almost (const gchar *key, const gchar *name)
{
  gsize n = strlen (name);

  return g_ascii_strncasecmp (key, name, n) == 0 && key[n] != '\0';
}

static enum MHD_Result
collect_framing (void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
  Framing *f = cls;

  /* MHD keeps "Transfer-Encoding " (a space before the colon) and glues a folded line onto the
   * name ("Transfer-Encodingchunked"): a proxy may read either as the real field */
  if (!crunch_header_token_valid (key) || almost (key, MHD_HTTP_HEADER_TRANSFER_ENCODING) ||
      almost (key, MHD_HTTP_HEADER_CONTENT_LENGTH))
    f->malformed = "malformed header field name";
  else if (value != NULL && strpbrk (value, "\r\n") != NULL)
    f->malformed = "malformed header field value";
  if (g_ascii_strcasecmp (key, MHD_HTTP_HEADER_HOST) == 0)
    f->hosts++;
  if (g_ascii_strcasecmp (key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0) {
    f->lengths_differ |= f->lengths++ > 0 && g_strcmp0 (f->length, value) != 0;
    f->length = f->length ? f->length : value;
  } else if (g_ascii_strcasecmp (key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
    f->encodings++;
    f->encoding = value;
  }
  return MHD_YES;
}

/* First call: a request whose end a proxy in front could see elsewhere than MHD does (RFC 9112
 * 6.1 and 6.3: request smuggling). It is answered 400 and its connection closed, so no byte after
 * its header is ever read as another request. NULL: the framing is unambiguous. */
static const gchar *
ambiguous_framing (struct MHD_Connection *connection, gboolean http11)
{
  Framing f = {0};

  MHD_get_connection_values (connection, MHD_HEADER_KIND, collect_framing, &f);
  if (f.malformed != NULL)
    return f.malformed;
  if (http11 && f.hosts != 1) /* RFC 9112 3.2 */
    return "an HTTP/1.1 request must have exactly one Host field";
  if (f.encodings > 1)
    return "a request must not have more than one Transfer-Encoding field";
  if (f.encoding != NULL && f.lengths > 0)
    return "a request must not have both Content-Length and Transfer-Encoding";
  if (f.lengths_differ)
    return "a request must not have Content-Length fields that differ";
  if (f.encoding != NULL && g_ascii_strcasecmp (f.encoding, "chunked") != 0)
    return "Transfer-Encoding other than 'chunked' is not supported";
  return NULL;
}

/* First call: requests that are refused before their body is read. */
static enum MHD_Result
check_request_line (CrunchRequest *req)
{
  const gchar *framing;

  if (client_certificate_missing (req)) {
    CrunchReply reply = crunch_reply_text (
        MHD_HTTP_FORBIDDEN,
        "a client certificate signed by the server's [tls] client_ca is required");
    reply.close = TRUE;
    return respond_reply (req, &reply);
  }
  if (!crunch_header_token_valid (req->method))
    framing = "malformed request method";
  else
    framing = ambiguous_framing (req->connection, g_str_equal (req->protocol, "HTTP/1.1"));
  if (framing != NULL) {
    CrunchReply reply = crunch_reply_text (MHD_HTTP_BAD_REQUEST, "%s", framing);
    reply.close = TRUE;
    return respond_reply (req, &reply);
  }
  if (declared_body_too_large (req))
    return respond_too_large (req);
  return MHD_YES;
}

/* The path of a request target: the absolute form ("http://host/fib/5", RFC 9112 3.2.2: a
 * server must accept it) without its scheme and authority. */
static const gchar *
origin_form (const gchar *url)
{
  const gchar *rest = g_ascii_strncasecmp (url, "http://", 7) == 0    ? url + 7
                      : g_ascii_strncasecmp (url, "https://", 8) == 0 ? url + 8
                                                                      : NULL;

  if (rest == NULL)
    return url;
  rest = strchr (rest, '/');
  return rest != NULL ? rest : "/";
}

static enum MHD_Result
on_request (void *cls, struct MHD_Connection *connection, const char *url, const char *method,
            const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
  const Listener *listener = cls;
  CrunchRequest *req = *req_cls;

  if (req == NULL) {
    req = g_new0 (CrunchRequest, 1);
    req->server = listener->server;
    req->ops = listener->ops;
    req->connection = connection;
    req->conn =
        MHD_get_connection_info (connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT)->socket_context;
    req->t_start = g_get_monotonic_time ();
    req->method = g_strdup (method);
    req->path = g_strdup (origin_form (url));
    req->protocol = g_str_equal (version, MHD_HTTP_VERSION_1_0) ? "HTTP/1.0" : "HTTP/1.1";
    crunch_request_id (req->request_id, MHD_lookup_connection_value (connection, MHD_HEADER_KIND,
                                                                     CRUNCH_REQUEST_ID_HEADER));
    resolve_client (req);
    *req_cls = req;
    return check_request_line (req);
  }
  if (*upload_data_size > 0) {
    req->body_bytes += *upload_data_size;
    if (req->body_bytes <=
        (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED)) {
      if (req->body == NULL)
        req->body = g_byte_array_new ();
      g_byte_array_append (req->body, (const guint8 *)upload_data, *upload_data_size);
    }
    *upload_data_size = 0;
    /* A chunked body past the cap: MHD can queue an answer only once the body has ended, so
     * discard a bounded excess to give the client its 413; a body beyond that is cut off. */
    return req->body_bytes >
                   (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED) +
                       BODY_DISCARD_EXCESS
               ? MHD_NO
               : MHD_YES;
  }
  if (!req->complete) {
    req->complete = TRUE;
    req->t_complete = g_get_monotonic_time ();
    crunch_conns_request_complete (req->conn);
  }
  if (req->status != 0)
    return MHD_YES; /* answered early (413 on Content-Length, 400 on framing) */
  if (req->call != NULL)
    return respond_ticket (req);
  if (req->deferred)
    return respond_later (req);
  if (req->body_state == BODY_DECODING)
    return route_decoded (req);
  return route_request (req);
}

static void
log_access (CrunchRequest *req, gint64 duration_us)
{
  const CrunchTicket *ticket = req->call != NULL ? crunch_call_ticket (req->call) : NULL;
  gboolean ran = ticket != NULL && ticket->t_started != 0;

  if (crunch_logging_access_format () == CRUNCH_ACCESS_LOG_OFF)
    return;
  crunch_access_log (&(CrunchAccessRecord){
      .client = req->client,
      .key = crunch_auth_grant_name (&req->grant),
      .method = req->method,
      .path = req->path,
      .protocol = req->protocol,
      .status = req->status,
      .bytes = req->bytes,
      .duration_us = duration_us,
      .request_id = req->request_id,
      .queue_us = ran ? MAX (ticket->t_started - ticket->t_submitted, 0) : -1,
      .run_us = ran ? ticket->t_finished - ticket->t_started : -1,
      .outcome = ticket != NULL ? crunch_job_outcome_name (ticket->outcome)
                 : req->cached  ? "cached"
                                : NULL,
      .coalesced = ticket != NULL && ticket->coalesced,
  });
}

/* MHD_OPTION_NOTIFY_COMPLETED: the single place a request ends. */
static void
on_completed (void *cls, struct MHD_Connection *connection, void **req_cls,
              enum MHD_RequestTerminationCode toe)
{
  CrunchServer *server = cls;
  CrunchRequest *req = *req_cls;
  gint64 duration_us;

  if (req == NULL)
    return;
  *req_cls = NULL;
  if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
    crunch_conns_request_ended (req->conn); /* waits for its next request */
  if (req->status == 0)
    req->status = 499; /* nginx's "client closed request": nothing was sent */
  duration_us = g_get_monotonic_time () - req->t_start;
  if (req->stream != NULL) /* an event stream's body: what MHD took of it */
    req->bytes = crunch_stream_sent (req->stream);
  crunch_metrics_request (req->route, req->method, req->status, duration_us);
  log_access (req, duration_us);
  if (server->busy != NULL && req->call == NULL && !req->deferred && req->stream == NULL &&
      req->body_state == BODY_INLINE)
    server->busy (req->t_start + duration_us); /* answered inline: the fast lane is in use */
  if (server->auth != NULL)
    crunch_auth_finish (server->auth, &req->grant);
  set_suspended (req, FALSE);
  __atomic_add_fetch (&server->served, 1, __ATOMIC_RELAXED);
  g_clear_pointer (&req->call, crunch_call_unref);
  if (req->stream != NULL) { /* its socket is still open: stop watching it */
    crunch_stream_detach (req->stream);
    g_clear_pointer (&req->stream, crunch_stream_unref);
  }
  if (req->in_flight)
    leave_flight (server);
  /* a deferred reply never sent (the client left) */
  if (req->later_reply.stream != NULL)
    crunch_stream_detach (req->later_reply.stream);
  crunch_reply_clear (&req->later_reply);
  crunch_decode_clear (&req->decode);
  g_free (req->arg);
  if (req->body != NULL)
    g_byte_array_unref (req->body);
  g_free (req->method);
  g_free (req->path);
  g_free (req);
}

/* ---- daemons ---- */

/* MHD_OPTION_UNESCAPE_CALLBACK, for the path and the query arguments. MHD's own decoder keeps
 * malformed escapes as they are and turns %00 into a NUL that silently truncates the path
 * ("/fib/1%00x" would compute fib(1)); ours empties such a string instead, and an empty path
 * gets 400 in route_request(). The length 1 of that empty string (MHD ignores the path's) tells
 * collect_query_arg() an argument so emptied from one that was empty. */
static size_t
unescape_path (void *cls, struct MHD_Connection *connection, char *s)
{
  gsize len;

  if (crunch_path_unescape (s, &len))
    return len;
  s[0] = '\0';
  return 1;
}

static void
on_mhd_log (void *cls, const char *format, va_list ap)
{
  g_autofree gchar *message = g_strdup_vprintf (format, ap);

  g_debug ("libmicrohttpd: %s", g_strchomp (message));
}

/* MHD_OPTION_NOTIFY_CONNECTION: the daemon's connection guard tracks every connection from its
 * start (waiting for a complete request) to its close. */
static void
on_connection (void *cls, struct MHD_Connection *connection, void **socket_context,
               enum MHD_ConnectionNotificationCode toe)
{
  CrunchConns *guard = cls;

  if (toe == MHD_CONNECTION_NOTIFY_STARTED)
    *socket_context = crunch_conns_opened (guard, connection_fd (connection));
  else
    crunch_conns_closed (*socket_context);
}

void
crunch_server_fill_gauges (CrunchGauges *g, gpointer data)
{
  CrunchServer *self = data;
  CrunchSchedulerStats stats;

  crunch_scheduler_get_stats (self->scheduler, &stats);
  g->jobs_queued = stats.queued;
  g->jobs_running = stats.running;
  g->workers_busy = stats.busy;
  g->workers_total = stats.threads;
  g->queue_limit = stats.queue_limit;
  for (guint i = 0; i < self->guards->len; i++) {
    CrunchConnsStats conns;
    crunch_conns_get_stats (self->guards->pdata[i], &conns);
    g->connections_open += conns.open;
    g->connections_timed_out += conns.timed_out;
    g->connections_made_room += conns.made_room;
  }
  g->streams_open = crunch_streams_open ();
  g->bodies_decoding = (guint)MAX (g_atomic_int_get (&self->decoding), 0);
  g->draining = g_atomic_int_get (&self->draining);
}

CrunchServer *
crunch_server_new (CrunchScheduler *scheduler, CrunchCalls *calls, const CrunchConfig *config)
{
  CrunchServer *self = g_new0 (CrunchServer, 1);

  self->scheduler = scheduler;
  self->calls = calls;
  if (g_str_has_prefix (config->client_key, "header:"))
    self->client_key_header = g_strdup (config->client_key + strlen ("header:"));
  g_rw_lock_init (&self->proxies_lock);
  self->daemons = g_ptr_array_new ();
  self->quiesced = g_array_new (FALSE, FALSE, sizeof (MHD_socket));
  self->guards = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_conns_free);
  self->poll_threads = config->poll_threads != 0
                           ? config->poll_threads
                           : CLAMP (g_get_num_processors (), 1, MAX_AUTO_POLL_THREADS);
  self->max_connections = config->max_connections;
  self->decode_limit = CLAMP (config->max_connections / 8, 1, MAX_DECODE_WAITING);
  self->max_connections_per_ip = config->max_connections_per_ip;
  self->connection_timeout = config->connection_timeout;
  self->listen = g_strdupv (config->listen);
  self->metrics_listen = g_strdup (config->metrics_listen);
  self->has_ops = *self->metrics_listen != '\0';
  self->public_listener = (Listener){self, FALSE};
  self->ops_listener = (Listener){self, TRUE};
  self->decoder =
      crunch_decoder_new (CLAMP (g_get_num_processors (), 1, MAX_DECODER_THREADS), config->nice);
  crunch_server_configure (self, config);
  return self;
}

void
crunch_server_configure (CrunchServer *self, const CrunchConfig *config)
{
  CrunchProxies *proxies, *old;

  __atomic_store_n (&self->max_body_size, (gint64)config->max_body_size, __ATOMIC_RELAXED);
  __atomic_store_n (&self->request_timeout, config->request_timeout, __ATOMIC_RELAXED);
  __atomic_store_n (&self->default_priority, config->default_priority, __ATOMIC_RELAXED);
  __atomic_store_n (&self->proxy_header, (gint)config->proxy_header, __ATOMIC_RELAXED);
  crunch_decoder_set_nice (self->decoder, config->nice);
  /* validated with the configuration: cannot fail here */
  proxies = crunch_proxies_new ((const gchar *const *)config->trusted_proxies, NULL);
  g_rw_lock_writer_lock (&self->proxies_lock);
  old = self->proxies;
  self->proxies = proxies;
  g_rw_lock_writer_unlock (&self->proxies_lock);
  crunch_proxies_free (old);
  for (guint i = 0; self->guards != NULL && i < self->guards->len; i++)
    crunch_conns_set_timeout (self->guards->pdata[i], config->request_timeout);
}

/* "listening on http://127.0.0.1:8000/" (https:// with [tls]): tests read the port from this
 * line. The ops daemon says "ops endpoints (...) on http://...", without "listening on". */
static void
log_listening (struct MHD_Daemon *daemon, gboolean ops, gboolean tls)
{
  const union MHD_DaemonInfo *info = MHD_get_daemon_info (daemon, MHD_DAEMON_INFO_LISTEN_FD);
  struct sockaddr_storage addr;
  socklen_t len = sizeof addr;
  g_autoptr (GSocketAddress) sa = NULL;
  g_autofree gchar *host = NULL;

  if (info == NULL || getsockname (info->listen_fd, (struct sockaddr *)&addr, &len) != 0)
    return;
  sa = g_socket_address_new_from_native (&addr, len);
  if (!G_IS_INET_SOCKET_ADDRESS (sa))
    return;
  host = g_inet_address_to_string (g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (sa)));
  g_message ("%s %s://%s%s%s:%u/",
             ops ? "ops endpoints (/metrics, /healthz, /readyz, /status) on" : "listening on",
             tls ? "https" : "http", addr.ss_family == AF_INET6 ? "[" : "", host,
             addr.ss_family == AF_INET6 ? "]" : "",
             g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (sa)));
}

/* HTTPS options for a public daemon: the certificate callback, the priorities and the client CA.
 * Writes at most 3 items to `out`; returns how many. */
static guint
tls_options (CrunchServer *self, gboolean ops, struct MHD_OptionItem *out)
{
  guint n = 0;

  if (self->tls == NULL || ops)
    return 0;
  out[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
                                     crunch_tls_certificate_callback ()};
  out[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)CRUNCH_TLS_PRIORITIES};
  if (crunch_tls_client_ca (self->tls) != NULL)
    out[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_TRUST, 0,
                                       (void *)crunch_tls_client_ca (self->tls)};
  return n;
}

static gboolean
start_daemon (CrunchServer *self, gint fd, const struct sockaddr_storage *addr, gboolean ops,
              GError **error)
{
  guint flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                MHD_USE_ERROR_LOG;
  /* No MHD_OPTION_LISTENING_ADDRESS_REUSE: it sets SO_REUSEPORT, and a second crunchd on the
   * same address would then start and share the traffic. MHD's default is SO_REUSEADDR alone,
   * which is what a fast restart over connections in TIME_WAIT needs. */
  CrunchConns *guard = crunch_conns_new (self->max_connections, ops ? "ops" : "http",
                                         crunch_calls_watcher (self->calls));
  struct MHD_OptionItem options[] = {
      {MHD_OPTION_CONNECTION_LIMIT, self->max_connections, NULL},
      {MHD_OPTION_PER_IP_CONNECTION_LIMIT, self->max_connections_per_ip, NULL},
      {MHD_OPTION_CONNECTION_TIMEOUT, self->connection_timeout, NULL},
      {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, self},
      {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)on_connection, guard},
      {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, NULL},
      {MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t)unescape_path, NULL},
      fd >= 0 ? (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL}
              : (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, (void *)addr},
      /* polling threads (1: MHD's one internal thread, no pool); the ops daemon needs one */
      {MHD_OPTION_THREAD_POOL_SIZE, ops ? 1 : self->poll_threads, NULL},
      {MHD_OPTION_END, 0, NULL}, /* room for tls_options() */
      {MHD_OPTION_END, 0, NULL},
      {MHD_OPTION_END, 0, NULL},
      {MHD_OPTION_END, 0, NULL},
  };
  struct MHD_Daemon *daemon;

  if (tls_options (self, ops, &options[G_N_ELEMENTS (options) - 4]) > 0)
    flags |= MHD_USE_TLS;
  if (fd < 0 && addr->ss_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  daemon = MHD_start_daemon (flags, 0, NULL, NULL, on_request,
                             ops ? &self->ops_listener : &self->public_listener, MHD_OPTION_ARRAY,
                             options, MHD_OPTION_END);
  if (daemon == NULL) {
    crunch_conns_free (guard);
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "libmicrohttpd could not start: %s",
                 fd >= 0 ? "bad socket from systemd" : g_strerror (errno));
    return FALSE;
  }
  crunch_conns_set_timeout (guard, __atomic_load_n (&self->request_timeout, __ATOMIC_RELAXED));
  g_ptr_array_add (self->guards, guard);
  if (ops)
    self->ops_daemon = daemon;
  else
    g_ptr_array_add (self->daemons, daemon);
  log_listening (daemon, ops, self->tls != NULL && !ops);
  return TRUE;
}

static gboolean
listen_on (CrunchServer *self, const gchar *address, gboolean ops, GError **error)
{
  struct sockaddr_storage addr;
  socklen_t len;
  g_autoptr (GError) local = NULL;

  if (!crunch_parse_listen_address (address, &addr, &len, error))
    return FALSE;
  if (!start_daemon (self, -1, &addr, ops, &local)) {
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "cannot listen on %s: %s", address,
                 local->message);
    return FALSE;
  }
  return TRUE;
}

gboolean
crunch_server_start (CrunchServer *self, GArray *listen_fds, GError **error)
{
  self->activated = listen_fds->len > 0;
  for (guint i = 0; i < listen_fds->len; i++) {
    if (!start_daemon (self, g_array_index (listen_fds, gint, i), NULL, FALSE, error))
      return FALSE;
  }
  for (gchar **l = self->listen; listen_fds->len == 0 && *l != NULL; l++) {
    if (!listen_on (self, *l, FALSE, error))
      return FALSE;
  }
  return !self->has_ops || listen_on (self, self->metrics_listen, TRUE, error);
}

void
crunch_server_drain (CrunchServer *self, GSourceFunc drained, gpointer data)
{
  self->drained = drained;
  self->drained_data = data;
  g_atomic_int_set (&self->draining, TRUE);
  crunch_streams_end_all (); /* their clients reconnect to the next process */
  for (guint i = 0; i < self->daemons->len; i++) {
    /* The daemon hands its listen socket back. Our own socket is shut down now, which refuses
     * new connections; an activated one is left to systemd, whose copy keeps new connections
     * queued for the next instance. Either fd is closed only after MHD_stop_daemon(): MHD's
     * thread may still touch it (epoll_ctl) for a moment after quiesce, and TSan saw the race. */
    MHD_socket fd = MHD_quiesce_daemon (self->daemons->pdata[i]);
    if (fd == MHD_INVALID_SOCKET)
      continue;
    if (!self->activated)
      shutdown (fd, SHUT_RD);
    g_array_append_val (self->quiesced, fd);
  }
  if (g_atomic_int_get (&self->in_flight) == 0 &&
      g_atomic_int_compare_and_exchange (&self->drained_fired, 0, 1))
    g_idle_add (drained, data);
}

guint
crunch_server_in_flight (CrunchServer *self)
{
  return (guint)g_atomic_int_get (&self->in_flight);
}

guint64
crunch_server_requests_served (CrunchServer *self)
{
  return __atomic_load_n (&self->served, __ATOMIC_RELAXED);
}

void
crunch_server_free (CrunchServer *self)
{
  if (self == NULL)
    return;
  g_warn_if_fail (g_atomic_int_get (&self->in_flight) == 0);
  crunch_decoder_free (self->decoder);           /* nothing is queued: it would be in flight */
  while (g_atomic_int_get (&self->resuming) > 0) /* a few instructions at most */
    g_usleep (100);
  for (guint i = 0; i < self->daemons->len; i++)
    MHD_stop_daemon (self->daemons->pdata[i]);
  for (guint i = 0; i < self->quiesced->len; i++)
    close (g_array_index (self->quiesced, MHD_socket, i));
  g_array_unref (self->quiesced);
  if (self->ops_daemon != NULL)
    MHD_stop_daemon (self->ops_daemon);
  g_ptr_array_unref (self->guards); /* after the daemons: every connection is closed */
  g_ptr_array_unref (self->daemons);
  g_free (self->metrics_listen);
  g_strfreev (self->listen);
  g_free (self->client_key_header);
  crunch_proxies_free (self->proxies);
  g_rw_lock_clear (&self->proxies_lock);
  g_free (self);
}
