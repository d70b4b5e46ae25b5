/* worker-main.c - crunchd-worker: command line, start-up, signals, exit codes.
 *
 * The main thread runs the GMainLoop: SIGTERM/SIGINT stop taking jobs, let running ones finish
 * for [worker] shutdown_timeout seconds, then cancel them (their front ends retry elsewhere),
 * and [executor] kill_grace + 1 s later ends without those that ignore it; it also pings the
 * systemd watchdog. Jobs run on the worker's own threads (worker.c). */
#include <locale.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "executor-nats.h"
#include "functions.h"
#include "logging.h"
#include "procpool.h"
#include "service.h"
#include "stdio-worker.h"
#include "worker.h"

#define DEFAULT_CONFIG SYSCONFDIR "/crunchd/crunchd.ini"

typedef struct {
  GMainLoop *loop;
  CrunchConfig *config;
  CrunchWorker *worker;
  gboolean stopping;
  guint shutdown_timer;
  guint grace_timer;
} App;

static gboolean
on_stopped (gpointer data)
{
  App *app = data;

  g_main_loop_quit (app->loop);
  return G_SOURCE_REMOVE;
}

/* [executor] kill_grace (and a second) after the cancel, jobs still running run functions that
 * ignore it, and a thread cannot be killed: the worker ends without them (status 1) instead of
 * waiting for ever; their front ends miss the heartbeats and send the jobs elsewhere. */
static gboolean
on_cancel_ignored (gpointer data)
{
  App *app = data;
  guint running = crunch_worker_running (app->worker);

  app->grace_timer = 0;
  if (running == 0)
    return G_SOURCE_REMOVE;
  g_warning ("%u job(s) still running %g s after their cancel ([executor] kill_grace + 1 s): "
             "their function ignores it, and a thread cannot be stopped; stopping without them",
             running, crunch_config_abandon_ms (app->config) / 1000.0);
  crunch_worker_abandon (app->worker);
  running = crunch_worker_running (app->worker); /* a job may have ended since */
  if (running == 0) {
    g_message ("crunchd-worker %s stopped: its last job ended meanwhile",
               crunch_worker_id (app->worker));
    _exit (EXIT_SUCCESS);
  }
  g_warning ("crunchd-worker %s stopped, leaving %u job(s) on their threads",
             crunch_worker_id (app->worker), running);
  _exit (EXIT_FAILURE);
}

static gboolean
on_shutdown_timeout (gpointer data)
{
  App *app = data;

  app->shutdown_timer = 0;
  g_message ("shutdown_timeout reached: cancelling %u running job(s)",
             crunch_worker_running (app->worker));
  crunch_procpools_stopping (); /* a process still starting is not waited for */
  crunch_worker_cancel_running (app->worker);
  app->grace_timer = g_timeout_add (crunch_config_abandon_ms (app->config), on_cancel_ignored, app);
  return G_SOURCE_REMOVE;
}

static gboolean
on_terminate (gpointer data)
{
  App *app = data;

  if (app->stopping)
    return G_SOURCE_CONTINUE;
  app->stopping = TRUE;
  crunch_service_notify ("STOPPING=1");
  g_message ("stopping: %u job(s) running", crunch_worker_running (app->worker));
  crunch_worker_stop (app->worker, on_stopped, app);
  app->shutdown_timer = g_timeout_add ((guint)(app->config->worker.shutdown_timeout * 1000),
                                       on_shutdown_timeout, app);
  return G_SOURCE_CONTINUE;
}

static gboolean
on_hangup (gpointer data)
{
  g_message ("SIGHUP: crunchd-worker does not reload; restart it to apply new settings");
  return G_SOURCE_CONTINUE;
}

/* systemd STATUS= line */
static gchar *
status_text (gpointer data)
{
  App *app = data;

  return g_strdup_printf ("%u job(s) running%s", crunch_worker_running (app->worker),
                          app->stopping ? ", stopping" : "");
}

static gint
run (App *app, const gchar *id, guint threads)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchHeartbeat) heartbeat = NULL;

  /* Caught from here on and handled once the loop runs: crunch_worker_new() says "ready", and a
   * SIGTERM right after that must drain, not kill (it did, under TSan in the tests). */
  crunch_service_on_signal (SIGINT, on_terminate, app);
  crunch_service_on_signal (SIGTERM, on_terminate, app);
  crunch_service_on_signal (SIGHUP, on_hangup, app);
  app->worker = crunch_worker_new (app->config, threads, id, &error);
  if (app->worker == NULL) {
    g_critical ("%s", error->message);
    return EXIT_FAILURE;
  }
  app->loop = g_main_loop_new (NULL, FALSE);
  heartbeat = crunch_heartbeat_new (1000, status_text, app);
  crunch_service_notify ("READY=1");
  g_main_loop_run (app->loop);
  g_clear_pointer (&heartbeat, crunch_heartbeat_free);
  g_clear_handle_id (&app->shutdown_timer, g_source_remove);
  g_clear_handle_id (&app->grace_timer, g_source_remove);
  crunch_worker_free (app->worker);
  crunch_procpools_free_all (); /* program plugins' processes */
  g_main_loop_unref (app->loop);
  crunch_nats_library_close ();
  return EXIT_SUCCESS;
}

typedef struct {
  gchar *config_path, *id, *threads_arg;
  guint64 threads;
  gboolean check_config, version, stdio;
} Options;

static void
options_clear (Options *o)
{
  g_free (o->config_path);
  g_free (o->id);
  g_free (o->threads_arg);
}

/* The command line: -1 to go on, or the status to exit with. */
static gint
parse_options (gint *argc, gchar ***argv, Options *o)
{
  const GOptionEntry entries[] = {
      {"config", 'c', 0, G_OPTION_ARG_FILENAME, &o->config_path,
       "Configuration file (default " DEFAULT_CONFIG ")", "FILE"},
      {"threads", 't', 0, G_OPTION_ARG_STRING, &o->threads_arg,
       "Jobs run at once, 0 to 1024 (0 = one per CPU; overrides [worker] threads)", "N"},
      {"id", 0, 0, G_OPTION_ARG_STRING, &o->id,
       "Name in replies and logs (overrides [worker] id; default HOSTNAME:PID)", "ID"},
      {"stdio", 0, 0, G_OPTION_ARG_NONE, &o->stdio,
       "Serve one crunchd process pool on stdin/stdout (the worker protocol) instead of NATS",
       NULL},
      {"check-config", 0, 0, G_OPTION_ARG_NONE, &o->check_config,
       "Validate the configuration, print the effective settings and exit", NULL},
      {"version", 'V', 0, G_OPTION_ARG_NONE, &o->version, "Print the version and exit", NULL},
      {NULL}};
  g_autoptr (GOptionContext) context =
      g_option_context_new ("- run crunchd compute jobs taken from NATS");
  g_autoptr (GError) error = NULL;

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_set_description (context, "Signals: SIGTERM/SIGINT finish running jobs and "
                                             "stop.\nExit status: 0 ok, 1 runtime failure, 64 "
                                             "usage, 78 configuration error.");
  if (!g_option_context_parse (context, argc, argv, &error)) {
    g_printerr ("crunchd-worker: %s\nTry 'crunchd-worker --help'.\n", error->message);
    return 64;
  }
  if (o->version) {
    g_print ("crunchd-worker %s\n", PACKAGE_VERSION);
    return EXIT_SUCCESS;
  }
  if (*argc > 1) {
    g_printerr ("crunchd-worker: unexpected argument '%s' (a configuration file is given with "
                "--config FILE)\nTry 'crunchd-worker --help'.\n",
                (*argv)[1]);
    return 64;
  }
  /* the rule of [worker] threads: 0 to 1024, nothing negative */
  if (o->threads_arg != NULL &&
      !g_ascii_string_to_unsigned (o->threads_arg, 10, 0, 1024, &o->threads, NULL)) {
    g_printerr ("crunchd-worker: --threads %s: expected an integer from 0 to 1024 (0 = one per "
                "CPU)\nTry 'crunchd-worker --help'.\n",
                o->threads_arg);
    return 64;
  }
  return -1;
}

/* The configuration with the command line's overrides, and the plugins loaded: -1 to go on,
 * or the status to exit with. */
static gint
configure (App *app, Options *o)
{
  const gchar *path = o->config_path ? o->config_path : DEFAULT_CONFIG;
  g_autoptr (GError) error = NULL;

  if (o->config_path == NULL && !g_file_test (path, G_FILE_TEST_EXISTS))
    app->config = crunch_config_new_default ();
  else
    app->config = crunch_config_load (path, &error);
  if (app->config == NULL) {
    g_printerr ("crunchd-worker: %s\n", error->message);
    return CRUNCH_EXIT_CONFIG;
  }
  if (o->check_config) {
    g_autofree gchar *text = crunch_config_to_string (app->config);
    g_print ("# %s: configuration OK\n%s", path, text);
    return EXIT_SUCCESS;
  }
  if (o->threads_arg != NULL)
    app->config->worker.threads = (guint)o->threads;
  if (o->id == NULL && *app->config->worker.id != '\0')
    o->id = g_strdup (app->config->worker.id);
  if (o->id == NULL)
    o->id = g_strdup_printf ("%s:%d", g_get_host_name (), (gint)getpid ());
  crunch_logging_set_level (app->config->log_level);
  /* the same plugins as the server; under --stdio, C plugins only (crunchd runs programs) */
  if (!crunch_functions_init_full (app->config, !o->stdio, &error)) {
    g_printerr ("crunchd-worker: %s\n", error->message);
    return CRUNCH_EXIT_CONFIG;
  }
  return -1;
}

int
main (int argc, char **argv)
{
  App app = {0};
  Options options = {0};
  gint status;

  /* a worker process that died leaves a pipe with no reader: writing to it must fail that
   * call (EPIPE), not kill us; children get the default back (child.c) */
  signal (SIGPIPE, SIG_IGN);
  setlocale (LC_ALL, "");
  status = parse_options (&argc, &argv, &options);
  if (status < 0 && !options.stdio)
    crunch_service_confine_signals (); /* before any thread (--stdio: signals keep their default) */
  if (status < 0) {
    crunch_logging_init ();
    status = configure (&app, &options);
  }
  if (status < 0 && options.stdio)
    status = crunch_stdio_worker_run ();
  if (status < 0)
    status = run (&app, options.id,
                  app.config->worker.threads ? app.config->worker.threads
                                             : (guint)g_get_num_processors ());
  g_clear_pointer (&app.config, crunch_config_free);
  options_clear (&options);
  return status;
}
