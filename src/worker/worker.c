/* worker.c - crunchd-worker: takes jobs from NATS, runs them on a GThreadPool, replies.
 *
 * DESIGN
 * Slots: one per thread. An idle slot holds one queue subscription on PREFIX.job.* (group
 * crunchd-workers) that the server itself ends after one message (auto-unsubscribe 1). So the
 * server never hands this worker more jobs than it has idle slots: a busy or frozen worker stops
 * receiving new jobs without having to do anything. A finished job re-subscribes its slot
 * *before* its reply is published: the front end sees the answer and sends the next job only
 * after the server (same connection, in order) knows the slot is free again.
 * Threads: each slot is one long task of the GThreadPool (slot_loop()): its subscription is
 * synchronous, so nats.c's reader thread hands a job message straight to the thread that runs
 * it (decode, register, run, re-subscribe, reply), with no delivery thread in between. nats.c's
 * shared delivery thread runs on_presence and on_cancel; the thread of our timer service (a
 * CrunchParked of parked.c, the same timers crunchd uses) sends "running" heartbeats and cancels
 * jobs past their deadline; the main thread calls new, stop and free.
 * Subscriptions are never freed while the connection's reader thread may still hold one: they
 * are retired (taken out of nats.c's table) and freed by reap() on the main thread once a flush
 * has come back, or after the connection is closed (see retire_locked()).
 * `lock` guards the slots, the set of running tasks, each task's timer entries, the retired
 * subscriptions and the counters.
 * A timer holds a reference to its task and acts only while the task still has that timer (a
 * finished task's timers are removed under `lock`). Lock order: `lock`, then the timers'. */
#include "worker.h"

#include <gio/gio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "args.h"
#include "executor.h"
#include "functions.h"
#include "nats-link.h"
#include "parked.h"

#define CLOSE_WAIT_US (5 * G_USEC_PER_SEC)
/* Bounds on what a job message asks for (task_new()). */
#define HEARTBEAT_MIN_US (10 * 1000)
#define HEARTBEAT_MAX_US (900 * G_USEC_PER_SEC)
#define DEADLINE_MAX_US ((gint64)30 * 24 * 3600 * G_USEC_PER_SEC)
/* How often retired subscriptions are freed, and how long the flush that proves them unused may
 * take (the main thread waits for it) */
#define REAP_INTERVAL_S 1
#define REAP_FLUSH_MS 500

typedef struct {
  CrunchWorker *w;
  guint index;
  natsSubscription *sub; /* synchronous; made by subscribe_all(), then replaced and retired
                          * by the slot's thread only */
} Slot;

typedef struct {
  Slot *slot;
  gchar *request_id, *reply;
  const CrunchFunction *fn;
  CrunchJob *job; /* NULL for a malformed message; its cancel flag says what stopped it */
  CrunchParkedEntry *deadline, *heartbeat; /* timers on w->timers */
  gint64 heartbeat_us;
} Task;

struct CrunchWorker {
  natsConnection *nc;
  gchar *id, *prefix, *job_subject, *servers;
  Slot *slots;
  guint n_slots;
  natsSubscription *presence, *cancel;
  GThreadPool *pool; /* one slot_loop() per slot */
  gint nice;
  CrunchParked *timers; /* our timer service (parked.c): deadlines and heartbeats */

  GMutex lock;
  GCond cond;
  GHashTable *running; /* Task* set */
  guint active;        /* accepted, reply not yet sent */
  guint64 done;
  gboolean stopping, conn_closed;
  guint live_subs;    /* subscriptions nats.c has not finished with (see track_locked) */
  GPtrArray *retired; /* natsSubscription*, out of nats.c's table, not yet freed */
  guint64 reaped;     /* retired subscriptions reap() has freed */
  guint reaper;       /* reap(), on the main context */
  GSourceFunc stopped;
  gpointer stopped_data;
};

/* ---- replies ---- */

static natsStatus
reply (CrunchWorker *w, const gchar *subject, CrunchWireStatus status, GBytes *result,
       const gchar *error, gint64 elapsed_us)
{
  gsize size = 0;
  gconstpointer data = result ? g_bytes_get_data (result, &size) : NULL;
  natsMsg *msg = NULL;
  natsStatus s;

  if (subject == NULL)
    return NATS_INVALID_ARG;
  if (size > G_MAXINT)
    return NATS_MAX_PAYLOAD;
  s = natsMsg_Create (&msg, subject, NULL, data, (int)size);
  if (s != NATS_OK)
    return s;
  natsMsgHeader_Set (msg, CRUNCH_HDR_STATUS, crunch_wire_status_name (status));
  natsMsgHeader_Set (msg, CRUNCH_HDR_WORKER, w->id);
  if (error != NULL)
    natsMsgHeader_Set (msg, CRUNCH_HDR_ERROR, error);
  if (status != CRUNCH_WIRE_RUNNING)
    crunch_nats_header_set_int (msg, CRUNCH_HDR_ELAPSED, elapsed_us);
  s = natsConnection_PublishMsg (w->nc, msg);
  natsMsg_Destroy (msg);
  return s;
}

/* CrunchCancel.progress of a task's job, on the pool thread that runs it (throttled by the
 * host): a "running" message that carries the report. */
static void
task_progress (gpointer data, gdouble fraction, const gchar *message)
{
  Task *t = data;
  gchar value[G_ASCII_DTOSTR_BUF_SIZE];
  natsMsg *msg = NULL;

  if (natsMsg_Create (&msg, t->reply, NULL, message, message ? (int)strlen (message) : 0) !=
      NATS_OK)
    return;
  natsMsgHeader_Set (msg, CRUNCH_HDR_STATUS, crunch_wire_status_name (CRUNCH_WIRE_RUNNING));
  natsMsgHeader_Set (msg, CRUNCH_HDR_WORKER, t->slot->w->id);
  natsMsgHeader_Set (msg, CRUNCH_HDR_PROGRESS, g_ascii_dtostr (value, sizeof value, fraction));
  natsConnection_PublishMsg (t->slot->w->nc, msg);
  natsMsg_Destroy (msg);
}

/* ---- slots ---- */

/* nats.c ends an asynchronous subscription (presence, cancel) with a message to its shared
 * delivery thread; one still queued at exit is leaked. So each is counted until that message has
 * been handled (its completion callback), and crunch_worker_free() waits for the count to reach
 * zero. */
static void
on_sub_complete (void *closure)
{
  CrunchWorker *w = closure;

  g_mutex_lock (&w->lock);
  w->live_subs--;
  g_cond_broadcast (&w->cond);
  g_mutex_unlock (&w->lock);
}

/* With the lock held, before any auto-unsubscribe (which could end it). */
static natsStatus
track_locked (CrunchWorker *w, natsSubscription *sub)
{
  natsStatus s = natsSubscription_SetOnCompleteCB (sub, on_sub_complete, w);

  if (s == NATS_OK)
    w->live_subs++;
  return s;
}

/* With the lock held: ends *sub (if any) without freeing it. nats.c 3.4 (Debian 12) looks up an
 * incoming message's subscription, lets go of its table's lock, and only then locks the
 * subscription; one freed in that gap is used after it was freed (nats.c #637, fixed in 3.6;
 * ASan caught the reader thread crashing in CI when a slot re-subscribed right after a job). So
 * it is unsubscribed (out of the table) here and freed by reap() after a flush: the reader
 * handles the flush's PONG after everything it read before, so by then it holds no pointer to
 * it. */
static void
retire_locked (CrunchWorker *w, natsSubscription **sub)
{
  if (*sub == NULL)
    return;
  if (natsSubscription_IsValid (*sub))
    natsSubscription_Unsubscribe (*sub);
  g_ptr_array_add (w->retired, g_steal_pointer (sub));
}

/* Main thread, every REAP_INTERVAL_S: frees the subscriptions retired before a flush that came
 * back; after a failed one they wait for the next. Not tried while the connection is down (a
 * flush would only wait out its timeout, and the main thread with it). */
static gboolean
reap (gpointer data)
{
  CrunchWorker *w = data;
  g_autoptr (GPtrArray) batch = NULL;
  natsStatus s;

  if (natsConnection_Status (w->nc) != NATS_CONN_STATUS_CONNECTED)
    return G_SOURCE_CONTINUE;
  g_mutex_lock (&w->lock);
  if (w->retired->len > 0) {
    batch = g_steal_pointer (&w->retired);
    w->retired = g_ptr_array_new_with_free_func ((GDestroyNotify)natsSubscription_Destroy);
  }
  g_mutex_unlock (&w->lock);
  if (batch == NULL)
    return G_SOURCE_CONTINUE;
  s = natsConnection_FlushTimeout (w->nc, REAP_FLUSH_MS);
  g_mutex_lock (&w->lock);
  if (s == NATS_OK)
    w->reaped += batch->len;
  else
    g_ptr_array_extend_and_steal (w->retired, g_steal_pointer (&batch));
  g_mutex_unlock (&w->lock);
  return G_SOURCE_CONTINUE;
}

/* With the lock held, on the slot's thread (or before its loop starts): listen for exactly one
 * more job on this slot. */
static void
subscribe_slot_locked (Slot *slot)
{
  CrunchWorker *w = slot->w;
  natsStatus s;

  retire_locked (w, &slot->sub);
  if (w->stopping)
    return;
  s = natsConnection_QueueSubscribeSync (&slot->sub, w->nc, w->job_subject,
                                         CRUNCH_NATS_QUEUE_GROUP);
  if (s == NATS_OK)
    s = natsSubscription_AutoUnsubscribe (slot->sub, 1);
  if (s != NATS_OK) {
    g_warning ("slot %u: cannot subscribe to %s: %s", slot->index, w->job_subject,
               natsStatus_GetText (s));
    retire_locked (w, &slot->sub);
  }
}

/* ---- tasks ---- */

static void
task_clear (gpointer data)
{
  Task *t = data;

  g_free (t->request_id);
  g_free (t->reply);
  g_clear_pointer (&t->job, crunch_job_unref);
}

/* A task is reference-counted (g_atomic_rc_box): a timer that fires holds it while it looks. */
static gpointer
task_ref (gpointer t)
{
  return g_atomic_rc_box_acquire (t);
}

static void
task_free (gpointer t)
{
  g_atomic_rc_box_release_full (t, task_clear);
}

static void
task_stop_timers_locked (Task *t)
{
  CrunchParked *timers = t->slot->w->timers;

  crunch_parked_remove (timers, g_steal_pointer (&t->deadline));
  crunch_parked_remove (timers, g_steal_pointer (&t->heartbeat));
}

static CrunchWireStatus
wire_status (CrunchJobOutcome reason)
{
  switch (reason) {
  case CRUNCH_JOB_TIMED_OUT:
    return CRUNCH_WIRE_TIMED_OUT;
  case CRUNCH_JOB_SHUTDOWN:
    return CRUNCH_WIRE_SHUTDOWN;
  case CRUNCH_JOB_CRASHED:
    return CRUNCH_WIRE_CRASHED;
  case CRUNCH_JOB_UNAVAILABLE:
    return CRUNCH_WIRE_UNAVAILABLE;
  default:
    return CRUNCH_WIRE_CANCELLED;
  }
}

/* The slot's thread: run (as the front end's local threads do), free the slot, reply. */
static void
run_task (Task *t)
{
  CrunchWorker *w = t->slot->w;
  CrunchJob *job = t->job;
  CrunchWireStatus status;

  crunch_job_run (job);
  if (job->outcome == CRUNCH_JOB_OK)
    status = CRUNCH_WIRE_OK;
  else if (job->outcome == CRUNCH_JOB_FAILED)
    status = CRUNCH_WIRE_FAILED;
  else
    status = wire_status (job->outcome);

  g_mutex_lock (&w->lock);
  g_hash_table_remove (w->running, t);
  task_stop_timers_locked (t);
  subscribe_slot_locked (t->slot);
  g_mutex_unlock (&w->lock);

  if (reply (w, t->reply, status, job->result, job->error, job->t_finished - job->t_started) ==
      NATS_MAX_PAYLOAD) {
    /* one message cannot carry it: fail the job once, rather than let the front end wait, try
     * again and compute it on every attempt */
    g_autofree gchar *error = g_strdup_printf (
        "its result (%" G_GSIZE_FORMAT " bytes, and the message's headers) does not fit in one "
        "NATS message: the server's max_payload is %" G_GINT64_FORMAT " bytes",
        job->result ? g_bytes_get_size (job->result) : 0, natsConnection_GetMaxPayload (w->nc));
    g_message ("%s", error);
    reply (w, t->reply, CRUNCH_WIRE_FAILED, NULL, error, job->t_finished - job->t_started);
  }

  g_mutex_lock (&w->lock);
  w->active--;
  w->done++;
  if (w->stopping && w->active == 0 && w->stopped != NULL)
    g_idle_add (w->stopped, w->stopped_data);
  g_mutex_unlock (&w->lock);
  task_free (t);
}

static void
on_heartbeat (gpointer item, CrunchJobOutcome why, gpointer data)
{
  Task *t = item;
  CrunchWorker *w = t->slot->w;

  g_autofree gchar *subject = NULL;

  g_mutex_lock (&w->lock);
  if (t->heartbeat != NULL) { /* still running */
    subject = g_strdup (t->reply);
    crunch_parked_rearm (w->timers, t->heartbeat, g_get_monotonic_time () + t->heartbeat_us);
  }
  g_mutex_unlock (&w->lock);
  if (subject != NULL) /* published outside the lock; a late one is ignored by the front end */
    reply (w, subject, CRUNCH_WIRE_RUNNING, NULL, NULL, 0);
}

/* First reason wins, as with crunch_job_cancel(). */
static void
task_cancel (Task *t, CrunchJobOutcome reason)
{
  crunch_job_cancel (t->job, reason);
}

static void
on_deadline (gpointer item, CrunchJobOutcome why, gpointer data)
{
  Task *t = item;
  CrunchWorker *w = t->slot->w;

  g_mutex_lock (&w->lock);
  if (t->deadline != NULL) /* still running */
    task_cancel (t, CRUNCH_JOB_TIMED_OUT);
  g_mutex_unlock (&w->lock);
}

static const CrunchParkedKind deadline_kind = {on_deadline, NULL, task_ref, task_free};
static const CrunchParkedKind heartbeat_kind = {on_heartbeat, NULL, task_ref, task_free};

/* Arguments are decoded only as the flat tuple the function declares: whatever type a message
 * names (a nested one, a huge one), nothing else is ever built from its bytes. */
static gboolean
args_type_expected (const CrunchFunction *fn, const gchar *type, GError **error)
{
  g_autofree gchar *want = crunch_function_args_type (fn);
  g_autofree gchar *got = NULL;

  if (g_strcmp0 (type, want) == 0)
    return TRUE;
  got = crunch_args_echo (type != NULL ? type : "");
  g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
               "bad arguments: %s takes %s, the message says '%s'", fn->name, want, got);
  return FALSE;
}

/* The job message -> a task; NULL + error for a malformed request. */
static Task *
task_new (Slot *slot, natsMsg *msg, gint64 *deadline_us, GError **error)
{
  const gchar *subject = natsMsg_GetSubject (msg);
  const gchar *name = strrchr (subject, '.') + 1; /* PREFIX.job.<function> */
  g_autoptr (GError) local = NULL;
  Task *t;
  gint64 wall, own;

  t = g_atomic_rc_box_new0 (Task);
  t->slot = slot;
  t->reply = g_strdup (natsMsg_GetReply (msg));
  t->request_id = g_strdup (crunch_nats_header (msg, CRUNCH_HDR_REQUEST_ID));
  t->fn = crunch_functions_lookup (name);
  /* Anyone who may publish on the server can send a job message, so its numbers are bounded:
   * a heartbeat within what a front end's attempt_timeout gives (a quarter of 0.05-3600 s); a
   * message without a deadline gets the function's own (as crunchd gives its calls). */
  t->heartbeat_us = crunch_nats_header_int (msg, CRUNCH_HDR_HEARTBEAT, 0);
  if (t->heartbeat_us > 0)
    t->heartbeat_us = CLAMP (t->heartbeat_us, HEARTBEAT_MIN_US, HEARTBEAT_MAX_US);
  wall = crunch_nats_header_int (msg, CRUNCH_HDR_DEADLINE, 0);
  own = t->fn != NULL ? __atomic_load_n (&t->fn->timeout_us, __ATOMIC_RELAXED) : 0;
  /* the front end's wall-clock deadline, on our monotonic clock */
  if (wall > 0) /* 0 would read as none: one long past is as good */
    *deadline_us = g_get_monotonic_time () + MIN (wall - g_get_real_time (), DEADLINE_MAX_US) ?: -1;
  else
    *deadline_us = own > 0 ? g_get_monotonic_time () + own : 0;
  if (t->fn == NULL) {
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_FOUND, "worker %s has no function '%s'",
                 slot->w->id, name);
  } else if (t->reply == NULL || t->request_id == NULL) {
    g_set_error_literal (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                         "malformed job message: no reply subject or request id");
  } else if (args_type_expected (t->fn, crunch_nats_header (msg, CRUNCH_HDR_ARGS_TYPE), error)) {
    g_autoptr (GVariant) args =
        crunch_nats_args_decode (crunch_nats_header (msg, CRUNCH_HDR_ARGS_TYPE),
                                 natsMsg_GetData (msg), (gsize)natsMsg_GetDataLength (msg), &local);
    if (args != NULL) {
      t->job = crunch_job_new (t->fn, args);
      t->job->cancel.progress = task_progress;
      t->job->cancel.progress_data = t;
    } else
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA, "bad arguments: %s", local->message);
  }
  return t;
}

/* The slot's thread: its one job, refused or run; the slot listens again before the reply. The
 * message is destroyed after the reply: nats.c hands it to its garbage-collector thread, and
 * that wake-up is kept off the answer's path. */
static void
take_job (Slot *slot, natsMsg *msg)
{
  CrunchWorker *w = slot->w;
  g_autoptr (GError) error = NULL;
  gint64 deadline_us;
  Task *t = task_new (slot, msg, &deadline_us, &error);
  CrunchWireStatus refusal = CRUNCH_WIRE_UNKNOWN;

  g_mutex_lock (&w->lock);
  if (error != NULL)
    refusal = CRUNCH_WIRE_FAILED;
  else if (w->stopping)
    refusal = CRUNCH_WIRE_SHUTDOWN;
  else if (deadline_us != 0 && deadline_us <= g_get_monotonic_time ())
    refusal = CRUNCH_WIRE_TIMED_OUT;
  if (refusal != CRUNCH_WIRE_UNKNOWN) {
    subscribe_slot_locked (slot);
    g_mutex_unlock (&w->lock);
    reply (w, t->reply, refusal, NULL, error ? error->message : NULL, 0);
    task_free (t);
    natsMsg_Destroy (msg);
    return;
  }
  g_hash_table_add (w->running, t);
  t->job->deadline_us = deadline_us; /* passed on to program plugins' processes */
  w->active++;
  if (deadline_us != 0)
    t->deadline = crunch_parked_add_timer (w->timers, deadline_us, t, &deadline_kind);
  if (t->heartbeat_us > 0)
    t->heartbeat = crunch_parked_add_timer (w->timers, g_get_monotonic_time () + t->heartbeat_us, t,
                                            &heartbeat_kind);
  g_mutex_unlock (&w->lock);
  run_task (t);
  natsMsg_Destroy (msg);
}

/* How long a slot waits for a job before it looks at `stopping` again (stop() also ends the wait
 * by unsubscribing), and before it subscribes again after a failure. */
#define SLOT_WAIT_MS 500
#define SLOT_RETRY_US (100 * 1000)

/* A pool thread, for the worker's life: one slot's jobs, one at a time. */
static void
slot_loop (gpointer data, gpointer user_data)
{
  Slot *slot = data;
  CrunchWorker *w = user_data;

  crunch_worker_thread_prepare (w->nice, CRUNCH_WORKER_POLICY_OTHER);
  g_mutex_lock (&w->lock);
  while (!w->stopping) {
    natsSubscription *sub = slot->sub; /* only this thread replaces or retires it */
    natsMsg *msg = NULL;
    natsStatus s;

    g_mutex_unlock (&w->lock);
    s = sub != NULL ? natsSubscription_NextMsg (&msg, sub, SLOT_WAIT_MS)
                    : NATS_INVALID_SUBSCRIPTION;
    if (s == NATS_OK)
      take_job (slot, msg);
    else if (s != NATS_TIMEOUT && !g_atomic_int_get (&w->stopping)) {
      g_debug ("slot %u: no job message (%s); subscribing again", slot->index,
               natsStatus_GetText (s));
      g_usleep (SLOT_RETRY_US);
    }
    g_mutex_lock (&w->lock);
    if (s != NATS_OK && s != NATS_TIMEOUT) {
      /* a connection closed for good ([nats] max_reconnect) takes no subscription: wait */
      while (w->conn_closed && !w->stopping)
        g_cond_wait (&w->cond, &w->lock);
      subscribe_slot_locked (slot);
    }
  }
  retire_locked (w, &slot->sub);
  g_mutex_unlock (&w->lock);
  /* nats.c's error state for this thread (every wait that timed out set it). A pool thread may
   * end only after crunch_nats_library_close() deleted the library's key, and then that state
   * would never be freed (LeakSanitizer found it in CI); freed here, before the pool says done. */
  nats_ReleaseThreadMemory ();
}

/* Any live worker answers at once: tells a front end "workers exist, all busy". */
static void
on_presence (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
  const gchar *to = natsMsg_GetReply (msg);

  if (to != NULL)
    natsConnection_Publish (nc, to, NULL, 0);
  natsMsg_Destroy (msg);
}

/* A front end no longer wants a request (client gone, deadline, answered by another worker). */
static void
on_cancel (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
  CrunchWorker *w = closure;
  g_autofree gchar *id = g_strndup (natsMsg_GetData (msg), (gsize)natsMsg_GetDataLength (msg));
  GHashTableIter iter;
  gpointer t;

  natsMsg_Destroy (msg);
  g_mutex_lock (&w->lock);
  g_hash_table_iter_init (&iter, w->running);
  while (g_hash_table_iter_next (&iter, &t, NULL)) {
    if (g_strcmp0 (((Task *)t)->request_id, id) == 0)
      task_cancel (t, CRUNCH_JOB_CLIENT_GONE);
  }
  g_mutex_unlock (&w->lock);
}

/* ---- connection ---- */

/* Main context: subscriptions are on a server once a flush round trip is done. */
static gboolean
announce (gpointer data)
{
  CrunchWorker *w = data;
  g_autofree gchar *url = crunch_nats_connected_url (w->nc);

  natsConnection_FlushTimeout (w->nc, 2000);
  g_message ("crunchd-worker %s ready: %u slot(s), connected to %s, jobs from %s", w->id,
             w->n_slots, url, w->job_subject);
  return G_SOURCE_REMOVE;
}

static void
on_connected (natsConnection *nc, void *closure)
{
  g_idle_add (announce, closure);
}

static void
on_disconnected (natsConnection *nc, void *closure)
{
  CrunchWorker *w = closure;

  if (!g_atomic_int_get (&w->stopping))
    g_warning ("crunchd-worker %s: connection to NATS lost; reconnecting", w->id);
}

static void
on_reconnected (natsConnection *nc, void *closure)
{
  CrunchWorker *w = closure;
  g_autofree gchar *url = crunch_nats_connected_url (nc);

  g_message ("crunchd-worker %s: reconnected to %s", w->id, url);
}

static void
on_closed (natsConnection *nc, void *closure)
{
  CrunchWorker *w = closure;

  g_mutex_lock (&w->lock);
  if (!w->stopping)
    g_critical ("crunchd-worker %s: NATS connection closed for good ([nats] max_reconnect)", w->id);
  w->conn_closed = TRUE;
  g_cond_broadcast (&w->cond);
  g_mutex_unlock (&w->lock);
}

static gboolean
subscribe_all (CrunchWorker *w, GError **error)
{
  g_autofree gchar *presence = crunch_nats_subject (w->prefix, "presence");
  g_autofree gchar *cancel = crunch_nats_subject (w->prefix, "cancel");
  natsStatus s;

  /* not a queue group: every worker answers, so one frozen worker cannot stall the probe */
  s = natsConnection_Subscribe (&w->presence, w->nc, presence, on_presence, w);
  if (s == NATS_OK)
    s = natsConnection_Subscribe (&w->cancel, w->nc, cancel, on_cancel, w);
  g_mutex_lock (&w->lock);
  if (s == NATS_OK)
    s = track_locked (w, w->presence);
  if (s == NATS_OK)
    s = track_locked (w, w->cancel);
  if (s != NATS_OK) {
    g_mutex_unlock (&w->lock);
    crunch_nats_set_error (error, s, "NATS subscribe");
    return FALSE;
  }
  /* every slot listens before new() returns, so "ready" (after a flush) means ready */
  for (guint i = 0; i < w->n_slots; i++)
    subscribe_slot_locked (&w->slots[i]);
  g_mutex_unlock (&w->lock);
  for (guint i = 0; i < w->n_slots; i++)
    g_thread_pool_push (w->pool, &w->slots[i], NULL);
  return TRUE;
}

CrunchWorker *
crunch_worker_new (const CrunchConfig *config, guint threads, const gchar *id, GError **error)
{
  CrunchWorker *w = g_new0 (CrunchWorker, 1);
  CrunchNatsHandlers handlers = {on_connected, on_disconnected, on_reconnected, on_closed, w};
  g_autofree gchar *name = NULL;
  gboolean connected = FALSE;

  w->id = g_strdup (id);
  w->prefix = g_strdup (config->nats.subject_prefix);
  w->job_subject = crunch_nats_subject (w->prefix, "job.*");
  w->servers = g_strjoinv (", ", config->nats.servers);
  w->nice = config->worker.nice;
  w->n_slots = threads;
  w->slots = g_new0 (Slot, threads);
  for (guint i = 0; i < threads; i++)
    w->slots[i] = (Slot){w, i, NULL};
  g_mutex_init (&w->lock);
  g_cond_init (&w->cond);
  w->running = g_hash_table_new (NULL, NULL);
  w->retired = g_ptr_array_new_with_free_func ((GDestroyNotify)natsSubscription_Destroy);
  w->timers = crunch_parked_new (on_deadline, NULL, task_ref, task_free);
  w->pool = g_thread_pool_new (slot_loop, w, (gint)threads, TRUE, NULL);

  name = g_strconcat ("crunchd-worker ", id, NULL);
  /* one delivery thread for the presence and cancel subscriptions */
  w->nc = crunch_nats_connect (config, name, TRUE, &handlers, &connected, error);
  if (w->nc == NULL || !subscribe_all (w, error)) {
    w->stopping = TRUE;
    crunch_worker_free (w);
    return NULL;
  }
  w->reaper = g_timeout_add_seconds (REAP_INTERVAL_S, reap, w);
  if (connected)
    announce (w);
  else
    g_warning ("crunchd-worker %s: no NATS server reachable at %s yet; retrying", id, w->servers);
  return w;
}

const gchar *
crunch_worker_id (CrunchWorker *self)
{
  return self->id;
}

/* With the lock held: no new jobs; each slot's loop ends after its job, if it has one. A job
 * message the server sent just before the UNSUB is dropped with the subscription (the front end
 * sends it again after its attempt_timeout). */
static void
stop_slots_locked (CrunchWorker *w)
{
  g_atomic_int_set (&w->stopping, TRUE); /* on_disconnected reads it without the lock */
  g_cond_broadcast (&w->cond);
  /* ends a slot's wait at once; its thread retires the subscription */
  for (guint i = 0; i < w->n_slots; i++)
    if (w->slots[i].sub != NULL)
      natsSubscription_Unsubscribe (w->slots[i].sub);
}

void
crunch_worker_stop (CrunchWorker *w, GSourceFunc stopped, gpointer data)
{
  g_mutex_lock (&w->lock);
  stop_slots_locked (w);
  w->stopped = stopped;
  w->stopped_data = data;
  retire_locked (w, &w->presence);
  if (w->active == 0)
    g_idle_add (stopped, data);
  g_mutex_unlock (&w->lock);
}

void
crunch_worker_cancel_running (CrunchWorker *w)
{
  GHashTableIter iter;
  gpointer t;

  g_mutex_lock (&w->lock);
  g_hash_table_iter_init (&iter, w->running);
  while (g_hash_table_iter_next (&iter, &t, NULL))
    task_cancel (t, CRUNCH_JOB_SHUTDOWN);
  g_mutex_unlock (&w->lock);
}

guint
crunch_worker_running (CrunchWorker *w)
{
  guint n;

  g_mutex_lock (&w->lock);
  n = w->active;
  g_mutex_unlock (&w->lock);
  return n;
}

void
crunch_worker_abandon (CrunchWorker *w)
{
  if (w->nc == NULL)
    return;
  if (natsConnection_Status (w->nc) == NATS_CONN_STATUS_CONNECTED)
    natsConnection_FlushTimeout (w->nc, 1000);
  natsConnection_Close (w->nc); /* the heartbeats stop: front ends send the jobs elsewhere */
}

void
crunch_worker_free (CrunchWorker *w)
{
  gint64 until = g_get_monotonic_time () + CLOSE_WAIT_US;

  if (w == NULL)
    return;
  g_clear_handle_id (&w->reaper, g_source_remove);
  g_mutex_lock (&w->lock); /* already done by stop(), except after a failed new() */
  stop_slots_locked (w);
  g_mutex_unlock (&w->lock);
  g_thread_pool_free (w->pool, FALSE, TRUE);
  /* No task is left, so no timer either; joining the timer thread waits out a heartbeat that
   * fired just before the last job ended and has yet to publish: the connection is still open. */
  g_clear_pointer (&w->timers, crunch_parked_free);
  g_message ("crunchd-worker %s stopped: %" G_GUINT64_FORMAT " job(s) done, %" G_GUINT64_FORMAT
             " ended subscription(s) freed while running",
             w->id, w->done, w->reaped);
  if (w->nc != NULL) {
    /* the last replies; without a connection there is nothing to flush to, and waiting would
     * only delay the exit by the whole timeout */
    if (natsConnection_Status (w->nc) == NATS_CONN_STATUS_CONNECTED)
      natsConnection_FlushTimeout (w->nc, 1000);
    natsConnection_Close (w->nc);
    g_mutex_lock (&w->lock);
    while ((!w->conn_closed || w->live_subs > 0) && g_cond_wait_until (&w->cond, &w->lock, until))
      ;
    if (w->live_subs > 0)
      g_warning ("crunchd-worker %s: %u subscription(s) not closed within %d s", w->id,
                 w->live_subs, (gint)(CLOSE_WAIT_US / G_USEC_PER_SEC));
    g_mutex_unlock (&w->lock);
  }
  /* closed: nats.c's reader thread has ended, so none of them is in use */
  g_clear_pointer (&w->presence, natsSubscription_Destroy); /* the slots' loops retired theirs */
  g_clear_pointer (&w->cancel, natsSubscription_Destroy);
  g_clear_pointer (&w->retired, g_ptr_array_unref);
  natsConnection_Destroy (w->nc);
  g_hash_table_unref (w->running);
  g_mutex_clear (&w->lock);
  g_cond_clear (&w->cond);
  g_free (w->slots);
  g_free (w->id);
  g_free (w->prefix);
  g_free (w->job_subject);
  g_free (w->servers);
  g_free (w);
}
