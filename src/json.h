/* json.h - writing JSON text by hand: just string escaping, the one part that is easy to get
 * wrong. */
#pragma once

#include <glib.h>

/* Appends `value` as a JSON string, quotes included (RFC 8259 escapes; invalid UTF-8 bytes
 * become U+FFFD so the output is always valid). */
void crunch_json_append_string (GString *out, const gchar *value);
