/* test-describe.c - the self-describing API against the real crunchd: GET /fn lists the
 * registered functions with their declared arguments and live bounds; GET /openapi.json is a
 * valid OpenAPI document (checked by @redocly/cli, installed by scripts/install-deps), and a
 * request generated from it for every operation on functions succeeds. */
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

static TestServer *
start (void)
{
  g_autofree gchar *ini = g_strdup_printf (
      "[fib]\nmax_n = 50\n[plugins]\ndir = %s\nload = mandelbrot, spin, forward\n[log]\naccess = off\n",
      g_getenv ("CRUNCHD_PLUGINS"));
  return test_server_start (ini, NULL);
}

static JsonNode *
get_json (TestServer *s, const gchar *path, gchar **text)
{
  g_autofree gchar *url = test_server_url (s, path);
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autoptr (GError) error = NULL;
  JsonNode *node;

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==, "application/json");
  node = json_from_string (r->body, &error);
  g_assert_no_error (error);
  if (text != NULL)
    *text = g_strdup (r->body);
  return node;
}

static JsonObject *
find_named (JsonArray *array, const gchar *name)
{
  for (guint i = 0; i < json_array_get_length (array); i++) {
    JsonObject *o = json_array_get_object_element (array, i);
    if (g_str_equal (json_object_get_string_member (o, "name"), name))
      return o;
  }
  return NULL;
}

static void
test_functions (void)
{
  g_autoptr (TestServer) s = start ();
  g_autoptr (JsonNode) root = get_json (s, "/fn", NULL);
  JsonArray *fns = json_object_get_array_member (json_node_get_object (root), "functions");
  JsonObject *fib = find_named (fns, "fib"), *mandel = find_named (fns, "mandelbrot");
  JsonObject *forward = find_named (fns, "forward");
  JsonObject *n, *size;

  g_assert_cmpuint (json_array_get_length (fns), ==, 4);
  /* a batch function says how it batches; the others say nothing of it */
  g_assert_cmpint (json_object_get_int_member (forward, "max_batch"), ==, 32);
  g_assert_cmpfloat (json_object_get_double_member (forward, "max_delay_seconds"), ==, 0.005);
  g_assert_false (json_object_has_member (fib, "max_batch"));
  g_assert_nonnull (fib);
  g_assert_nonnull (mandel);
  g_assert_nonnull (find_named (fns, "spin"));
  g_assert_true (json_object_get_boolean_member (fib, "pure"));
  g_assert_cmpstr (json_object_get_string_member (fib, "url"), ==, "/fn/fib");
  n = find_named (json_object_get_array_member (fib, "args"), "n");
  g_assert_cmpstr (json_object_get_string_member (n, "type"), ==, "int");
  g_assert_cmpint (json_object_get_int_member (n, "max"), ==, 50); /* the live [fib] max_n */
  g_assert_true (json_object_get_boolean_member (n, "required"));
  g_assert_cmpstr (json_object_get_string_member (mandel, "content_type"), ==, "image/png");
  size = find_named (json_object_get_array_member (mandel, "args"), "size");
  g_assert_cmpint (json_object_get_int_member (size, "min"), ==, 1);
  g_assert_cmpint (json_object_get_int_member (size, "max"), ==, 2048);
  g_assert_cmpint (json_object_get_int_member (size, "default"), ==, 256);
  g_assert_false (json_object_get_boolean_member (size, "required"));
}

/* The redocly binary, or NULL when it is not installed. */
static gchar *
redocly (void)
{
  const gchar *env = g_getenv ("CRUNCHD_REDOCLY");
  g_autofree gchar *cached = g_build_filename (g_get_user_cache_dir (), "crunchd", "npm",
                                               "node_modules", ".bin", "redocly", NULL);

  if (env != NULL && *env != '\0')
    return g_strdup (env);
  return g_file_test (cached, G_FILE_TEST_IS_EXECUTABLE) ? g_steal_pointer (&cached) : NULL;
}

static void
test_openapi_valid (void)
{
  g_autoptr (TestServer) s = start ();
  g_autofree gchar *text = NULL, *path = NULL, *out = NULL, *err = NULL, *tool = redocly ();
  g_autoptr (JsonNode) root = get_json (s, "/openapi.json", &text);
  g_autoptr (GError) error = NULL;
  JsonObject *paths = json_object_get_object_member (json_node_get_object (root), "paths");
  gint status = -1;

  g_assert_cmpstr (json_object_get_string_member (json_node_get_object (root), "openapi"), ==,
                   "3.0.3");
  g_assert_true (json_object_has_member (paths, "/fn/mandelbrot"));
  g_assert_true (json_object_has_member (paths, "/jobs/{id}/result"));
  if (tool == NULL) {
    /* CI installs it (scripts/install-deps): there a missing validator is a failure */
    g_assert_null (g_getenv ("CI"));
    g_test_skip ("@redocly/cli is not installed (scripts/install-deps installs it)");
    return;
  }
  path = g_build_filename (s->dir, "openapi.json", NULL);
  g_assert_true (g_file_set_contents (path, text, -1, NULL));
  g_spawn_sync (NULL, (gchar *[]){tool, "lint", "--format=stylish", path, NULL}, NULL,
                G_SPAWN_DEFAULT, NULL, NULL, &out, &err, &status, &error);
  g_assert_no_error (error);
  g_test_message ("%s%s", out, err);
  g_assert_true (g_spawn_check_wait_status (status, NULL));
}

/* A value for a parameter from its schema: the default, else the least allowed. */
static gchar *
value_for (JsonObject *schema)
{
  const gchar *type = json_object_get_string_member (schema, "type");
  JsonNode *dflt = json_object_get_member (schema, "default");

  if (dflt != NULL)
    return json_node_get_value_type (dflt) == G_TYPE_STRING ? g_strdup (json_node_get_string (dflt))
                                                            : json_to_string (dflt, FALSE);
  if (g_str_equal (type, "integer") || g_str_equal (type, "number"))
    return g_strdup_printf ("%" G_GINT64_FORMAT, json_object_get_int_member (schema, "minimum"));
  return g_strnfill (MAX (json_object_get_int_member_with_default (schema, "minLength", 0), 1),
                     'a');
}

/* GET PATH?name=value... built from the operation's parameters. */
static void
generated_get (TestServer *s, const gchar *path, JsonObject *op)
{
  JsonArray *params = json_object_get_array_member (op, "parameters");
  g_autoptr (GString) query = g_string_new (path);
  JsonObject *ok = json_object_get_object_member (
      json_object_get_object_member (json_object_get_object_member (op, "responses"), "200"),
      "content");
  g_autoptr (GList) types = json_object_get_members (ok);
  g_autofree gchar *url = NULL;
  g_autoptr (TestReply) r = NULL;

  for (guint i = 0; params != NULL && i < json_array_get_length (params); i++) {
    JsonObject *p = json_array_get_object_element (params, i);
    g_autofree gchar *v = value_for (json_object_get_object_member (p, "schema"));
    g_autofree gchar *escaped = g_uri_escape_string (v, NULL, FALSE);
    g_string_append_printf (query, "%c%s=%s", i == 0 ? '?' : '&',
                            json_object_get_string_member (p, "name"), escaped);
  }
  url = test_server_url (s, query->str);
  r = test_http ("GET", url, NULL);
  g_test_message ("GET %s -> %ld", query->str, r->status);
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==, types->data);
}

/* POST PATH with a JSON body built from the schema's properties. */
static void
generated_post (TestServer *s, const gchar *path, JsonObject *op)
{
  JsonObject *schema = json_object_get_object_member (
      json_object_get_object_member (
          json_object_get_object_member (
              json_object_get_object_member (json_object_get_object_member (op, "requestBody"),
                                             "content"),
              "application/json"),
          "schema"),
      "properties");
  g_autoptr (GList) names = json_object_get_members (schema);
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autoptr (JsonNode) body = NULL;
  g_autofree gchar *text = NULL, *url = test_server_url (s, path);
  g_autoptr (TestReply) r = NULL;

  json_builder_begin_object (b);
  for (GList *l = names; l != NULL; l = l->next) {
    JsonObject *p = json_object_get_object_member (schema, l->data);
    g_autofree gchar *v = value_for (p);
    const gchar *type = json_object_get_string_member (p, "type");
    json_builder_set_member_name (b, l->data);
    if (g_str_equal (type, "string"))
      json_builder_add_string_value (b, v);
    else if (g_str_equal (type, "integer"))
      json_builder_add_int_value (b, g_ascii_strtoll (v, NULL, 10));
    else
      json_builder_add_double_value (b, g_ascii_strtod (v, NULL));
  }
  json_builder_end_object (b);
  body = json_builder_get_root (b);
  text = json_to_string (body, FALSE);
  r = test_http_body ("POST", url, (const gchar *const[]){"Content-Type: application/json", NULL},
                      text);
  g_test_message ("POST %s %s -> %ld", path, text, r->status);
  g_assert_cmpint (r->status, ==, 200);
}

static void
test_openapi_requests (void)
{
  g_autoptr (TestServer) s = start ();
  g_autoptr (JsonNode) root = get_json (s, "/openapi.json", NULL);
  JsonObject *paths = json_object_get_object_member (json_node_get_object (root), "paths");
  g_autoptr (GList) names = json_object_get_members (paths);
  guint calls = 0;

  for (GList *l = names; l != NULL; l = l->next) {
    JsonObject *item = json_object_get_object_member (paths, l->data);
    if (!g_str_has_prefix (l->data, "/fn/"))
      continue;
    generated_get (s, l->data, json_object_get_object_member (item, "get"));
    generated_post (s, l->data, json_object_get_object_member (item, "post"));
    calls += 2;
  }
  g_assert_cmpuint (calls, ==, 8); /* fib, mandelbrot, spin, forward */
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/describe/functions", test_functions);
  g_test_add_func ("/describe/openapi-valid", test_openapi_valid);
  g_test_add_func ("/describe/openapi-generated-requests", test_openapi_requests);
  return g_test_run ();
}
