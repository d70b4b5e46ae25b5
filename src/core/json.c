/* json.c - see json.h. */
#include "json.h"

#include <math.h>
#include <string.h>

void
crunch_json_append_string (GString *out, const gchar *value)
{
  g_autofree gchar *valid = g_utf8_make_valid (value, -1);

  g_string_append_c (out, '"');
  for (const guchar *c = (const guchar *)valid; *c != '\0'; c++) {
    switch (*c) {
    case '"':
      g_string_append (out, "\\\"");
      break;
    case '\\':
      g_string_append (out, "\\\\");
      break;
    case '\n':
      g_string_append (out, "\\n");
      break;
    case '\r':
      g_string_append (out, "\\r");
      break;
    case '\t':
      g_string_append (out, "\\t");
      break;
    default:
      if (*c < 0x20)
        g_string_append_printf (out, "\\u%04x", *c);
      else
        g_string_append_c (out, (gchar)*c);
    }
  }
  g_string_append_c (out, '"');
}

/* ---- the strict check (crunch_json_check()) ---- */

typedef struct {
  const gchar *p, *end;
  const gchar *why;
} Scan;

static gboolean
refuse (Scan *s, const gchar *why)
{
  s->why = why;
  return FALSE;
}

/* What a lax parser would have taken there, named (a comment, a single quote) */
static gboolean
unexpected (Scan *s)
{
  if (*s->p == '/' || *s->p == '#')
    return refuse (s, "a comment (JSON has none)");
  if (*s->p == '\'')
    return refuse (s, "a single quote (JSON strings take double quotes)");
  return refuse (s, "an unexpected character");
}

/* The same after a value (s->p is past its first character): 0x10 reads as 0, then x */
static gboolean
unexpected_after_value (Scan *s)
{
  if ((*s->p == 'x' || *s->p == 'X') && s->p[-1] == '0')
    return refuse (s, "a hex number (JSON numbers are decimal)");
  return unexpected (s);
}

static void
skip_space (Scan *s)
{
  while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
    s->p++;
}

static gboolean
digit_at (Scan *s)
{
  return s->p < s->end && g_ascii_isdigit (*s->p);
}

/* The four hex digits at s->p + at, or -1. */
static gint
hex4 (Scan *s, gint at)
{
  gint value = 0;

  if (s->end - s->p < at + 4)
    return -1;
  for (gint i = at; i < at + 4; i++) {
    gint digit = g_ascii_xdigit_value (s->p[i]);
    if (digit < 0)
      return -1;
    value = value * 16 + digit;
  }
  return value;
}

/* A string, s->p at its opening quote; *escaped if it has a backslash escape. */
static gboolean
scan_string (Scan *s, gboolean *escaped)
{
  *escaped = FALSE;
  for (s->p++; s->p < s->end; s->p++) {
    guchar c = (guchar)*s->p;
    if (c == '"') {
      s->p++;
      return TRUE;
    }
    if (c < 0x20)
      return refuse (s, "a control character inside a string");
    if (c != '\\')
      continue;
    *escaped = TRUE;
    if (++s->p >= s->end)
      break;
    if (*s->p == 'u') {
      gint unit = hex4 (s, 1);
      if (unit < 0)
        return refuse (s, "a bad \\u escape");
      if (unit == 0)
        return refuse (s, "\\u0000 in a string");
      /* json-glib turns a lone surrogate into bytes that are not UTF-8 */
      if (unit >= 0xDC00 && unit <= 0xDFFF)
        return refuse (s, "a lone surrogate in a \\u escape");
      if (unit >= 0xD800 && unit <= 0xDBFF) {
        gint low = s->end - s->p >= 11 && s->p[5] == '\\' && s->p[6] == 'u' ? hex4 (s, 7) : -1;
        if (low < 0xDC00 || low > 0xDFFF)
          return refuse (s, "a lone surrogate in a \\u escape");
        s->p += 6;
      }
      s->p += 4;
    } else if (*s->p == '\0' || strchr ("\"\\/bfnrt", *s->p) == NULL) {
      return refuse (s, "a bad escape in a string");
    }
  }
  return refuse (s, "an unterminated string");
}

/* A number, s->p at its first character. json-glib reads an integer that does not fit in 64 bits
 * as a wrapped one, and a float beyond a double's range as infinity: both are refused here. */
static gboolean
scan_number (Scan *s)
{
  const gchar *start = s->p;
  gboolean integer = TRUE;
  g_autofree gchar *text = NULL;

  if (*s->p == '-')
    s->p++;
  if (!digit_at (s))
    return refuse (s, "a malformed number");
  if (*s->p == '0' && s->p + 1 < s->end && g_ascii_isdigit (s->p[1]))
    return refuse (s, "a number with a leading zero");
  while (digit_at (s))
    s->p++;
  if (s->p < s->end && *s->p == '.') {
    integer = FALSE;
    s->p++;
    if (!digit_at (s))
      return refuse (s, "a malformed number");
    while (digit_at (s))
      s->p++;
  }
  if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
    integer = FALSE;
    s->p++;
    if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
      s->p++;
    if (!digit_at (s))
      return refuse (s, "a malformed number");
    while (digit_at (s))
      s->p++;
  }
  text = g_strndup (start, (gsize)(s->p - start));
  if (integer && !g_ascii_string_to_signed (text, 10, G_MININT64, G_MAXINT64, NULL, NULL))
    return refuse (s, "an integer beyond 64 bits");
  if (!integer && !isfinite (g_ascii_strtod (text, NULL)))
    return refuse (s, "a number beyond a double's range");
  return TRUE;
}

static gboolean
scan_literal (Scan *s)
{
  static const gchar *const literals[] = {"true", "false", "null"};

  for (guint i = 0; i < G_N_ELEMENTS (literals); i++) {
    gsize n = strlen (literals[i]);
    if ((gsize)(s->end - s->p) >= n && memcmp (s->p, literals[i], n) == 0) {
      s->p += n;
      return TRUE;
    }
  }
  return unexpected (s);
}

/* Adds the member name that ends at s->p to `names`; FALSE if it is there already. A name with
 * escapes is compared decoded ("a" and "\u0061" are one name), decoded by json-glib. */
static gboolean
add_name (Scan *s, GHashTable *names, const gchar *start, gboolean escaped)
{
  g_autofree gchar *quoted = escaped ? g_strndup (start, (gsize)(s->p - start)) : NULL;
  g_autoptr (JsonNode) node = NULL;
  gchar *name;

  /* GLib's string hash is not seeded: names chosen to collide make each lookup linear, here and
   * in json-glib (a 1 MiB body of them cost 14 s of CPU). No object crunchd reads has many. */
  if (g_hash_table_size (names) >= CRUNCH_JSON_MAX_MEMBERS)
    return refuse (s, "an object with more than " G_STRINGIFY (CRUNCH_JSON_MAX_MEMBERS) " members");
  if (escaped && (node = json_from_string (quoted, NULL)) != NULL)
    name = g_strdup (json_node_get_string (node));
  else
    name = g_strndup (start + 1, (gsize)(s->p - start - 2));
  return g_hash_table_add (names, name) || refuse (s, "a member name given twice");
}

CrunchJsonCheck
crunch_json_check (const gchar *text, gsize len, guint max_depth, const gchar **why)
{
  /* what comes next: a value, the first value or ], a name or }, a name, the colon, or (after a
   * value) a comma, the container's end or the end of the text */
  enum { VALUE, VALUE_OR_CLOSE, NAME_OR_CLOSE, NAME, COLON, NEXT } want = VALUE;
  Scan s = {text, text + len, NULL};
  g_autofree gchar *open = g_malloc (max_depth + 1);                    /* '[' or '{' per level */
  g_autofree GHashTable **names = g_new0 (GHashTable *, max_depth + 1); /* an object's names */
  CrunchJsonCheck result = CRUNCH_JSON_NOT_STRICT;
  guint depth = 0;

  for (;;) {
    const gchar *start;
    gboolean escaped, ok = TRUE;

    skip_space (&s);
    if (s.p >= s.end) {
      if (want == NEXT && depth == 0)
        result = CRUNCH_JSON_OK;
      else
        s.why = "the text ends before its value does";
      break;
    }
    switch (want) {
    case NEXT:
      if (depth == 0) {
        ok = *s.p != '\0' && strchr ("/#xX", *s.p) != NULL ? unexpected_after_value (&s)
                                                           : refuse (&s, "more than one value");
      } else if (*s.p == ',') {
        s.p++;
        want = open[depth - 1] == '{' ? NAME : VALUE;
      } else if (*s.p == (open[depth - 1] == '{' ? '}' : ']')) {
        s.p++;
        g_clear_pointer (&names[--depth], g_hash_table_unref);
      } else {
        ok = unexpected_after_value (&s);
      }
      break;
    case NAME_OR_CLOSE:
    case NAME:
      if (want == NAME_OR_CLOSE && *s.p == '}') {
        s.p++;
        g_clear_pointer (&names[--depth], g_hash_table_unref);
        want = NEXT;
        break;
      }
      start = s.p;
      ok = *s.p == '"'
               ? scan_string (&s, &escaped) && add_name (&s, names[depth - 1], start, escaped)
               : refuse (&s, "a member name that is not a \"string\"");
      want = COLON;
      break;
    case COLON:
      ok = *s.p++ == ':' || refuse (&s, "a member without a colon");
      want = VALUE;
      break;
    case VALUE_OR_CLOSE:
    case VALUE:
      if (want == VALUE_OR_CLOSE && *s.p == ']') {
        s.p++;
        depth--;
        want = NEXT;
      } else if (*s.p == '[' || *s.p == '{') {
        if (depth >= max_depth) {
          result = CRUNCH_JSON_TOO_DEEP;
          goto done;
        }
        if (*s.p == '{')
          names[depth] = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
        open[depth++] = *s.p;
        want = *s.p++ == '{' ? NAME_OR_CLOSE : VALUE_OR_CLOSE;
      } else {
        ok = *s.p == '"'                             ? scan_string (&s, &escaped)
             : *s.p == '-' || g_ascii_isdigit (*s.p) ? scan_number (&s)
                                                     : scan_literal (&s);
        want = NEXT;
      }
      break;
    }
    if (!ok)
      break;
  }
done:
  for (guint i = 0; i < depth; i++)
    g_clear_pointer (&names[i], g_hash_table_unref);
  if (why != NULL)
    *why = result == CRUNCH_JSON_TOO_DEEP ? "arrays or objects nested too deep" : s.why;
  return result;
}

void
crunch_json_append_seconds (GString *out, gdouble seconds)
{
  static const gchar *const formats[] = {"%.0f", "%.1f", "%.2f", "%.3f", "%.4f", "%.5f", "%.6f"};
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];
  gdouble magnitude = seconds < 0 ? -seconds : seconds;
  gint decimals = 3; /* four significant digits for 1 <= |seconds| < 10 */
  gsize len;

  if (seconds != seconds || magnitude > 1e15) { /* NaN, or no duration of ours */
    g_string_append (out, "null");
    return;
  }
  for (gdouble m = magnitude; m >= 10 && decimals > 0; m /= 10)
    decimals--;
  for (gdouble m = magnitude; m > 0 && m < 1 && decimals < 6; m *= 10)
    decimals++;
  g_ascii_formatd (buf, sizeof buf, formats[decimals], seconds);
  len = strlen (buf);
  while (decimals > 0 && buf[len - 1] == '0') /* 30.000 -> 30, 2.100 -> 2.1 */
    buf[--len] = '\0';
  if (buf[len - 1] == '.')
    buf[--len] = '\0';
  g_string_append (out, g_str_equal (buf, "-0") ? "0" : buf);
}

static void append_members (GString *out, JsonObject *object, const gchar *open,
                            const gchar *separator, const gchar *close);

static void
append_value (GString *out, JsonNode *node)
{
  GType type = json_node_get_value_type (node);

  if (JSON_NODE_HOLDS_NULL (node))
    g_string_append (out, "null");
  else if (JSON_NODE_HOLDS_OBJECT (node))
    append_members (out, json_node_get_object (node), "{", ", ", "}");
  else if (!JSON_NODE_HOLDS_VALUE (node)) {
    g_autofree gchar *text = json_to_string (node, FALSE);
    g_string_append (out, text);
  } else if (type == G_TYPE_STRING)
    crunch_json_append_string (out, json_node_get_string (node));
  else if (type == G_TYPE_DOUBLE)
    crunch_json_append_seconds (out, json_node_get_double (node));
  else if (type == G_TYPE_BOOLEAN)
    g_string_append (out, json_node_get_boolean (node) ? "true" : "false");
  else
    g_string_append_printf (out, "%" G_GINT64_FORMAT, json_node_get_int (node));
}

static void
append_members (GString *out, JsonObject *object, const gchar *open, const gchar *separator,
                const gchar *close)
{
  g_autoptr (GList) names = json_object_get_members (object); /* in insertion order */

  g_string_append_c (out, '{');
  for (GList *n = names; n != NULL; n = n->next) {
    g_string_append (out, n == names ? open + 1 : separator);
    crunch_json_append_string (out, n->data);
    g_string_append (out, ": ");
    append_value (out, json_object_get_member (object, n->data));
  }
  g_string_append (out, names != NULL ? close : "}");
}

void
crunch_json_append_object (GString *out, JsonObject *object)
{
  append_members (out, object, "{\n  ", ",\n  ", "\n}");
}

void
crunch_json_append_object_line (GString *out, JsonObject *object)
{
  append_members (out, object, "{", ", ", "}");
}

void
crunch_json_member_string (JsonBuilder *b, const gchar *name, const gchar *value)
{
  if (value == NULL)
    return;
  json_builder_set_member_name (b, name);
  json_builder_add_string_value (b, value);
}

void
crunch_json_member_int (JsonBuilder *b, const gchar *name, gint64 value)
{
  json_builder_set_member_name (b, name);
  json_builder_add_int_value (b, value);
}

void
crunch_json_member_bool (JsonBuilder *b, const gchar *name, gboolean value)
{
  json_builder_set_member_name (b, name);
  json_builder_add_boolean_value (b, value);
}
