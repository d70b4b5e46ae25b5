/* fib.c - the built-in `fib` function: naive doubly recursive Fibonacci.
 *
 * It is exponential on purpose: it stands for any slow computation (a model, a simulation).
 * No memo, no closed form. It is declared and registered through the public plugin ABI like any
 * plugin function (GET /fn/fib?n=30); the legacy route /fib/N only adds a path parser that
 * produces the same canonical argument tuple, with its historical error messages. */
#include <stdlib.h>
#include <string.h>

#include "fib.h"
#include "functions.h"

/* Below this n a subtree takes well under a millisecond, so checking the cancel flag only above
 * it keeps the inner recursion free of loads and still stops fib(60) within microseconds. */
#define CANCEL_CHECK_MIN_N 24

static guint64
fib_rec (guint n, const CrunchCancel *cancel)
{
  if (n < 2)
    return n;
  if (n >= CANCEL_CHECK_MIN_N && crunch_cancelled (cancel))
    return 0;
  return fib_rec (n - 1, cancel) + fib_rec (n - 2, cancel);
}

guint64
crunch_fib (guint n, const CrunchCancel *cancel)
{
  return fib_rec (n, cancel);
}

static CrunchdStatus
fib_run (const CrunchdCall *call, CrunchdResult *result)
{
  /* CrunchCancel is a struct around the very int the call points to */
  const CrunchCancel *cancel = (const CrunchCancel *)call->cancel;
  guint64 value = crunch_fib ((guint)call->args[0].v.i, cancel);

  if (crunchd_cancelled (call))
    return CRUNCHD_CANCELLED;
  result->data = g_strdup_printf ("%" G_GUINT64_FORMAT, value);
  result->len = strlen (result->data);
  result->free_data = g_free;
  return CRUNCHD_OK;
}

static const CrunchdArg fib_args[] = {
    {"n", CRUNCHD_ARG_INT, 0, 93, NULL, "index in the sequence; at most [fib] max_n"},
};

static const CrunchdFunction fib_function = {
    .name = "fib",
    .description = "the n-th Fibonacci number, computed the slow way",
    .args = fib_args,
    .n_args = G_N_ELEMENTS (fib_args),
    .pure = 1,
    .deadline = 30,
    .content_type = "text/plain; charset=utf-8",
    .run = fib_run,
};

static int
fib_init (CrunchdHost *host)
{
  return host->register_function (host, &fib_function);
}

static const CrunchdPlugin fib_plugin = {CRUNCHD_PLUGIN_ABI_VERSION, "builtin", "1.0", fib_init};

/* /fib/N: the path text, with the messages clients of /fib/N have always seen. */
static GVariant *
fib_parse (const CrunchFunction *fn, const gchar *text, GError **error)
{
  guint max_n = (guint)g_atomic_int_get (&fn->limit);
  guint64 n;

  if (*text == '\0') {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "fib: missing N: use /fib/N with 0 <= N <= %u", max_n);
    return NULL;
  }
  if (strspn (text, "0123456789") != strlen (text)) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "fib: N must be a non-negative integer, got '%.64s'", text);
    return NULL;
  }
  if (!g_ascii_string_to_unsigned (text, 10, 0, max_n, &n, NULL)) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "fib: N = %.64s exceeds the limit max_n = %u", text, max_n);
    return NULL;
  }
  GVariant *n_value = g_variant_new_int64 ((gint64)n);
  return g_variant_new_tuple (&n_value, 1);
}

static void
fib_configure (CrunchFunction *fn, const CrunchConfig *config)
{
  gdouble max = config->fib.max_n;

  g_atomic_int_set (&fn->limit, (gint)config->fib.max_n);
  __atomic_store (&fn->max[0], &max, __ATOMIC_RELAXED);
  __atomic_store_n (&fn->timeout_us, (gint64)(config->fib.timeout * G_USEC_PER_SEC),
                    __ATOMIC_RELAXED);
}

const CrunchBuiltin crunch_fib_builtin = {
    .plugin = &fib_plugin,
    .function = "fib",
    .parse = fib_parse,
    .configure = fib_configure,
};
