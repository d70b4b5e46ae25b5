/* args.c - validation of declared arguments; see args.h. */
#include "args.h"

#include <math.h>
#include <string.h>

#include "json.h"

static gboolean invalid (GError **error, const gchar *format, ...) G_GNUC_PRINTF (2, 3);

static gboolean
invalid (GError **error, const gchar *format, ...)
{
  va_list ap;

  va_start (ap, format);
  g_propagate_error (error,
                     g_error_new_valist (CRUNCH_FUNCTION_ERROR,
                                         CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT, format, ap));
  va_end (ap);
  return FALSE;
}

gchar *
crunch_arg_describe (const CrunchdArg *arg, gdouble max)
{
  switch (arg->type) {
  case CRUNCHD_ARG_INT:
    return g_strdup_printf ("an integer from %.17g to %.17g", arg->min, max);
  case CRUNCHD_ARG_FLOAT:
    return g_strdup_printf ("a number from %.17g to %.17g", arg->min, max);
  case CRUNCHD_ARG_STRING:
    return g_strdup_printf ("a UTF-8 string of %.17g to %.17g characters", arg->min, max);
  case CRUNCHD_ARG_BYTES:
    return g_strdup_printf ("base64 of %.17g to %.17g bytes", arg->min, max);
  }
  g_return_val_if_reached (g_strdup ("?"));
}

/* "fn: argument 'a' must be <rule>, got <what>" */
static GVariant *
reject (GError **error, const gchar *fn_name, const CrunchdArg *arg, gdouble max, const gchar *got)
{
  g_autofree gchar *rule = crunch_arg_describe (arg, max);

  invalid (error, "%s: argument '%s' must be %s, got %s", fn_name, arg->name, rule, got);
  return NULL;
}

gchar *
crunch_args_echo (const gchar *text)
{
  g_autofree gchar *valid = g_utf8_make_valid (text, -1);

  if (g_utf8_strlen (valid, -1) <= 64)
    return g_steal_pointer (&valid);
  g_autofree gchar *cut = g_utf8_substring (valid, 0, 64);
  return g_strconcat (cut, "...", NULL);
}

static gchar *
quoted (const gchar *text)
{
  g_autofree gchar *echo = crunch_args_echo (text);

  return g_strdup_printf ("'%s'", echo);
}

/* Strict base64: the standard alphabet, padded to a multiple of 4. */
static gboolean
valid_base64 (const gchar *text)
{
  gsize len = strlen (text);
  gsize body = strspn (text, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/");
  gsize pad = strspn (text + body, "=");

  return len % 4 == 0 && body + pad == len && pad <= 2;
}

static gboolean
in_bounds (gdouble value, const CrunchdArg *arg, gdouble max)
{
  return value >= arg->min && value <= max;
}

GVariant *
crunch_arg_from_text (const gchar *fn_name, const CrunchdArg *arg, gdouble max, const gchar *text,
                      GError **error)
{
  g_autofree gchar *got = quoted (text);

  switch (arg->type) {
  case CRUNCHD_ARG_INT: {
    gint64 value;
    if (!g_ascii_string_to_signed (text, 10, G_MININT64, G_MAXINT64, &value, NULL) ||
        !in_bounds ((gdouble)value, arg, max))
      return reject (error, fn_name, arg, max, got);
    return g_variant_new_int64 (value);
  }
  case CRUNCHD_ARG_FLOAT: {
    gchar *end = NULL;
    gdouble value = *text != '\0' && !g_ascii_isspace (*text) ? g_ascii_strtod (text, &end) : NAN;
    if (end == NULL || *end != '\0' || !isfinite (value) || !in_bounds (value, arg, max))
      return reject (error, fn_name, arg, max, got);
    return g_variant_new_double (value);
  }
  case CRUNCHD_ARG_STRING:
    if (!g_utf8_validate (text, -1, NULL))
      return reject (error, fn_name, arg, max, "invalid UTF-8");
    if (!in_bounds ((gdouble)g_utf8_strlen (text, -1), arg, max)) {
      g_autofree gchar *len = g_strdup_printf ("%ld characters", g_utf8_strlen (text, -1));
      return reject (error, fn_name, arg, max, len);
    }
    return g_variant_new_string (text);
  case CRUNCHD_ARG_BYTES: {
    gsize len = 0;
    g_autofree guchar *data = NULL;
    if (!valid_base64 (text))
      return reject (error, fn_name, arg, max, "invalid base64");
    data = g_base64_decode (text, &len);
    if (!in_bounds ((gdouble)len, arg, max)) {
      g_autofree gchar *what = g_strdup_printf ("%zu bytes", len);
      return reject (error, fn_name, arg, max, what);
    }
    return g_variant_new_fixed_array (G_VARIANT_TYPE_BYTE, data, len, 1);
  }
  }
  g_return_val_if_reached (NULL);
}

static const gchar *
json_kind (JsonNode *node)
{
  if (JSON_NODE_HOLDS_OBJECT (node))
    return "an object";
  if (JSON_NODE_HOLDS_ARRAY (node))
    return "an array";
  if (JSON_NODE_HOLDS_NULL (node))
    return "null";
  switch (json_node_get_value_type (node)) {
  case G_TYPE_INT64:
    return "an integer";
  case G_TYPE_DOUBLE:
    return "a number";
  case G_TYPE_BOOLEAN:
    return "a boolean";
  default:
    return "a string";
  }
}

static GVariant *
arg_from_json (const gchar *fn_name, const CrunchdArg *arg, gdouble max, JsonNode *node,
               GError **error)
{
  GType type = JSON_NODE_HOLDS_VALUE (node) ? json_node_get_value_type (node) : G_TYPE_INVALID;
  g_autofree gchar *got = NULL;

  switch (arg->type) {
  case CRUNCHD_ARG_INT:
    if (type != G_TYPE_INT64)
      return reject (error, fn_name, arg, max, json_kind (node));
    if (!in_bounds ((gdouble)json_node_get_int (node), arg, max)) {
      got = g_strdup_printf ("%" G_GINT64_FORMAT, json_node_get_int (node));
      return reject (error, fn_name, arg, max, got);
    }
    return g_variant_new_int64 (json_node_get_int (node));
  case CRUNCHD_ARG_FLOAT: {
    gdouble value;
    if (type != G_TYPE_INT64 && type != G_TYPE_DOUBLE)
      return reject (error, fn_name, arg, max, json_kind (node));
    value = type == G_TYPE_INT64 ? (gdouble)json_node_get_int (node) : json_node_get_double (node);
    if (!in_bounds (value, arg, max)) {
      got = g_strdup_printf ("%.17g", value);
      return reject (error, fn_name, arg, max, got);
    }
    return g_variant_new_double (value);
  }
  case CRUNCHD_ARG_STRING:
  case CRUNCHD_ARG_BYTES:
    if (type != G_TYPE_STRING)
      return reject (error, fn_name, arg, max, json_kind (node));
    return crunch_arg_from_text (fn_name, arg, max, json_node_get_string (node), error);
  }
  g_return_val_if_reached (NULL);
}

/* Unknown names are errors, not ignored: a typo must not silently run with a default. */
static gboolean
check_names (const CrunchFunction *fn, GList *names, GError **error)
{
  for (GList *l = names; l != NULL; l = l->next) {
    gboolean known = FALSE;
    for (guint i = 0; i < fn->decl->n_args && !known; i++)
      known = g_str_equal (fn->decl->args[i].name, l->data);
    if (!known) {
      g_autoptr (GString) expected = g_string_new (NULL);
      for (guint i = 0; i < fn->decl->n_args; i++)
        g_string_append_printf (expected, "%s%s", i ? ", " : "", fn->decl->args[i].name);
      g_autofree gchar *name = crunch_args_echo (l->data);
      return invalid (error, "%s: unknown argument '%s' (arguments: %s)", fn->name, name,
                      fn->decl->n_args ? expected->str : "none");
    }
  }
  return TRUE;
}

/* The tuple in declared order: the given value, else the default, else an error. `lookup` finds
 * a given value as text (query) or JSON node (body). */
typedef GVariant *(*ArgLookup) (const CrunchFunction *fn, guint i, gpointer source,
                                gboolean *present, GError **error);

static GVariant *
build (const CrunchFunction *fn, ArgLookup lookup, gpointer source, GError **error)
{
  guint n = fn->decl->n_args;
  g_autoptr (GPtrArray) children = g_ptr_array_new_with_free_func ((GDestroyNotify)g_variant_unref);

  for (guint i = 0; i < n; i++) {
    const CrunchdArg *arg = &fn->decl->args[i];
    gboolean present = FALSE;
    GVariant *value = lookup (fn, i, source, &present, error);
    if (present && value == NULL)
      return NULL;
    if (!present && fn->defaults[i] == NULL) {
      g_autofree gchar *rule = crunch_arg_describe (arg, crunch_function_arg_max (fn, i));
      invalid (error, "%s: missing argument '%s': must be %s", fn->name, arg->name, rule);
      return NULL;
    }
    g_ptr_array_add (children, g_variant_ref_sink (present ? value : fn->defaults[i]));
  }
  return g_variant_new_tuple ((GVariant **)children->pdata, n);
}

static GVariant *
lookup_text (const CrunchFunction *fn, guint i, gpointer source, gboolean *present, GError **error)
{
  const CrunchdArg *arg = &fn->decl->args[i];
  const gchar *text = g_hash_table_lookup (source, arg->name);

  *present = g_hash_table_contains (source, arg->name);
  if (!*present)
    return NULL;
  return crunch_arg_from_text (fn->name, arg, crunch_function_arg_max (fn, i),
                               text != NULL ? text : "", error);
}

GVariant *
crunch_args_from_query (const CrunchFunction *fn, GHashTable *values, GError **error)
{
  g_autoptr (GList) names = g_hash_table_get_keys (values);

  if (!check_names (fn, names, error))
    return NULL;
  return build (fn, lookup_text, values, error);
}

static GVariant *
lookup_json (const CrunchFunction *fn, guint i, gpointer source, gboolean *present, GError **error)
{
  const CrunchdArg *arg = &fn->decl->args[i];
  JsonNode *node = source != NULL ? json_object_get_member (source, arg->name) : NULL;

  *present = node != NULL;
  if (node == NULL)
    return NULL;
  return arg_from_json (fn->name, arg, crunch_function_arg_max (fn, i), node, error);
}

GVariant *
crunch_args_from_json (const CrunchFunction *fn, JsonObject *object, GError **error)
{
  g_autoptr (GList) names = object != NULL ? json_object_get_members (object) : NULL;

  if (!check_names (fn, names, error))
    return NULL;
  return build (fn, lookup_json, object, error);
}

/* A request body -> its JSON object, parsed by `parser`; NULL (and a 400 message starting with
 * "`who`: ", if not NULL) if the body is not one. The nesting is bounded before json-glib, whose
 * parser recurses once per level on this thread's stack, sees a byte. */
static JsonObject *
body_object (JsonParser *parser, const gchar *who, const gchar *body, gsize len,
             const gchar *expected, GError **error)
{
  g_autoptr (GError) local = NULL;
  const gchar *strict = NULL;
  JsonNode *root;

  switch (crunch_json_check (body, len, CRUNCH_JSON_MAX_DEPTH, &strict)) {
  case CRUNCH_JSON_TOO_DEEP:
    invalid (error, "%s%sthe request body nests arrays or objects deeper than %d levels",
             who ? who : "", who ? ": " : "", CRUNCH_JSON_MAX_DEPTH);
    return NULL;
  case CRUNCH_JSON_NOT_STRICT:
    invalid (error, "%s%sthe request body is not strict JSON (RFC 8259): %s", who ? who : "",
             who ? ": " : "", strict);
    return NULL;
  case CRUNCH_JSON_OK:
    break;
  }
  if (!json_parser_load_from_data (parser, body, (gssize)len, &local)) {
    /* json-glib may quote the offending bytes: keep the answer valid UTF-8 */
    g_autofree gchar *why = g_utf8_make_valid (local->message, -1);
    invalid (error, "%s%sthe request body is not valid JSON: %s", who ? who : "", who ? ": " : "",
             why);
    return NULL;
  }
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    invalid (error, "%s%sthe request body must be %s", who ? who : "", who ? ": " : "", expected);
    return NULL;
  }
  return json_node_get_object (root);
}

GVariant *
crunch_args_from_body (const CrunchFunction *fn, const gchar *body, gsize len, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  JsonObject *object;

  if (len == 0)
    return crunch_args_from_json (fn, NULL, error);
  object = body_object (parser, fn->name, body, len, "a JSON object of arguments", error);
  return object != NULL ? crunch_args_from_json (fn, object, error) : NULL;
}

GVariant *
crunch_args_from_job_body (const gchar *body, gsize len, const CrunchFunction **fn, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  JsonObject *object =
      body_object (parser, NULL, body, len, "a JSON object {\"fn\": NAME, \"args\": {...}}", error);
  JsonNode *name, *args;

  if (object == NULL)
    return NULL;
  name = json_object_get_member (object, "fn");
  args = json_object_get_member (object, "args");
  if (json_object_get_size (object) != (guint)(name != NULL) + (args != NULL)) {
    invalid (error, "unknown member: expected only \"fn\" and \"args\"");
    return NULL;
  }
  if (name == NULL || !JSON_NODE_HOLDS_VALUE (name) ||
      json_node_get_value_type (name) != G_TYPE_STRING) {
    invalid (error, "\"fn\" must be the name of a function");
    return NULL;
  }
  *fn = crunch_functions_lookup (json_node_get_string (name));
  if (*fn == NULL) {
    g_autofree gchar *echo = crunch_args_echo (json_node_get_string (name));
    invalid (error, "no such function '%s'", echo);
    return NULL;
  }
  if (args != NULL && !JSON_NODE_HOLDS_OBJECT (args)) {
    invalid (error, "\"args\" must be a JSON object");
    return NULL;
  }
  return crunch_args_from_json (*fn, args ? json_node_get_object (args) : NULL, error);
}
