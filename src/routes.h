/* routes.h - the route table: which path goes to which lane and handler. */
#pragma once

#include <glib.h>

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

/* A fast-lane answer: a static body, sent without copying, or (bytes != NULL) a body built for
 * this request, which the reply owns. */
typedef struct {
  guint status;
  const gchar *body;
  const gchar *content_type;
  GBytes *bytes;
} CrunchReply;

typedef CrunchReply (*CrunchFastHandler) (const gchar *arg);

typedef struct {
  const gchar *pattern; /* exact path, or a prefix when it ends in '/' (the rest is the argument) */
  guint methods;        /* CrunchMethod bits */
  CrunchLane lane;
  CrunchFastHandler handler; /* fast lane */
  /* compute lane: name in the function registry; NULL: the name is the argument (/fn/<name>);
   * ops lane: name of the endpoint, see crunch_status_handler() */
  const gchar *function;
} CrunchRoute;

typedef enum {
  CRUNCH_ROUTE_FOUND,
  CRUNCH_ROUTE_NOT_FOUND,          /* 404 */
  CRUNCH_ROUTE_METHOD_NOT_ALLOWED, /* 405, see allow */
} CrunchRouteStatus;

typedef struct {
  const CrunchRoute *route;
  const gchar *arg;   /* points into the path: what follows a prefix pattern */
  const gchar *allow; /* for 405: the Allow header value */
} CrunchRouteMatch;

CrunchMethod crunch_method_parse (const gchar *method);
/* The table itself, for per-route metrics: routes are numbered 0 .. count-1. */
guint crunch_routes_count (void);
const CrunchRoute *crunch_routes_nth (guint i);
guint crunch_routes_index (const CrunchRoute *route);
CrunchRouteStatus crunch_routes_match (const gchar *method, const gchar *path,
                                       CrunchRouteMatch *match);

/* Decodes %XX escapes in `path` in place and stores the new length in `len`. Returns FALSE for
 * a '%' not followed by two hex digits and for an encoded NUL (%00), which a C string cannot
 * carry: such a path gets 400 instead of being matched in a truncated or half-decoded form. */
gboolean crunch_path_unescape (gchar *path, gsize *len);
