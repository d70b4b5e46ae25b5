/* call.c - see call.h.
 *
 * DESIGN
 * Threads: new(), admit() and submit() run on the caller's thread (an MHD polling thread);
 * `answered` runs on whichever thread answers the ticket (a worker, the watcher, the scheduler
 * while draining, a thread that cancels). Calls are reference-counted: the jobs API keeps one
 * in its store and takes another around submit() and cancel(), done outside its own lock.
 * The watch entry is handed over through one atomic pointer: submit() stores it after adding it,
 * the answer swaps in ANSWERED and removes what it found; whoever comes second removes it, so
 * it is removed exactly once and always before `answered` runs. The watcher (parked.c) holds
 * its own ticket reference while it watches. */
#include "call.h"

#include "metrics.h"
#include "parked.h"

struct CrunchCalls {
  CrunchScheduler *scheduler;
  CrunchParked *watcher; /* deadlines and sockets of submitted calls */
};

/* A GLib atomic reference-counted box (g_atomic_rc_box). */
struct CrunchCall {
  CrunchCalls *calls;
  CrunchCallSpec spec;
  GVariant *args;
  gchar *client;
  GBytes *cached;
  CrunchAdmit verdict;
  CrunchPrediction prediction; /* of its admission */
  CrunchCallRefusal refusal;   /* set by admit() when it refuses */
  gchar *refusal_message, *retry_after;
  CrunchTicket *ticket;
  gpointer watch; /* CrunchParkedEntry*, NULL before submit(), ANSWERED after the answer */
};

static gchar answered_mark;
#define ANSWERED ((gpointer)&answered_mark)

/* Watcher thread: the deadline passed or the client left. */
static void
on_expired (gpointer ticket, CrunchJobOutcome why, gpointer data)
{
  CrunchCalls *self = data;

  crunch_scheduler_abandon (self->scheduler, ticket, why);
}

CrunchCalls *
crunch_calls_new (CrunchScheduler *scheduler)
{
  CrunchCalls *self = g_new0 (CrunchCalls, 1);

  self->scheduler = scheduler;
  self->watcher = crunch_parked_new (on_expired, self, (gpointer (*) (gpointer))crunch_ticket_ref,
                                     (GDestroyNotify)crunch_ticket_unref);
  return self;
}

CrunchParked *
crunch_calls_watcher (CrunchCalls *self)
{
  return self->watcher;
}

void
crunch_calls_free (CrunchCalls *self)
{
  if (self == NULL)
    return;
  crunch_parked_free (self->watcher);
  g_free (self);
}

CrunchCall *
crunch_call_new (CrunchCalls *calls, const CrunchCallSpec *spec)
{
  CrunchCall *call = g_atomic_rc_box_new0 (CrunchCall);

  call->calls = calls;
  call->spec = *spec;
  call->args = g_variant_ref (spec->args);
  call->client = g_strdup (spec->client);
  call->spec.args = NULL;
  call->spec.client = NULL;
  return call;
}

static void
count_refusal (CrunchAdmit verdict)
{
  switch (verdict) {
  case CRUNCH_ADMIT_QUEUE_FULL:
    crunch_metrics_rejection (CRUNCH_REJECT_QUEUE_FULL);
    break;
  case CRUNCH_ADMIT_CLIENT_LIMIT:
    crunch_metrics_rejection (CRUNCH_REJECT_CLIENT_LIMIT);
    break;
  case CRUNCH_ADMIT_DRAINING:
    crunch_metrics_rejection (CRUNCH_REJECT_DRAINING);
    break;
  case CRUNCH_ADMIT_DEADLINE:
    crunch_metrics_rejection (CRUNCH_REJECT_DEADLINE);
    break;
  case CRUNCH_ADMIT_OK:
    break;
  }
}

/* The refusal's message: a deadline refusal gives the prediction (with '.' as the decimal mark,
 * whatever the locale). */
static gchar *
refusal_message (CrunchCall *call)
{
  const CrunchPrediction *p = &call->prediction;
  gchar wait[G_ASCII_DTOSTR_BUF_SIZE], run[G_ASCII_DTOSTR_BUF_SIZE];
  gchar timeout[G_ASCII_DTOSTR_BUF_SIZE];

  switch (call->verdict) {
  case CRUNCH_ADMIT_CLIENT_LIMIT:
    return g_strdup ("too many requests in flight for this client, retry later");
  case CRUNCH_ADMIT_DRAINING:
    return g_strdup ("server is shutting down");
  case CRUNCH_ADMIT_DEADLINE:
    return g_strdup_printf ("%s: predicted wait %s s + run %s s exceeds the deadline of %s s",
                            call->spec.fn->name,
                            g_ascii_formatd (wait, sizeof wait, "%.1f", p->wait),
                            g_ascii_formatd (run, sizeof run, "%.1f", p->run),
                            g_ascii_formatd (timeout, sizeof timeout, "%.3g", p->timeout));
  default:
    return g_strdup ("job queue is full, retry later");
  }
}

/* The HTTP answer to a refusal, with the Retry-After admission computed. */
static void
set_refusal (CrunchCall *call)
{
  call->refusal_message = refusal_message (call);
  call->retry_after = g_strdup_printf (
      "%u", call->verdict == CRUNCH_ADMIT_DRAINING ? 1 : call->prediction.retry_after);
  call->refusal = (CrunchCallRefusal){call->verdict == CRUNCH_ADMIT_CLIENT_LIMIT ? 429 : 503,
                                      call->refusal_message, call->retry_after,
                                      call->verdict == CRUNCH_ADMIT_DRAINING};
}

CrunchCallAdmission
crunch_call_admit (CrunchCall *call)
{
  CrunchScheduler *scheduler = call->calls->scheduler;

  call->cached = crunch_scheduler_cached (scheduler, call->spec.fn, call->args);
  if (call->cached != NULL) {
    crunch_metrics_job_event (call->spec.fn, CRUNCH_JOB_EVENT_CACHE_HIT);
    return CRUNCH_CALL_CACHED;
  }
  call->verdict = crunch_scheduler_admit_call (scheduler,
                                               &(CrunchAdmitRequest){call->client, call->spec.fn,
                                                                     call->spec.priority,
                                                                     call->spec.deadline_us},
                                               &call->prediction);
  count_refusal (call->verdict);
  if (call->verdict == CRUNCH_ADMIT_OK)
    return CRUNCH_CALL_ADMITTED;
  set_refusal (call);
  return CRUNCH_CALL_REFUSED;
}

/* Any thread, once: count, stop watching, then hand over. */
static void
on_answered (CrunchTicket *ticket, gpointer data)
{
  CrunchCall *call = data;
  gpointer watch = g_atomic_pointer_exchange (&call->watch, ANSWERED);

  if (ticket->coalesced)
    crunch_metrics_job_event (ticket->fn, CRUNCH_JOB_EVENT_COALESCED);
  crunch_metrics_job_answered (
      ticket->fn, ticket->outcome,
      ticket->t_started != 0 ? MAX (ticket->t_started - ticket->t_submitted, 0) : -1);
  if (watch != NULL)
    crunch_parked_remove (call->calls->watcher, watch);
  call->spec.answered (call, call->spec.data);
}

/* The scheduler's lock is held. */
static void
on_started (CrunchTicket *ticket, gpointer data)
{
  CrunchCall *call = data;

  call->spec.started (call, call->spec.data);
}

/* The scheduler's lock is held. */
static void
on_progress (CrunchTicket *ticket, gdouble fraction, const gchar *message, gpointer data)
{
  CrunchCall *call = data;

  call->spec.progress (call, fraction, message, call->spec.data);
}

void
crunch_call_submit (CrunchCall *call)
{
  CrunchCalls *calls = call->calls;
  CrunchParkedEntry *watch;
  CrunchTicket *ticket;

  g_return_if_fail (call->verdict == CRUNCH_ADMIT_OK && call->ticket == NULL);
  ticket = crunch_ticket_new (call->spec.fn, call->args, call->client, call->spec.deadline_us,
                              on_answered, call);
  ticket->priority = call->spec.priority;
  if (call->spec.started != NULL)
    ticket->started = on_started;
  if (call->spec.progress != NULL)
    ticket->progress = on_progress;
  /* published whole: the jobs API reads it from other threads (crunch_call_ticket()) */
  g_atomic_pointer_set (&call->ticket, ticket);
  crunch_metrics_job_event (call->spec.fn, CRUNCH_JOB_EVENT_SUBMITTED);
  watch =
      crunch_parked_add (calls->watcher, call->spec.watch_fd, call->spec.deadline_us, call->ticket);
  if (!g_atomic_pointer_compare_and_exchange (&call->watch, NULL, watch))
    crunch_parked_remove (calls->watcher, watch); /* answered already (deadline passed) */
  crunch_scheduler_submit (calls->scheduler, call->ticket);
}

void
crunch_call_cancel (CrunchCall *call, CrunchJobOutcome why)
{
  CrunchTicket *ticket = g_atomic_pointer_get (&call->ticket);

  if (ticket != NULL)
    crunch_scheduler_abandon (call->calls->scheduler, ticket, why);
}

CrunchCall *
crunch_call_ref (CrunchCall *call)
{
  return g_atomic_rc_box_acquire (call);
}

static void
call_clear (gpointer data)
{
  CrunchCall *call = data;
  /* never answered (not submitted, or still running at exit): stop watching here */
  gpointer watch = g_atomic_pointer_exchange (&call->watch, ANSWERED);

  if (watch != NULL && watch != ANSWERED)
    crunch_parked_remove (call->calls->watcher, watch);
  g_clear_pointer (&call->ticket, crunch_ticket_unref);
  g_clear_pointer (&call->cached, g_bytes_unref);
  g_variant_unref (call->args);
  g_free (call->client);
  g_free (call->refusal_message);
  g_free (call->retry_after);
}

void
crunch_call_unref (CrunchCall *call)
{
  if (call != NULL)
    g_atomic_rc_box_release_full (call, call_clear);
}

GBytes *
crunch_call_cached (CrunchCall *call)
{
  return call->cached;
}

const CrunchCallRefusal *
crunch_call_refusal (CrunchCall *call)
{
  return &call->refusal;
}

const CrunchTicket *
crunch_call_ticket (CrunchCall *call)
{
  return g_atomic_pointer_get (&call->ticket);
}

gboolean
crunch_call_running (CrunchCall *call)
{
  CrunchTicket *ticket = g_atomic_pointer_get (&call->ticket);

  return ticket != NULL && crunch_scheduler_ticket_running (call->calls->scheduler, ticket);
}
