/* metrics.c - counters, gauges and histograms, and their Prometheus text form.
 *
 * DESIGN
 * Writers are the MHD polling threads (a request ended, a rejection, a compute request's outcome)
 * and worker threads (a job ran). The hot path, crunch_metrics_request(), is three relaxed atomic
 * additions into static arrays indexed by route, method and status slot: no lock, no allocation, no
 * lookup beyond a 600-byte table. Histograms keep per-bucket (not cumulative) counts, so an
 * observation touches one bucket; the reader accumulates, and derives _count from the buckets so
 * that `le="+Inf"` and `_count` always agree even while writers run. Per-function slots are found
 * by pointer in an append-only array: readers and the lookup scan up to the published length
 * without a lock; only the first job of a function takes `lock` to append. The ring of recent jobs
 * (for the status page) is under `lock` too: one short lock per finished job, on a worker thread,
 * never on the polling thread. Gauges owned by other modules (queue, workers, connections), the
 * families an executor adds and readiness are read at scrape time from the sources main.c hands
 * over (CrunchMetricsSource); this module names none of them. */
#include "metrics.h"

#include <string.h>

#define MAX_ROUTES 32 /* the table has about a dozen; any beyond would share the last slot */
#define MAX_FUNCTIONS 64
#define N_METHODS 4 /* GET, HEAD, POST, other */
#define RECENT_JOBS 128
#define MAX_SOURCES 8

/* Seconds, as integer microseconds so an observation compares integers. */
static const gint64 bounds_us[] = {
    100,    250,    500,     1000,    2500,    5000,     10000,    25000,    50000,     100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000,
};
#define N_BUCKETS (G_N_ELEMENTS (bounds_us) + 1) /* + Inf */

typedef struct {
  guint64 buckets[N_BUCKETS];
  guint64 sum_us;
} Histogram;

/* HTTP statuses with their own series; anything else is counted as "other" (slot 0). */
static const guint status_codes[] = {0,   200, 204, 206, 304, 400, 403, 404, 405, 408,
                                     413, 414, 429, 431, 499, 500, 501, 503, 504};
#define N_STATUS G_N_ELEMENTS (status_codes)
static const guint8 status_slot[600] = {
    [200] = 1,  [204] = 2,  [206] = 3,  [304] = 4,  [400] = 5,  [403] = 6,
    [404] = 7,  [405] = 8,  [408] = 9,  [413] = 10, [414] = 11, [429] = 12,
    [431] = 13, [499] = 14, [500] = 15, [501] = 16, [503] = 17, [504] = 18,
};

typedef struct {
  guint64 requests[N_METHODS][N_STATUS];
  Histogram duration;
} RouteMetrics;

typedef struct {
  const CrunchFunction *fn;
  guint64 events[CRUNCH_JOB_EVENT_COUNT];
  Histogram queue_wait, run;
} FunctionMetrics;

static struct {
  gint enabled;
  gint64 start_time;
  RouteMetrics routes[MAX_ROUTES + 1]; /* the last one: unmatched requests */
  guint64 rejections[CRUNCH_REJECT_COUNT];
  gint suspended;

  GMutex lock;
  FunctionMetrics functions[MAX_FUNCTIONS + 1]; /* the last one: overflow */
  guint n_functions;                            /* published with release semantics */
  CrunchJobRecord recent[RECENT_JOBS];
  guint recent_next;

  CrunchMetricsSource sources[MAX_SOURCES];
  guint n_sources;
} m = {.enabled = TRUE};

static const gchar *const method_names[N_METHODS] = {"GET", "HEAD", "POST", "other"};
static const gchar *const event_names[CRUNCH_JOB_EVENT_COUNT] = {
    "submitted", "ok", "failed", "timed_out", "client_gone", "shutdown", "coalesced", "cache_hit",
};
static const struct {
  const gchar *reason;
  guint status;
} rejections[CRUNCH_REJECT_COUNT] = {
    {"queue_full", 503},     {"draining", 503},     {"client_limit", 429},
    {"body_too_large", 413}, {"store_full", 503},   {"store_client_share", 429},
    {"store_error", 503},    {"streams", 503},      {"streams_client", 429},
    {"deadline", 503},       {"decoder_full", 503},
};

void
crunch_metrics_init (void)
{
  m.start_time = g_get_real_time ();
}

void
crunch_metrics_set_enabled (gboolean enabled)
{
  g_atomic_int_set (&m.enabled, enabled);
}

gboolean
crunch_metrics_enabled (void)
{
  return g_atomic_int_get (&m.enabled);
}

static inline void
add (guint64 *counter, guint64 n)
{
  __atomic_fetch_add (counter, n, __ATOMIC_RELAXED);
}

static inline guint64
get (const guint64 *counter)
{
  return __atomic_load_n (counter, __ATOMIC_RELAXED);
}

static void
observe (Histogram *h, gint64 us)
{
  gsize i = 0;

  us = MAX (us, 0);
  while (i < G_N_ELEMENTS (bounds_us) && us > bounds_us[i])
    i++;
  add (&h->buckets[i], 1);
  add (&h->sum_us, (guint64)us);
}

/* ---- hooks ---- */

static guint
method_index (const gchar *method)
{
  switch (crunch_method_parse (method)) {
  case CRUNCH_METHOD_GET:
    return 0;
  case CRUNCH_METHOD_HEAD:
    return 1;
  case CRUNCH_METHOD_POST:
    return 2;
  default:
    return 3;
  }
}

static guint
route_index (const CrunchRoute *route)
{
  return route != NULL ? MIN (crunch_routes_label_index (route), MAX_ROUTES - 1) : MAX_ROUTES;
}

void
crunch_metrics_request (const CrunchRoute *route, const gchar *method, guint status,
                        gint64 duration_us)
{
  RouteMetrics *r;

  if (!g_atomic_int_get (&m.enabled))
    return;
  r = &m.routes[route_index (route)];
  add (&r->requests[method_index (method)][status < 600 ? status_slot[status] : 0], 1);
  observe (&r->duration, duration_us);
}

void
crunch_metrics_rejection (CrunchRejection reason)
{
  g_return_if_fail (reason < CRUNCH_REJECT_COUNT);
  if (g_atomic_int_get (&m.enabled))
    add (&m.rejections[reason], 1);
}

void
crunch_metrics_suspended_add (gint delta)
{
  g_atomic_int_add (&m.suspended, delta);
}

static FunctionMetrics *
function_slot (const CrunchFunction *fn)
{
  guint n = __atomic_load_n (&m.n_functions, __ATOMIC_ACQUIRE);
  FunctionMetrics *slot = NULL;

  for (guint i = 0; i < n; i++) {
    if (m.functions[i].fn == fn)
      return &m.functions[i];
  }
  g_mutex_lock (&m.lock);
  n = m.n_functions;
  for (guint i = 0; i < n && slot == NULL; i++) {
    if (m.functions[i].fn == fn)
      slot = &m.functions[i];
  }
  if (slot == NULL && n < MAX_FUNCTIONS) {
    slot = &m.functions[n];
    slot->fn = fn;
    __atomic_store_n (&m.n_functions, n + 1, __ATOMIC_RELEASE);
  }
  g_mutex_unlock (&m.lock);
  return slot != NULL ? slot : &m.functions[MAX_FUNCTIONS];
}

void
crunch_metrics_job_event (const CrunchFunction *fn, CrunchJobEvent event)
{
  g_return_if_fail (event < CRUNCH_JOB_EVENT_COUNT);
  if (g_atomic_int_get (&m.enabled))
    add (&function_slot (fn)->events[event], 1);
}

static CrunchJobEvent
outcome_event (CrunchJobOutcome outcome)
{
  switch (outcome) {
  case CRUNCH_JOB_OK:
    return CRUNCH_JOB_EVENT_COMPLETED;
  case CRUNCH_JOB_TIMED_OUT:
    return CRUNCH_JOB_EVENT_TIMED_OUT;
  case CRUNCH_JOB_CLIENT_GONE:
    return CRUNCH_JOB_EVENT_CLIENT_GONE;
  case CRUNCH_JOB_SHUTDOWN:
    return CRUNCH_JOB_EVENT_SHUTDOWN;
  case CRUNCH_JOB_FAILED:
  case CRUNCH_JOB_PENDING:
  default:
    return CRUNCH_JOB_EVENT_FAILED;
  }
}

/* "30" for the tuple (30,): arguments as a person would write them. */
static gchar *
print_args (GVariant *args)
{
  GString *out = g_string_new (NULL);

  if (!g_variant_is_container (args) || !g_variant_type_is_tuple (g_variant_get_type (args))) {
    g_variant_print_string (args, out, FALSE);
    return g_string_free (out, FALSE);
  }
  for (gsize i = 0; i < g_variant_n_children (args); i++) {
    g_autoptr (GVariant) child = g_variant_get_child_value (args, i);
    if (i > 0)
      g_string_append (out, ", ");
    g_variant_print_string (child, out, FALSE);
  }
  return g_string_free (out, FALSE);
}

static void
record_recent (const CrunchJob *job)
{
  g_autofree gchar *args = print_args (job->args);
  CrunchJobRecord *rec;

  g_mutex_lock (&m.lock);
  rec = &m.recent[m.recent_next];
  m.recent_next = (m.recent_next + 1) % RECENT_JOBS;
  g_free (rec->function);
  g_free (rec->args);
  rec->function = g_strdup (job->fn->name);
  rec->args = g_steal_pointer (&args);
  rec->outcome = crunch_job_outcome_name (job->outcome);
  rec->run_seconds = (job->t_finished - job->t_started) / 1e6;
  rec->finished = g_get_real_time ();
  g_mutex_unlock (&m.lock);
}

void
crunch_metrics_job_answered (const CrunchFunction *fn, CrunchJobOutcome outcome,
                             gint64 queue_wait_us)
{
  FunctionMetrics *slot;

  if (!g_atomic_int_get (&m.enabled))
    return;
  slot = function_slot (fn);
  add (&slot->events[outcome_event (outcome)], 1);
  if (queue_wait_us >= 0)
    observe (&slot->queue_wait, queue_wait_us);
}

void
crunch_metrics_job_ran (const CrunchJob *job)
{
  if (!g_atomic_int_get (&m.enabled) || job->t_started == 0)
    return;
  observe (&function_slot (job->fn)->run, job->t_finished - job->t_started);
  record_recent (job);
}

/* ---- readers ---- */

void
crunch_metrics_add_source (const CrunchMetricsSource *source)
{
  g_mutex_lock (&m.lock);
  g_warn_if_fail (m.n_sources < MAX_SOURCES);
  if (m.n_sources < MAX_SOURCES)
    m.sources[m.n_sources++] = *source;
  g_mutex_unlock (&m.lock);
}

void
crunch_metrics_remove_source (gpointer data)
{
  guint kept = 0;

  g_mutex_lock (&m.lock);
  for (guint i = 0; i < m.n_sources; i++)
    if (m.sources[i].data != data)
      m.sources[kept++] = m.sources[i];
  m.n_sources = kept;
  g_mutex_unlock (&m.lock);
}

/* A copy of the sources, to call without the lock. */
static guint
sources (CrunchMetricsSource *copy)
{
  guint n;

  g_mutex_lock (&m.lock);
  n = m.n_sources;
  memcpy (copy, m.sources, n * sizeof *copy);
  g_mutex_unlock (&m.lock);
  return n;
}

void
crunch_metrics_get_gauges (CrunchGauges *gauges)
{
  CrunchMetricsSource copy[MAX_SOURCES];
  guint n = sources (copy);

  memset (gauges, 0, sizeof *gauges);
  for (guint i = 0; i < n; i++)
    if (copy[i].gauges != NULL)
      copy[i].gauges (gauges, copy[i].data);
}

const gchar *
crunch_metrics_not_ready (void)
{
  CrunchMetricsSource copy[MAX_SOURCES];
  guint n = sources (copy);

  for (guint i = 0; i < n; i++) {
    const gchar *why = copy[i].not_ready != NULL ? copy[i].not_ready (copy[i].data) : NULL;
    if (why != NULL)
      return why;
  }
  return NULL;
}

void
crunch_metrics_status_members (GString *out)
{
  CrunchMetricsSource copy[MAX_SOURCES];
  guint n = sources (copy);

  for (guint i = 0; i < n; i++)
    if (copy[i].status != NULL)
      copy[i].status (out, copy[i].data);
}

gchar **
crunch_metrics_summaries (void)
{
  CrunchMetricsSource copy[MAX_SOURCES];
  guint n = sources (copy);
  GPtrArray *lines = g_ptr_array_new ();

  for (guint i = 0; i < n; i++) {
    gchar *line = copy[i].summary != NULL ? copy[i].summary () : NULL;
    if (line != NULL)
      g_ptr_array_add (lines, line);
  }
  g_ptr_array_add (lines, NULL);
  return (gchar **)g_ptr_array_free (lines, FALSE);
}

guint
crunch_metrics_suspended (void)
{
  return (guint)MAX (g_atomic_int_get (&m.suspended), 0);
}

gint64
crunch_metrics_start_time (void)
{
  return m.start_time;
}

guint
crunch_metrics_n_routes (void)
{
  return MIN (crunch_routes_n_labels (), MAX_ROUTES) + 1;
}

/* Index n_routes - 1 is the "none" pseudo-route. */
static RouteMetrics *
route_at (guint i)
{
  return i + 1 == crunch_metrics_n_routes () ? &m.routes[MAX_ROUTES] : &m.routes[i];
}

const gchar *
crunch_metrics_route_label (guint i)
{
  return i + 1 == crunch_metrics_n_routes () ? "none" : crunch_routes_label (i);
}

guint64
crunch_metrics_route_requests (guint i)
{
  RouteMetrics *r = route_at (i);
  guint64 total = 0;

  for (guint mi = 0; mi < N_METHODS; mi++) {
    for (guint s = 0; s < N_STATUS; s++)
      total += get (&r->requests[mi][s]);
  }
  return total;
}

guint64
crunch_metrics_requests_total (void)
{
  guint64 total = 0;

  for (guint i = 0; i < crunch_metrics_n_routes (); i++)
    total += crunch_metrics_route_requests (i);
  return total;
}

guint64
crunch_metrics_jobs_total (CrunchJobEvent event)
{
  guint n = __atomic_load_n (&m.n_functions, __ATOMIC_ACQUIRE);
  guint64 total = get (&m.functions[MAX_FUNCTIONS].events[event]);

  for (guint i = 0; i < n; i++)
    total += get (&m.functions[i].events[event]);
  return total;
}

gdouble
crunch_metrics_route_quantile (guint i, gdouble q)
{
  const Histogram *h = &route_at (i)->duration;
  guint64 counts[N_BUCKETS], total = 0, seen = 0;

  for (gsize b = 0; b < N_BUCKETS; b++)
    total += counts[b] = get (&h->buckets[b]);
  if (total == 0)
    return 0;
  for (gsize b = 0; b < N_BUCKETS; b++) {
    gdouble rank = q * (gdouble)total, lo, hi;
    if ((gdouble)(seen + counts[b]) < rank || counts[b] == 0) {
      seen += counts[b];
      continue;
    }
    /* linear within the bucket, as Prometheus' histogram_quantile() does */
    lo = b == 0 ? 0 : bounds_us[b - 1] / 1e6;
    hi = b < G_N_ELEMENTS (bounds_us) ? bounds_us[b] / 1e6 : lo;
    return lo + (hi - lo) * (rank - (gdouble)seen) / (gdouble)counts[b];
  }
  return bounds_us[G_N_ELEMENTS (bounds_us) - 1] / 1e6;
}

static gint
by_run_time_desc (gconstpointer a, gconstpointer b)
{
  const CrunchJobRecord *x = *(CrunchJobRecord *const *)a, *y = *(CrunchJobRecord *const *)b;

  return (x->run_seconds < y->run_seconds) - (x->run_seconds > y->run_seconds);
}

static void
record_free (gpointer data)
{
  CrunchJobRecord *rec = data;

  g_free (rec->function);
  g_free (rec->args);
  g_free (rec);
}

GPtrArray *
crunch_metrics_slowest_jobs (guint max)
{
  GPtrArray *out = g_ptr_array_new_with_free_func (record_free);

  g_mutex_lock (&m.lock);
  for (guint i = 0; i < RECENT_JOBS; i++) {
    CrunchJobRecord *rec;
    if (m.recent[i].function == NULL)
      continue;
    rec = g_memdup2 (&m.recent[i], sizeof *rec);
    rec->function = g_strdup (rec->function);
    rec->args = g_strdup (rec->args);
    g_ptr_array_add (out, rec);
  }
  g_mutex_unlock (&m.lock);
  g_ptr_array_sort (out, by_run_time_desc);
  if (out->len > max)
    g_ptr_array_set_size (out, max);
  return out;
}

/* ---- Prometheus text format 0.0.4 ---- */

/* A label value: backslash, double quote and newline escaped. */
static void
append_label (GString *out, const gchar *name, const gchar *value)
{
  g_string_append_printf (out, "%s=\"", name);
  for (const gchar *c = value; *c != '\0'; c++) {
    if (*c == '\\' || *c == '"')
      g_string_append_c (out, '\\');
    if (*c == '\n')
      g_string_append (out, "\\n");
    else
      g_string_append_c (out, *c);
  }
  g_string_append_c (out, '"');
}

static void
header (GString *out, const gchar *name, const gchar *type, const gchar *help)
{
  g_string_append_printf (out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* format: "%g" for bucket bounds ("0.0001"), "%.6f" for sums and times (microseconds exact) */
static void
append_seconds (GString *out, const gchar *format, gdouble seconds)
{
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

  g_string_append (out, g_ascii_formatd (buf, sizeof buf, format, seconds));
}

/* One histogram's series; `labels` is 'name="value"' text (may be empty). */
static void
render_histogram (GString *out, const gchar *name, const gchar *labels, const Histogram *h)
{
  const gchar *sep = *labels != '\0' ? "," : "";
  guint64 cumulative = 0;

  for (gsize b = 0; b < N_BUCKETS; b++) {
    cumulative += get (&h->buckets[b]);
    g_string_append_printf (out, "%s_bucket{%s%sle=\"", name, labels, sep);
    if (b < G_N_ELEMENTS (bounds_us))
      append_seconds (out, "%g", bounds_us[b] / 1e6);
    else
      g_string_append (out, "+Inf");
    g_string_append_printf (out, "\"} %" G_GUINT64_FORMAT "\n", cumulative);
  }
  g_string_append_printf (out, "%s_sum{%s} ", name, labels);
  append_seconds (out, "%.6f", get (&h->sum_us) / 1e6);
  g_string_append_printf (out, "\n%s_count{%s} %" G_GUINT64_FORMAT "\n", name, labels, cumulative);
}

static void
render_requests (GString *out)
{
  header (out, "crunchd_http_requests_total", "counter",
          "HTTP requests answered, by route pattern, method and status.");
  for (guint i = 0; i < crunch_metrics_n_routes (); i++) {
    RouteMetrics *r = route_at (i);
    for (guint mi = 0; mi < N_METHODS; mi++) {
      for (guint s = 0; s < N_STATUS; s++) {
        guint64 n = get (&r->requests[mi][s]);
        if (n == 0)
          continue;
        g_string_append (out, "crunchd_http_requests_total{");
        append_label (out, "route", crunch_metrics_route_label (i));
        append_label (g_string_append_c (out, ','), "method", method_names[mi]);
        if (s == 0)
          g_string_append (out, ",status=\"other\"");
        else
          g_string_append_printf (out, ",status=\"%u\"", status_codes[s]);
        g_string_append_printf (out, "} %" G_GUINT64_FORMAT "\n", n);
      }
    }
  }
  header (out, "crunchd_http_request_duration_seconds", "histogram",
          "Time from the first byte of a request to the end of its answer, by route pattern.");
  for (guint i = 0; i < crunch_metrics_n_routes (); i++) {
    g_autoptr (GString) labels = g_string_new (NULL);
    append_label (labels, "route", crunch_metrics_route_label (i));
    render_histogram (out, "crunchd_http_request_duration_seconds", labels->str,
                      &route_at (i)->duration);
  }
}

static void
render_jobs (GString *out)
{
  guint n = __atomic_load_n (&m.n_functions, __ATOMIC_ACQUIRE);
  static const struct {
    const gchar *name, *help;
    CrunchJobEvent first, last;
  } families[] = {
      {"crunchd_jobs_submitted_total", "Compute requests admitted, by function.",
       CRUNCH_JOB_EVENT_SUBMITTED, CRUNCH_JOB_EVENT_SUBMITTED},
      {"crunchd_jobs_finished_total",
       "Compute requests answered, by function and outcome (ok, failed, timed_out, client_gone, "
       "shutdown).",
       CRUNCH_JOB_EVENT_COMPLETED, CRUNCH_JOB_EVENT_SHUTDOWN},
      {"crunchd_jobs_coalesced_total",
       "Requests that shared an identical job already under way, by function.",
       CRUNCH_JOB_EVENT_COALESCED, CRUNCH_JOB_EVENT_COALESCED},
      {"crunchd_job_cache_hits_total", "Requests answered from a stored result, by function.",
       CRUNCH_JOB_EVENT_CACHE_HIT, CRUNCH_JOB_EVENT_CACHE_HIT},
  };

  for (gsize f = 0; f < G_N_ELEMENTS (families); f++) {
    header (out, families[f].name, "counter", families[f].help);
    for (guint i = 0; i < n; i++) {
      for (CrunchJobEvent e = families[f].first; e <= families[f].last; e++) {
        g_string_append_printf (out, "%s{", families[f].name);
        append_label (out, "function", m.functions[i].fn->name);
        if (families[f].first != families[f].last)
          append_label (g_string_append_c (out, ','), "outcome", event_names[e]);
        g_string_append_printf (out, "} %" G_GUINT64_FORMAT "\n", get (&m.functions[i].events[e]));
      }
    }
  }
  header (out, "crunchd_job_queue_wait_seconds", "histogram",
          "Time compute requests waited for their job to start, by function.");
  for (guint i = 0; i < n; i++) {
    g_autoptr (GString) labels = g_string_new (NULL);
    append_label (labels, "function", m.functions[i].fn->name);
    render_histogram (out, "crunchd_job_queue_wait_seconds", labels->str,
                      &m.functions[i].queue_wait);
  }
  header (out, "crunchd_job_run_seconds", "histogram",
          "Time computations ran on a worker (once per job, shared or not), by function.");
  for (guint i = 0; i < n; i++) {
    g_autoptr (GString) labels = g_string_new (NULL);
    append_label (labels, "function", m.functions[i].fn->name);
    render_histogram (out, "crunchd_job_run_seconds", labels->str, &m.functions[i].run);
  }
}

static void
gauge (GString *out, const gchar *name, const gchar *help, guint64 value)
{
  header (out, name, "gauge", help);
  g_string_append_printf (out, "%s %" G_GUINT64_FORMAT "\n", name, value);
}

static void
render_gauges (GString *out)
{
  CrunchGauges g;

  crunch_metrics_get_gauges (&g);
  gauge (out, "crunchd_jobs_queued", "Jobs waiting for a worker.", g.jobs_queued);
  gauge (out, "crunchd_jobs_running", "Jobs running on a worker.", g.jobs_running);
  gauge (out, "crunchd_queue_limit", "Jobs that may wait before new ones are refused.",
         g.queue_limit);
  gauge (out, "crunchd_workers_busy", "Worker threads running a job.", g.workers_busy);
  gauge (out, "crunchd_workers", "Worker threads.", g.workers_total);
  gauge (out, "crunchd_connections_open", "Open HTTP connections, parked ones included.",
         g.connections_open);
  gauge (out, "crunchd_connections_suspended",
         "HTTP connections parked while their job is queued or running.",
         crunch_metrics_suspended ());
  gauge (out, "crunchd_streams_open", "Event streams open (GET /jobs/ID/events).", g.streams_open);
  gauge (out, "crunchd_bodies_decoding",
         "Large request bodies waiting for a decoder thread or being decoded.", g.bodies_decoding);
  gauge (out, "crunchd_draining", "1 while the server is shutting down.", g.draining ? 1 : 0);
  header (out, "crunchd_connections_closed_total", "counter",
          "Connections crunchd closed before they completed a request: past [server] "
          "request_timeout, or the oldest waiting one when the connection table was nearly full.");
  g_string_append_printf (out,
                          "crunchd_connections_closed_total{reason=\"request_timeout\"} "
                          "%" G_GUINT64_FORMAT "\n"
                          "crunchd_connections_closed_total{reason=\"made_room\"} "
                          "%" G_GUINT64_FORMAT "\n",
                          g.connections_timed_out, g.connections_made_room);
}

static void
render_process (GString *out)
{
  header (out, "crunchd_rejections_total", "counter",
          "Requests refused before any work, by reason and HTTP status.");
  for (guint r = 0; r < CRUNCH_REJECT_COUNT; r++)
    g_string_append_printf (
        out, "crunchd_rejections_total{reason=\"%s\",status=\"%u\"} %" G_GUINT64_FORMAT "\n",
        rejections[r].reason, rejections[r].status, get (&m.rejections[r]));
  header (out, "crunchd_build_info", "gauge", "Always 1; the labels describe the build.");
  g_string_append (out, "crunchd_build_info{");
  append_label (out, "version", PACKAGE_VERSION);
  g_string_append (out, "} 1\n");
  header (out, "process_start_time_seconds", "gauge",
          "Start time of the process since the Unix epoch, in seconds.");
  g_string_append (out, "process_start_time_seconds ");
  append_seconds (out, "%.6f", m.start_time / 1e6);
  g_string_append_c (out, '\n');
}

/* Families the sources contribute (an executor's own figures). */
static void
render_sources (GString *out)
{
  CrunchMetricsSource copy[MAX_SOURCES];
  guint n = sources (copy);

  for (guint i = 0; i < n; i++)
    if (copy[i].render != NULL)
      copy[i].render (out, copy[i].data);
}

GBytes *
crunch_metrics_render (void)
{
  GString *out = g_string_sized_new (16384);

  render_requests (out);
  render_jobs (out);
  render_gauges (out);
  render_process (out);
  render_sources (out);
  return g_string_free_to_bytes (out);
}
