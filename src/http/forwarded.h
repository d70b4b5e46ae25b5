/* forwarded.h - who the client is behind trusted reverse proxies: [server] trusted_proxies (CIDR
 * blocks) and the `Forwarded` (RFC 7239) / `X-Forwarded-For` request headers. Pure parsing, no
 * HTTP library, so that it can be unit-tested and fuzzed on its own (tests/fuzz/fuzz-forwarded.c).
 */
#pragma once

#include <glib.h>

/* Longest address text produced: an IPv6 address (INET6_ADDRSTRLEN). */
#define CRUNCH_ADDRESS_MAX 46

/* A set of CIDR blocks. IPv4 blocks also match IPv4-mapped IPv6 addresses (::ffff:a.b.c.d). */
typedef struct CrunchProxies CrunchProxies;

/* "ADDRESS/PREFIX" or a bare address (a /32 or /128): "10.0.0.0/8", "::1/128", "127.0.0.1".
 * Host bits set below the prefix are an error ("10.0.0.1/8" is likely a typo), as is anything
 * else; the message quotes the item. An empty list gives an empty set. */
CrunchProxies *crunch_proxies_new (const gchar *const *cidrs, GError **error);
void crunch_proxies_free (CrunchProxies *proxies);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchProxies, crunch_proxies_free)
gboolean crunch_proxies_is_empty (const CrunchProxies *proxies);
/* `address` is a numeric IPv4 or IPv6 address in the set. */
gboolean crunch_proxies_contains (const CrunchProxies *proxies, const gchar *address);

typedef enum {
  CRUNCH_FORWARDED_PEER,      /* the peer is not trusted, or sent no such header: the peer */
  CRUNCH_FORWARDED_HEADER,    /* the last untrusted hop of the header */
  CRUNCH_FORWARDED_MALFORMED, /* a trusted peer sent a header we cannot read: the peer */
} CrunchForwardedSource;

/* The client address of a request whose TCP peer is `peer` (numeric). Only when the peer is in
 * `trusted` are the headers read: `forwarded` (all Forwarded fields, joined with ", "; it wins
 * when present) or else `x_forwarded_for` (likewise); either may be NULL. A server passes only
 * the one its proxies write ([server] proxy_header): a proxy passes the other on as the client
 * sent it. Their hops are walked
 * right to left, skipping trusted addresses: the first untrusted one is the client (if all are
 * trusted, the leftmost). A hop that is not a numeric address ("unknown", an obfuscated name) or
 * a malformed header means the peer itself is used. The result, a canonical address (an
 * IPv4-mapped IPv6 one written as IPv4), goes to `client`. */
CrunchForwardedSource crunch_forwarded_client (const CrunchProxies *trusted, const gchar *peer,
                                               const gchar *forwarded, const gchar *x_forwarded_for,
                                               gchar client[CRUNCH_ADDRESS_MAX]);
