/* stdio-worker.c - `crunchd-worker --stdio`: the C side of the worker protocol (wire.h), hosting
 * the built-in fib and the configured C plugins for a process pool in crunchd.
 *
 * DESIGN
 * Two threads. The reader thread owns stdin: it reads frames, hands each `call` (or `batch`) to
 * the main thread through an async queue, sets the running call's cancel flag on a `cancel` for
 * its id (a batch's: its own flag and every call's), and queues a stop mark at end of input. A
 * frame out of turn (a call while one is in flight), an unknown type or a broken frame is a
 * protocol error: the worker logs it and exits 1 at once. The main thread owns the protocol's
 * output: it runs one call at a time through crunch_function_run() (a batch through
 * crunch_function_run_batch(), answered by one batch-result) and writes the final reply; the call's
 * progress reports go out as "progress" frames in between (`out_lock` keeps frames whole if a
 * plugin reports from a thread of its own). `lock` guards the id in flight and its cancel flag; the
 * main thread clears the id *before* writing the reply, so a next call that crunchd sends as soon
 * as it reads the reply is never taken for one out of turn. stdout is the protocol alone: its fd is
 * moved away at start-up and fd 1 points at stderr, so a plugin's printf() ends up in crunchd's log
 * instead of corrupting the stream. */
#include "stdio-worker.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire.h"

typedef enum {
  WATCH_IDLE, /* the runner has stdin */
  WATCH_ON,   /* the watcher has stdin while a call runs */
  WATCH_STOP, /* the runner wants stdin back */
  WATCH_QUIT,
} WatchState;

typedef struct {
  CrunchWireReader *reader; /* stdin's: used by whoever has stdin */
  GMutex lock;
  GCond changed;
  WatchState state;
  gboolean reading;         /* the watcher is inside a read */
  gint64 running_id;        /* -1: no call in flight */
  CrunchWireFrame *pending; /* a call the watcher read after the running one answered */
  gboolean eof;             /* the watcher saw the end of stdin */
  CrunchCancel cancel;      /* a batch's own: set by a cancel, with every call's */
  CrunchCancel *items;      /* the calls of the batch in flight, NULL for a call */
  guint n_items;
  GMutex out_lock;   /* one frame at a time on out_fd: progress (any thread) and the reply */
  int in_fd, out_fd; /* the protocol's: the original stdin and stdout */
  int wake[2];       /* a byte wakes the watcher out of its read */
} Worker;

static G_NORETURN void
broken (const gchar *what, const GError *error)
{
  g_warning ("crunchd-worker --stdio: %s: %s", what, error ? error->message : "protocol error");
  exit (EXIT_FAILURE);
}

/* A frame's id; anything but a call, a batch or a cancel is a protocol error. */
static gint64
frame_id (const CrunchWireFrame *frame)
{
  gint64 id = -1;
  g_autoptr (GError) error = NULL;

  if (!crunch_wire_get_int (frame->header, "id", &id, &error))
    broken (frame->type, error);
  if (!g_str_equal (frame->type, "call") && !g_str_equal (frame->type, "batch") &&
      !g_str_equal (frame->type, "cancel"))
    broken ("unknown message type", NULL);
  return id;
}

/* ---- the watcher thread ---- */

static gboolean
keep_watching (gpointer data)
{
  Worker *w = data;
  gboolean on;

  g_mutex_lock (&w->lock);
  on = w->state == WATCH_ON;
  g_mutex_unlock (&w->lock);
  return on;
}

/* Under lock: a frame read while watching. FALSE: stop until the runner takes stdin back. */
static gboolean
on_watched (Worker *w, CrunchWireFrame *frame)
{
  gint64 id = frame_id (frame);

  if (g_str_equal (frame->type, "cancel")) {
    if (id == w->running_id) {
      for (guint i = 0; i < w->n_items; i++)
        g_atomic_int_set (&w->items[i].flag, 1);
      g_atomic_int_set (&w->cancel.flag, 1);
    }
    crunch_wire_frame_free (frame);
    return TRUE;
  }
  if (w->running_id >= 0 || w->pending != NULL)
    broken ("a call while another is in flight", NULL);
  w->pending = frame;
  return FALSE;
}

static void
drain (int fd)
{
  gchar buf[64];

  while (read (fd, buf, sizeof buf) > 0)
    ;
}

/* One read of stdin while a call runs, under lock on entry and exit. */
static void
watch_once (Worker *w)
{
  g_autoptr (GError) error = NULL;
  CrunchWireFrame *frame;
  gboolean more = TRUE;

  w->reading = TRUE;
  g_mutex_unlock (&w->lock);
  frame = crunch_wire_read_or_wake (w->reader, w->in_fd, w->wake[0], keep_watching, w, &error);
  g_mutex_lock (&w->lock);
  w->reading = FALSE;
  drain (w->wake[0]);
  if (frame != NULL)
    more = on_watched (w, frame);
  else if (g_error_matches (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_EOF))
    w->eof = TRUE, more = FALSE;
  else if (!g_error_matches (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED))
    broken ("reading stdin", error);
  if (!more && w->state == WATCH_ON)
    w->state = WATCH_IDLE;
  g_cond_broadcast (&w->changed);
}

static gpointer
watcher_thread (gpointer data)
{
  Worker *w = data;

  g_mutex_lock (&w->lock);
  while (w->state != WATCH_QUIT) {
    if (w->state == WATCH_ON)
      watch_once (w);
    else
      g_cond_wait (&w->changed, &w->lock);
  }
  g_mutex_unlock (&w->lock);
  return NULL;
}

/* ---- the runner (main thread) ---- */

/* Under lock: the watcher leaves stdin (at once: the wake pipe), unless it already has. */
static void
stop_watching (Worker *w)
{
  if (w->state == WATCH_ON) {
    w->state = WATCH_STOP;
    if (w->reading && write (w->wake[1], "", 1) < 0 && errno != EAGAIN)
      broken ("wake", NULL);
  }
}

/* The next call: one the watcher kept, or read from stdin once the watcher has left it. NULL at
 * the end of input. */
static CrunchWireFrame *
next_call (Worker *w)
{
  CrunchWireFrame *frame;

  g_mutex_lock (&w->lock);
  stop_watching (w);
  while (w->reading)
    g_cond_wait (&w->changed, &w->lock);
  w->state = WATCH_IDLE;
  frame = g_steal_pointer (&w->pending);
  g_mutex_unlock (&w->lock);
  if (frame != NULL || w->eof)
    return frame;
  for (;;) {
    g_autoptr (GError) error = NULL;
    frame = crunch_wire_read (w->reader, w->in_fd, NULL, NULL, &error);
    if (frame == NULL && g_error_matches (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_EOF))
      return NULL;
    if (frame == NULL)
      broken ("reading stdin", error);
    frame_id (frame);
    if (!g_str_equal (frame->type, "cancel"))
      return frame;
    crunch_wire_frame_free (frame); /* a cancel for a call already answered */
  }
}

static JsonObject *
reply_for (const CrunchFunction *fn, gint64 id, GBytes *result, const GError *error)
{
  JsonObject *header;
  const gchar *message = error != NULL ? error->message : "failed";

  if (result != NULL)
    return crunch_wire_header ("result", id);
  if (g_error_matches (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED))
    return crunch_wire_header ("cancelled", id);
  header = crunch_wire_header ("error", id);
  /* crunchd names the function itself: "fib: bad n", not "fib: fib: bad n" */
  if (error != NULL && g_str_has_prefix (error->message, fn->name) &&
      g_str_has_prefix (error->message + strlen (fn->name), ": "))
    message = error->message + strlen (fn->name) + 2;
  json_object_set_string_member (header, "message", message);
  return header;
}

/* A "progress" frame for the call in flight, or for call `item` of the batch in flight. */
static void
write_progress (Worker *w, gint item, gdouble fraction, const gchar *message)
{
  g_autoptr (JsonObject) header = NULL;
  g_autoptr (GError) error = NULL;
  gint64 id;

  g_mutex_lock (&w->out_lock);
  g_mutex_lock (&w->lock);
  id = w->running_id;
  g_mutex_unlock (&w->lock);
  if (id >= 0) {
    header = crunch_wire_header ("progress", id);
    json_object_set_double_member (header, "fraction", fraction);
    if (message != NULL)
      json_object_set_string_member (header, "message", message);
    if (item >= 0)
      json_object_set_int_member (header, "item", item);
    if (!crunch_wire_write (w->out_fd, header, NULL, &error))
      broken ("writing stdout", error);
  }
  g_mutex_unlock (&w->out_lock);
}

/* CrunchCancel.progress: for the call in flight (throttled by the host). */
static void
send_progress (gpointer data, gdouble fraction, const gchar *message)
{
  write_progress (data, -1, fraction, message);
}

/* One call of a batch: where its progress goes. */
typedef struct {
  Worker *w;
  gint index;
} ItemRef;

static void
send_item_progress (gpointer data, gdouble fraction, const gchar *message)
{
  ItemRef *ref = data;

  write_progress (ref->w, ref->index, fraction, message);
}

/* Main thread: one call, then its final reply. */
static void
run_call (Worker *w, CrunchWireFrame *frame)
{
  const CrunchFunction *fn = NULL;
  gint64 id = -1;
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) write_error = NULL;
  g_autoptr (GVariant) args = crunch_wire_decode_call (frame, &fn, &id, &error);
  g_autoptr (GBytes) result = NULL;
  g_autoptr (JsonObject) header = NULL;

  if (args == NULL)
    broken ("call", error);
  g_variant_ref_sink (args);
  g_mutex_lock (&w->lock);
  w->running_id = id;
  g_atomic_int_set (&w->cancel.flag, 0);
  w->state = WATCH_ON;
  g_cond_broadcast (&w->changed);
  g_mutex_unlock (&w->lock);
  result = crunch_function_run (fn, args, &w->cancel, &error);
  header = reply_for (fn, id, result, error);
  /* before the reply: a call crunchd sends once it has it is not out of turn, and the watcher
   * starts leaving stdin while the reply travels */
  g_mutex_lock (&w->lock);
  w->running_id = -1;
  stop_watching (w);
  g_mutex_unlock (&w->lock);
  g_mutex_lock (&w->out_lock);
  if (!crunch_wire_write (w->out_fd, header, result, &write_error))
    broken ("writing stdout", write_error);
  g_mutex_unlock (&w->out_lock);
}

/* Main thread: a batch (crunch_function_run_batch(): the plugin's batch entry, identical pure
 * calls once), then its batch-result. */
static void
run_batch (Worker *w, CrunchWireFrame *frame)
{
  const CrunchFunction *fn = NULL;
  gint64 id = -1;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) calls = crunch_wire_decode_batch (frame, &fn, &id, &error);
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) header = NULL;
  guint n = calls != NULL ? calls->len : 0;
  g_autofree CrunchCancel *items = g_new0 (CrunchCancel, n + 1);
  g_autofree const CrunchCancel **cancels = g_new0 (const CrunchCancel *, n + 1);
  g_autofree ItemRef *refs = g_new0 (ItemRef, n + 1);
  g_autofree GBytes **results = g_new0 (GBytes *, n + 1);
  g_autofree GError **errors = g_new0 (GError *, n + 1);

  if (calls == NULL)
    broken ("batch", error);
  for (guint i = 0; i < n; i++) {
    refs[i] = (ItemRef){w, (gint)i};
    items[i].progress = send_item_progress;
    items[i].progress_data = &refs[i];
    cancels[i] = &items[i];
  }
  g_mutex_lock (&w->lock);
  w->running_id = id;
  g_atomic_int_set (&w->cancel.flag, 0);
  w->items = items;
  w->n_items = n;
  w->state = WATCH_ON;
  g_cond_broadcast (&w->changed);
  g_mutex_unlock (&w->lock);
  crunch_function_run_batch (fn, n, (GVariant *const *)calls->pdata, cancels, &w->cancel, results,
                             errors);
  header = crunch_wire_encode_batch_result (fn, id, n, results, errors, &payload);
  g_mutex_lock (&w->lock); /* as in run_call(): before the reply */
  w->running_id = -1;
  w->items = NULL;
  w->n_items = 0;
  stop_watching (w);
  g_mutex_unlock (&w->lock);
  g_mutex_lock (&w->out_lock);
  if (!crunch_wire_write (w->out_fd, header, payload, &error))
    broken ("writing stdout", error);
  g_mutex_unlock (&w->out_lock);
  for (guint i = 0; i < n; i++) {
    g_clear_pointer (&results[i], g_bytes_unref);
    g_clear_error (&errors[i]);
  }
}

/* stdin's and stdout's fds become the protocol's alone; fd 0 reads /dev/null and fd 1 is a
 * second stderr, so a plugin's printf() or a child it runs (system()) can neither write into
 * nor read from the stream. */
static void
take_stdio (int *in_fd, int *out_fd)
{
  int null = open ("/dev/null", O_RDONLY | O_CLOEXEC);

  *in_fd = fcntl (STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
  *out_fd = fcntl (STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  if (null < 0 || *in_fd < 0 || *out_fd < 0 || dup2 (null, STDIN_FILENO) < 0 ||
      dup2 (STDERR_FILENO, STDOUT_FILENO) < 0) {
    g_critical ("crunchd-worker --stdio: cannot set up stdin and stdout: %s", g_strerror (errno));
    exit (EXIT_FAILURE);
  }
  close (null);
}

static void
send_hello (int fd)
{
  g_autofree const gchar **names = crunch_functions_list ();
  g_autoptr (GPtrArray) fns = g_ptr_array_new ();
  g_autoptr (JsonObject) hello = NULL;
  g_autoptr (GError) error = NULL;

  for (guint i = 0; names[i] != NULL; i++)
    g_ptr_array_add (fns, (gpointer)crunch_functions_lookup (names[i]));
  hello = crunch_wire_encode_hello ("crunchd-worker", PACKAGE_VERSION,
                                    (const CrunchFunction *const *)fns->pdata, fns->len);
  if (!crunch_wire_write (fd, hello, NULL, &error))
    broken ("writing hello", error);
}

gint
crunch_stdio_worker_run (void)
{
  Worker w = {.running_id = -1, .state = WATCH_IDLE};
  GThread *watcher;
  CrunchWireFrame *frame;

  signal (SIGPIPE, SIG_IGN); /* a closed stdout is a write error, then exit */
  take_stdio (&w.in_fd, &w.out_fd);
  if (pipe2 (w.wake, O_CLOEXEC | O_NONBLOCK) != 0)
    broken ("pipe", NULL);
  w.reader = crunch_wire_reader_new (CRUNCH_WIRE_MAX_PAYLOAD);
  g_mutex_init (&w.lock);
  g_mutex_init (&w.out_lock);
  g_cond_init (&w.changed);
  w.cancel.progress = send_progress;
  w.cancel.progress_data = &w;
  send_hello (w.out_fd);
  watcher = g_thread_new ("stdio-watcher", watcher_thread, &w);
  while ((frame = next_call (&w)) != NULL) {
    if (g_str_equal (frame->type, "batch"))
      run_batch (&w, frame);
    else
      run_call (&w, frame);
    crunch_wire_frame_free (frame);
  }
  g_mutex_lock (&w.lock);
  w.state = WATCH_QUIT;
  g_cond_broadcast (&w.changed);
  g_mutex_unlock (&w.lock);
  g_thread_join (watcher);
  crunch_wire_reader_free (w.reader);
  g_mutex_clear (&w.lock);
  g_mutex_clear (&w.out_lock);
  g_cond_clear (&w.changed);
  close (w.wake[0]);
  close (w.wake[1]);
  close (w.in_fd);
  close (w.out_fd);
  return EXIT_SUCCESS;
}
