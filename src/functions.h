/* functions.h - the registry of compute functions.
 *
 * A compute function knows nothing of HTTP: it parses its argument text into a GVariant, runs on
 * a worker thread while checking a cancellation flag, and returns its result as bytes. */
#pragma once

#include <glib.h>

#include "config.h"

#define CRUNCH_FUNCTION_ERROR (crunch_function_error_quark ())
GQuark crunch_function_error_quark (void);
typedef enum {
  CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT, /* -> 400 */
  CRUNCH_FUNCTION_ERROR_CANCELLED,        /* the run saw the cancel flag */
  CRUNCH_FUNCTION_ERROR_FAILED,           /* -> 500 */
} CrunchFunctionError;

/* Set (to nonzero) by any thread to ask a running function to stop. Functions read it with
 * crunch_cancelled(), a plain relaxed load, cheap enough for a hot loop. */
typedef struct {
  gint flag;
} CrunchCancel;

static inline gboolean
crunch_cancelled (const CrunchCancel *cancel)
{
  return __atomic_load_n (&cancel->flag, __ATOMIC_RELAXED) != 0;
}

typedef struct CrunchFunction CrunchFunction;
struct CrunchFunction {
  const gchar *name;
  gboolean pure; /* identical calls may share one computation */
  /* Parse the argument text (the rest of the path); NULL + INVALID_ARGUMENT on bad input. */
  GVariant *(*parse) (const CrunchFunction *fn, const gchar *text, GError **error);
  /* Run on a worker thread. Returns the result or NULL with an error (CANCELLED, FAILED). */
  GBytes *(*run) (GVariant *args, const CrunchCancel *cancel, GError **error);
  const gchar *content_type; /* of the result */
  /* Live settings, applied by crunch_functions_configure(); read with atomics. */
  void (*configure) (CrunchFunction *fn, const CrunchConfig *config);
  gint limit;        /* function-specific bound (fib: max_n) */
  gint64 timeout_us; /* default deadline */
};

/* The identity of a call, "name printed-args", for coalescing and caching; NULL if the function
 * is impure (its calls may not be shared). */
gchar *crunch_function_key (const CrunchFunction *fn, GVariant *args);

void crunch_functions_init (const CrunchConfig *config);
void crunch_functions_configure (const CrunchConfig *config);
const CrunchFunction *crunch_functions_lookup (const gchar *name);

/* fib.c */
extern CrunchFunction crunch_fib_function;
guint64 crunch_fib (guint n, const CrunchCancel *cancel);
