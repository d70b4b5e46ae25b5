/* test-keys.c - the keys file parser and the request checks of auth.c, without a server. */
#include "auth.h"

#include <glib/gstdio.h>
#include <string.h>

#define HASH_A "a4b2a1d3e1b1c0f4a4b2a1d3e1b1c0f4a4b2a1d3e1b1c0f4a4b2a1d3e1b1c0f4"

static void
expect_error (const gchar *text, const gchar *message)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchKeyring) keyring = crunch_keyring_parse (text, strlen (text), "keys", &error);

  g_assert_null (keyring);
  g_assert_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID);
  g_assert_cmpstr (error->message, ==, message);
}

#define HASH_B "0000000000000000000000000000000000000000000000000000000000000000"

static void
test_parse (void)
{
  const gchar *text = "# two keys\n[alice]\nsha256 = " HASH_A "\nfunctions = fib, mandel*\n"
                      "rate = 10/s\nburst = 20\nmax_in_flight = 4\nops = true\npriority = 7\n"
                      "[bob.2]\nsha256 = " HASH_B "\nrate = 30/min\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchKeyring) keyring = NULL;

  keyring = crunch_keyring_parse (text, strlen (text), "keys", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (crunch_keyring_size (keyring), ==, 2);
  g_clear_pointer (&keyring, crunch_keyring_free);
  keyring = crunch_keyring_parse ("", 0, "keys", &error);
  g_assert_no_error (error);
  g_assert_cmpuint (crunch_keyring_size (keyring), ==, 0);
  expect_error ("[a]\nsha256 = " HASH_A "0\n",
                "keys: [a] sha256 = '" HASH_A "0': expected 64 hex digits, the SHA-256 of the "
                "token (crunchd --new-key NAME prints it)");
}

static void
test_errors (void)
{
  expect_error ("[a]\nfunctions = fib\n",
                "keys: [a]: sha256 is missing (crunchd --new-key a prints it)");
  expect_error ("[a b]\nsha256 = " HASH_A "\n",
                "keys: [a b]: a key name is 1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and "
                "'-'");
  expect_error ("[a]\nsha256 = " HASH_A "\nrate = 10\n",
                "keys: [a] rate = '10': expected requests per second, minute or hour: N/s, N/min "
                "or N/h (N > 0, at most 1000000/s)");
  expect_error ("[a]\nsha256 = " HASH_A "\nburst = 3\n",
                "keys: [a] burst = '3': a burst needs a rate (rate = N/s)");
  expect_error ("[a]\nsha256 = " HASH_A "\nops = yes\n",
                "keys: [a] ops = 'yes': expected true or false");
  expect_error ("[a]\nsha256 = " HASH_A "\nweight = 1\n", "keys: [a] weight: unknown key");
  expect_error ("[a]\nsha256 = " HASH_A "\npriority = 10\n",
                "keys: [a] priority = '10': expected an integer from 0 to 9");
  expect_error ("[a]\nsha256 = " HASH_A "\npriority = high\n",
                "keys: [a] priority = 'high': expected an integer from 0 to 9");
  expect_error ("[a]\nsha256 = " HASH_A "\nrate = 1/s\nrate = 2/s\n",
                "keys: [a] rate: given more than once");
  expect_error ("[a]\nsha256 = " HASH_A "\n[b]\nsha256 = " HASH_A "\n",
                "keys: [b]: the same sha256 as [a]");
  expect_error ("[a]\nsha256 = " HASH_A "\nmax_in_flight = -1\n",
                "keys: [a] max_in_flight = '-1': expected an integer from 0 to 1000000");
}

/* Hostile sizes: too many keys, too large a file, a NUL byte. */
static void
test_bounds (void)
{
  g_autoptr (GString) many = g_string_new (NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchKeyring) keyring = NULL;
  g_autofree gchar *big = g_malloc0 (CRUNCH_AUTH_MAX_FILE_SIZE + 2);

  for (guint i = 0; i <= CRUNCH_AUTH_MAX_KEYS; i++)
    g_string_append_printf (many, "[k%u]\nsha256 = %064x\n", i, i);
  keyring = crunch_keyring_parse (many->str, many->len, "keys", &error);
  g_assert_null (keyring);
  g_assert_cmpstr (error->message, ==, "keys: 1025 keys, at most 1024 are allowed");
  g_clear_error (&error);
  memset (big, '#', CRUNCH_AUTH_MAX_FILE_SIZE + 1);
  keyring = crunch_keyring_parse (big, CRUNCH_AUTH_MAX_FILE_SIZE + 1, "keys", &error);
  g_assert_null (keyring);
  g_clear_error (&error);
  keyring = crunch_keyring_parse ("[a]\0", 4, "keys", &error);
  g_assert_null (keyring);
}

static void
test_token (void)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *a = crunch_auth_token_new (&error);
  g_autofree gchar *b = crunch_auth_token_new (&error);
  g_autofree gchar *hash = crunch_auth_token_hash ("abc");

  g_assert_no_error (error);
  g_assert_cmpuint (strlen (a), ==, 43);
  g_assert_cmpuint (strspn (a, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
                    ==, 43);
  g_assert_cmpstr (a, !=, b);
  g_assert_cmpstr (hash, ==, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static CrunchAuth *
auth_with (const gchar *keys)
{
  g_autofree gchar *dir = g_dir_make_tmp ("crunchd-keys-XXXXXX", NULL);
  g_autofree gchar *path = g_build_filename (dir, "keys", NULL);
  g_autoptr (CrunchConfig) config = crunch_config_new_default ();
  g_autoptr (GError) error = NULL;
  CrunchAuthSettings *settings;
  CrunchAuth *auth = crunch_auth_new ();

  g_assert_true (g_file_set_contents (path, keys, -1, NULL));
  g_free (config->auth_keys_file);
  config->auth_keys_file = g_strdup (path);
  settings = crunch_auth_settings_load (config, &error);
  g_assert_no_error (error);
  crunch_auth_publish (auth, settings);
  g_unlink (path);
  g_rmdir (dir);
  return auth;
}

static const CrunchRoute *
route (const gchar *path)
{
  CrunchRouteMatch match;

  g_assert_cmpint (crunch_routes_match ("GET", path, &match), ==, CRUNCH_ROUTE_FOUND);
  return match.route;
}

/* Checks one request; returns its status (200 when let in) and ends it. */
static guint
check (CrunchAuth *auth, const gchar *path, const gchar *authorization, const gchar *fn)
{
  CrunchAuthGrant grant = {0};
  CrunchReply refusal = {0};
  guint status = 200;

  if (!crunch_auth_check (auth, route (path), FALSE, authorization, &grant, &refusal) ||
      (fn != NULL && !crunch_auth_may_call (&grant, fn, &refusal)))
    status = refusal.status;
  crunch_reply_clear (&refusal);
  crunch_auth_finish (auth, &grant);
  return status;
}

static void
test_check (void)
{
  g_autofree gchar *hash = crunch_auth_token_hash ("tok-a");
  g_autofree gchar *hash_p = crunch_auth_token_hash ("tok-p");
  g_autofree gchar *keys = g_strdup_printf ("[a]\nsha256 = %s\nfunctions = fi*\nrate = 2/h\n"
                                            "burst = 2\n[p]\nsha256 = %s\npriority = 8\n",
                                            hash, hash_p);
  g_autoptr (CrunchAuth) auth = auth_with (keys);
  g_autofree gchar *long_value = NULL;
  CrunchAuthGrant grant = {0};
  CrunchReply refusal = {0};

  g_assert_cmpuint (check (auth, "/fast", NULL, NULL), ==, 200);
  g_assert_cmpuint (check (auth, "/fib/3", NULL, "fib"), ==, 401);
  g_assert_cmpuint (check (auth, "/fib/3", "Bearer tok-b", "fib"), ==, 401);
  g_assert_cmpuint (check (auth, "/fib/3", "Basic dG9rLWE=", "fib"), ==, 401);
  g_assert_cmpuint (check (auth, "/fib/3", "bearer tok-a", "fib"), ==, 200);
  /* two fields joined, and a value past CRUNCH_AUTH_MAX_HEADER, are no token */
  g_assert_cmpuint (check (auth, "/fib/3", "Bearer tok-a, Bearer tok-a", "fib"), ==, 401);
  long_value = g_strnfill (CRUNCH_AUTH_MAX_HEADER + 1, 'A');
  memcpy (long_value, "Bearer ", 7);
  g_assert_cmpuint (check (auth, "/fib/3", long_value, "fib"), ==, 401);
  g_assert_cmpuint (check (auth, "/fn/sleep", "Bearer tok-a", "sleep"), ==, 403);
  g_assert_cmpuint (check (auth, "/metrics", "Bearer tok-a", NULL), ==, 403);
  /* the bucket held 2 and refills one per half hour: 1800 s until the next */
  g_assert_false (
      crunch_auth_check (auth, route ("/fib/3"), FALSE, "Bearer tok-a", &grant, &refusal));
  g_assert_cmpuint (refusal.status, ==, 429);
  g_assert_cmpstr (refusal.retry_after, ==, "1800");
  crunch_reply_clear (&refusal);
  crunch_auth_finish (auth, &grant);
  /* a key's priority, -1 for a key without one and for no key */
  g_assert_true (
      crunch_auth_check (auth, route ("/fib/3"), FALSE, "Bearer tok-p", &grant, &refusal));
  g_assert_cmpint (crunch_auth_grant_priority (&grant), ==, 8);
  crunch_auth_finish (auth, &grant);
  g_assert_cmpint (crunch_auth_grant_priority (&grant), ==, -1);
  /* the ops listener is open */
  g_assert_true (crunch_auth_check (auth, route ("/metrics"), TRUE, NULL, &grant, &refusal));
  crunch_auth_finish (auth, &grant);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/keys/parse", test_parse);
  g_test_add_func ("/keys/errors", test_errors);
  g_test_add_func ("/keys/bounds", test_bounds);
  g_test_add_func ("/keys/token", test_token);
  g_test_add_func ("/keys/check", test_check);
  return g_test_run ();
}
