/* routes.c - the route table as data, and matching a request against it. */
#include "routes.h"

#include <string.h>

#include "describe.h"

static CrunchReply
fast_hello (const CrunchRequestInfo *request, gpointer context)
{
  return crunch_reply_static (200, "Hello!", CRUNCH_TEXT_PLAIN);
}

/* GET /fn: the registered functions, their arguments and bounds. */
static CrunchReply
fast_functions (const CrunchRequestInfo *request, gpointer context)
{
  return crunch_reply_bytes (200, crunch_describe_functions (), "application/json");
}

/* GET /openapi.json: the API, generated from the same registry. */
static CrunchReply
fast_openapi (const CrunchRequestInfo *request, gpointer context)
{
  return crunch_reply_bytes (200, crunch_describe_openapi (), "application/json");
}

#define GET_HEAD (CRUNCH_METHOD_GET | CRUNCH_METHOD_HEAD)

static const CrunchRoute routes[] = {
    {"/fast", GET_HEAD, CRUNCH_LANE_FAST, fast_hello, NULL},
    {"/fib/", GET_HEAD, CRUNCH_LANE_COMPUTE, NULL, "fib"},
    {"/fn", GET_HEAD, CRUNCH_LANE_FAST, fast_functions, NULL},
    {"/fn/", GET_HEAD | CRUNCH_METHOD_POST, CRUNCH_LANE_COMPUTE, NULL, NULL},
    {"/jobs", CRUNCH_METHOD_POST, CRUNCH_LANE_JOBS, NULL, "submit"},
    {"/jobs/*", GET_HEAD, CRUNCH_LANE_JOBS, NULL, "describe"},
    {"/jobs/*", CRUNCH_METHOD_DELETE, CRUNCH_LANE_JOBS, NULL, "delete"},
    {"/jobs/*/result", GET_HEAD, CRUNCH_LANE_JOBS, NULL, "result"},
    {"/jobs/*/events", CRUNCH_METHOD_GET, CRUNCH_LANE_JOBS, NULL, "events"},
    {"/metrics", GET_HEAD, CRUNCH_LANE_OPS, NULL, "metrics"},
    {"/healthz", GET_HEAD, CRUNCH_LANE_OPS, NULL, "healthz"},
    {"/readyz", GET_HEAD, CRUNCH_LANE_OPS, NULL, "readyz"},
    {"/status", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status"},
    {"/status/", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status-asset"},
    {"/status.json", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status.json"},
    {"/openapi.json", GET_HEAD, CRUNCH_LANE_FAST, fast_openapi, NULL},
};

guint
crunch_routes_count (void)
{
  return G_N_ELEMENTS (routes);
}

const CrunchRoute *
crunch_routes_nth (guint i)
{
  g_return_val_if_fail (i < G_N_ELEMENTS (routes), NULL);
  return &routes[i];
}

/* Labels: the distinct patterns, in table order (rows that share one are adjacent). Numbered
 * once: the metrics look one up per request. */
static const guint *
labels (guint *n_labels)
{
  static guint index[G_N_ELEMENTS (routes)], n;
  static gsize done;

  if (g_once_init_enter (&done)) {
    for (gsize i = 1; i < G_N_ELEMENTS (routes); i++)
      index[i] = index[i - 1] + !g_str_equal (routes[i].pattern, routes[i - 1].pattern);
    n = index[G_N_ELEMENTS (routes) - 1] + 1;
    g_once_init_leave (&done, 1);
  }
  if (n_labels != NULL)
    *n_labels = n;
  return index;
}

guint
crunch_routes_n_labels (void)
{
  guint n;

  labels (&n);
  return n;
}

guint
crunch_routes_label_index (const CrunchRoute *route)
{
  return labels (NULL)[route - routes];
}

const gchar *
crunch_routes_label (guint i)
{
  const guint *index = labels (NULL);

  for (gsize r = 0; r < G_N_ELEMENTS (routes); r++)
    if (index[r] == i)
      return routes[r].pattern;
  g_return_val_if_reached ("none");
}

CrunchHandler
crunch_handler_find (const CrunchNamedHandler *table, const gchar *name)
{
  for (; table->name != NULL; table++)
    if (g_str_equal (table->name, name))
      return table->handler;
  return NULL;
}

CrunchMethod
crunch_method_parse (const gchar *method)
{
  if (g_str_equal (method, "GET"))
    return CRUNCH_METHOD_GET;
  if (g_str_equal (method, "HEAD"))
    return CRUNCH_METHOD_HEAD;
  if (g_str_equal (method, "POST"))
    return CRUNCH_METHOD_POST;
  if (g_str_equal (method, "DELETE"))
    return CRUNCH_METHOD_DELETE;
  return 0;
}

/* The Allow value for a set of CrunchMethod bits, in the order GET, HEAD, POST, DELETE. */
static const gchar *
allow_header (guint methods)
{
  static const gchar *const names[16] = {
      "",
      "GET",
      "HEAD",
      "GET, HEAD",
      "POST",
      "GET, POST",
      "HEAD, POST",
      "GET, HEAD, POST",
      "DELETE",
      "GET, DELETE",
      "HEAD, DELETE",
      "GET, HEAD, DELETE",
      "POST, DELETE",
      "GET, POST, DELETE",
      "HEAD, POST, DELETE",
      "GET, HEAD, POST, DELETE",
  };

  return names[methods & 15];
}

/* `pattern` against `path`: exact, a prefix ending in '/', or with one '*' for a segment. */
static gboolean
pattern_matches (const gchar *pattern, const gchar *path, const gchar **arg, gsize *arg_len)
{
  const gchar *star = strchr (pattern, '*');
  gsize len = star != NULL ? (gsize)(star - pattern) : strlen (pattern);

  if (strncmp (pattern, path, len) != 0)
    return FALSE;
  *arg = path + len;
  if (star != NULL) {
    *arg_len = strcspn (*arg, "/");
    return g_str_equal (*arg + *arg_len, star + 1);
  }
  *arg_len = strlen (*arg);
  return pattern[len - 1] == '/' || *arg_len == 0;
}

CrunchRouteStatus
crunch_routes_match (const gchar *method, const gchar *path, CrunchRouteMatch *match)
{
  CrunchMethod m = crunch_method_parse (method);
  guint allowed = 0;

  memset (match, 0, sizeof *match);
  for (gsize i = 0; i < G_N_ELEMENTS (routes); i++) {
    if (!pattern_matches (routes[i].pattern, path, &match->arg, &match->arg_len))
      continue;
    match->route = &routes[i];
    if ((routes[i].methods & m) != 0)
      return CRUNCH_ROUTE_FOUND;
    allowed |= routes[i].methods;
  }
  if (allowed == 0) {
    memset (match, 0, sizeof *match);
    return CRUNCH_ROUTE_NOT_FOUND;
  }
  match->allow = allow_header (allowed);
  return CRUNCH_ROUTE_METHOD_NOT_ALLOWED;
}

gboolean
crunch_path_unescape (gchar *path, gsize *len)
{
  gchar *out = path;

  for (const gchar *in = path; *in != '\0'; in++) {
    if (*in != '%') {
      *out++ = *in;
      continue;
    }
    gint hi = g_ascii_xdigit_value (in[1]);
    gint lo = hi < 0 ? -1 : g_ascii_xdigit_value (in[2]);
    if (lo < 0 || (hi == 0 && lo == 0))
      return FALSE;
    *out++ = (gchar)(hi * 16 + lo);
    in += 2;
  }
  *out = '\0';
  *len = (gsize)(out - path);
  return TRUE;
}
