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
/* The most members an object may have: more arguments than any function declares. */
#define CRUNCH_JSON_MAX_MEMBERS 256

typedef enum {
  CRUNCH_JSON_OK,
  CRUNCH_JSON_TOO_DEEP,   /* arrays and objects nest deeper than asked */
  CRUNCH_JSON_NOT_STRICT, /* not one RFC 8259 value, or one crunchd cannot take as it is */
} CrunchJsonCheck;

/* Checks `text` (len bytes, not necessarily NUL-terminated) in one linear pass before json-glib
 * sees it. json-glib's parser recurses once per level, and it accepts more than RFC 8259 ('single
 * quoted' strings, comments, hex and leading zeros, a second value after the first, bare control
 * characters in strings) and reads some of what it accepts wrongly (an integer beyond 64 bits
 * wraps around, a repeated member name keeps the last value, \u0000 ends a string early). So
 * the text must be exactly one RFC 8259 value, nested at most `max_depth` deep, with at most
 * CRUNCH_JSON_MAX_MEMBERS members an object, integers that fit in 64 bits, finite numbers, no
 * member name twice in an object and no \u0000; `why` (if not NULL) gets what was wrong, a static
 * string. UTF-8 is the parser's to check. */
CrunchJsonCheck crunch_json_check (const gchar *text, gsize len, guint max_depth,
                                   const gchar **why);

/* Appends seconds rounded to 4 significant digits, in plain notation and to the microsecond at
 * most: 4.8999999999999998e-05 -> 0.000049, 2.12345 -> 2.123, 299.53 -> 299.5, 30.0 -> 30. */
void crunch_json_append_seconds (GString *out, gdouble seconds);

/* Appends an object (string, integer, boolean, null, double and object members; arrays are
 * written by json-glib), one top-level member per line. Doubles are taken to be durations (or
 * fractions) and written with crunch_json_append_seconds(). */
void crunch_json_append_object (GString *out, JsonObject *object);
/* The same on one line (a Server-Sent Events "data:" line). */
void crunch_json_append_object_line (GString *out, JsonObject *object);

/* Members of the object a JsonBuilder is building (the jobs API, /fn, /openapi.json, the NATS
 * store's records). A NULL string adds nothing. */
void crunch_json_member_string (JsonBuilder *b, const gchar *name, const gchar *value);
void crunch_json_member_int (JsonBuilder *b, const gchar *name, gint64 value);
void crunch_json_member_bool (JsonBuilder *b, const gchar *name, gboolean value);
