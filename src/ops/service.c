/* service.c - systemd glue, optional at build time.
 *
 * DESIGN
 * Everything here runs on the main thread: notifications are sent from the GMainLoop (start-up,
 * reload, stop, and the heartbeat's timers), never from MHD or worker threads, so that a
 * watchdog ping proves the main loop is alive.
 * Stop and reload signals go to the main thread too (crunch_service_confine_signals()). A
 * process-directed signal goes to any thread that does not block it; in a ThreadSanitizer build
 * a thread that then sleeps in a raw futex wait (an idle GThreadPool worker) never runs the
 * handler, and SIGTERM was lost (CI: crunchd ignored it for 30 s after a reload made a new
 * worker thread). Without sanitizers the handler runs on any thread, but it still cuts short a
 * plugin's blocking call there with EINTR. */
#include "service.h"

#include <poll.h>
#include <signal.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static sigset_t open_mask; /* the main thread's mask while it polls */

/* The default main context's poll: poll() with the stop and reload signals unblocked. */
static gint
poll_open (GPollFD *fds, guint nfds, gint timeout_ms)
{
  struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};

  G_STATIC_ASSERT (sizeof (GPollFD) == sizeof (struct pollfd));
  return ppoll ((struct pollfd *)fds, nfds, timeout_ms >= 0 ? &ts : NULL, &open_mask);
}

void
crunch_service_confine_signals (void)
{
  static const int handled[] = {SIGHUP, SIGINT, SIGTERM};
  sigset_t set;

  sigemptyset (&set);
  for (guint i = 0; i < G_N_ELEMENTS (handled); i++)
    sigaddset (&set, handled[i]);
  pthread_sigmask (SIG_BLOCK, &set, &open_mask);
  for (guint i = 0; i < G_N_ELEMENTS (handled); i++)
    sigdelset (&open_mask, handled[i]);
  g_main_context_set_poll_func (NULL, poll_open);
}

void
crunch_service_notify (const gchar *state)
{
#ifdef HAVE_SYSTEMD
  sd_notify (0, state);
#endif
}

void
crunch_service_notifyf (const gchar *format, ...)
{
  va_list args;
  g_autofree gchar *state = NULL;

  va_start (args, format);
  state = g_strdup_vprintf (format, args);
  va_end (args);
  crunch_service_notify (state);
}

GArray *
crunch_service_listen_fds (void)
{
  GArray *fds = g_array_new (FALSE, FALSE, sizeof (gint));
#ifdef HAVE_SYSTEMD
  /* unset_environment: children we might spawn must not think the sockets are theirs */
  gint n = sd_listen_fds (1);

  for (gint i = 0; i < n; i++) {
    gint fd = SD_LISTEN_FDS_START + i;
    if (sd_is_socket (fd, AF_UNSPEC, SOCK_STREAM, 1) > 0)
      g_array_append_val (fds, fd);
    else
      g_warning ("ignoring passed file descriptor %d: not a listening stream socket", fd);
  }
#else
  if (g_getenv ("LISTEN_FDS") != NULL)
    g_warning ("LISTEN_FDS is set but crunchd was built --without-systemd: binding from the "
               "configuration instead");
#endif
  return fds;
}

guint64
crunch_service_watchdog_usec (void)
{
  guint64 usec = 0;
#ifdef HAVE_SYSTEMD
  uint64_t value;

  if (sd_watchdog_enabled (0, &value) > 0)
    usec = value;
#endif
  return usec;
}

struct CrunchHeartbeat {
  CrunchStatusFunc status_func;
  gpointer data;
  gchar *last_status;
  guint status_source;
  guint watchdog_source;
};

static gboolean
on_watchdog (gpointer data)
{
  crunch_service_notify ("WATCHDOG=1");
  return G_SOURCE_CONTINUE;
}

void
crunch_heartbeat_update (CrunchHeartbeat *self)
{
  g_autofree gchar *status = self->status_func (self->data);

  if (g_strcmp0 (status, self->last_status) == 0)
    return;
  crunch_service_notifyf ("STATUS=%s", status);
  g_free (self->last_status);
  self->last_status = g_steal_pointer (&status);
}

static gboolean
on_status (gpointer data)
{
  crunch_heartbeat_update (data);
  return G_SOURCE_CONTINUE;
}

CrunchHeartbeat *
crunch_heartbeat_new (guint status_ms, CrunchStatusFunc status_func, gpointer data)
{
  CrunchHeartbeat *self = g_new0 (CrunchHeartbeat, 1);
  guint64 watchdog_usec = crunch_service_watchdog_usec ();

  self->status_func = status_func;
  self->data = data;
  crunch_heartbeat_update (self);
  self->status_source = g_timeout_add (status_ms, on_status, self);
  if (watchdog_usec > 0) {
    /* half the interval, as sd_watchdog_enabled(3) recommends; at least every millisecond */
    guint ms = (guint)MAX (1, MIN (watchdog_usec / 2000, G_MAXUINT));
    self->watchdog_source = g_timeout_add (ms, on_watchdog, NULL);
    crunch_service_notify ("WATCHDOG=1");
    g_info ("systemd watchdog: pinging every %u ms", ms);
  }
  return self;
}

void
crunch_heartbeat_free (CrunchHeartbeat *self)
{
  if (self == NULL)
    return;
  g_source_remove (self->status_source);
  if (self->watchdog_source != 0)
    g_source_remove (self->watchdog_source);
  g_free (self->last_status);
  g_free (self);
}
