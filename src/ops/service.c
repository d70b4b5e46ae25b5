/* service.c - systemd glue, optional at build time.
 *
 * DESIGN
 * Everything here runs on the main thread but one thread of its own: notifications are sent from
 * the GMainLoop (start-up, reload, stop, and the heartbeat's timers), never from MHD or worker
 * threads, so that a watchdog ping proves the main loop is alive.
 * Stop and reload signals are taken by that thread ("crunchd-signals", for the process's life),
 * which only passes them to the main loop (crunch_service_confine_signals()). A process-directed
 * signal goes to any thread that does not block it: in a ThreadSanitizer build a thread that then
 * sleeps in a raw futex wait (an idle GThreadPool worker) never ran GLib's handler, and SIGTERM was
 * lost (CI: crunchd ignored it for 30 s after a reload had made a new worker thread); in any build
 * the handler cut short a plugin's blocking call on that thread with EINTR. With every thread
 * blocking them, the kernel keeps them pending for sigwaitinfo(). */
#include "service.h"

#include <pthread.h>
#include <signal.h>

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define N_HANDLED 3
static const gint handled_signals[N_HANDLED] = {SIGHUP, SIGINT, SIGTERM};

typedef struct {
  GSourceFunc func; /* NULL: the default action */
  gpointer data;
} SignalHandler;

static GMutex handlers_lock;
static SignalHandler handlers[N_HANDLED];

static gint
handler_index (gint signum)
{
  for (gint i = 0; i < N_HANDLED; i++)
    if (handled_signals[i] == signum)
      return i;
  g_return_val_if_reached (-1);
}

/* Main context: one signal's delivery. */
static gboolean
deliver (gpointer data)
{
  const SignalHandler *h = data; /* written once, on this thread, before the signal came */

  h->func (h->data);
  return G_SOURCE_REMOVE;
}

/* The default action, as if the signal had not been blocked: the process ends by it. */
static void
die_by (gint signum)
{
  struct sigaction dfl = {.sa_handler = SIG_DFL};
  sigset_t one;

  sigemptyset (&one);
  sigaddset (&one, signum);
  sigaction (signum, &dfl, NULL);
  pthread_sigmask (SIG_UNBLOCK, &one, NULL);
  raise (signum);
}

static gpointer
signal_thread (gpointer data)
{
  const sigset_t *set = data;

  for (;;) {
    gint signum = sigwaitinfo (set, NULL);
    SignalHandler *h;
    gboolean handled;
    if (signum < 0)
      continue; /* EINTR */
    g_mutex_lock (&handlers_lock);
    h = &handlers[handler_index (signum)];
    handled = h->func != NULL;
    if (handled)
      g_idle_add (deliver, h);
    g_mutex_unlock (&handlers_lock);
    if (!handled)
      die_by (signum);
  }
  return NULL;
}

/* After fork(), in the child: no signal blocked, as a program expects (exec keeps the mask). */
static void
unblock_in_child (void)
{
  sigset_t none;

  sigemptyset (&none);
  pthread_sigmask (SIG_SETMASK, &none, NULL);
}

void
crunch_service_confine_signals (void)
{
  static sigset_t set;

  /* The context g_idle_add() wakes (from this thread, and from the job store's when it hands a
   * recovered job over) exists before any thread does: made later by whichever thread came
   * first, TSan saw no order between its creation and another thread's use. */
  g_main_context_default ();
  sigemptyset (&set);
  for (gint i = 0; i < N_HANDLED; i++)
    sigaddset (&set, handled_signals[i]);
  pthread_sigmask (SIG_BLOCK, &set, NULL);
  pthread_atfork (NULL, NULL, unblock_in_child);
  g_thread_unref (g_thread_new ("crunchd-signals", signal_thread, &set));
}

void
crunch_service_on_signal (gint signum, GSourceFunc func, gpointer data)
{
  gint i = handler_index (signum);

  g_return_if_fail (i >= 0);
  g_mutex_lock (&handlers_lock);
  handlers[i] = (SignalHandler){func, data};
  g_mutex_unlock (&handlers_lock);
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
