/* routes.h - the route table: which path goes to which lane and handler. */
#pragma once

#include <glib.h>

#include "reply.h"

typedef enum {
  CRUNCH_METHOD_GET = 1 << 0,
  CRUNCH_METHOD_HEAD = 1 << 1,
  CRUNCH_METHOD_POST = 1 << 2,
  CRUNCH_METHOD_DELETE = 1 << 3,
} CrunchMethod;

typedef enum {
  CRUNCH_LANE_FAST,    /* answered inline on the MHD thread */
  CRUNCH_LANE_COMPUTE, /* a job for the executor; the connection is suspended */
  CRUNCH_LANE_JOBS,    /* the asynchronous jobs API (jobs.c), answered inline */
  CRUNCH_LANE_OPS,     /* like FAST, but on the [metrics] listen address when one is set */
} CrunchLane;

/* A reply that another thread gives later (the jobs lane waits for its store this way). */
typedef struct CrunchLater CrunchLater;
struct CrunchLater {
  /* Once, from any thread: takes the reply and resumes the connection; the last touch. */
  void (*answer) (CrunchLater *later, CrunchReply *reply);
};

/* What a handler may read of its request. */
typedef struct {
  const gchar *method;
  const gchar *arg;    /* the path's variable part: after a prefix pattern, or the '*' segment */
  const gchar *client; /* the fairness key (jobs lane) */
  guint priority;      /* POST /jobs: the class of the job (Crunch-Priority) */
  const gchar *idempotency_key; /* the Idempotency-Key header (jobs lane), or NULL */
  const gchar *last_event_id;   /* the Last-Event-ID header (jobs lane), or NULL */
  /* Jobs lane: parks the connection (before the work is handed over) and returns the handle
   * whose answer() completes the request; the handler then returns crunch_reply_later(). NULL
   * when the server is stopping: the handler answers at once (503). */
  CrunchLater *(*defer) (gpointer request);
  gpointer request;
  /* Jobs lane, with [auth] keys_file: a job belongs to the `client` that created it, and any
   * other caller is told 404. FALSE: jobs are anyone's who knows the id. */
  gboolean owned;
  /* Jobs lane: whether the caller may call `function`; FALSE gives the refusal (403) to send.
   * NULL: anyone may. */
  gboolean (*may_call) (gpointer request, const gchar *function, CrunchReply *refusal);
  /* POST /jobs: its body, decoded by the server (decode.h: on a decoder thread when large) */
  const struct CrunchDecode *decoded;
} CrunchRequestInfo;

/* `context` is what the server holds for the route's lane: the jobs store for the jobs lane,
 * NULL for the others. */
typedef CrunchReply (*CrunchHandler) (const CrunchRequestInfo *request, gpointer context);

/* The handlers a lane's owner serves by name (the route table names them). */
typedef struct {
  const gchar *name;
  CrunchHandler handler;
} CrunchNamedHandler;
/* The handler of that name in a table ending with {NULL, NULL}, or NULL. */
CrunchHandler crunch_handler_find (const CrunchNamedHandler *table, const gchar *name);

/* A row of the table. Rows may share a pattern with other methods; the first row whose pattern
 * and method match answers, and a pattern matched only with other methods is a 405. */
typedef struct {
  /* exact path; a prefix when it ends in '/' (the rest is the argument); a '*' stands for one
   * path segment (the argument), e.g. "/jobs/" "*" "/result" */
  const gchar *pattern;
  guint methods; /* CrunchMethod bits */
  CrunchLane lane;
  CrunchHandler handler; /* fast lane */
  /* the lane's owner resolves it: compute lane, the function (NULL: the argument is its name,
   * /fn/<name>); ops lane, the endpoint (crunch_status_handler()); jobs lane, the verb
   * (crunch_jobs_handler()) */
  const gchar *name;
} CrunchRoute;

typedef enum {
  CRUNCH_ROUTE_FOUND,
  CRUNCH_ROUTE_NOT_FOUND,          /* 404 */
  CRUNCH_ROUTE_METHOD_NOT_ALLOWED, /* 405, see allow */
} CrunchRouteStatus;

typedef struct {
  const CrunchRoute *route;
  const gchar *arg; /* points into the path: the variable part, `arg_len` bytes */
  gsize arg_len;
  const gchar *allow; /* for 405: the Allow header value */
} CrunchRouteMatch;

CrunchMethod crunch_method_parse (const gchar *method);
/* The table itself: rows numbered 0 .. count-1. */
guint crunch_routes_count (void);
const CrunchRoute *crunch_routes_nth (guint i);
CrunchRouteStatus crunch_routes_match (const gchar *method, const gchar *path,
                                       CrunchRouteMatch *match);
/* Route labels for metrics: one per distinct pattern, numbered 0 .. n-1 in table order. */
guint crunch_routes_n_labels (void);
const gchar *crunch_routes_label (guint i);
guint crunch_routes_label_index (const CrunchRoute *route);

/* Decodes %XX escapes in `path` in place and stores the new length in `len`. Returns FALSE for
 * a '%' not followed by two hex digits and for an encoded NUL (%00), which a C string cannot
 * carry: such a path gets 400 instead of being matched in a truncated or half-decoded form. */
gboolean crunch_path_unescape (gchar *path, gsize *len);
