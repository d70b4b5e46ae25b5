/* functions.h - the registry of compute functions.
 *
 * Every function, the built-in fib included, is declared through the public plugin ABI
 * (crunchd/crunchd-plugin.h) and registered here by crunch_plugins_register(). A compute function
 * knows nothing of HTTP: its arguments arrive as a canonical GVariant tuple (one child per declared
 * argument, in declared order: int x, float d, string s, bytes ay), it runs on a worker thread
 * while checking a cancellation flag, and returns its result as bytes. Identical calls have equal
 * tuples, so (name, tuple) is the coalescing key. */
#pragma once

#include <glib.h>

#include "config.h"
#include "crunchd/crunchd-plugin.h"

#define CRUNCH_FUNCTION_ERROR (crunch_function_error_quark ())
GQuark crunch_function_error_quark (void);
typedef enum {
  CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT, /* -> 400 */
  CRUNCH_FUNCTION_ERROR_CANCELLED,        /* the run saw the cancel flag */
  CRUNCH_FUNCTION_ERROR_FAILED,           /* -> 500 */
  CRUNCH_FUNCTION_ERROR_REGISTRATION,     /* bad declaration or duplicate name */
  /* Functions that run in worker processes (procpool.c): */
  CRUNCH_FUNCTION_ERROR_CRASHED,       /* its process died under it -> 502 */
  CRUNCH_FUNCTION_ERROR_PROTOCOL,      /* its process broke the worker protocol -> 502 */
  CRUNCH_FUNCTION_ERROR_UNAVAILABLE,   /* crash-looping, or no process could start -> 503 */
  CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY, /* ran past [executor] memory_limit -> 500 */
} CrunchFunctionError;

/* Where a run's progress reports go (crunchd_progress(), a worker's "progress" frame or NATS
 * message): called on the thread that runs the call, or the thread that reads its worker. */
typedef void (*CrunchProgressFunc) (gpointer data, gdouble fraction, const gchar *message);

/* The run's side channel. `flag` is set (to nonzero) by any thread to ask a running function to
 * stop. Functions read it with crunch_cancelled(), a plain relaxed load, cheap enough for a hot
 * loop. */
typedef struct {
  gint flag;
  /* When the caller stops waiting (monotonic, 0 = not known), set before the run: for
   * functions that run elsewhere and pass it on (the worker protocol's "deadline"). */
  gint64 deadline_us;
  /* Set before the run (NULL: reports are dropped). crunch_progress_report() throttles and
   * checks what reaches it. */
  CrunchProgressFunc progress;
  gpointer progress_data;
} CrunchCancel;

/* At most this many progress reports a second per run pass on; the others are dropped. */
#define CRUNCH_PROGRESS_PER_SECOND 5
/* Longest progress message passed on, in bytes (cut at a character boundary). */
#define CRUNCH_PROGRESS_MESSAGE_MAX 200
/* The largest max_batch a function may declare. */
#define CRUNCH_MAX_BATCH 1024

/* Whether a report may pass now, given when the last one did (*last_us, monotonic; updated).
 * `relayed`: the reports come from a worker that throttled them already (a program's frames, a
 * NATS worker's messages): the bound only guards against a flood, so it allows a little jitter
 * (a fifth) instead of dropping every other report. No value is exempt: the outcome follows the
 * last report anyway. */
gboolean crunch_progress_due (gint64 *last_us, gboolean relayed);
/* A progress report from a function or a worker: a fraction outside [0, 1] is clamped, NaN
 * dropped; the message is made valid UTF-8 on one line and cut to CRUNCH_PROGRESS_MESSAGE_MAX.
 * Passes it to cancel->progress. Throttling is the caller's (crunch_progress_due()). */
void crunch_progress_report (const CrunchCancel *cancel, gdouble fraction, const gchar *message);

static inline gboolean
crunch_cancelled (const CrunchCancel *cancel)
{
  return __atomic_load_n (&cancel->flag, __ATOMIC_RELAXED) != 0;
}

typedef struct CrunchFunction CrunchFunction;
/* Runs a call somewhere other than in this thread (a worker process); same contract as
 * crunch_function_run(). */
typedef GBytes *(*CrunchRunHook) (const CrunchFunction *fn, GVariant *args,
                                  const CrunchCancel *cancel, gpointer data, GError **error);
/* Runs n calls of a batch function at once elsewhere (a worker process): results[i] for a call
 * that succeeded, errors[i] otherwise (both start NULL), as crunch_function_run_batch(). */
typedef void (*CrunchBatchHook) (const CrunchFunction *fn, guint n, GVariant *const *args,
                                 const CrunchCancel *const *cancels, const CrunchCancel *all,
                                 GBytes **results, GError **errors, gpointer data);
struct CrunchFunction {
  const CrunchdFunction *decl; /* owned by the plugin, which is never unloaded */
  const gchar *name;           /* decl->name */
  gchar *plugin;               /* who registered it, for messages */
  gboolean pure;               /* identical calls may share one computation */
  const gchar *content_type;   /* of the result */
  GVariant **defaults;         /* per argument: parsed default_value, or NULL if required */
  gdouble *max;                /* per argument: live upper bound (atomic; builtins may lower it) */
  gint64 timeout_us;           /* default deadline (atomic) */
  /* Built-ins only: the legacy path syntax (/fib/N) -> the same canonical tuple, and live
   * settings from the configuration. NULL for plugin functions. */
  GVariant *(*parse) (const CrunchFunction *fn, const gchar *text, GError **error);
  void (*configure) (CrunchFunction *fn, const CrunchConfig *config);
  gint limit; /* function-specific live bound (fib: max_n) */
  /* Set before serving for functions that run elsewhere (program plugins, and every function
   * under [executor] backend = processes); NULL: decl->run in the calling thread. */
  CrunchRunHook run;
  gpointer run_data;
  /* Dynamic batching (decl ABI 2, or a program's declaration): max_batch > 1 lets the scheduler
   * group queued calls; run_batch (with run_data) runs a group elsewhere, NULL: decl->run_batch
   * in the calling thread. */
  guint max_batch;
  gint64 max_delay_us;
  CrunchBatchHook run_batch;
  CrunchdRunBatchFunc batch_entry; /* decl->run_batch, read only from ABI 2 declarations */
};

/* A built-in: a plugin linked into crunchd, plus its legacy hooks. */
typedef struct {
  const CrunchdPlugin *plugin;
  const gchar *function; /* the function the hooks belong to */
  GVariant *(*parse) (const CrunchFunction *fn, const gchar *text, GError **error);
  void (*configure) (CrunchFunction *fn, const CrunchConfig *config);
} CrunchBuiltin;

/* The identity of a call, "name printed-args", for coalescing and caching; NULL if the function
 * is impure (its calls may not be shared). The args tuple is canonical (args.c), so a call by
 * /fib/N, /fn/fib?n=N, POST /fn/fib or POST /jobs has the same key. */
gchar *crunch_function_key (const CrunchFunction *fn, GVariant *args);
/* The GVariant type string of the function's arguments: a flat tuple, e.g. "(xd)". */
gchar *crunch_function_args_type (const CrunchFunction *fn);

/* Registers the built-ins, loads [plugins] load from [plugins] dir, applies live settings. On
 * error (naming the plugin) the registry is left empty. Call once, before serving. */
gboolean crunch_functions_init (const CrunchConfig *config, GError **error);
/* programs = FALSE: program plugins are skipped (crunchd-worker --stdio hosts C plugins only);
 * TRUE: each is started, and its functions run in its processes (procpool.c). */
gboolean crunch_functions_init_full (const CrunchConfig *config, gboolean programs, GError **error);
void crunch_functions_configure (const CrunchConfig *config);
void crunch_functions_reset (void); /* tests */
const CrunchFunction *crunch_functions_lookup (const gchar *name);
/* Registered names, in registration order (NULL-terminated, free with g_free only). */
const gchar **crunch_functions_list (void);

/* Validates the declaration and adds it; `plugin` names the registrant in errors. */
gboolean crunch_functions_add (const CrunchdFunction *decl, const gchar *plugin, GError **error);
/* The same for a C plugin built for ABI `abi`: members a version lacks are not read. */
gboolean crunch_functions_add_abi (const CrunchdFunction *decl, guint abi, const gchar *plugin,
                                   GError **error);
/* The same for a declaration without decl->run (a program plugin's): `run` runs its calls. */
gboolean crunch_functions_add_hooked (const CrunchdFunction *decl, const gchar *plugin,
                                      CrunchRunHook run, gpointer data, GError **error);
/* Start-up, before serving: every function without a hook runs through `run` from now on
 * ([executor] backend = processes). */
void crunch_functions_run_elsewhere (CrunchRunHook run, gpointer data);
/* Start-up, before serving: the batches of `name` (a function with max_batch > 1 and a run hook)
 * run through `run_batch`, called with the run hook's data. FALSE (nothing changed) if there is
 * no such function, it takes no batches or it has no run hook. */
gboolean crunch_functions_hook_batch (const gchar *name, CrunchBatchHook run_batch);

gdouble crunch_function_arg_max (const CrunchFunction *fn, guint i);
/* Runs on a worker thread: the tuple becomes CrunchdValues, the result a GBytes. NULL with
 * CANCELLED or FAILED otherwise. */
GBytes *crunch_function_run (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel,
                             GError **error);
/* Runs n calls at once (fn->max_batch > 1): fn->run_batch, decl->run_batch, or one after another.
 * results[i] for a call that succeeded, errors[i] (CANCELLED, FAILED, ...) otherwise; both arrays
 * start NULL. `all` is set when every call is cancelled (the batch may stop). Identical calls of
 * a pure function are computed once. */
void crunch_function_run_batch (const CrunchFunction *fn, guint n, GVariant *const *args,
                                const CrunchCancel *const *cancels, const CrunchCancel *all,
                                GBytes **results, GError **errors);

/* fib.c */
extern const CrunchBuiltin crunch_fib_builtin;
guint64 crunch_fib (guint n, const CrunchCancel *cancel);
