/* test-events.c - watching a job: progress from the function (plugin ABI 2, worker processes,
 * Python), GET /jobs/ID/events and streamed calls (Accept: text/event-stream), against the real
 * crunchd. */
#include <curl/curl.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include "harness.h"

/* crunchd with the example plugins; `executor` and `jobs` are more lines of those groups. */
static TestServer *
start_with (const gchar *executor, const gchar *jobs)
{
  g_autofree gchar *ini = g_strdup_printf (
      "[executor]\nthreads = 2\n%s[plugins]\ndir = %s\nload = mandelbrot, spin\n[jobs]\n"
      "store = memory\n%s",
      executor, g_getenv ("CRUNCHD_PLUGINS"), jobs);

  return test_server_start (ini, NULL);
}

static TestServer *
start (const gchar *jobs)
{
  return start_with ("", jobs);
}

static void
delete_job (TestServer *s, const gchar *id)
{
  g_autofree gchar *path = g_strconcat ("/jobs/", id, NULL);
  g_autofree gchar *url = test_server_url (s, path);

  test_reply_free (test_http ("DELETE", url, NULL));
}

/* ---- a Server-Sent Events client ---- */

typedef struct {
  gchar *raw_id; /* "JOB.BOOT.SEQ", what an EventSource sends back as Last-Event-ID */
  guint64 id;    /* SEQ */
  gchar *job;    /* JOB */
  gchar *event;
  JsonObject *data;
} Event;

static void
event_free (gpointer data)
{
  Event *e = data;

  g_free (e->raw_id);
  g_free (e->job);
  g_free (e->event);
  if (e->data != NULL)
    json_object_unref (e->data);
  g_free (e);
}

typedef struct {
  GString *body;
  guint stop_after;     /* hang up after this many events (0: read to the end) */
  const gchar *stop_at; /* or once the body contains this */
} Reading;

static guint
count_events (const gchar *body)
{
  guint n = 0;

  for (const gchar *p = body; (p = strstr (p, "\nevent: ")) != NULL; p++)
    n++;
  return n;
}

static size_t
on_bytes (char *ptr, size_t size, size_t n, void *data)
{
  Reading *r = data;
  gsize before = r->body->len;

  g_string_append_len (r->body, ptr, (gssize)(size * n));
  /* hang up once a whole event past the mark has arrived */
  if (r->stop_after != 0 && g_str_has_suffix (r->body->str, "\n\n") &&
      count_events (r->body->str) >= r->stop_after)
    return 0;
  if (r->stop_at != NULL && strstr (r->body->str + MAX (before, 64) - 64, r->stop_at) != NULL)
    return 0;
  return size * n;
}

/* GET `path` as an EventSource would (with Last-Event-ID `last` unless NULL); reads until the
 * server ends the stream, `stop_after` events have come, or `seconds` pass. The raw body. */
static gchar *
read_stream (TestServer *s, const gchar *path, const gchar *last, guint stop_after, gdouble seconds,
             long *status)
{
  g_autofree gchar *url = test_server_url (s, path);
  g_autofree gchar *resume = last ? g_strdup_printf ("Last-Event-ID: %s", last) : NULL;
  Reading r = {g_string_new (NULL), stop_after, NULL};
  struct curl_slist *headers = curl_slist_append (NULL, "Accept: text/event-stream");
  CURL *curl = curl_easy_init ();

  if (resume != NULL)
    headers = curl_slist_append (headers, resume);
  curl_easy_setopt (curl, CURLOPT_URL, url);
  curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, on_bytes);
  curl_easy_setopt (curl, CURLOPT_WRITEDATA, &r);
  curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long)(seconds * 1000 * TEST_TIME_SCALE));
  curl_easy_perform (curl);
  curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, status);
  curl_easy_cleanup (curl);
  curl_slist_free_all (headers);
  return g_string_free (r.body, FALSE);
}

/* The events of a body (comments skipped), in order. */
static GPtrArray *
parse_events (const gchar *body)
{
  GPtrArray *events = g_ptr_array_new_with_free_func (event_free);
  g_auto (GStrv) blocks = g_strsplit (body, "\n\n", -1);

  for (guint i = 0; blocks[i] != NULL; i++) {
    g_auto (GStrv) lines = g_strsplit (blocks[i], "\n", -1);
    Event *e = g_new0 (Event, 1);
    for (guint j = 0; lines[j] != NULL; j++) {
      if (g_str_has_prefix (lines[j], "id: ")) {
        g_auto (GStrv) parts = g_strsplit (lines[j] + 4, ".", -1);
        g_assert_cmpuint (g_strv_length (parts), ==, 3);
        g_assert_cmpuint (strlen (parts[0]), ==, 32);
        e->raw_id = g_strdup (lines[j] + 4);
        e->job = g_strdup (parts[0]);
        e->id = g_ascii_strtoull (parts[2], NULL, 10);
      } else if (g_str_has_prefix (lines[j], "event: "))
        e->event = g_strdup (lines[j] + 7);
      else if (g_str_has_prefix (lines[j], "data: ")) {
        g_autoptr (JsonParser) parser = json_parser_new ();
        g_assert_true (json_parser_load_from_data (parser, lines[j] + 6, -1, NULL));
        e->data = json_object_ref (json_node_get_object (json_parser_get_root (parser)));
      }
    }
    if (e->event == NULL) { /* a comment, or the empty tail */
      event_free (e);
      continue;
    }
    g_assert_nonnull (e->data);
    g_ptr_array_add (events, e);
  }
  return events;
}

static Event *
last_event (GPtrArray *events)
{
  g_assert_cmpuint (events->len, >, 0);
  return events->pdata[events->len - 1];
}

/* POST /jobs; the job's id. */
static gchar *
submit (TestServer *s, const gchar *body)
{
  g_autofree gchar *url = test_server_url (s, "/jobs");
  g_autoptr (TestReply) r = test_http_body ("POST", url, NULL, body);

  g_assert_cmpint (r->status, ==, 202);
  return g_strdup ((const gchar *)g_hash_table_lookup (r->headers, "location") + 6);
}

static JsonObject *
get_json (TestServer *s, const gchar *path)
{
  g_autofree gchar *url = test_server_url (s, path);
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autoptr (JsonParser) parser = json_parser_new ();

  g_assert_cmpint (r->status, ==, 200);
  g_assert_true (json_parser_load_from_data (parser, r->body, (gssize)r->body_len, NULL));
  return json_object_ref (json_node_get_object (json_parser_get_root (parser)));
}

static gdouble
metric (TestServer *s, const gchar *line_start)
{
  g_autofree gchar *url = test_server_url (s, "/metrics");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);
  g_autofree gchar *needle = g_strconcat ("\n", line_start, " ", NULL);
  const gchar *at = strstr (r->body, needle);

  g_assert_nonnull (at);
  return g_ascii_strtod (at + strlen (needle), NULL);
}

/* Waits (bounded) until GET /jobs/ID says `state`. */
static void
wait_state (TestServer *s, const gchar *id, const gchar *state)
{
  g_autofree gchar *path = g_strconcat ("/jobs/", id, NULL);
  gint64 until = g_get_monotonic_time () + (gint64)(5 * G_USEC_PER_SEC * TEST_TIME_SCALE);

  while (g_get_monotonic_time () < until) {
    g_autoptr (JsonObject) o = get_json (s, path);
    if (g_str_equal (json_object_get_string_member (o, "state"), state))
      return;
    g_usleep (20000);
  }
  g_error ("job %s never became %s", id, state);
}

/* Every event's id is higher than the one before; progress fractions never decrease and stay in
 * [0, 1]; the stream ends with one "outcome" event. Returns the number of progress events. */
static guint
check_order (GPtrArray *events, const gchar *state)
{
  gdouble fraction = 0;
  guint64 id = 0;
  guint progress = 0;

  for (guint i = 0; i < events->len; i++) {
    Event *e = events->pdata[i];
    g_assert_cmpuint (e->id, >, id);
    id = e->id;
    if (g_str_equal (e->event, "progress")) {
      gdouble f = json_object_get_double_member (e->data, "fraction");
      g_assert_cmpfloat (f, >=, fraction);
      g_assert_cmpfloat (f, <=, 1.0);
      fraction = f;
      progress++;
    } else if (g_str_equal (e->event, "outcome")) {
      g_assert_cmpuint (i, ==, events->len - 1);
    } else {
      g_assert_cmpstr (e->event, ==, "state");
    }
  }
  g_assert_cmpstr (last_event (events)->event, ==, "outcome");
  g_assert_cmpstr (json_object_get_string_member (last_event (events)->data, "state"), ==, state);
  return progress;
}

/* ---- the tests ---- */

/* A C plugin's reports (ABI 2) arrive in order, at most a few a second, then the outcome with
 * the result URL (and the text inline); GET /jobs/ID carries the latest report meanwhile. */
static void
test_progress_order (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 1.5, \"grain\": 10}}");
  g_autofree gchar *job = g_strconcat ("/jobs/", id, NULL);
  g_autofree gchar *path = g_strconcat (job, "/events", NULL);
  g_autofree gchar *body = NULL;
  g_autoptr (GPtrArray) events = NULL;
  g_autoptr (JsonObject) running = NULL;
  g_autofree gchar *result_url = g_strconcat (job, "/result", NULL);
  JsonObject *outcome;
  guint progress;
  long status;

  wait_state (s, id, "running");
  g_usleep (400000);
  running = get_json (s, job);
  /* the first report comes 10 ms into the job; TSan on a busy machine made it later than 0.4 s */
  for (gint64 until = g_get_monotonic_time () + G_USEC_PER_SEC;
       !json_object_has_member (running, "progress") && g_get_monotonic_time () < until;) {
    g_usleep (20000);
    json_object_unref (running);
    running = get_json (s, job);
  }
  g_assert_true (json_object_has_member (running, "progress"));
  body = read_stream (s, path, NULL, 0, 10, &status);
  g_assert_cmpint (status, ==, 200);
  events = parse_events (body);
  progress = check_order (events, "done");
  /* 150 reports made (one per 10 ms grain), at most 5 a second kept: about 7 */
  g_assert_cmpuint (progress, >=, 3);
  g_assert_cmpuint (progress, <=, 10);
  outcome = last_event (events)->data;
  g_assert_cmpstr (json_object_get_string_member (outcome, "result_url"), ==, result_url);
  g_assert_true (g_str_has_prefix (json_object_get_string_member (outcome, "result"), "spun 1.5"));
}

/* A watcher that comes back with Last-Event-ID gets what it missed (never an older event), and
 * once it has the outcome, 204: an EventSource stops reconnecting. */
static void
test_resume (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 1.2, \"grain\": 10}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *first = NULL, *rest = NULL, *again = NULL, *last_id = NULL;
  g_autoptr (GPtrArray) before = NULL, after = NULL;
  long status;

  first = read_stream (s, path, NULL, 3, 10, &status); /* hangs up after three events */
  before = parse_events (first);
  g_assert_cmpuint (before->len, ==, 3);
  last_id = g_strdup (last_event (before)->raw_id);
  g_usleep (500000); /* it moves on meanwhile */
  rest = read_stream (s, path, last_id, 0, 10, &status);
  g_assert_cmpint (status, ==, 200);
  after = parse_events (rest);
  g_assert_cmpuint (((Event *)after->pdata[0])->id, >, last_event (before)->id);
  check_order (after, "done");
  g_free (last_id);
  last_id = g_strdup (last_event (after)->raw_id);
  again = read_stream (s, path, last_id, 0, 5, &status);
  g_assert_cmpint (status, ==, 204);
  g_assert_cmpstr (again, ==, "");
  /* an id of another process (before a restart) starts over: the outcome again */
  g_free (again);
  g_free (last_id);
  last_id = g_strconcat (id, ".00000000.999999", NULL);
  again = read_stream (s, path, last_id, 0, 5, &status);
  g_assert_cmpint (status, ==, 200);
  g_assert_nonnull (strstr (again, "event: outcome"));
}

/* A watcher that hangs up is dropped at once; the async job runs on. A streamed call nobody
 * watches any more is cancelled, as a synchronous call is when its client leaves. */
static void
test_hangup (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 10}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *body = NULL, *sync = NULL, *sync_id = NULL;
  g_autoptr (GPtrArray) events = NULL;
  gint64 until;
  long status;

  body = read_stream (s, path, NULL, 2, 10, &status);
  sync = read_stream (s, "/fn/spin?seconds=30&grain=10", NULL, 2, 10, &status);
  g_assert_cmpint (status, ==, 200);
  events = parse_events (sync);
  sync_id = g_strdup (json_object_get_string_member (((Event *)events->pdata[0])->data, "id"));
  wait_state (s, sync_id, "cancelled");
  until = g_get_monotonic_time () + (gint64)(5 * G_USEC_PER_SEC * TEST_TIME_SCALE);
  while (metric (s, "crunchd_streams_open") != 0 && g_get_monotonic_time () < until)
    g_usleep (20000);
  g_assert_cmpfloat (metric (s, "crunchd_streams_open"), ==, 0);
  wait_state (s, id, "running"); /* nobody asked the async one to stop */
  delete_job (s, id);
}

/* Opens a stream on a raw connection and reads its status line; the connection stays open. */
static GSocketConnection *
open_stream (TestServer *s, const gchar *path)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autofree gchar *request =
      g_strdup_printf ("GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n", path);
  GSocketConnection *c = g_socket_client_connect_to_host (client, "127.0.0.1", s->port, NULL, NULL);
  gchar head[64] = {0};

  g_assert_nonnull (c);
  g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (c)), request,
                             strlen (request), NULL, NULL, NULL);
  g_input_stream_read (g_io_stream_get_input_stream (G_IO_STREAM (c)), head, sizeof head - 1, NULL,
                       NULL);
  g_assert_true (g_str_has_prefix (head, "HTTP/1.1 200"));
  return c;
}

/* Streams open at once are capped by [jobs] max_streams: beyond it 503 with Retry-After, for
 * job events and streamed calls alike; a closed one frees its place. */
static void
test_cap (void)
{
  g_autoptr (TestServer) s = start ("max_streams = 2\n");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 10}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *url = test_server_url (s, path);
  g_autofree gchar *fn = test_server_url (s, "/fn/spin?seconds=1");
  GSocketConnection *open[2];
  g_autoptr (TestReply) over = NULL, over_fn = NULL, again = NULL;
  const gchar *accept[] = {"Accept: text/event-stream", NULL};

  for (guint i = 0; i < 2; i++)
    open[i] = open_stream (s, path);
  over = test_http ("GET", url, accept);
  g_assert_cmpint (over->status, ==, 503);
  g_assert_cmpstr (over->body, ==, "too many event streams open ([jobs] max_streams)\n");
  g_assert_nonnull (g_hash_table_lookup (over->headers, "retry-after"));
  over_fn = test_http ("GET", fn, accept);
  g_assert_cmpint (over_fn->status, ==, 503);
  g_io_stream_close (G_IO_STREAM (open[0]), NULL, NULL);
  g_object_unref (open[0]);
  for (gint64 until = g_get_monotonic_time () + (gint64)(5 * G_USEC_PER_SEC * TEST_TIME_SCALE);
       metric (s, "crunchd_streams_open") > 1 && g_get_monotonic_time () < until;)
    g_usleep (20000);
  g_free (read_stream (s, path, NULL, 1, 5, &(long){0}));
  g_assert_cmpfloat (metric (s, "crunchd_rejections_total{reason=\"streams\",status=\"503\"}"), ==,
                     2);
  g_object_unref (open[1]);
  delete_job (s, id);
}

/* Streams park connections too: they get what the connection budget leaves beside queue_limit +
 * threads, so that a small max_connections is not taken whole by the default 256 streams and
 * /fast still gets in. Here 3/4 of 16 = 12, less 8 + 1: 3 streams. */
static void
test_cap_in_budget (void)
{
  g_autofree gchar *ini = g_strdup_printf (
      "[server]\nmax_connections = 16\n[executor]\nthreads = 1\nqueue_limit = 8\n[plugins]\n"
      "dir = %s\nload = spin\n[jobs]\nstore = memory\n",
      g_getenv ("CRUNCHD_PLUGINS"));
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 10}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *url = test_server_url (s, path);
  g_autofree gchar *fast = test_server_url (s, "/fast");
  GSocketConnection *open[3];
  g_autoptr (TestReply) over = NULL, ok = NULL;
  g_autofree gchar *log = NULL;
  const gchar *accept[] = {"Accept: text/event-stream", NULL};

  for (guint i = 0; i < G_N_ELEMENTS (open); i++)
    open[i] = open_stream (s, path);
  over = test_http ("GET", url, accept);
  g_assert_cmpint (over->status, ==, 503);
  g_assert_cmpstr (over->body, ==, "too many event streams open ([jobs] max_streams)\n");
  ok = test_http ("GET", fast, NULL);
  g_assert_cmpint (ok->status, ==, 200);
  log = test_server_log (s);
  g_assert_nonnull (strstr (log, "[jobs] max_streams = 256: 3 at most, what 3/4 of [server] "
                                 "max_connections (16) leaves beside queue_limit + threads"));
  for (guint i = 0; i < G_N_ELEMENTS (open); i++)
    g_object_unref (open[i]);
  delete_job (s, id);
}

/* One client holds at most [jobs] max_streams_per_client streams: beyond it 429, for it alone. */
static void
test_client_share (void)
{
  g_autoptr (TestServer) s = start ("max_streams_per_client = 1\n");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 10}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *url = test_server_url (s, path);
  GSocketConnection *held = open_stream (s, path);
  const gchar *accept[] = {"Accept: text/event-stream", NULL};
  g_autoptr (TestReply) over = test_http ("GET", url, accept);

  g_assert_cmpint (over->status, ==, 429);
  g_assert_cmpstr (over->body, ==,
                   "this client has its share of event streams open ([jobs] "
                   "max_streams_per_client): close one first\n");
  g_assert_nonnull (g_hash_table_lookup (over->headers, "retry-after"));
  g_assert_cmpfloat (
      metric (s, "crunchd_rejections_total{reason=\"streams_client\",status=\"429\"}"), ==, 1);
  g_object_unref (held);
  delete_job (s, id);
}

/* A stream with nothing to say still writes a comment every [jobs] stream_heartbeat. */
static void
test_heartbeat (void)
{
  g_autoptr (TestServer) s = start ("stream_heartbeat = 0.2\n");
  g_autofree gchar *id =
      submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 30, \"grain\": 500}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *body = NULL;
  long status;

  body = read_stream (s, path, NULL, 0, 1.0, &status); /* cut off after a second */
  g_assert_cmpint (status, ==, 200);
  g_assert_nonnull (strstr (body, "\n\n: heartbeat\n\n: heartbeat\n\n"));
  delete_job (s, id);
}

/* A streamed call: progress, then the outcome; a text result inline, bytes by URL only. */
static void
test_streamed_call (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *text = NULL, *png = NULL;
  g_autoptr (GPtrArray) a = NULL, b = NULL;
  const gchar *url;
  long status;

  text = read_stream (s, "/fn/spin?seconds=0.6&grain=10", NULL, 0, 10, &status);
  g_assert_cmpint (status, ==, 200);
  a = parse_events (text);
  g_assert_cmpuint (check_order (a, "done"), >=, 1);
  g_assert_true (g_str_has_prefix (json_object_get_string_member (last_event (a)->data, "result"),
                                   "spun 0.6"));
  png = read_stream (s, "/fn/mandelbrot?size=512&iter=2000", NULL, 0, 20, &status);
  b = parse_events (png);
  g_assert_cmpuint (check_order (b, "done"), >=, 1);
  g_assert_false (json_object_has_member (last_event (b)->data, "result"));
  url = json_object_get_string_member (last_event (b)->data, "result_url");
  {
    g_autofree gchar *full = test_server_url (s, url);
    g_autoptr (TestReply) r = test_http ("GET", full, NULL);
    g_assert_cmpint (r->status, ==, 200);
    g_assert_cmpstr (g_hash_table_lookup (r->headers, "content-type"), ==, "image/png");
  }
}

/* An EventSource that comes back on a streamed call (Last-Event-ID on /fn/NAME) watches the
 * same job again: the function does not run a second time. */
static void
test_streamed_reconnect (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *first = NULL, *back = NULL, *gone = NULL;
  g_autoptr (GPtrArray) a = NULL, b = NULL;
  const gchar *call = "/fn/spin?seconds=0.8&grain=10";
  long status;

  first = read_stream (s, call, NULL, 2, 10, &status); /* hangs up after two events... */
  a = parse_events (first);
  back = read_stream (s, call, last_event (a)->raw_id, 0, 10, &status); /* ...and comes back */
  g_assert_cmpint (status, ==, 200);
  b = parse_events (back);
  g_assert_cmpstr (((Event *)b->pdata[0])->job, ==, last_event (a)->job);
  g_assert_cmpstr (last_event (b)->event, ==, "outcome");
  g_assert_cmpfloat (metric (s, "crunchd_jobs_submitted_total{function=\"spin\"}"), ==, 1);
  gone = read_stream (s, call, "0123456789abcdef0123456789abcdef.00000000.1", 0, 5, &status);
  g_assert_cmpint (status, ==, 404);
}

/* Across a restart (a job store on disk), a watcher that comes back with an id of the old
 * process gets the outcome, not 204: event numbers start again in every process. */
static void
test_resume_after_restart (void)
{
  g_autofree gchar *dir = g_dir_make_tmp ("crunchd-events-XXXXXX", NULL);
  g_autofree gchar *base = g_strdup_printf ("[jobs]\nstore = sqlite\ndatabase = %s/jobs.db\n", dir);
  g_autofree gchar *ini = test_ini_with_spin (base);
  TestServer *s = test_server_start (ini, NULL);
  g_autofree gchar *id = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.05}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *before = NULL, *after = NULL, *queued_id = NULL;
  g_autoptr (GPtrArray) events = NULL;
  long status;

  wait_state (s, id, "done");
  before = read_stream (s, path, NULL, 0, 5, &status);
  events = parse_events (before);
  queued_id = g_strconcat (id, ".", strchr (last_event (events)->raw_id, '.') + 1, NULL);
  queued_id[strlen (queued_id) - 1] = '1'; /* an earlier event of that process */
  g_assert_cmpint (test_server_stop (s), ==, 0);
  s = test_server_start (ini, NULL);
  after = read_stream (s, path, queued_id, 0, 5, &status);
  g_assert_cmpint (status, ==, 200);
  g_assert_nonnull (strstr (after, "event: outcome"));
  g_assert_cmpint (test_server_stop (s), ==, 0);
  test_remove_dir (dir);
}

/* Wrong uses: an unknown job, a method other than GET, a bad Last-Event-ID (ignored). */
static void
test_errors (void)
{
  g_autoptr (TestServer) s = start ("");
  g_autofree gchar *missing = test_server_url (s, "/jobs/0123456789abcdef0123456789abcdef/events");
  g_autoptr (TestReply) none = test_http ("GET", missing, NULL);
  g_autoptr (TestReply) post = test_http_body ("POST", missing, NULL, "");
  g_autofree gchar *id = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *body = NULL;
  long status;

  g_assert_cmpint (none->status, ==, 404);
  g_assert_cmpint (post->status, ==, 405);
  g_assert_cmpstr (g_hash_table_lookup (post->headers, "allow"), ==, "GET");
  wait_state (s, id, "done");
  body = read_stream (s, path, "-1x", 0, 5, &status);
  g_assert_cmpint (status, ==, 200);
  g_assert_nonnull (strstr (body, "event: outcome"));
}

/* Accept with q=0 for event streams gets the plain answer; a stream's access log line has the
 * size of what was sent. */
static void
test_accept_and_log (void)
{
  g_autoptr (TestServer) s = start_with ("", "[log]\naccess_buffer = 0\n");
  g_autofree gchar *url = test_server_url (s, "/fn/spin?seconds=0.01");
  const gchar *refuse[] = {"Accept: text/event-stream;q=0, text/plain", NULL};
  g_autoptr (TestReply) plain = test_http ("GET", url, refuse);
  g_autofree gchar *id = submit (s, "{\"fn\": \"spin\", \"args\": {\"seconds\": 0.01}}");
  g_autofree gchar *path = g_strconcat ("/jobs/", id, "/events", NULL);
  g_autofree gchar *body = NULL, *needle = NULL, *log = NULL;
  long status;

  g_assert_cmpint (plain->status, ==, 200);
  g_assert_true (
      g_str_has_prefix (g_hash_table_lookup (plain->headers, "content-type"), "text/plain"));
  wait_state (s, id, "done");
  body = read_stream (s, path, NULL, 0, 5, &status);
  needle = g_strdup_printf ("\"GET %s HTTP/1.1\" 200 %zu ", path, strlen (body));
  for (gint64 until = g_get_monotonic_time () + 2 * G_USEC_PER_SEC; g_get_monotonic_time () < until;
       g_usleep (20000)) {
    g_free (log);
    log = test_server_log (s);
    if (strstr (log, needle) != NULL)
      break;
  }
  g_assert_nonnull (strstr (log, needle));
}

/* Progress from outside the process: C plugins in crunchd-worker processes, and Python. */
static void
test_progress_processes (void)
{
  g_autoptr (TestServer) s = start_with ("backend = processes\n", "");
  g_autofree gchar *body = NULL;
  g_autoptr (GPtrArray) events = NULL;
  long status;

  body = read_stream (s, "/fn/spin?seconds=1&grain=10", NULL, 0, 10, &status);
  events = parse_events (body);
  g_assert_cmpuint (check_order (events, "done"), >=, 3);
}

static void
test_progress_python (void)
{
  g_autofree gchar *dir = g_build_filename (g_getenv ("CRUNCHD_SRCDIR"), "plugins", NULL);
  g_autofree gchar *ini = g_strdup_printf (
      "[executor]\nthreads = 1\n[plugins]\ndir = %s\nload = pyexample.py\n[jobs]\nstore = memory\n",
      dir);
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *body = NULL;
  g_autoptr (GPtrArray) events = NULL;
  long status;

  body = read_stream (s, "/fn/pyprimes?n=400000", NULL, 0, 30, &status);
  events = parse_events (body);
  g_assert_cmpuint (check_order (events, "done"), >=, 1);
}

/* A plugin built against the version-1 header still loads and runs (the version policy). */
static void
test_abi1_plugin (void)
{
  g_autofree gchar *ini =
      g_strdup_printf ("[plugins]\ndir = %s\nload = abi1\n", g_getenv ("CRUNCHD_TEST_PLUGINS"));
  g_autoptr (TestServer) s = test_server_start (ini, NULL);
  g_autofree gchar *url = test_server_url (s, "/fn/oldsum?a=2&b=3");
  g_autoptr (TestReply) r = test_http ("GET", url, NULL);

  g_assert_cmpint (r->status, ==, 200);
  g_assert_cmpstr (r->body, ==, "5\n");
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  if (g_getenv ("CRUNCHD_PYTHONDIR") != NULL) /* the crunchd module, for pyexample.py */
    g_setenv ("PYTHONPATH", g_getenv ("CRUNCHD_PYTHONDIR"), TRUE);
  curl_global_init (CURL_GLOBAL_DEFAULT);
  g_test_add_func ("/events/progress-order", test_progress_order);
  g_test_add_func ("/events/resume", test_resume);
  g_test_add_func ("/events/hangup", test_hangup);
  g_test_add_func ("/events/cap", test_cap);
  g_test_add_func ("/events/cap-in-budget", test_cap_in_budget);
  g_test_add_func ("/events/client-share", test_client_share);
  g_test_add_func ("/events/heartbeat", test_heartbeat);
  g_test_add_func ("/events/streamed-call", test_streamed_call);
  g_test_add_func ("/events/errors", test_errors);
  g_test_add_func ("/events/accept-and-log", test_accept_and_log);
  g_test_add_func ("/events/streamed-reconnect", test_streamed_reconnect);
  g_test_add_func ("/events/resume-after-restart", test_resume_after_restart);
  g_test_add_func ("/events/progress-processes", test_progress_processes);
  g_test_add_func ("/events/progress-python", test_progress_python);
  g_test_add_func ("/events/abi1-plugin", test_abi1_plugin);
  return g_test_run ();
}
