/* fuzz-headers.c - libFuzzer target: the request header values crunchd reads: Content-Length and
 * Request-Timeout (headers.c), X-Request-Id (requestid.c), and the method token check. */
#include <string.h>

#include "headers.h"
#include "requestid.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  g_autofree gchar *value = g_strndup ((const gchar *)data, size);
  guint64 length;
  gint64 timeout_us;

  if (crunch_header_content_length (value, &length))
    g_assert (*value != '\0' && strspn (value, "0123456789") == strlen (value));
  gchar id[CRUNCH_REQUEST_ID_MAX + 1];

  if (crunch_header_token_valid (value))
    for (const gchar *c = value; *c != '\0'; c++)
      g_assert (g_ascii_isalnum (*c) || strchr ("!#$%&'*+-.^_`|~", *c) != NULL);
  if (crunch_header_request_timeout (value, &timeout_us))
    g_assert (timeout_us >= 1 && timeout_us <= (gint64)1e15);
  /* whatever comes in, the id is 1..64 characters that are safe in a header, a log and JSON */
  crunch_request_id (id, value);
  g_assert (strlen (id) >= 1 && strlen (id) <= CRUNCH_REQUEST_ID_MAX);
  g_assert (strspn (id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-") ==
            strlen (id));
  return 0;
}
