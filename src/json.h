/* json.h - writing JSON text by hand: string escaping, the one part that is easy to get wrong,
 * and numbers of seconds as people read them (json-glib prints every double with 17 digits). */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

/* Appends `value` as a JSON string, quotes included (RFC 8259 escapes; invalid UTF-8 bytes
 * become U+FFFD so the output is always valid). */
void crunch_json_append_string (GString *out, const gchar *value);

/* Appends seconds rounded to 4 significant digits, in plain notation and to the microsecond at
 * most: 4.8999999999999998e-05 -> 0.000049, 2.12345 -> 2.123, 299.53 -> 299.5, 30.0 -> 30. */
void crunch_json_append_seconds (GString *out, gdouble seconds);

/* Appends a flat object (string, integer, boolean, null and double members; nested values are
 * written by json-glib), one member per line. Doubles are taken to be durations and written with
 * crunch_json_append_seconds(). */
void crunch_json_append_object (GString *out, JsonObject *object);
