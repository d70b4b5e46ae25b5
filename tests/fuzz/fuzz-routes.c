/* fuzz-routes.c - libFuzzer target: what crunchd does with a request's method and path.
 * Percent-decoding, route matching, then the compute function's argument parser.
 * Input: METHOD '\n' PATH, or just PATH (with GET); a NUL ends the text, as it does in MHD. */
#include <string.h>

#include "functions.h"
#include "routes.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

static void
check_parse (const CrunchRoute *route, const gchar *arg)
{
  const CrunchFunction *fn = crunch_functions_lookup (route->name ? route->name : arg);
  g_autoptr (GError) error = NULL;
  GVariant *args;

  if (route->name == NULL) /* /fn/<name>: its arguments are not in the path */
    return;
  g_assert (fn != NULL);
  args = fn->parse (fn, arg, &error);
  g_assert ((args == NULL) == (error != NULL));
  if (args != NULL)
    g_variant_unref (g_variant_ref_sink (args));
  else
    g_assert (
        g_error_matches (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT));
}

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  static gboolean initialized;
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  gchar *newline = strchr (text, '\n');
  const gchar *method = newline != NULL ? text : "GET";
  gchar *path = newline != NULL ? newline + 1 : text;
  CrunchRouteMatch match;
  g_autofree gchar *arg = NULL;
  gsize len;

  if (!initialized) {
    g_autoptr (CrunchConfig) config = crunch_config_new_default ();
    config->fib.max_n = 93; /* the largest allowed: the widest range for the parser */
    g_assert (crunch_functions_init (config, NULL));
    initialized = TRUE;
  }
  if (newline != NULL)
    *newline = '\0';
  if (!crunch_path_unescape (path, &len))
    return 0;
  g_assert (len == strlen (path));
  switch (crunch_routes_match (method, path, &match)) {
  case CRUNCH_ROUTE_FOUND:
    g_assert (match.route != NULL && match.arg != NULL);
    arg = g_strndup (match.arg, match.arg_len);
    switch (match.route->lane) {
    case CRUNCH_LANE_COMPUTE:
      check_parse (match.route, arg);
      break;
    case CRUNCH_LANE_FAST: {
      CrunchRequestInfo info = {method, arg, NULL, 0, NULL};
      CrunchReply reply = match.route->handler (&info, NULL);
      g_assert (reply.text != NULL || reply.bytes != NULL);
      crunch_reply_clear (&reply);
      break;
    }
    case CRUNCH_LANE_OPS:  /* served by status.c (not linked here): only the name is known */
    case CRUNCH_LANE_JOBS: /* likewise jobs.c */
      g_assert (match.route->name != NULL);
      break;
    }
    break;
  case CRUNCH_ROUTE_METHOD_NOT_ALLOWED:
    g_assert (match.allow != NULL);
    break;
  case CRUNCH_ROUTE_NOT_FOUND:
    break;
  }
  return 0;
}
