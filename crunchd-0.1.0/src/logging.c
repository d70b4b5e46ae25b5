/* logging.c - one GLogWriterFunc for the whole process.
 *
 * Messages above the configured level are dropped here (cheaply, before any formatting), so
 * `[log] level` works without G_MESSAGES_DEBUG. Under systemd (stderr connected to the journal)
 * records go to journald with their structured fields (REQUEST_ID, ROUTE, STATUS, ...);
 * otherwise one plain line each on stderr. The level is an atomic: a reload changes it while
 * other threads log. */
#include "logging.h"

#include <stdio.h>
#include <unistd.h>

static gint max_level = G_LOG_LEVEL_INFO; /* the least severe level still written */
static gint access_enabled = TRUE;
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
crunch_logging_set_access (gboolean enabled)
{
  g_atomic_int_set (&access_enabled, enabled);
}

gboolean
crunch_logging_access_enabled (void)
{
  return g_atomic_int_get (&access_enabled);
}

static GLogWriterOutput
writer (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer user_data)
{
  /* GLogLevelFlags grow numerically as severity falls: ERROR=4 ... DEBUG=128. */
  if ((level & G_LOG_LEVEL_MASK) > (GLogLevelFlags)g_atomic_int_get (&max_level) &&
      !(level & G_LOG_FLAG_FATAL))
    return G_LOG_WRITER_HANDLED;
  if (to_journal &&
      journal_sink (level, fields, n_fields, journal_sink_data) == G_LOG_WRITER_HANDLED)
    return G_LOG_WRITER_HANDLED;

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

void
crunch_logging_set_journal_sink (GLogWriterFunc sink, gpointer data)
{
  journal_sink = sink;
  journal_sink_data = data;
  to_journal = TRUE;
}
