/* reply.c - see reply.h. */
#include "reply.h"

#include "stream.h"

#include <string.h>

CrunchReply
crunch_reply_text (guint status, const gchar *format, ...)
{
  va_list ap;
  g_autofree gchar *text = NULL;

  va_start (ap, format);
  text = g_strdup_vprintf (format, ap);
  va_end (ap);
  return crunch_reply_bytes (status,
                             g_bytes_new_take (g_strconcat (text, "\n", NULL), strlen (text) + 1),
                             CRUNCH_TEXT_PLAIN);
}

CrunchReply
crunch_reply_bytes (guint status, GBytes *bytes, const gchar *content_type)
{
  return (CrunchReply){.status = status, .content_type = content_type, .bytes = bytes};
}

void
crunch_reply_clear (CrunchReply *reply)
{
  g_clear_pointer (&reply->bytes, g_bytes_unref);
  g_clear_pointer (&reply->location, g_free);
  g_clear_pointer (&reply->retry_after, g_free);
  g_clear_pointer (&reply->stream, crunch_stream_unref);
}

CrunchReply
crunch_reply_stream (CrunchStream *stream)
{
  return (CrunchReply){.status = 200, .content_type = "text/event-stream", .stream = stream};
}
