/* main.c - command line, start-up, the main loop, signals and exit codes.
 *
 * The main thread owns the GMainLoop: it handles SIGHUP (reload), SIGINT/SIGTERM (drain and
 * stop) and talks to systemd. Requests are served on MHD's threads, jobs run on the executor's. */
#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include "accesslog.h"
#include "auth.h"
#include "config.h"
#include "executor-nats.h"
#include "functions.h"
#include "jobs.h"
#include "logging.h"
#include "metrics.h"
#include "procpool.h"
#include "scheduler.h"
#include "server.h"
#include "service.h"
#include "nats.h"
#include "sqlite.h"
#include "timeslice.h"
#include "tls.h"

#define DEFAULT_CONFIG SYSCONFDIR "/crunchd/crunchd.ini"

typedef struct {
  GMainLoop *loop;
  CrunchConfig *config;
  CrunchScheduler *scheduler;
  CrunchCalls *calls;
  CrunchJobs *jobs;
  CrunchStore *store; /* the jobs' (they own it); NULL: [jobs] store = memory */
  CrunchServer *server;
  CrunchTls *tls;   /* [tls]: NULL = plain HTTP */
  CrunchAuth *auth; /* [auth]: the API keys, swapped on reload */
  gchar *config_path;
  gboolean config_explicit;
  gchar **cli_listen;
  gint cli_threads;
  gboolean stopping;
  guint shutdown_timer;
  guint grace_timer;
  guint stuck; /* jobs left on their threads at the stop: their functions ignored the cancel */
  CrunchHeartbeat *heartbeat;
  CrunchProcPool *worker_pool; /* [executor] backend = processes */
} Crunchd;

#define STATUS_INTERVAL_MS 1000
#define DRAIN_POLL_MS 20

/* systemctl status shows this line: live figures, sent only when they change. */
static gchar *
status_text (gpointer data)
{
  Crunchd *app = data;
  CrunchSchedulerStats stats;

  crunch_scheduler_get_stats (app->scheduler, &stats);
  return g_strdup_printf ("%s%" G_GUINT64_FORMAT " requests served; jobs: %u running on %u "
                          "threads, %u queued (limit %u)",
                          app->stopping ? "stopping: " : "",
                          crunch_server_requests_served (app->server), stats.running, stats.threads,
                          stats.queued, stats.queue_limit);
}

/* Command-line values override the file, on start and on every reload. */
static CrunchConfig *
load_config (Crunchd *app, GError **error)
{
  g_autoptr (CrunchConfig) config = NULL;

  if (!app->config_explicit && !g_file_test (app->config_path, G_FILE_TEST_EXISTS)) {
    g_info ("no configuration file at %s: using built-in defaults", app->config_path);
    config = crunch_config_new_default ();
  } else {
    config = crunch_config_load (app->config_path, error);
    if (config == NULL)
      return NULL;
  }
  if (app->cli_listen != NULL) {
    g_strfreev (config->listen);
    config->listen = g_strdupv (app->cli_listen);
  }
  if (app->cli_threads >= 0)
    config->threads = (guint)app->cli_threads;
  if ((app->cli_listen != NULL || app->cli_threads >= 0) && !crunch_config_validate (config, error))
    return NULL;
  return g_steal_pointer (&config);
}

/* After a crash, while the jobs it interrupted run again, local threads run one job at a time:
 * should it happen again, the crash is pinned on the one job that was running (jobs.c). */
static gboolean
one_at_a_time (const Crunchd *app, const CrunchConfig *config)
{
  return app->jobs != NULL && g_str_equal (config->backend, "local") &&
         crunch_jobs_recovering (app->jobs);
}

static CrunchSchedulerSettings
scheduler_settings (const Crunchd *app, const CrunchConfig *config)
{
  return (CrunchSchedulerSettings){
      .threads = one_at_a_time (app, config) ? 1 : crunch_config_effective_threads (config),
      .queue_limit = config->queue_limit,
      .per_client_limit = config->per_client_limit,
      .coalesce = config->coalesce,
      /* after a crash jobs run one at a time, each alone, so a crash names its job */
      .batching = config->batching && !one_at_a_time (app, config),
      .nice = config->nice,
      .policy = crunch_worker_policy_from_string (config->policy),
      .idle_grace = config->idle_grace,
      .timeslice = config->timeslice,
      .cache_entries = config->cache_entries,
      .priority_aging = config->priority_aging,
  };
}

static void
apply_live_settings (Crunchd *app, const CrunchConfig *config)
{
  crunch_logging_set_level (config->log_level);
  crunch_logging_set_access (config->log_access);
  crunch_access_log_configure (config->log_access_buffer, config->log_access_flush);
  crunch_metrics_set_enabled (config->metrics_enabled);
  crunch_functions_configure (config);
  if (app->scheduler != NULL) {
    CrunchSchedulerSettings settings = scheduler_settings (app, config);
    crunch_scheduler_configure (app->scheduler, &settings);
  }
  if (app->server != NULL)
    crunch_server_configure (app->server, config);
  if (app->jobs != NULL)
    crunch_jobs_configure (app->jobs, config);
  crunch_procpools_resize (crunch_config_effective_threads (config));
}

static gboolean
on_reload (gpointer data)
{
  Crunchd *app = data;
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) config = NULL;
  g_autoptr (CrunchAuthSettings) auth = NULL;

  crunch_service_notifyf ("RELOADING=1\nMONOTONIC_USEC=%" G_GINT64_FORMAT, g_get_monotonic_time ());
  config = load_config (app, &error);
  /* max_connections stays what it is (below): the new queue must fit in it */
  if (config != NULL && !crunch_config_check_budget (config, app->config->max_connections, &error))
    g_clear_pointer (&config, crunch_config_free);
  /* a keys file or certificate that cannot be read fails the whole reload, like any other
   * error: the running keys stay */
  if (config != NULL && (auth = crunch_auth_settings_load (config, &error)) == NULL)
    g_clear_pointer (&config, crunch_config_free);
  if (config != NULL && !crunch_tls_reload (app->tls, config, &error))
    g_clear_pointer (&config, crunch_config_free);
  if (config == NULL) {
    g_warning ("reload failed, keeping the running configuration: %s", error->message);
  } else {
    g_autoptr (GString) changed = g_string_new (NULL);
    /* keep what cannot change live, so the next comparison is against what really runs */
    crunch_config_keep_restart_keys (config, app->config, changed);
    if (changed->len > 0)
      g_warning ("reload: changed keys that apply only after a restart, running values kept: %s",
                 changed->str);
    if ((app->tls == NULL) != (*config->tls.certificate == '\0')) /* what runs, not the file */
      g_warning ("reload: turning HTTPS on or off ([tls] certificate) applies only after a "
                 "restart");
    apply_live_settings (app, config);
    crunch_auth_publish (app->auth, g_steal_pointer (&auth));
    crunch_procpools_forgive (); /* crash-looping functions get another chance */
    crunch_config_free (app->config);
    app->config = g_steal_pointer (&config);
    g_message ("configuration reloaded from %s", app->config_path);
  }
  crunch_heartbeat_update (app->heartbeat);
  crunch_service_notify ("READY=1");
  return G_SOURCE_CONTINUE;
}

/* Every request has its answer; asynchronous jobs still running get the rest of
 * shutdown_timeout too (the timer cancels them), then the loop ends. */
static gboolean
on_drained (gpointer data)
{
  Crunchd *app = data;
  CrunchSchedulerStats stats;

  crunch_scheduler_get_stats (app->scheduler, &stats);
  if (stats.running > app->stuck) {
    g_timeout_add (DRAIN_POLL_MS, on_drained, app);
    return G_SOURCE_REMOVE;
  }
  g_main_loop_quit (app->loop);
  return G_SOURCE_REMOVE;
}

/* kill_grace (and a second) after the cancel, jobs still on a thread run functions that ignore
 * it, and a thread cannot be killed: their callers get 503 now and crunchd stops without them
 * (exit status 1) instead of waiting for ever. A job in a worker process was SIGKILLed by now:
 * the second is the kill's, and the reaping's. */
static gboolean
on_cancel_ignored (gpointer data)
{
  Crunchd *app = data;
  CrunchSchedulerStats stats;

  app->grace_timer = 0;
  crunch_scheduler_get_stats (app->scheduler, &stats);
  if (stats.running == 0)
    return G_SOURCE_REMOVE;
  app->stuck = stats.running;
  g_warning ("%u job(s) still running %g s after their cancel ([executor] kill_grace + 1 s): "
             "their function ignores it, and a thread cannot be stopped; stopping without them",
             app->stuck, crunch_config_abandon_ms (app->config) / 1000.0);
  crunch_scheduler_answer_running (app->scheduler, CRUNCH_JOB_SHUTDOWN);
  return G_SOURCE_REMOVE;
}

static gboolean
on_shutdown_timeout (gpointer data)
{
  Crunchd *app = data;

  app->shutdown_timer = 0;
  g_message ("shutdown_timeout reached: cancelling %u running request(s)",
             crunch_server_in_flight (app->server));
  crunch_procpools_stopping (); /* a process still starting is not waited for */
  crunch_scheduler_cancel_running (app->scheduler, CRUNCH_JOB_SHUTDOWN);
  app->grace_timer = g_timeout_add (crunch_config_abandon_ms (app->config), on_cancel_ignored, app);
  return G_SOURCE_REMOVE;
}

static gboolean
on_terminate (gpointer data)
{
  Crunchd *app = data;

  if (app->stopping)
    return G_SOURCE_CONTINUE;
  app->stopping = TRUE;
  crunch_service_notify ("STOPPING=1");
  crunch_heartbeat_update (app->heartbeat);
  g_message ("stopping: %u request(s) in flight", crunch_server_in_flight (app->server));
  crunch_server_drain (app->server, on_drained, app);
  crunch_scheduler_drain (app->scheduler);
  app->shutdown_timer =
      g_timeout_add ((guint)(app->config->shutdown_timeout * 1000), on_shutdown_timeout, app);
  return G_SOURCE_CONTINUE;
}

static void
log_totals (CrunchScheduler *scheduler)
{
  CrunchSchedulerStats st;

  crunch_scheduler_get_stats (scheduler, &st);
  g_message ("totals: jobs_started=%" G_GUINT64_FORMAT " coalesced=%" G_GUINT64_FORMAT
             " timed_out=%" G_GUINT64_FORMAT " client_gone=%" G_GUINT64_FORMAT
             " jobs_cancelled=%" G_GUINT64_FORMAT " rejected_queue_full=%" G_GUINT64_FORMAT
             " rejected_client_limit=%" G_GUINT64_FORMAT " rejected_deadline=%" G_GUINT64_FORMAT
             " cache_hits=%" G_GUINT64_FORMAT,
             st.jobs_started, st.tickets_coalesced, st.tickets_timed_out, st.tickets_client_gone,
             st.jobs_cancelled, st.rejected_queue_full, st.rejected_client_limit,
             st.rejected_deadline, st.cache_hits);
}

/* Descriptors besides client connections: listen sockets, epoll, MHD's and GLib's wake-up pipes,
 * the log, with room to spare. */
#define FD_RESERVE 64

/* Every connection is a file descriptor, and the usual soft RLIMIT_NOFILE (1024) is below the
 * default max_connections: accept() would fail with EMFILE long before MHD's limit. Raise the
 * soft limit as far as the connection limits need (the hard limit allows it without privilege;
 * under systemd it is 524288), and say so when even the hard limit is too low. */
static void
raise_fd_limit (guint64 connections)
{
  struct rlimit rl;
  rlim_t want = (rlim_t)(connections + FD_RESERVE);

  if (getrlimit (RLIMIT_NOFILE, &rl) != 0 || (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= want))
    return;
  if (rl.rlim_cur != RLIM_INFINITY) {
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? want : MIN (want, rl.rlim_max);
    if (setrlimit (RLIMIT_NOFILE, &rl) != 0)
      g_warning ("cannot raise the open file limit to %lu: %s", (gulong)rl.rlim_cur,
                 g_strerror (errno));
  }
  if (getrlimit (RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
    g_warning ("[server] max_connections needs %lu open files but RLIMIT_NOFILE allows %lu: "
               "connections beyond that are refused (raise LimitNOFILE= or ulimit -n)",
               (gulong)want, (gulong)rl.rlim_cur);
}

static CrunchExecutor *
new_nats_executor (const CrunchExecutorSettings *settings, CrunchJobFunc finished,
                   gpointer finished_data, gpointer user_data, GError **error)
{
  Crunchd *app = user_data;

  return crunch_nats_executor_new (app->config, settings, finished, finished_data, error);
}

static void
render_executor (GString *out, gpointer scheduler)
{
  crunch_scheduler_render_metrics (scheduler, out);
  crunch_executor_render_metrics (crunch_scheduler_executor (scheduler), out);
}

static const gchar *
executor_not_ready (gpointer scheduler)
{
  return crunch_executor_not_ready (crunch_scheduler_executor (scheduler));
}

static void
render_store (GString *out, gpointer store)
{
  crunch_store_render_metrics (store, out);
}

/* The ops endpoints are handed their figures: the server's gauges, and the executor's own
 * families and readiness. */
static void
wire_metrics (Crunchd *app, gboolean on)
{
  if (!on) {
    crunch_metrics_remove_source (app->server);
    crunch_metrics_remove_source (app->scheduler);
    crunch_metrics_remove_source (&app->worker_pool);
    crunch_metrics_remove_source (app->store);
    crunch_metrics_remove_source (app->jobs);
    crunch_metrics_remove_source (app->auth);
    return;
  }
  crunch_metrics_add_source (
      &(CrunchMetricsSource){.render = crunch_auth_render_metrics, .data = app->auth});
  if (app->jobs != NULL)
    crunch_metrics_add_source (
        &(CrunchMetricsSource){.status = crunch_jobs_render_running, .data = app->jobs});
  if (app->store != NULL)
    crunch_metrics_add_source (&(CrunchMetricsSource){.render = render_store, .data = app->store});
  crunch_metrics_add_source (&(CrunchMetricsSource){.render = crunch_procpools_render_metrics,
                                                    .summary = crunch_procpools_summary,
                                                    .data = &app->worker_pool});
  crunch_metrics_add_source (
      &(CrunchMetricsSource){.gauges = crunch_server_fill_gauges, .data = app->server});
  crunch_metrics_add_source (&(CrunchMetricsSource){.render = render_executor,
                                                    .not_ready = executor_not_ready,
                                                    .status = crunch_scheduler_render_status,
                                                    .data = app->scheduler});
}

static void
log_ready (const CrunchConfig *config, gboolean nats)
{
  guint threads = crunch_config_effective_threads (config);

  /* with NATS, [executor] threads is the number of jobs in flight to the workers */
  if (nats)
    g_message ("crunchd %s ready: up to %u job(s) in flight to NATS workers, queue limit %u",
               PACKAGE_VERSION, threads, config->queue_limit);
  else
    g_message ("crunchd %s ready: %u worker thread(s), queue limit %u", PACKAGE_VERSION, threads,
               config->queue_limit);
}

/* [executor] backend = processes: every C function runs in crunchd-worker --stdio children
 * ($CRUNCHD_WORKER, or the installed one), which load the same configuration file. One is
 * started now: a worker that cannot start, or lacks a function, stops crunchd (exit 1). */
static gboolean
start_worker_pool (Crunchd *app, GError **error)
{
  const gchar *worker = g_getenv ("CRUNCHD_WORKER");
  const gchar *argv[] = {worker != NULL && *worker != '\0' ? worker : CRUNCHD_WORKER_PATH,
                         "--stdio", app->config->path ? "--config" : NULL, app->config->path, NULL};
  CrunchProcPoolSettings settings;

  crunch_procpool_settings_from_config (app->config, "crunchd-worker", (gchar **)argv, &settings);
  app->worker_pool = crunch_procpool_new (&settings);
  return crunch_procpool_host_functions (app->worker_pool, error);
}

/* [jobs] store = sqlite: the database, opened and checked. NULL without an error for memory. */
static CrunchStore *
open_store (const CrunchConfig *config, GError **error)
{
  g_autofree gchar *path = NULL;
  CrunchStore *store;

  if (g_str_equal (config->jobs_store, "nats")) {
    store =
        crunch_store_nats_open (&(CrunchNatsStoreSettings){config, config->jobs_bucket,
                                                           config->jobs_lease, config->jobs_ttl},
                                error);
    if (store != NULL)
      g_message ("jobs are kept in NATS JetStream bucket %s, shared with every front end on it",
                 config->jobs_bucket);
    return store;
  }
  if (!g_str_equal (config->jobs_store, "sqlite"))
    return NULL;
  path = crunch_config_jobs_database (config);
  store = crunch_store_sqlite_open (
      &(CrunchSqliteSettings){path, g_str_equal (config->jobs_synchronous, "full"),
                              (guint64)config->jobs_max_database_size << 20},
      error);
  if (store != NULL)
    g_message ("jobs are kept in %s (SQLite, synchronous = %s)", path, config->jobs_synchronous);
  return store;
}

/* Main loop: the jobs recovered after a crash are done; every thread works again. */
static gboolean
on_recovered (gpointer data)
{
  Crunchd *app = data;
  CrunchSchedulerSettings settings = scheduler_settings (app, app->config);

  if (app->stopping) /* they were interrupted, not done */
    return G_SOURCE_REMOVE;
  g_message ("jobs: the recovered jobs are done; back to %u worker thread(s)", settings.threads);
  crunch_scheduler_configure (app->scheduler, &settings);
  return G_SOURCE_REMOVE;
}

/* The jobs API over its store, rebuilt from it and resumed; FALSE (error set) if the store is
 * unusable. */
static gboolean
start_jobs (Crunchd *app, GError **error)
{
  CrunchStore *store = open_store (app->config, error);
  CrunchSchedulerSettings settings;

  if (store == NULL && *error != NULL)
    return FALSE;
  app->store = store;
  app->jobs = crunch_jobs_new (app->calls, app->config, store);
  if (!crunch_jobs_recover (app->jobs, error))
    return FALSE;
  if (one_at_a_time (app, app->config)) {
    g_message ("jobs: after a crash, one job at a time until the recovered jobs are done");
    settings = scheduler_settings (app, app->config);
    crunch_scheduler_configure (app->scheduler, &settings);
  }
  crunch_jobs_resume (app->jobs, on_recovered, app);
  return TRUE;
}

/* After the main loop: the server drained, in the order that answers everything once. */
static void
shut_down (Crunchd *app, gboolean nats)
{
  g_clear_pointer (&app->heartbeat, crunch_heartbeat_free);
  g_clear_handle_id (&app->shutdown_timer, g_source_remove);
  g_clear_handle_id (&app->grace_timer, g_source_remove);
  wire_metrics (app, FALSE);
  crunch_server_free (app->server);   /* every compute request has been answered */
  crunch_access_log_stop ();          /* every request is logged: write the last lines */
  crunch_jobs_cancel_all (app->jobs); /* async jobs have nobody waiting: stop them now */
  if (app->stuck > 0) {
    CrunchSchedulerStats stats;
    crunch_scheduler_get_stats (app->scheduler, &stats); /* a job may have ended since */
    if (stats.running > 0) {
      /* The scheduler cannot be freed under a thread that never returns: the job store is
       * closed (every write made, the stuck async jobs handed back to run again), nothing else
       * is touched, and the process ends here. */
      crunch_jobs_close_store (app->jobs);
      g_warning ("stopped, leaving %u job(s) on %u thread(s)", stats.running, stats.busy);
      _exit (EXIT_FAILURE);
    }
  }
  log_totals (app->scheduler);
  crunch_scheduler_free (app->scheduler);
  crunch_jobs_free (app->jobs);   /* after the scheduler: no ticket can be answered any more */
  crunch_calls_free (app->calls); /* every call has been freed */
  crunch_procpools_free_all ();   /* no call runs: stop the worker processes */
  g_main_loop_unref (app->loop);
  if (nats || g_str_equal (app->config->jobs_store, "nats"))
    crunch_nats_library_close ();
  g_message ("stopped");
}

static gint
run (Crunchd *app)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (GArray) fds = crunch_service_listen_fds ();
  CrunchSchedulerSettings settings = scheduler_settings (app, app->config);
  gboolean nats = g_str_equal (app->config->backend, "nats");

  /* one MHD daemon, with its own connection limit, per listening socket */
  raise_fd_limit ((guint64)app->config->max_connections *
                  (fds->len > 0 ? fds->len : g_strv_length (app->config->listen)));
  if (g_str_equal (app->config->backend, "processes") && !start_worker_pool (app, &error)) {
    g_critical ("[executor] backend = processes: %s", error->message);
    crunch_procpools_free_all ();
    return EXIT_FAILURE;
  }
  app->scheduler =
      crunch_scheduler_new_full (&settings, nats ? new_nats_executor : NULL, app, &error);
  if (app->scheduler == NULL) {
    g_critical ("%s", error->message);
    return EXIT_FAILURE;
  }
  app->calls = crunch_calls_new (app->scheduler);
  if (!start_jobs (app, &error)) {
    /* a database that cannot be read is a configuration problem: never start empty */
    g_critical ("[jobs] store = %s: %s", app->config->jobs_store, error->message);
    crunch_jobs_free (app->jobs);
    crunch_scheduler_free (app->scheduler);
    crunch_calls_free (app->calls);
    crunch_procpools_free_all ();
    return CRUNCH_EXIT_CONFIG;
  }
  app->server = crunch_server_new (app->scheduler, app->calls, app->config);
  crunch_server_set_jobs (app->server, app->jobs);
  crunch_server_set_tls (app->server, app->tls);
  crunch_server_set_auth (app->server, app->auth);
  /* workers computing here get timer ticks while the fast lane is in use, see timeslice.c */
  crunch_server_set_busy_hook (app->server, crunch_timeslice_busy);
  wire_metrics (app, TRUE);
  crunch_access_log_start (app->config->log_access_buffer, app->config->log_access_flush);
  /* Handlers first: once MHD serves, a client (or systemd) may signal us at any moment. */
  app->loop = g_main_loop_new (NULL, FALSE);
  crunch_service_on_signal (SIGHUP, on_reload, app);
  crunch_service_on_signal (SIGINT, on_terminate, app);
  crunch_service_on_signal (SIGTERM, on_terminate, app);
  if (!crunch_server_start (app->server, fds, &error)) {
    g_critical ("%s", error->message);
    wire_metrics (app, FALSE);
    crunch_server_free (app->server);
    crunch_access_log_stop ();
    crunch_jobs_cancel_all (app->jobs);
    crunch_scheduler_free (app->scheduler);
    crunch_jobs_free (app->jobs);
    crunch_calls_free (app->calls);
    g_main_loop_unref (app->loop);
    return EXIT_FAILURE;
  }
  log_ready (app->config, nats);
  crunch_service_notify ("READY=1");
  app->heartbeat = crunch_heartbeat_new (STATUS_INTERVAL_MS, status_text, app);

  g_main_loop_run (app->loop);
  shut_down (app, nats);
  return EXIT_SUCCESS;
}

/* --threads N: the same rule as [executor] threads, 0 to 1024; anything else is a usage error. */
static gboolean
parse_threads (const gchar *name, const gchar *value, gpointer data, GError **error)
{
  Crunchd *app = data;
  guint64 n;

  if (!g_ascii_string_to_unsigned (value, 10, 0, 1024, &n, NULL)) {
    g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
                 "%s %s: expected an integer from 0 to 1024 (0 = one per CPU)", name, value);
    return FALSE;
  }
  app->cli_threads = (gint)n;
  return TRUE;
}

/* Checks what GOption cannot: no stray arguments, and well-formed --listen addresses (a
 * command-line mistake is reported as one, exit 64, not as an error in the file). */
static gboolean
check_command_line (gint argc, gchar **argv, gchar **listen, GError **error)
{
  if (argc > 1) {
    g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_FAILED,
                 "unexpected argument '%s' (a configuration file is given with --config FILE)",
                 argv[1]);
    return FALSE;
  }
  for (gchar **l = listen; l != NULL && *l != NULL; l++) {
    struct sockaddr_storage addr;
    socklen_t len;
    g_autoptr (GError) local = NULL;
    if (!crunch_parse_listen_address (*l, &addr, &len, &local)) {
      g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE, "--listen %s", local->message);
      return FALSE;
    }
  }
  return TRUE;
}

/* --new-key NAME: the name is a group of the keys file. */
static gboolean
check_key_name (const gchar *name, GError **error)
{
  if (crunch_auth_name_valid (name))
    return TRUE;
  g_set_error (error, G_OPTION_ERROR, G_OPTION_ERROR_BAD_VALUE,
               "--new-key '%s': a key name is 1 to %d characters of A-Z, a-z, 0-9, '_', '.' and "
               "'-'",
               name, CRUNCH_AUTH_MAX_NAME);
  return FALSE;
}

/* --new-key NAME: the token goes to whoever calls; the keys file gets only its hash. */
static gint
print_new_key (const gchar *name)
{
  g_autoptr (GError) error = NULL;
  g_autofree gchar *token = crunch_auth_token_new (&error);
  g_autofree gchar *hash = NULL;

  if (token == NULL) {
    g_printerr ("crunchd: %s\n", error->message);
    return EXIT_FAILURE;
  }
  hash = crunch_auth_token_hash (token);
  g_print ("# The token of API key %s: give it to the client, who sends it as\n"
           "# \"Authorization: Bearer TOKEN\". It is not stored anywhere: keep it safe.\n"
           "token = %s\n"
           "# Add this group to the keys file ([auth] keys_file in crunchd.ini), then reload\n"
           "# crunchd (systemctl reload crunchd, or SIGHUP). See crunchd.ini(5) for limits.\n"
           "[%s]\nsha256 = %s\n",
           name, token, name, hash);
  return EXIT_SUCCESS;
}

typedef struct {
  gchar *config_path;
  gchar **listen;
  gchar *new_key;
  gboolean check_config, version;
} CommandLine;

/* GOption, then check_command_line(); on a usage error says so and returns FALSE (exit 64). */
static gboolean
parse_command_line (Crunchd *app, CommandLine *cl, gint *argc, gchar ***argv)
{
  const GOptionEntry entries[] = {
      {"config", 'c', 0, G_OPTION_ARG_FILENAME, &cl->config_path,
       "Configuration file (default " DEFAULT_CONFIG ")", "FILE"},
      {"listen", 'l', 0, G_OPTION_ARG_STRING_ARRAY, &cl->listen,
       "Listen on ADDR:PORT or [ADDR]:PORT (repeatable; overrides [server] listen)", "ADDR:PORT"},
      {"threads", 't', 0, G_OPTION_ARG_CALLBACK, parse_threads,
       "Worker threads, 0 to 1024 (0 = one per CPU; overrides [executor] threads)", "N"},
      {"check-config", 0, 0, G_OPTION_ARG_NONE, &cl->check_config,
       "Validate the configuration, print the effective settings and exit", NULL},
      {"new-key", 0, 0, G_OPTION_ARG_STRING, &cl->new_key,
       "Print a new random API key token and the group to add to the keys file, and exit", "NAME"},
      {"version", 'V', 0, G_OPTION_ARG_NONE, &cl->version, "Print the version and exit", NULL},
      {NULL}};
  g_autoptr (GOptionContext) context = g_option_context_new ("- HTTP server for slow computations");
  GOptionGroup *group = g_option_group_new (NULL, NULL, NULL, app, NULL);
  g_autoptr (GError) error = NULL;

  g_option_group_add_entries (group, entries);
  g_option_context_set_main_group (context, group);
  g_option_context_set_description (context, "Signals: SIGHUP reloads the configuration, "
                                             "SIGTERM/SIGINT drain and stop.\n"
                                             "Exit status: 0 ok, 1 runtime failure, 64 usage, "
                                             "78 configuration error.");
  if (!g_option_context_parse (context, argc, argv, &error) ||
      (!cl->version && !check_command_line (*argc, *argv, cl->listen, &error)) ||
      (cl->new_key != NULL && !check_key_name (cl->new_key, &error))) {
    g_printerr ("crunchd: %s\nTry 'crunchd --help'.\n", error->message);
    return FALSE;
  }
  return TRUE;
}

static void
free_files (Crunchd *app)
{
  crunch_tls_free (app->tls);
  crunch_auth_free (app->auth);
  crunch_config_free (app->config);
}

/* What start-up reads before serving: the configuration, the keys file, the certificate files,
 * and the plugins (program plugins are started). FALSE, with nothing left, on any error. */
static gboolean
load_files (Crunchd *app, GError **error)
{
  CrunchAuthSettings *auth = NULL;

  app->config = load_config (app, error);
  if (app->config == NULL)
    return FALSE;
  app->auth = crunch_auth_new ();
  if ((auth = crunch_auth_settings_load (app->config, error)) != NULL)
    crunch_auth_publish (app->auth, auth);
  if (auth != NULL && crunch_tls_new (app->config, &app->tls, error) &&
      crunch_functions_init (app->config, error))
    return TRUE;
  free_files (app);
  return FALSE;
}

int
main (int argc, char **argv)
{
  Crunchd app = {.cli_threads = -1};
  CommandLine cl = {0};
  g_autofree gchar *config_path = NULL, *new_key = NULL;
  g_auto (GStrv) listen = NULL;
  g_autoptr (GError) error = NULL;
  gboolean ok;
  gint status;

  /* a worker process that died leaves a pipe with no reader: writing to it must fail that
   * call (EPIPE), not kill us; children get the default back (child.c) */
  signal (SIGPIPE, SIG_IGN);
  crunch_service_confine_signals (); /* before any thread */
  setlocale (LC_ALL, "");
  ok = parse_command_line (&app, &cl, &argc, &argv);
  config_path = cl.config_path;
  listen = cl.listen;
  new_key = cl.new_key;
  if (!ok)
    return 64; /* EX_USAGE */
  if (cl.version) {
    g_print ("crunchd %s\n", PACKAGE_VERSION);
    return EXIT_SUCCESS;
  }
  if (new_key != NULL)
    return print_new_key (new_key);
  crunch_logging_init ();
  crunch_metrics_init ();
  app.config_explicit = config_path != NULL;
  app.config_path = config_path ? config_path : (gchar *)DEFAULT_CONFIG;
  app.cli_listen = listen;
  if (!load_files (&app, &error)) {
    g_printerr ("crunchd: %s\n", error->message);
    return CRUNCH_EXIT_CONFIG;
  }
  if (cl.check_config) {
    g_autofree gchar *text = crunch_config_to_string (app.config);
    g_autofree const gchar **names = crunch_functions_list ();
    g_autofree gchar *list = g_strjoinv (", ", (gchar **)names);
    g_print ("# %s: configuration OK%s\n# functions: %s\n%s", app.config_path,
             app.config->path == NULL ? " (no such file: the built-in defaults)" : "", list, text);
    crunch_procpools_free_all (); /* program plugins were started to read their hello */
    free_files (&app);
    return EXIT_SUCCESS;
  }
  apply_live_settings (&app, app.config);
  status = run (&app);
  free_files (&app); /* the daemons have stopped: no handshake runs, no request holds a key */
  return status;
}
