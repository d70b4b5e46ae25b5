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

/* Frees nats.c's global state; call once at exit, after every executor is freed. */
void crunch_nats_library_close (void);
