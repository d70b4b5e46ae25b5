/* service.h - systemd glue: readiness notification and socket activation.
 * Without libsystemd (--without-systemd) every call is a harmless no-op. */
#pragma once

#include <glib.h>

/* Send a notify state ("READY=1", "STOPPING=1", ...) if NOTIFY_SOCKET is set. */
void crunch_service_notify (const gchar *state);
void crunch_service_notifyf (const gchar *format, ...) G_GNUC_PRINTF (1, 2);
/* Listening sockets passed by systemd (LISTEN_FDS); empty without activation. */
GArray *crunch_service_listen_fds (void);
