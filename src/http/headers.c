/* headers.c - see headers.h. */
#include "headers.h"

#include <string.h>

gboolean
crunch_header_content_length (const gchar *value, guint64 *length)
{
  /* digits only: g_ascii_string_to_unsigned() lets a leading vertical tab through to strtoull,
   * which skips it (found by fuzz-headers; tests/fuzz/headers/crash-vtab-content-length) */
  return *value != '\0' && strspn (value, "0123456789") == strlen (value) &&
         g_ascii_string_to_unsigned (value, 10, 0, G_MAXUINT64, length, NULL);
}

gboolean
crunch_header_request_timeout (const gchar *value, gint64 *timeout_us)
{
  gchar *end = NULL;
  gdouble seconds = g_ascii_strtod (value, &end);

  /* !(seconds > 0) also refuses NaN; the upper bound keeps the product in range */
  if (end == value || *end != '\0' || !(seconds > 0) || seconds > 1e9)
    return FALSE;
  *timeout_us = MAX ((gint64)(seconds * G_USEC_PER_SEC), 1);
  return TRUE;
}

gboolean
crunch_header_token_valid (const gchar *method)
{
  static const gchar tchar[] = "!#$%&'*+-.^_`|~0123456789"
                               "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

  return *method != '\0' && strspn (method, tchar) == strlen (method);
}
