/* stdio-worker.c - `crunchd-worker --stdio`: the C side of the worker protocol (wire.h), hosting
 * the built-in fib and the configured C plugins for a process pool in crunchd.
 *
 * DESIGN
 * Two threads. The reader thread owns stdin: it reads frames, hands each `call` to the main
 * thread through an async queue, sets the running call's cancel flag on a `cancel` for its id,
 * and queues a stop mark at end of input. A frame out of turn (a call while one is in flight), an
 * unknown type or a broken frame is a protocol error: the worker logs it and exits 1 at once.
 * The main thread owns the protocol's output: it runs one call at a time through
 * crunch_function_run() and writes the final reply. `lock` guards the id in flight and its cancel
 * flag; the main thread clears the id *before* writing the reply, so a next call that crunchd
 * sends as soon as it reads the reply is never taken for one out of turn.
 * stdout is the protocol alone: its fd is moved away at start-up and fd 1 points at stderr, so
 * a plugin's printf() ends up in crunchd's log instead of corrupting the stream. */
#include "stdio-worker.h"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire.h"

typedef struct {
  GAsyncQueue *calls; /* CrunchWireFrame*, or the stop mark */
  GMutex lock;
  gint64 running_id; /* under lock; -1 = none */
  CrunchCancel cancel;
  int out_fd;
} Worker;

static gchar stop_mark;
#define STOP ((gpointer)&stop_mark)

static G_NORETURN void
broken (const gchar *what, const GError *error)
{
  g_warning ("crunchd-worker --stdio: %s: %s", what, error ? error->message : "protocol error");
  exit (EXIT_FAILURE);
}

/* Reader thread: TRUE to keep reading. */
static gboolean
on_frame (Worker *w, CrunchWireFrame *frame)
{
  gint64 id = -1;
  g_autoptr (GError) error = NULL;

  if (!crunch_wire_get_int (frame->header, "id", &id, &error))
    broken (frame->type, error);
  g_mutex_lock (&w->lock);
  if (g_str_equal (frame->type, "cancel")) {
    if (id == w->running_id)
      g_atomic_int_set (&w->cancel.flag, 1);
    g_mutex_unlock (&w->lock);
    crunch_wire_frame_free (frame);
    return TRUE;
  }
  if (!g_str_equal (frame->type, "call"))
    broken ("unknown message type", NULL);
  if (w->running_id >= 0)
    broken ("a call while another is in flight", NULL);
  w->running_id = id;
  g_atomic_int_set (&w->cancel.flag, 0);
  g_mutex_unlock (&w->lock);
  g_async_queue_push (w->calls, frame);
  return TRUE;
}

static gpointer
reader_thread (gpointer data)
{
  Worker *w = data;
  g_autoptr (CrunchWireReader) reader = crunch_wire_reader_new (CRUNCH_WIRE_MAX_PAYLOAD);

  for (;;) {
    g_autoptr (GError) error = NULL;
    CrunchWireFrame *frame = crunch_wire_read (reader, STDIN_FILENO, NULL, NULL, &error);
    if (frame == NULL && g_error_matches (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_EOF))
      break;
    if (frame == NULL)
      broken ("reading stdin", error);
    on_frame (w, frame);
  }
  g_async_queue_push (w->calls, STOP);
  return NULL;
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
  result = crunch_function_run (fn, args, &w->cancel, &error);
  header = reply_for (fn, id, result, error);
  g_mutex_lock (&w->lock);
  w->running_id = -1;
  g_mutex_unlock (&w->lock);
  if (!crunch_wire_write (w->out_fd, header, result, &write_error))
    broken ("writing stdout", write_error);
}

/* stdout's fd becomes the protocol's alone; fd 1 becomes a second stderr. */
static int
take_stdout (void)
{
  int fd = fcntl (STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);

  if (fd < 0 || dup2 (STDERR_FILENO, STDOUT_FILENO) < 0) {
    g_critical ("crunchd-worker --stdio: cannot set up stdout: %s", g_strerror (errno));
    exit (EXIT_FAILURE);
  }
  return fd;
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
  Worker w = {.running_id = -1};
  GThread *reader;
  gpointer item;

  signal (SIGPIPE, SIG_IGN); /* a closed stdout is a write error, then exit */
  w.out_fd = take_stdout ();
  w.calls = g_async_queue_new ();
  g_mutex_init (&w.lock);
  send_hello (w.out_fd);
  reader = g_thread_new ("stdio-reader", reader_thread, &w);
  while ((item = g_async_queue_pop (w.calls)) != STOP) {
    run_call (&w, item);
    crunch_wire_frame_free (item);
  }
  g_thread_join (reader);
  g_async_queue_unref (w.calls);
  g_mutex_clear (&w.lock);
  close (w.out_fd);
  return EXIT_SUCCESS;
}
