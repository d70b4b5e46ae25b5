/* describe.h - the registry described for clients: GET /fn (the functions as JSON) and
 * GET /openapi.json (an OpenAPI 3.0 document of the whole HTTP API). Both are generated from the
 * registry on each request, with the live bounds (a reload may lower [fib] max_n), so they stay
 * true as functions and settings change. */
#pragma once

#include <glib.h>

/* {"functions": [{"name", "description", "plugin", "url", "pure", "deadline_seconds",
 * "content_type", "args": [{"name", "type", "description", "min", "max", "required",
 * "default"}]}]} */
GBytes *crunch_describe_functions (void);
/* The OpenAPI 3.0.3 document, JSON. */
GBytes *crunch_describe_openapi (void);
