/* accesslog.c - see accesslog.h. Called on the MHD polling threads, once per request, from the
 * request's completion; the format is read atomically, so a reload switches it live.
 *
 * DESIGN
 * With a writer (crunch_access_log_start(), [log] access_buffer > 0) the polling threads only
 * format the line and queue it, under `lock`; the writer thread writes the queue when it holds
 * access_buffer bytes or its oldest line is access_flush seconds old (nginx's access_log buffer=
 * and flush=): on stderr as one write(2), to journald one entry per line (the entry is the unit
 * there), so no polling thread waits for a disk, a pipe or journald. A queue past MAX_QUEUED
 * (a writer that cannot keep up) makes the polling threads write their lines themselves, as
 * without a writer: slower, never lost. crunch_access_log_stop() (main, once the server has
 * stopped) writes what is left and joins the thread: nothing is lost at exit or on SIGTERM; a
 * crash loses at most access_flush seconds of lines. */
#include "accesslog.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "json.h"
#include "logging.h"

#define MAX_QUEUED (8u << 20)
#define CLF_STAMP_SIZE 40

/* A queued line and the journald fields of its record. */
typedef struct {
  gchar *line, *request_id, *method, *path;
  guint status;
} Queued;

static struct {
  GMutex lock;
  GCond wake;
  GPtrArray *queue; /* Queued*: to the journal, one entry each */
  GString *text;    /* on stderr: the lines themselves */
  gsize bytes;
  gint64 oldest_us; /* monotonic: when the first queued line came */
  gsize buffer;     /* [log] access_buffer; 0: no writer (write at once) */
  gint64 flush_us;
  gboolean stop;
  GThread *thread;
} w;

/* CLF wants English month names whatever the locale. */
static const gchar *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                      "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* "12.410ms" from microseconds, exactly as "%.3fms" of ms would print it, without floating
 * point formatting (a measurable part of a /fast request's cost). */
static void
append_ms (GString *out, const gchar *label, gint64 us)
{
  us = MAX (us, 0);
  g_string_append_printf (out, "%s%" G_GINT64_FORMAT ".%03dms", label, us / 1000,
                          (gint)(us % 1000));
}

/* After the request id, like nginx's $request_time: the total time and, for compute requests,
 * where it went (queued, running) and how the job ended. */
static gchar *
format_timing (const CrunchAccessRecord *r)
{
  GString *out = g_string_new (NULL);

  append_ms (out, "", r->duration_us);
  if (r->queue_us >= 0) {
    append_ms (out, " queued=", r->queue_us);
    append_ms (out, " run=", r->run_us);
  }
  if (r->outcome != NULL)
    g_string_append_printf (out, " outcome=%s", r->outcome);
  if (r->coalesced)
    g_string_append (out, " coalesced");
  return g_string_free (out, FALSE);
}

/* CLF's time: "[05/Nov/2026:09:07:03 +0100]". */
static void
clf_stamp (GDateTime *when, gchar stamp[CLF_STAMP_SIZE])
{
  g_autofree gchar *zone = g_date_time_format (when, "%z");

  g_snprintf (stamp, CLF_STAMP_SIZE, "[%02d/%s/%04d:%02d:%02d:%02d %s]",
              g_date_time_get_day_of_month (when), months[g_date_time_get_month (when) - 1],
              g_date_time_get_year (when), g_date_time_get_hour (when),
              g_date_time_get_minute (when), g_date_time_get_second (when), zone);
}

static gchar *
format_common_at (const CrunchAccessRecord *r, const gchar *stamp)
{
  g_autofree gchar *path = g_strescape (r->path, NULL); /* no raw quotes or controls */
  g_autofree gchar *timing = format_timing (r);

  /* the API key name goes where CLF has the authenticated user */
  return g_strdup_printf ("%s - %s %s \"%s %s %s\" %u %zu \"%s\" %s", r->client,
                          r->key != NULL ? r->key : "-", stamp, r->method, path, r->protocol,
                          r->status, r->bytes, r->request_id, timing);
}

static gchar *
format_common (const CrunchAccessRecord *r, GDateTime *when)
{
  gchar stamp[CLF_STAMP_SIZE];

  clf_stamp (when, stamp);
  return format_common_at (r, stamp);
}

/* The CLF time of now, made once a second per thread (nginx caches its time strings too): a
 * local GDateTime costs a time zone lookup, a stat() of /etc/localtime, per request. */
static const gchar *
clf_now (void)
{
  static __thread gint64 second = -1;
  static __thread gchar stamp[CLF_STAMP_SIZE];
  gint64 now = g_get_real_time () / G_USEC_PER_SEC;

  if (now != second) {
    g_autoptr (GDateTime) when = g_date_time_new_from_unix_local (now);
    clf_stamp (when, stamp);
    second = now;
  }
  return stamp;
}

/* The local time zone, looked up once a second per thread: g_time_zone_new_local() stat()s and
 * readlink()s /etc/localtime on every call (GLib 2.74), which was a fifth of a JSON-logged
 * request's cost. A change of zone is seen within a second, as with clf_now(). */
static GTimeZone *
local_zone (void)
{
  static __thread gint64 second = -1;
  static __thread GTimeZone *zone;
  gint64 now = g_get_monotonic_time () / G_USEC_PER_SEC;

  if (now != second) { /* -1 at first */
    g_clear_pointer (&zone, g_time_zone_unref);
    zone = g_time_zone_new_local ();
    second = now;
  }
  return zone;
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

static void
log_line (const gchar *line, const gchar *request_id, const gchar *method, const gchar *path,
          guint status)
{
  gchar code[16];

  g_snprintf (code, sizeof code, "%u", status);
  /* journald fields (see crunchd(8), LOGGING): journalctl -u crunchd STATUS=503 */
  g_log_structured (CRUNCH_LOG_ACCESS_DOMAIN, G_LOG_LEVEL_INFO, "REQUEST_ID", request_id, "METHOD",
                    method, "ROUTE", path, "STATUS", code, "MESSAGE", "%s", line);
}

static void
queued_free (gpointer data)
{
  Queued *q = data;

  g_free (q->line);
  g_free (q->request_id);
  g_free (q->method);
  g_free (q->path);
  g_free (q);
}

/* Queues the line for the writer (taking it); FALSE when there is none or its queue is full. */
static gboolean
enqueue (gchar *line, const CrunchAccessRecord *r)
{
  gsize len = strlen (line);
  Queued *q = NULL;

  if (crunch_logging_to_journal ()) { /* made outside the lock */
    q = g_new (Queued, 1);
    *q = (Queued){NULL, g_strdup (r->request_id), g_strdup (r->method), g_strdup (r->path),
                  r->status};
  }
  g_mutex_lock (&w.lock);
  if (w.thread == NULL || w.stop || w.bytes > MAX_QUEUED ||
      __atomic_load_n (&w.buffer, __ATOMIC_RELAXED) == 0) {
    g_mutex_unlock (&w.lock);
    g_clear_pointer (&q, queued_free);
    return FALSE;
  }
  if (q != NULL) {
    q->line = line;
    g_ptr_array_add (w.queue, q);
  } else {
    g_string_append_len (w.text, line, (gssize)len);
    g_string_append_c (w.text, '\n');
  }
  /* the first line starts the flush clock; a full buffer is written at once */
  if (w.bytes == 0)
    w.oldest_us = g_get_monotonic_time ();
  if (w.bytes == 0 || w.bytes + len + 1 >= w.buffer)
    g_cond_signal (&w.wake);
  w.bytes += len + 1;
  g_mutex_unlock (&w.lock);
  if (q == NULL)
    g_free (line);
  return TRUE;
}

void
crunch_access_log (const CrunchAccessRecord *record)
{
  CrunchAccessLog format = crunch_logging_access_format ();
  g_autoptr (GDateTime) now = NULL;
  gchar *line;

  /* access lines are records at info, under [log] level like any other (the writer thread
   * writes its batches itself, so the level is looked at here, before any formatting) */
  if (format == CRUNCH_ACCESS_LOG_OFF || !crunch_logging_wants (G_LOG_LEVEL_INFO))
    return;
  if (format == CRUNCH_ACCESS_LOG_COMMON) {
    line = format_common_at (record, clf_now ());
  } else {
    now = g_date_time_new_now (local_zone ());
    line = crunch_access_format (format, record, now);
  }
  if (enqueue (line, record))
    return;
  log_line (line, record->request_id, record->method, record->path, record->status);
  g_free (line);
}

/* The writer thread, without the lock: journal entries one by one; stderr text in one write. */
static void
write_batch (GPtrArray *batch, GString *text)
{
  for (guint i = 0; i < batch->len; i++) {
    Queued *q = batch->pdata[i];
    log_line (q->line, q->request_id, q->method, q->path, q->status);
  }
  for (gsize done = 0; done < text->len;) {
    gssize n = write (STDERR_FILENO, text->str + done, text->len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break; /* stderr is gone: nothing else could be done with the lines either */
    done += (gsize)n;
  }
}

static gpointer
writer_thread (gpointer data)
{
  g_mutex_lock (&w.lock);
  for (;;) {
    g_autoptr (GPtrArray) batch = NULL;
    g_autoptr (GString) text = NULL;
    gint64 due = w.oldest_us + __atomic_load_n (&w.flush_us, __ATOMIC_RELAXED);
    if (w.bytes == 0 && w.stop)
      break;
    if (w.bytes == 0 || (!w.stop && w.bytes < w.buffer && g_get_monotonic_time () < due)) {
      if (w.bytes == 0)
        g_cond_wait (&w.wake, &w.lock);
      else
        g_cond_wait_until (&w.wake, &w.lock, due);
      continue;
    }
    batch = g_steal_pointer (&w.queue);
    text = g_steal_pointer (&w.text);
    w.queue = g_ptr_array_new_with_free_func (queued_free);
    w.text = g_string_sized_new (w.buffer + 1024);
    w.bytes = 0;
    g_mutex_unlock (&w.lock);
    write_batch (batch, text);
    g_mutex_lock (&w.lock);
  }
  g_mutex_unlock (&w.lock);
  return NULL;
}

void
crunch_access_log_configure (gsize buffer, gdouble flush_s)
{
  g_mutex_lock (&w.lock);
  __atomic_store_n (&w.buffer, buffer, __ATOMIC_RELAXED);
  __atomic_store_n (&w.flush_us, (gint64)(flush_s * G_USEC_PER_SEC), __ATOMIC_RELAXED);
  g_cond_signal (&w.wake);
  g_mutex_unlock (&w.lock);
}

void
crunch_access_log_start (gsize buffer, gdouble flush_s)
{
  crunch_access_log_configure (buffer, flush_s);
  g_mutex_lock (&w.lock);
  if (w.thread == NULL) {
    w.queue = g_ptr_array_new_with_free_func (queued_free);
    w.text = g_string_sized_new (buffer + 1024);
    w.stop = FALSE;
    w.thread = g_thread_new ("crunchd-accesslog", writer_thread, NULL);
  }
  g_mutex_unlock (&w.lock);
}

void
crunch_access_log_stop (void)
{
  GThread *thread;

  g_mutex_lock (&w.lock);
  thread = g_steal_pointer (&w.thread);
  w.stop = TRUE;
  g_cond_signal (&w.wake);
  g_mutex_unlock (&w.lock);
  if (thread == NULL)
    return;
  g_thread_join (thread); /* it writes everything queued first */
  g_clear_pointer (&w.queue, g_ptr_array_unref);
  g_string_free (g_steal_pointer (&w.text), TRUE);
  w.bytes = 0;
}
