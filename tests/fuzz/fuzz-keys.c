/* fuzz-keys.c - libFuzzer target: the keys file parser ([auth] keys_file, auth.c) and the
 * Authorization header check. The input is split at its first NUL: the part before is a keys
 * file, the part after an Authorization header value checked against the keys it holds. */
#include <string.h>

#include "auth.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

/* Keeps the "API keys: N from ..." message of every publish off the fuzzer's output. */
static GLogWriterOutput
quiet (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  return G_LOG_WRITER_HANDLED;
}

static void
check_header (CrunchKeyring *keyring, const gchar *header)
{
  g_autoptr (CrunchAuth) auth = crunch_auth_new ();
  CrunchAuthGrant grant = {0};
  CrunchReply refusal = {0};
  CrunchRouteMatch match;
  gboolean ok;

  g_assert (crunch_routes_match ("GET", "/fib/3", &match) == CRUNCH_ROUTE_FOUND);
  crunch_auth_publish (
      auth, crunch_auth_settings_new (keyring, "fuzz.keys", (const gchar *const[]){"/fast", NULL}));
  ok = crunch_auth_check (auth, match.route, FALSE, header, &grant, &refusal);
  /* a key is found only for a valid Bearer token; otherwise 401, 403 or 429 */
  g_assert (ok == (grant.outcome == CRUNCH_AUTH_OK));
  g_assert (ok || refusal.status == 401 || refusal.status == 403 || refusal.status == 429);
  g_assert (!ok || g_ascii_strncasecmp (header, "Bearer ", 7) == 0);
  if (ok)
    crunch_auth_may_call (&grant, "fib", &refusal);
  crunch_reply_clear (&refusal);
  crunch_auth_finish (auth, &grant);
}

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  static gsize quieted;
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  gsize keys_len = strlen (text);
  const gchar *header = keys_len < size ? text + keys_len + 1 : "";
  g_autoptr (GError) error = NULL;
  CrunchKeyring *keyring;

  if (g_once_init_enter (&quieted)) {
    g_log_set_writer_func (quiet, NULL, NULL);
    g_once_init_leave (&quieted, 1);
  }
  keyring = crunch_keyring_parse (text, keys_len, "fuzz.keys", &error);
  g_assert ((keyring == NULL) == (error != NULL));
  if (keyring == NULL) {
    g_assert (g_str_has_prefix (error->message, "fuzz.keys: "));
    return 0;
  }
  g_assert (crunch_keyring_size (keyring) <= CRUNCH_AUTH_MAX_KEYS);
  check_header (keyring, header); /* takes the keyring */
  return 0;
}
