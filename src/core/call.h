/* call.h - one compute call: the sequence every caller of a function runs, in one place.
 *
 * HTTP (/fib/N, /fn/NAME) and the jobs API (POST /jobs) are thin users of it:
 *   crunch_call_new()     the function, its canonical arguments, who asks, until when;
 *   crunch_call_admit()   the result cache (CACHED: the answer is there already), then
 *                         admission (REFUSED: say crunch_call_refusal()'s status and message:
 *                         queue full, client limit, a deadline it is predicted to miss);
 *   crunch_call_submit()  ADMITTED: a ticket to the scheduler, its deadline (and the client's
 *                         socket, if any) watched; `answered` runs once, on any thread, maybe
 *                         before submit() returns. HTTP suspends its connection between admit()
 *                         and submit(), so the answer always finds it parked.
 * The call counts itself in the metrics (submitted, cache hit, refusal, coalesced, outcome and
 * queue wait) and stops watching before `answered` runs, so `answered` may be the caller's last
 * touch of whatever it owns (HTTP resumes its connection there). */
#pragma once

#include "parked.h"
#include "scheduler.h"

typedef struct CrunchCalls CrunchCalls;
typedef struct CrunchCall CrunchCall;
typedef void (*CrunchCallFunc) (CrunchCall *call, gpointer data);
typedef void (*CrunchCallProgressFunc) (CrunchCall *call, gdouble fraction, const gchar *message,
                                        gpointer data);

/* The service: the scheduler, and one watcher thread for every call's deadline and socket. */
CrunchCalls *crunch_calls_new (CrunchScheduler *scheduler);
/* That watcher: the front end's one timer thread, which the connection guard shares. */
CrunchParked *crunch_calls_watcher (CrunchCalls *self);
/* Every call has been freed. */
void crunch_calls_free (CrunchCalls *self);

typedef struct {
  const CrunchFunction *fn;
  GVariant *args;          /* canonical (referenced, not taken) */
  const gchar *client;     /* the fairness key */
  gint64 deadline_us;      /* monotonic */
  gint watch_fd;           /* a socket whose hang-up abandons the call; -1 for none */
  CrunchCallFunc answered; /* exactly once after submit(), any thread */
  gpointer data;
  /* Optional: its computation started (see CrunchTicket.started: the scheduler's lock is held,
   * only pass the news on). */
  CrunchCallFunc started;
  /* Optional: a progress report of its computation (see CrunchTicket.progress: the scheduler's
   * lock is held, only pass it on). */
  CrunchCallProgressFunc progress;
  guint priority; /* its class, 0 (the lowest) to CRUNCH_PRIORITY_MAX */
} CrunchCallSpec;

typedef enum {
  CRUNCH_CALL_ADMITTED, /* submit() it */
  CRUNCH_CALL_CACHED,   /* crunch_call_cached() is the answer; nothing to submit */
  CRUNCH_CALL_REFUSED,  /* crunch_call_refusal() says why; nothing to submit */
} CrunchCallAdmission;

/* How a refusal is answered over HTTP. */
typedef struct {
  guint status;             /* 503 or 429 */
  const gchar *message;     /* one line, no request id */
  const gchar *retry_after; /* seconds, computed from the queue (scheduler.h) */
  gboolean close;           /* the server is stopping: close the connection */
} CrunchCallRefusal;

CrunchCall *crunch_call_new (CrunchCalls *calls, const CrunchCallSpec *spec);
CrunchCallAdmission crunch_call_admit (CrunchCall *call);
void crunch_call_submit (CrunchCall *call);
/* Abandons the call now (DELETE, shutdown): answered with `why` unless it was already. */
void crunch_call_cancel (CrunchCall *call, CrunchJobOutcome why);
CrunchCall *crunch_call_ref (CrunchCall *call);
/* The last reference stops watching it (if it was never answered) and frees it. */
void crunch_call_unref (CrunchCall *call);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchCall, crunch_call_unref)

GBytes *crunch_call_cached (CrunchCall *call);
const CrunchCallRefusal *crunch_call_refusal (CrunchCall *call);
/* The ticket (outcome, result, error, timings, coalesced) once answered; NULL before submit(). */
const CrunchTicket *crunch_call_ticket (CrunchCall *call);
/* Whether its job is on a worker now (the jobs API's "running"). Any thread. */
gboolean crunch_call_running (CrunchCall *call);
