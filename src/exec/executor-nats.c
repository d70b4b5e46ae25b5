/* executor-nats.c - the NATS executor: each job is a request to the crunchd-workers queue group.
 *
 * DESIGN
 * Every submitted job is a Pending entry in `pending` (id -> entry, guarded by `lock`) until it
 * has its outcome. An entry has one timer (an entry of our own CrunchParked, the timer service of
 * parked.c) whose due time depends on the entry's stage, and is never later than the job's
 * deadline (firing there means 504):
 *   WAIT_REPLY      a job message is out. Due at now + attempt_timeout, pushed back by every
 *                   "running" heartbeat of the worker; firing means the attempt is lost (worker
 *                   died or froze): publish again, at most `retries` times, then 504.
 *   WAIT_PRESENCE   the job had no responders. Workers only listen while they have a free
 *                   thread, so a presence probe (every live worker answers; the first answer
 *                   counts) tells "all busy" (-> WAIT_BACKOFF) from "nobody there" (-> fallback
 *                   or 503 at once). Unanswered within 100 ms (only frozen workers heard it):
 *                   send the job again.
 *   WAIT_BACKOFF    all workers busy: publish again after 2 ms, doubling up to 100 ms.
 *   WAIT_CONNECTION no NATS connection. A (re)connect publishes again; firing (after
 *                   reconnect_grace) means fallback or 503.
 * Threads: submit() runs on the MHD thread under the scheduler's lock, so it never completes a
 * job itself (the scheduler's `finished` callback takes that lock). Replies arrive on nats.c's
 * delivery thread for our one wildcard subscription <inbox>.>; connection events on nats.c's
 * callback thread; timers on our timer service's thread. Each decides under `lock` and publishes or
 * completes after releasing it (a Step). Whoever removes an entry from the table completes its
 * job, so that happens exactly once; replies for entries no longer there are late: dropped and
 * counted. A job cancelled by the scheduler (client gone, deadline, shutdown) has its timer
 * moved to now: the timer thread answers it and tells the workers (PREFIX.cancel) to stop.
 * Figures: /metrics gets crunchd_nats_* through render_metrics(), /readyz "no NATS connection"
 * through not_ready(); both read this executor only. */
#include "executor-nats.h"

#include <string.h>

#include "nats-link.h"
#include "parked.h"

#define BACKOFF_MIN_US 2000
#define BACKOFF_MAX_US (100 * 1000)
#define CLOSE_WAIT_US (5 * G_USEC_PER_SEC)
/* Live workers answer a probe from their delivery thread at once; no answer in this time means
 * only frozen ones heard it, so the job is simply sent again. */
#define PROBE_TIMEOUT_US (100 * 1000)

typedef enum { WAIT_REPLY, WAIT_PRESENCE, WAIT_BACKOFF, WAIT_CONNECTION } Stage;

/* Its figures, for crunchd_nats_* in /metrics (render_metrics()). */
typedef struct {
  guint64 jobs;        /* submitted */
  guint64 published;   /* job messages sent, retries included */
  guint64 retries;     /* attempts after the first lost one (timeout, worker stopping) */
  guint64 busy;        /* no free worker, but workers exist: tried again shortly */
  guint64 no_workers;  /* no worker at all: answered 503 or run locally */
  guint64 fallbacks;   /* run by the local pool */
  guint64 late;        /* final replies for jobs already answered: dropped */
  guint64 disconnects; /* times the NATS connection was lost */
  gboolean connected;
} CrunchNatsStats;

typedef struct NatsExecutor NatsExecutor;

typedef struct {
  CrunchJob *job;
  guint64 id;
  guint attempt; /* job messages published */
  guint lost;    /* attempts given up on */
  guint busy;    /* "all workers busy" in a row: sets the backoff */
  Stage stage;
  gint64 due; /* when the timer should act; it may fire early after a re-arm */
  CrunchParkedEntry *timer;
  GList link;         /* in `waiting` while `queued` */
  gboolean queued;    /* found every worker busy and no worker has taken it since */
  gint64 progress_us; /* the last progress report passed on */
  gint64 t_submitted; /* bounds the run time a worker reports */
  gchar *too_large;   /* its message could not be sent (max_payload): the timer fails it */
} Pending;

/* A timer's item: which entry it belongs to (reference-counted, g_atomic_rc_box). A timer that
 * fires after its entry is gone finds nothing under that id. */
typedef struct {
  NatsExecutor *self;
  guint64 id;
} TimerKey;

struct NatsExecutor {
  CrunchExecutor parent;
  CrunchExecutor *local; /* [nats] fallback = local */
  natsConnection *nc;
  natsSubscription *replies;
  gchar *inbox; /* _INBOX.<nuid>: replies come to <inbox>.<id>.<attempt> (p<attempt>: probe) */
  gchar *prefix, *presence_subject, *cancel_subject;
  gint64 attempt_timeout_us, grace_us;
  guint retries;
  CrunchParked *timers; /* our timer service: one entry per Pending */
  CrunchParkedKind timer_kind;

  GMutex lock;
  GCond cond;
  GHashTable *pending; /* &Pending.id -> Pending */
  GQueue waiting;      /* of Pending: jobs that found every worker busy, oldest first */
  guint64 next_id;
  gboolean connected, closed, freeing;
  gboolean sub_done, conn_closed; /* nats.c will not call us again */
  CrunchNatsStats stats;
};

/* What to do once the lock is released. */
typedef enum { ACT_NONE, ACT_PUBLISH, ACT_PROBE, ACT_COMPLETE, ACT_FALLBACK, ACT_PROGRESS } Action;

typedef struct {
  Action action;
  CrunchJob *job; /* a reference */
  guint64 id;
  guint attempt;
  CrunchJobOutcome outcome;
  gchar *error;
  GBytes *result;
  gint64 elapsed_us;
  gboolean tell_workers; /* a worker may still be running it */
  gdouble progress;      /* ACT_PROGRESS: the report, passed on outside the lock */
  gchar *progress_message;
} Step;

static gint64
now (void)
{
  return g_get_monotonic_time ();
}

/* The scheduler raises it when a ticket joins the job. */
static gint64
deadline_of (CrunchJob *job)
{
  return __atomic_load_n (&job->deadline_us, __ATOMIC_RELAXED);
}

static void
set_connected_locked (NatsExecutor *self, gboolean connected)
{
  self->connected = connected;
}

static gchar *
request_id (NatsExecutor *self, guint64 id)
{
  return g_strdup_printf ("%s-%" G_GUINT64_FORMAT, self->inbox + strlen ("_INBOX."), id);
}

/* ---- publishing (never with the lock held) ---- */

static natsStatus
publish_job (NatsExecutor *self, CrunchJob *job, guint64 id, guint attempt)
{
  g_autofree gchar *suffix = g_strconcat ("job.", job->fn->name, NULL);
  g_autofree gchar *subject = crunch_nats_subject (self->prefix, suffix);
  g_autofree gchar *reply =
      g_strdup_printf ("%s.%" G_GUINT64_FORMAT ".%u", self->inbox, id, attempt);
  g_autofree gchar *rid = request_id (self, id);
  const gchar *type;
  g_autoptr (GBytes) payload = crunch_nats_args_encode (job->args, &type);
  gsize size;
  gconstpointer data = g_bytes_get_data (payload, &size);
  natsMsg *msg = NULL;
  natsStatus s;

  s = natsMsg_Create (&msg, subject, reply, data, (int)size);
  if (s == NATS_OK) {
    natsMsgHeader_Set (msg, CRUNCH_HDR_REQUEST_ID, rid);
    natsMsgHeader_Set (msg, CRUNCH_HDR_ARGS_TYPE, type);
    crunch_nats_header_set_int (msg, CRUNCH_HDR_ATTEMPT, attempt);
    /* monotonic clocks differ between machines: the worker gets wall-clock time */
    crunch_nats_header_set_int (
        msg, CRUNCH_HDR_DEADLINE,
        deadline_of (job) != 0 ? g_get_real_time () + (deadline_of (job) - now ()) : 0);
    crunch_nats_header_set_int (msg, CRUNCH_HDR_HEARTBEAT, self->attempt_timeout_us / 4);
    s = natsConnection_PublishMsg (self->nc, msg);
  }
  natsMsg_Destroy (msg);
  if (s != NATS_OK && s != NATS_MAX_PAYLOAD)
    g_debug ("nats: job %s attempt %u not sent (%s); its timer will retry", rid, attempt,
             natsStatus_GetText (s));
  return s;
}

static void
publish_probe (NatsExecutor *self, guint64 id, guint attempt)
{
  g_autofree gchar *reply =
      g_strdup_printf ("%s.%" G_GUINT64_FORMAT ".p%u", self->inbox, id, attempt);

  natsConnection_PublishRequest (self->nc, self->presence_subject, reply, NULL, 0);
}

static void
publish_cancel (NatsExecutor *self, guint64 id)
{
  g_autofree gchar *rid = request_id (self, id);

  natsConnection_Publish (self->nc, self->cancel_subject, rid, (int)strlen (rid));
}

/* ---- entries (lock held) ---- */

static void
arm_locked (NatsExecutor *self, Pending *p, Stage stage, gint64 due)
{
  gint64 deadline = deadline_of (p->job);

  p->stage = stage;
  p->due = deadline != 0 ? MIN (due, deadline) : due;
  crunch_parked_rearm (self->timers, p->timer, p->due);
}

/* The queue of jobs waiting for a free worker. A worker frees a slot only by answering, so each
 * final reply hands the slot to the oldest job waiting (handoff_locked()), and a new job does not
 * overtake waiting ones: without this, jobs in back-off lose every race for a slot to fresh ones
 * and can wait until their deadline while workers are busy with younger jobs. */
static void
wait_join_locked (NatsExecutor *self, Pending *p)
{
  if (!p->queued) {
    p->link.data = p;
    g_queue_push_tail_link (&self->waiting, &p->link);
    p->queued = TRUE;
  }
}

static void
wait_leave_locked (NatsExecutor *self, Pending *p)
{
  if (p->queued) {
    g_queue_unlink (&self->waiting, &p->link);
    p->queued = FALSE;
  }
}

/* The oldest job that waits in back-off (not one already sent again), or NULL. */
static Pending *
first_waiting_locked (NatsExecutor *self)
{
  for (GList *l = self->waiting.head; l != NULL; l = l->next)
    if (((Pending *)l->data)->stage == WAIT_BACKOFF)
      return l->data;
  return NULL;
}

/* Prepares a step that keeps the entry: the step gets what it needs, not the entry. */
static void
step_keep (Step *step, Action action, Pending *p)
{
  step->action = action;
  step->job = crunch_job_ref (p->job);
  step->id = p->id;
  step->attempt = p->attempt;
}

/* Removes the entry; its job goes to the step (to complete or to run locally). */
static void
step_take (NatsExecutor *self, Step *step, Pending *p, Action action, CrunchJobOutcome outcome,
           gchar *error)
{
  g_hash_table_remove (self->pending, &p->id);
  wait_leave_locked (self, p);
  crunch_parked_remove (self->timers, p->timer);
  step->action = action;
  step->job = p->job; /* the entry's reference */
  step->id = p->id;
  step->outcome = outcome;
  step->error = error;
  step->tell_workers = p->attempt > 0;
  g_free (p->too_large);
  g_free (p);
}

/* Nobody can run the job remotely: run it here, or answer 503. */
static void
unavailable_locked (NatsExecutor *self, Step *step, Pending *p, const gchar *why)
{
  if (self->local != NULL) {
    self->stats.fallbacks++;
    step_take (self, step, p, ACT_FALLBACK, CRUNCH_JOB_PENDING, NULL);
  } else {
    step_take (self, step, p, ACT_COMPLETE, CRUNCH_JOB_UNAVAILABLE, g_strdup (why));
  }
}

static void
send_locked (NatsExecutor *self, Step *step, Pending *p)
{
  if (!self->connected) {
    arm_locked (self, p, WAIT_CONNECTION, now () + (self->closed ? 0 : self->grace_us));
    return;
  }
  p->attempt++;
  self->stats.published++;
  arm_locked (self, p, WAIT_REPLY, now () + self->attempt_timeout_us);
  step_keep (step, ACT_PUBLISH, p);
}

/* The current attempt is lost: try again while retries last, then 504. */
static void
retry_locked (NatsExecutor *self, Step *step, Pending *p)
{
  if (p->lost >= self->retries) {
    step_take (
        self, step, p, ACT_COMPLETE, CRUNCH_JOB_TIMED_OUT,
        g_strdup_printf ("%s: no worker answered (%u attempts)", p->job->fn->name, p->attempt));
    return;
  }
  p->lost++;
  self->stats.retries++;
  send_locked (self, step, p);
}

/* ---- replies (nats.c's delivery thread) ---- */

static gboolean
parse_reply_subject (NatsExecutor *self, const gchar *subject, guint64 *id, guint *attempt,
                     gboolean *probe)
{
  gsize n = strlen (self->inbox);
  gchar *end = NULL;

  if (strncmp (subject, self->inbox, n) != 0 || subject[n] != '.')
    return FALSE;
  *id = g_ascii_strtoull (subject + n + 1, &end, 10);
  if (end == NULL || *end != '.')
    return FALSE;
  *probe = end[1] == 'p';
  *attempt = (guint)g_ascii_strtoull (end + 1 + *probe, NULL, 10);
  return TRUE;
}

static void
on_probe_reply_locked (NatsExecutor *self, Pending *p, natsMsg *msg, guint attempt, Step *step)
{
  if (p->stage != WAIT_PRESENCE || attempt != p->attempt)
    return;
  if (natsMsg_IsNoResponders (msg)) {
    g_autofree gchar *why =
        g_strdup_printf ("no crunchd-worker is listening on %s.job.*", self->prefix);
    self->stats.no_workers++;
    unavailable_locked (self, step, p, why);
    return;
  }
  self->stats.busy++;
  wait_join_locked (self, p);
  arm_locked (self, p, WAIT_BACKOFF,
              now () + MIN (BACKOFF_MIN_US << MIN (p->busy, 6), BACKOFF_MAX_US));
  p->busy++;
}

static void
on_final_reply_locked (NatsExecutor *self, Pending *p, natsMsg *msg, CrunchWireStatus status,
                       Step *step)
{
  const gchar *error = crunch_nats_header (msg, CRUNCH_HDR_ERROR);
  /* the worker's own figure (it feeds the run-time estimate), trusted only within what this end
   * saw: a reply's header cannot make the job negative or longer than its wait. Read before
   * step_take() frees `p`. */
  gint64 elapsed =
      CLAMP (crunch_nats_header_int (msg, CRUNCH_HDR_ELAPSED, 0), 0, now () - p->t_submitted);

  switch (status) {
  case CRUNCH_WIRE_OK:
    step_take (self, step, p, ACT_COMPLETE, CRUNCH_JOB_OK, NULL);
    step->result = g_bytes_new (natsMsg_GetData (msg), (gsize)natsMsg_GetDataLength (msg));
    break;
  case CRUNCH_WIRE_TIMED_OUT:
    if (deadline_of (p->job) > now ()) {
      retry_locked (self, step, p); /* a ticket that joined later still waits */
      return;
    }
    step_take (self, step, p, ACT_COMPLETE, CRUNCH_JOB_TIMED_OUT, NULL);
    break;
  case CRUNCH_WIRE_CRASHED:
  case CRUNCH_WIRE_UNAVAILABLE:
    step_take (self, step, p, ACT_COMPLETE,
               status == CRUNCH_WIRE_CRASHED ? CRUNCH_JOB_CRASHED : CRUNCH_JOB_UNAVAILABLE,
               g_strdup (error ? error : p->job->fn->name));
    break;
  default:
    step_take (self, step, p, ACT_COMPLETE, CRUNCH_JOB_FAILED,
               g_strdup_printf ("%s: %s", p->job->fn->name,
                                error ? error : "the worker sent an unknown status"));
    break;
  }
  step->elapsed_us = elapsed;
  step->tell_workers = step->attempt > 1; /* earlier attempts may still run somewhere */
}

/* A "running" message of the current attempt may carry a progress report (CRUNCH_HDR_PROGRESS,
 * the message as payload): passed on at most CRUNCH_PROGRESS_PER_SECOND times a second. */
static void
progress_locked (Pending *p, natsMsg *msg, Step *step)
{
  const gchar *value = crunch_nats_header (msg, CRUNCH_HDR_PROGRESS);
  gchar *end = NULL;
  gdouble fraction;

  if (value == NULL)
    return;
  fraction = g_ascii_strtod (value, &end);
  if (end == value || *end != '\0' || !(fraction >= 0.0 && fraction <= 1.0) ||
      !crunch_progress_due (&p->progress_us, TRUE))
    return;
  step_keep (step, ACT_PROGRESS, p);
  step->progress = fraction;
  if (natsMsg_GetDataLength (msg) > 0)
    step->progress_message =
        g_strndup (natsMsg_GetData (msg), MIN (natsMsg_GetDataLength (msg), 4096));
}

static void
on_job_reply_locked (NatsExecutor *self, Pending *p, natsMsg *msg, guint attempt, Step *step)
{
  CrunchWireStatus status;

  if (natsMsg_IsNoResponders (msg)) {
    if (p->stage == WAIT_REPLY && attempt == p->attempt) {
      arm_locked (self, p, WAIT_PRESENCE,
                  now () + MIN (self->attempt_timeout_us, PROBE_TIMEOUT_US));
      step_keep (step, ACT_PROBE, p);
    }
    return;
  }
  p->busy = 0;
  wait_leave_locked (self, p); /* a worker has it */
  status = crunch_wire_status_parse (crunch_nats_header (msg, CRUNCH_HDR_STATUS));
  switch (status) {
  case CRUNCH_WIRE_RUNNING:
    if (p->stage == WAIT_REPLY)
      arm_locked (self, p, WAIT_REPLY, now () + self->attempt_timeout_us);
    if (attempt == p->attempt)
      progress_locked (p, msg, step);
    break;
  case CRUNCH_WIRE_SHUTDOWN:
  case CRUNCH_WIRE_CANCELLED:
    /* that worker is stopping (or was told to stop an older attempt): try another at once */
    if (p->stage == WAIT_REPLY && attempt == p->attempt)
      retry_locked (self, step, p);
    break;
  default:
    step->attempt = p->attempt;
    on_final_reply_locked (self, p, msg, status, step);
    break;
  }
}

static void perform (NatsExecutor *self, Step *step);

/* A worker's answer that ends its job on that worker: it subscribed its slot again before
 * sending it (a stopping worker does not). */
static gboolean
frees_slot (natsMsg *msg)
{
  CrunchWireStatus status = crunch_wire_status_parse (crunch_nats_header (msg, CRUNCH_HDR_STATUS));

  return status != CRUNCH_WIRE_RUNNING && status != CRUNCH_WIRE_SHUTDOWN;
}

/* A slot just came free: the oldest job waiting in back-off gets it now. */
static void
handoff_locked (NatsExecutor *self, Step *step)
{
  Pending *p = first_waiting_locked (self);

  if (p != NULL)
    send_locked (self, step, p);
}

static void
on_reply (natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
  NatsExecutor *self = closure;
  Step step = {0};
  guint64 id;
  guint attempt;
  gboolean probe;

  if (parse_reply_subject (self, natsMsg_GetSubject (msg), &id, &attempt, &probe)) {
    Step handoff = {0};
    gboolean answer = !probe && !natsMsg_IsNoResponders (msg);
    gboolean freed = answer && frees_slot (msg);
    g_mutex_lock (&self->lock);
    Pending *p = g_hash_table_lookup (self->pending, &id);
    if (p == NULL) {
      if (answer && g_strcmp0 (crunch_nats_header (msg, CRUNCH_HDR_STATUS), "running") != 0)
        self->stats.late++;
    } else if (probe) {
      on_probe_reply_locked (self, p, msg, attempt, &step);
    } else {
      on_job_reply_locked (self, p, msg, attempt, &step);
    }
    if (freed) /* that worker's slot is free again */
      handoff_locked (self, &handoff);
    g_mutex_unlock (&self->lock);
    perform (self, &step);
    perform (self, &handoff);
  }
  natsMsg_Destroy (msg);
}

/* ---- timers (our timer thread) ---- */

static void
on_timer (gpointer item, CrunchJobOutcome why, gpointer data)
{
  TimerKey *key = item;
  NatsExecutor *self = key->self;
  Step step = {0};
  Pending *p;

  g_mutex_lock (&self->lock);
  p = g_hash_table_lookup (self->pending, &key->id);
  if (p != NULL) {
    gint64 t = now ();
    if (crunch_cancelled (&p->job->cancel)) {
      step_take (self, &step, p, ACT_COMPLETE,
                 (CrunchJobOutcome)g_atomic_int_get (&p->job->cancel.flag), NULL);
    } else if (p->too_large != NULL) {
      step_take (self, &step, p, ACT_COMPLETE, CRUNCH_JOB_FAILED, g_steal_pointer (&p->too_large));
    } else if (t < p->due) {
      crunch_parked_rearm (self->timers, p->timer, p->due); /* re-armed while it fired */
    } else if (deadline_of (p->job) != 0 && t >= deadline_of (p->job)) {
      step_take (self, &step, p, ACT_COMPLETE, CRUNCH_JOB_TIMED_OUT, NULL);
    } else if (p->stage == WAIT_REPLY) {
      retry_locked (self, &step, p);
    } else if (p->stage == WAIT_BACKOFF || p->stage == WAIT_PRESENCE) {
      send_locked (self, &step, p);
    } else {
      unavailable_locked (self, &step, p,
                          self->closed ? "no connection to NATS (gave up reconnecting)"
                                       : "no connection to NATS");
    }
  }
  g_mutex_unlock (&self->lock);
  perform (self, &step);
}

static gpointer
timer_key_ref (gpointer key)
{
  return g_atomic_rc_box_acquire (key);
}

static void
timer_key_unref (gpointer key)
{
  g_atomic_rc_box_release_full (key, NULL);
}

/* ---- steps (no lock) ---- */

static void
complete (NatsExecutor *self, Step *step)
{
  CrunchJob *job = step->job;

  job->t_finished = now ();
  job->t_started = job->t_finished - step->elapsed_us; /* as if it had run here */
  job->outcome = step->outcome;
  job->result = g_steal_pointer (&step->result);
  job->error = g_steal_pointer (&step->error);
  self->parent.finished (job, self->parent.finished_data);
}

/* Its arguments do not fit in one NATS message: no attempt can succeed, so the job fails now
 * (by its timer: perform() may run inside submit(), which must not finish a job). */
static void
too_large (NatsExecutor *self, Step *step)
{
  Pending *p;

  g_mutex_lock (&self->lock);
  p = g_hash_table_lookup (self->pending, &step->id);
  if (p != NULL && p->job == step->job && p->too_large == NULL) {
    p->too_large = g_strdup_printf (
        "%s: its arguments (%" G_GSIZE_FORMAT " bytes, and the message's headers) do not fit "
        "in one NATS message: the server's max_payload is %" G_GINT64_FORMAT " bytes",
        p->job->fn->name, g_variant_get_size (p->job->args),
        natsConnection_GetMaxPayload (self->nc));
    p->due = now ();
    crunch_parked_rearm (self->timers, p->timer, p->due);
  }
  g_mutex_unlock (&self->lock);
}

static void
perform (NatsExecutor *self, Step *step)
{
  switch (step->action) {
  case ACT_NONE:
    return;
  case ACT_PUBLISH:
    if (publish_job (self, step->job, step->id, step->attempt) == NATS_MAX_PAYLOAD)
      too_large (self, step);
    break;
  case ACT_PROBE:
    publish_probe (self, step->id, step->attempt);
    break;
  case ACT_FALLBACK:
    if (step->tell_workers)
      publish_cancel (self, step->id);
    crunch_executor_submit (self->local, step->job);
    break;
  case ACT_COMPLETE:
    if (step->tell_workers)
      publish_cancel (self, step->id);
    complete (self, step);
    break;
  case ACT_PROGRESS: /* the scheduler drops a report for a job it has finished with */
    crunch_progress_report (&step->job->cancel, step->progress, step->progress_message);
    g_free (step->progress_message);
    break;
  }
  crunch_job_unref (step->job);
}

/* ---- connection events (nats.c's callback thread) ---- */

static void
on_connected (natsConnection *nc, void *closure)
{
  NatsExecutor *self = closure;
  g_autoptr (GArray) steps = g_array_new (FALSE, TRUE, sizeof (Step));
  g_autofree gchar *url = crunch_nats_connected_url (nc);
  GHashTableIter iter;
  gpointer value;

  g_mutex_lock (&self->lock);
  set_connected_locked (self, TRUE);
  g_hash_table_iter_init (&iter, self->pending);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Pending *p = value;
    Step step = {0};
    if (p->stage != WAIT_CONNECTION)
      continue;
    send_locked (self, &step, p);
    g_array_append_val (steps, step);
  }
  g_mutex_unlock (&self->lock);
  g_message ("nats: connected to %s; %u job(s) sent again", url, steps->len);
  for (guint i = 0; i < steps->len; i++)
    perform (self, &g_array_index (steps, Step, i));
}

/* Replies sent to us while we are away are lost, so every attempt in flight is over. */
static void
on_disconnected (natsConnection *nc, void *closure)
{
  NatsExecutor *self = closure;
  GHashTableIter iter;
  gpointer value;
  guint waiting;

  g_mutex_lock (&self->lock);
  set_connected_locked (self, FALSE);
  self->stats.disconnects += !self->freeing;
  g_hash_table_iter_init (&iter, self->pending);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    if (((Pending *)value)->stage != WAIT_CONNECTION)
      arm_locked (self, value, WAIT_CONNECTION, now () + self->grace_us);
  }
  waiting = g_hash_table_size (self->pending);
  g_mutex_unlock (&self->lock);
  if (!self->freeing)
    g_warning ("nats: connection lost; %u job(s) wait up to %.3g s for a reconnect", waiting,
               self->grace_us / 1e6);
}

static void
on_closed (natsConnection *nc, void *closure)
{
  NatsExecutor *self = closure;
  GHashTableIter iter;
  gpointer value;

  g_mutex_lock (&self->lock);
  if (!self->freeing)
    g_critical ("nats: connection closed for good ([nats] max_reconnect reached): "
                "compute requests now get %s",
                self->local ? "the local pool" : "503");
  set_connected_locked (self, FALSE);
  self->closed = TRUE;
  g_hash_table_iter_init (&iter, self->pending);
  while (g_hash_table_iter_next (&iter, NULL, &value))
    arm_locked (self, value, WAIT_CONNECTION, now ());
  self->conn_closed = TRUE;
  g_cond_broadcast (&self->cond);
  g_mutex_unlock (&self->lock);
}

static void
on_sub_complete (void *closure)
{
  NatsExecutor *self = closure;

  g_mutex_lock (&self->lock);
  self->sub_done = TRUE;
  g_cond_broadcast (&self->cond);
  g_mutex_unlock (&self->lock);
}

/* ---- the executor interface ---- */

static void
nats_submit (CrunchExecutor *parent, CrunchJob *job)
{
  NatsExecutor *self = (NatsExecutor *)parent;
  Pending *p = g_new0 (Pending, 1);
  TimerKey *key = g_atomic_rc_box_new0 (TimerKey);
  Step step = {0};

  p->t_submitted = now ();
  p->job = crunch_job_ref (job);
  key->self = self;
  g_mutex_lock (&self->lock);
  p->id = key->id = job->executor_key = ++self->next_id;
  p->timer = crunch_parked_add_timer (self->timers, 0, key, &self->timer_kind);
  g_atomic_rc_box_release_full (key, NULL); /* the timer holds it now */
  g_hash_table_insert (self->pending, &p->id, p);
  self->stats.jobs++;
  if (self->connected && first_waiting_locked (self) != NULL) {
    /* older jobs wait for a free worker: queue behind them (a free slot goes to the oldest) */
    wait_join_locked (self, p);
    arm_locked (self, p, WAIT_BACKOFF, now () + BACKOFF_MAX_US);
  } else {
    send_locked (self, &step, p);
  }
  g_mutex_unlock (&self->lock);
  perform (self, &step);
}

/* With the scheduler's lock held: only re-arms the job's timer, which answers it. A job that
 * runs in the local fallback pool is not ours any more (it sees its flag there). */
static void
nats_cancel (CrunchExecutor *parent, CrunchJob *job)
{
  NatsExecutor *self = (NatsExecutor *)parent;
  Pending *p;

  g_mutex_lock (&self->lock);
  p = g_hash_table_lookup (self->pending, &job->executor_key);
  if (p != NULL && p->job == job) {
    p->due = now ();
    crunch_parked_rearm (self->timers, p->timer, p->due);
  }
  g_mutex_unlock (&self->lock);
}

/* Remote capacity is the workers' business (the scheduler caps jobs in flight); the rest is for
 * the local fallback pool. */
static void
nats_apply (CrunchExecutor *parent, const CrunchExecutorSettings *settings)
{
  NatsExecutor *self = (NatsExecutor *)parent;

  if (self->local != NULL)
    crunch_executor_apply (self->local, settings);
}

static void
get_stats (NatsExecutor *self, CrunchNatsStats *stats)
{
  g_mutex_lock (&self->lock);
  *stats = self->stats;
  stats->connected = self->connected;
  g_mutex_unlock (&self->lock);
}

static void
nats_render_metrics (CrunchExecutor *parent, GString *out)
{
  CrunchNatsStats st;

  get_stats ((NatsExecutor *)parent, &st);
  const struct {
    const gchar *name, *type, *help;
    guint64 value;
  } families[] = {
      {"crunchd_nats_jobs_total", "counter", "Jobs handed to the NATS executor.", st.jobs},
      {"crunchd_nats_published_total", "counter", "Job messages published, retries included.",
       st.published},
      {"crunchd_nats_retries_total", "counter",
       "Attempts after a lost one (timeout, worker stopping).", st.retries},
      {"crunchd_nats_busy_total", "counter",
       "Times every worker was busy and the job was sent again.", st.busy},
      {"crunchd_nats_no_workers_total", "counter", "Times no worker was listening at all.",
       st.no_workers},
      {"crunchd_nats_fallbacks_total", "counter",
       "Jobs run by the local pool ([nats] fallback = local).", st.fallbacks},
      {"crunchd_nats_late_replies_total", "counter", "Replies for jobs already answered, dropped.",
       st.late},
      {"crunchd_nats_disconnects_total", "counter", "Times the NATS connection was lost.",
       st.disconnects},
      {"crunchd_nats_connected", "gauge", "1 while connected to a NATS server.", st.connected},
  };

  for (gsize i = 0; i < G_N_ELEMENTS (families); i++)
    g_string_append_printf (out, "# HELP %s %s\n# TYPE %s %s\n%s %" G_GUINT64_FORMAT "\n",
                            families[i].name, families[i].help, families[i].name, families[i].type,
                            families[i].name, families[i].value);
}

static const gchar *
nats_not_ready (CrunchExecutor *parent)
{
  NatsExecutor *self = (NatsExecutor *)parent;
  gboolean connected;

  g_mutex_lock (&self->lock);
  connected = self->connected;
  g_mutex_unlock (&self->lock);
  return connected ? NULL : "no NATS connection";
}

static void
on_local_finished (CrunchJob *job, gpointer data)
{
  NatsExecutor *self = data;

  self->parent.finished (job, self->parent.finished_data);
  /* The scheduler may have sent the next job from this pool thread, and a failed publish gives
   * the thread nats.c's error state; the pool's threads may end after the library is closed,
   * when that state could no longer be freed. */
  nats_ReleaseThreadMemory ();
}

/* Waits (bounded) until nats.c has made its last call into us. */
static void
wait_quiet (NatsExecutor *self)
{
  gint64 until = now () + CLOSE_WAIT_US;

  g_mutex_lock (&self->lock);
  while (!(self->sub_done && self->conn_closed) &&
         g_cond_wait_until (&self->cond, &self->lock, until))
    ;
  if (!(self->sub_done && self->conn_closed))
    g_warning ("nats: connection did not close within %d s",
               (gint)(CLOSE_WAIT_US / G_USEC_PER_SEC));
  g_mutex_unlock (&self->lock);
}

static void
nats_free (CrunchExecutor *parent)
{
  NatsExecutor *self = (NatsExecutor *)parent;
  g_autoptr (GArray) steps = g_array_new (FALSE, TRUE, sizeof (Step));
  g_autoptr (GList) all = NULL;

  g_mutex_lock (&self->lock);
  self->freeing = TRUE;
  all = g_hash_table_get_values (self->pending);
  for (GList *l = all; l != NULL; l = l->next) {
    Step step = {0};
    step_take (self, &step, l->data, ACT_COMPLETE, CRUNCH_JOB_SHUTDOWN, NULL);
    g_array_append_val (steps, step);
  }
  g_mutex_unlock (&self->lock);
  for (guint i = 0; i < steps->len; i++)
    perform (self, &g_array_index (steps, Step, i));
  /* Nothing is pending, so nothing arms a timer again; joining the timer thread waits out a
   * callback that decided to publish before the take-all, while the connection is still open. */
  g_clear_pointer (&self->timers, crunch_parked_free);

  natsSubscription_Unsubscribe (self->replies);
  natsConnection_Close (self->nc);
  wait_quiet (self);
  g_message ("nats: %" G_GUINT64_FORMAT " job(s), %" G_GUINT64_FORMAT
             " message(s) sent, %" G_GUINT64_FORMAT " retries, %" G_GUINT64_FORMAT
             " busy, %" G_GUINT64_FORMAT " without workers, %" G_GUINT64_FORMAT
             " run locally, %" G_GUINT64_FORMAT " late replies dropped, %" G_GUINT64_FORMAT
             " disconnect(s)",
             self->stats.jobs, self->stats.published, self->stats.retries, self->stats.busy,
             self->stats.no_workers, self->stats.fallbacks, self->stats.late,
             self->stats.disconnects);
  natsSubscription_Destroy (self->replies);
  natsConnection_Destroy (self->nc);
  crunch_executor_free (self->local); /* waits for jobs running locally */
  g_hash_table_unref (self->pending);
  g_mutex_clear (&self->lock);
  g_cond_clear (&self->cond);
  g_free (self->inbox);
  g_free (self->prefix);
  g_free (self->presence_subject);
  g_free (self->cancel_subject);
  g_free (self);
}

static const CrunchExecutorClass nats_class = {
    .name = "nats",
    .submit = nats_submit,
    .cancel = nats_cancel,
    .apply = nats_apply,
    .render_metrics = nats_render_metrics,
    .not_ready = nats_not_ready,
    .free = nats_free,
};

static gboolean
subscribe_replies (NatsExecutor *self, GError **error)
{
  g_autofree gchar *wildcard = g_strconcat (self->inbox, ".>", NULL);
  natsStatus s;

  s = natsConnection_Subscribe (&self->replies, self->nc, wildcard, on_reply, self);
  /* a reply dropped as "slow consumer" would be a job answered only by its timeout */
  if (s == NATS_OK)
    s = natsSubscription_SetPendingLimits (self->replies, -1, -1);
  if (s == NATS_OK)
    s = natsSubscription_SetOnCompleteCB (self->replies, on_sub_complete, self);
  if (s != NATS_OK)
    crunch_nats_set_error (error, s, "NATS subscribe");
  return s == NATS_OK;
}

static gchar *
new_inbox (void)
{
  natsInbox *inbox = NULL;
  gchar *copy;

  natsInbox_Create (&inbox);
  copy = g_strdup (inbox);
  natsInbox_Destroy (inbox);
  return copy;
}

CrunchExecutor *
crunch_nats_executor_new (const CrunchConfig *config, const CrunchExecutorSettings *settings,
                          CrunchJobFunc finished, gpointer finished_data, GError **error)
{
  NatsExecutor *self = g_new0 (NatsExecutor, 1);
  CrunchNatsHandlers handlers = {on_connected, on_disconnected, on_connected, on_closed, self};
  gboolean connected = FALSE;
  g_autofree gchar *servers = g_strjoinv (", ", config->nats.servers);

  self->parent.klass = &nats_class;
  self->parent.finished = finished;
  self->parent.finished_data = finished_data;
  g_mutex_init (&self->lock);
  g_cond_init (&self->cond);
  self->pending = g_hash_table_new (g_int64_hash, g_int64_equal);
  self->prefix = g_strdup (config->nats.subject_prefix);
  self->presence_subject = crunch_nats_subject (self->prefix, "presence");
  self->cancel_subject = crunch_nats_subject (self->prefix, "cancel");
  self->attempt_timeout_us = (gint64)(config->nats.attempt_timeout * G_USEC_PER_SEC);
  self->grace_us = (gint64)(config->nats.reconnect_grace * G_USEC_PER_SEC);
  self->retries = config->nats.retries;
  if (g_str_equal (config->nats.fallback, "local"))
    self->local = crunch_local_executor_new (settings, on_local_finished, self);
  self->timer_kind = (CrunchParkedKind){on_timer, NULL, timer_key_ref, timer_key_unref};
  self->timers = crunch_parked_new (on_timer, NULL, timer_key_ref, timer_key_unref);
  self->inbox = new_inbox ();
  self->sub_done = self->conn_closed = TRUE; /* until there is something to wait for */

  self->nc = crunch_nats_connect (config, "crunchd", FALSE, &handlers, &connected, error);
  if (self->nc != NULL) {
    self->sub_done = self->conn_closed = FALSE;
    if (!subscribe_replies (self, error)) {
      self->sub_done = TRUE; /* never subscribed */
      nats_free (&self->parent);
      return NULL;
    }
  } else {
    crunch_parked_free (self->timers);
    crunch_executor_free (self->local);
    g_hash_table_unref (self->pending);
    g_free (self->inbox);
    g_free (self->prefix);
    g_free (self->presence_subject);
    g_free (self->cancel_subject);
    g_free (self);
    return NULL;
  }
  g_mutex_lock (&self->lock);
  if (connected)
    set_connected_locked (self, TRUE); /* unless on_connected did already */
  g_mutex_unlock (&self->lock);
  if (connected) {
    g_autofree gchar *url = crunch_nats_connected_url (self->nc);
    g_message ("nats: connected to %s; jobs go to %s.job.<function>", url, self->prefix);
  } else {
    g_warning ("nats: no server reachable at %s yet; retrying in the background", servers);
  }
  return &self->parent;
}

void
crunch_nats_library_close (void)
{
  nats_CloseAndWait (2000);
}
