/* test-scheduler.c - admission, FIFO dispatch, drain and cancellation, with a fake function. */
#include "scheduler.h"

/* "nap": sleeps args milliseconds in 1 ms steps, stopping early when cancelled. */
static GBytes *
nap_run (GVariant *args, const CrunchCancel *cancel, GError **error)
{
  for (guint i = 0; i < g_variant_get_uint32 (args); i++) {
    if (crunch_cancelled (cancel)) {
      g_set_error_literal (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "nap");
      return NULL;
    }
    g_usleep (1000);
  }
  return g_bytes_new_static ("done", 4);
}

static CrunchFunction nap = {.name = "nap", .run = nap_run, .content_type = "text/plain"};

typedef struct {
  GMutex lock;
  GCond cond;
  GPtrArray *finished; /* CrunchJob*, in completion order (a reference each) */
} Results;

static void
on_done (CrunchJob *job, gpointer data)
{
  Results *r = data;

  g_mutex_lock (&r->lock);
  g_ptr_array_add (r->finished, crunch_job_ref (job));
  g_cond_signal (&r->cond);
  g_mutex_unlock (&r->lock);
}

static void
wait_for (Results *r, guint count)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  g_mutex_lock (&r->lock);
  while (r->finished->len < count)
    g_assert_true (g_cond_wait_until (&r->cond, &r->lock, until));
  g_mutex_unlock (&r->lock);
}

static CrunchJob *
submit (CrunchScheduler *s, Results *r, guint ms)
{
  CrunchJob *job;

  g_assert_cmpint (crunch_scheduler_admit (s), ==, CRUNCH_ADMIT_OK);
  job = crunch_job_new (&nap, g_variant_new_uint32 (ms), "client", 0);
  job->done = on_done;
  job->done_data = r;
  crunch_scheduler_submit (s, job);
  return job;
}

static void
results_init (Results *r)
{
  g_mutex_init (&r->lock);
  g_cond_init (&r->cond);
  r->finished = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_job_unref);
}

static void
results_clear (Results *r)
{
  g_ptr_array_unref (r->finished);
  g_mutex_clear (&r->lock);
  g_cond_clear (&r->cond);
}

static void
test_fifo_and_bound (void)
{
  CrunchScheduler *s = crunch_scheduler_new (1, 3, 0);
  Results r;
  CrunchJob *jobs[4];
  CrunchSchedulerStats stats;

  results_init (&r);
  jobs[0] = submit (s, &r, 100); /* runs */
  g_usleep (20000);
  for (gint i = 1; i < 4; i++)
    jobs[i] = submit (s, &r, 1); /* queued: 3 = queue_limit */
  crunch_scheduler_get_stats (s, &stats);
  g_assert_cmpuint (stats.running, ==, 1);
  g_assert_cmpuint (stats.queued, ==, 3);
  g_assert_cmpint (crunch_scheduler_admit (s), ==, CRUNCH_ADMIT_QUEUE_FULL);
  wait_for (&r, 4);
  for (gint i = 0; i < 4; i++) {
    g_assert_true (r.finished->pdata[i] == jobs[i]); /* first in, first out */
    g_assert_cmpint (jobs[i]->outcome, ==, CRUNCH_JOB_OK);
    g_assert_cmpint (jobs[i]->t_started, >=, jobs[i]->t_submitted);
    crunch_job_unref (jobs[i]);
  }
  crunch_scheduler_free (s);
  results_clear (&r);
}

static void
test_drain_and_cancel (void)
{
  CrunchScheduler *s = crunch_scheduler_new (2, 10, 0);
  Results r;
  CrunchJob *jobs[5];

  results_init (&r);
  for (gint i = 0; i < 5; i++)
    jobs[i] = submit (s, &r, 60000);
  g_usleep (20000);
  crunch_scheduler_drain (s);
  wait_for (&r, 3); /* the queued three are answered at once */
  for (gint i = 2; i < 5; i++)
    g_assert_cmpint (jobs[i]->outcome, ==, CRUNCH_JOB_SHUTDOWN);
  g_assert_cmpint (crunch_scheduler_admit (s), ==, CRUNCH_ADMIT_DRAINING);
  crunch_scheduler_cancel_running (s, CRUNCH_JOB_TIMED_OUT);
  wait_for (&r, 5);
  for (gint i = 0; i < 2; i++)
    g_assert_cmpint (jobs[i]->outcome, ==, CRUNCH_JOB_TIMED_OUT);
  for (gint i = 0; i < 5; i++)
    crunch_job_unref (jobs[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* More threads on reload start queued jobs at once. */
static void
test_configure_threads (void)
{
  CrunchScheduler *s = crunch_scheduler_new (1, 10, 0);
  Results r;
  CrunchJob *jobs[3];
  CrunchSchedulerStats stats;

  results_init (&r);
  for (gint i = 0; i < 3; i++)
    jobs[i] = submit (s, &r, 300);
  g_usleep (20000);
  crunch_scheduler_get_stats (s, &stats);
  g_assert_cmpuint (stats.running, ==, 1);
  crunch_scheduler_configure (s, 3, 10, 0);
  g_usleep (50000);
  crunch_scheduler_get_stats (s, &stats);
  g_assert_cmpuint (stats.running, ==, 3);
  g_assert_cmpuint (stats.threads, ==, 3);
  wait_for (&r, 3);
  for (gint i = 0; i < 3; i++)
    crunch_job_unref (jobs[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/scheduler/fifo-and-bound", test_fifo_and_bound);
  g_test_add_func ("/scheduler/drain-and-cancel", test_drain_and_cancel);
  g_test_add_func ("/scheduler/configure-threads", test_configure_threads);
  return g_test_run ();
}
