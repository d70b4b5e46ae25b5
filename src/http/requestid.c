/* requestid.c - see requestid.h. Called on the MHD polling threads; the counter is atomic. */
#include "requestid.h"

static gboolean
allowed (gchar c)
{
  return g_ascii_isalnum (c) || c == '.' || c == '_' || c == ':' || c == '-';
}

/* `value` in lower-case hex, at least `width` digits; returns the end. (snprintf() was 1.5 % of
 * a /fast request's CPU.) */
static gchar *
put_hex (gchar *out, guint64 value, guint width)
{
  guint digits = width;

  while (digits < 16 && (value >> (4 * digits)) != 0)
    digits++;
  for (guint i = digits; i-- > 0; value >>= 4)
    out[i] = "0123456789abcdef"[value & 0xf];
  return out + digits;
}

static void
generate (gchar *id)
{
  /* The random prefix tells apart ids of different processes (restarts, several instances).
   * Made by the first polling thread to need it, with plain atomics (0: not yet; several
   * polling threads may race here, and TSan cannot see into g_once_init_enter()). */
  static guint32 prefix;
  static guint64 counter;
  guint32 p = __atomic_load_n (&prefix, __ATOMIC_ACQUIRE);

  if (p == 0) {
    guint32 mine = g_random_int () | 1u;
    p = __atomic_compare_exchange_n (&prefix, &p, mine, FALSE, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)
            ? mine
            : p; /* another thread's, which the failed exchange loaded */
  }
  id = put_hex (id, p, 8);
  *id++ = '-';
  *put_hex (id, __atomic_add_fetch (&counter, 1, __ATOMIC_RELAXED), 8) = '\0';
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
