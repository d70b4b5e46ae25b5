/* status.h - the ops endpoints: /metrics, /healthz, /readyz, and the live status page
 * (/status, its assets under /status/, and the /status.json it polls). Fast-lane handlers for
 * the route table (CRUNCH_LANE_OPS); they read the metrics module and never block. */
#pragma once

#include "routes.h"

/* The handler of an ops route by its name in the route table ("metrics", "healthz", "readyz",
 * "status", "status-asset", "status.json"); NULL for an unknown name. */
CrunchHandler crunch_status_handler (const gchar *name);

/* The body of /status.json (exposed for tests). */
GBytes *crunch_status_render_json (void);
