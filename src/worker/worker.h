/* worker.h - crunchd-worker: runs jobs that crunchd front ends publish on NATS. */
#pragma once

#include <glib.h>

#include "config.h"

typedef struct CrunchWorker CrunchWorker;

/* Connects (or keeps trying) to [nats] servers and starts taking jobs on `threads` slots. Logs
 * "crunchd-worker ID ready: ..." once its subscriptions are in place on a server (from the
 * main context when the connection comes later). */
CrunchWorker *crunch_worker_new (const CrunchConfig *config, guint threads, const gchar *id,
                                 GError **error);
const gchar *crunch_worker_id (CrunchWorker *self);
/* Take no new jobs; call `stopped` on the main context once every running job has replied. */
void crunch_worker_stop (CrunchWorker *self, GSourceFunc stopped, gpointer data);
/* Stop running jobs (their front ends retry them elsewhere). */
void crunch_worker_cancel_running (CrunchWorker *self);
guint crunch_worker_running (CrunchWorker *self);
/* For an exit that cannot wait for jobs whose functions ignore their cancel: the replies made so
 * far go out and the connection closes, the jobs stay on their threads (the worker is not freed:
 * the process ends). */
void crunch_worker_abandon (CrunchWorker *self);
/* Closes the connection; only after `stopped`. */
void crunch_worker_free (CrunchWorker *self);
