/* fuzz-args.c - libFuzzer target: declared-argument validation (args.c).
 * The input is tried three times against a function with one argument of every type: as a JSON
 * body (POST /fn/<name>), as a POST /jobs body ({"fn": "every", "args": {...}}) and as a query
 * string "a=1&b=x" (GET), already split the way MHD splits it. Either the arguments are refused
 * with INVALID_ARGUMENT, or the canonical tuple has the declared types and every value is within
 * its bounds. tests/fuzz/run gives this target inputs as long as a request body (-max_len), and
 * its seeds nest 100,000 levels deep: a recursive parser reached without the nesting bound
 * overflows the stack here too. */
#include <math.h>
#include <string.h>

#include "args.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

static const CrunchdArg args[] = {
    {"i", CRUNCHD_ARG_INT, -1000, 1000, NULL, NULL},
    {"f", CRUNCHD_ARG_FLOAT, -1, 1, "0.5", NULL},
    {"s", CRUNCHD_ARG_STRING, 1, 8, "x", NULL},
    {"b", CRUNCHD_ARG_BYTES, 0, 4, "", NULL},
};

static CrunchdStatus
run (const CrunchdCall *call, CrunchdResult *result)
{
  return CRUNCHD_OK;
}

static const CrunchdFunction decl = {
    "every", NULL, args, G_N_ELEMENTS (args), 1, 1, "text/plain", run, NULL, 0, 0, NULL,
};

static void
check (GVariant *v, GError *error)
{
  gint64 i;
  gdouble f;
  const gchar *s;
  g_autoptr (GVariant) b = NULL;

  if (v == NULL) {
    g_assert (
        g_error_matches (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT));
    g_assert (g_utf8_validate (error->message, -1, NULL));
    return;
  }
  g_variant_ref_sink (v);
  g_assert (g_variant_is_of_type (v, G_VARIANT_TYPE ("(xdsay)")));
  g_variant_get (v, "(xd&s@ay)", &i, &f, &s, &b);
  g_assert (i >= -1000 && i <= 1000);
  g_assert (isfinite (f) && f >= -1 && f <= 1);
  g_assert (g_utf8_validate (s, -1, NULL) && g_utf8_strlen (s, -1) >= 1 &&
            g_utf8_strlen (s, -1) <= 8);
  g_assert (g_variant_get_size (b) <= 4);
  g_variant_unref (v);
}

static GHashTable *
split_query (const gchar *text)
{
  GHashTable *values = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_auto (GStrv) pairs = g_strsplit (text, "&", 16);

  for (gchar **p = pairs; *p != NULL; p++) {
    gchar *eq = strchr (*p, '=');
    if (eq != NULL)
      *eq = '\0';
    g_hash_table_replace (values, g_strdup (*p), g_strdup (eq ? eq + 1 : ""));
  }
  return values;
}

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  static const CrunchFunction *fn;
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  g_autoptr (GHashTable) query = NULL;
  GError *error = NULL;

  if (fn == NULL) {
    g_assert (crunch_functions_add (&decl, "fuzz", NULL));
    fn = crunch_functions_lookup ("every");
  }
  check (crunch_args_from_body (fn, (const gchar *)data, size, &error), error);
  g_clear_error (&error);
  {
    const CrunchFunction *job_fn = NULL;
    GVariant *v = crunch_args_from_job_body ((const gchar *)data, size, &job_fn, &error);
    g_assert (v == NULL || job_fn == fn);
    check (v, error);
    g_clear_error (&error);
  }
  query = split_query (text);
  check (crunch_args_from_query (fn, query, &error), error);
  g_clear_error (&error);
  return 0;
}
