/* fuzz-listen.c - libFuzzer target: [server] listen / --listen addresses (ADDR:PORT, [V6]:PORT). */
#include <netinet/in.h>

#include "config.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  g_autoptr (GError) error = NULL;
  struct sockaddr_storage addr;
  socklen_t len = 0;
  gboolean ok = crunch_parse_listen_address (text, &addr, &len, &error);

  g_assert (ok == (error == NULL));
  if (ok)
    g_assert ((addr.ss_family == AF_INET && len == sizeof (struct sockaddr_in)) ||
              (addr.ss_family == AF_INET6 && len == sizeof (struct sockaddr_in6)));
  return 0;
}
