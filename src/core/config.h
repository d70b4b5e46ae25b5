/* config.h - crunchd.ini -> CrunchConfig: defaults, strict loading, validation. */
#pragma once

#include <glib.h>
#include <sys/socket.h>

#include "fib.h"

/* Exit status for a bad configuration (sysexits.h EX_CONFIG). */
#define CRUNCH_EXIT_CONFIG 78

typedef enum {
  CRUNCH_ACCESS_LOG_OFF,
  CRUNCH_ACCESS_LOG_COMMON, /* Common Log Format + request id */
  CRUNCH_ACCESS_LOG_JSON,   /* one JSON object per line */
} CrunchAccessLog;

/* [server] proxy_header: the header trusted proxies write the client address into. */
typedef enum {
  CRUNCH_PROXY_HEADER_X_FORWARDED_FOR, /* X-Forwarded-For (nginx, HAProxy, most load balancers) */
  CRUNCH_PROXY_HEADER_FORWARDED,       /* Forwarded, RFC 7239 */
} CrunchProxyHeader;

/* crunchd.ini holds the settings of two programs. CrunchConfig is crunchd's view: its own groups
 * as fields, the groups it shares with crunchd-worker ([nats], [plugins], [log]) and the ones
 * that belong to one program or function as sections of their own. */

/* [nats]: how crunchd and crunchd-worker reach the cluster (restart). */
typedef struct {
  gchar **servers;         /* nats://HOST:PORT URLs of one cluster */
  gchar *subject_prefix;   /* jobs go to PREFIX.job.<function> */
  guint retries;           /* crunchd: extra attempts after an attempt was lost */
  gdouble attempt_timeout; /* crunchd: seconds without a sign of life before an attempt is lost */
  gdouble reconnect_wait;  /* seconds between reconnect attempts to one server */
  gint max_reconnect;      /* -1 = forever */
  gdouble reconnect_grace; /* crunchd: seconds a job waits for a lost connection before 503 */
  gchar *fallback;         /* crunchd: "none" or "local", where jobs go when no worker listens */
} CrunchNatsConfig;

/* [worker]: crunchd-worker only. */
typedef struct {
  guint threads; /* 0 = one per CPU */
  gint nice;
  gchar *id;                /* "" = HOSTNAME:PID */
  gdouble shutdown_timeout; /* seconds running jobs get on SIGTERM */
} CrunchWorkerConfig;

/* [tls]: HTTPS on the public listeners (tls.c). Paths; "" = not set. A relative path is taken
 * from $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when set, else from the directory of
 * the configuration file. */
typedef struct {
  gchar *certificate; /* PEM: the server's certificate, then its chain */
  gchar *key;         /* PEM: its private key */
  gchar *client_ca;   /* PEM: CA certificate(s) client certificates must be signed by */
} CrunchTlsConfig;

typedef struct {
  gchar *path; /* file it came from, NULL for built-in defaults */

  /* [server] */
  gchar **listen;     /* "ADDR:PORT", IPv6 as "[ADDR]:PORT" */
  guint poll_threads; /* MHD polling threads per listener (1); 0: one per core, max 4 (restart) */
  guint max_connections;
  guint max_connections_per_ip; /* 0 = no per-IP limit */
  guint connection_timeout;     /* seconds of idleness before MHD closes */
  guint request_timeout;        /* seconds to complete a request (header and body); 0 = none */
  gdouble shutdown_timeout;     /* seconds running jobs get on SIGTERM */
  guint max_body_size;          /* bytes; larger request bodies get 413 */
  gchar **trusted_proxies;      /* CIDR blocks whose proxy_header is believed */
  CrunchProxyHeader proxy_header;

  CrunchTlsConfig tls; /* [tls] */

  /* [auth] (auth.c) */
  gchar *auth_keys_file; /* the keys file; "" = authentication off. Relative: as [tls] paths */
  gchar **auth_public;   /* route patterns open without a key */

  /* [executor] */
  guint threads;          /* 0 = one per CPU */
  guint queue_limit;      /* jobs waiting for a worker before 503 */
  gint nice;              /* worker thread niceness, so the polling thread wins */
  gchar *policy;          /* worker scheduling policy: "other", "batch", "idle" or "auto" */
  guint per_client_limit; /* tickets in flight per client before 429; 0 = none */
  gchar *client_key;      /* "ip" or "header:NAME" */
  gboolean coalesce;      /* identical jobs of pure functions share one computation */
  gboolean batching;      /* functions that declare max_batch > 1 get their calls in batches */
  guint default_priority; /* class of calls without a key priority, 0 (lowest) to 9 */
  gdouble priority_aging; /* seconds a waiting class takes to count one class up; 0 = never */
  gdouble idle_grace;     /* policy auto: seconds a job may be starved before it is raised */
  gdouble timeslice;      /* seconds between a computing worker's ticks; 0 = none */
  gchar *backend;         /* "local", "nats" or "processes" (restart) */
  /* worker processes (backend = processes, and program plugins); restart */
  gdouble kill_grace;         /* seconds a cancelled call gets before SIGKILL */
  gdouble start_timeout;      /* seconds a new process gets to send its hello */
  guint memory_limit;         /* MiB of address space per process (RLIMIT_AS), 0 = none */
  guint max_jobs_per_process; /* calls before a process is replaced, 0 = no limit */
  guint retries;              /* 0 or 1: a pure function's call retried on a fresh process */

  CrunchNatsConfig nats;     /* [nats]: crunchd's NATS executor and crunchd-worker (restart) */
  CrunchWorkerConfig worker; /* [worker]: crunchd-worker only */

  /* [cache] */
  guint cache_entries; /* LRU results of pure functions; 0 = off */

  CrunchFibConfig fib; /* [fib]: the built-in function's own settings (fib.h) */

  /* [plugins] (restart) */
  gchar *plugins_dir;   /* where plugin names are looked up */
  gchar **plugins_load; /* plugin names or paths, NULL = none */

  /* [jobs] */
  gdouble jobs_ttl;      /* seconds a finished job is kept */
  guint jobs_max_stored; /* jobs kept at once (any state); beyond it POST /jobs gets 503 */
  guint jobs_max_stored_per_client; /* of those, one client's; beyond it 429; 0 = no share */
  guint jobs_max_result_size;       /* bytes; a larger result fails its job; 0 = no bound */
  guint jobs_max_crashes;  /* start-ups that may find a job running before it fails as poison */
  gchar *jobs_store;       /* "sqlite" (the default) or "memory" (restart) */
  gchar *jobs_database;    /* sqlite: the file; "" = crunch_config_jobs_database() (restart) */
  gchar *jobs_synchronous; /* sqlite: "normal" or "full" (restart) */
  guint jobs_max_database_size;      /* sqlite: MiB, 0 = no bound (restart) */
  gchar *jobs_bucket;                /* nats: the JetStream key-value bucket (restart) */
  gdouble jobs_lease;                /* nats: seconds a front end owns a job unrenewed (restart) */
  guint jobs_max_streams;            /* event streams open at once; beyond it 503 */
  guint jobs_max_streams_per_client; /* of those, one client's; beyond it 429; 0 = no share */
  gdouble jobs_stream_heartbeat;     /* seconds between comment lines on an idle stream */

  /* [log] */
  gchar *log_level; /* error|critical|warning|message|info|debug */
  CrunchAccessLog log_access;
  guint log_access_buffer;  /* bytes of access lines the writer thread holds; 0 = write at once */
  gdouble log_access_flush; /* seconds a queued access line waits at most */

  /* [metrics] */
  gboolean metrics_enabled;
  gchar *metrics_listen; /* "" = ops endpoints on the public addresses */
} CrunchConfig;

#define CRUNCH_CONFIG_ERROR (crunch_config_error_quark ())
GQuark crunch_config_error_quark (void);
typedef enum {
  CRUNCH_CONFIG_ERROR_INVALID,
} CrunchConfigError;

CrunchConfig *crunch_config_new_default (void);
CrunchConfig *crunch_config_load (const gchar *path, GError **error);
CrunchConfig *crunch_config_load_data (const gchar *data, const gchar *name, GError **error);
gboolean crunch_config_validate (const CrunchConfig *config, GError **error);
gchar *crunch_config_to_string (const CrunchConfig *config);
guint crunch_config_effective_threads (const CrunchConfig *config);
/* What 3/4 of `max_connections` leaves beside queue_limit + threads (below 0: they do not fit);
 * the rest is the fast lane's. */
gint64 crunch_config_connections_spare (const CrunchConfig *config, guint max_connections);
/* queue_limit + threads fit in 3/4 of `max_connections` (a reload checks against the running
 * value, which changes only at a restart). */
gboolean crunch_config_check_budget (const CrunchConfig *config, guint max_connections,
                                     GError **error);
/* At a stop, how long after its cancel a job still running on a thread is given up (the process
 * exits without it), in ms: kill_grace, and a second for a worker process SIGKILLed at
 * kill_grace to be reaped. */
guint crunch_config_abandon_ms (const CrunchConfig *config);
/* Whether crunchd reads [group] key at start only (a reload keeps its running value). */
gboolean crunch_config_needs_restart (const gchar *group, const gchar *key);
/* A reload: the keys that need a restart keep their running values; those the file changed are
 * appended to `changed` as "[group] key, ...". */
void crunch_config_keep_restart_keys (CrunchConfig *next, const CrunchConfig *running,
                                      GString *changed);
/* [jobs] database, or where it goes by default: $STATE_DIRECTORY/jobs.db (systemd's
 * StateDirectory=), else $XDG_STATE_HOME/crunchd/jobs.db (~/.local/state/crunchd/jobs.db). */
gchar *crunch_config_jobs_database (const CrunchConfig *config);
/* A file a key names ([tls] certificate, [auth] keys_file): an absolute path as it is; a
 * relative one in $CREDENTIALS_DIRECTORY (systemd's LoadCredential=) when that is set, else
 * beside the configuration file. */
gchar *crunch_config_resolve_path (const CrunchConfig *config, const gchar *value);
void crunch_config_free (CrunchConfig *config);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchConfig, crunch_config_free)

gboolean crunch_parse_listen_address (const gchar *text, struct sockaddr_storage *addr,
                                      socklen_t *len, GError **error);
