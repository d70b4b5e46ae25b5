/* crunchd-plugin.h - the C ABI between crunchd and the compute functions it serves.
 *
 * A plugin is a shared object that exports one symbol, `crunchd_plugin` (define it with
 * CRUNCHD_PLUGIN_DEFINE). crunchd reads its `abi_version` first and refuses a plugin built for
 * a version it does not load (see "Versions" below), then calls `init`, which registers functions
 * with `host->register_function`. A function declares its arguments (name, type, bounds); crunchd
 * validates every request against them, so `run` only ever sees well-typed values inside their
 * bounds, in the declared order.
 *
 * `run` is called on a worker thread, possibly on several threads at once: it must be reentrant.
 * It checks crunchd_cancelled() now and then (the deadline passed, the client went away, the job
 * was deleted, the server is stopping) and returns CRUNCHD_CANCELLED soon after it turns true.
 * It may report how far it got with crunchd_progress() (ABI 2), as often as it likes.
 * While its fast lane answers requests, crunchd interrupts a worker thread that computes every
 * [executor] timeslice (a signal, SIGRTMIN, SA_RESTART) so that its HTTP threads get a CPU soon: a
 * blocking call that the kernel does not restart (poll, select, nanosleep, sleep) may then return
 * early with EINTR. Loop on EINTR, as code that lives with signals does (crunchd.ini(5),
 * timeslice), and leave SIGRTMIN alone (no handler of your own, do not block it).
 * A function that is cheaper per call when it computes many calls at once (a vectorised pass, a
 * model's forward pass, one query for many keys) may also set `run_batch` with `max_batch` and
 * `max_delay` (ABI 2): crunchd then groups its queued calls and passes up to max_batch of them in
 * one call of `run_batch` (see CrunchdRunBatchFunc).
 * The header needs only the C standard library; a plugin never links against crunchd.
 *
 * Versions: a plugin records the ABI it was built for. crunchd loads plugins built for any
 * version from CRUNCHD_PLUGIN_ABI_VERSION_MIN to its own, and refuses newer ones. Structures only
 * grow at their end, and crunchd never reads a member that the plugin's version lacks, so a
 * version-1 plugin keeps working unchanged; it just cannot report progress. */
#ifndef CRUNCHD_PLUGIN_H
#define CRUNCHD_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever the structures below grow or change. 2 added CrunchdCall.progress and
 * CrunchdFunction.max_batch, max_delay and run_batch. */
#define CRUNCHD_PLUGIN_ABI_VERSION 2u
/* The oldest version this header's crunchd still loads. */
#define CRUNCHD_PLUGIN_ABI_VERSION_MIN 1u

typedef enum {
  CRUNCHD_ARG_INT = 1, /* 64-bit signed; bounds: value range (exact up to 2^53) */
  CRUNCHD_ARG_FLOAT,   /* double, finite; bounds: value range */
  CRUNCHD_ARG_STRING,  /* UTF-8, NUL-terminated; bounds: length in characters */
  CRUNCHD_ARG_BYTES,   /* base64 on the wire, raw bytes in `run`; bounds: length in bytes */
} CrunchdArgType;

typedef struct {
  const char *name; /* [a-z0-9_]+, unique within the function */
  CrunchdArgType type;
  double min, max; /* inclusive; see CrunchdArgType for what they bound */
  /* Text used when the argument is absent, written as in a query string (bytes: base64);
   * NULL makes the argument required. */
  const char *default_value;
  const char *description; /* one line, for humans */
} CrunchdArg;

typedef struct {
  CrunchdArgType type;
  union {
    int64_t i;
    double f;
    struct {
      const char *data; /* strings are also NUL-terminated */
      size_t len;       /* in bytes */
    } s;
  } v;
} CrunchdValue;

typedef struct CrunchdCall CrunchdCall;
struct CrunchdCall {
  const CrunchdValue *args; /* one per declared argument, in declared order */
  unsigned n_args;
  void *user_data;   /* CrunchdFunction.user_data */
  const int *cancel; /* read it with crunchd_cancelled() */
  /* ABI 2: call it through crunchd_progress(). */
  void (*progress) (const CrunchdCall *call, double fraction, const char *message);
  void *host; /* crunchd's */
};

typedef enum {
  CRUNCHD_OK = 0,
  CRUNCHD_ERROR = 1,     /* -> 500 with result->error as the message */
  CRUNCHD_CANCELLED = 2, /* stopped because crunchd_cancelled() said so */
} CrunchdStatus;

typedef struct {
  void *data; /* the result body; crunchd frees it with `free_data` */
  size_t len;
  void (*free_data) (void *data); /* NULL: free() */
  char error[256];                /* for CRUNCHD_ERROR; see crunchd_result_error() */
} CrunchdResult;

typedef CrunchdStatus (*CrunchdRunFunc) (const CrunchdCall *call, CrunchdResult *result);
/* ABI 2: computes n calls at once (1 <= n <= max_batch), each with its own arguments, cancel flag
 * and progress: calls[i] is answered by results[i] and statuses[i] (CRUNCHD_OK, or CRUNCHD_ERROR
 * with results[i].error, failing that call alone, or CRUNCHD_CANCELLED). crunchd zeroes results
 * and sets every status to CRUNCHD_ERROR before the call, so a status left alone fails its call.
 * A call whose client has gone has its flag set while the others go on: skip it if that is
 * cheap; once every flag is set, return soon. Identical calls of a pure function come once. */
typedef void (*CrunchdRunBatchFunc) (const CrunchdCall *const *calls, unsigned n,
                                     CrunchdResult *results, CrunchdStatus *statuses);

typedef struct {
  const char *name; /* [a-z0-9_]+, unique in the server: /fn/<name> */
  const char *description;
  const CrunchdArg *args;
  unsigned n_args;
  /* Nonzero: the result depends only on the arguments, so identical concurrent calls may share
   * one computation. */
  int pure;
  double deadline;          /* seconds a call may take before it is cancelled (504) */
  const char *content_type; /* of every result, e.g. "text/plain; charset=utf-8", "image/png" */
  CrunchdRunFunc run; /* one call; may be NULL when run_batch is set (it then gets n = 1) */
  void *user_data;
  /* ABI 2, dynamic batching. max_batch > 1 needs run_batch: while calls wait for a worker,
   * crunchd hands a free worker up to max_batch of them (in its fair order across clients), and
   * when fewer wait while other calls of the function are under way, waits up to max_delay
   * seconds (0 to 1) for more, never long enough to make a call miss its deadline. A lone call
   * runs at once. 0 or 1: no batching. */
  unsigned max_batch; /* at most 1024 */
  double max_delay;
  CrunchdRunBatchFunc run_batch;
} CrunchdFunction;

typedef struct CrunchdHost CrunchdHost;
struct CrunchdHost {
  unsigned abi_version; /* the host's CRUNCHD_PLUGIN_ABI_VERSION */
  /* Copies nothing: `fn` and everything it points to must stay valid while the plugin is loaded
   * (static storage is the usual choice). Returns 0, or -1 with a reason logged by crunchd (bad
   * declaration, duplicate name); init should then return -1. */
  int (*register_function) (CrunchdHost *host, const CrunchdFunction *fn);
  void *priv; /* crunchd's */
};

typedef struct {
  unsigned abi_version; /* must stay the first member: CRUNCHD_PLUGIN_ABI_VERSION */
  const char *name;
  const char *version;
  int (*init) (CrunchdHost *host); /* 0 on success */
} CrunchdPlugin;

#define CRUNCHD_PLUGIN_SYMBOL "crunchd_plugin"

/* Exports the entry point: CRUNCHD_PLUGIN_DEFINE ("primes", "1.0", primes_init); */
#define CRUNCHD_PLUGIN_DEFINE(name, version, init)                                                 \
  __attribute__ ((visibility ("default")))                                                         \
  const CrunchdPlugin crunchd_plugin = {CRUNCHD_PLUGIN_ABI_VERSION, (name), (version), (init)}

static inline int
crunchd_cancelled (const CrunchdCall *call)
{
  return __atomic_load_n (call->cancel, __ATOMIC_RELAXED) != 0;
}

/* ABI 2: how far the call has got, `fraction` from 0 to 1 (never going back), with an optional
 * one-line `message` (UTF-8, copied; NULL for none), e.g. "row 42 of 100". Cheap enough to call on
 * every iteration: crunchd keeps at most a few reports a second per call and drops the rest, so
 * the last report before a long silence may be one it dropped. Only while `run` has not
 * returned (also from threads of the function's own). Watchers see it in
 * GET /jobs/ID and as `progress` events of GET /jobs/ID/events. */
static inline void
crunchd_progress (const CrunchdCall *call, double fraction, const char *message)
{
  call->progress (call, fraction, message);
}

__attribute__ ((format (printf, 2, 3))) static inline CrunchdStatus
crunchd_result_error (CrunchdResult *result, const char *format, ...)
{
  va_list ap;

  va_start (ap, format);
  vsnprintf (result->error, sizeof result->error, format, ap);
  va_end (ap);
  return CRUNCHD_ERROR;
}

#ifdef __cplusplus
}
#endif

#endif /* CRUNCHD_PLUGIN_H */
