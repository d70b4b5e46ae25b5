/* status.c - the ops endpoints and the live status page.
 *
 * The page (data/status/: index.html, status.css, status.js) is compiled into the binary with
 * glib-compile-resources, so it works offline and needs no files at run time; its assets are
 * served straight from the resource section without a copy. The page polls /status.json once a
 * second and draws its charts itself (canvas), keeping the history in the browser: the server
 * only ever reports "now" plus the slowest recent jobs, so a status page costs the server one
 * small JSON document per viewer per second. */
#include "status.h"

#include <gio/gio.h>
#include <string.h>

#include "json.h"
#include "metrics.h"
#include "status-resources.h"

#define TEXT "text/plain; charset=utf-8"
#define RESOURCE_PREFIX "/org/crunchd/status/"

static CrunchReply
reply_bytes (guint status, GBytes *bytes, const gchar *content_type)
{
  return crunch_reply_bytes (status, bytes, content_type);
}

static CrunchReply
metrics_disabled (void)
{
  return crunch_reply_static (404, "metrics are disabled ([metrics] enabled = false)\n", TEXT);
}

static CrunchReply
metrics_handler (const CrunchRequestInfo *request, gpointer context)
{
  if (!crunch_metrics_enabled ())
    return metrics_disabled ();
  return reply_bytes (200, crunch_metrics_render (), CRUNCH_METRICS_CONTENT_TYPE);
}

static CrunchReply
healthz_handler (const CrunchRequestInfo *request, gpointer context)
{
  return crunch_reply_static (200, "ok\n", TEXT);
}

static CrunchReply
readyz_handler (const CrunchRequestInfo *request, gpointer context)
{
  CrunchGauges g;
  const gchar *why;

  crunch_metrics_get_gauges (&g);
  if (g.draining)
    return crunch_reply_static (503, "not ready: draining\n", TEXT);
  if (g.jobs_queued >= g.queue_limit)
    return crunch_reply_static (503, "not ready: job queue full\n", TEXT);
  why = crunch_metrics_not_ready ();
  if (why != NULL)
    return crunch_reply_text (503, "not ready: %s", why);
  return crunch_reply_static (200, "ready\n", TEXT);
}

static GBytes *
lookup (const gchar *name)
{
  g_autofree gchar *path = g_strconcat (RESOURCE_PREFIX, name, NULL);

  return g_resource_lookup_data (crunch_status_resources_get_resource (), path,
                                 G_RESOURCE_LOOKUP_FLAGS_NONE, NULL);
}

static CrunchReply
page_handler (const CrunchRequestInfo *request, gpointer context)
{
  return reply_bytes (200, lookup ("index.html"), "text/html; charset=utf-8");
}

static CrunchReply
asset_handler (const CrunchRequestInfo *request, gpointer context)
{
  static const struct {
    const gchar *suffix, *type;
  } types[] = {
      {".css", "text/css; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
  };
  GBytes *bytes = NULL;

  for (gsize i = 0; i < G_N_ELEMENTS (types); i++) {
    if (strchr (request->arg, '/') == NULL && g_str_has_suffix (request->arg, types[i].suffix) &&
        (bytes = lookup (request->arg)) != NULL)
      return reply_bytes (200, bytes, types[i].type);
  }
  return crunch_reply_static (404, "no such file\n", TEXT);
}

static CrunchReply
json_handler (const CrunchRequestInfo *request, gpointer context)
{
  if (!crunch_metrics_enabled ())
    return metrics_disabled ();
  return reply_bytes (200, crunch_status_render_json (), "application/json");
}

CrunchHandler
crunch_status_handler (const gchar *name)
{
  static const CrunchNamedHandler handlers[] = {
      {"metrics", metrics_handler},
      {"healthz", healthz_handler},
      {"readyz", readyz_handler},
      {"status", page_handler},
      {"status-asset", asset_handler},
      {"status.json", json_handler},
      {NULL, NULL},
  };

  return crunch_handler_find (handlers, name);
}

/* ---- /status.json ---- */

static void
append_number (GString *out, const gchar *name, gdouble value)
{
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

  g_string_append_printf (out, "\"%s\":%s,", name,
                          g_ascii_formatd (buf, sizeof buf, "%.15g", value));
}

static void
append_routes (GString *out)
{
  g_string_append (out, "\"routes\":[");
  for (guint i = 0; i < crunch_metrics_n_routes (); i++) {
    g_string_append (out, i > 0 ? ",{\"route\":" : "{\"route\":");
    crunch_json_append_string (out, crunch_metrics_route_label (i));
    g_string_append_c (out, ',');
    append_number (out, "requests", (gdouble)crunch_metrics_route_requests (i));
    append_number (out, "p50", crunch_metrics_route_quantile (i, 0.5));
    append_number (out, "p90", crunch_metrics_route_quantile (i, 0.9));
    append_number (out, "p99", crunch_metrics_route_quantile (i, 0.99));
    g_string_truncate (out, out->len - 1);
    g_string_append_c (out, '}');
  }
  g_string_append (out, "],");
}

static void
append_jobs (GString *out)
{
  static const gchar *const names[CRUNCH_JOB_EVENT_COUNT] = {
      "submitted", "ok", "failed", "timed_out", "client_gone", "shutdown", "coalesced", "cache_hit",
  };

  g_string_append (out, "\"jobs\":{");
  for (guint e = 0; e < CRUNCH_JOB_EVENT_COUNT; e++)
    append_number (out, names[e], (gdouble)crunch_metrics_jobs_total (e));
  g_string_truncate (out, out->len - 1);
  g_string_append (out, "},");
}

static void
append_slowest (GString *out)
{
  g_autoptr (GPtrArray) jobs = crunch_metrics_slowest_jobs (10);

  g_string_append (out, "\"slowest_jobs\":[");
  for (guint i = 0; i < jobs->len; i++) {
    const CrunchJobRecord *job = jobs->pdata[i];
    g_string_append (out, i > 0 ? ",{\"function\":" : "{\"function\":");
    crunch_json_append_string (out, job->function);
    g_string_append (out, ",\"args\":");
    crunch_json_append_string (out, job->args);
    g_string_append (out, ",\"outcome\":");
    crunch_json_append_string (out, job->outcome);
    g_string_append_c (out, ',');
    append_number (out, "run_seconds", job->run_seconds);
    append_number (out, "finished", job->finished / 1e6);
    g_string_truncate (out, out->len - 1);
    g_string_append_c (out, '}');
  }
  g_string_append (out, "]");
}

/* "notes": lines the figures' owners contribute (worker processes, ...). */
static void
append_notes (GString *out)
{
  g_auto (GStrv) notes = crunch_metrics_summaries ();

  g_string_append (out, "\"notes\":[");
  for (guint i = 0; notes[i] != NULL; i++) {
    if (i > 0)
      g_string_append_c (out, ',');
    crunch_json_append_string (out, notes[i]);
  }
  g_string_append (out, "],");
}

GBytes *
crunch_status_render_json (void)
{
  GString *out = g_string_sized_new (4096);
  CrunchGauges g;
  gint64 now = g_get_real_time ();

  crunch_metrics_get_gauges (&g);
  g_string_append (out, "{\"version\":\"" PACKAGE_VERSION "\",");
  append_number (out, "time", now / 1e6);
  append_number (out, "uptime_seconds", (now - crunch_metrics_start_time ()) / 1e6);
  append_number (out, "requests_total", (gdouble)crunch_metrics_requests_total ());
  append_number (out, "workers_busy", g.workers_busy);
  append_number (out, "workers_total", g.workers_total);
  append_number (out, "jobs_queued", g.jobs_queued);
  append_number (out, "jobs_running", g.jobs_running);
  append_number (out, "queue_limit", g.queue_limit);
  append_number (out, "connections_open", g.connections_open);
  append_number (out, "connections_suspended", crunch_metrics_suspended ());
  g_string_append_printf (out, "\"draining\":%s,", g.draining ? "true" : "false");
  append_notes (out);
  crunch_metrics_status_members (out); /* e.g. "running_jobs" */
  append_jobs (out);
  append_routes (out);
  append_slowest (out);
  g_string_append (out, "}\n");
  return g_string_free_to_bytes (out);
}
