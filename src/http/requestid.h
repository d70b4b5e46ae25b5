/* requestid.h - request ids: take the client's X-Request-Id if it is usable, else make one. */
#pragma once

#include <glib.h>

#define CRUNCH_REQUEST_ID_HEADER "X-Request-Id"
/* Longest id kept; longer ones are cut, so an id never costs more than this buffer. */
#define CRUNCH_REQUEST_ID_MAX 64

/* Fills `id` (CRUNCH_REQUEST_ID_MAX + 1 bytes) from `offered` (the header value, may be NULL):
 * only the characters [A-Za-z0-9._:-] are kept, at most CRUNCH_REQUEST_ID_MAX of them, so the id
 * is safe in a header, a log line and JSON. When nothing is left, a fresh id is generated:
 * 8 hex digits of a per-process random prefix, '-', 8 hex digits of a counter. No allocation. */
void crunch_request_id (gchar *id, const gchar *offered);
