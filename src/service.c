/* service.c - systemd glue, optional at build time. */
#include "service.h"

#ifdef HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

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
#endif
  return fds;
}
