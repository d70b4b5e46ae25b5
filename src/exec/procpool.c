/* procpool.c - see procpool.h.
 *
 * DESIGN
 * A Proc (one child process) is owned by exactly one thread at a time: the pool's idle queue
 * (under `lock`), the job thread that took it for a call, or (recycled after max_jobs calls) a
 * short-lived retire() thread that waits for it to exit. That thread alone writes its stdin,
 * reads its stdout, kills and reaps it, so a Proc has no lock of its own. While a call runs the
 * job thread polls the child's stdout in steps of 10 ms (wire.c) and looks at the job's cancel
 * flag between steps: a set flag sends `cancel`; no final reply within kill_grace -> SIGKILL,
 * waitpid, and the slot is free for a fresh process. A batch (crunch_procpool_call_batch()) is
 * the same exchange with one `batch` frame and one `batch-result`: the flag looked at is the
 * batch's own (set once every call's is), and progress frames go to the call they name.
 * Starting children (the spawner thread) and logging their stderr is child.c's.
 * Pool figures (alive, busy, events, unavailable functions) are under `lock`; the list of pools
 * is under `pools_lock` (taken before a pool's `lock`, never after).
 * Lifecycle: new() at start-up, call() from job threads, free() after the executor has drained
 * (closes every stdin, waits kill_grace, SIGKILLs the rest). */
#include "procpool.h"

#include <poll.h>

#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "child.h"

enum { EV_START, EV_CRASH, EV_KILL, EV_RECYCLE, EV_PROTOCOL, EV_OOM, EV_COUNT };
static const gchar *const event_names[] = {"start",   "crash",          "kill",
                                           "recycle", "protocol_error", "oom"};

#define CRASH_LOOP_COUNT 5
#define CRASH_LOOP_WINDOW_US (60 * G_USEC_PER_SEC)
#define UNAVAILABLE_US (60 * G_USEC_PER_SEC)

typedef struct {
  GPid pid;
  int in_fd, out_fd;
  CrunchWireReader *reader;
  guint jobs;
  gint64 last_id; /* of the call (or batch) it was given last */
} Proc;

typedef struct {
  gint64 times[CRASH_LOOP_COUNT]; /* ring of the latest crashes */
  guint64 total;                  /* crashes since start (crunchd_function_crashes_total) */
  guint next;
  gint64 until; /* unavailable until (monotonic), 0 = available */
} CrashRecord;

struct CrunchProcPool {
  CrunchProcPoolSettings s;
  GMutex lock;
  GCond freed;     /* an idle process or a free slot */
  GQueue idle;     /* Proc* */
  guint alive;     /* processes (and slots reserved for a start) */
  guint busy;      /* running a call */
  guint retiring;  /* recycled processes being ended by a retire() thread */
  guint crash_run; /* crashes since the last good reply (back-off) */
  gint64 next_start_us;
  GHashTable *crashes; /* function name -> CrashRecord* */
  guint64 events[EV_COUNT];
  gint64 next_id;
  CrunchWireHello *hello; /* a program plugin's declaration: the registry points into it */
};

static GMutex pools_lock;
static GPtrArray *pools; /* CrunchProcPool*, under pools_lock */
static gint stopping;    /* atomic: crunch_procpools_stopping() was called */

static void
count (CrunchProcPool *pool, guint event)
{
  g_mutex_lock (&pool->lock);
  pool->events[event]++;
  g_mutex_unlock (&pool->lock);
}

static Proc *
spawn (CrunchProcPool *pool, GError **error)
{
  CrunchChild child;
  g_autoptr (GError) local = NULL;
  Proc *p;

  if (!crunch_child_spawn (pool->s.argv, pool->s.program, pool->s.memory_limit_mb, pool->s.nice,
                           &child, &local)) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_UNAVAILABLE,
                 "cannot start %s: %s", pool->s.program, local->message);
    return NULL;
  }
  p = g_new0 (Proc, 1);
  p->pid = child.pid;
  p->in_fd = child.in_fd;
  p->out_fd = child.out_fd;
  p->reader = crunch_wire_reader_new (CRUNCH_WIRE_MAX_PAYLOAD);
  count (pool, EV_START);
  return p;
}

/* ---- ending processes ---- */

static void
proc_free (Proc *p)
{
  if (p->in_fd >= 0)
    close (p->in_fd);
  close (p->out_fd);
  crunch_wire_reader_free (p->reader);
  g_free (p);
}

/* The process is gone (or going): its slot is free. */
static void
drop (CrunchProcPool *pool, Proc *p, gint64 grace_us)
{
  if (p->in_fd >= 0) {
    close (p->in_fd); /* the protocol's way to say stop */
    p->in_fd = -1;
  }
  crunch_child_reap (p->pid, grace_us);
  proc_free (p);
  g_mutex_lock (&pool->lock);
  pool->alive--;
  g_cond_signal (&pool->freed);
  g_mutex_unlock (&pool->lock);
}

static void
kill_now (CrunchProcPool *pool, Proc *p, guint event)
{
  count (pool, event); /* first: whoever sees the process gone sees it counted */
  crunch_child_kill (p->pid);
  drop (pool, p, 0);
}

/* The child closed its stdout or died: reap it and say how it ended. */
static void
crashed (CrunchProcPool *pool, Proc *p, const gchar *what, GError **error)
{
  gint status;
  g_autofree gchar *how = NULL;

  close (p->in_fd);
  p->in_fd = -1;
  status = crunch_child_reap (p->pid, (gint64)(pool->s.kill_grace * G_USEC_PER_SEC));
  how = crunch_child_describe_exit (status);
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CRASHED, "%s crashed (%s)", what,
               how);
  g_warning ("%s[%d]: %s crashed (%s)", pool->s.program, (gint)p->pid, what, how);
  proc_free (p);
  g_mutex_lock (&pool->lock);
  pool->alive--;
  pool->events[EV_CRASH]++;
  pool->crash_run++;
  /* back-off for the next start after crashes in a row: 0, 25 ms, 50 ms ... 1 s */
  pool->next_start_us =
      g_get_monotonic_time () +
      (pool->crash_run <= 1 ? 0 : MIN (25000 << MIN (pool->crash_run - 2, 6), G_USEC_PER_SEC));
  g_cond_signal (&pool->freed);
  g_mutex_unlock (&pool->lock);
}

static void
protocol_broken (CrunchProcPool *pool, Proc *p, const gchar *what, const GError *why,
                 GError **error)
{
  g_warning ("%s[%d]: protocol error: %s; killing it", pool->s.program, (gint)p->pid, why->message);
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_PROTOCOL,
               "%s: protocol error: %s", what, why->message);
  kill_now (pool, p, EV_PROTOCOL);
}

/* ---- starting processes ---- */

typedef struct {
  gboolean for_call; /* a call waits for it (not crunchd's own start-up) */
  gint64 deadline;
} StartWait;

/* A start ends at start_timeout, or for a call when the server stops: not when that call's
 * client gives up (the process then serves the next call). */
static gboolean
start_check (gpointer data)
{
  StartWait *w = data;

  return !(w->for_call && g_atomic_int_get (&stopping)) && g_get_monotonic_time () < w->deadline;
}

/* A program's later processes must declare what its first one did (the registry holds that). */
static gboolean
same_functions (const CrunchWireHello *first, const CrunchWireHello *again, GError **error)
{
  gboolean same = first == NULL || first->n_functions == again->n_functions;

  for (guint i = 0; same && first != NULL && i < first->n_functions; i++)
    same = g_str_equal (first->functions[i].name, again->functions[i].name) &&
           first->functions[i].n_args == again->functions[i].n_args &&
           first->functions[i].max_batch == again->functions[i].max_batch;
  if (!same)
    g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL,
                         "it declares other functions than at start-up");
  return same;
}

/* A process that did not start well: killed, and the next start backs off as after a crash. */
static void
start_failed (CrunchProcPool *pool, Proc *p, const GError *why, GError **error)
{
  if (g_error_matches (why, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED))
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_UNAVAILABLE,
                 "%s sent no hello within %g s", pool->s.program, pool->s.start_timeout);
  else
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_UNAVAILABLE,
                 "%s: bad hello: %s", pool->s.program, why->message);
  g_warning ("%s[%d]: %s", pool->s.program, (gint)p->pid, (*error)->message);
  crunch_child_kill (p->pid);
  crunch_child_reap (p->pid, 0);
  proc_free (p);
  g_mutex_lock (&pool->lock);
  pool->crash_run++;
  pool->next_start_us =
      g_get_monotonic_time () + MIN (25000 << MIN (pool->crash_run, 6), G_USEC_PER_SEC);
  g_mutex_unlock (&pool->lock);
}

/* A new process that has said hello; its hello in *hello if asked for. `for_call`: a call waits
 * for it, and a shutdown stops the start. */
static Proc *
start_proc (CrunchProcPool *pool, gboolean for_call, CrunchWireHello **hello, GError **error)
{
  StartWait w = {for_call, g_get_monotonic_time () + (gint64)(pool->s.start_timeout * 1e6)};
  g_autoptr (GError) local = NULL;
  g_autoptr (CrunchWireFrame) frame = NULL;
  g_autoptr (CrunchWireHello) parsed = NULL;
  Proc *p = spawn (pool, error);

  if (p == NULL)
    return NULL;
  frame = crunch_wire_read (p->reader, p->out_fd, start_check, &w, &local);
  if (frame == NULL && for_call && g_atomic_int_get (&stopping) &&
      g_error_matches (local, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED)) {
    /* the server stops: not the program's fault, no back-off */
    g_message ("%s[%d]: its start is abandoned: crunchd is stopping", pool->s.program,
               (gint)p->pid);
    crunch_child_kill (p->pid);
    crunch_child_reap (p->pid, 0);
    proc_free (p);
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
                 "%s: cancelled while it started", pool->s.program);
    return NULL;
  }
  if (frame != NULL)
    parsed = crunch_wire_parse_hello (frame, &local);
  if (parsed == NULL || !same_functions (pool->hello, parsed, &local)) {
    start_failed (pool, p, local, error);
    return NULL;
  }
  if (hello != NULL)
    *hello = g_steal_pointer (&parsed);
  return p;
}

/* An idle process must be quiet and alive: one that hung up, wrote out of turn or exited (while
 * something it started keeps its stdout open) died or broke the protocol while nobody asked it
 * anything. It is reaped and counted as a crash of the program, not blamed on the call that
 * would have been sent to it. */
static gboolean
idle_healthy (CrunchProcPool *pool, Proc *p)
{
  struct pollfd pfd = {.fd = p->out_fd, .events = POLLIN};

  if (poll (&pfd, 1, 0) == 0 && !crunch_child_exited (p->pid))
    return TRUE;
  g_warning ("%s[%d]: died or wrote out of turn while idle; replacing it", pool->s.program,
             (gint)p->pid);
  kill_now (pool, p, EV_CRASH);
  return FALSE;
}

/* A started process for the pool. The start is not bound by the caller's deadline (a model may
 * take longer to load than one call may wait), only by start_timeout and shutdown: if the caller
 * has given up meanwhile, the process joins the idle queue for the next call. */
static Proc *
start_for (CrunchProcPool *pool, const CrunchCancel *cancel, GError **error)
{
  Proc *p = start_proc (pool, TRUE, NULL, error);

  g_mutex_lock (&pool->lock);
  if (p == NULL) {
    pool->alive--;
  } else if (crunch_cancelled (cancel)) {
    g_queue_push_tail (&pool->idle, p);
    g_cond_signal (&pool->freed);
    p = NULL;
  }
  return p; /* with the lock held */
}

/* An idle process, or a new one if the pool has room; waits while every process is busy. */
static Proc *
acquire (CrunchProcPool *pool, const CrunchFunction *fn, const CrunchCancel *cancel, GError **error)
{
  Proc *p = NULL;

  g_mutex_lock (&pool->lock);
  while (!crunch_cancelled (cancel)) {
    gint64 now = g_get_monotonic_time ();
    if ((p = g_queue_pop_head (&pool->idle)) != NULL) {
      g_mutex_unlock (&pool->lock);
      if (idle_healthy (pool, p)) {
        g_mutex_lock (&pool->lock);
        break;
      }
      p = NULL;
      g_mutex_lock (&pool->lock);
      continue;
    }
    if (pool->alive < pool->s.size && now >= pool->next_start_us) {
      pool->alive++;
      g_mutex_unlock (&pool->lock);
      p = start_for (pool, cancel, error);
      if (p == NULL && error != NULL && *error != NULL) {
        g_mutex_unlock (&pool->lock);
        return NULL;
      }
      break;
    }
    g_cond_wait_until (&pool->freed, &pool->lock, now + CRUNCH_WIRE_STEP_MS * 1000);
  }
  if (p != NULL)
    pool->busy++;
  g_mutex_unlock (&pool->lock);
  if (p == NULL)
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "%s: cancelled",
                 fn->name);
  return p;
}

typedef struct {
  CrunchProcPool *pool;
  Proc *proc;
} Retiring;

/* A thread of its own: a recycled process gets kill_grace to exit after its stdin closes, and its
 * last call's answer must not wait for that (it did: a program that took 1.5 s to exit made a 1
 * ms call take 1.5 s). Its slot stays taken until it is gone, so the pool never has more than
 * `size` processes; crunch_procpool_free() waits for these threads. */
static gpointer
retire (gpointer data)
{
  Retiring *r = data;
  CrunchProcPool *pool = r->pool;

  drop (pool, r->proc, (gint64)(pool->s.kill_grace * G_USEC_PER_SEC));
  g_free (r);
  g_mutex_lock (&pool->lock);
  pool->retiring--;
  g_cond_broadcast (&pool->freed);
  g_mutex_unlock (&pool->lock);
  return NULL;
}

/* After a final reply: back to the idle queue, or replaced after max_jobs calls. */
static void
release (CrunchProcPool *pool, Proc *p)
{
  gboolean recycle = pool->s.max_jobs > 0 && ++p->jobs >= pool->s.max_jobs;
  Retiring *r;

  g_mutex_lock (&pool->lock);
  pool->crash_run = 0;
  if (recycle) {
    pool->events[EV_RECYCLE]++;
    pool->retiring++;
  } else {
    g_queue_push_tail (&pool->idle, p);
    g_cond_signal (&pool->freed);
  }
  g_mutex_unlock (&pool->lock);
  if (!recycle)
    return;
  r = g_new (Retiring, 1);
  *r = (Retiring){pool, p};
  g_thread_unref (g_thread_new ("crunchd-retire", retire, r));
}

/* ---- one call ---- */

typedef struct {
  CrunchProcPool *pool;
  Proc *proc;
  const CrunchCancel *cancel; /* a batch's: set once every call's is */
  gint64 id;
  gint64 kill_at;     /* 0 until `cancel` was sent */
  gboolean exited;    /* the child died (seen by call_check()) */
  gint64 progress_us; /* the last progress report passed on */
  gint64 late_id;     /* the process's previous call (0: none): its frames now come late */
  gboolean told_late; /* a late frame of it was logged */
  /* A batch: its calls' cancels (where their progress goes) and last reports passed on. */
  guint n_items;
  const CrunchCancel *const *items;
  gint64 *items_progress_us;
} CallWait;

/* While a frame is written to a child that does not read: a set cancel flag starts the
 * kill_grace clock (no cancel frame can be sent in the middle of another). */
static gboolean
write_check (gpointer data)
{
  CallWait *w = data;
  gint64 now = g_get_monotonic_time ();

  if (w->kill_at == 0 && crunch_cancelled (w->cancel))
    w->kill_at = now + MAX ((gint64)(w->pool->s.kill_grace * G_USEC_PER_SEC), 1);
  return w->kill_at == 0 || now < w->kill_at;
}

/* Between poll steps for the reply: stop when the child has died, pass a set cancel flag on
 * once, then give the call kill_grace. A dead child usually shows as EOF on its stdout, but not
 * while something it started keeps that pipe open: so its exit is looked at too, once the pipe
 * has nothing left to read (it may have written its reply just before it exited). */
static gboolean
call_check (gpointer data)
{
  CallWait *w = data;
  g_autoptr (JsonObject) cancel = NULL;
  g_autoptr (GError) error = NULL;
  struct pollfd out = {.fd = w->proc->out_fd, .events = POLLIN};

  if (crunch_child_exited (w->proc->pid) && poll (&out, 1, 0) == 0) {
    w->exited = TRUE;
    return FALSE;
  }
  if (w->kill_at != 0 || !crunch_cancelled (w->cancel))
    return write_check (w);
  write_check (w); /* starts the clock */
  cancel = crunch_wire_header ("cancel", w->id);
  /* a dead child shows as EOF on the next read; a full pipe, after kill_grace */
  return crunch_wire_write_checked (w->proc->in_fd, cancel, NULL, write_check, w, &error) ||
         !g_error_matches (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED);
}

/* A progress frame of the call (or batch) in flight: checked (a bad one is a protocol error,
 * *broken set), then passed on unless one passed less than 1/CRUNCH_PROGRESS_PER_SECOND s ago. A
 * batch's frame goes to the call it names ("item"), or to every call of the batch. */
static void
take_progress (CallWait *w, CrunchWireFrame *frame, GError **broken)
{
  gdouble fraction;
  const gchar *message;
  gint item;

  if (!crunch_wire_parse_progress (frame, w->n_items, &fraction, &message, &item, broken))
    return;
  if (w->n_items == 0) {
    if (crunch_progress_due (&w->progress_us, TRUE))
      crunch_progress_report (w->cancel, fraction, message);
    return;
  }
  for (guint i = item < 0 ? 0 : (guint)item; i < (item < 0 ? w->n_items : (guint)item + 1); i++) {
    if (crunch_progress_due (&w->items_progress_us[i], TRUE))
      crunch_progress_report (w->items[i], fraction, message);
  }
}

/* A frame read while the call or batch (`what`) w->id runs: TRUE when it is a final reply to
 * look at; FALSE after passing on a progress frame or dropping a late one, or with *broken set
 * when it names another id. A frame for the process's previous call is late: a progress report
 * that lost the race with its call's result, or a second reply. Nothing waits for it, and the
 * call in flight is not to blame (it failed with 502 when idle_healthy() had looked before the
 * frame came). Any other id is a protocol error, at once. */
static gboolean
own_final_frame (CallWait *w, CrunchWireFrame *frame, const gchar *what, GError **broken)
{
  gint64 got;

  if (!crunch_wire_get_int (frame->header, "id", &got, broken))
    return FALSE;
  if (got > 0 && got == w->late_id) {
    if (!w->told_late) /* once per call: a flood of them must not flood the log */
      g_message ("%s[%d]: a \"%s\" for call %" G_GINT64_FORMAT
                 ", which has its answer, came while %s %" G_GINT64_FORMAT " runs: dropped",
                 w->pool->s.program, (gint)w->proc->pid, frame->type, got, what, w->id);
    w->told_late = TRUE;
    return FALSE;
  }
  if (got != w->id) {
    g_set_error (broken, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL,
                 "a \"%s\" for call %" G_GINT64_FORMAT " while %s %" G_GINT64_FORMAT " runs",
                 frame->type, got, what, w->id);
    return FALSE;
  }
  if (g_str_equal (frame->type, "progress")) {
    take_progress (w, frame, broken);
    return FALSE;
  }
  return TRUE;
}

/* A final reply (TRUE, with the result or *error), or a progress frame (FALSE). Anything else is
 * a protocol error (FALSE, *broken set). */
static gboolean
on_reply (CallWait *w, const CrunchFunction *fn, CrunchWireFrame *frame, GBytes **result,
          GError **broken, GError **error)
{
  CrunchProcPool *pool = w->pool;
  const gchar *message, *kind;

  if (!own_final_frame (w, frame, "call", broken))
    return FALSE;
  if (g_str_equal (frame->type, "result")) {
    *result = g_bytes_ref (frame->payload);
  } else if (g_str_equal (frame->type, "cancelled")) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "%s: cancelled",
                 fn->name);
  } else if (g_str_equal (frame->type, "error")) {
    message = crunch_wire_get_string (frame->header, "message", broken);
    if (message == NULL)
      return FALSE;
    kind = json_object_has_member (frame->header, "kind")
               ? crunch_wire_get_string (frame->header, "kind", broken)
               : "";
    if (kind == NULL)
      return FALSE;
    if (g_strcmp0 (kind, "memory") == 0)
      count (pool, EV_OOM);
    g_set_error (error, CRUNCH_FUNCTION_ERROR,
                 g_strcmp0 (kind, "memory") == 0 ? CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY
                                                 : CRUNCH_FUNCTION_ERROR_FAILED,
                 "%s: %s%s", fn->name, g_strcmp0 (kind, "memory") == 0 ? "out of memory: " : "",
                 message);
  } else {
    g_set_error (broken, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL, "unexpected \"%s\"",
                 frame->type);
    return FALSE;
  }
  return TRUE;
}

static gint64
next_id (CrunchProcPool *pool)
{
  gint64 id;

  g_mutex_lock (&pool->lock);
  id = ++pool->next_id;
  g_mutex_unlock (&pool->lock);
  return id;
}

/* FALSE: the child died (crash) or stopped reading its stdin until the call was cancelled and
 * kill_grace passed (killed), and *gone; or the call cannot be sent (its arguments are too
 * large for a frame's header: the call fails, 500 with that message), and the process is
 * untouched. */
static gboolean
send_call (CrunchProcPool *pool, Proc *p, const CrunchFunction *fn, JsonObject *call,
           GBytes *payload, CallWait *w, gboolean *gone, GError **error)
{
  g_autoptr (GError) write_error = NULL;

  *gone = TRUE;
  p->last_id = w->id;
  if (crunch_wire_write_checked (p->in_fd, call, payload, write_check, w, &write_error))
    return TRUE;
  if (g_error_matches (write_error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_TOO_LARGE)) {
    *gone = FALSE;
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "%s: arguments too large for a worker process: %s", fn->name,
                 write_error->message);
    return FALSE;
  }
  if (!g_error_matches (write_error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED)) {
    crashed (pool, p, fn->name, error);
    return FALSE;
  }
  g_message ("%s[%d]: does not read its stdin: killed", pool->s.program, (gint)p->pid);
  kill_now (pool, p, EV_KILL);
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
               "%s: cancelled (killed)", fn->name);
  return FALSE;
}

/* The process failed the call (or batch) in flight: killed after an ignored cancel, killed for
 * breaking the protocol, or dead (`broken` NULL). Its slot is free again. */
static void
lost (CrunchProcPool *pool, Proc *p, const CrunchFunction *fn, const GError *broken, GError **error)
{
  if (g_error_matches (broken, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED)) {
    g_message ("%s[%d]: %s did not stop within %g s of its cancel: killed", pool->s.program,
               (gint)p->pid, fn->name, pool->s.kill_grace);
    kill_now (pool, p, EV_KILL);
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED,
                 "%s: cancelled (killed)", fn->name);
  } else if (g_error_matches (broken, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL)) {
    protocol_broken (pool, p, fn->name, broken, error);
  } else {
    crashed (pool, p, fn->name, error);
  }
}

/* Sends the call and waits for its final reply. *gone: the process was killed or died (its
 * slot is free again); otherwise it is the caller's to release. */
static GBytes *
exchange (CrunchProcPool *pool, Proc *p, const CrunchFunction *fn, GVariant *args,
          const CrunchCancel *cancel, gboolean *gone, GError **error)
{
  CallWait w = {
      .pool = pool, .proc = p, .cancel = cancel, .id = next_id (pool), .late_id = p->last_id};
  gint64 left = cancel->deadline_us != 0 ? cancel->deadline_us - g_get_monotonic_time ()
                                         : __atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED);
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) call =
      crunch_wire_encode_call (fn, args, w.id, (gdouble)left / 1e6, &payload);
  GBytes *result = NULL;

  if (!send_call (pool, p, fn, call, payload, &w, gone, error))
    return NULL;
  *gone = TRUE;
  for (;;) {
    g_autoptr (GError) broken = NULL;
    g_autoptr (CrunchWireFrame) frame =
        crunch_wire_read (p->reader, p->out_fd, call_check, &w, &broken);
    if (frame != NULL && on_reply (&w, fn, frame, &result, &broken, error)) {
      *gone = FALSE;
      return result;
    }
    if (frame != NULL && broken == NULL)
      continue; /* progress */
    lost (pool, p, fn, w.exited ? NULL : broken, error);
    return NULL;
  }
}

/* ---- a batch ---- */

/* A final reply to the batch in flight (TRUE, results[] and errors[] filled), or a progress
 * frame (FALSE). Anything else is a protocol error (FALSE, *broken set). */
static gboolean
on_batch_reply (CallWait *w, const CrunchFunction *fn, CrunchWireFrame *frame, GBytes **results,
                GError **errors, GError **broken)
{
  if (!own_final_frame (w, frame, "batch", broken))
    return FALSE;
  if (!g_str_equal (frame->type, "batch-result")) {
    g_set_error (broken, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL,
                 "unexpected \"%s\" (a batch runs)", frame->type);
    return FALSE;
  }
  if (!crunch_wire_parse_batch_result (frame, fn, w->n_items, results, errors, broken))
    return FALSE;
  for (guint i = 0; i < w->n_items; i++) {
    if (g_error_matches (errors[i], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY))
      count (w->pool, EV_OOM);
  }
  return TRUE;
}

/* When the batch's caller stops waiting: its latest call's deadline, or the function's. */
static gint64
batch_left_us (const CrunchFunction *fn, guint n, const CrunchCancel *const *cancels,
               const CrunchCancel *all)
{
  gint64 latest = all->deadline_us;

  for (guint i = 0; latest >= 0 && i < n; i++)
    latest = cancels[i]->deadline_us == 0 ? -1 : MAX (latest, cancels[i]->deadline_us);
  if (latest <= 0)
    return __atomic_load_n (&fn->timeout_us, __ATOMIC_RELAXED);
  return latest - g_get_monotonic_time ();
}

/* Sends the batch and waits for its batch-result: TRUE with results[] and errors[] filled. FALSE
 * with *error for the whole batch; *gone as in exchange(). A batch too large for one frame fails
 * with CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT, the process untouched (and not gone). */
static gboolean
exchange_batch (CrunchProcPool *pool, Proc *p, const CrunchFunction *fn, guint n,
                GVariant *const *args, const CrunchCancel *const *cancels, const CrunchCancel *all,
                GBytes **results, GError **errors, gboolean *gone, GError **error)
{
  g_autofree gint64 *progress_us = g_new0 (gint64, n);
  CallWait w = {.pool = pool,
                .proc = p,
                .cancel = all,
                .id = next_id (pool),
                .late_id = p->last_id,
                .n_items = n,
                .items = cancels,
                .items_progress_us = progress_us};
  gint64 left = batch_left_us (fn, n, cancels, all);
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) batch =
      crunch_wire_encode_batch (fn, n, args, w.id, (gdouble)left / 1e6, &payload);

  *gone = FALSE;
  if (g_bytes_get_size (payload) > CRUNCH_WIRE_MAX_PAYLOAD) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT,
                 "%s: a batch of %u calls has %zu bytes of arguments, more than a frame's %u",
                 fn->name, n, g_bytes_get_size (payload), CRUNCH_WIRE_MAX_PAYLOAD);
    return FALSE;
  }
  if (!send_call (pool, p, fn, batch, payload, &w, gone, error))
    return FALSE;
  *gone = TRUE;
  for (;;) {
    g_autoptr (GError) broken = NULL;
    g_autoptr (CrunchWireFrame) frame =
        crunch_wire_read (p->reader, p->out_fd, call_check, &w, &broken);
    if (frame != NULL && on_batch_reply (&w, fn, frame, results, errors, &broken)) {
      *gone = FALSE;
      return TRUE;
    }
    if (frame != NULL && broken == NULL)
      continue; /* progress */
    lost (pool, p, fn, w.exited ? NULL : broken, error);
    return FALSE;
  }
}

/* ---- crash loops ---- */

/* TRUE if the function is available; a record whose time is up is forgotten. */
/* Available again, with a clean slate for the crash-loop rule. */
static void
forgive (CrashRecord *rec)
{
  memset (rec->times, 0, sizeof rec->times);
  rec->until = 0;
}

static gboolean
available (CrunchProcPool *pool, const CrunchFunction *fn, GError **error)
{
  CrashRecord *rec;
  gint64 now = g_get_monotonic_time (), left = 0;

  g_mutex_lock (&pool->lock);
  rec = g_hash_table_lookup (pool->crashes, fn->name);
  if (rec != NULL && rec->until != 0 && rec->until <= now)
    forgive (rec);
  else if (rec != NULL && rec->until != 0)
    left = rec->until - now;
  g_mutex_unlock (&pool->lock);
  if (left == 0)
    return TRUE;
  g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_UNAVAILABLE,
               "%s is unavailable: it crashed %d times within %d s (retry in %d s)", fn->name,
               CRASH_LOOP_COUNT, (gint)(CRASH_LOOP_WINDOW_US / G_USEC_PER_SEC),
               (gint)((left + G_USEC_PER_SEC - 1) / G_USEC_PER_SEC));
  return FALSE;
}

/* Counts a crash of `fn`; TRUE if it is now unavailable. */
static gboolean
record_crash (CrunchProcPool *pool, const CrunchFunction *fn)
{
  gint64 now = g_get_monotonic_time ();
  CrashRecord *rec;
  gboolean loop;

  g_mutex_lock (&pool->lock);
  rec = g_hash_table_lookup (pool->crashes, fn->name);
  if (rec == NULL) {
    rec = g_new0 (CrashRecord, 1);
    g_hash_table_insert (pool->crashes, (gpointer)fn->name, rec);
  }
  rec->total++;
  rec->times[rec->next] = now;
  rec->next = (rec->next + 1) % CRASH_LOOP_COUNT;
  /* the oldest of the last five, if there are five */
  loop = rec->times[rec->next] != 0 && now - rec->times[rec->next] <= CRASH_LOOP_WINDOW_US;
  if (loop && rec->until == 0)
    rec->until = now + UNAVAILABLE_US;
  g_mutex_unlock (&pool->lock);
  if (loop)
    g_warning ("%s: %s crashed %d times within %d s: unavailable for %d s (or until SIGHUP)",
               pool->s.program, fn->name, CRASH_LOOP_COUNT,
               (gint)(CRASH_LOOP_WINDOW_US / G_USEC_PER_SEC),
               (gint)(UNAVAILABLE_US / G_USEC_PER_SEC));
  return loop;
}

/* ---- the pool ---- */

GBytes *
crunch_procpool_call (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel,
                      gpointer data, GError **error)
{
  CrunchProcPool *pool = data;
  guint attempts = fn->pure && pool->s.retries > 0 ? 2 : 1;

  for (guint attempt = 1;; attempt++) {
    g_autoptr (GError) local = NULL;
    gboolean gone = FALSE;
    GBytes *result;
    Proc *p;

    if (!available (pool, fn, error) || (p = acquire (pool, fn, cancel, error)) == NULL)
      return NULL;
    result = exchange (pool, p, fn, args, cancel, &gone, &local);
    g_mutex_lock (&pool->lock);
    pool->busy--;
    g_mutex_unlock (&pool->lock);
    if (!gone)
      release (pool, p);
    if (result != NULL ||
        !g_error_matches (local, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CRASHED) ||
        record_crash (pool, fn) || attempt >= attempts || crunch_cancelled (cancel)) {
      if (local != NULL)
        g_propagate_error (error, g_steal_pointer (&local));
      return result;
    }
    g_message ("%s: retrying %s on a fresh process", pool->s.program, fn->name);
  }
}

/* Every call of the batch fails with `why`. */
static void
fail_all (guint n, GError **errors, const GError *why)
{
  for (guint i = 0; i < n; i++)
    errors[i] = g_error_copy (why);
}

void
crunch_procpool_call_batch (const CrunchFunction *fn, guint n, GVariant *const *args,
                            const CrunchCancel *const *cancels, const CrunchCancel *all,
                            GBytes **results, GError **errors, gpointer data)
{
  CrunchProcPool *pool = data;
  guint attempts = fn->pure && pool->s.retries > 0 ? 2 : 1;

  if (n > fn->max_batch) { /* never from the scheduler; the worker would refuse it */
    for (guint i = 0; i < n; i += fn->max_batch)
      crunch_procpool_call_batch (fn, MIN (fn->max_batch, n - i), args + i, cancels + i, all,
                                  results + i, errors + i, data);
    return;
  }
  for (guint attempt = 1;; attempt++) {
    g_autoptr (GError) local = NULL;
    gboolean gone = FALSE, done;
    Proc *p;

    if (!available (pool, fn, &local) || (p = acquire (pool, fn, all, &local)) == NULL) {
      fail_all (n, errors, local);
      return;
    }
    done = exchange_batch (pool, p, fn, n, args, cancels, all, results, errors, &gone, &local);
    g_mutex_lock (&pool->lock);
    pool->busy--;
    g_mutex_unlock (&pool->lock);
    if (!gone)
      release (pool, p);
    if (done)
      return;
    if (g_error_matches (local, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_INVALID_ARGUMENT)) {
      /* too large for one frame: one call at a time, each within the limits or failing alone */
      for (guint i = 0; i < n; i++)
        results[i] = crunch_procpool_call (fn, args[i], cancels[i], pool, &errors[i]);
      return;
    }
    if (!g_error_matches (local, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CRASHED) ||
        record_crash (pool, fn) || crunch_cancelled (all)) {
      fail_all (n, errors, local);
      return;
    }
    if (n > 1) {
      /* one call may have crashed it: run them one at a time, so that only that call fails */
      g_message ("%s: a batch of %u calls of %s crashed its process; running them one at a time",
                 pool->s.program, n, fn->name);
      for (guint i = 0; i < n; i++)
        results[i] = crunch_procpool_call (fn, args[i], cancels[i], pool, &errors[i]);
      return;
    }
    if (attempt >= attempts) {
      fail_all (n, errors, local);
      return;
    }
    g_message ("%s: retrying a batch of %u calls of %s on a fresh process", pool->s.program, n,
               fn->name);
  }
}

void
crunch_procpool_settings_from_config (const CrunchConfig *config, const gchar *program,
                                      gchar **argv, CrunchProcPoolSettings *settings)
{
  *settings = (CrunchProcPoolSettings){
      .program = program,
      .argv = argv,
      .size = crunch_config_effective_threads (config),
      .kill_grace = config->kill_grace,
      .start_timeout = config->start_timeout,
      .memory_limit_mb = config->memory_limit,
      .nice = config->nice,
      .max_jobs = config->max_jobs_per_process,
      .retries = config->retries,
  };
}

CrunchProcPool *
crunch_procpool_new (const CrunchProcPoolSettings *settings)
{
  CrunchProcPool *pool = g_new0 (CrunchProcPool, 1);

  pool->s = *settings;
  pool->s.program = g_strdup (settings->program);
  pool->s.argv = g_strdupv (settings->argv);
  g_mutex_init (&pool->lock);
  g_cond_init (&pool->freed);
  g_queue_init (&pool->idle);
  pool->crashes = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, g_free);
  g_mutex_lock (&pools_lock);
  if (pools == NULL)
    pools = g_ptr_array_new ();
  g_ptr_array_add (pools, pool);
  g_mutex_unlock (&pools_lock);
  return pool;
}

CrunchWireHello *
crunch_procpool_start (CrunchProcPool *pool, GError **error)
{
  CrunchWireHello *hello = NULL;
  Proc *p;

  g_mutex_lock (&pool->lock);
  pool->alive++;
  g_mutex_unlock (&pool->lock);
  p = start_proc (pool, FALSE, &hello, error);
  g_mutex_lock (&pool->lock);
  if (p != NULL)
    g_queue_push_tail (&pool->idle, p);
  else
    pool->alive--;
  g_mutex_unlock (&pool->lock);
  return hello;
}

gboolean
crunch_procpool_load_program (const CrunchConfig *config, const gchar *name, const gchar *path,
                              GError **error)
{
  const gchar *argv[] = {path, NULL};
  CrunchProcPoolSettings settings;
  CrunchProcPool *pool;
  g_autoptr (GError) local = NULL;

  crunch_procpool_settings_from_config (config, name, (gchar **)argv, &settings);
  pool = crunch_procpool_new (&settings);
  pool->hello = crunch_procpool_start (pool, &local);
  if (pool->hello == NULL) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': program %s: %s", name, path, local->message);
    return FALSE; /* the pool is freed with the others (crunch_procpools_free_all) */
  }
  for (guint i = 0; i < pool->hello->n_functions; i++) {
    if (!crunch_functions_add_hooked (&pool->hello->functions[i], name, crunch_procpool_call, pool,
                                      &local)) {
      g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION, "%s (%s)",
                   local->message, path);
      return FALSE;
    }
    if (pool->hello->functions[i].max_batch > 1)
      crunch_functions_hook_batch (pool->hello->functions[i].name, crunch_procpool_call_batch);
  }
  g_info ("plugin '%s': program %s (%s %s) declared %u function(s)", name, path, pool->hello->name,
          pool->hello->version, pool->hello->n_functions);
  return TRUE;
}

gboolean
crunch_procpool_host_functions (CrunchProcPool *pool, GError **error)
{
  g_autoptr (CrunchWireHello) hello = crunch_procpool_start (pool, error);
  g_autofree const gchar **names = crunch_functions_list ();

  if (hello == NULL)
    return FALSE;
  for (guint i = 0; names[i] != NULL; i++) {
    gboolean declared = crunch_functions_lookup (names[i])->run != NULL; /* a program's */
    for (guint j = 0; !declared && j < hello->n_functions; j++)
      declared = g_str_equal (hello->functions[j].name, names[i]);
    if (!declared) {
      g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                   "%s does not declare function '%s' (does it load the same [plugins]?)",
                   pool->s.program, names[i]);
      return FALSE;
    }
  }
  crunch_functions_run_elsewhere (crunch_procpool_call, pool);
  /* batches go to the worker as batch frames where it takes them (it loads the same plugins) */
  for (guint j = 0; j < hello->n_functions; j++) {
    if (hello->functions[j].max_batch > 1)
      crunch_functions_hook_batch (hello->functions[j].name, crunch_procpool_call_batch);
  }
  return TRUE;
}

void
crunch_procpools_resize (guint size)
{
  g_mutex_lock (&pools_lock);
  for (guint i = 0; pools != NULL && i < pools->len; i++)
    crunch_procpool_set_size (pools->pdata[i], size);
  g_mutex_unlock (&pools_lock);
}

void
crunch_procpool_set_size (CrunchProcPool *pool, guint size)
{
  g_mutex_lock (&pool->lock);
  pool->s.size = MAX (size, 1);
  g_cond_broadcast (&pool->freed);
  g_mutex_unlock (&pool->lock);
}

void
crunch_procpool_free (CrunchProcPool *pool)
{
  gint64 until;
  Proc *p;

  if (pool == NULL)
    return;
  g_mutex_lock (&pools_lock);
  g_ptr_array_remove (pools, pool);
  g_mutex_unlock (&pools_lock);
  /* close every stdin first, so they all stop at once, then wait for each */
  for (GList *l = pool->idle.head; l != NULL; l = l->next) {
    Proc *q = l->data;
    close (q->in_fd);
    q->in_fd = -1;
  }
  g_mutex_lock (&pool->lock); /* recycled processes: bounded by kill_grace, then SIGKILL */
  while (pool->retiring > 0)
    g_cond_wait (&pool->freed, &pool->lock);
  g_mutex_unlock (&pool->lock);
  until = g_get_monotonic_time () + (gint64)(pool->s.kill_grace * G_USEC_PER_SEC);
  while ((p = g_queue_pop_head (&pool->idle)) != NULL) {
    crunch_child_reap (p->pid, MAX (until - g_get_monotonic_time (), 0));
    proc_free (p);
  }
  g_hash_table_unref (pool->crashes);
  crunch_wire_hello_free (pool->hello);
  g_mutex_clear (&pool->lock);
  g_cond_clear (&pool->freed);
  g_free ((gchar *)pool->s.program);
  g_strfreev (pool->s.argv);
  g_free (pool);
}

void
crunch_procpools_free_all (void)
{
  g_mutex_lock (&pools_lock);
  while (pools != NULL && pools->len > 0) {
    CrunchProcPool *pool = pools->pdata[pools->len - 1];
    g_mutex_unlock (&pools_lock);
    crunch_procpool_free (pool);
    g_mutex_lock (&pools_lock);
  }
  g_mutex_unlock (&pools_lock);
}

void
crunch_procpools_stopping (void)
{
  g_atomic_int_set (&stopping, TRUE);
}

void
crunch_procpools_forgive (void)
{
  g_mutex_lock (&pools_lock);
  for (guint i = 0; pools != NULL && i < pools->len; i++) {
    CrunchProcPool *pool = pools->pdata[i];
    GHashTableIter iter;
    gpointer rec;
    g_mutex_lock (&pool->lock);
    g_hash_table_iter_init (&iter, pool->crashes);
    while (g_hash_table_iter_next (&iter, NULL, &rec))
      forgive (rec);
    g_mutex_unlock (&pool->lock);
  }
  g_mutex_unlock (&pools_lock);
}

/* ---- figures ---- */

static void
append_program (GString *out, const gchar *program)
{
  g_string_append (out, "program=\"");
  for (const gchar *c = program; *c != '\0'; c++) {
    if (*c == '"' || *c == '\\')
      g_string_append_c (out, '\\');
    if (*c == '\n')
      g_string_append (out, "\\n");
    else
      g_string_append_c (out, *c);
  }
  g_string_append_c (out, '"');
}

static void
render_pool (CrunchProcPool *pool, GString *gauges, GString *events, GString *down,
             GString *crashes)
{
  gint64 now = g_get_monotonic_time ();
  GHashTableIter iter;
  gpointer name, value;

  g_mutex_lock (&pool->lock);
  for (guint i = 0; i < 2; i++) {
    g_string_append (gauges, "crunchd_processes{");
    append_program (gauges, pool->s.program);
    g_string_append_printf (gauges, ",state=\"%s\"} %u\n", i ? "busy" : "alive",
                            i ? pool->busy : pool->alive);
  }
  for (guint e = 0; e < EV_COUNT; e++) {
    g_string_append (events, "crunchd_process_events_total{");
    append_program (events, pool->s.program);
    g_string_append_printf (events, ",event=\"%s\"} %" G_GUINT64_FORMAT "\n", event_names[e],
                            pool->events[e]);
  }
  g_hash_table_iter_init (&iter, pool->crashes);
  while (g_hash_table_iter_next (&iter, &name, &value)) {
    const CrashRecord *rec = value;
    g_string_append_printf (down, "crunchd_function_unavailable{function=\"%s\"} %d\n",
                            (const gchar *)name, rec->until > now ? 1 : 0);
    g_string_append_printf (
        crashes, "crunchd_function_crashes_total{function=\"%s\"} %" G_GUINT64_FORMAT "\n",
        (const gchar *)name, rec->total);
  }
  g_mutex_unlock (&pool->lock);
}

void
crunch_procpools_render_metrics (GString *out, gpointer data)
{
  g_autoptr (GString) gauges = g_string_new (NULL);
  g_autoptr (GString) events = g_string_new (NULL);
  g_autoptr (GString) down = g_string_new (NULL);
  g_autoptr (GString) crashes = g_string_new (NULL);

  g_mutex_lock (&pools_lock);
  for (guint i = 0; pools != NULL && i < pools->len; i++)
    render_pool (pools->pdata[i], gauges, events, down, crashes);
  g_mutex_unlock (&pools_lock);
  if (gauges->len == 0)
    return;
  g_string_append_printf (out,
                          "# HELP crunchd_processes Worker processes, by program: alive, and busy "
                          "running a call.\n# TYPE crunchd_processes gauge\n%s"
                          "# HELP crunchd_process_events_total Worker process events, by program: "
                          "start, crash, kill (a cancelled call ignored its cancel), recycle "
                          "(max_jobs_per_process), protocol_error, oom.\n"
                          "# TYPE crunchd_process_events_total counter\n%s"
                          "# HELP crunchd_function_unavailable 1 while a crash-looping function "
                          "is refused (503).\n# TYPE crunchd_function_unavailable gauge\n%s"
                          "# HELP crunchd_function_crashes_total Calls whose worker process died, "
                          "by function.\n# TYPE crunchd_function_crashes_total counter\n%s",
                          gauges->str, events->str, down->str, crashes->str);
}

gchar *
crunch_procpools_summary (void)
{
  GString *text = g_string_new (NULL);
  gint64 now = g_get_monotonic_time ();

  g_mutex_lock (&pools_lock);
  for (guint i = 0; pools != NULL && i < pools->len; i++) {
    CrunchProcPool *pool = pools->pdata[i];
    GHashTableIter iter;
    gpointer name, value;
    g_mutex_lock (&pool->lock);
    g_string_append_printf (text, "%s%s: %u alive, %u busy, %" G_GUINT64_FORMAT " crashes",
                            text->len ? "; " : "", pool->s.program, pool->alive, pool->busy,
                            pool->events[EV_CRASH]);
    g_hash_table_iter_init (&iter, pool->crashes);
    while (g_hash_table_iter_next (&iter, &name, &value)) {
      if (((CrashRecord *)value)->until > now)
        g_string_append_printf (text, ", %s unavailable", (const gchar *)name);
    }
    g_mutex_unlock (&pool->lock);
  }
  g_mutex_unlock (&pools_lock);
  return g_string_free (text, text->len == 0);
}
