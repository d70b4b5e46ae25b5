/* stdio-worker.h - `crunchd-worker --stdio`: one worker process of a crunchd process pool,
 * speaking the worker protocol (wire.h) on stdin and stdout. */
#pragma once

#include <glib.h>

#include "functions.h"

/* The registry is filled (built-ins and C plugins). Sends hello, runs calls one at a time until
 * stdin ends; returns the exit status (0). A protocol error exits 1 at once. */
gint crunch_stdio_worker_run (void);
