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

typedef enum {
  CRUNCH_JSON_OK,
  CRUNCH_JSON_TOO_DEEP,   /* arrays and objects nest deeper than asked */
  CRUNCH_JSON_NOT_STRICT, /* outside a "string", a byte RFC 8259 does not allow there */
} CrunchJsonCheck;

/* A linear scan of `text` (len bytes, not necessarily NUL-terminated) before json-glib sees it.
 * json-glib's parser recurses once per level, and its lexer accepts more than RFC 8259 ('single
 * quoted' strings, comments), which would hide brackets from a scan that knows only "strings".
 * So: outside "strings" only whitespace, structure, numbers and lower-case literals are allowed,
 * and arrays and objects nest at most `max_depth` deep. Anything else the parser still checks. */
CrunchJsonCheck crunch_json_check (const gchar *text, gsize len, guint max_depth);

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
