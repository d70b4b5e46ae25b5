/* forwarded.c - trusted proxies and the client address behind them (see forwarded.h).
 *
 * Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one comparison
 * serves both families and an IPv4 peer on a dual-stack socket matches an IPv4 block.
 * X-Forwarded-For is split on commas and read from the right, so whatever a client put at its
 * left end (anything at all: a proxy appends to what it got) is never parsed. Forwarded is
 * tokenized whole (a quoted string may hold a comma), and any syntax error in it means the peer
 * address is used. */
#include "forwarded.h"

#include <arpa/inet.h>
#include <string.h>

#include "config.h"

typedef struct {
  guint8 b[16];
} Addr;

typedef struct {
  Addr net;
  guint bits; /* 0..128, IPv4 prefixes + 96 */
} Block;

struct CrunchProxies {
  GArray *blocks;
};

/* A numeric IPv4 or IPv6 address of `len` bytes (not NUL-terminated). */
static gboolean
parse_ip (const gchar *text, gsize len, Addr *out)
{
  gchar buf[64];
  struct in_addr v4;

  if (len == 0 || len >= sizeof buf)
    return FALSE;
  memcpy (buf, text, len);
  buf[len] = '\0';
  if (inet_pton (AF_INET, buf, &v4) == 1) {
    memset (out->b, 0, 10);
    out->b[10] = out->b[11] = 0xff;
    memcpy (out->b + 12, &v4, 4);
    return TRUE;
  }
  return inet_pton (AF_INET6, buf, out->b) == 1;
}

static gboolean
is_mapped (const Addr *a)
{
  static const guint8 prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

  return memcmp (a->b, prefix, sizeof prefix) == 0;
}

static void
format_ip (const Addr *a, gchar out[CRUNCH_ADDRESS_MAX])
{
  if (is_mapped (a))
    inet_ntop (AF_INET, a->b + 12, out, CRUNCH_ADDRESS_MAX);
  else
    inet_ntop (AF_INET6, a->b, out, CRUNCH_ADDRESS_MAX);
}

/* The first `bits` bits of a and b are equal. */
static gboolean
prefix_equal (const Addr *a, const Addr *b, guint bits)
{
  guint whole = bits / 8, rest = bits % 8;
  guint8 mask = (guint8)(0xff << (8 - rest));

  return memcmp (a->b, b->b, whole) == 0 &&
         (rest == 0 || ((a->b[whole] ^ b->b[whole]) & mask) == 0);
}

static gboolean
parse_block (const gchar *text, Block *block)
{
  const gchar *slash = strchr (text, '/');
  gsize len = slash != NULL ? (gsize)(slash - text) : strlen (text);
  guint64 bits;

  if (!parse_ip (text, len, &block->net))
    return FALSE;
  block->bits = 128;
  if (slash == NULL)
    return TRUE;
  if (!g_ascii_string_to_unsigned (slash + 1, 10, 0, is_mapped (&block->net) ? 32 : 128, &bits,
                                   NULL))
    return FALSE;
  block->bits = (guint)bits + (is_mapped (&block->net) ? 96 : 0);
  /* host bits must be zero: compare with the network masked by its own prefix */
  for (guint i = block->bits; i < 128; i++) {
    if (block->net.b[i / 8] & (0x80 >> (i % 8)))
      return FALSE;
  }
  return TRUE;
}

CrunchProxies *
crunch_proxies_new (const gchar *const *cidrs, GError **error)
{
  g_autoptr (CrunchProxies) self = g_new0 (CrunchProxies, 1);

  self->blocks = g_array_new (FALSE, FALSE, sizeof (Block));
  for (const gchar *const *c = cidrs; c != NULL && *c != NULL; c++) {
    Block block;
    if (!parse_block (*c, &block)) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "'%s': expected an address or ADDRESS/PREFIX with no host bits set below the "
                   "prefix (for example 10.0.0.0/8 or ::1/128)",
                   *c);
      return NULL;
    }
    g_array_append_val (self->blocks, block);
  }
  return g_steal_pointer (&self);
}

void
crunch_proxies_free (CrunchProxies *proxies)
{
  if (proxies == NULL)
    return;
  if (proxies->blocks != NULL)
    g_array_unref (proxies->blocks);
  g_free (proxies);
}

gboolean
crunch_proxies_is_empty (const CrunchProxies *proxies)
{
  return proxies == NULL || proxies->blocks->len == 0;
}

static gboolean
contains (const CrunchProxies *proxies, const Addr *a)
{
  for (guint i = 0; i < proxies->blocks->len; i++) {
    const Block *block = &g_array_index (proxies->blocks, Block, i);
    if (prefix_equal (&block->net, a, block->bits))
      return TRUE;
  }
  return FALSE;
}

gboolean
crunch_proxies_contains (const CrunchProxies *proxies, const gchar *address)
{
  Addr a;

  return proxies != NULL && parse_ip (address, strlen (address), &a) && contains (proxies, &a);
}

static gboolean
is_ows (gchar c)
{
  return c == ' ' || c == '\t';
}

/* A node's port (RFC 7239 6): a number up to 65535, or an obfuscated "_" name. */
static gboolean
port_valid (const gchar *s, gsize len)
{
  if (len > 1 && s[0] == '_') {
    for (gsize i = 1; i < len; i++) {
      if (!g_ascii_isalnum (s[i]) && s[i] != '.' && s[i] != '_' && s[i] != '-')
        return FALSE;
    }
    return TRUE;
  }
  guint port = 0;

  if (len == 0 || len > 5)
    return FALSE;
  for (gsize i = 0; i < len; i++) {
    if (!g_ascii_isdigit (s[i]))
      return FALSE;
    port = port * 10 + (guint)(s[i] - '0');
  }
  return port <= 65535;
}

/* One hop: "192.0.2.1", "192.0.2.1:8080", "[2001:db8::1]", "[2001:db8::1]:8080", and (in
 * X-Forwarded-For) a bare "2001:db8::1". Anything else ("unknown", "_hidden") is not an address. */
static gboolean
parse_node (const gchar *s, gsize len, gboolean bare_ipv6, Addr *out)
{
  const gchar *close, *colon;

  if (len > 0 && s[0] == '[') {
    close = memchr (s, ']', len);
    if (close == NULL || memchr (s + 1, ':', (gsize)(close - s - 1)) == NULL ||
        !parse_ip (s + 1, (gsize)(close - s - 1), out))
      return FALSE;
    len -= (gsize)(close + 1 - s);
    return len == 0 || (close[1] == ':' && port_valid (close + 2, len - 1));
  }
  colon = memchr (s, ':', len);
  if (colon != NULL && memchr (colon + 1, ':', len - (gsize)(colon + 1 - s)) == NULL)
    return parse_ip (s, (gsize)(colon - s), out) && is_mapped (out) &&
           port_valid (colon + 1, len - (gsize)(colon + 1 - s));
  return parse_ip (s, len, out) && (bare_ipv6 || is_mapped (out));
}

/* X-Forwarded-For: "client, proxy1, proxy2", each hop as a string. */
static gboolean
xff_hops (const gchar *value, GPtrArray *hops)
{
  g_auto (GStrv) items = g_strsplit (value, ",", -1);

  for (gchar **it = items; *it != NULL; it++) {
    gchar *start = *it, *end = *it + strlen (*it);
    while (start < end && is_ows (*start))
      start++;
    while (end > start && is_ows (end[-1]))
      end--;
    if (end == start)
      return FALSE;
    g_ptr_array_add (hops, g_strndup (start, (gsize)(end - start)));
  }
  return hops->len > 0;
}

/* RFC 9110 5.6.2 tchar */
static gboolean
is_tchar (gchar c)
{
  return g_ascii_isalnum (c) || (c != '\0' && strchr ("!#$%&'*+-.^_`|~", c) != NULL);
}

/* A token or a quoted string at *p (moved past it); the unquoted text, or NULL. */
static gchar *
parse_value (const gchar **p)
{
  const gchar *s = *p;
  g_autoptr (GString) out = NULL;

  if (*s != '"') {
    while (is_tchar (*s))
      s++;
    if (s == *p)
      return NULL;
    out = g_string_new_len (*p, s - *p);
    *p = s;
    return g_string_free (g_steal_pointer (&out), FALSE);
  }
  out = g_string_new (NULL);
  for (s++; *s != '"'; s++) {
    if (*s == '\\' && s[1] != '\0')
      s++;
    if (*s == '\0' || (guchar)*s < 0x20 || *s == 0x7f) /* unterminated, or a control byte */
      return NULL;
    g_string_append_c (out, *s);
  }
  *p = s + 1;
  return g_string_free (g_steal_pointer (&out), FALSE);
}

/* One forwarded-element: pairs separated by ';'. Its for= value (NULL if it has none) goes to
 * *node. FALSE on a syntax error or a repeated for=. */
static gboolean
parse_element (const gchar **p, gchar **node)
{
  const gchar *s = *p;

  for (;;) {
    const gchar *name;
    gsize name_len;
    g_autofree gchar *value = NULL;
    while (is_ows (*s) || *s == ';')
      s++;
    if (*s == ',' || *s == '\0')
      break;
    for (name = s; is_tchar (*s); s++)
      ;
    name_len = (gsize)(s - name);
    if (name_len == 0 || *s++ != '=' || (value = parse_value (&s)) == NULL)
      return FALSE;
    if (name_len == 3 && g_ascii_strncasecmp (name, "for", 3) == 0) {
      if (*node != NULL)
        return FALSE;
      *node = g_steal_pointer (&value);
    }
    while (is_ows (*s))
      s++;
    if (*s != ';' && *s != ',' && *s != '\0')
      return FALSE;
  }
  *p = s;
  return TRUE;
}

/* Forwarded: elements separated by ',' (empty ones skipped); each must have a for=. */
static gboolean
forwarded_hops (const gchar *value, GPtrArray *hops)
{
  const gchar *p = value;

  while (*p != '\0') {
    g_autofree gchar *node = NULL;
    const gchar *start = p;
    if (!parse_element (&p, &node))
      return FALSE;
    if (node != NULL)
      g_ptr_array_add (hops, g_steal_pointer (&node));
    else if (strspn (start, " \t;") < (gsize)(p - start))
      return FALSE; /* an element with pairs but no for= */
    if (*p == ',')
      p++;
  }
  return hops->len > 0;
}

CrunchForwardedSource
crunch_forwarded_client (const CrunchProxies *trusted, const gchar *peer, const gchar *forwarded,
                         const gchar *x_forwarded_for, gchar client[CRUNCH_ADDRESS_MAX])
{
  g_autoptr (GPtrArray) hops = g_ptr_array_new_with_free_func (g_free);
  Addr a;

  g_strlcpy (client, peer, CRUNCH_ADDRESS_MAX);
  if (crunch_proxies_is_empty (trusted) || !parse_ip (peer, strlen (peer), &a) ||
      !contains (trusted, &a) || (forwarded == NULL && x_forwarded_for == NULL))
    return CRUNCH_FORWARDED_PEER;
  if (forwarded != NULL ? !forwarded_hops (forwarded, hops) : !xff_hops (x_forwarded_for, hops))
    return CRUNCH_FORWARDED_MALFORMED;
  for (guint i = hops->len; i-- > 0;) {
    const gchar *hop = hops->pdata[i];
    if (!parse_node (hop, strlen (hop), forwarded == NULL, &a))
      return CRUNCH_FORWARDED_MALFORMED;
    if (!contains (trusted, &a) || i == 0) {
      format_ip (&a, client);
      return CRUNCH_FORWARDED_HEADER;
    }
  }
  g_assert_not_reached ();
}
