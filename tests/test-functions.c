/* test-functions.c - the function registry: declarations through the plugin ABI, their
 * validation, the built-in fib's registration, running a declared function, canonical keys. */
#include <math.h>
#include <string.h>

#include "args.h"
#include "decode.h"
#include "functions.h"
#include "plugins.h"

static CrunchdStatus
ok_run (const CrunchdCall *call, CrunchdResult *result)
{
  /* echoes its first argument's text form, to check what run() receives */
  char *text =
      g_strdup_printf ("%" G_GINT64_FORMAT " %s", call->args[0].v.i, call->args[1].v.s.data);
  result->data = text;
  result->len = strlen (text);
  result->free_data = g_free;
  return crunchd_cancelled (call) ? CRUNCHD_CANCELLED : CRUNCHD_OK;
}

static const CrunchdArg good_args[] = {
    {"n", CRUNCHD_ARG_INT, 0, 10, "3", NULL},
    {"s", CRUNCHD_ARG_STRING, 0, 4, "ab", NULL},
};

static CrunchdFunction
good (const gchar *name)
{
  return (CrunchdFunction){name, NULL, good_args, 2, 1, 1, "text/plain", ok_run, NULL, 0, 0, NULL};
}

static void
reset (void)
{
  crunch_functions_reset ();
}

static void
test_bad_declarations (void)
{
  static const CrunchdArg bad_name[] = {{"N", CRUNCHD_ARG_INT, 0, 1, NULL, NULL}};
  static const CrunchdArg bad_type[] = {{"n", 9, 0, 1, NULL, NULL}};
  static const CrunchdArg bad_bounds[] = {{"n", CRUNCHD_ARG_INT, 2, 1, NULL, NULL}};
  static const CrunchdArg neg_len[] = {{"s", CRUNCHD_ARG_STRING, -1, 1, NULL, NULL}};
  static const CrunchdArg twice[] = {{"n", CRUNCHD_ARG_INT, 0, 1, NULL, NULL},
                                     {"n", CRUNCHD_ARG_FLOAT, 0, 1, NULL, NULL}};
  static const CrunchdArg bad_default[] = {{"n", CRUNCHD_ARG_INT, 0, 1, "7", NULL}};
  const struct {
    CrunchdFunction decl;
    const gchar *message;
  } cases[] = {
      {{"Bad-Name", NULL, NULL, 0, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'Bad-Name': name must match [a-z0-9_]+ (at most 64)"},
      {{"f", NULL, NULL, 0, 0, 1, "text/plain", NULL, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': no run function"},
      {{"f", NULL, NULL, 0, 0, 1, NULL, ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': no content_type"},
      {{"f", NULL, NULL, 0, 0, 1, "text/plain\r\nSet-Cookie: x=1", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': content_type must be printable ASCII of at most 255 characters"},
      {{"f", NULL, NULL, 0, 0, 0, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': deadline must be in (0, 86400] seconds"},
      {{"f", NULL, NULL, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': n_args > 0 but args is NULL"},
      {{"f", NULL, bad_name, 257, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': more than 256 arguments"}, /* a JSON body's most members */
      {{"f", NULL, bad_name, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': argument 0: name must match [a-z0-9_]+"},
      {{"f", NULL, bad_type, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': argument 'n': unknown type 9"},
      {{"f", NULL, bad_bounds, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': argument 'n': bounds must be finite with min <= max"},
      {{"f", NULL, neg_len, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': argument 's': a length bound cannot be negative"},
      {{"f", NULL, twice, 2, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': argument 'n' declared twice"},
      {{"f", NULL, bad_default, 1, 0, 1, "text/plain", ok_run, NULL, 0, 0, NULL},
       "plugin 'p': function 'f': bad default_value: f: argument 'n' must be an integer from 0 to "
       "1, got '7'"},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (GError) error = NULL;
    reset ();
    g_assert_false (crunch_functions_add (&cases[i].decl, "p", &error));
    g_assert_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION);
    g_assert_cmpstr (error->message, ==, cases[i].message);
    g_assert_null (crunch_functions_lookup ("f"));
  }
  reset ();
}

static void
test_duplicate (void)
{
  static CrunchdFunction a, b;
  g_autoptr (GError) error = NULL;

  reset ();
  a = good ("same");
  b = good ("same");
  g_assert_true (crunch_functions_add (&a, "one", NULL));
  g_assert_false (crunch_functions_add (&b, "two", &error));
  g_assert_cmpstr (error->message, ==,
                   "plugin 'two': function 'same' is already registered by plugin 'one'");
  reset ();
}

static int
abi_init (CrunchdHost *host)
{
  return 0;
}

static void
test_abi_version (void)
{
  const CrunchdPlugin future = {CRUNCHD_PLUGIN_ABI_VERSION + 1, "future", "1", abi_init};
  const CrunchdPlugin ancient = {0, "ancient", "1", abi_init};
  const CrunchdPlugin current = {CRUNCHD_PLUGIN_ABI_VERSION, "current", "1", abi_init};
  const CrunchdPlugin v1 = {1, "v1", "1", abi_init};
  g_autoptr (GError) error = NULL, error0 = NULL;

  g_assert_false (crunch_plugins_register (&future, "future", &error));
  g_assert_cmpstr (error->message, ==,
                   "plugin 'future': built for plugin ABI 3, this crunchd loads ABI 1 to 2: "
                   "rebuild it against this crunchd's crunchd-plugin.h");
  g_assert_false (crunch_plugins_register (&ancient, "ancient", &error0));
  g_assert_true (crunch_plugins_register (&current, "current", NULL));
  g_assert_true (crunch_plugins_register (&v1, "v1", NULL)); /* the version policy: still loads */
}

typedef struct {
  guint calls;
  gdouble fraction;
  gchar *message;
} Reports;

static void
record_report (gpointer data, gdouble fraction, const gchar *message)
{
  Reports *r = data;

  r->calls++;
  r->fraction = fraction;
  g_free (r->message);
  r->message = g_strdup (message);
}

/* What a progress report may carry: fractions clamped into [0, 1], NaN dropped, the message
 * made one valid UTF-8 line of at most CRUNCH_PROGRESS_MESSAGE_MAX bytes; at most
 * CRUNCH_PROGRESS_PER_SECOND pass, whatever their value (a plugin repeating 1 in a hot loop too).
 */
static void
test_progress_report (void)
{
  Reports r = {0};
  CrunchCancel cancel = {.progress = record_report, .progress_data = &r};
  g_autofree gchar *long_message = g_strnfill (300, 'x');
  gint64 last = 0;

  crunch_progress_report (&cancel, NAN, "nan");
  g_assert_cmpuint (r.calls, ==, 0);
  crunch_progress_report (&cancel, 7.5, "two\nlines\r");
  g_assert_cmpfloat (r.fraction, ==, 1.0);
  g_assert_cmpstr (r.message, ==, "two lines ");
  crunch_progress_report (&cancel, -1, "caf\xc3\xa9 \xff");
  g_assert_cmpfloat (r.fraction, ==, 0.0);
  g_assert_true (g_utf8_validate (r.message, -1, NULL));
  long_message[CRUNCH_PROGRESS_MESSAGE_MAX - 1] = '\xc3'; /* a character across the cut */
  long_message[CRUNCH_PROGRESS_MESSAGE_MAX] = '\xa9';
  crunch_progress_report (&cancel, 0.5, long_message);
  g_assert_cmpuint (strlen (r.message), ==, CRUNCH_PROGRESS_MESSAGE_MAX - 1);
  crunch_progress_report (&cancel, 0.5, NULL);
  g_assert_null (r.message);
  g_assert_true (crunch_progress_due (&last, FALSE));
  g_assert_false (crunch_progress_due (&last, FALSE));
  g_assert_false (crunch_progress_due (&last, TRUE));
  last -= G_USEC_PER_SEC / CRUNCH_PROGRESS_PER_SECOND; /* a period later */
  g_assert_true (crunch_progress_due (&last, FALSE));
  g_free (r.message);
}

static void
test_run_and_key (void)
{
  static CrunchdFunction decl;
  const CrunchFunction *fn;
  g_autoptr (GHashTable) q = g_hash_table_new (g_str_hash, g_str_equal);
  g_autoptr (GVariant) from_query = NULL, from_json = NULL, wrong = NULL;
  g_autoptr (GBytes) out = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *k1 = NULL, *k2 = NULL;
  CrunchCancel cancel = {0};

  reset ();
  decl = good ("f");
  g_assert_true (crunch_functions_add (&decl, "p", NULL));
  fn = crunch_functions_lookup ("f");
  g_hash_table_insert (q, "n", "5");
  from_query = g_variant_ref_sink (crunch_args_from_query (fn, q, NULL));
  from_json = g_variant_ref_sink (crunch_args_from_body (fn, "{\"n\": 5}", 8, NULL));
  /* canonical: the same call written two ways has one key (for coalescing and the cache) */
  k1 = crunch_function_key (fn, from_query);
  k2 = crunch_function_key (fn, from_json);
  g_assert_cmpstr (k1, ==, k2);
  g_assert_cmpstr (k1, ==, "f (int64 5, 'ab')");
  out = crunch_function_run (fn, from_query, &cancel, &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (out, NULL), g_bytes_get_size (out), "5 ab", 4);
  /* arguments from elsewhere (a worker's wire) are checked against the declaration again */
  wrong = g_variant_ref_sink (g_variant_new ("(xs)", (gint64)11, "ab"));
  g_assert_null (crunch_function_run (fn, wrong, &cancel, &error));
  g_assert_nonnull (error);
  g_assert_cmpstr (error->message, ==, "f: arguments (xs) do not match the declaration");
  reset ();
}

static void
test_builtins (void)
{
  g_autoptr (CrunchConfig) config = crunch_config_new_default ();
  g_autofree const gchar **names = NULL;
  g_autoptr (GError) error = NULL;

  config->fib.max_n = 50;
  g_assert_true (crunch_functions_init (config, &error));
  names = crunch_functions_list ();
  g_assert_cmpstr (names[0], ==, "fib");
  g_assert_null (names[1]);
  g_assert_cmpfloat (crunch_function_arg_max (crunch_functions_lookup ("fib"), 0), ==, 50);
  /* a failed init leaves the registry empty, not half-filled */
  g_strfreev (config->plugins_load);
  config->plugins_load = g_strsplit ("missing", ",", -1);
  g_assert_false (crunch_functions_init (config, &error));
  g_assert_null (crunch_functions_lookup ("fib"));
  reset ();
}

/* A body with lone surrogate escapes (found by fuzz-args: json-glib's error quoted the bad bytes,
 * and a grammatical body of them gave a string that is not UTF-8): the strict check refuses it,
 * and the 400 message is valid UTF-8. */
static void
test_json_error_utf8 (void)
{
  static const gchar body[] = "{\"n\": 5, \"s\": \"`\\uDDDDDDDDDDDD01e9, \"f\": 0.25\"}";
  CrunchdFunction decl;
  const CrunchFunction *fn;
  g_autoptr (GError) error = NULL;

  reset ();
  decl = good ("f");
  g_assert_true (crunch_functions_add (&decl, "p", NULL));
  fn = crunch_functions_lookup ("f");
  g_assert_null (crunch_args_from_body (fn, body, strlen (body), &error));
  g_assert_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT);
  g_assert_true (g_utf8_validate (error->message, -1, NULL));
  g_assert_true (g_str_has_prefix (error->message, "f: the request body is not strict JSON "));
  reset (); /* the registry points at `decl`, on this stack */
}

/* run_batch records what reached it: how many calls, and their n. */
static guint batch_seen_n;
static gint64 batch_seen[8];

static void
echo_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
            CrunchdStatus *statuses)
{
  batch_seen_n = n;
  for (unsigned i = 0; i < n; i++) {
    batch_seen[i] = calls[i]->args[0].v.i;
    if (calls[i]->args[0].v.i == 9) {
      statuses[i] = crunchd_result_error (&results[i], "nine fails");
      continue;
    }
    /* statuses[i] left alone for 8: crunchd set it to CRUNCHD_ERROR */
    if (calls[i]->args[0].v.i != 8)
      statuses[i] = ok_run (calls[i], &results[i]);
  }
}

/* crunch_function_run_batch: identical calls of a pure function come once, a cancelled call or
 * one whose arguments do not match never reaches run_batch, one failing call fails alone, a
 * status left alone fails its call; a single call of a function with only run_batch is a batch of
 * one; bad batch declarations are refused. */
static void
test_run_batch (void)
{
  static CrunchdFunction decl;
  const CrunchFunction *fn;
  CrunchCancel cancels[6] = {{0}}, all = {0};
  const CrunchCancel *cp[6];
  GVariant *args[6];
  GBytes *results[6] = {NULL};
  GError *errors[6] = {NULL};
  static const gint64 ns[6] = {5, 5, 9, 7, 8, 3};
  g_autoptr (GBytes) one = NULL;
  g_autoptr (GError) error = NULL;
  CrunchdFunction bad;

  reset ();
  decl = good ("b");
  decl.run = NULL;
  decl.max_batch = 8;
  decl.max_delay = 0.01;
  decl.run_batch = echo_batch;
  g_assert_true (crunch_functions_add (&decl, "p", NULL));
  fn = crunch_functions_lookup ("b");
  g_assert_cmpuint (fn->max_batch, ==, 8);
  g_assert_cmpint (fn->max_delay_us, ==, 10000);
  for (guint i = 0; i < 6; i++) {
    args[i] = g_variant_ref_sink (g_variant_new ("(xs)", ns[i], "ab"));
    cp[i] = &cancels[i];
  }
  g_variant_unref (args[5]);
  args[5] = g_variant_ref_sink (g_variant_new ("(xs)", (gint64)11, "ab")); /* out of bounds */
  cancels[3].flag = CRUNCHD_CANCELLED;
  crunch_function_run_batch (fn, 6, args, cp, &all, results, errors);
  g_assert_cmpuint (batch_seen_n, ==, 3); /* 5 (once), 9, 8 */
  g_assert_cmpint (batch_seen[0], ==, 5);
  g_assert_cmpint (batch_seen[1], ==, 9);
  g_assert_cmpint (batch_seen[2], ==, 8);
  g_assert_cmpmem (g_bytes_get_data (results[0], NULL), g_bytes_get_size (results[0]), "5 ab", 4);
  g_assert_true (results[1] == results[0]); /* the same answer, referenced twice */
  g_assert_error (errors[2], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED);
  g_assert_cmpstr (errors[2]->message, ==, "b: nine fails");
  g_assert_error (errors[3], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED);
  g_assert_error (errors[4], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED);
  g_assert_cmpstr (errors[5]->message, ==, "b: arguments (xs) do not match the declaration");
  for (guint i = 0; i < 6; i++) {
    g_clear_pointer (&results[i], g_bytes_unref);
    g_clear_error (&errors[i]);
    g_variant_unref (args[i]);
  }
  /* one call alone goes through run_batch too */
  args[0] = g_variant_ref_sink (g_variant_new ("(xs)", (gint64)4, "ab"));
  one = crunch_function_run (fn, args[0], &cancels[0], &error);
  g_assert_no_error (error);
  g_assert_cmpuint (batch_seen_n, ==, 1);
  g_assert_cmpmem (g_bytes_get_data (one, NULL), g_bytes_get_size (one), "4 ab", 4);
  g_variant_unref (args[0]);
  /* declarations */
  bad = good ("c");
  bad.max_batch = 4;
  g_assert_false (crunch_functions_add (&bad, "p", &error));
  g_assert_cmpstr (error->message, ==, "plugin 'p': function 'c': max_batch > 1 needs run_batch");
  g_clear_error (&error);
  bad.run_batch = echo_batch;
  bad.max_batch = 2000;
  g_assert_false (crunch_functions_add (&bad, "p", &error));
  g_assert_cmpstr (error->message, ==, "plugin 'p': function 'c': max_batch must be at most 1024");
  g_clear_error (&error);
  bad.max_batch = 4;
  bad.max_delay = 2;
  g_assert_false (crunch_functions_add (&bad, "p", &error));
  g_assert_cmpstr (error->message, ==,
                   "plugin 'p': function 'c': max_delay must be in [0, 1] seconds");
  g_clear_error (&error);
  bad.max_delay = NAN;
  g_assert_false (crunch_functions_add (&bad, "p", &error));
  reset ();
}

/* The decoder (decode.c) gives what crunch_args_from_body() and crunch_args_from_job_body() give,
 * calls each `done` once from its own thread, and decodes everything queued before free returns:
 * a request waiting for it is never dropped at shutdown. */
typedef struct {
  GMutex lock;
  guint done;
  gboolean on_caller;
} DecodeSeen;

static GThread *decode_caller;

static void
decode_done (CrunchDecode *decode, gpointer data)
{
  DecodeSeen *seen = data;

  g_mutex_lock (&seen->lock);
  seen->done++;
  seen->on_caller |= g_thread_self () == decode_caller;
  g_mutex_unlock (&seen->lock);
}

static void
test_decoder (void)
{
  static const gchar *bodies[] = {
      "{\"n\": 7, \"s\": \"xy\"}",
      "{\"n\": 70}",
      "{\"fn\": \"f\", \"args\": {\"s\": \"q\"}}",
      "{\"fn\": \"g\"}",
  };
  enum { N = 64 };
  CrunchDecode decodes[N];
  DecodeSeen seen = {0};
  CrunchDecoder *decoder;
  CrunchdFunction decl;
  const CrunchFunction *fn;

  reset ();
  decl = good ("f");
  g_assert_true (crunch_functions_add (&decl, "p", NULL));
  fn = crunch_functions_lookup ("f");
  decode_caller = g_thread_self ();
  g_mutex_init (&seen.lock);
  decoder = crunch_decoder_new (2, 5);
  for (guint i = 0; i < N; i++) {
    const gchar *body = bodies[i % G_N_ELEMENTS (bodies)];
    decodes[i] = (CrunchDecode){.body = body,
                                .len = strlen (body),
                                .fn = i % 4 < 2 ? fn : NULL,
                                .done = decode_done,
                                .data = &seen};
    crunch_decoder_submit (decoder, &decodes[i]);
  }
  crunch_decoder_free (decoder);
  g_assert_cmpuint (seen.done, ==, N);
  g_assert_false (seen.on_caller);
  for (guint i = 0; i < N; i += 4) {
    g_autofree gchar *a = g_variant_print (decodes[i].args, FALSE);
    g_autofree gchar *c = g_variant_print (decodes[i + 2].args, FALSE);
    g_assert_cmpstr (a, ==, "(7, 'xy')");
    g_assert_false (g_variant_is_floating (decodes[i].args));
    g_assert_null (decodes[i + 1].args);
    g_assert_cmpstr (decodes[i + 1].error->message, ==,
                     "f: argument 'n' must be an integer from 0 to 10, got 70");
    g_assert_true (decodes[i + 2].fn == fn);
    g_assert_cmpstr (c, ==, "(3, 'q')");
    g_assert_null (decodes[i + 3].args);
    g_assert_cmpstr (decodes[i + 3].error->message, ==, "no such function 'g'");
  }
  for (guint i = 0; i < N; i++)
    crunch_decode_clear (&decodes[i]);
  g_mutex_clear (&seen.lock);
  reset ();
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/functions/bad-declarations", test_bad_declarations);
  g_test_add_func ("/functions/duplicate", test_duplicate);
  g_test_add_func ("/functions/abi-version", test_abi_version);
  g_test_add_func ("/functions/progress-report", test_progress_report);
  g_test_add_func ("/functions/run-and-key", test_run_and_key);
  g_test_add_func ("/functions/run-batch", test_run_batch);
  g_test_add_func ("/functions/builtins", test_builtins);
  g_test_add_func ("/functions/json-error-utf8", test_json_error_utf8);
  g_test_add_func ("/functions/decoder", test_decoder);
  return g_test_run ();
}
