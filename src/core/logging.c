/* logging.c - one GLogWriterFunc for the whole process.
 *
 * Messages above the configured level are dropped here (cheaply, before any formatting), so
 * `[log] level` works without G_MESSAGES_DEBUG. Under systemd (stderr connected to the journal)
 * records go to journald with their structured fields (REQUEST_ID, METHOD, STATUS, ...);
 * otherwise one plain line each on stderr; access-log records exactly as formatted. The level is an
 * atomic: a reload changes it while other threads log. */
#include "logging.h"

#include <stdio.h>
#include <unistd.h>

static gint max_level = G_LOG_LEVEL_INFO; /* the least severe level still written */
static gint access_format = CRUNCH_ACCESS_LOG_COMMON;
static gboolean to_journal;
static GLogWriterFunc journal_sink = g_log_writer_journald;
static gpointer journal_sink_data;

static const struct {
  const gchar *name;
  GLogLevelFlags level;
} levels[] = {
    {"error", G_LOG_LEVEL_ERROR},     {"critical", G_LOG_LEVEL_CRITICAL},
    {"warning", G_LOG_LEVEL_WARNING}, {"message", G_LOG_LEVEL_MESSAGE},
    {"info", G_LOG_LEVEL_INFO},       {"debug", G_LOG_LEVEL_DEBUG},
};

void
crunch_logging_set_level (const gchar *level)
{
  for (gsize i = 0; i < G_N_ELEMENTS (levels); i++) {
    if (g_str_equal (levels[i].name, level))
      g_atomic_int_set (&max_level, levels[i].level);
  }
}

void
crunch_logging_set_access (CrunchAccessLog format)
{
  g_atomic_int_set (&access_format, (gint)format);
}

CrunchAccessLog
crunch_logging_access_format (void)
{
  return (CrunchAccessLog)g_atomic_int_get (&access_format);
}

/* An access-log record's MESSAGE, or NULL for any other record. */
static const gchar *
access_line (const GLogField *fields, gsize n_fields)
{
  const gchar *message = NULL;
  gboolean access = FALSE;

  for (gsize i = 0; i < n_fields; i++) {
    if (g_str_equal (fields[i].key, "GLIB_DOMAIN"))
      access = g_strcmp0 (fields[i].value, CRUNCH_LOG_ACCESS_DOMAIN) == 0;
    else if (g_str_equal (fields[i].key, "MESSAGE"))
      message = fields[i].value;
  }
  return access ? message : NULL;
}

gboolean
crunch_logging_wants (GLogLevelFlags level)
{
  /* GLogLevelFlags grow numerically as severity falls: ERROR=4 ... DEBUG=128. */
  return (level & G_LOG_LEVEL_MASK) <= (GLogLevelFlags)g_atomic_int_get (&max_level) ||
         (level & G_LOG_FLAG_FATAL);
}

static GLogWriterOutput
writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  if (!crunch_logging_wants (level))
    return G_LOG_WRITER_HANDLED;
  if (to_journal &&
      journal_sink (level, fields, n_fields, journal_sink_data) == G_LOG_WRITER_HANDLED)
    return G_LOG_WRITER_HANDLED;

  /* access lines go out exactly as formatted (CLF or JSON), for log tools to parse */
  const gchar *access = access_line (fields, n_fields);
  if (access != NULL) {
    fprintf (stderr, "%s\n", access);
    return G_LOG_WRITER_HANDLED;
  }
  g_autofree gchar *line = g_log_writer_format_fields (level, fields, n_fields, FALSE);
  fprintf (stderr, "%s\n", line);
  return G_LOG_WRITER_HANDLED;
}

void
crunch_logging_init (void)
{
  to_journal = g_log_writer_is_journald (fileno (stderr));
  g_log_set_writer_func (writer, NULL, NULL);
}

gboolean
crunch_logging_to_journal (void)
{
  return to_journal;
}

void
crunch_logging_set_journal_sink (GLogWriterFunc sink, gpointer data)
{
  journal_sink = sink;
  journal_sink_data = data;
  to_journal = TRUE;
}
