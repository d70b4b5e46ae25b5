/* accesslog.h - one line per finished request: Common Log Format or one JSON object. */
#pragma once

#include <glib.h>

#include "config.h"

typedef struct {
  const gchar *client; /* numeric address */
  const gchar *key;    /* the caller's API key name ([auth]), or NULL */
  const gchar *method, *path, *protocol;
  guint status;
  gsize bytes;
  gint64 duration_us;
  const gchar *request_id;
  gint64 queue_us, run_us; /* compute requests whose job ran; -1 otherwise */
  const gchar *outcome;    /* compute requests: crunch_job_outcome_name(); NULL otherwise */
  gboolean coalesced;      /* it shared a computation another request started */
} CrunchAccessRecord;

/* Formats the record as `format` asks: COMMON is the Common Log Format
 *   127.0.0.1 - - [25/Nov/2026:09:00:00 +0000] "GET /fast HTTP/1.1" 200 6 "REQUEST-ID"
 * (the request id appended in quotes, as "combined" appends fields; the API key name, if any,
 * in CLF's user field: `127.0.0.1 - alice [...`); JSON is one object per
 * line, with the compute details (queue and run time, outcome, coalesced) as well. Returns NULL for
 * OFF. */
gchar *crunch_access_format (CrunchAccessLog format, const CrunchAccessRecord *record,
                             GDateTime *when);
/* Writes the record to the access log domain if the access log is on: at once, or through the
 * writer thread once one is started. Any thread. */
void crunch_access_log (const CrunchAccessRecord *record);
/* The writer thread ([log] access_buffer bytes, access_flush seconds; buffer 0: lines are
 * written at once by the thread that logs them). configure() applies a reload. */
void crunch_access_log_start (gsize buffer, gdouble flush_s);
void crunch_access_log_configure (gsize buffer, gdouble flush_s);
/* Writes every queued line and stops the writer thread (at exit). */
void crunch_access_log_stop (void);
