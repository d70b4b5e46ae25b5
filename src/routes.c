/* routes.c - the route table as data, and matching a request against it. */
#include "routes.h"

#include <string.h>

static CrunchReply
fast_hello (const gchar *arg)
{
  return (CrunchReply){200, "Hello!", "text/plain; charset=utf-8", NULL};
}

#define GET_HEAD (CRUNCH_METHOD_GET | CRUNCH_METHOD_HEAD)

static const CrunchRoute routes[] = {
    {"/fast", GET_HEAD, CRUNCH_LANE_FAST, fast_hello, NULL},
    {"/fib/", GET_HEAD, CRUNCH_LANE_COMPUTE, NULL, "fib"},
    {"/fn/", GET_HEAD | CRUNCH_METHOD_POST, CRUNCH_LANE_COMPUTE, NULL, NULL},
    {"/jobs", CRUNCH_METHOD_POST, CRUNCH_LANE_JOBS, NULL, NULL},
    {"/jobs/", GET_HEAD | CRUNCH_METHOD_DELETE, CRUNCH_LANE_JOBS, NULL, NULL},
    {"/metrics", GET_HEAD, CRUNCH_LANE_OPS, NULL, "metrics"},
    {"/healthz", GET_HEAD, CRUNCH_LANE_OPS, NULL, "healthz"},
    {"/readyz", GET_HEAD, CRUNCH_LANE_OPS, NULL, "readyz"},
    {"/status", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status"},
    {"/status/", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status-asset"},
    {"/status.json", GET_HEAD, CRUNCH_LANE_OPS, NULL, "status.json"},
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

guint
crunch_routes_index (const CrunchRoute *route)
{
  return (guint)(route - routes);
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

static const gchar *
allow_header (guint methods)
{
  switch (methods) {
  case GET_HEAD:
    return "GET, HEAD";
  case GET_HEAD | CRUNCH_METHOD_POST:
    return "GET, HEAD, POST";
  case CRUNCH_METHOD_POST:
    return "POST";
  case GET_HEAD | CRUNCH_METHOD_DELETE:
    return "GET, HEAD, DELETE";
  default:
    g_return_val_if_reached ("GET, HEAD");
  }
}

static gboolean
pattern_matches (const gchar *pattern, const gchar *path, const gchar **arg)
{
  gsize len = strlen (pattern);

  if (pattern[len - 1] != '/') {
    *arg = "";
    return g_str_equal (pattern, path);
  }
  if (strncmp (pattern, path, len) != 0)
    return FALSE;
  *arg = path + len;
  return TRUE;
}

CrunchRouteStatus
crunch_routes_match (const gchar *method, const gchar *path, CrunchRouteMatch *match)
{
  CrunchMethod m = crunch_method_parse (method);

  memset (match, 0, sizeof *match);
  for (gsize i = 0; i < G_N_ELEMENTS (routes); i++) {
    if (!pattern_matches (routes[i].pattern, path, &match->arg))
      continue;
    match->route = &routes[i];
    if ((routes[i].methods & m) == 0) {
      match->allow = allow_header (routes[i].methods);
      return CRUNCH_ROUTE_METHOD_NOT_ALLOWED;
    }
    return CRUNCH_ROUTE_FOUND;
  }
  return CRUNCH_ROUTE_NOT_FOUND;
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
