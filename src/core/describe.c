/* describe.c - see describe.h. Runs on the MHD polling thread that serves the request; reads the
 * registry, which is fixed once serving starts (its live bounds are atomics). */
#include "describe.h"

#include <json-glib/json-glib.h>
#include <math.h>

#include "functions.h"
#include "json.h"

static const gchar *const type_names[] = {
    [CRUNCHD_ARG_INT] = "int",
    [CRUNCHD_ARG_FLOAT] = "float",
    [CRUNCHD_ARG_STRING] = "string",
    [CRUNCHD_ARG_BYTES] = "bytes",
};

/* Integral values as integers: json-glib writes every double with 17 digits. */
static void
add_number (JsonBuilder *b, gdouble v)
{
  if (v == floor (v) && fabs (v) <= 9007199254740992.0)
    json_builder_add_int_value (b, (gint64)v);
  else
    json_builder_add_double_value (b, v);
}

static void
member_number (JsonBuilder *b, const gchar *name, gdouble v)
{
  json_builder_set_member_name (b, name);
  add_number (b, v);
}

/* The default as JSON: int, float, string, or base64 for bytes. */
static void
add_default (JsonBuilder *b, GVariant *value)
{
  if (g_variant_is_of_type (value, G_VARIANT_TYPE_INT64)) {
    json_builder_add_int_value (b, g_variant_get_int64 (value));
  } else if (g_variant_is_of_type (value, G_VARIANT_TYPE_DOUBLE)) {
    add_number (b, g_variant_get_double (value));
  } else if (g_variant_is_of_type (value, G_VARIANT_TYPE_STRING)) {
    json_builder_add_string_value (b, g_variant_get_string (value, NULL));
  } else {
    gsize len;
    gconstpointer data = g_variant_get_fixed_array (value, &len, 1);
    g_autofree gchar *text = g_base64_encode (data, len);
    json_builder_add_string_value (b, text);
  }
}

/* ---- GET /fn ---- */

static void
describe_arg (JsonBuilder *b, const CrunchFunction *fn, guint i)
{
  const CrunchdArg *arg = &fn->decl->args[i];

  json_builder_begin_object (b);
  crunch_json_member_string (b, "name", arg->name);
  crunch_json_member_string (b, "type", type_names[arg->type]);
  if (arg->description != NULL)
    crunch_json_member_string (b, "description", arg->description);
  member_number (b, "min", arg->min);
  member_number (b, "max", crunch_function_arg_max (fn, i));
  crunch_json_member_bool (b, "required", fn->defaults[i] == NULL);
  if (fn->defaults[i] != NULL) {
    json_builder_set_member_name (b, "default");
    add_default (b, fn->defaults[i]);
  }
  json_builder_end_object (b);
}

static void
describe_function (JsonBuilder *b, const CrunchFunction *fn)
{
  g_autofree gchar *url = g_strconcat ("/fn/", fn->name, NULL);

  json_builder_begin_object (b);
  crunch_json_member_string (b, "name", fn->name);
  crunch_json_member_string (b, "description", fn->decl->description ? fn->decl->description : "");
  crunch_json_member_string (b, "plugin", fn->plugin);
  crunch_json_member_string (b, "url", url);
  crunch_json_member_bool (b, "pure", fn->pure);
  member_number (b, "deadline_seconds",
                 __atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED) / (gdouble)G_USEC_PER_SEC);
  crunch_json_member_string (b, "content_type", fn->content_type);
  if (fn->max_batch > 1) { /* takes batches (dynamic batching) */
    json_builder_set_member_name (b, "max_batch");
    json_builder_add_int_value (b, fn->max_batch);
    member_number (b, "max_delay_seconds", fn->max_delay_us / (gdouble)G_USEC_PER_SEC);
  }
  json_builder_set_member_name (b, "args");
  json_builder_begin_array (b);
  for (guint i = 0; i < fn->decl->n_args; i++)
    describe_arg (b, fn, i);
  json_builder_end_array (b);
  json_builder_end_object (b);
}

static GBytes *
to_bytes (JsonBuilder *b)
{
  g_autoptr (JsonNode) root = json_builder_get_root (b);
  g_autoptr (JsonGenerator) gen = json_generator_new ();
  gchar *text;
  gsize len;

  json_generator_set_root (gen, root);
  json_generator_set_pretty (gen, TRUE);
  text = json_generator_to_data (gen, &len);
  text = g_realloc (text, len + 2);
  text[len] = '\n';
  text[len + 1] = '\0';
  return g_bytes_new_take (text, len + 1);
}

GBytes *
crunch_describe_functions (void)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autofree const gchar **names = crunch_functions_list ();

  json_builder_begin_object (b);
  json_builder_set_member_name (b, "functions");
  json_builder_begin_array (b);
  for (const gchar **n = names; *n != NULL; n++)
    describe_function (b, crunch_functions_lookup (*n));
  json_builder_end_array (b);
  json_builder_end_object (b);
  return to_bytes (b);
}

/* ---- GET /openapi.json ---- */

/* The JSON schema of argument i, with its bounds and default. */
static void
arg_schema (JsonBuilder *b, const CrunchFunction *fn, guint i)
{
  const CrunchdArg *arg = &fn->decl->args[i];
  gdouble max = crunch_function_arg_max (fn, i);

  json_builder_begin_object (b);
  if (arg->description != NULL)
    crunch_json_member_string (b, "description", arg->description);
  switch (arg->type) {
  case CRUNCHD_ARG_INT:
  case CRUNCHD_ARG_FLOAT:
    crunch_json_member_string (b, "type", arg->type == CRUNCHD_ARG_INT ? "integer" : "number");
    crunch_json_member_string (b, "format", arg->type == CRUNCHD_ARG_INT ? "int64" : "double");
    member_number (b, "minimum", arg->min);
    member_number (b, "maximum", max);
    break;
  case CRUNCHD_ARG_STRING:
    crunch_json_member_string (b, "type", "string");
    member_number (b, "minLength", arg->min);
    member_number (b, "maxLength", max);
    break;
  case CRUNCHD_ARG_BYTES: /* base64: 4 characters per 3 bytes */
    crunch_json_member_string (b, "type", "string");
    crunch_json_member_string (b, "format", "byte");
    member_number (b, "maxLength", 4 * ceil (max / 3));
    break;
  }
  if (fn->defaults[i] != NULL) {
    json_builder_set_member_name (b, "default");
    add_default (b, fn->defaults[i]);
  }
  json_builder_end_object (b);
}

static void
content (JsonBuilder *b, const gchar *type, const gchar *schema_type, const gchar *format)
{
  json_builder_set_member_name (b, "content");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, type);
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "schema");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", schema_type);
  if (format != NULL)
    crunch_json_member_string (b, "format", format);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

/* A response: its description and a body of `type` (NULL: none). */
static void
response (JsonBuilder *b, const gchar *code, const gchar *description, const gchar *type)
{
  gboolean text = type != NULL &&
                  (g_str_has_prefix (type, "text/") || g_str_has_prefix (type, "application/json"));

  json_builder_set_member_name (b, code);
  json_builder_begin_object (b);
  crunch_json_member_string (b, "description", description);
  if (type != NULL)
    content (b, type, g_str_has_prefix (type, "application/json") ? "object" : "string",
             text ? NULL : "binary");
  json_builder_end_object (b);
}

#define ERROR_TYPE "text/plain; charset=utf-8"

/* The errors every compute call may get (see crunchd(8)). */
static void
compute_errors (JsonBuilder *b)
{
  response (b, "400", "bad arguments (the body names the argument and the rule)", ERROR_TYPE);
  response (b, "429", "too many requests in flight for this client (Retry-After)", ERROR_TYPE);
  response (b, "500", "the function failed", ERROR_TYPE);
  response (b, "502", "its worker process crashed", ERROR_TYPE);
  response (b, "503", "the queue is full or the server is stopping (Retry-After)", ERROR_TYPE);
  response (b, "504", "its deadline passed", ERROR_TYPE);
}

static void
begin_operation (JsonBuilder *b, const gchar *method, const gchar *id, const gchar *summary)
{
  json_builder_set_member_name (b, method);
  json_builder_begin_object (b);
  crunch_json_member_string (b, "operationId", id);
  crunch_json_member_string (b, "summary", summary);
}

static void
parameter (JsonBuilder *b, const gchar *name, const gchar *in, gboolean required)
{
  crunch_json_member_string (b, "name", name);
  crunch_json_member_string (b, "in", in);
  crunch_json_member_bool (b, "required", required);
}

/* GET /fn/NAME?ARG=VALUE... */
static void
function_get (JsonBuilder *b, const CrunchFunction *fn)
{
  g_autofree gchar *id = g_strconcat ("call_", fn->name, NULL);

  begin_operation (b, "get", id, fn->decl->description ? fn->decl->description : fn->name);
  json_builder_set_member_name (b, "parameters");
  json_builder_begin_array (b);
  for (guint i = 0; i < fn->decl->n_args; i++) {
    json_builder_begin_object (b);
    parameter (b, fn->decl->args[i].name, "query", fn->defaults[i] == NULL);
    json_builder_set_member_name (b, "schema");
    arg_schema (b, fn, i);
    json_builder_end_object (b);
  }
  json_builder_end_array (b);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "the result", fn->content_type);
  compute_errors (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

/* The JSON body of POST /fn/NAME: an object of the declared arguments. */
static void
arguments_schema (JsonBuilder *b, const CrunchFunction *fn)
{
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "object");
  crunch_json_member_bool (b, "additionalProperties", FALSE);
  json_builder_set_member_name (b, "properties");
  json_builder_begin_object (b);
  for (guint i = 0; i < fn->decl->n_args; i++) {
    json_builder_set_member_name (b, fn->decl->args[i].name);
    arg_schema (b, fn, i);
  }
  json_builder_end_object (b);
  json_builder_set_member_name (b, "required");
  json_builder_begin_array (b);
  for (guint i = 0; i < fn->decl->n_args; i++)
    if (fn->defaults[i] == NULL)
      json_builder_add_string_value (b, fn->decl->args[i].name);
  json_builder_end_array (b);
  json_builder_end_object (b);
}

static void
json_request_body (JsonBuilder *b, const CrunchFunction *fn)
{
  json_builder_set_member_name (b, "requestBody");
  json_builder_begin_object (b);
  crunch_json_member_bool (b, "required", TRUE);
  json_builder_set_member_name (b, "content");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "application/json");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "schema");
  arguments_schema (b, fn);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

static void
function_post (JsonBuilder *b, const CrunchFunction *fn)
{
  g_autofree gchar *id = g_strconcat ("call_", fn->name, "_post", NULL);

  begin_operation (b, "post", id, fn->decl->description ? fn->decl->description : fn->name);
  json_request_body (b, fn);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "the result", fn->content_type);
  compute_errors (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

static void
function_paths (JsonBuilder *b, const gchar **names)
{
  for (const gchar **n = names; *n != NULL; n++) {
    const CrunchFunction *fn = crunch_functions_lookup (*n);
    g_autofree gchar *path = g_strconcat ("/fn/", fn->name, NULL);
    json_builder_set_member_name (b, path);
    json_builder_begin_object (b);
    function_get (b, fn);
    function_post (b, fn);
    json_builder_end_object (b);
  }
}

/* A GET path with one operation answered 200 with `type` (and maybe 503). */
static void
simple_get (JsonBuilder *b, const gchar *path, const gchar *id, const gchar *summary,
            const gchar *type, const gchar *unavailable)
{
  json_builder_set_member_name (b, path);
  json_builder_begin_object (b);
  begin_operation (b, "get", id, summary);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", summary, type);
  response (b, "400", "a malformed request (framing, percent-encoding)", ERROR_TYPE);
  if (unavailable != NULL)
    response (b, "503", unavailable, ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

/* GET /fib/{n}: the built-in's path syntax. */
static void
fib_path (JsonBuilder *b)
{
  const CrunchFunction *fib = crunch_functions_lookup ("fib");

  if (fib == NULL)
    return;
  json_builder_set_member_name (b, "/fib/{n}");
  json_builder_begin_object (b);
  begin_operation (b, "get", "fib", "the n-th Fibonacci number, computed by a worker");
  json_builder_set_member_name (b, "parameters");
  json_builder_begin_array (b);
  json_builder_begin_object (b);
  parameter (b, "n", "path", TRUE);
  json_builder_set_member_name (b, "schema");
  arg_schema (b, fib, 0);
  json_builder_end_object (b);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "fib(n) in decimal", fib->content_type);
  compute_errors (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

static void
id_parameter (JsonBuilder *b)
{
  json_builder_set_member_name (b, "parameters");
  json_builder_begin_array (b);
  json_builder_begin_object (b);
  parameter (b, "id", "path", TRUE);
  json_builder_set_member_name (b, "schema");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "string");
  crunch_json_member_string (b, "pattern", "^[0-9a-f]{32}$");
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_array (b);
}

/* The body of POST /jobs: {"fn": NAME, "args": {...}}. */
static void
job_body_schema (JsonBuilder *b, const gchar **names)
{
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "object");
  json_builder_set_member_name (b, "required");
  json_builder_begin_array (b);
  json_builder_add_string_value (b, "fn");
  json_builder_end_array (b);
  json_builder_set_member_name (b, "properties");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "fn");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "string");
  json_builder_set_member_name (b, "enum");
  json_builder_begin_array (b);
  for (const gchar **n = names; *n != NULL; n++)
    json_builder_add_string_value (b, *n);
  json_builder_end_array (b);
  json_builder_end_object (b);
  json_builder_set_member_name (b, "args");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "object");
  crunch_json_member_string (b, "description", "the function's arguments, as for POST /fn/NAME");
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

static void
submit_job (JsonBuilder *b, const gchar **names)
{
  begin_operation (b, "post", "submit_job", "run a function asynchronously");
  json_builder_set_member_name (b, "parameters");
  json_builder_begin_array (b);
  json_builder_begin_object (b);
  parameter (b, "Idempotency-Key", "header", FALSE);
  json_builder_set_member_name (b, "schema");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "string");
  member_number (b, "minLength", 1);
  member_number (b, "maxLength", 255);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "requestBody");
  json_builder_begin_object (b);
  crunch_json_member_bool (b, "required", TRUE);
  json_builder_set_member_name (b, "content");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "application/json");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "schema");
  job_body_schema (b, names);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "202", "accepted: the job, and Location: /jobs/ID", "application/json");
  response (b, "400", "bad body or arguments", ERROR_TYPE);
  response (b, "409", "the same Idempotency-Key is still being accepted", ERROR_TYPE);
  response (b, "422", "the Idempotency-Key was used for another request", ERROR_TYPE);
  response (b, "429", "this client holds too many jobs (Retry-After)", ERROR_TYPE);
  response (b, "503", "the store or the queue is full (Retry-After)", ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

/* GET /jobs/{id}/events: Server-Sent Events, resumable with Last-Event-ID. */
static void
job_events_path (JsonBuilder *b)
{
  json_builder_set_member_name (b, "/jobs/{id}/events");
  json_builder_begin_object (b);
  id_parameter (b);
  begin_operation (b, "get", "get_job_events",
                   "the job's state and progress as Server-Sent Events, then its outcome");
  json_builder_set_member_name (b, "parameters");
  json_builder_begin_array (b);
  json_builder_begin_object (b);
  parameter (b, "Last-Event-ID", "header", FALSE);
  json_builder_set_member_name (b, "schema");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "type", "string");
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "events: state, progress, outcome", "text/event-stream");
  response (b, "204", "the client has seen the outcome already", NULL);
  response (b, "404", "no such job", ERROR_TYPE);
  response (b, "503", "[jobs] max_streams are open", ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
}

static void
job_paths (JsonBuilder *b, const gchar **names)
{
  json_builder_set_member_name (b, "/jobs");
  json_builder_begin_object (b);
  submit_job (b, names);
  json_builder_end_object (b);

  json_builder_set_member_name (b, "/jobs/{id}");
  json_builder_begin_object (b);
  id_parameter (b);
  begin_operation (b, "get", "get_job", "the job: state, attempts, timings, result when done");
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "the job", "application/json");
  response (b, "404", "no such job", ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
  begin_operation (b, "delete", "delete_job", "cancel an unfinished job, forget a finished one");
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "202", "cancelled: the job", "application/json");
  response (b, "204", "forgotten", NULL);
  response (b, "404", "no such job", ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);

  json_builder_set_member_name (b, "/jobs/{id}/result");
  json_builder_begin_object (b);
  id_parameter (b);
  begin_operation (b, "get", "get_job_result", "the result, with the function's content type");
  json_builder_set_member_name (b, "responses");
  json_builder_begin_object (b);
  response (b, "200", "the result", "application/octet-stream");
  response (b, "404", "no such job", ERROR_TYPE);
  response (b, "409", "the job has no result (yet)", ERROR_TYPE);
  json_builder_end_object (b);
  json_builder_end_object (b);
  json_builder_end_object (b);
  job_events_path (b);
}

static void
ops_paths (JsonBuilder *b)
{
  simple_get (b, "/metrics", "metrics", "Prometheus metrics", "text/plain; version=0.0.4", NULL);
  simple_get (b, "/healthz", "healthz", "liveness", ERROR_TYPE, NULL);
  simple_get (b, "/readyz", "readyz", "readiness", ERROR_TYPE, "draining, or the queue is full");
  simple_get (b, "/status", "status_page", "the live status page", "text/html", NULL);
  simple_get (b, "/status.json", "status_json", "the status page's data", "application/json", NULL);
}

static void
info (JsonBuilder *b)
{
  json_builder_set_member_name (b, "info");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "title", "crunchd");
  crunch_json_member_string (b, "version", PACKAGE_VERSION);
  crunch_json_member_string (
      b, "description",
      "HTTP server for work that is slow to compute: cheap routes answered inline, "
      "functions run on workers, asynchronous jobs. Generated from the running "
      "server's function registry. Errors are one line of text/plain ending with the "
      "request id. With [metrics] listen set, the ops routes are on that address only.");
  json_builder_set_member_name (b, "license");
  json_builder_begin_object (b);
  crunch_json_member_string (b, "name", "MIT");
  crunch_json_member_string (b, "url", "https://opensource.org/licenses/MIT");
  json_builder_end_object (b);
  json_builder_end_object (b);
}

GBytes *
crunch_describe_openapi (void)
{
  g_autoptr (JsonBuilder) b = json_builder_new ();
  g_autofree const gchar **names = crunch_functions_list ();

  json_builder_begin_object (b);
  crunch_json_member_string (b, "openapi", "3.0.3");
  info (b);
  json_builder_set_member_name (b, "servers");
  json_builder_begin_array (b);
  json_builder_begin_object (b);
  crunch_json_member_string (b, "url", "/");
  json_builder_end_object (b);
  json_builder_end_array (b);
  /* no authentication: every operation is open to whoever reaches the port */
  json_builder_set_member_name (b, "security");
  json_builder_begin_array (b);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "paths");
  json_builder_begin_object (b);
  simple_get (b, "/fast", "fast", "a cheap answer, inline", ERROR_TYPE, NULL);
  fib_path (b);
  simple_get (b, "/fn", "list_functions", "the registered functions", "application/json", NULL);
  function_paths (b, names);
  job_paths (b, names);
  ops_paths (b);
  simple_get (b, "/openapi.json", "openapi", "this document", "application/json", NULL);
  json_builder_end_object (b);
  json_builder_end_object (b);
  return to_bytes (b);
}
