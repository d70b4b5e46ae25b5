/* test-tls.c - [tls] against the real binary: HTTPS with certificates made at test time
 * (tests/tls-certs, openssl), verified by libcurl: the right CA, a wrong one, an expired
 * certificate, TLS 1.1, a renewed certificate taken up on SIGHUP while a connection stays open,
 * client certificates ([tls] client_ca), and every bad file named at start and at reload. */
#include <curl/curl.h>
#include <string.h>

#include "harness.h"

static gchar *certs; /* the directory tests/tls-certs filled */

static gchar *
cert_path (const gchar *name)
{
  return g_build_filename (certs, name, NULL);
}

typedef struct {
  const gchar *ca;         /* file name in `certs`, or NULL: no verification */
  const gchar *cert, *key; /* client certificate */
  glong version;           /* CURLOPT_SSLVERSION, 0 = default */
} Client;

typedef struct {
  gint code; /* CURLcode */
  glong status, connects;
  gchar *subject; /* the server certificate's subject line, on a new connection */
  GString *body;
} Result;

static void
result_clear (Result *r)
{
  g_free (r->subject);
  if (r->body != NULL)
    g_string_free (r->body, TRUE);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC (Result, result_clear)

static size_t
on_body (char *data, size_t size, size_t n, void *user)
{
  g_string_append_len (user, data, (gssize)(size * n));
  return size * n;
}

static void
setup (CURL *curl, const Client *c)
{
  g_autofree gchar *ca = c->ca ? cert_path (c->ca) : NULL;
  g_autofree gchar *cert = c->cert ? cert_path (c->cert) : NULL;
  g_autofree gchar *key = c->key ? cert_path (c->key) : NULL;

  curl_easy_setopt (curl, CURLOPT_CAINFO, ca);
  curl_easy_setopt (curl, CURLOPT_CAPATH, NULL);
  curl_easy_setopt (curl, CURLOPT_SSL_VERIFYPEER, ca != NULL ? 1L : 0L);
  curl_easy_setopt (curl, CURLOPT_SSLCERT, cert);
  curl_easy_setopt (curl, CURLOPT_SSLKEY, key);
  curl_easy_setopt (curl, CURLOPT_CERTINFO, 1L);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT, 30L);
  curl_easy_setopt (curl, CURLOPT_NOSIGNAL, 1L);
  if (c->version != 0) {
    curl_easy_setopt (curl, CURLOPT_SSLVERSION, c->version);
    curl_easy_setopt (curl, CURLOPT_SSL_CIPHER_LIST, "DEFAULT@SECLEVEL=0"); /* allow old TLS */
  }
}

/* One GET on `curl` (reusing its connection if it has one). */
static void
get (CURL *curl, const gchar *url, Result *r)
{
  struct curl_certinfo *info = NULL;

  r->body = g_string_new (NULL);
  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, r->body);
  r->code = curl_easy_perform (curl);
  curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &r->status);
  curl_easy_getinfo (curl, CURLINFO_NUM_CONNECTS, &r->connects);
  curl_easy_getinfo (curl, CURLINFO_CERTINFO, &info);
  for (struct curl_slist *s = info && info->num_of_certs > 0 ? info->certinfo[0] : NULL;
       s != NULL && r->subject == NULL; s = s->next) {
    if (g_str_has_prefix (s->data, "Subject:"))
      r->subject = g_strdup (s->data);
  }
  g_test_message ("GET %s: curl %d, status %ld, %s", url, r->code, r->status,
                  r->subject ? r->subject : "(no certificate info)");
}

static void
fetch (TestServer *server, const gchar *path, const Client *c, Result *r)
{
  g_autofree gchar *url = test_server_url (server, path);
  CURL *curl = curl_easy_init ();

  setup (curl, c);
  get (curl, url, r);
  curl_easy_cleanup (curl);
}

static gchar *
tls_ini (const gchar *cert, const gchar *key, const gchar *client_ca)
{
  g_autofree gchar *c = cert_path (cert), *k = cert_path (key);
  g_autofree gchar *ca = client_ca ? cert_path (client_ca) : NULL;

  return g_strdup_printf ("[tls]\ncertificate = %s\nkey = %s\n%s%s%s", c, k,
                          ca ? "client_ca = " : "", ca ? ca : "", ca ? "\n" : "");
}

static void
test_https (void)
{
  g_autofree gchar *ini = tls_ini ("server.pem", "server.key", NULL);
  TestServer *server = test_server_start (ini, NULL);
  g_auto (Result) fast = {0}, fib = {0}, wrong = {0};

  g_assert_true (g_str_has_prefix (server->base, "https://"));
  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &fast);
  g_assert_cmpint (fast.code, ==, CURLE_OK);
  g_assert_cmpint (fast.status, ==, 200);
  g_assert_cmpstr (fast.body->str, ==, "Hello!");
  g_assert_nonnull (strstr (fast.subject, "crunchd test server"));
  /* the compute lane: suspended and resumed over TLS */
  fetch (server, "/fib/20", &(Client){.ca = "ca.pem"}, &fib);
  g_assert_cmpint (fib.status, ==, 200);
  g_assert_cmpstr (fib.body->str, ==, "6765");
  /* a client that trusts another CA refuses the server */
  fetch (server, "/fast", &(Client){.ca = "other-ca.pem"}, &wrong);
  g_assert_cmpint (wrong.code, ==, CURLE_PEER_FAILED_VERIFICATION);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

static void
test_expired (void)
{
  g_autofree gchar *ini = tls_ini ("expired.pem", "server.key", NULL);
  TestServer *server = test_server_start (ini, NULL);
  g_auto (Result) r = {0};
  g_autofree gchar *log = NULL;

  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &r);
  g_assert_cmpint (r.code, ==, CURLE_PEER_FAILED_VERIFICATION);
  g_assert_cmpint (test_server_stop_with_log (server, &log), ==, 0);
  g_assert_nonnull (strstr (log, "expired.pem expired on 2020-02-01T00:00:00Z"));
}

/* TLS 1.2 is accepted, 1.1 and older refused (the client is willing: SECLEVEL=0). */
static void
test_versions (void)
{
  g_autofree gchar *ini = tls_ini ("server.pem", "server.key", NULL);
  TestServer *server = test_server_start (ini, NULL);
  g_auto (Result) v12 = {0}, v11 = {0};

  fetch (server, "/fast", &(Client){.ca = "ca.pem", .version = CURL_SSLVERSION_MAX_TLSv1_2}, &v12);
  g_assert_cmpint (v12.status, ==, 200);
  fetch (
      server, "/fast",
      &(Client){.ca = "ca.pem", .version = CURL_SSLVERSION_TLSv1_0 | CURL_SSLVERSION_MAX_TLSv1_1},
      &v11);
  g_assert_cmpint (v11.code, ==, CURLE_SSL_CONNECT_ERROR);
  g_assert_cmpint (v11.status, ==, 0);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

static void
copy_file (const gchar *from, const gchar *to)
{
  g_autofree gchar *src = cert_path (from), *dst = cert_path (to), *data = NULL;
  gsize len;

  g_assert_true (g_file_get_contents (src, &data, &len, NULL));
  g_assert_true (g_file_set_contents (dst, data, (gssize)len, NULL));
}

/* SIGHUP with renewed files: new connections get the new certificate, a connection opened before
 * keeps working; a bad file at reload is logged and the running certificate stays. */
static void
test_reload (void)
{
  g_autofree gchar *ini = NULL;
  TestServer *server;
  g_autofree gchar *url = NULL;
  CURL *kept = curl_easy_init ();
  g_auto (Result) before = {0}, after = {0}, reused = {0}, bad = {0};

  copy_file ("server.pem", "live.pem");
  copy_file ("server.key", "live.key");
  ini = tls_ini ("live.pem", "live.key", NULL);
  server = test_server_start (ini, NULL);
  url = test_server_url (server, "/fast");
  setup (kept, &(Client){.ca = "ca.pem"});
  get (kept, url, &before);
  g_assert_cmpint (before.status, ==, 200);
  g_assert_nonnull (strstr (before.subject, "crunchd test server"));

  copy_file ("renewed.pem", "live.pem");
  copy_file ("renewed.key", "live.key");
  test_server_signal (server, SIGHUP);
  test_server_wait_log (server, "configuration reloaded", 1, 10);
  g_autofree gchar *log = test_server_log (server);
  g_assert_nonnull (strstr (log, "new TLS certificate"));
  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &after);
  g_assert_cmpint (after.status, ==, 200);
  g_assert_nonnull (strstr (after.subject, "crunchd renewed server"));
  get (kept, url, &reused); /* the connection from before the reload */
  g_assert_cmpint (reused.code, ==, CURLE_OK);
  g_assert_cmpint (reused.status, ==, 200);
  g_assert_cmpint (reused.connects, ==, 0);
  curl_easy_cleanup (kept);

  copy_file ("notpem.pem", "live.pem");
  test_server_signal (server, SIGHUP);
  test_server_wait_log (server, "reload failed", 1, 10);
  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &bad);
  g_assert_cmpint (bad.status, ==, 200);
  g_assert_nonnull (strstr (bad.subject, "crunchd renewed server"));
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* HTTPS cannot be turned on (or off) by a reload: each reload whose file differs from what runs
 * says so, the second too (it compared with the previous file, and was silent), and plain HTTP
 * keeps serving. */
static void
test_on_off_reload (void)
{
  g_autofree gchar *ini = tls_ini ("server.pem", "server.key", NULL);
  TestServer *server = test_server_start ("", NULL);
  const gchar *warning = "turning HTTPS on or off ([tls] certificate) applies only after a restart";
  g_autofree gchar *log = NULL;

  g_assert_true (g_str_has_prefix (server->base, "http://"));
  test_server_write_config (server, ini);
  for (guint i = 1; i <= 2; i++) {
    test_server_signal (server, SIGHUP);
    test_server_wait_log (server, "configuration reloaded", i, 10);
  }
  log = test_server_log (server);
  g_assert_cmpuint (test_count (log, warning), ==, 2);
  g_autofree gchar *url = test_server_url (server, "/fast");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* A client certificate is checked once per connection: the next requests on it pass too. */
static void
assert_kept_connection (TestServer *server)
{
  CURL *kept = curl_easy_init ();
  g_autofree gchar *url = test_server_url (server, "/fast");

  setup (kept, &(Client){.ca = "ca.pem", .cert = "client.pem", .key = "client.key"});
  for (guint i = 0; i < 3; i++) {
    g_auto (Result) again = {0};
    get (kept, url, &again);
    g_assert_cmpint (again.status, ==, 200);
    g_assert_cmpint (again.connects, ==, i == 0 ? 1 : 0);
  }
  curl_easy_cleanup (kept);
}

static void
test_client_certificates (void)
{
  g_autofree gchar *ini = tls_ini ("server.pem", "server.key", "ca.pem");
  TestServer *server = test_server_start (ini, NULL);
  g_auto (Result) none = {0}, rogue = {0}, good = {0}, fib = {0};
  const gchar *refusal =
      "a client certificate signed by the server's [tls] client_ca is required (request id ";

  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &none);
  g_assert_cmpint (none.status, ==, 403);
  g_assert_true (g_str_has_prefix (none.body->str, refusal));
  fetch (server, "/fast", &(Client){.ca = "ca.pem", .cert = "rogue.pem", .key = "rogue.key"},
         &rogue);
  g_assert_true (rogue.status == 403 || rogue.code != CURLE_OK);
  g_assert_cmpint (rogue.status, !=, 200);
  fetch (server, "/fast", &(Client){.ca = "ca.pem", .cert = "client.pem", .key = "client.key"},
         &good);
  g_assert_cmpint (good.status, ==, 200);
  fetch (server, "/fib/10", &(Client){.ca = "ca.pem", .cert = "client.pem", .key = "client.key"},
         &fib);
  g_assert_cmpstr (fib.body->str, ==, "55");
  assert_kept_connection (server);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* systemd's LoadCredential=: a relative path is looked up in $CREDENTIALS_DIRECTORY. */
static void
test_credentials_directory (void)
{
  g_autofree gchar *env = g_strdup_printf ("CREDENTIALS_DIRECTORY=%s", certs);
  TestServer *server =
      test_server_start_with ("[tls]\ncertificate = server.pem\nkey = server.key\n", NULL,
                              &(TestServerSetup){.env = (const gchar *const[]){env, NULL}});
  g_auto (Result) r = {0};

  fetch (server, "/fast", &(Client){.ca = "ca.pem"}, &r);
  g_assert_cmpint (r.status, ==, 200);
  g_assert_cmpint (test_server_stop (server), ==, 0);
}

/* --check-config with a file in `certs` (relative paths are found beside it): exit 78, and the
 * message names the file, [tls] key, value and the trouble. In `expect`, @INI@ stands for the
 * file and @DIR@ for `certs`. */
static void
check_bad (const gchar *ini, const gchar *expect)
{
  g_autofree gchar *path = cert_path ("bad.ini");
  g_autofree gchar *arg = g_strdup_printf ("--config=%s", path);
  g_autofree gchar *out = NULL, *err = NULL;
  g_auto (GStrv) parts = g_strsplit (expect, "@INI@", -1);
  g_autofree gchar *with_ini = g_strjoinv (path, parts);
  g_auto (GStrv) parts2 = g_strsplit (with_ini, "@DIR@", -1);
  g_autofree gchar *want = g_strjoinv (certs, parts2);

  g_assert_true (g_file_set_contents (path, ini, -1, NULL));
  g_test_message ("%s", ini);
  g_assert_cmpint (test_run_crunchd ((const gchar *[]){arg, "--check-config", NULL}, &out, &err),
                   ==, 78);
  /* GnuTLS's own words, in parentheses at the end, vary with its version */
  if (!g_str_has_prefix (err, want))
    g_assert_cmpstr (err, ==, want);
}

static void
test_bad_files (void)
{
  check_bad ("[tls]\ncertificate = missing.pem\nkey = server.key\n",
             "crunchd: @INI@: [tls] certificate = 'missing.pem': Failed to open file "
             "“@DIR@/missing.pem”: No such file or directory\n");
  check_bad ("[tls]\ncertificate = notpem.pem\nkey = server.key\n",
             "crunchd: @INI@: [tls] certificate = 'notpem.pem': @DIR@/notpem.pem holds no PEM "
             "certificate (");
  check_bad ("[tls]\ncertificate = server.pem\nkey = notpem.pem\n",
             "crunchd: @INI@: [tls] key = 'notpem.pem': @DIR@/notpem.pem holds no unencrypted PEM "
             "private key (");
  check_bad ("[tls]\ncertificate = server.pem\nkey = other.key\n",
             "crunchd: @INI@: [tls] key = 'other.key': @DIR@/other.key does not go with [tls] "
             "certificate server.pem (");
  check_bad ("[tls]\ncertificate = server.pem\nkey = server.key\nclient_ca = notpem.pem\n",
             "crunchd: @INI@: [tls] client_ca = 'notpem.pem': @DIR@/notpem.pem holds no PEM "
             "certificate (");
  check_bad ("[tls]\ncertificate = server.pem\n",
             "crunchd: @INI@: [tls] certificate = 'server.pem': [tls] certificate and key go "
             "together (set both for HTTPS, or neither)\n");
  check_bad ("[tls]\nclient_ca = ca.pem\n",
             "crunchd: @INI@: [tls] client_ca = 'ca.pem': client certificates need HTTPS: set "
             "[tls] certificate and key too\n");
}

int
main (int argc, char **argv)
{
  g_autofree gchar *script = NULL;
  gint status, result;

  g_test_init (&argc, &argv, NULL);
  curl_global_init (CURL_GLOBAL_ALL);
  certs = g_dir_make_tmp ("crunchd-tls-XXXXXX", NULL);
  script = g_build_filename (g_getenv ("CRUNCHD_SRCDIR") ? g_getenv ("CRUNCHD_SRCDIR") : ".",
                             "tests", "tls-certs", NULL);
  g_assert_true (g_spawn_sync (NULL, (gchar *[]){"/bin/sh", script, certs, NULL}, NULL, 0, NULL,
                               NULL, NULL, NULL, &status, NULL));
  g_assert_cmpint (status, ==, 0);
  g_test_add_func ("/tls/https", test_https);
  g_test_add_func ("/tls/expired", test_expired);
  g_test_add_func ("/tls/versions", test_versions);
  g_test_add_func ("/tls/reload", test_reload);
  g_test_add_func ("/tls/on-off-reload", test_on_off_reload);
  g_test_add_func ("/tls/client-certificates", test_client_certificates);
  g_test_add_func ("/tls/credentials-directory", test_credentials_directory);
  g_test_add_func ("/tls/bad-files", test_bad_files);
  result = g_test_run ();
  test_remove_dir (certs);
  g_free (certs);
  return result;
}
