/* test-headers.c - parsing the header values crunchd reads. */
#include "headers.h"

static void
test_content_length (void)
{
  guint64 n = 0;

  g_assert_true (crunch_header_content_length ("0", &n));
  g_assert_cmpuint (n, ==, 0);
  g_assert_true (crunch_header_content_length ("18446744073709551615", &n));
  g_assert_cmpuint (n, ==, G_MAXUINT64);
  for (const gchar *const *bad =
           (const gchar *const[]){"", "-1", "+1", " 1", "1 ", "0x10", "1.0", "18446744073709551616",
                                  "abc", "\v2", "\t2", NULL};
       *bad != NULL; bad++)
    g_assert_false (crunch_header_content_length (*bad, &n));
}

static void
test_request_timeout (void)
{
  const struct {
    const gchar *value;
    gint64 us; /* -1: rejected */
  } cases[] = {
      {"2.5", 2500000}, {"1", 1000000}, {"0.000001", 1}, {"1e-300", 1}, {"1e9", 1000000000000000},
      {"0", -1},        {"-1", -1},     {"", -1},        {"abc", -1},   {"1s", -1},
      {" 1", 1000000},  {"1 ", -1},     {"nan", -1},     {"inf", -1},   {"1e10", -1},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    gint64 us = -1;
    gboolean ok = crunch_header_request_timeout (cases[i].value, &us);
    g_test_message ("'%s'", cases[i].value);
    g_assert_cmpint (ok, ==, cases[i].us >= 0);
    if (ok)
      g_assert_cmpint (us, ==, cases[i].us);
  }
}

static void
test_method (void)
{
  for (const gchar *const *good =
           (const gchar *const[]){"GET", "POST", "M-SEARCH", "X!#$%&'*+.^_`|~9", NULL};
       *good != NULL; good++)
    g_assert_true (crunch_header_token_valid (*good));
  for (const gchar *const *bad =
           (const gchar *const[]){"", "G\001T", "G T", "G(T", "GET\r", "G\x80T", "G\"T", NULL};
       *bad != NULL; bad++)
    g_assert_false (crunch_header_token_valid (*bad));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/headers/content-length", test_content_length);
  g_test_add_func ("/headers/request-timeout", test_request_timeout);
  g_test_add_func ("/headers/method", test_method);
  return g_test_run ();
}
