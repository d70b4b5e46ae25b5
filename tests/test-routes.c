/* test-routes.c - route matching and fib argument parsing. */
#include "functions.h"
#include "routes.h"

#include <string.h>

static void
test_match (void)
{
  CrunchRouteMatch m;

  g_assert_cmpint (crunch_routes_match ("GET", "/fast", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpint (m.route->lane, ==, CRUNCH_LANE_FAST);
  g_assert_cmpint (crunch_routes_match ("HEAD", "/fast", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpint (crunch_routes_match ("GET", "/fib/42", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpint (m.route->lane, ==, CRUNCH_LANE_COMPUTE);
  g_assert_cmpstr (m.route->name, ==, "fib");
  g_assert_cmpmem (m.arg, m.arg_len, "42", 2);
  g_assert_cmpint (crunch_routes_match ("GET", "/fib/", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpuint (m.arg_len, ==, 0);
  g_assert_cmpint (crunch_routes_match ("GET", "/fib", &m), ==, CRUNCH_ROUTE_NOT_FOUND);
  g_assert_cmpint (crunch_routes_match ("GET", "/", &m), ==, CRUNCH_ROUTE_NOT_FOUND);
  g_assert_cmpint (crunch_routes_match ("GET", "/fast/", &m), ==, CRUNCH_ROUTE_NOT_FOUND);
  g_assert_cmpint (crunch_routes_match ("GET", "", &m), ==, CRUNCH_ROUTE_NOT_FOUND);
  g_assert_cmpint (crunch_routes_match ("POST", "/fast", &m), ==, CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  g_assert_cmpstr (m.allow, ==, "GET, HEAD");
  g_assert_cmpint (crunch_routes_match ("get", "/fast", &m), ==, CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  g_assert_cmpint (crunch_routes_match ("PUT", "/fib/1", &m), ==, CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  /* one pattern, a row per verb; '*' is one segment */
  g_assert_cmpint (crunch_routes_match ("GET", "/jobs/abc", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpstr (m.route->name, ==, "describe");
  g_assert_cmpmem (m.arg, m.arg_len, "abc", 3);
  g_assert_cmpint (crunch_routes_match ("DELETE", "/jobs/abc", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpstr (m.route->name, ==, "delete");
  g_assert_cmpint (crunch_routes_match ("GET", "/jobs/abc/result", &m), ==, CRUNCH_ROUTE_FOUND);
  g_assert_cmpstr (m.route->name, ==, "result");
  g_assert_cmpmem (m.arg, m.arg_len, "abc", 3);
  g_assert_cmpint (crunch_routes_match ("DELETE", "/jobs/abc/result", &m), ==,
                   CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  g_assert_cmpstr (m.allow, ==, "GET, HEAD");
  g_assert_cmpint (crunch_routes_match ("PUT", "/jobs/abc", &m), ==,
                   CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  g_assert_cmpstr (m.allow, ==, "GET, HEAD, DELETE");
  g_assert_cmpint (crunch_routes_match ("GET", "/jobs/abc/other", &m), ==, CRUNCH_ROUTE_NOT_FOUND);
  g_assert_cmpint (crunch_routes_match ("GET", "/jobs", &m), ==, CRUNCH_ROUTE_METHOD_NOT_ALLOWED);
  g_assert_cmpstr (m.allow, ==, "POST");
  /* rows that share a pattern share a metrics label */
  g_assert_cmpuint (crunch_routes_n_labels (), ==, crunch_routes_count () - 1);
}

static void
test_fib_parse (void)
{
  CrunchConfig config = {.fib.max_n = 50, .fib.timeout = 1};
  const CrunchFunction *fib;
  const struct {
    const gchar *text;
    gint expect; /* -1: invalid */
  } cases[] = {
      {"0", 0},    {"1", 1},    {"50", 50},  {"007", 7},   {"51", -1},
      {"", -1},    {"-1", -1},  {"+1", -1},  {" 1", -1},   {"1 ", -1},
      {"1x", -1},  {"abc", -1}, {"1.5", -1}, {"0x10", -1}, {"99999999999999999999999", -1},
      {"1/2", -1},
  };

  config.plugins_dir = (gchar *)"/nonexistent";
  g_assert_true (crunch_functions_init (&config, NULL));
  fib = crunch_functions_lookup ("fib");
  g_assert_nonnull (fib);
  g_assert_null (crunch_functions_lookup ("nope"));
  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (GError) error = NULL;
    GVariant *v = fib->parse (fib, cases[i].text, &error);
    if (cases[i].expect < 0) {
      g_assert_null (v);
      g_assert_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT);
      g_assert_true (g_str_has_prefix (error->message, "fib: "));
    } else {
      g_assert_no_error (error);
      gint64 n;
      g_variant_get (g_variant_ref_sink (v), "(x)", &n);
      g_assert_cmpint (n, ==, cases[i].expect);
      g_variant_unref (v);
    }
  }
}

static void
test_path_unescape (void)
{
  const struct {
    const gchar *in, *out; /* out NULL: rejected */
  } cases[] = {
      {"/fast", "/fast"},
      {"/f%61st", "/fast"},
      {"/fib/%31%30", "/fib/10"},
      {"%2f%2F", "//"},
      {"%7e%C3%A9", "~\xc3\xa9"},
      {"", ""},
      {"%", NULL},
      {"%4", NULL},
      {"%zz", NULL},
      {"%g0", NULL},
      {"/fib/1%00", NULL},
      {"%0", NULL},
      {"a%%41", NULL},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autofree gchar *path = g_strdup (cases[i].in);
    gsize len = 12345;
    gboolean ok = crunch_path_unescape (path, &len);
    g_test_message ("'%s'", cases[i].in);
    g_assert_cmpint (ok, ==, cases[i].out != NULL);
    if (ok) {
      g_assert_cmpstr (path, ==, cases[i].out);
      g_assert_cmpuint (len, ==, strlen (cases[i].out));
    }
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/routes/match", test_match);
  g_test_add_func ("/routes/fib-parse", test_fib_parse);
  g_test_add_func ("/routes/path-unescape", test_path_unescape);
  return g_test_run ();
}
