/* executor-nats.h - the NATS executor: jobs run on crunchd-worker processes (see nats-link.h). */
#pragma once

#include "config.h"
#include "executor.h"

/* Connects (or keeps trying in the background) to [nats] servers. `settings` go to the local
 * pool used when [nats] fallback = local. NULL + error only on settings nats.c refuses. */
CrunchExecutor *crunch_nats_executor_new (const CrunchConfig *config,
                                          const CrunchExecutorSettings *settings,
                                          CrunchJobFunc finished, gpointer finished_data,
                                          GError **error);

typedef struct {
  guint64 jobs;        /* submitted */
  guint64 published;   /* job messages sent, retries included */
  guint64 retries;     /* attempts after the first lost one (timeout, worker stopping) */
  guint64 busy;        /* no free worker, but workers exist: tried again shortly */
  guint64 no_workers;  /* no worker at all: answered 503 or run locally */
  guint64 fallbacks;   /* run by the local pool */
  guint64 late;        /* final replies for jobs already answered: dropped */
  guint64 disconnects; /* times the NATS connection was lost */
  gboolean connected;
} CrunchNatsStats;

void crunch_nats_executor_get_stats (CrunchExecutor *self, CrunchNatsStats *stats);
/* Frees nats.c's global state; call once at exit, after every executor is freed. */
void crunch_nats_library_close (void);
