/* server.c - libmicrohttpd front end.
 *
 * DESIGN
 * Threads: each MHD daemon (one per listen address) runs its own internal polling thread (epoll).
 * All access-handler calls and all MHD_queue_response() calls happen on those threads. Worker
 * threads touch a connection only through on_job_done(), whose one action is
 * MHD_resume_connection(): the last thing any worker does with a request.
 *
 * Life of a request (see shared DESIGN): first call allocates a CrunchRequest into *req_cls;
 * body chunks are counted (and discarded) against max_body_size; the final call routes it.
 * Fast lane: answered at once. Compute lane: parse arguments (400), admission (503), then
 * MHD_suspend_connection() *before* the job is submitted; when the job is done the worker
 * resumes the connection, MHD calls the handler again and it queues the job's answer.
 * on_completed() (MHD_OPTION_NOTIFY_COMPLETED) is the one place a request ends: it writes the
 * access log, frees the request and, while draining, reports when the last compute request is
 * gone, so the main thread knows MHD_stop_daemon() is safe. */
#include "server.h"

#include <arpa/inet.h>
#include <gio/gio.h>
#include <microhttpd.h>
#include <string.h>
#include <unistd.h>

#include "logging.h"
#include "routes.h"

struct CrunchServer {
  CrunchScheduler *scheduler;
  GPtrArray *daemons;
  guint max_connections, max_connections_per_ip, connection_timeout;
  gchar **listen;
  gint64 max_body_size; /* atomic */
  gint in_flight;       /* compute requests admitted and not yet completed */
  guint64 served;       /* requests answered (any status), atomic; for STATUS= */
  gint draining;
  gint drained_fired;
  GSourceFunc drained;
  gpointer drained_data;
};

typedef struct {
  CrunchServer *server;
  struct MHD_Connection *connection;
  gint64 t_start;
  gchar *method, *path;
  guint64 body_bytes;
  CrunchJob *job; /* compute lane, from submission on */
  guint status;
  gsize bytes;
} CrunchRequest;

/* ---- responses: the one place that renders answers and error pages ---- */

static enum MHD_Result
queue (CrunchRequest *req, guint status, struct MHD_Response *resp, const gchar *content_type)
{
  enum MHD_Result ret;

  MHD_add_response_header (resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  ret = MHD_queue_response (req->connection, status, resp);
  MHD_destroy_response (resp);
  req->status = status;
  return ret;
}

static enum MHD_Result
respond_static (CrunchRequest *req, guint status, const gchar *body, const gchar *content_type)
{
  req->bytes = strlen (body);
  return queue (req, status,
                MHD_create_response_from_buffer (req->bytes, (void *)body, MHD_RESPMEM_PERSISTENT),
                content_type);
}

/* A short plain-text error; extra headers come as name, value pairs ending in NULL. */
static enum MHD_Result
respond_error (CrunchRequest *req, guint status, const gchar *message, ...)
{
  g_autofree gchar *body = g_strconcat (message, "\n", NULL);
  struct MHD_Response *resp;
  va_list headers;

  req->bytes = strlen (body);
  resp = MHD_create_response_from_buffer (req->bytes, body, MHD_RESPMEM_MUST_COPY);
  va_start (headers, message);
  for (const gchar *name = va_arg (headers, const gchar *); name != NULL;
       name = va_arg (headers, const gchar *))
    MHD_add_response_header (resp, name, va_arg (headers, const gchar *));
  va_end (headers);
  return queue (req, status, resp, "text/plain; charset=utf-8");
}

static void
free_bytes (void *bytes)
{
  g_bytes_unref (bytes);
}

static enum MHD_Result
respond_job (CrunchRequest *req)
{
  CrunchJob *job = req->job;
  g_autofree gchar *message = NULL;
  gsize size;
  gconstpointer data;

  switch (job->outcome) {
  case CRUNCH_JOB_OK:
    data = g_bytes_get_data (job->result, &size);
    req->bytes = size;
    return queue (req, MHD_HTTP_OK,
                  MHD_create_response_from_buffer_with_free_callback_cls (
                      size, (void *)data, free_bytes, g_bytes_ref (job->result)),
                  job->fn->content_type);
  case CRUNCH_JOB_FAILED:
    return respond_error (req, MHD_HTTP_INTERNAL_SERVER_ERROR, job->error, NULL);
  case CRUNCH_JOB_TIMED_OUT:
    message = g_strdup_printf ("%s: deadline of %.3g s exceeded", job->fn->name,
                               (job->deadline_us - job->t_submitted) / 1e6);
    return respond_error (req, MHD_HTTP_GATEWAY_TIMEOUT, message, NULL);
  case CRUNCH_JOB_SHUTDOWN:
    return respond_error (req, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down",
                          MHD_HTTP_HEADER_CONNECTION, "close", MHD_HTTP_HEADER_RETRY_AFTER, "1",
                          NULL);
  case CRUNCH_JOB_CLIENT_GONE:
  case CRUNCH_JOB_PENDING:
    break;
  }
  return MHD_NO; /* nobody to answer: close the connection */
}

/* ---- the compute lane ---- */

/* Worker thread: the job has an outcome. Resuming is the last touch of the request. */
static void
on_job_done (CrunchJob *job, gpointer data)
{
  CrunchRequest *req = data;

  MHD_resume_connection (req->connection);
}

static gchar *
client_address (struct MHD_Connection *connection)
{
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  gchar buf[INET6_ADDRSTRLEN] = "unknown";
  const struct sockaddr *sa = info ? info->client_addr : NULL;

  if (sa != NULL && sa->sa_family == AF_INET)
    inet_ntop (AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, sizeof buf);
  else if (sa != NULL && sa->sa_family == AF_INET6)
    inet_ntop (AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, sizeof buf);
  return g_strdup (buf);
}

static enum MHD_Result
start_compute (CrunchRequest *req, const CrunchRoute *route, const gchar *arg)
{
  CrunchServer *server = req->server;
  const CrunchFunction *fn = crunch_functions_lookup (route->function);
  g_autoptr (GError) error = NULL;
  g_autoptr (GVariant) args = NULL;
  g_autofree gchar *client = NULL;
  gint64 timeout_us;

  g_assert (fn != NULL); /* the route table only names registered functions */
  args = fn->parse (fn, arg, &error);
  if (args == NULL)
    return respond_error (req, MHD_HTTP_BAD_REQUEST, error->message, NULL);
  g_variant_ref_sink (args);

  switch (crunch_scheduler_admit (server->scheduler)) {
  case CRUNCH_ADMIT_OK:
    break;
  case CRUNCH_ADMIT_QUEUE_FULL:
    return respond_error (req, MHD_HTTP_SERVICE_UNAVAILABLE, "job queue is full, retry later",
                          MHD_HTTP_HEADER_RETRY_AFTER, "1", NULL);
  case CRUNCH_ADMIT_DRAINING:
    return respond_error (req, MHD_HTTP_SERVICE_UNAVAILABLE, "server is shutting down",
                          MHD_HTTP_HEADER_CONNECTION, "close", MHD_HTTP_HEADER_RETRY_AFTER, "1",
                          NULL);
  }

  client = client_address (req->connection);
  timeout_us = __atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED);
  req->job = crunch_job_new (fn, args, client, g_get_monotonic_time () + timeout_us);
  req->job->done = on_job_done;
  req->job->done_data = req;
  g_atomic_int_inc (&server->in_flight);
  /* Suspend first: the job may finish (and resume us) before submit() even returns. */
  MHD_suspend_connection (req->connection);
  crunch_scheduler_submit (server->scheduler, req->job);
  return MHD_YES;
}

/* ---- the access handler ---- */

static enum MHD_Result
route_request (CrunchRequest *req)
{
  CrunchRouteMatch match;

  if (req->body_bytes > (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED))
    return respond_error (req, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large", NULL);

  switch (crunch_routes_match (req->method, req->path, &match)) {
  case CRUNCH_ROUTE_NOT_FOUND:
    return respond_error (req, MHD_HTTP_NOT_FOUND, "no such route", NULL);
  case CRUNCH_ROUTE_METHOD_NOT_ALLOWED:
    return respond_error (req, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
                          MHD_HTTP_HEADER_ALLOW, match.allow, NULL);
  case CRUNCH_ROUTE_FOUND:
    break;
  }
  if (match.route->lane == CRUNCH_LANE_COMPUTE)
    return start_compute (req, match.route, match.arg);

  CrunchReply reply = match.route->handler (match.arg);
  return respond_static (req, reply.status, reply.body, reply.content_type);
}

/* First call: Content-Length already over the cap can be refused before the body is read. */
static gboolean
declared_body_too_large (CrunchRequest *req)
{
  const gchar *value = MHD_lookup_connection_value (req->connection, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_CONTENT_LENGTH);
  guint64 length;

  return value != NULL && g_ascii_string_to_unsigned (value, 10, 0, G_MAXUINT64, &length, NULL) &&
         length > (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED);
}

static enum MHD_Result
on_request (void *cls, struct MHD_Connection *connection, const char *url, const char *method,
            const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls)
{
  CrunchRequest *req = *req_cls;

  if (req == NULL) {
    req = g_new0 (CrunchRequest, 1);
    req->server = cls;
    req->connection = connection;
    req->t_start = g_get_monotonic_time ();
    req->method = g_strdup (method);
    req->path = g_strdup (url);
    *req_cls = req;
    if (declared_body_too_large (req))
      return respond_error (req, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large", NULL);
    return MHD_YES;
  }
  if (*upload_data_size > 0) {
    req->body_bytes += *upload_data_size;
    *upload_data_size = 0;
    /* a chunked body past the cap: no answer can be queued mid-body, so close */
    return req->body_bytes >
                   (guint64)__atomic_load_n (&req->server->max_body_size, __ATOMIC_RELAXED)
               ? MHD_NO
               : MHD_YES;
  }
  if (req->status != 0)
    return MHD_YES; /* answered early (413 on Content-Length) */
  if (req->job != NULL)
    return respond_job (req);
  return route_request (req);
}

static void
log_access (CrunchRequest *req)
{
  gint64 now = g_get_monotonic_time ();
  g_autofree gchar *timing = NULL;
  CrunchJob *job = req->job;

  if (!crunch_logging_access_enabled ())
    return;
  if (job != NULL && job->t_started != 0)
    timing = g_strdup_printf (" queued=%.3fms computed=%.3fms",
                              (job->t_started - job->t_submitted) / 1e3,
                              (job->t_finished - job->t_started) / 1e3);
  g_log_structured (CRUNCH_LOG_ACCESS_DOMAIN, G_LOG_LEVEL_INFO, "ROUTE", req->path, "METHOD",
                    req->method, "MESSAGE", "%s %s %u %zu bytes %.3fms%s", req->method, req->path,
                    req->status, req->bytes, (now - req->t_start) / 1e3, timing ? timing : "");
}

/* MHD_OPTION_NOTIFY_COMPLETED: the single place a request ends. */
static void
on_completed (void *cls, struct MHD_Connection *connection, void **req_cls,
              enum MHD_RequestTerminationCode toe)
{
  CrunchServer *server = cls;
  CrunchRequest *req = *req_cls;

  if (req == NULL)
    return;
  *req_cls = NULL;
  if (req->status == 0)
    req->status = 499; /* nginx's "client closed request": nothing was sent */
  log_access (req);
  __atomic_add_fetch (&server->served, 1, __ATOMIC_RELAXED);
  if (req->job != NULL) {
    crunch_job_unref (req->job);
    if (g_atomic_int_dec_and_test (&server->in_flight) && g_atomic_int_get (&server->draining) &&
        g_atomic_int_compare_and_exchange (&server->drained_fired, 0, 1))
      g_idle_add (server->drained, server->drained_data);
  }
  g_free (req->method);
  g_free (req->path);
  g_free (req);
}

/* ---- daemons ---- */

static void
on_mhd_log (void *cls, const char *format, va_list ap)
{
  g_autofree gchar *message = g_strdup_vprintf (format, ap);

  g_debug ("libmicrohttpd: %s", g_strchomp (message));
}

CrunchServer *
crunch_server_new (CrunchScheduler *scheduler, const CrunchConfig *config)
{
  CrunchServer *self = g_new0 (CrunchServer, 1);

  self->scheduler = scheduler;
  self->daemons = g_ptr_array_new ();
  self->max_connections = config->max_connections;
  self->max_connections_per_ip = config->max_connections_per_ip;
  self->connection_timeout = config->connection_timeout;
  self->listen = g_strdupv (config->listen);
  crunch_server_configure (self, config);
  return self;
}

void
crunch_server_configure (CrunchServer *self, const CrunchConfig *config)
{
  __atomic_store_n (&self->max_body_size, (gint64)config->max_body_size, __ATOMIC_RELAXED);
}

/* "listening on http://127.0.0.1:8000/": tests read the port from this line. */
static void
log_listening (struct MHD_Daemon *daemon)
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
  g_message ("listening on http://%s%s%s:%u/", addr.ss_family == AF_INET6 ? "[" : "", host,
             addr.ss_family == AF_INET6 ? "]" : "",
             g_inet_socket_address_get_port (G_INET_SOCKET_ADDRESS (sa)));
}

static gboolean
start_daemon (CrunchServer *self, gint fd, const struct sockaddr_storage *addr, GError **error)
{
  guint flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                MHD_USE_ERROR_LOG;
  struct MHD_OptionItem options[] = {
      {MHD_OPTION_CONNECTION_LIMIT, self->max_connections, NULL},
      {MHD_OPTION_PER_IP_CONNECTION_LIMIT, self->max_connections_per_ip, NULL},
      {MHD_OPTION_CONNECTION_TIMEOUT, self->connection_timeout, NULL},
      {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, self},
      {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, NULL},
      {MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL},
      fd >= 0 ? (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, fd, NULL}
              : (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, (void *)addr},
      {MHD_OPTION_END, 0, NULL},
  };
  struct MHD_Daemon *daemon;

  if (fd < 0 && addr->ss_family == AF_INET6)
    flags |= MHD_USE_IPv6;
  daemon = MHD_start_daemon (flags, 0, NULL, NULL, on_request, self, MHD_OPTION_ARRAY, options,
                             MHD_OPTION_END);
  if (daemon == NULL) {
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "libmicrohttpd could not start: %s",
                 fd >= 0 ? "bad socket from systemd" : g_strerror (errno));
    return FALSE;
  }
  g_ptr_array_add (self->daemons, daemon);
  log_listening (daemon);
  return TRUE;
}

gboolean
crunch_server_start (CrunchServer *self, GArray *listen_fds, GError **error)
{
  for (guint i = 0; i < listen_fds->len; i++) {
    if (!start_daemon (self, g_array_index (listen_fds, gint, i), NULL, error))
      return FALSE;
  }
  for (gchar **l = self->listen; listen_fds->len == 0 && *l != NULL; l++) {
    struct sockaddr_storage addr;
    socklen_t len;
    g_autoptr (GError) local = NULL;
    if (!crunch_parse_listen_address (*l, &addr, &len, error) ||
        !start_daemon (self, -1, &addr, &local)) {
      if (local != NULL)
        g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "cannot listen on %s: %s", *l,
                     local->message);
      return FALSE;
    }
  }
  return TRUE;
}

void
crunch_server_drain (CrunchServer *self, GSourceFunc drained, gpointer data)
{
  self->drained = drained;
  self->drained_data = data;
  g_atomic_int_set (&self->draining, TRUE);
  for (guint i = 0; i < self->daemons->len; i++) {
    /* The daemon hands its listen socket back; closing it refuses new connections (systemd
     * keeps its own copy of an activated socket, so a restart still finds it). */
    MHD_socket fd = MHD_quiesce_daemon (self->daemons->pdata[i]);
    if (fd != MHD_INVALID_SOCKET)
      close (fd);
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
  for (guint i = 0; i < self->daemons->len; i++)
    MHD_stop_daemon (self->daemons->pdata[i]);
  g_ptr_array_unref (self->daemons);
  g_strfreev (self->listen);
  g_free (self);
}
