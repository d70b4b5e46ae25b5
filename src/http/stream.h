/* stream.h - a response body written over time: Server-Sent Events (text/event-stream).
 *
 * A handler makes a stream, subscribes it to whatever has news and returns it in its reply
 * (crunch_reply_stream()); producers on any thread add events; server.c hands the connection to
 * the stream, which parks it (MHD_suspend_connection() from the content callback) while there is
 * nothing to send and resumes it when there is. The stream also writes a comment line as a
 * heartbeat on every [jobs] stream_heartbeat, and notices a client that hangs up while it is
 * parked (the parked-socket watcher of parked.c). A stream that ends for any reason other than
 * its producer's crunch_stream_end() tells the producer once, through its `gone` callback. */
#pragma once

#include <glib.h>

#include "parked.h"

typedef struct CrunchStream CrunchStream;

/* The client left or the connection ended before crunch_stream_end(): the producer drops the
 * stream. Called at most once, on any thread, without the stream's lock. */
typedef void (*CrunchStreamGone) (gpointer data);

/* At most `max` streams open at once (0: none), `per_client` of them one client's (0: no
 * share); reload may change them. */
void crunch_streams_configure (guint max, guint per_client, gdouble heartbeat_s);
/* Streams open now (for /metrics and /status). */
guint crunch_streams_open (void);
/* Shutdown: ends every open stream (their clients reconnect to the next process). */
void crunch_streams_end_all (void);

/* A new stream for `client` (the fairness key), or NULL when [jobs] max_streams are open (answer
 * 503) or, with *client_full, when this client has its share open (answer 429). */
CrunchStream *crunch_stream_new (const gchar *client, gboolean *client_full);
CrunchStream *crunch_stream_ref (CrunchStream *self);
void crunch_stream_unref (CrunchStream *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchStream, crunch_stream_unref)

/* Set once, before the stream is handed to any producer thread. `destroy` frees `data` when the
 * stream is freed. */
void crunch_stream_set_gone (CrunchStream *self, CrunchStreamGone gone, gpointer data,
                             GDestroyNotify destroy);
/* One event: "id: ID\nevent: EVENT\ndata: DATA\n\n" (`data` is one line of JSON). Any thread,
 * the producer's locks held. FALSE once the stream is closed (nothing is sent); the producer
 * keeps it until `gone` says so (it always does, from another thread). */
gboolean crunch_stream_event (CrunchStream *self, const gchar *id, const gchar *event,
                              const gchar *data);
/* No more events: the body ends once the client has them. Any thread. */
void crunch_stream_end (CrunchStream *self);

/* server.c: the connection the stream is the body of (before its response is queued), and its
 * socket (-1: none) to watch for a hang-up. */
void crunch_stream_attach (CrunchStream *self, gpointer connection, gint fd, CrunchParked *watcher);
/* server.c: MHD's content reader callback and its free callback (cls: the stream, whose
 * reference the response holds). */
gssize crunch_stream_read (gpointer cls, guint64 pos, gchar *buf, gsize max);
/* server.c: the bytes of the body MHD has taken so far (the access log's size). */
guint64 crunch_stream_sent (CrunchStream *self);
/* server.c: the request ended (MHD_OPTION_NOTIFY_COMPLETED), while its socket is still open. */
void crunch_stream_detach (CrunchStream *self);
