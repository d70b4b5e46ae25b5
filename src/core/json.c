/* json.c - see json.h. */
#include "json.h"

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

CrunchJsonCheck
crunch_json_check (const gchar *text, gsize len, guint max_depth)
{
  /* what RFC 8259 allows outside strings: whitespace, structure, numbers, true/false/null */
  static const gchar outside[] = " \t\n\r,:0123456789+-.Eabcdefghijklmnopqrstuvwxyz";
  gboolean in_string = FALSE;
  guint depth = 0;

  for (gsize i = 0; i < len; i++) {
    gchar c = text[i];
    if (in_string) {
      if (c == '\\')
        i++; /* the escaped character cannot end the string */
      else if (c == '"')
        in_string = FALSE;
    } else if (c == '"') {
      in_string = TRUE;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth)
        return CRUNCH_JSON_TOO_DEEP;
    } else if (c == ']' || c == '}') {
      depth -= depth > 0;
    } else if (c == '\0' || strchr (outside, c) == NULL) {
      return CRUNCH_JSON_NOT_STRICT;
    }
  }
  return CRUNCH_JSON_OK;
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
