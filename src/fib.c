/* fib.c - the built-in `fib` function: naive doubly recursive Fibonacci.
 *
 * It is exponential on purpose: it stands for any slow computation (a model, a simulation).
 * No memo, no closed form. */
#include <string.h>

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
  return g_variant_new_uint32 ((guint32)n);
}

static GBytes *
fib_run (GVariant *args, const CrunchCancel *cancel, GError **error)
{
  guint64 value = crunch_fib (g_variant_get_uint32 (args), cancel);

  if (crunch_cancelled (cancel)) {
    g_set_error_literal (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
                         "fib: cancelled");
    return NULL;
  }
  gchar *text = g_strdup_printf ("%" G_GUINT64_FORMAT, value);
  return g_bytes_new_take (text, strlen (text));
}

static void
fib_configure (CrunchFunction *fn, const CrunchConfig *config)
{
  g_atomic_int_set (&fn->limit, (gint)config->fib_max_n);
  __atomic_store_n (&fn->timeout_us, (gint64)(config->fib_timeout * G_USEC_PER_SEC),
                    __ATOMIC_RELAXED);
}

CrunchFunction crunch_fib_function = {
    .name = "fib",
    .pure = TRUE,
    .parse = fib_parse,
    .run = fib_run,
    .content_type = "text/plain; charset=utf-8",
    .configure = fib_configure,
};
