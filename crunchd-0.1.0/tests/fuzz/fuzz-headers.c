/* fuzz-headers.c - libFuzzer target: the request header values crunchd reads (headers.c). */
#include <string.h>

#include "headers.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  g_autofree gchar *value = g_strndup ((const gchar *)data, size);
  guint64 length;
  gint64 timeout_us;

  if (crunch_header_content_length (value, &length))
    g_assert (*value != '\0' && strspn (value, "0123456789") == strlen (value));
  if (crunch_header_request_timeout (value, &timeout_us))
    g_assert (timeout_us >= 1 && timeout_us <= (gint64)1e15);
  return 0;
}
