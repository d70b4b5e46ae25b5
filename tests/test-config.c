/* test-config.c - loading crunchd.ini: good files, and each kind of bad one with its exact error.
 */
#include "config.h"

static void
test_defaults (void)
{
  g_autoptr (CrunchConfig) c = crunch_config_load_data ("", "empty.ini", NULL);

  g_assert_nonnull (c);
  g_assert_cmpstr (c->listen[0], ==, "127.0.0.1:8000");
  g_assert_null (c->listen[1]);
  g_assert_cmpuint (c->max_connections, ==, 1024);
  g_assert_cmpuint (c->max_connections_per_ip, ==, 256);
  g_assert_cmpuint (c->request_timeout, ==, 10);
  g_assert_cmpuint (c->jobs_max_stored_per_client, ==, 100);
  g_assert_cmpuint (c->queue_limit, ==, 256);
  g_assert_cmpuint (c->threads, ==, 0);
  g_assert_cmpuint (crunch_config_effective_threads (c), ==, g_get_num_processors ());
  g_assert_cmpuint (c->fib.max_n, ==, 92);
  g_assert_cmpfloat (c->fib.timeout, ==, 30.0);
  g_assert_cmpstr (c->log_level, ==, "info");
  g_assert_cmpint (c->log_access, ==, CRUNCH_ACCESS_LOG_COMMON);
  g_assert_true (c->metrics_enabled);
  g_assert_cmpstr (c->metrics_listen, ==, "");
}

static void
test_good_file (void)
{
  const gchar *ini =
      "# comment\n"
      "[server]\nlisten = 127.0.0.1:9000, [::1]:9001\nmax_connections = 2000\n"
      "shutdown_timeout = 2.5\n"
      "[executor]\nthreads = 4\nqueue_limit = 100\nnice = 5\npolicy = idle\n"
      "[fib]\nmax_n = 93\ntimeout = 0.5\n"
      "[log]\nlevel = debug\naccess = json\n[metrics]\nenabled = false\nlisten = 127.0.0.1:9100\n";
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) c = crunch_config_load_data (ini, "good.ini", &error);

  g_assert_no_error (error);
  g_assert_cmpstr (c->path, ==, "good.ini");
  g_assert_cmpstr (c->listen[0], ==, "127.0.0.1:9000");
  g_assert_cmpstr (c->listen[1], ==, "[::1]:9001");
  g_assert_cmpuint (c->max_connections, ==, 2000);
  g_assert_cmpfloat (c->shutdown_timeout, ==, 2.5);
  g_assert_cmpuint (c->threads, ==, 4);
  g_assert_cmpuint (c->queue_limit, ==, 100);
  g_assert_cmpint (c->nice, ==, 5);
  g_assert_cmpstr (c->policy, ==, "idle");
  g_assert_cmpuint (c->fib.max_n, ==, 93);
  g_assert_cmpfloat (c->fib.timeout, ==, 0.5);
  g_assert_cmpstr (c->log_level, ==, "debug");
  g_assert_cmpint (c->log_access, ==, CRUNCH_ACCESS_LOG_JSON);
  g_assert_false (c->metrics_enabled);
  g_assert_cmpstr (c->metrics_listen, ==, "127.0.0.1:9100");
}

static void
test_bad_files (void)
{
  const struct {
    const gchar *ini, *message;
  } cases[] = {
      {"[nope]\nx = 1\n", "t.ini: [nope]: unknown group"},
      {"[server]\nlisten_on = 1\n", "t.ini: [server] listen_on: unknown key"},
      {"[executor]\nthreads = lots\n", "t.ini: [executor] threads = 'lots': not an integer"},
      {"[executor]\nthreads = 4x\n", "t.ini: [executor] threads = '4x': not an integer"},
      {"[executor]\nthreads = -1\n", "t.ini: [executor] threads = '-1': out of range (0 to 1024)"},
      {"[executor]\nthreads = 99999999999999999999\n",
       "t.ini: [executor] threads = '99999999999999999999': not an integer"},
      {"[fib]\nmax_n = 94\n", "t.ini: [fib] max_n = '94': out of range (0 to 93)"},
      {"[fib]\ntimeout = soon\n", "t.ini: [fib] timeout = 'soon': not a number"},
      {"[fib]\ntimeout = 0\n", "t.ini: [fib] timeout = '0': out of range (0.001 to 86400)"},
      {"[log]\naccess = true\n",
       "t.ini: [log] access = 'true': expected one of: off, common, json"},
      {"[metrics]\nenabled = 1\n", "t.ini: [metrics] enabled = '1': expected true or false"},
      {"[metrics]\nlisten = localhost:9100\n",
       "t.ini: [metrics] listen = 'localhost:9100': 'localhost:9100': the address must be numeric "
       "(for example 127.0.0.1:8000 or [::1]:8000)"},
      {"[metrics]\nport = 9100\n", "t.ini: [metrics] port: unknown key"},
      {"[auth]\npublic = /fast, /fib\n",
       "t.ini: [auth] public = '/fast, /fib': '/fib' is not a route (routes: /fast, /fib/, /fn, "
       "/fn/, /jobs, /jobs/*, /jobs/*/result, /jobs/*/events, /metrics, /healthz, /readyz, "
       "/status, /status/, "
       "/status.json, /openapi.json)"},
      {"[log]\nlevel = loud\n",
       "t.ini: [log] level = 'loud': expected one of: error, critical, warning, message, info, "
       "debug"},
      {"[server]\nlisten = localhost:80\n",
       "t.ini: [server] listen = 'localhost:80': 'localhost:80': the address must be numeric (for "
       "example 127.0.0.1:8000 or [::1]:8000)"},
      {"[server]\nlisten = 127.0.0.1\n",
       "t.ini: [server] listen = '127.0.0.1': '127.0.0.1': expected ADDRESS:PORT or [IPV6]:PORT"},
      {"[server]\nlisten = ,\n", "t.ini: [server] listen = ',': expected a comma-separated list"},
      {"[server]\nlisten = 127.0.0.1:80000\n",
       "t.ini: [server] listen = '127.0.0.1:80000': '127.0.0.1:80000': port out of range (0 to "
       "65535)"},
      {"[server]\nmax_connections = 100\n[executor]\nthreads = 4\nqueue_limit = 80\n",
       "t.ini: [executor] queue_limit = '80': queue_limit + threads (80 + 4) must not exceed 3/4 "
       "of [server] max_connections (100), or parked jobs could lock out /fast"},
      {"[server]\nmax_body_size = 1073741825\n",
       "t.ini: [server] max_body_size = '1073741825': out of range (0 to 1073741824)"},
      {"[executor]\nbackend = nats\n[nats]\nservers =\n",
       "t.ini: [nats] servers = '': [executor] backend = nats needs at least one nats://HOST:PORT"},
      {"[executor]\nclient_key = cookie\n",
       "t.ini: [executor] client_key = 'cookie': expected ip or header:NAME"},
      {"[executor]\nclient_key = header:X Key\n",
       "t.ini: [executor] client_key = 'header:X Key': expected ip or header:NAME"},
      {"[jobs]\nttl = -1\n", "t.ini: [jobs] ttl = '-1': out of range (0 to 604800)"},
      {"[executor]\nkill_grace = 0\n",
       "t.ini: [executor] kill_grace = '0': out of range (0.01 to 60)"},
      {"[executor]\nstart_timeout = never\n",
       "t.ini: [executor] start_timeout = 'never': not a number"},
      {"[executor]\nmemory_limit = 1000000\n",
       "t.ini: [executor] memory_limit = '1000000': out of range (0 to 999999)"},
      {"[executor]\nmax_jobs_per_process = -1\n",
       "t.ini: [executor] max_jobs_per_process = '-1': out of range (0 to 999999)"},
      {"[executor]\nretries = 2\n", "t.ini: [executor] retries = '2': out of range (0 to 1)"},
      {"[executor]\ndefault_priority = 10\n",
       "t.ini: [executor] default_priority = '10': out of range (0 to 9)"},
      {"[executor]\npriority_aging = -1\n",
       "t.ini: [executor] priority_aging = '-1': out of range (0 to 86400)"},
      {"[jobs]\nmax_stored = 0\n", "t.ini: [jobs] max_stored = '0': out of range (1 to 100000)"},
      {"[plugins]\nautoload = yes\n", "t.ini: [plugins] autoload: unknown key"},
      /* GKeyFile has no inline comments: say so, whatever the key's type */
      {"[executor]\nthreads = 32          # jobs in flight\n",
       "t.ini: [executor] threads = '32          # jobs in flight': inline comments are not "
       "allowed; put it on its own line"},
      {"[executor]\ncoalesce = true # share\n",
       "t.ini: [executor] coalesce = 'true # share': inline comments are not allowed; put it on "
       "its own line"},
      {"[server]\nlisten = 127.0.0.1:8000\t# public\n",
       "t.ini: [server] listen = '127.0.0.1:8000\t# public': inline comments are not allowed; put "
       "it on its own line"},
      {"[plugins]\ndir = /opt/fn # mine\n",
       "t.ini: [plugins] dir = '/opt/fn # mine': inline comments are not allowed; put it on its "
       "own line"},
      {"not an ini file\n", NULL},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (GError) error = NULL;
    g_autoptr (CrunchConfig) c = crunch_config_load_data (cases[i].ini, "t.ini", &error);
    g_assert_null (c);
    g_assert_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID);
    if (cases[i].message != NULL)
      g_assert_cmpstr (error->message, ==, cases[i].message);
    else
      g_assert_true (g_str_has_prefix (error->message, "t.ini: "));
  }
}

static void
test_plugins_and_jobs (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) d = crunch_config_new_default ();
  g_autoptr (CrunchConfig) c = crunch_config_load_data (
      "[plugins]\ndir = /opt/fn\nload = a, /x/b.so,\n[jobs]\nttl = 0.5\nmax_stored = 3\n", "t.ini",
      &error);
  g_autoptr (CrunchConfig) empty = crunch_config_load_data ("[plugins]\nload =\n", "t.ini", NULL);

  g_assert_no_error (error);
  g_assert_cmpstr (d->plugins_dir, ==, CRUNCH_PLUGIN_DIR);
  g_assert_cmpuint (g_strv_length (d->plugins_load), ==, 0);
  g_assert_cmpfloat (d->jobs_ttl, ==, 300);
  g_assert_cmpuint (d->jobs_max_stored, ==, 1000);
  g_assert_cmpstr (c->plugins_dir, ==, "/opt/fn");
  g_assert_cmpuint (g_strv_length (c->plugins_load), ==, 2);
  g_assert_cmpstr (c->plugins_load[1], ==, "/x/b.so");
  g_assert_cmpfloat (c->jobs_ttl, ==, 0.5);
  g_assert_cmpuint (c->jobs_max_stored, ==, 3);
  g_assert_nonnull (empty); /* an empty list means no plugins, unlike an empty [server] listen */
  g_assert_cmpuint (g_strv_length (empty->plugins_load), ==, 0);
}

/* data/crunchd.ini shows every key with its default value: loaded, it is the defaults. */
static void
test_sample_is_defaults (void)
{
  const gchar *path = g_getenv ("CRUNCHD_SAMPLE_INI");
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) sample = crunch_config_load (path, &error);
  g_autoptr (CrunchConfig) defaults = crunch_config_new_default ();
  g_autofree gchar *a = NULL, *b = NULL;

  g_assert_no_error (error);
  a = crunch_config_to_string (sample);
  b = crunch_config_to_string (defaults);
  g_assert_cmpstr (a, ==, b);
}

/* The sample ini's [group] has a line "key =" or, commented out, "#key =". */
static gboolean
in_section (const gchar *ini, const gchar *group, const gchar *key)
{
  g_autofree gchar *header = g_strdup_printf ("\n[%s]\n", group);
  g_autofree gchar *line = g_strdup_printf ("\n%s =", key);
  g_autofree gchar *commented = g_strdup_printf ("\n#%s =", key);
  const gchar *start = strstr (ini, header), *end;
  g_autofree gchar *section = NULL;

  if (start == NULL)
    return FALSE;
  end = strstr (start + 1, "\n[");
  section = end != NULL ? g_strndup (start, end - start) : g_strdup (start);
  return strstr (section, line) != NULL || strstr (section, commented) != NULL;
}

/* Every key is documented where a user looks: the sample ini, the README's table and
 * crunchd.ini(5), whose entry says when a change applies: reload, or restart (what crunchd's
 * reload does with the key; crunchd-worker, whose [worker] it is, never reloads). */
static void
test_every_key_documented (void)
{
  const gchar *srcdir = g_getenv ("CRUNCHD_SRCDIR");
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) defaults = crunch_config_new_default ();
  g_autofree gchar *ini = crunch_config_to_string (defaults);
  g_autoptr (GKeyFile) all = g_key_file_new ();
  g_autofree gchar *sample = NULL, *readme = NULL, *man = NULL;
  g_autofree gchar *readme_path = g_build_filename (srcdir, "README", NULL);
  g_autofree gchar *man_path = g_build_filename (srcdir, "man", "crunchd.ini.5", NULL);
  g_autoptr (GHashTable) marks = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  g_auto (GStrv) lines = NULL;
  g_auto (GStrv) groups = NULL;
  g_autofree gchar *group = NULL;
  guint checked = 0;

  g_assert_nonnull (srcdir);
  g_assert_true (g_key_file_load_from_data (all, ini, -1, G_KEY_FILE_NONE, &error));
  g_assert_true (g_file_get_contents (g_getenv ("CRUNCHD_SAMPLE_INI"), &sample, NULL, &error));
  g_assert_true (g_file_get_contents (readme_path, &readme, NULL, &error));
  g_assert_true (g_file_get_contents (man_path, &man, NULL, &error));
  g_assert_no_error (error);
  /* crunchd.ini(5): ".SH [group]", then one ".BR key \" (type, default ...; reload)\"" a key */
  lines = g_strsplit (man, "\n", -1);
  for (gchar **line = lines; *line != NULL; line++) {
    if (g_str_has_prefix (*line, ".SH ")) {
      g_free (group);
      group = **line && (*line)[4] == '[' ? g_strndup (*line + 5, strcspn (*line + 5, "]")) : NULL;
    } else if (group != NULL && g_str_has_prefix (*line, ".BR ")) {
      const gchar *name = *line + 4;
      const gchar *mark = strrchr (*line, ';');
      g_autofree gchar *key = g_strdup_printf ("%s/%.*s", group, (gint)strcspn (name, " "), name);
      if (mark == NULL || strstr (*line, " \" (") == NULL)
        continue;
      g_hash_table_insert (marks, g_steal_pointer (&key),
                           g_strndup (mark + 2, strcspn (mark + 2, ")")));
    }
  }
  groups = g_key_file_get_groups (all, NULL);
  for (gchar **g = groups; *g != NULL; g++) {
    g_auto (GStrv) keys = g_key_file_get_keys (all, *g, NULL, NULL);
    for (gchar **k = keys; *k != NULL; k++) {
      g_autofree gchar *name = g_strdup_printf ("%s/%s", *g, *k);
      g_autofree gchar *row = g_strdup_printf ("\n| `[%s] %s` |", *g, *k);
      const gchar *mark = g_hash_table_lookup (marks, name);
      /* tls.c compares [tls] client_ca's contents at a reload, and warns itself */
      gboolean restart = crunch_config_needs_restart (*g, *k) || g_str_equal (*g, "worker") ||
                         g_str_equal (name, "tls/client_ca");

      g_test_message ("[%s] %s: %s", *g, *k, mark);
      g_assert_true (in_section (sample, *g, *k));
      g_assert_nonnull (strstr (readme, row));
      g_assert_nonnull (mark);
      g_assert_cmpstr (mark, ==, restart ? "restart" : "reload");
      checked++;
    }
  }
  g_assert_cmpuint (checked, >=, 70);
}

static void
test_missing_file (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) c = crunch_config_load ("/nonexistent/crunchd.ini", &error);

  g_assert_null (c);
  g_assert_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID);
  g_assert_nonnull (strstr (error->message, "/nonexistent/crunchd.ini"));
}

/* --check-config prints the effective settings; they must load back to the same values. */
static void
test_round_trip (void)
{
  g_autoptr (CrunchConfig) a =
      crunch_config_load_data ("[executor]\nthreads = 3\n[fib]\ntimeout = 1.25\n", "a.ini", NULL);
  g_autofree gchar *text = crunch_config_to_string (a);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) b = crunch_config_load_data (text, "b.ini", &error);

  g_assert_no_error (error);
  g_assert_cmpuint (b->threads, ==, 3);
  g_assert_cmpfloat (b->fib.timeout, ==, 1.25);
  g_assert_cmpstr (b->listen[0], ==, a->listen[0]);
}

static void
test_listen_addresses (void)
{
  struct sockaddr_storage addr;
  socklen_t len;

  g_assert_true (crunch_parse_listen_address ("127.0.0.1:8000", &addr, &len, NULL));
  g_assert_cmpint (addr.ss_family, ==, AF_INET);
  g_assert_true (crunch_parse_listen_address ("[::1]:0", &addr, &len, NULL));
  g_assert_cmpint (addr.ss_family, ==, AF_INET6);
  g_assert_false (crunch_parse_listen_address ("::1", &addr, &len, NULL));
  g_assert_false (crunch_parse_listen_address ("", &addr, &len, NULL));
  g_assert_true (crunch_parse_listen_address ("127.0.0.1:65535", &addr, &len, NULL));
  for (gsize i = 0; i < 3; i++) {
    const gchar *big[] = {"127.0.0.1:65536", "[::1]:99999", "127.0.0.1:99999999999999999999999"};
    g_autoptr (GError) error = NULL;
    g_autofree gchar *expected = g_strdup_printf ("'%s': port out of range (0 to 65535)", big[i]);
    g_assert_false (crunch_parse_listen_address (big[i], &addr, &len, &error));
    g_assert_cmpstr (error->message, ==, expected);
  }
}

/* [executor] backend, [nats] and [worker]: defaults, a good file, and each kind of mistake. */
static void
test_nats (void)
{
  g_autoptr (CrunchConfig) d = crunch_config_new_default ();
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) c = crunch_config_load_data (
      "[executor]\nbackend = nats\n[nats]\nservers = nats://10.0.0.1:4222, tls://n2:4443\n"
      "subject_prefix = jobs.v2\nfallback = local\nmax_reconnect = 5\n[worker]\nid = w7\n",
      "t.ini", &error);
  const struct {
    const gchar *ini, *message;
  } bad[] = {
      {"[executor]\nbackend = ssh\n",
       "t.ini: [executor] backend = 'ssh': expected one of: local, nats, processes"},
      {"[executor]\npolicy = fifo\n",
       "t.ini: [executor] policy = 'fifo': expected one of: other, batch, idle, auto"},
      {"[nats]\nservers = http://h:1\n",
       "t.ini: [nats] servers = 'http://h:1': expected nats://HOST:PORT (or tls://HOST:PORT)"},
      {"[nats]\nservers = nats://h\n",
       "t.ini: [nats] servers = 'nats://h': expected nats://HOST:PORT (or tls://HOST:PORT)"},
      {"[nats]\nsubject_prefix = a.*\n",
       "t.ini: [nats] subject_prefix = 'a.*': expected dot-separated tokens without wildcards or "
       "spaces, such as crunchd.v1"},
      {"[nats]\nsubject_prefix = a..b\n",
       "t.ini: [nats] subject_prefix = 'a..b': expected dot-separated tokens without wildcards or "
       "spaces, such as crunchd.v1"},
      {"[nats]\nfallback = remote\n",
       "t.ini: [nats] fallback = 'remote': expected one of: none, local"},
      {"[nats]\nattempt_timeout = 0\n",
       "t.ini: [nats] attempt_timeout = '0': out of range (0.05 to 3600)"},
      {"[executor]\nidle_grace = 0\n",
       "t.ini: [executor] idle_grace = '0': out of range (0.1 to 3600)"},
      {"[executor]\ntimeslice = 0.5\n",
       "t.ini: [executor] timeslice = '0.5': out of range (0 to 0.1)"},
      {"[executor]\nkill_grace = nan\n", "t.ini: [executor] kill_grace = 'nan': not a number"},
      {"[executor]\ntimeslice = 0.00001\n",
       "t.ini: [executor] timeslice = '0.00001': 0 (off) or from 0.0001 to 0.1 seconds"},
      {"[nats]\nmax_reconnect = -2\n",
       "t.ini: [nats] max_reconnect = '-2': out of range (-1 to 1000000)"},
      {"[worker]\nthreads = many\n", "t.ini: [worker] threads = 'many': not an integer"},
  };

  g_assert_cmpstr (d->backend, ==, "local");
  g_assert_cmpstr (d->policy, ==, "other");
  g_assert_cmpfloat (d->idle_grace, ==, 5.0);
  g_assert_cmpfloat (d->timeslice, ==, 0.0005);
  g_assert_cmpstr (d->nats.servers[0], ==, "nats://127.0.0.1:4222");
  g_assert_cmpstr (d->nats.subject_prefix, ==, "crunchd.v1");
  g_assert_cmpstr (d->nats.fallback, ==, "none");
  g_assert_cmpuint (d->nats.retries, ==, 3);
  g_assert_cmpint (d->nats.max_reconnect, ==, -1);
  g_assert_cmpstr (d->worker.id, ==, "");

  g_assert_no_error (error);
  g_assert_cmpstr (c->backend, ==, "nats");
  g_assert_cmpuint (g_strv_length (c->nats.servers), ==, 2);
  g_assert_cmpstr (c->nats.servers[1], ==, "tls://n2:4443");
  g_assert_cmpstr (c->nats.subject_prefix, ==, "jobs.v2");
  g_assert_cmpstr (c->nats.fallback, ==, "local");
  g_assert_cmpint (c->nats.max_reconnect, ==, 5);
  g_assert_cmpstr (c->worker.id, ==, "w7");

  for (gsize i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autoptr (GError) e = NULL;
    g_autoptr (CrunchConfig) b = crunch_config_load_data (bad[i].ini, "t.ini", &e);
    g_assert_null (b);
    g_assert_cmpstr (e->message, ==, bad[i].message);
  }
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/config/defaults", test_defaults);
  g_test_add_func ("/config/good-file", test_good_file);
  g_test_add_func ("/config/bad-files", test_bad_files);
  g_test_add_func ("/config/nats", test_nats);
  g_test_add_func ("/config/plugins-and-jobs", test_plugins_and_jobs);
  g_test_add_func ("/config/missing-file", test_missing_file);
  g_test_add_func ("/config/sample-is-defaults", test_sample_is_defaults);
  g_test_add_func ("/config/every-key-documented", test_every_key_documented);
  g_test_add_func ("/config/round-trip", test_round_trip);
  g_test_add_func ("/config/listen-addresses", test_listen_addresses);
  return g_test_run ();
}
