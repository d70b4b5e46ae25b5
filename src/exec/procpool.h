/* procpool.h - a pool of worker processes of one program, speaking the worker protocol (wire.h).
 *
 * crunch_procpool_call() is a blocking call made by a thread that runs jobs (the local
 * executor's threads, crunchd-worker's NATS threads), so admission, fairness, coalescing,
 * deadlines and the jobs API apply unchanged: a job runs in a process instead of in the thread.
 * Each process runs one call (or one batch, crunch_procpool_call_batch()) at a time; processes
 * start lazily, up to `size`. A crash fails that
 * call alone (502), a cancelled call that does not stop within kill_grace gets its process
 * killed (SIGKILL) and replaced, a function that crashes 5 times within 60 s is unavailable
 * (503) for 60 s. */
#pragma once

#include <glib.h>

#include "functions.h"
#include "wire.h"

typedef struct {
  const gchar *program; /* its name in logs and metrics */
  gchar **argv;         /* copied */
  guint size;           /* processes at most */
  gdouble kill_grace;   /* seconds */
  gdouble start_timeout;
  guint memory_limit_mb; /* RLIMIT_AS of each process, 0 = none */
  gint nice;             /* of each process, as crunchd's worker threads ([executor] nice) */
  guint max_jobs;        /* per process before it is replaced, 0 = no limit */
  guint retries;         /* 0 or 1: retry a pure function's crashed call on a fresh process */
} CrunchProcPoolSettings;

typedef struct CrunchProcPool CrunchProcPool;

/* [executor] settings for a pool of `program` (argv copied by crunch_procpool_new()). */
void crunch_procpool_settings_from_config (const CrunchConfig *config, const gchar *program,
                                           gchar **argv, CrunchProcPoolSettings *settings);
CrunchProcPool *crunch_procpool_new (const CrunchProcPoolSettings *settings);
/* Start one process now and return its hello (NULL with an error naming the program); the
 * process stays in the pool. For program plugins at start-up. */
CrunchWireHello *crunch_procpool_start (CrunchProcPool *pool, GError **error);
/* A CrunchRunHook: `data` is the pool. */
GBytes *crunch_procpool_call (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel,
                              gpointer data, GError **error);
/* A CrunchBatchHook (`data` is the pool): n calls of a function whose worker declared
 * max_batch > 1, in one batch frame on one process, with the same cancel, kill and crash rules as
 * a call (a crash fails every call of the batch, 502); each call's progress goes to its own
 * cancel. A batch too large for one frame runs as single calls. */
void crunch_procpool_call_batch (const CrunchFunction *fn, guint n, GVariant *const *args,
                                 const CrunchCancel *const *cancels, const CrunchCancel *all,
                                 GBytes **results, GError **errors, gpointer data);
void crunch_procpool_set_size (CrunchProcPool *pool, guint size);
/* Closes every process's stdin, waits kill_grace for them to exit, SIGKILLs the rest. Only
 * when no call runs. */
void crunch_procpool_free (CrunchProcPool *pool);

/* A program plugin ([plugins] load): a pool of its processes, one started now; its hello's
 * functions registered with crunch_procpool_call. FALSE with an error naming the plugin and
 * the program (crunchd exits 78). */
gboolean crunch_procpool_load_program (const CrunchConfig *config, const gchar *name,
                                       const gchar *path, GError **error);
/* [executor] backend = processes: starts one process of the pool (crunchd-worker --stdio), checks
 * that it declares every function of the registry that runs in-thread now, and makes them all
 * run in the pool. FALSE with an error naming the program or the missing function. */
gboolean crunch_procpool_host_functions (CrunchProcPool *pool, GError **error);
/* Reload: [executor] threads -> the size of every pool. */
void crunch_procpools_resize (guint size);

/* Every pool's figures, as Prometheus families (a CrunchMetricsSource render). */
void crunch_procpools_render_metrics (GString *out, gpointer data);
/* One line for the status page: processes alive/busy, unavailable functions. */
gchar *crunch_procpools_summary (void);
/* SIGHUP: functions marked unavailable are tried again. */
void crunch_procpools_forgive (void);
/* Shutdown past shutdown_timeout (running jobs are being cancelled): a process still starting is
 * abandoned, whatever its waiting call's cancel reason (any thread). */
void crunch_procpools_stopping (void);
/* Exit: frees every pool still open. */
void crunch_procpools_free_all (void);
