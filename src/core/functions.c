/* functions.c - name -> CrunchFunction. The table is filled at start-up (built-ins, then the
 * configured plugins) and read-only after, so lookups from the MHD threads need no lock; live
 * settings inside entries are atomics. */
#include "functions.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "args.h"
#include "json.h"
#include "plugins.h"
#include "procpool.h"

G_DEFINE_QUARK (crunch - function - error - quark, crunch_function_error)

static const CrunchBuiltin *const builtins[] = {
    &crunch_fib_builtin,
};

static GHashTable *registry; /* name -> CrunchFunction* */
static GPtrArray *order;     /* CrunchFunction*, registration order; owns them */

static void
function_free (gpointer data)
{
  CrunchFunction *fn = data;

  for (guint i = 0; i < fn->decl->n_args; i++)
    g_clear_pointer (&fn->defaults[i], g_variant_unref);
  g_free (fn->defaults);
  g_free (fn->max);
  g_free (fn->plugin);
  g_free (fn);
}

void
crunch_functions_reset (void)
{
  g_clear_pointer (&registry, g_hash_table_unref);
  g_clear_pointer (&order, g_ptr_array_unref);
}

static gboolean
valid_name (const gchar *name)
{
  return name != NULL && *name != '\0' && strlen (name) <= 64 &&
         strspn (name, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen (name);
}

static gboolean
bad_decl (GError **error, const gchar *plugin, const gchar *name, const gchar *why)
{
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
               "plugin '%s': function '%s': %s", plugin, name ? name : "(null)", why);
  return FALSE;
}

static gboolean
check_arg (const CrunchdArg *arg, const CrunchdFunction *decl, guint i, const gchar *plugin,
           GError **error)
{
  g_autofree gchar *why = NULL;

  if (!valid_name (arg->name))
    why = g_strdup_printf ("argument %u: name must match [a-z0-9_]+", i);
  else if (arg->type < CRUNCHD_ARG_INT || arg->type > CRUNCHD_ARG_BYTES)
    why = g_strdup_printf ("argument '%s': unknown type %d", arg->name, (gint)arg->type);
  else if (!(arg->min <= arg->max) || !isfinite (arg->min) || !isfinite (arg->max))
    why = g_strdup_printf ("argument '%s': bounds must be finite with min <= max", arg->name);
  else if (arg->type >= CRUNCHD_ARG_STRING && arg->min < 0)
    why = g_strdup_printf ("argument '%s': a length bound cannot be negative", arg->name);
  for (guint j = 0; why == NULL && j < i; j++) {
    if (g_str_equal (decl->args[j].name, arg->name))
      why = g_strdup_printf ("argument '%s' declared twice", arg->name);
  }
  return why == NULL || bad_decl (error, plugin, decl->name, why);
}

/* It becomes a header value: printable ASCII only (no CR/LF), as HTTP field values. */
static gboolean
content_type_valid (const gchar *text)
{
  gsize n = 0;

  for (; text[n] != '\0'; n++)
    if (!g_ascii_isprint (text[n]))
      return FALSE;
  return n <= 255;
}

/* The batching members (ABI 2), checked. */
static gboolean
check_batch (const CrunchdFunction *decl, gboolean hooked, const gchar *plugin, GError **error)
{
  if (decl->max_batch > CRUNCH_MAX_BATCH)
    return bad_decl (error, plugin, decl->name, "max_batch must be at most 1024");
  if (!(decl->max_delay >= 0 && decl->max_delay <= 1))
    return bad_decl (error, plugin, decl->name, "max_delay must be in [0, 1] seconds");
  if (decl->max_batch > 1 && decl->run_batch == NULL && !hooked)
    return bad_decl (error, plugin, decl->name, "max_batch > 1 needs run_batch");
  return TRUE;
}

static gboolean
check_decl (const CrunchdFunction *decl, guint abi, gboolean hooked, const gchar *plugin,
            GError **error)
{
  gboolean batch_entry = abi >= 2 && decl->run_batch != NULL;

  if (!valid_name (decl->name))
    return bad_decl (error, plugin, decl->name, "name must match [a-z0-9_]+ (at most 64)");
  if (decl->run == NULL && !batch_entry && !hooked)
    return bad_decl (error, plugin, decl->name, "no run function");
  if (abi >= 2 && !check_batch (decl, hooked, plugin, error))
    return FALSE;
  if (decl->content_type == NULL || *decl->content_type == '\0')
    return bad_decl (error, plugin, decl->name, "no content_type");
  if (!content_type_valid (decl->content_type))
    return bad_decl (error, plugin, decl->name,
                     "content_type must be printable ASCII of at most 255 characters");
  if (!(decl->deadline > 0 && decl->deadline <= 86400))
    return bad_decl (error, plugin, decl->name, "deadline must be in (0, 86400] seconds");
  if (decl->n_args > 0 && decl->args == NULL)
    return bad_decl (error, plugin, decl->name, "n_args > 0 but args is NULL");
  if (decl->n_args > CRUNCH_JSON_MAX_MEMBERS) /* they could not all come in a JSON body */
    return bad_decl (error, plugin, decl->name,
                     "more than " G_STRINGIFY (CRUNCH_JSON_MAX_MEMBERS) " arguments");
  for (guint i = 0; i < decl->n_args; i++) {
    if (!check_arg (&decl->args[i], decl, i, plugin, error))
      return FALSE;
  }
  return TRUE;
}

static CrunchFunction *
function_new (const CrunchdFunction *decl, guint abi, const gchar *plugin, GError **error)
{
  CrunchFunction *fn = g_new0 (CrunchFunction, 1);

  fn->decl = decl;
  if (abi >= 2) { /* a version-1 declaration ends before these */
    fn->max_batch = MAX (decl->max_batch, 1);
    fn->max_delay_us = (gint64)(decl->max_delay * G_USEC_PER_SEC);
    fn->batch_entry = decl->run_batch;
  } else {
    fn->max_batch = 1;
  }
  fn->name = decl->name;
  fn->plugin = g_strdup (plugin);
  fn->pure = decl->pure != 0;
  fn->content_type = decl->content_type;
  fn->timeout_us = (gint64)(decl->deadline * G_USEC_PER_SEC);
  fn->defaults = g_new0 (GVariant *, decl->n_args + 1);
  fn->max = g_new0 (gdouble, decl->n_args + 1);
  for (guint i = 0; i < decl->n_args; i++) {
    const CrunchdArg *arg = &decl->args[i];
    g_autoptr (GError) local = NULL;
    fn->max[i] = arg->max;
    if (arg->default_value == NULL)
      continue;
    fn->defaults[i] = crunch_arg_from_text (decl->name, arg, arg->max, arg->default_value, &local);
    if (fn->defaults[i] == NULL) {
      g_autofree gchar *why = g_strdup_printf ("bad default_value: %s", local->message);
      bad_decl (error, plugin, decl->name, why);
      function_free (fn);
      return NULL;
    }
    g_variant_ref_sink (fn->defaults[i]);
  }
  return fn;
}

static gboolean add (const CrunchdFunction *decl, guint abi, const gchar *plugin, CrunchRunHook run,
                     gpointer data, GError **error);

gboolean
crunch_functions_add (const CrunchdFunction *decl, const gchar *plugin, GError **error)
{
  return add (decl, CRUNCHD_PLUGIN_ABI_VERSION, plugin, NULL, NULL, error);
}

gboolean
crunch_functions_add_abi (const CrunchdFunction *decl, guint abi, const gchar *plugin,
                          GError **error)
{
  return add (decl, abi, plugin, NULL, NULL, error);
}

void
crunch_functions_run_elsewhere (CrunchRunHook run, gpointer data)
{
  for (guint i = 0; order != NULL && i < order->len; i++) {
    CrunchFunction *fn = order->pdata[i];
    if (fn->run == NULL) {
      fn->run = run;
      fn->run_data = data;
    }
  }
}

gboolean
crunch_functions_hook_batch (const gchar *name, CrunchBatchHook run_batch)
{
  CrunchFunction *fn = (CrunchFunction *)crunch_functions_lookup (name);

  if (fn == NULL || fn->max_batch <= 1 || fn->run == NULL)
    return FALSE;
  fn->run_batch = run_batch;
  return TRUE;
}

gboolean
crunch_functions_add_hooked (const CrunchdFunction *decl, const gchar *plugin, CrunchRunHook run,
                             gpointer data, GError **error)
{
  return add (decl, CRUNCHD_PLUGIN_ABI_VERSION, plugin, run, data, error);
}

static gboolean
add (const CrunchdFunction *decl, guint abi, const gchar *plugin, CrunchRunHook run, gpointer data,
     GError **error)
{
  const CrunchFunction *other;
  CrunchFunction *fn;

  if (decl == NULL)
    return bad_decl (error, plugin, NULL, "NULL declaration");
  if (!check_decl (decl, abi, run != NULL, plugin, error))
    return FALSE;
  other = crunch_functions_lookup (decl->name);
  if (other != NULL) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': function '%s' is already registered by plugin '%s'", plugin,
                 decl->name, other->plugin);
    return FALSE;
  }
  fn = function_new (decl, abi, plugin, error);
  if (fn == NULL)
    return FALSE;
  fn->run = run;
  fn->run_data = data;
  if (registry == NULL) {
    registry = g_hash_table_new (g_str_hash, g_str_equal);
    order = g_ptr_array_new_with_free_func (function_free);
  }
  g_hash_table_insert (registry, (gpointer)fn->name, fn);
  g_ptr_array_add (order, fn);
  return TRUE;
}

static gboolean
add_builtins (GError **error)
{
  for (gsize i = 0; i < G_N_ELEMENTS (builtins); i++) {
    CrunchFunction *fn;
    if (!crunch_plugins_register (builtins[i]->plugin, "builtin", error))
      return FALSE;
    fn = (CrunchFunction *)crunch_functions_lookup (builtins[i]->function);
    g_assert (fn != NULL);
    fn->parse = builtins[i]->parse;
    fn->configure = builtins[i]->configure;
  }
  return TRUE;
}

static gboolean
load_program (const gchar *name, const gchar *path, gpointer data, GError **error)
{
  return crunch_procpool_load_program (data, name, path, error);
}

gboolean
crunch_functions_init (const CrunchConfig *config, GError **error)
{
  return crunch_functions_init_full (config, TRUE, error);
}

gboolean
crunch_functions_init_full (const CrunchConfig *config, gboolean programs, GError **error)
{
  crunch_functions_reset ();
  if (!add_builtins (error) ||
      !crunch_plugins_load (config->plugins_dir, config->plugins_load,
                            programs ? load_program : NULL, (gpointer)config, error)) {
    crunch_functions_reset ();
    crunch_procpools_free_all (); /* after the registry: its entries point into their hellos */
    return FALSE;
  }
  crunch_functions_configure (config);
  return TRUE;
}

void
crunch_functions_configure (const CrunchConfig *config)
{
  /* G_DEFINE_QUARK fills a plain static on first use: do it on the main thread at start-up,
   * before worker threads could race on it (ThreadSanitizer saw two jobs failing at once) */
  crunch_function_error_quark ();
  for (guint i = 0; order != NULL && i < order->len; i++) {
    CrunchFunction *fn = order->pdata[i];
    if (fn->configure != NULL)
      fn->configure (fn, config);
  }
}

gchar *
crunch_function_key (const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *printed = NULL;

  if (!fn->pure)
    return NULL;
  printed = g_variant_print (args, TRUE);
  return g_strconcat (fn->name, " ", printed, NULL);
}

const CrunchFunction *
crunch_functions_lookup (const gchar *name)
{
  return registry != NULL ? g_hash_table_lookup (registry, name) : NULL;
}

const gchar **
crunch_functions_list (void)
{
  guint n = order != NULL ? order->len : 0;
  const gchar **names = g_new0 (const gchar *, n + 1);

  for (guint i = 0; i < n; i++)
    names[i] = ((CrunchFunction *)order->pdata[i])->name;
  return names;
}

gdouble
crunch_function_arg_max (const CrunchFunction *fn, guint i)
{
  gdouble max;

  __atomic_load (&fn->max[i], &max, __ATOMIC_RELAXED);
  return max;
}

/* The tuple's children stay alive in `args` for the whole call, so values point into it. */
static void
to_value (GVariant *child, CrunchdArgType type, CrunchdValue *value)
{
  gsize len = 0;

  value->type = type;
  switch (type) {
  case CRUNCHD_ARG_INT:
    value->v.i = g_variant_get_int64 (child);
    break;
  case CRUNCHD_ARG_FLOAT:
    value->v.f = g_variant_get_double (child);
    break;
  case CRUNCHD_ARG_STRING:
    value->v.s.data = g_variant_get_string (child, &len);
    value->v.s.len = len;
    break;
  case CRUNCHD_ARG_BYTES:
    value->v.s.data = g_variant_get_fixed_array (child, &len, 1);
    value->v.s.len = len;
    if (len == 0)
      value->v.s.data = "";
    break;
  }
}

static void
free_result (gpointer data)
{
  gpointer *pair = data; /* {data, free_data} */
  void (*free_data) (void *) = pair[1];

  (free_data != NULL ? free_data : free) (pair[0]);
  g_free (pair);
}

static const gchar *const type_codes[] = {NULL, "x", "d", "s", "ay"};

/* Arguments that did not come through args.c (a remote worker decodes them from the wire) are
 * checked again, so `run` never sees a value its declaration excludes. */
gchar *
crunch_function_args_type (const CrunchFunction *fn)
{
  GString *type = g_string_new ("(");

  for (guint i = 0; i < fn->decl->n_args; i++)
    g_string_append (type, type_codes[fn->decl->args[i].type]);
  g_string_append_c (type, ')');
  return g_string_free (type, FALSE);
}

static gboolean
matches_decl (const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *type = crunch_function_args_type (fn);
  const CrunchdArg *decl;

  if (!g_variant_type_string_is_valid (type) || !g_variant_is_of_type (args, G_VARIANT_TYPE (type)))
    return FALSE;
  for (guint i = 0; i < fn->decl->n_args; i++) {
    g_autoptr (GVariant) child = g_variant_get_child_value (args, i);
    gdouble value = 0;
    gsize len = 0;
    decl = &fn->decl->args[i];
    if (decl->type == CRUNCHD_ARG_INT)
      value = (gdouble)g_variant_get_int64 (child);
    else if (decl->type == CRUNCHD_ARG_FLOAT)
      value = g_variant_get_double (child);
    else if (decl->type == CRUNCHD_ARG_STRING)
      value = (gdouble)g_utf8_strlen (g_variant_get_string (child, &len), -1);
    else
      value = (gdouble)g_variant_get_size (child);
    if (!(value >= decl->min && value <= decl->max))
      return FALSE;
  }
  return TRUE;
}

gboolean
crunch_progress_due (gint64 *last_us, gboolean relayed)
{
  gint64 now = g_get_monotonic_time ();
  gint64 interval = G_USEC_PER_SEC / CRUNCH_PROGRESS_PER_SECOND;

  if (relayed)
    interval -= interval / 5;
  if (*last_us != 0 && now - *last_us < interval)
    return FALSE;
  *last_us = now;
  return TRUE;
}

void
crunch_progress_report (const CrunchCancel *cancel, gdouble fraction, const gchar *message)
{
  g_autofree gchar *line = NULL;
  const gchar *end;

  if (cancel->progress == NULL || isnan (fraction))
    return;
  fraction = CLAMP (fraction, 0.0, 1.0);
  if (message != NULL) {
    line = g_utf8_make_valid (message, MIN (strlen (message), CRUNCH_PROGRESS_MESSAGE_MAX + 4));
    if (strlen (line) > CRUNCH_PROGRESS_MESSAGE_MAX) {
      g_utf8_validate (line, CRUNCH_PROGRESS_MESSAGE_MAX, &end); /* stops at a whole character */
      line[end - line] = '\0';
    }
    g_strdelimit (line, "\r\n", ' ');
  }
  cancel->progress (cancel->progress_data, fraction, line);
}

/* The CrunchdCall a C function gets, with what its progress reports need. */
typedef struct {
  CrunchdCall call; /* first: the plugin's pointer is ours */
  const CrunchCancel *cancel;
  gint64 last_us; /* the last report passed on (the run's thread; a plugin's own threads too) */
  GMutex lock;    /* for a plugin that reports from several threads */
  CrunchdValue *values; /* point into `children` */
  GPtrArray *children;
} HostCall;

/* CrunchdCall.progress (ABI 2). */
static void
host_progress (const CrunchdCall *call, double fraction, const char *message)
{
  HostCall *host = (HostCall *)call;
  gboolean due;

  g_mutex_lock (&host->lock);
  due = crunch_progress_due (&host->last_us, FALSE);
  if (due)
    crunch_progress_report (host->cancel, fraction, message);
  g_mutex_unlock (&host->lock);
}

static void
host_call_init (HostCall *host, const CrunchFunction *fn, GVariant *args,
                const CrunchCancel *cancel)
{
  guint n = fn->decl->n_args;

  host->values = g_new0 (CrunchdValue, n + 1);
  host->children = g_ptr_array_new_with_free_func ((GDestroyNotify)g_variant_unref);
  for (guint i = 0; i < n; i++) {
    GVariant *child = g_variant_get_child_value (args, i);
    g_ptr_array_add (host->children, child);
    to_value (child, fn->decl->args[i].type, &host->values[i]);
  }
  host->call =
      (CrunchdCall){host->values, n, fn->decl->user_data, &cancel->flag, host_progress, NULL};
  host->cancel = cancel;
  host->last_us = 0;
  g_mutex_init (&host->lock);
}

static void
host_call_clear (HostCall *host)
{
  g_mutex_clear (&host->lock);
  g_free (host->values);
  g_ptr_array_unref (host->children);
}

/* What a C function returned, as the result or an error. */
static GBytes *
host_call_outcome (const CrunchFunction *fn, const CrunchCancel *cancel, CrunchdStatus status,
                   CrunchdResult *result, GError **error)
{
  gpointer *pair;

  if (status == CRUNCHD_OK && (result->data != NULL || result->len == 0)) {
    pair = g_new (gpointer, 2);
    pair[0] = result->data;
    pair[1] = (gpointer)result->free_data;
    return g_bytes_new_with_free_func (result->data, result->len, free_result, pair);
  }
  if (result->data != NULL)
    (result->free_data != NULL ? result->free_data : free) (result->data);
  result->error[sizeof result->error - 1] = '\0';
  if (status == CRUNCHD_CANCELLED || crunch_cancelled (cancel))
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "%s: cancelled",
                 fn->name);
  else
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED, "%s: %s", fn->name,
                 result->error[0] != '\0' ? result->error : "failed");
  return NULL;
}

static gboolean
check_args (const CrunchFunction *fn, GVariant *args, GError **error)
{
  if (matches_decl (fn, args))
    return TRUE;
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED,
               "%s: arguments %s do not match the declaration", fn->name,
               g_variant_get_type_string (args));
  return FALSE;
}

/* Runs the C batch entry over calls that are all valid and not cancelled. */
static void
run_batch_entry (const CrunchFunction *fn, guint n, GVariant *const *args,
                 const CrunchCancel *const *cancels, GBytes **results, GError **errors)
{
  g_autofree HostCall *hosts = g_new0 (HostCall, n);
  g_autofree const CrunchdCall **calls = g_new0 (const CrunchdCall *, n);
  g_autofree CrunchdResult *out = g_new0 (CrunchdResult, n);
  g_autofree CrunchdStatus *statuses = g_new (CrunchdStatus, n);

  for (guint i = 0; i < n; i++) {
    host_call_init (&hosts[i], fn, args[i], cancels[i]);
    calls[i] = &hosts[i].call;
    statuses[i] = CRUNCHD_ERROR;
  }
  fn->batch_entry (calls, n, out, statuses);
  for (guint i = 0; i < n; i++) {
    host_call_clear (&hosts[i]);
    results[i] = host_call_outcome (fn, cancels[i], statuses[i], &out[i], &errors[i]);
  }
}

GBytes *
crunch_function_run (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel,
                     GError **error)
{
  HostCall host;
  CrunchdResult result = {0};
  CrunchdStatus status;
  GBytes *bytes = NULL;

  if (!check_args (fn, args, error))
    return NULL;
  if (fn->run != NULL)
    return fn->run (fn, args, cancel, fn->run_data, error);
  if (fn->decl->run == NULL) { /* a batch entry alone: a batch of one */
    run_batch_entry (fn, 1, &args, &cancel, &bytes, error);
    return bytes;
  }
  host_call_init (&host, fn, args, cancel);
  status = fn->decl->run (&host.call, &result);
  host_call_clear (&host);
  return host_call_outcome (fn, cancel, status, &result, error);
}

void
crunch_function_run_batch (const CrunchFunction *fn, guint n, GVariant *const *args,
                           const CrunchCancel *const *cancels, const CrunchCancel *all,
                           GBytes **results, GError **errors)
{
  g_autofree guint *first = g_new (guint, n); /* the call whose answer call i takes */
  g_autofree guint *index = g_new (guint, n); /* the calls that run, by position */
  g_autoptr (GHashTable) seen = NULL; /* serialised arguments (canonical tuples) -> position */
  g_autoptr (GList) rerun = NULL;
  guint m = 0;

  if (fn->pure)
    seen = g_hash_table_new_full (g_bytes_hash, g_bytes_equal, (GDestroyNotify)g_bytes_unref, NULL);
  for (guint i = 0; i < n; i++) {
    gpointer at;
    first[i] = i;
    if (crunch_cancelled (cancels[i])) {
      g_set_error (&errors[i], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
                   "%s: cancelled", fn->name);
    } else if (!check_args (fn, args[i], &errors[i])) {
      /* fails alone */
    } else if (seen != NULL) {
      GBytes *data = g_variant_get_data_as_bytes (args[i]);
      if (g_hash_table_lookup_extended (seen, data, NULL, &at)) {
        first[i] = GPOINTER_TO_UINT (at);
        g_bytes_unref (data);
      } else {
        g_hash_table_insert (seen, data, GUINT_TO_POINTER (i));
        index[m++] = i;
      }
    } else {
      index[m++] = i;
    }
  }
  if (m > 0) {
    g_autofree GVariant **run_args = g_new (GVariant *, m);
    g_autofree const CrunchCancel **run_cancels = g_new (const CrunchCancel *, m);
    g_autofree GBytes **run_results = g_new0 (GBytes *, m);
    g_autofree GError **run_errors = g_new0 (GError *, m);
    for (guint j = 0; j < m; j++) {
      run_args[j] = args[index[j]];
      run_cancels[j] = cancels[index[j]];
    }
    if (fn->run_batch != NULL) {
      fn->run_batch (fn, m, run_args, run_cancels, all, run_results, run_errors, fn->run_data);
    } else if (fn->batch_entry != NULL && fn->run == NULL) {
      run_batch_entry (fn, m, run_args, run_cancels, run_results, run_errors);
    } else {
      for (guint j = 0; j < m; j++) {
        if (crunch_cancelled (all))
          g_set_error (&run_errors[j], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
                       "%s: cancelled", fn->name);
        else
          run_results[j] = crunch_function_run (fn, run_args[j], run_cancels[j], &run_errors[j]);
      }
    }
    for (guint j = 0; j < m; j++) {
      results[index[j]] = run_results[j];
      errors[index[j]] = run_errors[j];
      if (run_results[j] == NULL && run_errors[j] == NULL)
        g_set_error (&errors[index[j]], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED,
                     "%s: no answer for this call", fn->name);
    }
  }
  for (guint i = 0; i < n; i++) {
    if (first[i] == i)
      continue;
    if (results[first[i]] != NULL)
      results[i] = g_bytes_ref (results[first[i]]);
    else if (!g_error_matches (errors[first[i]], CRUNCH_FUNCTION_ERROR,
                               CRUNCH_FUNCTION_ERROR_CANCELLED) ||
             crunch_cancelled (cancels[i]))
      errors[i] = g_error_copy (errors[first[i]]);
    else
      rerun = g_list_prepend (rerun, GUINT_TO_POINTER (i));
  }
  if (rerun != NULL) {
    /* the call that ran for them was cancelled (its caller left) while they still wait: run
     * them again (each round drops the call that ran, so this ends) */
    guint k = g_list_length (rerun), j = 0;
    g_autofree GVariant **again_args = g_new (GVariant *, k);
    g_autofree const CrunchCancel **again_cancels = g_new (const CrunchCancel *, k);
    g_autofree GBytes **again_results = g_new0 (GBytes *, k);
    g_autofree GError **again_errors = g_new0 (GError *, k);
    for (GList *l = rerun; l != NULL; l = l->next, j++) {
      again_args[j] = args[GPOINTER_TO_UINT (l->data)];
      again_cancels[j] = cancels[GPOINTER_TO_UINT (l->data)];
    }
    crunch_function_run_batch (fn, k, again_args, again_cancels, all, again_results, again_errors);
    j = 0;
    for (GList *l = rerun; l != NULL; l = l->next, j++) {
      results[GPOINTER_TO_UINT (l->data)] = again_results[j];
      errors[GPOINTER_TO_UINT (l->data)] = again_errors[j];
    }
  }
}
