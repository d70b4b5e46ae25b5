/* logging.h - GLib structured logging: level filter, journald or stderr. */
#pragma once

#include <glib.h>

#include "config.h"

#define CRUNCH_LOG_ACCESS_DOMAIN "crunchd-access"

void crunch_logging_init (void);
/* level: error|critical|warning|message|info|debug (validated by the config loader). */
void crunch_logging_set_level (const gchar *level);
/* Whether a record at `level` would be written ([log] level). Any thread. */
gboolean crunch_logging_wants (GLogLevelFlags level);
void crunch_logging_set_access (CrunchAccessLog format);
CrunchAccessLog crunch_logging_access_format (void);
/* Whether records go to journald (set at init). */
gboolean crunch_logging_to_journal (void);
/* For tests: treat stderr as the journal and hand journal records (all their fields) to `sink`
 * instead of journald. Call after crunch_logging_init(). */
void crunch_logging_set_journal_sink (GLogWriterFunc sink, gpointer data);
