/* nats-link.h - what the NATS executor and crunchd-worker share: the connection settings, the
 * subjects and headers of the job protocol (version 1), and the argument encoding.
 *
 * Protocol: a job is a request on PREFIX.job.<function>, sent to queue group crunchd-workers,
 * with the headers below and the arguments as payload (a GVariant in its serialised form, its
 * type in Crunch-Args-Type). The worker answers on the request's reply subject: any number of
 * "running" heartbeats, then one final message whose payload is the result. Every live worker
 * answers PREFIX.presence at once (empty reply); PREFIX.cancel (to every worker) carries a
 * request id whose work is no longer wanted. */
#pragma once

#include <glib.h>
#include <nats/nats.h>

#include "config.h"

#define CRUNCH_NATS_QUEUE_GROUP "crunchd-workers"

/* request headers */
#define CRUNCH_HDR_REQUEST_ID "Crunch-Request-Id"
#define CRUNCH_HDR_ATTEMPT "Crunch-Attempt"
#define CRUNCH_HDR_DEADLINE "Crunch-Deadline"   /* wall clock, us since 1970; 0: fn's own */
#define CRUNCH_HDR_HEARTBEAT "Crunch-Heartbeat" /* microseconds between "running" messages */
#define CRUNCH_HDR_ARGS_TYPE "Crunch-Args-Type"
/* reply headers */
#define CRUNCH_HDR_STATUS "Crunch-Status" /* see CrunchWireStatus */
#define CRUNCH_HDR_ERROR "Crunch-Error"
#define CRUNCH_HDR_ELAPSED "Crunch-Elapsed" /* microseconds the function ran */
#define CRUNCH_HDR_WORKER "Crunch-Worker"
/* On a "running" message: how far the job got (a decimal fraction in [0, 1]); the payload is the
 * progress message (UTF-8, maybe empty). Front ends that predate it see a heartbeat. */
#define CRUNCH_HDR_PROGRESS "Crunch-Progress"

typedef enum {
  CRUNCH_WIRE_OK,          /* payload = result */
  CRUNCH_WIRE_FAILED,      /* the function failed, or the request was malformed: Crunch-Error */
  CRUNCH_WIRE_TIMED_OUT,   /* the deadline passed on the worker */
  CRUNCH_WIRE_CANCELLED,   /* a cancel message stopped it */
  CRUNCH_WIRE_SHUTDOWN,    /* the worker is stopping: try another one */
  CRUNCH_WIRE_RUNNING,     /* heartbeat: still working */
  CRUNCH_WIRE_CRASHED,     /* its worker process crashed (502 at the front end): Crunch-Error */
  CRUNCH_WIRE_UNAVAILABLE, /* the function is crash-looping on that worker (503): Crunch-Error */
  CRUNCH_WIRE_UNKNOWN,
} CrunchWireStatus;

const gchar *crunch_wire_status_name (CrunchWireStatus status);
CrunchWireStatus crunch_wire_status_parse (const gchar *name);

/* Callbacks from nats.c's own threads; any may be NULL. */
typedef struct {
  natsConnectionHandler connected; /* first connection, when it was not immediate */
  natsConnectionHandler disconnected;
  natsConnectionHandler reconnected;
  natsConnectionHandler closed; /* for good: reconnecting gave up, or we closed it */
  gpointer data;
} CrunchNatsHandlers;

/* Connects to [nats] servers. If no server answers yet, returns the connection anyway with
 * *connected = FALSE: nats.c keeps trying in the background and calls handlers->connected.
 * Fails only on settings nats.c refuses. `global_delivery`: dispatch messages of all
 * subscriptions on nats.c's shared delivery thread instead of one thread per subscription. */
natsConnection *crunch_nats_connect (const CrunchConfig *config, const gchar *name,
                                     gboolean global_delivery, const CrunchNatsHandlers *handlers,
                                     gboolean *connected, GError **error);
/* The URL of the server the connection uses now, or "(none)"; a new string. */
gchar *crunch_nats_connected_url (natsConnection *nc);
/* A GError from a nats.c status, with its last error text. */
void crunch_nats_set_error (GError **error, natsStatus status, const gchar *what);

gchar *crunch_nats_subject (const gchar *prefix, const gchar *suffix);

/* Header helpers: a missing or malformed numeric header reads as `fallback`. */
gint64 crunch_nats_header_int (natsMsg *msg, const gchar *name, gint64 fallback);
const gchar *crunch_nats_header (natsMsg *msg, const gchar *name);
void crunch_nats_header_set_int (natsMsg *msg, const gchar *name, gint64 value);

/* Arguments on the wire. Decoding never trusts the payload: a bad type string is an error and a
 * malformed body yields a valid default value of that type (GVariant's untrusted-data rules). */
GBytes *crunch_nats_args_encode (GVariant *args, const gchar **type);
GVariant *crunch_nats_args_decode (const gchar *type, gconstpointer data, gsize size,
                                   GError **error);
