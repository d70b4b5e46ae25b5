/* test-forwarded.c - trusted proxy blocks and the client address behind them (forwarded.c). */
#include "config.h"
#include <string.h>

#include "forwarded.h"

static CrunchProxies *
proxies (const gchar *const *cidrs)
{
  g_autoptr (GError) error = NULL;
  CrunchProxies *p = crunch_proxies_new (cidrs, &error);

  g_assert_no_error (error);
  return p;
}

static void
test_blocks (void)
{
  g_autoptr (CrunchProxies) p =
      proxies ((const gchar *[]){"10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1/128", NULL});
  const struct {
    const gchar *address;
    gboolean in;
  } cases[] = {
      {"10.0.0.1", TRUE},    {"10.255.255.255", TRUE}, {"11.0.0.1", FALSE},
      {"192.168.1.7", TRUE}, {"192.168.1.8", FALSE},   {"::ffff:10.1.2.3", TRUE},
      {"fd12::1", TRUE},     {"fe80::1", FALSE},       {"::1", TRUE},
      {"::2", FALSE},        {"unknown", FALSE},       {"", FALSE},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_test_message ("%s", cases[i].address);
    g_assert_cmpint (crunch_proxies_contains (p, cases[i].address), ==, cases[i].in);
  }
  g_autoptr (CrunchProxies) all = proxies ((const gchar *[]){"0.0.0.0/0", NULL});
  g_assert_true (crunch_proxies_contains (all, "203.0.113.9"));
  g_assert_false (crunch_proxies_contains (all, "2001:db8::1"));
  g_autoptr (CrunchProxies) none = proxies ((const gchar *[]){NULL});
  g_assert_true (crunch_proxies_is_empty (none));
}

static void
test_bad_blocks (void)
{
  const gchar *bad[] = {"10.0.0.1/8",  "10.0.0.0/33", "::1/129",   "10.0.0.0/", "10.0.0.0/-1",
                        "10.0.0.0/8x", "10.0.0",      "localhost", "",          "fd00::1/8",
                        "1.2.3.4/ 8"};

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autoptr (GError) error = NULL;
    g_autoptr (CrunchProxies) p = crunch_proxies_new ((const gchar *[]){bad[i], NULL}, &error);
    g_test_message ("'%s'", bad[i]);
    g_assert_null (p);
    g_assert_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID);
    g_assert_true (g_str_has_prefix (error->message, "'"));
    g_assert_nonnull (strstr (error->message, "expected an address or ADDRESS/PREFIX"));
  }
}

typedef struct {
  const gchar *peer, *forwarded, *xff, *client;
  CrunchForwardedSource source;
} Case;

static void
check (const CrunchProxies *p, const Case *c)
{
  gchar client[CRUNCH_ADDRESS_MAX];

  g_test_message ("peer %s, Forwarded: %s, X-Forwarded-For: %s", c->peer, c->forwarded, c->xff);
  g_assert_cmpint (crunch_forwarded_client (p, c->peer, c->forwarded, c->xff, client), ==,
                   c->source);
  g_assert_cmpstr (client, ==, c->client);
}

static void
test_x_forwarded_for (void)
{
  g_autoptr (CrunchProxies) p = proxies ((const gchar *[]){"127.0.0.1", "10.0.0.0/8", NULL});
  const Case cases[] = {
      /* an untrusted peer's headers are ignored */
      {"192.0.2.9", NULL, "203.0.113.1", "192.0.2.9", CRUNCH_FORWARDED_PEER},
      {"127.0.0.1", NULL, NULL, "127.0.0.1", CRUNCH_FORWARDED_PEER},
      {"127.0.0.1", NULL, "203.0.113.1", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      /* right to left, skipping trusted hops; a client's own prefix is never read */
      {"127.0.0.1", NULL, "1.1.1.1, 203.0.113.1, 10.0.0.2", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "garbage, 203.0.113.1", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "10.0.0.3,10.0.0.2", "10.0.0.3", CRUNCH_FORWARDED_HEADER},
      {"::ffff:127.0.0.1", NULL, "203.0.113.1", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "203.0.113.1:5555", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "2001:DB8::1", "2001:db8::1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "[2001:db8::1]:80", "2001:db8::1", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", NULL, "::ffff:203.0.113.1", "203.0.113.1", CRUNCH_FORWARDED_HEADER},
      /* malformed from a trusted peer: the peer */
      {"127.0.0.1", NULL, "", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", NULL, "203.0.113.1,", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", NULL, "unknown", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", NULL, "203.0.113.1:99999", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", NULL, "[203.0.113.1]", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", NULL, "203.0.113.1 10.0.0.1", "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    check (p, &cases[i]);
}

static void
test_forwarded (void)
{
  g_autoptr (CrunchProxies) p = proxies ((const gchar *[]){"127.0.0.1", "::1", NULL});
  const Case cases[] = {
      {"127.0.0.1", "for=192.0.2.60;proto=http;by=203.0.113.43", NULL, "192.0.2.60",
       CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", "For=\"[2001:db8:cafe::17]:4711\"", NULL, "2001:db8:cafe::17",
       CRUNCH_FORWARDED_HEADER},
      {"::1", "for=192.0.2.43, for=\"[::1]\";by=x", NULL, "192.0.2.43", CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", "for=\"192.0.2.43:80\", for=198.51.100.17", NULL, "198.51.100.17",
       CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", "for=\"192.0.2.43\",, for=127.0.0.1", NULL, "192.0.2.43",
       CRUNCH_FORWARDED_HEADER},
      {"127.0.0.1", "for=\"1\\92.0.2.1\"", NULL, "192.0.2.1", CRUNCH_FORWARDED_HEADER},
      /* Forwarded wins over X-Forwarded-For */
      {"127.0.0.1", "for=192.0.2.1", "198.51.100.1", "192.0.2.1", CRUNCH_FORWARDED_HEADER},
      /* not usable: the peer */
      {"127.0.0.1", "for=unknown", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=_hidden", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=[::1]", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=\"::1\"", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=\"192.0.2.1", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=192.0.2.1;for=192.0.2.2", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "proto=https", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=192.0.2.1, proto=https", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for=192.0.2.1:80", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "for 192.0.2.1", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"127.0.0.1", "", NULL, "127.0.0.1", CRUNCH_FORWARDED_MALFORMED},
      {"192.0.2.200", "for=192.0.2.1", NULL, "192.0.2.200", CRUNCH_FORWARDED_PEER},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++)
    check (p, &cases[i]);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/forwarded/blocks", test_blocks);
  g_test_add_func ("/forwarded/bad-blocks", test_bad_blocks);
  g_test_add_func ("/forwarded/x-forwarded-for", test_x_forwarded_for);
  g_test_add_func ("/forwarded/forwarded", test_forwarded);
  return g_test_run ();
}
