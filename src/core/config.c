/* config.c - load crunchd.ini with GKeyFile.
 *
 * Every known key is described once in `keys[]` (group, name, type, range, field). Loading walks
 * that table, consumes each key it finds, then rejects whatever group or key is left over, so a
 * typo never silently falls back to a default. Every error names the file, `[group] key` and the
 * value. */
#include "config.h"

#include <errno.h>
#include <gio/gio.h>
#include <math.h>
#include <netinet/in.h>
#include <stddef.h>
#include <string.h>

#include "forwarded.h"
#include "routes.h"

G_DEFINE_QUARK (crunch - config - error - quark, crunch_config_error)

typedef enum { KEY_UINT, KEY_INT, KEY_DOUBLE, KEY_BOOL, KEY_STRING, KEY_LIST, KEY_ENUM } KeyType;

typedef struct {
  const gchar *group;
  const gchar *name;
  KeyType type;
  gdouble min, max;            /* numeric range, inclusive; KEY_LIST: min = least items */
  gsize offset;                /* into CrunchConfig */
  const gchar *const *choices; /* KEY_STRING: allowed values, NULL = any; KEY_ENUM: names */
} KeyDesc;

static const gchar *const log_levels[] = {"error", "critical", "warning", "message",
                                          "info",  "debug",    NULL};
static const gchar *const backends[] = {"local", "nats", "processes", NULL};
static const gchar *const policies[] = {"other", "batch", "idle", "auto", NULL};
static const gchar *const fallbacks[] = {"none", "local", NULL};
static const gchar *const stores[] = {"memory", "sqlite", "nats", NULL};
static const gchar *const sync_levels[] = {"normal", "full", NULL};
/* indexed by CrunchProxyHeader */
static const gchar *const proxy_headers[] = {"X-Forwarded-For", "Forwarded", NULL};
/* indexed by CrunchAccessLog */
static const gchar *const access_formats[] = {"off", "common", "json", NULL};

#define F(field) offsetof (CrunchConfig, field)
static const KeyDesc keys[] = {
    {"server", "listen", KEY_LIST, 1, 0, F (listen), NULL},
    {"server", "threads", KEY_UINT, 0, 64, F (poll_threads), NULL},
    {"server", "max_connections", KEY_UINT, 4, 1000000, F (max_connections), NULL},
    {"server", "max_connections_per_ip", KEY_UINT, 0, 1000000, F (max_connections_per_ip), NULL},
    {"server", "connection_timeout", KEY_UINT, 0, 86400, F (connection_timeout), NULL},
    {"server", "request_timeout", KEY_UINT, 0, 86400, F (request_timeout), NULL},
    {"server", "shutdown_timeout", KEY_DOUBLE, 0, 3600, F (shutdown_timeout), NULL},
    {"server", "max_body_size", KEY_UINT, 0, 1073741824, F (max_body_size), NULL},
    {"server", "trusted_proxies", KEY_LIST, 0, 0, F (trusted_proxies), NULL},
    {"server", "proxy_header", KEY_ENUM, 0, 0, F (proxy_header), proxy_headers},
    {"tls", "certificate", KEY_STRING, 0, 0, F (tls.certificate), NULL},
    {"tls", "key", KEY_STRING, 0, 0, F (tls.key), NULL},
    {"tls", "client_ca", KEY_STRING, 0, 0, F (tls.client_ca), NULL},
    {"auth", "keys_file", KEY_STRING, 0, 0, F (auth_keys_file), NULL},
    {"auth", "public", KEY_LIST, 0, 0, F (auth_public), NULL},
    {"executor", "threads", KEY_UINT, 0, 1024, F (threads), NULL},
    {"executor", "queue_limit", KEY_UINT, 1, 1000000, F (queue_limit), NULL},
    {"executor", "nice", KEY_INT, 0, 19, F (nice), NULL},
    {"executor", "policy", KEY_STRING, 0, 0, F (policy), policies},
    {"executor", "idle_grace", KEY_DOUBLE, 0.1, 3600, F (idle_grace), NULL},
    {"executor", "timeslice", KEY_DOUBLE, 0, 0.1, F (timeslice), NULL},
    {"executor", "per_client_limit", KEY_UINT, 0, 1000000, F (per_client_limit), NULL},
    {"executor", "client_key", KEY_STRING, 0, 0, F (client_key), NULL},
    {"executor", "coalesce", KEY_BOOL, 0, 0, F (coalesce), NULL},
    {"executor", "batching", KEY_BOOL, 0, 0, F (batching), NULL},
    {"executor", "default_priority", KEY_UINT, 0, 9, F (default_priority), NULL},
    {"executor", "priority_aging", KEY_DOUBLE, 0, 86400, F (priority_aging), NULL},
    {"executor", "backend", KEY_STRING, 0, 0, F (backend), backends},
    {"executor", "kill_grace", KEY_DOUBLE, 0.01, 60, F (kill_grace), NULL},
    {"executor", "start_timeout", KEY_DOUBLE, 0.1, 3600, F (start_timeout), NULL},
    {"executor", "memory_limit", KEY_UINT, 0, 999999, F (memory_limit), NULL},
    {"executor", "max_jobs_per_process", KEY_UINT, 0, 999999, F (max_jobs_per_process), NULL},
    {"executor", "retries", KEY_UINT, 0, 1, F (retries), NULL},
    {"nats", "servers", KEY_LIST, 0, 0, F (nats.servers), NULL},
    {"nats", "subject_prefix", KEY_STRING, 0, 0, F (nats.subject_prefix), NULL},
    {"nats", "retries", KEY_UINT, 0, 100, F (nats.retries), NULL},
    {"nats", "attempt_timeout", KEY_DOUBLE, 0.05, 3600, F (nats.attempt_timeout), NULL},
    {"nats", "reconnect_wait", KEY_DOUBLE, 0.001, 600, F (nats.reconnect_wait), NULL},
    {"nats", "max_reconnect", KEY_INT, -1, 1000000, F (nats.max_reconnect), NULL},
    {"nats", "reconnect_grace", KEY_DOUBLE, 0, 3600, F (nats.reconnect_grace), NULL},
    {"nats", "fallback", KEY_STRING, 0, 0, F (nats.fallback), fallbacks},
    {"worker", "threads", KEY_UINT, 0, 1024, F (worker.threads), NULL},
    {"worker", "nice", KEY_INT, 0, 19, F (worker.nice), NULL},
    {"worker", "id", KEY_STRING, 0, 0, F (worker.id), NULL},
    {"worker", "shutdown_timeout", KEY_DOUBLE, 0, 3600, F (worker.shutdown_timeout), NULL},
    {"cache", "entries", KEY_UINT, 0, 10000000, F (cache_entries), NULL},
    {"fib", "max_n", KEY_UINT, 0, 93, F (fib.max_n), NULL},
    {"fib", "timeout", KEY_DOUBLE, 0.001, 86400, F (fib.timeout), NULL},
    {"plugins", "dir", KEY_STRING, 0, 0, F (plugins_dir), NULL},
    {"plugins", "load", KEY_LIST, 0, 0, F (plugins_load), NULL},
    {"jobs", "ttl", KEY_DOUBLE, 0, 604800, F (jobs_ttl), NULL},
    {"jobs", "max_stored", KEY_UINT, 1, 100000, F (jobs_max_stored), NULL},
    {"jobs", "max_stored_per_client", KEY_UINT, 0, 100000, F (jobs_max_stored_per_client), NULL},
    {"jobs", "max_result_size", KEY_UINT, 0, 1073741824, F (jobs_max_result_size), NULL},
    {"jobs", "max_crashes", KEY_UINT, 1, 1000, F (jobs_max_crashes), NULL},
    {"jobs", "store", KEY_STRING, 0, 0, F (jobs_store), stores},
    {"jobs", "database", KEY_STRING, 0, 0, F (jobs_database), NULL},
    {"jobs", "synchronous", KEY_STRING, 0, 0, F (jobs_synchronous), sync_levels},
    {"jobs", "max_database_size", KEY_UINT, 0, 1048576, F (jobs_max_database_size), NULL},
    {"jobs", "bucket", KEY_STRING, 0, 0, F (jobs_bucket), NULL},
    {"jobs", "lease", KEY_DOUBLE, 1, 3600, F (jobs_lease), NULL},
    {"jobs", "max_streams", KEY_UINT, 0, 100000, F (jobs_max_streams), NULL},
    {"jobs", "max_streams_per_client", KEY_UINT, 0, 100000, F (jobs_max_streams_per_client), NULL},
    {"jobs", "stream_heartbeat", KEY_DOUBLE, 0.1, 3600, F (jobs_stream_heartbeat), NULL},
    {"log", "level", KEY_STRING, 0, 0, F (log_level), log_levels},
    {"log", "access", KEY_ENUM, 0, 0, F (log_access), access_formats},
    {"log", "access_buffer", KEY_UINT, 0, 16777216, F (log_access_buffer), NULL},
    {"log", "access_flush", KEY_DOUBLE, 0.01, 60, F (log_access_flush), NULL},
    {"metrics", "enabled", KEY_BOOL, 0, 0, F (metrics_enabled), NULL},
    {"metrics", "listen", KEY_STRING, 0, 0, F (metrics_listen), NULL},
};
#undef F

/* The defaults, in one place; data/crunchd.ini documents the same values. */
static const CrunchConfig defaults = {
    .poll_threads = 1,
    .max_connections = 1024,
    .max_connections_per_ip = 256,
    .connection_timeout = 30,
    .request_timeout = 10,
    .shutdown_timeout = 10.0,
    .max_body_size = 1048576,
    .threads = 0,
    .queue_limit = 256,
    .nice = 10,
    .per_client_limit = 64,
    .coalesce = TRUE,
    .batching = TRUE,
    .default_priority = 5,
    .priority_aging = 10.0,
    .idle_grace = 5.0,
    .timeslice = 0.0005,
    .kill_grace = 1.0,
    .start_timeout = 30.0,
    .retries = 1,
    .nats.retries = 3,
    .nats.attempt_timeout = 1.0,
    .nats.reconnect_wait = 0.25,
    .nats.max_reconnect = -1,
    .nats.reconnect_grace = 1.0,
    .worker.threads = 0,
    .worker.nice = 10,
    .worker.shutdown_timeout = 10.0,
    .fib.max_n = 92,
    .fib.timeout = 30.0,
    .jobs_ttl = 300.0,
    .jobs_max_stored = 1000,
    .jobs_max_stored_per_client = 100,
    .jobs_max_result_size = 8388608,
    .jobs_max_crashes = 3,
    .jobs_lease = 10.0,
    .jobs_max_streams = 256,
    .jobs_max_streams_per_client = 32,
    .jobs_stream_heartbeat = 15.0,
    .log_access = CRUNCH_ACCESS_LOG_COMMON,
    .log_access_buffer = 65536,
    .log_access_flush = 1.0,
    .metrics_enabled = TRUE,
};
static const gchar *const default_listen[] = {"127.0.0.1:8000", NULL};
static const gchar *const default_public[] = {"/fast", "/healthz", "/readyz", NULL};
static const gchar *const default_nats_servers[] = {"nats://127.0.0.1:4222", NULL};

#define FIELD(config, desc, type) ((type *)((gchar *)(config) + (desc)->offset))

CrunchConfig *
crunch_config_new_default (void)
{
  CrunchConfig *config = g_new0 (CrunchConfig, 1);

  *config = defaults;
  config->listen = g_strdupv ((gchar **)default_listen);
  config->trusted_proxies = g_new0 (gchar *, 1);
  config->tls.certificate = g_strdup ("");
  config->tls.key = g_strdup ("");
  config->tls.client_ca = g_strdup ("");
  config->auth_keys_file = g_strdup ("");
  config->auth_public = g_strdupv ((gchar **)default_public);
  config->log_level = g_strdup ("info");
  config->client_key = g_strdup ("ip");
  config->backend = g_strdup ("local");
  config->policy = g_strdup ("other");
  config->nats.servers = g_strdupv ((gchar **)default_nats_servers);
  config->nats.subject_prefix = g_strdup ("crunchd.v1");
  config->nats.fallback = g_strdup ("none");
  config->worker.id = g_strdup ("");
  config->plugins_dir = g_strdup (CRUNCH_PLUGIN_DIR);
  config->plugins_load = g_new0 (gchar *, 1);
  config->metrics_listen = g_strdup ("");
  config->jobs_store = g_strdup ("sqlite");
  config->jobs_database = g_strdup ("");
  config->jobs_synchronous = g_strdup ("normal");
  config->jobs_bucket = g_strdup ("crunchd_jobs");
  return config;
}

void
crunch_config_free (CrunchConfig *config)
{
  if (config == NULL)
    return;
  g_free (config->path);
  g_strfreev (config->listen);
  g_strfreev (config->trusted_proxies);
  g_free (config->tls.certificate);
  g_free (config->tls.key);
  g_free (config->tls.client_ca);
  g_free (config->auth_keys_file);
  g_strfreev (config->auth_public);
  g_free (config->log_level);
  g_free (config->client_key);
  g_free (config->backend);
  g_free (config->policy);
  g_strfreev (config->nats.servers);
  g_free (config->nats.subject_prefix);
  g_free (config->nats.fallback);
  g_free (config->worker.id);
  g_free (config->plugins_dir);
  g_strfreev (config->plugins_load);
  g_free (config->metrics_listen);
  g_free (config->jobs_store);
  g_free (config->jobs_database);
  g_free (config->jobs_synchronous);
  g_free (config->jobs_bucket);
  g_free (config);
}

static gboolean
fail (GError **error, const gchar *file, const KeyDesc *k, const gchar *value, const gchar *why)
{
  g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: [%s] %s = '%s': %s",
               file, k->group, k->name, value, why);
  return FALSE;
}

static gboolean
parse_number (const gchar *raw, const KeyDesc *k, gdouble *out)
{
  gchar *end = NULL;

  errno = 0;
  if (k->type == KEY_DOUBLE)
    *out = g_ascii_strtod (raw, &end);
  else
    *out = (gdouble)g_ascii_strtoll (raw, &end, 10);
  /* "nan" would pass every range check (each comparison is false); "inf" is out of range */
  return errno == 0 && end != raw && *end == '\0' && !isnan (*out);
}

/* GKeyFile has no inline comments: in "threads = 32  # in flight" the comment is part of the
 * value. No value of ours contains " #", so say what happened instead of "not an integer". */
static gboolean
has_inline_comment (const gchar *value)
{
  for (const gchar *hash = strchr (value, '#'); hash != NULL; hash = strchr (hash + 1, '#')) {
    if (hash > value && g_ascii_isspace (hash[-1]))
      return TRUE;
  }
  return FALSE;
}

static gboolean
load_number (const KeyDesc *k, const gchar *value, CrunchConfig *config, const gchar *file,
             GError **error)
{
  gdouble number;

  if (!parse_number (value, k, &number))
    return fail (error, file, k, value, k->type == KEY_DOUBLE ? "not a number" : "not an integer");
  if (number < k->min || number > k->max) {
    g_autofree gchar *why = g_strdup_printf ("out of range (%.15g to %.15g)", k->min, k->max);
    return fail (error, file, k, value, why);
  }
  /* every tick costs the computing thread a signal: a few microseconds, more on a VM */
  if (k->offset == offsetof (CrunchConfig, timeslice) && number > 0 && number < 0.0001)
    return fail (error, file, k, value, "0 (off) or from 0.0001 to 0.1 seconds");
  if (k->type == KEY_UINT)
    *FIELD (config, k, guint) = (guint)number;
  else if (k->type == KEY_INT)
    *FIELD (config, k, gint) = (gint)number;
  else
    *FIELD (config, k, gdouble) = number;
  return TRUE;
}

/* A string, or (KEY_ENUM) its index among the choices. Takes `value`. */
static gboolean
load_string (const KeyDesc *k, gchar *value, CrunchConfig *config, const gchar *file,
             GError **error)
{
  g_autofree gchar *owned = value;

  if (k->choices != NULL && !g_strv_contains (k->choices, value)) {
    g_autofree gchar *list = g_strjoinv (", ", (gchar **)k->choices);
    g_autofree gchar *why = g_strdup_printf ("expected one of: %s", list);
    return fail (error, file, k, value, why);
  }
  if (k->type == KEY_ENUM) {
    gint index = 0;
    while (!g_str_equal (k->choices[index], value))
      index++;
    *FIELD (config, k, gint) = index;
    return TRUE;
  }
  g_free (*FIELD (config, k, gchar *));
  *FIELD (config, k, gchar *) = g_steal_pointer (&owned);
  return TRUE;
}

static gboolean
load_list (const KeyDesc *k, const gchar *value, CrunchConfig *config, const gchar *file,
           GError **error)
{
  g_auto (GStrv) items = g_strsplit (value, ",", -1);
  g_autoptr (GPtrArray) list = g_ptr_array_new_with_free_func (g_free);

  for (gchar **it = items; *it != NULL; it++) {
    g_strstrip (*it);
    if (**it != '\0')
      g_ptr_array_add (list, g_strdup (*it));
  }
  if (list->len < k->min)
    return fail (error, file, k, value, "expected a comma-separated list");
  g_ptr_array_add (list, NULL);
  g_strfreev (*FIELD (config, k, gchar **));
  *FIELD (config, k, gchar **) = (gchar **)g_ptr_array_free (g_steal_pointer (&list), FALSE);
  return TRUE;
}

static gboolean
load_key (GKeyFile *kf, const KeyDesc *k, CrunchConfig *config, const gchar *file, GError **error)
{
  g_autofree gchar *raw = g_key_file_get_value (kf, k->group, k->name, NULL);
  g_autofree gchar *value = g_key_file_get_string (kf, k->group, k->name, NULL);

  if (value == NULL)
    return fail (error, file, k, raw, "not a valid string");
  g_strstrip (value);
  if (has_inline_comment (value))
    return fail (error, file, k, value, "inline comments are not allowed; put it on its own line");
  switch (k->type) {
  case KEY_UINT:
  case KEY_INT:
  case KEY_DOUBLE:
    return load_number (k, value, config, file, error);
  case KEY_BOOL:
    if (g_strcmp0 (value, "true") != 0 && g_strcmp0 (value, "false") != 0)
      return fail (error, file, k, value, "expected true or false");
    *FIELD (config, k, gboolean) = g_str_equal (value, "true");
    return TRUE;
  case KEY_ENUM:
  case KEY_STRING:
    return load_string (k, g_steal_pointer (&value), config, file, error);
  case KEY_LIST:
    return load_list (k, value, config, file, error);
  }
  g_assert_not_reached ();
}

static const KeyDesc *
find_key (const gchar *group, const gchar *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++) {
    if (g_str_equal (keys[i].group, group) && (name == NULL || g_str_equal (keys[i].name, name)))
      return &keys[i];
  }
  return NULL;
}

/* Anything not in keys[] is a mistake the user wants to hear about. */
static gboolean
reject_unknown (GKeyFile *kf, const gchar *file, GError **error)
{
  g_auto (GStrv) groups = g_key_file_get_groups (kf, NULL);

  for (gchar **g = groups; *g != NULL; g++) {
    if (find_key (*g, NULL) == NULL) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [%s]: unknown group", file, *g);
      return FALSE;
    }
    g_auto (GStrv) names = g_key_file_get_keys (kf, *g, NULL, NULL);
    for (gchar **n = names; *n != NULL; n++) {
      if (find_key (*g, *n) == NULL) {
        g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                     "%s: [%s] %s: unknown key", file, *g, *n);
        return FALSE;
      }
    }
  }
  return TRUE;
}

static CrunchConfig *
load_keyfile (GKeyFile *kf, const gchar *file, GError **error)
{
  g_autoptr (CrunchConfig) config = crunch_config_new_default ();

  if (!reject_unknown (kf, file, error))
    return NULL;
  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++) {
    if (g_key_file_has_key (kf, keys[i].group, keys[i].name, NULL) &&
        !load_key (kf, &keys[i], config, file, error))
      return NULL;
  }
  config->path = g_strdup (file);
  if (!crunch_config_validate (config, error))
    return NULL;
  return g_steal_pointer (&config);
}

CrunchConfig *
crunch_config_load_data (const gchar *data, const gchar *name, GError **error)
{
  g_autoptr (GKeyFile) kf = g_key_file_new ();
  g_autoptr (GError) local = NULL;

  if (!g_key_file_load_from_data (kf, data, -1, G_KEY_FILE_NONE, &local)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: %s", name,
                 local->message);
    return NULL;
  }
  return load_keyfile (kf, name, error);
}

CrunchConfig *
crunch_config_load (const gchar *path, GError **error)
{
  g_autofree gchar *data = NULL;
  g_autoptr (GError) local = NULL;

  if (!g_file_get_contents (path, &data, NULL, &local)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s", local->message);
    return NULL;
  }
  return crunch_config_load_data (data, path, error);
}

gboolean
crunch_parse_listen_address (const gchar *text, struct sockaddr_storage *addr, socklen_t *len,
                             GError **error)
{
  g_autoptr (GSocketConnectable) parsed = g_network_address_parse (text, 0, NULL);
  g_autoptr (GInetAddress) inet = NULL;
  g_autoptr (GSocketAddress) sa = NULL;
  guint16 port;

  const gchar *colon = strrchr (text, ':');
  gboolean bracketed = text[0] == '[';

  /* g_network_address_parse() refuses a port above 65535 like any other typo: say which it is */
  if (colon != NULL && colon[1] != '\0' && strspn (colon + 1, "0123456789") == strlen (colon + 1) &&
      g_ascii_strtoull (colon + 1, NULL, 10) > 65535) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "'%s': port out of range (0 to 65535)", text);
    return FALSE;
  }

  /* an explicit port is required, and an IPv6 host must be bracketed: "[::1]:8000" */
  if (parsed == NULL || colon == NULL || colon[1] == '\0' ||
      strspn (colon + 1, "0123456789") != strlen (colon + 1) ||
      (bracketed ? colon[-1] != ']' : strchr (text, ':') != colon)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "'%s': expected ADDRESS:PORT or [IPV6]:PORT", text);
    return FALSE;
  }
  port = g_network_address_get_port (G_NETWORK_ADDRESS (parsed));
  inet =
      g_inet_address_new_from_string (g_network_address_get_hostname (G_NETWORK_ADDRESS (parsed)));
  if (inet == NULL) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "'%s': the address must be numeric (for example 127.0.0.1:8000 or [::1]:8000)",
                 text);
    return FALSE;
  }
  sa = g_inet_socket_address_new (inet, port);
  *len = (socklen_t)g_socket_address_get_native_size (sa);
  return g_socket_address_to_native (sa, addr, sizeof *addr, error);
}

/* nats.c takes "nats://HOST:PORT" (or tls://); catch typos here rather than at connect time. */
static gboolean
valid_nats_url (const gchar *text)
{
  g_autoptr (GUri) uri = g_uri_parse (text, G_URI_FLAGS_NONE, NULL);

  return uri != NULL &&
         (g_strcmp0 (g_uri_get_scheme (uri), "nats") == 0 ||
          g_strcmp0 (g_uri_get_scheme (uri), "tls") == 0) &&
         g_uri_get_host (uri) != NULL && *g_uri_get_host (uri) != '\0' &&
         g_uri_get_port (uri) > 0 && (*g_uri_get_path (uri) == '\0');
}

/* A subject prefix is one or more dot-separated tokens, without wildcards or white space. */
static gboolean
valid_subject_prefix (const gchar *prefix)
{
  g_auto (GStrv) tokens = g_strsplit (prefix, ".", -1);

  if (*prefix == '\0' || strlen (prefix) > 200)
    return FALSE;
  for (gchar **t = tokens; *t != NULL; t++) {
    if (**t == '\0' || strpbrk (*t, "*> \t\r\n") != NULL)
      return FALSE;
  }
  return TRUE;
}

static gboolean
validate_nats (const CrunchConfig *config, const gchar *file, GError **error)
{
  gboolean needed =
      g_str_equal (config->backend, "nats") || g_str_equal (config->jobs_store, "nats");

  if (needed && (config->nats.servers == NULL || config->nats.servers[0] == NULL)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [nats] servers = '': %s needs at least one nats://HOST:PORT", file,
                 g_str_equal (config->backend, "nats") ? "[executor] backend = nats"
                                                       : "[jobs] store = nats");
    return FALSE;
  }
  for (gchar **s = config->nats.servers; s != NULL && *s != NULL; s++) {
    if (!valid_nats_url (*s)) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [nats] servers = '%s': expected nats://HOST:PORT (or tls://HOST:PORT)",
                   file, *s);
      return FALSE;
    }
  }
  if (!valid_subject_prefix (config->nats.subject_prefix)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [nats] subject_prefix = '%s': expected dot-separated tokens without "
                 "wildcards or spaces, such as crunchd.v1",
                 file, config->nats.subject_prefix);
    return FALSE;
  }
  return TRUE;
}

static gboolean
validate_server (const CrunchConfig *config, const gchar *file, GError **error)
{
  g_autoptr (GError) local = NULL;
  g_autoptr (CrunchProxies) proxies =
      crunch_proxies_new ((const gchar *const *)config->trusted_proxies, &local);
  g_autofree gchar *list = NULL;

  if (proxies == NULL) {
    list = g_strjoinv (", ", config->trusted_proxies);
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [server] trusted_proxies = '%s': %s", file, list, local->message);
    return FALSE;
  }
  return TRUE;
}

/* [tls]: the files themselves are read by tls.c (crunch_tls_load), which names them. */
static gboolean
validate_tls (const CrunchConfig *config, const gchar *file, GError **error)
{
  const CrunchTlsConfig *tls = &config->tls;

  if ((*tls->certificate == '\0') != (*tls->key == '\0')) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [tls] %s = '%s': [tls] certificate and key go together (set both for "
                 "HTTPS, or neither)",
                 file, *tls->key == '\0' ? "certificate" : "key",
                 *tls->key == '\0' ? tls->certificate : tls->key);
    return FALSE;
  }
  if (*tls->client_ca != '\0' && *tls->certificate == '\0') {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [tls] client_ca = '%s': client certificates need HTTPS: set [tls] "
                 "certificate and key too",
                 file, tls->client_ca);
    return FALSE;
  }
  return TRUE;
}

/* [auth] public names routes as the table writes them ("/fib/" covers every /fib/N): a typo
 * would leave a route closed that was meant to be open, so it is an error. */
static gboolean
validate_auth (const CrunchConfig *config, const gchar *file, GError **error)
{
  for (gchar **p = config->auth_public; p != NULL && *p != NULL; p++) {
    g_autoptr (GString) known = g_string_new (NULL);
    gboolean found = FALSE;
    for (guint i = 0; i < crunch_routes_n_labels (); i++) {
      found |= g_str_equal (*p, crunch_routes_label (i));
      g_string_append_printf (known, "%s%s", i > 0 ? ", " : "", crunch_routes_label (i));
    }
    if (!found) {
      g_autofree gchar *list = g_strjoinv (", ", config->auth_public);
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [auth] public = '%s': '%s' is not a route (routes: %s)", file, list, *p,
                   known->str);
      return FALSE;
    }
  }
  return TRUE;
}

/* Relations between keys: checked after loading and after command-line overrides. */
gboolean
crunch_config_validate (const CrunchConfig *config, GError **error)
{
  const gchar *file = config->path ? config->path : "(command line)";

  if (!validate_nats (config, file, error) || !validate_server (config, file, error) ||
      !validate_tls (config, file, error) || !validate_auth (config, file, error))
    return FALSE;
  for (gchar **l = config->listen; l != NULL && *l != NULL; l++) {
    struct sockaddr_storage addr;
    socklen_t len;
    g_autoptr (GError) local = NULL;
    if (!crunch_parse_listen_address (*l, &addr, &len, &local)) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [server] listen = '%s': %s", file, *l, local->message);
      return FALSE;
    }
  }
  if (!g_str_equal (config->client_key, "ip") &&
      !(g_str_has_prefix (config->client_key, "header:") &&
        g_regex_match_simple ("^header:[A-Za-z0-9-]{1,64}$", config->client_key, 0, 0))) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [executor] client_key = '%s': expected ip or header:NAME", file,
                 config->client_key);
    return FALSE;
  }
  if (config->metrics_listen != NULL && *config->metrics_listen != '\0') {
    struct sockaddr_storage addr;
    socklen_t len;
    g_autoptr (GError) local = NULL;
    if (!crunch_parse_listen_address (config->metrics_listen, &addr, &len, &local)) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [metrics] listen = '%s': %s", file, config->metrics_listen, local->message);
      return FALSE;
    }
  }
  return crunch_config_check_budget (config, config->max_connections, error);
}

/* Parked requests hold connections: if running + queued jobs could use up every connection,
 * slow work would lock out the fast lane. Keep a quarter of the connections for it. */
gint64
crunch_config_connections_spare (const CrunchConfig *config, guint max_connections)
{
  return (gint64)max_connections * 3 / 4 -
         ((gint64)config->queue_limit + crunch_config_effective_threads (config));
}

gboolean
crunch_config_check_budget (const CrunchConfig *config, guint max_connections, GError **error)
{
  const gchar *file = config->path ? config->path : "(command line)";
  guint threads = crunch_config_effective_threads (config);

  if (crunch_config_connections_spare (config, max_connections) >= 0)
    return TRUE;
  g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
               "%s: [executor] queue_limit = '%u': queue_limit + threads (%u + %u%s) must not "
               "exceed 3/4 of [server] max_connections (%u%s), or parked jobs could lock out /fast",
               file, config->queue_limit, config->queue_limit, threads,
               config->threads == 0 ? " (one per CPU)" : "", max_connections,
               max_connections != config->max_connections ? ", in force until a restart" : "");
  return FALSE;
}

guint
crunch_config_effective_threads (const CrunchConfig *config)
{
  return config->threads != 0 ? config->threads : (guint)g_get_num_processors ();
}

/* Keys read at start only: the listening daemon, the worker processes, the NATS connection, the
 * job store and the plugins (loaded once, see plugins.c). [worker] is crunchd-worker's. */
static const gchar *const restart_keys[] = {"server/listen",
                                            "server/threads",
                                            "server/max_connections",
                                            "server/max_connections_per_ip",
                                            "server/connection_timeout",
                                            "executor/client_key",
                                            "executor/backend",
                                            "executor/kill_grace",
                                            "executor/start_timeout",
                                            "executor/memory_limit",
                                            "executor/max_jobs_per_process",
                                            "executor/retries",
                                            "nats/*",
                                            "jobs/store",
                                            "jobs/database",
                                            "jobs/synchronous",
                                            "jobs/max_database_size",
                                            "jobs/bucket",
                                            "jobs/lease",
                                            "plugins/dir",
                                            "plugins/load",
                                            "metrics/listen",
                                            NULL};

guint
crunch_config_abandon_ms (const CrunchConfig *config)
{
  return (guint)(config->kill_grace * 1000) + 1000;
}

gboolean
crunch_config_needs_restart (const gchar *group, const gchar *key)
{
  g_autofree gchar *name = g_strconcat (group, "/", key, NULL);
  g_autofree gchar *all = g_strconcat (group, "/*", NULL);

  return g_strv_contains (restart_keys, name) || g_strv_contains (restart_keys, all);
}

static gboolean
is_restart_key (const KeyDesc *k)
{
  return crunch_config_needs_restart (k->group, k->name);
}

/* Puts the running value of every key that needs a restart back into `next` (a reloaded
 * config), so that what runs and what the next reload is compared with stay the same; the
 * keys whose value the file changed are listed in `changed` ("[server] threads, ..."). */
void
crunch_config_keep_restart_keys (CrunchConfig *next, const CrunchConfig *running, GString *changed)
{
  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++) {
    const KeyDesc *k = &keys[i];
    gboolean same;

    if (!is_restart_key (k))
      continue;
    switch (k->type) {
    case KEY_UINT:
      same = *FIELD (next, k, guint) == *FIELD (running, k, guint);
      *FIELD (next, k, guint) = *FIELD (running, k, guint);
      break;
    case KEY_INT:
    case KEY_ENUM:
      same = *FIELD (next, k, gint) == *FIELD (running, k, gint);
      *FIELD (next, k, gint) = *FIELD (running, k, gint);
      break;
    case KEY_BOOL:
      same = !*FIELD (next, k, gboolean) == !*FIELD (running, k, gboolean);
      *FIELD (next, k, gboolean) = *FIELD (running, k, gboolean);
      break;
    case KEY_DOUBLE:
      same = *FIELD (next, k, gdouble) == *FIELD (running, k, gdouble);
      *FIELD (next, k, gdouble) = *FIELD (running, k, gdouble);
      break;
    case KEY_STRING:
      same = g_strcmp0 (*FIELD (next, k, gchar *), *FIELD (running, k, gchar *)) == 0;
      g_free (*FIELD (next, k, gchar *));
      *FIELD (next, k, gchar *) = g_strdup (*FIELD (running, k, gchar *));
      break;
    case KEY_LIST:
    default:
      same = (*FIELD (next, k, gchar **) == NULL) == (*FIELD (running, k, gchar **) == NULL) &&
             (*FIELD (next, k, gchar **) == NULL ||
              g_strv_equal ((const gchar *const *)*FIELD (next, k, gchar **),
                            (const gchar *const *)*FIELD (running, k, gchar **)));
      g_strfreev (*FIELD (next, k, gchar **));
      *FIELD (next, k, gchar **) = g_strdupv (*FIELD (running, k, gchar **));
      break;
    }
    if (!same)
      g_string_append_printf (changed, "%s[%s] %s", changed->len > 0 ? ", " : "", k->group,
                              k->name);
  }
}

/* The effective settings as an ini file (for --check-config). */
gchar *
crunch_config_to_string (const CrunchConfig *config)
{
  g_autoptr (GKeyFile) kf = g_key_file_new ();

  for (gsize i = 0; i < G_N_ELEMENTS (keys); i++) {
    const KeyDesc *k = &keys[i];
    switch (k->type) {
    case KEY_UINT:
      g_key_file_set_uint64 (kf, k->group, k->name, *FIELD (config, k, guint));
      break;
    case KEY_INT:
      g_key_file_set_integer (kf, k->group, k->name, *FIELD (config, k, gint));
      break;
    case KEY_DOUBLE: {
      gchar buf[G_ASCII_DTOSTR_BUF_SIZE];
      g_key_file_set_value (kf, k->group, k->name,
                            g_ascii_formatd (buf, sizeof buf, "%g", *FIELD (config, k, gdouble)));
      break;
    }
    case KEY_BOOL:
      g_key_file_set_value (kf, k->group, k->name, *FIELD (config, k, gboolean) ? "true" : "false");
      break;
    case KEY_STRING: /* escaped as load_key() reads it back (g_key_file_get_string) */
      g_key_file_set_string (kf, k->group, k->name, *FIELD (config, k, gchar *));
      break;
    case KEY_ENUM:
      g_key_file_set_value (kf, k->group, k->name, k->choices[*FIELD (config, k, gint)]);
      break;
    case KEY_LIST: {
      gchar **list = *FIELD (config, k, gchar **);
      g_autofree gchar *joined = list != NULL ? g_strjoinv (", ", list) : g_strdup ("");
      g_key_file_set_string (kf, k->group, k->name, joined);
      break;
    }
    }
  }
  return g_key_file_to_data (kf, NULL, NULL);
}

gchar *
crunch_config_jobs_database (const CrunchConfig *config)
{
  const gchar *state = g_getenv ("STATE_DIRECTORY");

  if (config->jobs_database != NULL && *config->jobs_database != '\0')
    return g_strdup (config->jobs_database);
  if (state != NULL && *state != '\0') {
    /* systemd lists every StateDirectory= it made, separated by ':': the first is ours */
    g_auto (GStrv) dirs = g_strsplit (state, ":", 2);
    return g_build_filename (dirs[0], "jobs.db", NULL);
  }
  return g_build_filename (g_get_user_state_dir (), "crunchd", "jobs.db", NULL);
}

gchar *
crunch_config_resolve_path (const CrunchConfig *config, const gchar *value)
{
  const gchar *credentials = g_getenv ("CREDENTIALS_DIRECTORY");
  g_autofree gchar *dir = NULL;

  if (g_path_is_absolute (value))
    return g_strdup (value);
  if (credentials != NULL && *credentials != '\0')
    return g_build_filename (credentials, value, NULL);
  dir = config->path != NULL ? g_path_get_dirname (config->path) : g_get_current_dir ();
  return g_build_filename (dir, value, NULL);
}
