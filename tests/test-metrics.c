/* test-metrics.c - counters, histograms, quantiles and the Prometheus text they render. */
#include <string.h>

#include "metrics.h"
#include "status.h"

static const CrunchRoute *
route (const gchar *path)
{
  CrunchRouteMatch m;

  g_assert_cmpint (crunch_routes_match ("GET", path, &m), ==, CRUNCH_ROUTE_FOUND);
  return m.route;
}

static gchar *
render (void)
{
  g_autoptr (GBytes) bytes = crunch_metrics_render ();

  return g_strndup (g_bytes_get_data (bytes, NULL), g_bytes_get_size (bytes));
}

#define assert_has(text, line) assert_line (text, line, __LINE__)
static void
assert_line (const gchar *text, const gchar *line, gint where)
{
  g_autofree gchar *needle = g_strconcat ("\n", line, "\n", NULL);

  if (strstr (text, needle) == NULL)
    g_error ("line %d: no line '%s' in:\n%s", where, line, text);
}

static void
test_requests (void)
{
  g_autofree gchar *text = NULL;

  for (gint i = 0; i < 3; i++)
    crunch_metrics_request (route ("/fast"), "GET", 200, 50);
  crunch_metrics_request (route ("/fast"), "BREW", 405, 2000000);
  crunch_metrics_request (NULL, "GET", 404, 80);
  crunch_metrics_request (route ("/fast"), "HEAD", 299, 10); /* no slot of its own */
  text = render ();
  assert_has (text, "crunchd_http_requests_total{route=\"/fast\",method=\"GET\",status=\"200\"} 3");
  assert_has (text,
              "crunchd_http_requests_total{route=\"/fast\",method=\"other\",status=\"405\"} 1");
  assert_has (text,
              "crunchd_http_requests_total{route=\"/fast\",method=\"HEAD\",status=\"other\"} 1");
  assert_has (text, "crunchd_http_requests_total{route=\"none\",method=\"GET\",status=\"404\"} 1");
  /* buckets are cumulative and _count equals the +Inf bucket */
  assert_has (text,
              "crunchd_http_request_duration_seconds_bucket{route=\"/fast\",le=\"0.0001\"} 4");
  assert_has (text, "crunchd_http_request_duration_seconds_bucket{route=\"/fast\",le=\"1\"} 4");
  assert_has (text, "crunchd_http_request_duration_seconds_bucket{route=\"/fast\",le=\"2.5\"} 5");
  assert_has (text, "crunchd_http_request_duration_seconds_bucket{route=\"/fast\",le=\"+Inf\"} 5");
  assert_has (text, "crunchd_http_request_duration_seconds_count{route=\"/fast\"} 5");
  assert_has (text, "crunchd_http_request_duration_seconds_sum{route=\"/fast\"} 2.000160");
  assert_has (text, "# TYPE crunchd_http_request_duration_seconds histogram");
  g_assert_cmpuint (crunch_metrics_requests_total (), ==, 6);
}

static void
test_quantile (void)
{
  const CrunchRoute *r = route ("/healthz");
  guint i = crunch_routes_label_index (r);

  g_assert_cmpfloat (crunch_metrics_route_quantile (i, 0.5), ==, 0);
  for (gint n = 0; n < 100; n++)
    crunch_metrics_request (r, "GET", 200, 300); /* all in the (250 us, 500 us] bucket */
  g_assert_cmpfloat_with_epsilon (crunch_metrics_route_quantile (i, 0.5), 0.000375, 1e-9);
  g_assert_cmpfloat_with_epsilon (crunch_metrics_route_quantile (i, 0.99), 0.0004975, 1e-9);
  g_assert_cmpuint (crunch_metrics_route_requests (i), ==, 100);
  g_assert_cmpstr (crunch_metrics_route_label (i), ==, "/healthz");
  g_assert_cmpstr (crunch_metrics_route_label (crunch_metrics_n_routes () - 1), ==, "none");
}

static void
test_jobs (void)
{
  static CrunchFunction fib = {.name = "fib"};
  g_autoptr (CrunchJob) job = crunch_job_new (&fib, g_variant_new ("(xs)", (gint64)5, "x"));
  g_autoptr (GPtrArray) slowest = NULL;
  g_autofree gchar *text = NULL;
  const CrunchJobRecord *rec;

  /* three requests: one ran after 2 ms in the queue, one shared its job, one left early */
  for (gint i = 0; i < 3; i++)
    crunch_metrics_job_event (job->fn, CRUNCH_JOB_EVENT_SUBMITTED);
  crunch_metrics_job_event (job->fn, CRUNCH_JOB_EVENT_COALESCED);
  crunch_metrics_job_answered (job->fn, CRUNCH_JOB_OK, 2000);
  crunch_metrics_job_answered (job->fn, CRUNCH_JOB_OK, 0);
  crunch_metrics_job_answered (job->fn, CRUNCH_JOB_CLIENT_GONE, -1);
  crunch_metrics_job_event (job->fn, CRUNCH_JOB_EVENT_CACHE_HIT);
  job->t_started = 3000;
  job->t_finished = 10000; /* ran 7 ms */
  job->outcome = CRUNCH_JOB_OK;
  crunch_metrics_job_ran (job);
  text = render ();
  assert_has (text, "crunchd_jobs_submitted_total{function=\"fib\"} 3");
  assert_has (text, "crunchd_jobs_finished_total{function=\"fib\",outcome=\"ok\"} 2");
  assert_has (text, "crunchd_jobs_finished_total{function=\"fib\",outcome=\"client_gone\"} 1");
  assert_has (text, "crunchd_jobs_finished_total{function=\"fib\",outcome=\"timed_out\"} 0");
  assert_has (text, "crunchd_jobs_coalesced_total{function=\"fib\"} 1");
  assert_has (text, "crunchd_job_cache_hits_total{function=\"fib\"} 1");
  assert_has (text, "crunchd_job_queue_wait_seconds_bucket{function=\"fib\",le=\"0.0001\"} 1");
  assert_has (text, "crunchd_job_queue_wait_seconds_bucket{function=\"fib\",le=\"0.0025\"} 2");
  assert_has (text, "crunchd_job_queue_wait_seconds_count{function=\"fib\"} 2");
  assert_has (text, "crunchd_job_run_seconds_bucket{function=\"fib\",le=\"0.005\"} 0");
  assert_has (text, "crunchd_job_run_seconds_bucket{function=\"fib\",le=\"0.01\"} 1");
  assert_has (text, "crunchd_job_run_seconds_sum{function=\"fib\"} 0.007000");
  g_assert_cmpuint (crunch_metrics_jobs_total (CRUNCH_JOB_EVENT_COMPLETED), ==, 2);

  slowest = crunch_metrics_slowest_jobs (1);
  g_assert_cmpuint (slowest->len, ==, 1);
  rec = slowest->pdata[0];
  g_assert_cmpstr (rec->function, ==, "fib");
  g_assert_cmpstr (rec->args, ==, "5, 'x'");
  g_assert_cmpstr (rec->outcome, ==, "ok");
  g_assert_cmpfloat_with_epsilon (rec->run_seconds, 0.007, 1e-9);
}

static void
fake_gauges (CrunchGauges *g, gpointer data)
{
  g->jobs_queued = 7;
  g->workers_total = GPOINTER_TO_UINT (data);
  g->draining = TRUE;
}

static void
test_gauges_and_rejections (void)
{
  g_autofree gchar *text = NULL;

  crunch_metrics_add_source (
      &(CrunchMetricsSource){.gauges = fake_gauges, .data = GUINT_TO_POINTER (4)});
  crunch_metrics_rejection (CRUNCH_REJECT_QUEUE_FULL);
  crunch_metrics_rejection (CRUNCH_REJECT_QUEUE_FULL);
  crunch_metrics_rejection (CRUNCH_REJECT_CLIENT_LIMIT);
  crunch_metrics_suspended_add (3);
  crunch_metrics_suspended_add (-1);
  text = render ();
  crunch_metrics_remove_source (GUINT_TO_POINTER (4));
  assert_has (text, "crunchd_jobs_queued 7");
  assert_has (text, "crunchd_workers 4");
  assert_has (text, "crunchd_draining 1");
  assert_has (text, "crunchd_connections_suspended 2");
  assert_has (text, "crunchd_rejections_total{reason=\"queue_full\",status=\"503\"} 2");
  assert_has (text, "crunchd_rejections_total{reason=\"client_limit\",status=\"429\"} 1");
  assert_has (text, "crunchd_rejections_total{reason=\"body_too_large\",status=\"413\"} 0");
  assert_has (text, "crunchd_build_info{version=\"" PACKAGE_VERSION "\"} 1");
  assert_has (text, "# TYPE process_start_time_seconds gauge");
}

static void
test_disabled (void)
{
  guint64 before = crunch_metrics_requests_total ();

  crunch_metrics_set_enabled (FALSE);
  crunch_metrics_request (route ("/fast"), "GET", 200, 50);
  crunch_metrics_set_enabled (TRUE);
  g_assert_cmpuint (crunch_metrics_requests_total (), ==, before);
}

/* Every ops row of the route table names an endpoint status.c serves. */
static void
test_ops_routes (void)
{
  guint ops = 0;

  for (guint i = 0; i < crunch_routes_count (); i++) {
    const CrunchRoute *r = crunch_routes_nth (i);
    if (r->lane != CRUNCH_LANE_OPS)
      continue;
    g_assert_nonnull (crunch_status_handler (r->name));
    ops++;
  }
  g_assert_cmpuint (ops, ==, 6);
  g_assert_null (crunch_status_handler ("nope"));
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  crunch_metrics_init ();
  g_test_add_func ("/metrics/requests", test_requests);
  g_test_add_func ("/metrics/quantile", test_quantile);
  g_test_add_func ("/metrics/jobs", test_jobs);
  g_test_add_func ("/metrics/gauges-and-rejections", test_gauges_and_rejections);
  g_test_add_func ("/metrics/disabled", test_disabled);
  g_test_add_func ("/metrics/ops-routes", test_ops_routes);
  return g_test_run ();
}
