/* accesslog.c - see accesslog.h. Called on the MHD polling threads, once per request, from the
 * request's completion; the format is read atomically, so a reload switches it live. */
#include "accesslog.h"

#include "json.h"
#include "logging.h"

/* CLF wants English month names whatever the locale. */
static const gchar *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* After the request id, like nginx's $request_time: the total time and, for compute requests,
 * where it went (queued, running) and how the job ended. */
static gchar *
format_timing (const CrunchAccessRecord *r)
{
  GString *out = g_string_new (NULL);

  g_string_append_printf (out, "%.3fms", r->duration_us / 1e3);
  if (r->queue_us >= 0)
    g_string_append_printf (out, " queued=%.3fms run=%.3fms", r->queue_us / 1e3, r->run_us / 1e3);
  if (r->outcome != NULL)
    g_string_append_printf (out, " outcome=%s", r->outcome);
  if (r->coalesced)
    g_string_append (out, " coalesced");
  return g_string_free (out, FALSE);
}

static gchar *
format_common (const CrunchAccessRecord *r, GDateTime *when)
{
  g_autofree gchar *zone = g_date_time_format (when, "%z");
  g_autofree gchar *path = g_strescape (r->path, NULL); /* no raw quotes or controls */
  g_autofree gchar *timing = format_timing (r);

  /* the API key name goes where CLF has the authenticated user */
  return g_strdup_printf (
      "%s - %s [%02d/%s/%04d:%02d:%02d:%02d %s] \"%s %s %s\" %u %zu \"%s\" %s", r->client,
      r->key != NULL ? r->key : "-", g_date_time_get_day_of_month (when),
      months[g_date_time_get_month (when) - 1], g_date_time_get_year (when),
      g_date_time_get_hour (when), g_date_time_get_minute (when), g_date_time_get_second (when),
      zone, r->method, path, r->protocol, r->status, r->bytes, r->request_id, timing);
}

static void
json_field (GString *out, const gchar *name, const gchar *value)
{
  g_string_append_printf (out, ",\"%s\":", name);
  crunch_json_append_string (out, value);
}

static void
json_ms (GString *out, const gchar *name, gint64 us)
{
  if (us < 0)
    g_string_append_printf (out, ",\"%s\":null", name);
  else
    g_string_append_printf (out, ",\"%s\":%" G_GINT64_FORMAT ".%03d", name, us / 1000,
                            (gint)(us % 1000));
}

static gchar *
format_json (const CrunchAccessRecord *r, GDateTime *when)
{
  g_autofree gchar *time = g_date_time_format_iso8601 (when);
  GString *out = g_string_new ("{\"time\":");

  crunch_json_append_string (out, time);
  json_field (out, "remote", r->client);
  json_field (out, "method", r->method);
  json_field (out, "path", r->path);
  json_field (out, "protocol", r->protocol);
  g_string_append_printf (out, ",\"status\":%u,\"bytes\":%zu", r->status, r->bytes);
  json_field (out, "request_id", r->request_id);
  json_ms (out, "duration_ms", r->duration_us);
  json_ms (out, "queue_ms", r->queue_us);
  json_ms (out, "run_ms", r->run_us);
  if (r->outcome != NULL)
    json_field (out, "outcome", r->outcome);
  else
    g_string_append (out, ",\"outcome\":null");
  g_string_append_printf (out, ",\"coalesced\":%s", r->coalesced ? "true" : "false");
  /* last, so that readers of the fields before it see them as they were */
  if (r->key != NULL)
    json_field (out, "key", r->key);
  else
    g_string_append (out, ",\"key\":null");
  g_string_append_c (out, '}');
  return g_string_free (out, FALSE);
}

gchar *
crunch_access_format (CrunchAccessLog format, const CrunchAccessRecord *record, GDateTime *when)
{
  switch (format) {
  case CRUNCH_ACCESS_LOG_COMMON:
    return format_common (record, when);
  case CRUNCH_ACCESS_LOG_JSON:
    return format_json (record, when);
  case CRUNCH_ACCESS_LOG_OFF:
  default:
    return NULL;
  }
}

void
crunch_access_log (const CrunchAccessRecord *record)
{
  CrunchAccessLog format = crunch_logging_access_format ();
  g_autoptr (GDateTime) now = NULL;
  g_autofree gchar *line = NULL;
  g_autofree gchar *status = NULL;

  if (format == CRUNCH_ACCESS_LOG_OFF)
    return;
  now = g_date_time_new_now_local ();
  line = crunch_access_format (format, record, now);
  status = g_strdup_printf ("%u", record->status);
  /* journald fields (see crunchd(8), LOGGING): journalctl -u crunchd STATUS=503 */
  g_log_structured (CRUNCH_LOG_ACCESS_DOMAIN, G_LOG_LEVEL_INFO, "REQUEST_ID", record->request_id,
                    "METHOD", record->method, "ROUTE", record->path, "STATUS", status, "MESSAGE",
                    "%s", line);
}
