/* headers.h - the request header values crunchd reads, parsed without any HTTP library, so that
 * they can be unit-tested and fuzzed on their own (tests/fuzz/fuzz-headers.c). */
#pragma once

#include <glib.h>

/* `Content-Length`: decimal digits only. FALSE if it is not a number crunchd can compare
 * (MHD answers malformed lengths with 400 itself before crunchd sees the request). */
gboolean crunch_header_content_length (const gchar *value, guint64 *length);

/* `Request-Timeout: SECONDS`: a positive decimal number (fractions allowed) of at most 1e9
 * seconds. Stores the timeout in microseconds, at least 1. */
gboolean crunch_header_request_timeout (const gchar *value, gint64 *timeout_us);

/* A token (RFC 9110 5.6.2): letters, digits and !#$%&'*+-.^_`|~, at least one. A method and a
 * header name are tokens; anything else (a control byte, a space) makes the request malformed:
 * 400 (not 405 for a method). */
gboolean crunch_header_token_valid (const gchar *method);
