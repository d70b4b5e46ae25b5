/* service.h - systemd glue: readiness, status, watchdog and socket activation.
 * Without libsystemd (--without-systemd) notifications are no-ops and no sockets are passed. */
#pragma once

#include <glib.h>

/* Send a notify state ("READY=1", "STOPPING=1", ...) if NOTIFY_SOCKET is set. */
void crunch_service_notify (const gchar *state);
void crunch_service_notifyf (const gchar *format, ...) G_GNUC_PRINTF (1, 2);
/* Listening sockets passed by systemd (LISTEN_FDS); empty without activation. */
GArray *crunch_service_listen_fds (void);
/* SIGHUP, SIGINT and SIGTERM are taken by one thread of their own ("crunchd-signals", in
 * sigwaitinfo()) and blocked in every other thread. Call it first in main(), before any thread
 * starts (threads inherit the mask). Until crunch_service_on_signal() has been called for a
 * signal, it has its default action: the process ends, as a start-up that takes too long (or
 * --check-config) can be interrupted. A child process gets the usual mask back after fork(). It
 * also makes the default main context, so that it exists before any thread. */
void crunch_service_confine_signals (void);
/* From now on `signum` (one of the three) calls func(data) on the main context, each time it
 * comes, as g_unix_signal_add() would (func's return value is ignored). Main thread only. */
void crunch_service_on_signal (gint signum, GSourceFunc func, gpointer data);
/* The watchdog interval systemd asked for (WATCHDOG_USEC for this process), 0 when none. */
guint64 crunch_service_watchdog_usec (void);

/* The main loop's heartbeat to systemd: `WATCHDOG=1` every half watchdog interval (when the unit
 * sets WatchdogSec=) and `STATUS=<text>` every status_ms milliseconds, but only when the text
 * returned by status_func (called on the main thread, caller frees) has changed. Both run as
 * GSources on the thread-default main context, so a wedged main loop stops the pings and
 * systemd restarts the service. */
typedef gchar *(*CrunchStatusFunc) (gpointer data);
typedef struct CrunchHeartbeat CrunchHeartbeat;

CrunchHeartbeat *crunch_heartbeat_new (guint status_ms, CrunchStatusFunc status_func,
                                       gpointer data);
/* Sends the status now if it changed (after a reload, on stopping). */
void crunch_heartbeat_update (CrunchHeartbeat *self);
void crunch_heartbeat_free (CrunchHeartbeat *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchHeartbeat, crunch_heartbeat_free)
