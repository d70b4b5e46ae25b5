/* json.h - writing JSON text by hand: string escaping, the one part that is easy to get wrong,
 * and numbers of seconds as people read them (json-glib prints every double with 17 digits). */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

/* Appends `value` as a JSON string, quotes included (RFC 8259 escapes; invalid UTF-8 bytes
 * become U+FFFD so the output is always valid). */
void crunch_json_append_string (GString *out, const gchar *value);

/* The deepest any JSON text may nest arrays and objects. crunchd's JSON bodies are flat
 * ({"fn": ..., "args": {...}} at most two levels), and json-glib's parser recurses once per
 * level on the calling thread's stack: a body nested 100,000 deep would overflow it. */
#define CRUNCH_JSON_MAX_DEPTH 32

/* TRUE if `text` (len bytes, not necessarily NUL-terminated) nests arrays and objects no deeper
 * than `max_depth`. A linear scan that skips strings; it does not validate the JSON, so run it
 * before the parser, which does. */
gboolean crunch_json_depth_ok (const gchar *text, gsize len, guint max_depth);

/* Appends seconds rounded to 4 significant digits, in plain notation and to the microsecond at
 * most: 4.8999999999999998e-05 -> 0.000049, 2.12345 -> 2.123, 299.53 -> 299.5, 30.0 -> 30. */
void crunch_json_append_seconds (GString *out, gdouble seconds);

/* Appends a flat object (string, integer, boolean, null and double members; nested values are
 * written by json-glib), one member per line. Doubles are taken to be durations and written with
 * crunch_json_append_seconds(). */
void crunch_json_append_object (GString *out, JsonObject *object);
