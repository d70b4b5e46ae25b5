/* requestid.c - see requestid.h. Called on the MHD polling threads; the counter is atomic. */
#include "requestid.h"

#include <stdio.h>

static gboolean
allowed (gchar c)
{
  return g_ascii_isalnum (c) || c == '.' || c == '_' || c == ':' || c == '-';
}

static void
generate (gchar *id)
{
  /* The random prefix tells apart ids of different processes (restarts, several instances). */
  static gsize prefix_once = 0;
  static guint32 prefix;
  static guint64 counter;

  if (g_once_init_enter (&prefix_once)) {
    prefix = g_random_int ();
    g_once_init_leave (&prefix_once, 1);
  }
  snprintf (id, CRUNCH_REQUEST_ID_MAX + 1, "%08x-%08" G_GINT64_MODIFIER "x", prefix,
            __atomic_add_fetch (&counter, 1, __ATOMIC_RELAXED));
}

void
crunch_request_id (gchar *id, const gchar *offered)
{
  gsize n = 0;

  for (const gchar *c = offered; c != NULL && *c != '\0' && n < CRUNCH_REQUEST_ID_MAX; c++) {
    if (allowed (*c))
      id[n++] = *c;
  }
  id[n] = '\0';
  if (n == 0)
    generate (id);
}
