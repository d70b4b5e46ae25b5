/* fuzz-forwarded.c - libFuzzer target: [server] trusted_proxies blocks and the Forwarded /
 * X-Forwarded-For parsers (forwarded.c). The input is split at its first NUL: the part before is
 * a header value read as Forwarded and as X-Forwarded-For, the part after a CIDR block. */
#include <arpa/inet.h>
#include <string.h>

#include "forwarded.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

/* The result is the peer, or a canonical numeric address. */
static void
check_client (CrunchForwardedSource source, const gchar *peer, const gchar *client)
{
  guint8 buf[16];

  if (source != CRUNCH_FORWARDED_HEADER) {
    g_assert_cmpstr (client, ==, peer);
    return;
  }
  g_assert (inet_pton (AF_INET, client, buf) == 1 || inet_pton (AF_INET6, client, buf) == 1);
  g_assert (!g_str_has_prefix (client, "::ffff:") || strchr (client, '.') == NULL);
}

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  gsize header_len = strlen (text);
  const gchar *block = header_len < size ? text + header_len + 1 : "";
  const gchar *trusted[] = {"127.0.0.0/8", "::1", "10.0.0.0/8", block, NULL};
  g_autoptr (CrunchProxies) proxies = crunch_proxies_new (trusted, NULL);
  gchar client[CRUNCH_ADDRESS_MAX];
  CrunchForwardedSource source;

  if (proxies == NULL) /* a bad block: the fixed ones alone */
    proxies =
        crunch_proxies_new ((const gchar *[]){"127.0.0.0/8", "::1", "10.0.0.0/8", NULL}, NULL);
  g_assert (proxies != NULL);
  crunch_proxies_contains (proxies, text);
  source = crunch_forwarded_client (proxies, "127.0.0.1", text, NULL, client);
  check_client (source, "127.0.0.1", client);
  source = crunch_forwarded_client (proxies, "::1", NULL, text, client);
  check_client (source, "::1", client);
  /* an untrusted peer's headers are never read */
  source = crunch_forwarded_client (proxies, "192.0.2.1", text, text, client);
  g_assert (source == CRUNCH_FORWARDED_PEER || crunch_proxies_contains (proxies, "192.0.2.1"));
  return 0;
}
