/* server.h - the HTTP front end: libmicrohttpd daemons, the access handler, suspend/resume. */
#pragma once

#include <glib.h>

#include "auth.h"
#include "config.h"
#include "jobs.h"
#include "metrics.h"
#include "scheduler.h"
#include "tls.h"

typedef struct CrunchServer CrunchServer;

/* Compute requests go through `calls`; `scheduler` is read for the gauges. */
CrunchServer *crunch_server_new (CrunchScheduler *scheduler, CrunchCalls *calls,
                                 const CrunchConfig *config);
/* Serve the asynchronous jobs API from `jobs` (not owned). Before start(). */
void crunch_server_set_jobs (CrunchServer *self, CrunchJobs *jobs);
/* Serve HTTPS on the public daemons with `tls` (not owned; it outlives the server). Before
 * start(). */
void crunch_server_set_tls (CrunchServer *self, CrunchTls *tls);
/* Check API keys with `auth` (not owned; it outlives the server). Before start(); without it
 * every request is let in. */
void crunch_server_set_auth (CrunchServer *self, CrunchAuth *auth);
/* Calls `busy` with the time (g_get_monotonic_time()) as each request answered inline (the fast
 * lane: not parked for a job, not an event stream) ends, on a polling thread: it must be cheap.
 * Before start(). */
void crunch_server_set_busy_hook (CrunchServer *self, void (*busy) (gint64 now));
/* Listen on the systemd-passed sockets if any, else on config->listen. */
gboolean crunch_server_start (CrunchServer *self, GArray *listen_fds, GError **error);
/* Live settings that need no new daemon (body cap). */
void crunch_server_configure (CrunchServer *self, const CrunchConfig *config);
/* Stop accepting, refuse new compute requests with 503, and call `drained` on the main context
 * once no compute request is left waiting for its answer. */
void crunch_server_drain (CrunchServer *self, GSourceFunc drained, gpointer data);
guint crunch_server_in_flight (CrunchServer *self);
/* Requests that have ended (answered with any status, or abandoned by the client). */
guint64 crunch_server_requests_served (CrunchServer *self);
/* A CrunchMetricsSource gauges function (data: the server): queue, workers, connections. */
void crunch_server_fill_gauges (CrunchGauges *gauges, gpointer server);
/* Stops the daemons; only after `drained` (MHD aborts on a suspended connection). */
void crunch_server_free (CrunchServer *self);
