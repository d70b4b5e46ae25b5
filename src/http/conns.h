/* conns.h - the connection guard: a deadline for every request to arrive whole, and room for
 * newcomers when the connection table is nearly full.
 *
 * libmicrohttpd's connection_timeout counts idle time, so a client that trickles one byte a
 * second holds its connection forever, and a table full of silent connections locks everyone
 * out until they time out. One guard per MHD daemon tracks the connections that have not yet
 * sent a complete request (header and body): a new connection, and a kept-alive one between two
 * requests. Such a connection is closed when
 * - it has not completed a request [server] request_timeout seconds after it opened or after
 *   its previous request ended (as HAProxy's `timeout http-request`), or
 * - the table is nearly full and a new connection arrives: the oldest waiting one makes room.
 * A connection whose request is being computed (parked) is never one of them. When no connection
 * waits, the one that has been answering longest (at least a second: a client reading pipelined
 * answers slowly) makes room instead. Closing is shutdown(2) on its socket: MHD then sees the end
 * of the stream and closes the connection itself, in its own thread. */
#pragma once

#include <glib.h>

#include "parked.h"

typedef struct CrunchConns CrunchConns;
typedef struct CrunchConn CrunchConn;

typedef struct {
  guint open;        /* connections now open */
  guint64 timed_out; /* closed by request_timeout */
  guint64 made_room; /* closed to make room for a newer connection */
} CrunchConnsStats;

/* `max_connections`: the daemon's MHD_OPTION_CONNECTION_LIMIT. `name` tags its log lines. Its
 * deadline timer runs on `watcher`'s thread, which must outlive the guard. */
CrunchConns *crunch_conns_new (guint max_connections, const gchar *name, CrunchParked *watcher);
/* Seconds a connection has to complete a request; 0 = no deadline. Any thread. */
void crunch_conns_set_timeout (CrunchConns *self, guint seconds);

/* The daemon's polling thread, from MHD_OPTION_NOTIFY_CONNECTION and the access handler. */
CrunchConn *crunch_conns_opened (CrunchConns *self, gint fd);
void crunch_conns_request_complete (CrunchConn *conn); /* final access-handler call */
/* Its request is computing (suspended: never closed), or it is answering again (resumed). */
void crunch_conns_request_parked (CrunchConn *conn, gboolean parked);
void crunch_conns_request_ended (CrunchConn *conn); /* answered; the connection stays open */
void crunch_conns_closed (CrunchConn *conn);        /* before MHD closes the socket */
/* With [tls] client_ca: the connection's client certificate has been verified, once for all its
 * requests (a TLS session keeps its certificate: libmicrohttpd does not renegotiate). Polling
 * thread. */
gboolean crunch_conns_client_verified (const CrunchConn *conn);
void crunch_conns_set_client_verified (CrunchConn *conn);

void crunch_conns_get_stats (CrunchConns *self, CrunchConnsStats *stats);
/* After the daemon has stopped: every connection is closed. */
void crunch_conns_free (CrunchConns *self);
