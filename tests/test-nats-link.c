/* test-nats-link.c - the NATS job protocol pieces that need no server. */
#include "executor-nats.h"
#include "nats-link.h"

static void
test_wire_status (void)
{
  for (guint i = 0; i < CRUNCH_WIRE_UNKNOWN; i++)
    g_assert_cmpint (crunch_wire_status_parse (crunch_wire_status_name (i)), ==, i);
  g_assert_cmpint (crunch_wire_status_parse ("nonsense"), ==, CRUNCH_WIRE_UNKNOWN);
  g_assert_cmpint (crunch_wire_status_parse (NULL), ==, CRUNCH_WIRE_UNKNOWN);
  g_assert_cmpstr (crunch_wire_status_name (CRUNCH_WIRE_UNKNOWN), ==, "unknown");
}

static void
test_args (void)
{
  g_autoptr (GVariant) args = g_variant_ref_sink (g_variant_new ("(us)", 42, "x"));
  g_autoptr (GVariant) copy = NULL;
  g_autoptr (GVariant) junk = NULL;
  g_autoptr (GError) error = NULL;
  const gchar *type;
  g_autoptr (GBytes) wire = crunch_nats_args_encode (args, &type);
  gsize size;
  gconstpointer data = g_bytes_get_data (wire, &size);

  g_assert_cmpstr (type, ==, "(us)");
  copy = crunch_nats_args_decode (type, data, size, &error);
  g_assert_no_error (error);
  g_assert_true (g_variant_equal (args, copy));

  /* a bad type is refused; a body that does not fit the type reads as its default value */
  g_assert_null (crunch_nats_args_decode ("(u", data, size, &error));
  g_assert_nonnull (error);
  g_clear_error (&error);
  g_assert_null (crunch_nats_args_decode (NULL, data, size, &error));
  g_clear_error (&error);
  junk = crunch_nats_args_decode ("u", "abcdefg", 7, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_variant_get_uint32 (junk), ==, 0);
}

typedef struct {
  GMutex lock;
  GCond cond;
  CrunchJob *done;
} Finished;

static void
on_finished (CrunchJob *job, gpointer data)
{
  Finished *f = data;

  g_mutex_lock (&f->lock);
  f->done = crunch_job_ref (job);
  g_cond_signal (&f->cond);
  g_mutex_unlock (&f->lock);
}

/* Without a NATS server: not ready, a job waits reconnect_grace and gets 503 (or runs locally),
 * and an executor can still be freed. */
static void
run_without_server (const gchar *fallback, CrunchJobOutcome expect)
{
  g_autoptr (CrunchConfig) config = crunch_config_new_default ();
  g_autoptr (GError) error = NULL;
  const CrunchFunction *fib = crunch_functions_lookup ("fib");
  g_autoptr (CrunchJob) job = crunch_job_new (fib, fib->parse (fib, "10", NULL));
  Finished f = {0};
  CrunchExecutor *ex;
  gint64 t0 = g_get_monotonic_time (), until = t0 + 10 * G_USEC_PER_SEC;

  g_strfreev (config->nats.servers);
  config->nats.servers = g_strsplit ("nats://127.0.0.1:1", ",", -1); /* nobody listens */
  config->nats.reconnect_grace = 0.05;
  g_free (config->nats.fallback);
  config->nats.fallback = g_strdup (fallback);
  g_mutex_init (&f.lock);
  g_cond_init (&f.cond);

  g_test_expect_message ("crunchd", G_LOG_LEVEL_WARNING, "nats: no server reachable at *");
  ex = crunch_nats_executor_new (config, &(CrunchExecutorSettings){.threads = 1}, on_finished, &f,
                                 &error);
  g_test_assert_expected_messages ();
  g_assert_no_error (error);
  g_assert_cmpstr (crunch_executor_not_ready (ex), ==, "no NATS connection");
  job->deadline_us = t0 + 5 * G_USEC_PER_SEC;
  crunch_executor_submit (ex, job);
  g_mutex_lock (&f.lock);
  while (f.done == NULL && g_cond_wait_until (&f.cond, &f.lock, until))
    ;
  g_mutex_unlock (&f.lock);
  g_assert_true (f.done == job);
  g_assert_cmpint (job->outcome, ==, expect);
  if (expect == CRUNCH_JOB_UNAVAILABLE)
    g_assert_cmpstr (job->error, ==, "no connection to NATS");
  else
    g_assert_cmpmem (g_bytes_get_data (job->result, NULL), 2, "55", 2);
  g_assert_cmpint (g_get_monotonic_time () - t0, >=, 50000); /* it waited for the grace */
  crunch_executor_free (ex);
  crunch_job_unref (f.done);
  g_mutex_clear (&f.lock);
  g_cond_clear (&f.cond);
}

static void
test_no_server (void)
{
  run_without_server ("none", CRUNCH_JOB_UNAVAILABLE);
  run_without_server ("local", CRUNCH_JOB_OK);
}

int
main (int argc, char **argv)
{
  gint status;

  g_autoptr (CrunchConfig) config = crunch_config_new_default ();

  g_test_init (&argc, &argv, NULL);
  g_assert_true (crunch_functions_init (config, NULL));
  g_test_add_func ("/nats-link/wire-status", test_wire_status);
  g_test_add_func ("/nats-link/args", test_args);
  g_test_add_func ("/executor-nats/no-server", test_no_server);
  status = g_test_run ();
  crunch_nats_library_close (); /* so that leak checkers see nats.c's memory freed */
  return status;
}
