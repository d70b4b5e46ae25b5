/* logging.h - GLib structured logging: level filter, journald or stderr. */
#pragma once

#include <glib.h>

#define CRUNCH_LOG_ACCESS_DOMAIN "crunchd-access"

void crunch_logging_init (void);
/* level: error|critical|warning|message|info|debug (validated by the config loader). */
void crunch_logging_set_level (const gchar *level);
void crunch_logging_set_access (gboolean enabled);
gboolean crunch_logging_access_enabled (void);
