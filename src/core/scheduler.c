/* scheduler.c - decides which job runs when, and who gets which answer.
 *
 * DESIGN
 * One mutex guards everything here. Callers:
 * - MHD polling threads: admit(), submit();
 * - worker threads, through on_finished(): a job ended, answer its tickets, start the next job;
 * - the parked-connection watcher thread: abandon() on a deadline or a client hang-up;
 * - the main thread: configure() on reload, drain() and cancel_running() on shutdown.
 * Priorities: each job has a class, 0 to CRUNCH_PRIORITY_MAX (its first ticket's). The next job
 * comes from the class with the highest *effective* class: its class plus one for every
 * `priority_aging` seconds it has waited unserved (since it last had a job started, or since it
 * got waiting work); ties go to the class that has waited longer. So a higher class goes first,
 * and a lower one still gets a job started at least every few aging periods: it never starves.
 * Within a class, each client (IP or API key) has its own FIFO of waiting jobs (a Flow).
 * Clients with waiting jobs in a class take turns by start-time fair queuing: each flow has a
 * virtual start tag, the lowest tag goes next and then moves one step on; a flow that just
 * became active starts at its class's current virtual time. So a flood from one client cannot
 * starve another of its class, and a newcomer's job runs at the next free worker instead of
 * behind a full round. The executor is given at most `threads` jobs, so the order is decided
 * here and the queue bound is exact.
 * A pure function's identical tickets share one job (keyed by function name and printed
 * arguments) while it is queued or running; a ticket of a higher class than a queued identical
 * job gets a job of its own (which identical tickets then join), so it never waits at a lower
 * class's place. A job nobody waits for any more is dropped from its queue, or cancelled through
 * its flag if it runs. Tickets are answered outside the mutex: their callbacks resume
 * connections. Contract with executors: submit() must not call `finished` synchronously (it runs
 * under this mutex).
 * Deadline-aware admission: on_finished() keeps an EWMA of each function's successful run times.
 * admit_call() predicts a call's queue wait (the estimated work of the jobs that would start
 * before it: higher classes, and its own class as fair queuing orders it; plus what is left of
 * the running jobs; over `threads`) and refuses it when wait + run exceeds its deadline. The
 * same figures give Retry-After. Aging and jobs not yet estimated are left out: the prediction
 * errs towards admitting.
 * Dynamic batching: a job of a function with max_batch > 1 (on an executor that runs batches)
 * starts a Batch instead of running alone: the worker slot takes up to max_batch waiting jobs of
 * that function, in fair-queuing order (highest class first; within a class one job per flow per
 * round, lowest tag first, each charged to its flow as if it had run alone). If fewer waited and
 * other calls of the function are running (company is likely: a lone caller never waits), the
 * batch stays open: the worker thread that runs it waits in gather_batch() (on `batch_cond`) until
 * it is full or close_us passes, which is max_delay after it opened, or earlier for a member's
 * deadline (see join_batch()); dispatch_locked() moves new jobs of the function into the open batch
 * first. Members are ordinary running jobs (tickets, coalescing, progress, cancellation work as
 * alone); a cancelled member is answered at once and the batch goes on, unless every member is
 * gone: then the batch's own flag is set. The estimate of a batch function is per call (a batch's
 * run time over its size); the batch's own run time is learnt separately for the wait bound. */
#include "scheduler.h"

#include <math.h>

#include "cache.h"
#include "metrics.h"

enum { TICKET_NEW, TICKET_ATTACHED, TICKET_ANSWERED };

#define N_CLASSES CRUNCH_PRIORITY_LEVELS
#define EWMA_WEIGHT 0.3 /* of the newest run time in a function's estimate */

typedef struct Client Client;

/* One client's waiting jobs of one class. */
typedef struct {
  Client *client;
  guint cls;
  GQueue queue;        /* SchedJob*, waiting */
  GSequenceIter *turn; /* in its class's `active` while it has waiting jobs */
  guint64 vtag;        /* virtual start time of its next job */
  guint64 seq;         /* breaks ties: earlier first */
  gdouble work;        /* estimated seconds of its waiting jobs */
} Flow;

struct Client {
  gchar *key;
  guint in_flight; /* admitted tickets not yet answered */
  guint queued;    /* its waiting jobs, every class */
  Flow flows[N_CLASSES];
};

/* A priority class. */
typedef struct {
  GSequence *active; /* Flow* with waiting jobs, by (vtag, seq) */
  guint64 vclock;
  guint queued;    /* waiting jobs */
  gdouble work;    /* their estimated seconds */
  gint64 since_us; /* monotonic: it got waiting work, or last had a job started */
} Class;

typedef struct Batch Batch;

typedef struct {
  CrunchJob *job;
  gchar *key;   /* crunch_function_key(): NULL if the job may not be shared or cached */
  Batch *batch; /* the batch it runs in, or NULL */
  Flow *flow;   /* whose queue it waits in (its client and class) */
  guint cls;
  gdouble estimate; /* its function's estimated seconds when it was queued, 0 if none */
  GList *link;      /* in flow->queue while waiting */
  GPtrArray *tickets;
  gboolean running;
  gint64 started_us;       /* monotonic, when it went to the executor */
  gboolean stopping;       /* cancelled while tickets still waited (it overran): count it once */
  gdouble progress;        /* the highest fraction reported */
  gchar *progress_message; /* with the latest report, for tickets that join later */
} SchedJob;

/* One worker slot computing several jobs of one function at once (see DESIGN). */
struct Batch {
  CrunchJob *job;     /* the batch job; its items are the members' jobs */
  GPtrArray *members; /* SchedJob*, running */
  gboolean open;      /* jobs may still join: its worker waits in gather_batch() */
  gint64 opened_us, close_us, closed_us;
};

/* What the scheduler learns of a function. */
typedef struct {
  gboolean estimated;    /* `seconds` holds something */
  gdouble seconds;       /* EWMA of a successful call's run time (a batch's time over its size) */
  gdouble batch_seconds; /* EWMA of a batch's run time; 0 before the first */
  /* batch sizes and batching waits (histograms; the last bucket is +Inf) */
  guint64 sizes[11 + 1], waits[11 + 1]; /* by size_bounds, wait_bounds; then +Inf */
  guint64 batches, items;
  gdouble wait_sum;
  guint running; /* its calls on a worker now (a batch's each count) */
} Learnt;

static const gdouble size_bounds[11] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
static const gdouble wait_bounds[11] = {0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01,
                                        0.02,   0.05,   0.1,   0.25,  0.5};

struct CrunchScheduler {
  GMutex lock;
  GCond batch_cond;         /* an open batch got members, closed, or the server drains */
  GHashTable *open_batches; /* CrunchFunction* -> Batch*, while open */
  guint busy;               /* worker slots in use: single jobs and batches */
  CrunchExecutor *executor;
  CrunchExecutorFactory factory; /* NULL: the local pool */
  gpointer factory_data;
  CrunchCache *cache;
  CrunchSchedulerSettings settings;
  GHashTable *clients; /* key -> Client */
  Class classes[N_CLASSES];
  guint64 next_seq;
  GHashTable *estimates;  /* function name -> Learnt* */
  GHashTable *coalescing; /* key -> SchedJob, queued or running */
  GHashTable *running;    /* SchedJob set */
  guint queued, reserved;
  /* admitted tickets not yet answered, coalesced ones included: each may hold a parked
   * connection, so they are bounded like jobs (queue_limit + threads), not only per client */
  guint tickets;
  gboolean draining;
  CrunchSchedulerStats counters; /* the cumulative fields */
};

/* ---- tickets ---- */

CrunchTicket *
crunch_ticket_new (const CrunchFunction *fn, GVariant *args, const gchar *client,
                   gint64 deadline_us, CrunchTicketFunc answered, gpointer data)
{
  CrunchTicket *ticket = g_new0 (CrunchTicket, 1);

  ticket->ref = 1;
  ticket->fn = fn;
  ticket->args = g_variant_ref_sink (args);
  ticket->client = g_strdup (client);
  ticket->deadline_us = deadline_us;
  ticket->answered = answered;
  ticket->answered_data = data;
  return ticket;
}

CrunchTicket *
crunch_ticket_ref (CrunchTicket *ticket)
{
  g_atomic_int_inc (&ticket->ref);
  return ticket;
}

void
crunch_ticket_unref (CrunchTicket *ticket)
{
  if (ticket == NULL || !g_atomic_int_dec_and_test (&ticket->ref))
    return;
  g_variant_unref (ticket->args);
  g_free (ticket->client);
  g_clear_pointer (&ticket->result, g_bytes_unref);
  g_free (ticket->error);
  g_free (ticket);
}

/* Call the callbacks of answered tickets, outside the lock; drops the scheduler's references. */
static void
flush_answers (GPtrArray *answers)
{
  for (guint i = 0; i < answers->len; i++) {
    CrunchTicket *ticket = answers->pdata[i];
    ticket->answered (ticket, ticket->answered_data);
    crunch_ticket_unref (ticket);
  }
  g_ptr_array_unref (answers);
}

/* ---- clients ---- */

static void
client_free (gpointer data)
{
  Client *client = data;

  g_free (client->key);
  g_free (client);
}

static Client *
client_get (CrunchScheduler *self, const gchar *key)
{
  Client *client = g_hash_table_lookup (self->clients, key);

  if (client == NULL) {
    client = g_new0 (Client, 1);
    client->key = g_strdup (key);
    for (guint c = 0; c < N_CLASSES; c++) {
      client->flows[c].client = client;
      client->flows[c].cls = c;
      g_queue_init (&client->flows[c].queue);
    }
    g_hash_table_insert (self->clients, client->key, client);
  }
  return client;
}

static void
client_release (CrunchScheduler *self, Client *client)
{
  if (client->in_flight == 0 && client->queued == 0)
    g_hash_table_remove (self->clients, client->key);
}

/* ---- jobs ---- */

static void
sched_job_free (SchedJob *sj)
{
  crunch_job_unref (sj->job);
  g_ptr_array_unref (sj->tickets);
  g_free (sj->key);
  g_free (sj->progress_message);
  g_free (sj);
}

static void
forget_key (CrunchScheduler *self, SchedJob *sj)
{
  if (sj->key != NULL && g_hash_table_lookup (self->coalescing, sj->key) == sj)
    g_hash_table_remove (self->coalescing, sj->key);
}

static gint
by_turn (gconstpointer a, gconstpointer b, gpointer user_data)
{
  const Flow *x = a, *y = b;

  if (x->vtag != y->vtag)
    return x->vtag < y->vtag ? -1 : 1;
  return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

/* With the lock held: the flow has waiting jobs; give it its place among its class's. */
static void
take_turn (CrunchScheduler *self, Flow *flow)
{
  Class *cls = &self->classes[flow->cls];

  flow->vtag = MAX (flow->vtag, cls->vclock);
  flow->seq = self->next_seq++;
  flow->turn = g_sequence_insert_sorted (cls->active, flow, by_turn, NULL);
}

static void
leave_turns (Flow *flow)
{
  g_sequence_remove (flow->turn);
  flow->turn = NULL;
}

/* With the lock held: the job waits at the tail of its flow, counted in its class. */
static void
queue_job (CrunchScheduler *self, SchedJob *sj)
{
  Flow *flow = sj->flow;
  Class *cls = &self->classes[sj->cls];

  g_queue_push_tail (&flow->queue, sj);
  sj->link = flow->queue.tail;
  if (cls->queued++ == 0)
    cls->since_us = g_get_monotonic_time ();
  cls->work += sj->estimate;
  flow->work += sj->estimate;
  flow->client->queued++;
  self->queued++;
  if (flow->turn == NULL)
    take_turn (self, flow);
}

/* With the lock held: the job leaves its flow's queue (and the flow the turns, if idle). */
static void
unqueue (CrunchScheduler *self, SchedJob *sj)
{
  Flow *flow = sj->flow;
  Class *cls = &self->classes[sj->cls];

  g_queue_delete_link (&flow->queue, sj->link);
  sj->link = NULL;
  self->queued--;
  flow->client->queued--;
  /* sums of floating-point estimates: reset when empty, so rounding never accumulates */
  cls->work = --cls->queued == 0 ? 0 : MAX (0, cls->work - sj->estimate);
  flow->work = flow->queue.length == 0 ? 0 : MAX (0, flow->work - sj->estimate);
  if (flow->queue.length == 0 && flow->turn != NULL)
    leave_turns (flow);
}

/* With the lock held: mark the ticket answered and queue its callback in `answers`. The
 * scheduler's reference moves to `answers`. */
static void
answer_locked (CrunchScheduler *self, CrunchTicket *ticket, CrunchJobOutcome outcome,
               CrunchJob *job, GPtrArray *answers)
{
  Client *client = g_hash_table_lookup (self->clients, ticket->client);

  ticket->state = TICKET_ANSWERED;
  ticket->job = NULL;
  ticket->outcome = outcome;
  if (job != NULL) {
    ticket->t_started = job->t_started;
    ticket->t_finished = job->t_finished;
    if (outcome == CRUNCH_JOB_OK)
      ticket->result = g_bytes_ref (job->result);
    else if (job->error != NULL) /* FAILED, or why a remote executor gave up */
      ticket->error = g_strdup (job->error);
  }
  if (client != NULL) {
    client->in_flight--;
    self->tickets--;
    client_release (self, client);
  }
  g_ptr_array_add (answers, ticket);
}

/* CrunchCancel.progress of every job (data: the CrunchJob, which the reporting executor holds a
 * reference to): passed on to the job's tickets, never lower than the highest so far. */
static void
on_progress (gpointer data, gdouble fraction, const gchar *message)
{
  CrunchJob *job = data;
  CrunchScheduler *self = job->scheduler;
  SchedJob *sj;

  g_mutex_lock (&self->lock);
  sj = job->scheduler_data;
  if (sj != NULL && sj->running) {
    sj->progress = MAX (sj->progress, fraction);
    g_free (sj->progress_message);
    sj->progress_message = g_strdup (message);
    for (guint i = 0; i < sj->tickets->len; i++) {
      CrunchTicket *ticket = sj->tickets->pdata[i];
      if (ticket->progress != NULL)
        ticket->progress (ticket, sj->progress, message, ticket->answered_data);
    }
  }
  g_mutex_unlock (&self->lock);
}

static void
ticket_started (CrunchTicket *ticket)
{
  if (ticket->started != NULL)
    ticket->started (ticket, ticket->answered_data);
}

/* With the lock held: the class whose job starts next (the highest class after aging, ties to
 * the one waiting longer), or -1 when nothing waits. */
static gint
next_class (CrunchScheduler *self, gint64 now)
{
  gdouble aging_us = self->settings.priority_aging * G_USEC_PER_SEC;
  gint best = -1;
  guint64 best_rank = 0;

  for (gint c = N_CLASSES - 1; c >= 0; c--) {
    const Class *cls = &self->classes[c];
    guint64 rank = (guint64)c;
    if (cls->queued == 0)
      continue;
    if (aging_us > 0)
      rank += (guint64)MIN ((now - cls->since_us) / aging_us, 1e9);
    if (best < 0 || rank > best_rank ||
        (rank == best_rank && cls->since_us < self->classes[best].since_us)) {
      best = c;
      best_rank = rank;
    }
  }
  return best;
}

/* With the lock held: this waiting job leaves its queue, charged to its flow's turn. */
static void
take_job (CrunchScheduler *self, SchedJob *sj, gint64 now)
{
  Flow *flow = sj->flow;

  self->classes[sj->cls].since_us = now; /* its class was served (aging) */
  unqueue (self, sj);                    /* leaves the turns if it was the flow's last */
  if (flow->turn != NULL)
    leave_turns (flow);
  flow->vtag++;
  if (flow->queue.length > 0)
    take_turn (self, flow);
}

/* With the lock held: the next job of a class, by its flows' turns. */
static SchedJob *
pop_job (CrunchScheduler *self, guint c, gint64 now)
{
  Class *cls = &self->classes[c];
  Flow *flow = g_sequence_get (g_sequence_get_begin_iter (cls->active));
  SchedJob *sj = g_queue_peek_head (&flow->queue);

  cls->vclock = flow->vtag;
  take_job (self, sj, now);
  return sj;
}

static Learnt *learnt_locked (CrunchScheduler *self, const CrunchFunction *fn);

/* With the lock held: the job (out of its queue) is running from now on. */
static void
mark_running (CrunchScheduler *self, SchedJob *sj, gint64 now)
{
  Client *client = sj->flow->client;

  learnt_locked (self, sj->job->fn)->running++;
  sj->flow = NULL; /* its client may go before it ends */
  sj->running = TRUE;
  sj->started_us = now;
  for (guint i = 0; i < sj->tickets->len; i++)
    ticket_started (sj->tickets->pdata[i]);
  g_hash_table_add (self->running, sj);
  self->counters.jobs_started++;
  client_release (self, client);
}

/* Whether fn's calls go in batches: it declares them, they are on, the executor runs batch jobs,
 * and the function has a way to compute several calls at once (a C batch entry, or a worker
 * process that declared batches); otherwise a batch would only run its calls one after another
 * on one worker. */
static gboolean
batches (CrunchScheduler *self, const CrunchFunction *fn)
{
  return fn->max_batch > 1 && self->settings.batching && self->executor->klass->batches &&
         (fn->run_batch != NULL || (fn->batch_entry != NULL && fn->run == NULL));
}

/* With the lock held: the open batch must close early enough for this caller to have its answer
 * by its deadline: it waits at most half of what the deadline leaves after the batch's estimated
 * run time (none, if nothing is left). */
static void
bound_close (CrunchScheduler *self, Batch *b, const CrunchTicket *ticket, gint64 now)
{
  gint64 run_us = (gint64)(learnt_locked (self, b->job->fn)->batch_seconds * G_USEC_PER_SEC);

  if (b->open && ticket->deadline_us != 0)
    b->close_us = MIN (b->close_us, now + (ticket->deadline_us - now - run_us) / 2);
}

/* With the lock held: the job joins the batch (see bound_close() for each of its callers). */
static void
join_batch (CrunchScheduler *self, Batch *b, SchedJob *sj, gint64 now)
{
  gint64 deadline = __atomic_load_n (&sj->job->deadline_us, __ATOMIC_RELAXED);

  for (guint i = 0; i < sj->tickets->len; i++)
    bound_close (self, b, sj->tickets->pdata[i], now);
  mark_running (self, sj, now);
  sj->batch = b;
  g_ptr_array_add (b->members, sj);
  g_ptr_array_add (b->job->items, crunch_job_ref (sj->job));
  if (deadline > __atomic_load_n (&b->job->deadline_us, __ATOMIC_RELAXED))
    __atomic_store_n (&b->job->deadline_us, deadline, __ATOMIC_RELAXED);
}

/* With the lock held: the flow's oldest waiting job of fn, or NULL. */
static SchedJob *
first_of (Flow *flow, const CrunchFunction *fn)
{
  for (GList *l = flow->queue.head; l != NULL; l = l->next)
    if (((SchedJob *)l->data)->job->fn == fn)
      return l->data;
  return NULL;
}

/* With the lock held: waiting jobs of the batch's function join it, up to max_batch, in fair
 * order: the highest class first, and within a class rounds of one job per flow, lowest tag
 * first. */
static void
gather_locked (CrunchScheduler *self, Batch *b, gint64 now)
{
  const CrunchFunction *fn = b->job->fn;

  for (gint c = N_CLASSES - 1; c >= 0 && b->members->len < fn->max_batch; c--) {
    Class *cls = &self->classes[c];
    gboolean took = TRUE;
    while (took && cls->queued > 0 && b->members->len < fn->max_batch) {
      g_autoptr (GPtrArray) round = g_ptr_array_new ();
      took = FALSE;
      for (GSequenceIter *it = g_sequence_get_begin_iter (cls->active);
           !g_sequence_iter_is_end (it); it = g_sequence_iter_next (it))
        g_ptr_array_add (round, g_sequence_get (it));
      for (guint i = 0; i < round->len && b->members->len < fn->max_batch; i++) {
        SchedJob *sj = first_of (round->pdata[i], fn);
        if (sj == NULL)
          continue;
        take_job (self, sj, now);
        join_batch (self, b, sj, now);
        took = TRUE;
      }
    }
  }
}

/* With the lock held: the batch takes no more jobs; its worker stops waiting. */
static void
close_batch (CrunchScheduler *self, Batch *b, gint64 now)
{
  if (!b->open)
    return;
  b->open = FALSE;
  b->closed_us = now;
  if (g_hash_table_lookup (self->open_batches, b->job->fn) == b)
    g_hash_table_remove (self->open_batches, b->job->fn);
  g_cond_broadcast (&self->batch_cond);
}

/* CrunchJob.gather of a batch, on the worker thread that runs it: waits while it is open. */
static void
gather_batch (CrunchJob *job)
{
  CrunchScheduler *self = job->scheduler;
  Batch *b = job->scheduler_data;

  g_mutex_lock (&self->lock);
  while (b->open && !self->draining && g_get_monotonic_time () < b->close_us)
    g_cond_wait_until (&self->batch_cond, &self->lock, b->close_us);
  close_batch (self, b, g_get_monotonic_time ());
  g_mutex_unlock (&self->lock);
}

/* With the lock held: a worker slot computes sj and whatever waiting jobs of its function fit. */
static void
start_batch (CrunchScheduler *self, SchedJob *sj, gint64 now)
{
  const CrunchFunction *fn = sj->job->fn;
  Batch *b = g_new0 (Batch, 1);

  b->job = crunch_job_new_batch (fn);
  b->job->scheduler = self;
  b->job->scheduler_data = b;
  b->job->gather = gather_batch;
  b->members = g_ptr_array_new ();
  b->opened_us = b->closed_us = now;
  b->close_us = now + fn->max_delay_us;
  b->open = TRUE;
  join_batch (self, b, sj, now);
  gather_locked (self, b, now);
  /* company is likely only while other calls of fn are under way: a lone caller never waits */
  if (b->members->len < fn->max_batch && b->close_us > now && !self->draining &&
      learnt_locked (self, fn)->running > b->members->len)
    g_hash_table_insert (self->open_batches, (gpointer)fn, b);
  else
    close_batch (self, b, now);
  self->busy++;
  crunch_executor_submit (self->executor, b->job);
}

/* With the lock held: open batches take the waiting jobs of their functions first. */
static void
fill_open_batches (CrunchScheduler *self, gint64 now)
{
  GHashTableIter iter;
  gpointer value;
  g_autoptr (GPtrArray) full = NULL;

  if (g_hash_table_size (self->open_batches) == 0)
    return;
  full = g_ptr_array_new ();
  g_hash_table_iter_init (&iter, self->open_batches);
  while (g_hash_table_iter_next (&iter, NULL, &value)) {
    Batch *b = value;
    guint before = b->members->len;
    if (!batches (self, b->job->fn)) { /* turned off by a reload: run with what it has */
      g_ptr_array_add (full, b);
      continue;
    }
    if (self->queued == 0)
      continue;
    gather_locked (self, b, now);
    if (b->members->len >= b->job->fn->max_batch || b->close_us <= now)
      g_ptr_array_add (full, b);
    else if (b->members->len > before)
      g_cond_broadcast (&self->batch_cond); /* a closer deadline */
  }
  for (guint i = 0; i < full->len; i++)
    close_batch (self, full->pdata[i], now);
}

/* With the lock held: start as many waiting jobs as there are free threads, from the class
 * next_class() picks, the flow with the lowest tag first; a job of a batch function starts a
 * batch. */
static void
dispatch_locked (CrunchScheduler *self)
{
  gint64 now = g_get_monotonic_time ();
  gint c;

  fill_open_batches (self, now);
  while (self->busy < self->settings.threads && (c = next_class (self, now)) >= 0) {
    SchedJob *sj = pop_job (self, (guint)c, now);

    if (batches (self, sj->job->fn)) {
      start_batch (self, sj, now);
      continue;
    }
    mark_running (self, sj, now);
    self->busy++;
    crunch_executor_submit (self->executor, sj->job);
  }
}

/* ---- run-time estimates ---- */

/* With the lock held: what has been learnt of fn (created empty on first use). */
static Learnt *
learnt_locked (CrunchScheduler *self, const CrunchFunction *fn)
{
  Learnt *learnt = g_hash_table_lookup (self->estimates, fn->name);

  if (learnt == NULL) {
    learnt = g_new0 (Learnt, 1);
    g_hash_table_insert (self->estimates, g_strdup (fn->name), learnt);
  }
  return learnt;
}

/* With the lock held: fn's estimated seconds, or -1. */
static gdouble
estimate_locked (CrunchScheduler *self, const CrunchFunction *fn)
{
  const Learnt *learnt = g_hash_table_lookup (self->estimates, fn->name);

  return learnt != NULL && learnt->estimated ? learnt->seconds : -1;
}

/* With the lock held: fn's first estimate; its jobs already waiting (queued without one) take
 * it, so that the work queued counts them. Once per function. */
static void
first_estimate_locked (CrunchScheduler *self, const CrunchFunction *fn, gdouble seconds)
{
  for (guint c = 0; c < N_CLASSES; c++) {
    Class *cls = &self->classes[c];
    for (GSequenceIter *it = g_sequence_get_begin_iter (cls->active); !g_sequence_iter_is_end (it);
         it = g_sequence_iter_next (it)) {
      Flow *flow = g_sequence_get (it);
      for (GList *l = flow->queue.head; l != NULL; l = l->next) {
        SchedJob *sj = l->data;
        if (sj->estimate > 0 || !g_str_equal (sj->job->fn->name, fn->name))
          continue;
        sj->estimate = seconds;
        flow->work += seconds;
        cls->work += seconds;
      }
    }
  }
}

/* With the lock held: a successful run of fn took `seconds`. */
static void
learn_locked (CrunchScheduler *self, const CrunchFunction *fn, gdouble seconds)
{
  Learnt *learnt = learnt_locked (self, fn);

  seconds = MAX (seconds, 0);
  if (!learnt->estimated) {
    learnt->estimated = TRUE;
    learnt->seconds = seconds;
    first_estimate_locked (self, fn, seconds);
  } else {
    learnt->seconds += EWMA_WEIGHT * (seconds - learnt->seconds);
  }
}

gdouble
crunch_scheduler_estimate (CrunchScheduler *self, const CrunchFunction *fn)
{
  gdouble seconds;

  g_mutex_lock (&self->lock);
  seconds = estimate_locked (self, fn);
  g_mutex_unlock (&self->lock);
  return seconds;
}

/* With the lock held: the job has ended; its tickets' answers go to `answers`. */
static void
job_ended_locked (CrunchScheduler *self, SchedJob *sj, GPtrArray *answers)
{
  CrunchJob *job = sj->job;

  g_hash_table_remove (self->running, sj);
  learnt_locked (self, job->fn)->running--;
  job->scheduler_data = NULL; /* a late progress report finds no tickets */
  forget_key (self, sj);
  if (sj->key != NULL && job->outcome == CRUNCH_JOB_OK)
    crunch_cache_insert (self->cache, sj->key, job->result);
  for (guint i = 0; i < sj->tickets->len; i++)
    answer_locked (self, sj->tickets->pdata[i], job->outcome, job, answers);
  g_ptr_array_set_size (sj->tickets, 0);
}

static guint
bucket_of (gdouble value, const gdouble *bounds, guint n)
{
  guint i = 0;

  while (i < n && value > bounds[i])
    i++;
  return i;
}

/* With the lock held: a batch ended; its members' answers go to `answers`. */
static void
batch_ended_locked (CrunchScheduler *self, Batch *b, GPtrArray *answers)
{
  Learnt *learnt = learnt_locked (self, b->job->fn);
  gdouble seconds = (b->job->t_finished - b->job->t_started) / 1e6;
  gdouble wait = (b->closed_us - b->opened_us) / 1e6;
  guint n = b->members->len, ok = 0, computed = 0;

  for (guint i = 0; i < n; i++) {
    SchedJob *sj = b->members->pdata[i];
    ok += sj->job->outcome == CRUNCH_JOB_OK;
    computed += sj->job->outcome == CRUNCH_JOB_OK || sj->job->outcome == CRUNCH_JOB_FAILED;
    job_ended_locked (self, sj, answers);
  }
  learnt->sizes[bucket_of (n, size_bounds, G_N_ELEMENTS (size_bounds))]++;
  learnt->waits[bucket_of (wait, wait_bounds, G_N_ELEMENTS (wait_bounds))]++;
  learnt->batches++;
  learnt->items += n;
  learnt->wait_sum += wait;
  if (ok > 0) {
    learn_locked (self, b->job->fn, seconds / MAX (computed, 1));
    learnt->batch_seconds =
        learnt->batch_seconds == 0
            ? seconds
            : learnt->batch_seconds + EWMA_WEIGHT * (seconds - learnt->batch_seconds);
  }
}

/* Executor callback, on the thread that ran the job. */
static void
on_finished (CrunchJob *job, gpointer data)
{
  CrunchScheduler *self = data;
  GPtrArray *answers = g_ptr_array_new ();
  Batch *batch = job->items != NULL ? job->scheduler_data : NULL;
  SchedJob *sj = batch == NULL ? job->scheduler_data : NULL;

  g_mutex_lock (&self->lock);
  if (batch != NULL) {
    close_batch (self, batch, g_get_monotonic_time ()); /* (an executor that never gathered) */
    batch_ended_locked (self, batch, answers);
  } else {
    if (job->outcome == CRUNCH_JOB_OK)
      learn_locked (self, job->fn, (job->t_finished - job->t_started) / 1e6);
    job_ended_locked (self, sj, answers);
  }
  self->busy--;
  dispatch_locked (self);
  g_mutex_unlock (&self->lock);
  if (batch != NULL) {
    for (guint i = 0; i < batch->members->len; i++)
      crunch_metrics_job_ran (((SchedJob *)batch->members->pdata[i])->job);
  } else {
    crunch_metrics_job_ran (job);
  }
  flush_answers (answers);
  if (batch != NULL) {
    for (guint i = 0; i < batch->members->len; i++)
      sched_job_free (batch->members->pdata[i]);
    g_ptr_array_unref (batch->members);
    crunch_job_unref (batch->job); /* the scheduler's; the executor still holds its own */
    g_free (batch);
  } else {
    sched_job_free (sj);
  }
}

/* ---- the public interface ---- */

static CrunchExecutorSettings
executor_settings (const CrunchSchedulerSettings *settings)
{
  return (CrunchExecutorSettings){settings->threads, settings->nice, settings->policy,
                                  settings->idle_grace, settings->timeslice};
}

static CrunchExecutor *
make_executor (CrunchScheduler *self, GError **error)
{
  CrunchExecutorSettings settings = executor_settings (&self->settings);

  if (self->factory != NULL)
    return self->factory (&settings, on_finished, self, self->factory_data, error);
  return crunch_local_executor_new (&settings, on_finished, self);
}

CrunchScheduler *
crunch_scheduler_new (const CrunchSchedulerSettings *settings)
{
  return crunch_scheduler_new_full (settings, NULL, NULL, NULL);
}

CrunchScheduler *
crunch_scheduler_new_full (const CrunchSchedulerSettings *settings, CrunchExecutorFactory factory,
                           gpointer factory_data, GError **error)
{
  CrunchScheduler *self = g_new0 (CrunchScheduler, 1);

  self->settings = *settings;
  self->factory = factory;
  self->factory_data = factory_data;
  self->executor = make_executor (self, error);
  if (self->executor == NULL) {
    g_free (self);
    return NULL;
  }
  g_mutex_init (&self->lock);
  g_cond_init (&self->batch_cond);
  self->open_batches = g_hash_table_new (NULL, NULL);
  self->clients = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, client_free);
  for (guint c = 0; c < N_CLASSES; c++)
    self->classes[c].active = g_sequence_new (NULL);
  self->estimates = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
  self->coalescing = g_hash_table_new (g_str_hash, g_str_equal);
  self->running = g_hash_table_new (NULL, NULL);
  self->cache = crunch_cache_new (settings->cache_entries);
  return self;
}

void
crunch_scheduler_free (CrunchScheduler *self)
{
  if (self == NULL)
    return;
  crunch_scheduler_drain (self);
  crunch_executor_free (self->executor); /* waits for running jobs */
  g_hash_table_unref (self->running);
  g_hash_table_unref (self->open_batches);
  g_cond_clear (&self->batch_cond);
  g_hash_table_unref (self->coalescing);
  g_hash_table_unref (self->clients);
  for (guint c = 0; c < N_CLASSES; c++)
    g_sequence_free (self->classes[c].active);
  g_hash_table_unref (self->estimates);
  crunch_cache_free (self->cache);
  g_mutex_clear (&self->lock);
  g_free (self);
}

void
crunch_scheduler_configure (CrunchScheduler *self, const CrunchSchedulerSettings *settings)
{
  CrunchExecutorSettings applied = executor_settings (settings);

  g_mutex_lock (&self->lock);
  self->settings = *settings;
  crunch_executor_apply (self->executor, &applied);
  crunch_cache_resize (self->cache, settings->cache_entries);
  dispatch_locked (self);
  g_mutex_unlock (&self->lock);
}

/* ---- admission ---- */

static guint
retry_seconds (gdouble seconds)
{
  return (guint)CLAMP (ceil (seconds), 1, CRUNCH_RETRY_AFTER_MAX);
}

static guint
worker_count (CrunchScheduler *self)
{
  return MAX (self->settings.threads, 1);
}

/* With the lock held: estimated seconds left of the running jobs. */
static gdouble
running_left_locked (CrunchScheduler *self, gint64 now)
{
  GHashTableIter iter;
  gpointer key;
  gdouble left = 0;

  g_hash_table_iter_init (&iter, self->running);
  while (g_hash_table_iter_next (&iter, &key, NULL)) {
    const SchedJob *sj = key;
    left += MAX (0, sj->estimate - (now - sj->started_us) / 1e6);
  }
  return left;
}

/* With the lock held: estimated seconds of the waiting jobs that would start before a new job of
 * `client` in class `cls`, and how many they are. Aging is left out. */
static gdouble
work_ahead_locked (CrunchScheduler *self, Client *client, guint cls, guint *count)
{
  const Flow *own = &client->flows[cls];
  gdouble work = 0;

  *count = 0;
  for (guint c = cls + 1; c < N_CLASSES; c++) {
    work += self->classes[c].work;
    *count += self->classes[c].queued;
  }
  /* fair queuing: all of its own flow, and of each other flow of its class about as many jobs
   * as its own flow will have with it */
  for (GSequenceIter *it = g_sequence_get_begin_iter (self->classes[cls].active);
       !g_sequence_iter_is_end (it); it = g_sequence_iter_next (it)) {
    const Flow *flow = g_sequence_get (it);
    guint len = flow->queue.length;
    guint n = flow == own ? len : MIN (len, own->queue.length + 1);
    work += len > 0 ? flow->work * n / len : 0;
    *count += n;
  }
  return work;
}

/* With the lock held: predicted seconds until a new job of this client and class starts. */
static gdouble
predict_wait_locked (CrunchScheduler *self, Client *client, guint cls, gint64 now)
{
  guint ahead;
  gdouble work = work_ahead_locked (self, client, cls, &ahead);

  if (ahead == 0 && self->busy < self->settings.threads)
    return 0;
  return (work + running_left_locked (self, now)) / worker_count (self);
}

/* With the lock held: the estimated seconds of every waiting job (`client`'s alone if set). */
static gdouble
queued_work_locked (CrunchScheduler *self, const Client *client)
{
  gdouble work = 0;

  for (guint c = 0; c < N_CLASSES; c++)
    work += client != NULL ? client->flows[c].work : self->classes[c].work;
  return work;
}

/* With the lock held: the client's limit, then the call's deadline against the prediction. */
static CrunchAdmit
admit_client_locked (CrunchScheduler *self, Client *client, const CrunchAdmitRequest *request,
                     CrunchPrediction *p, gint64 now)
{
  guint cls = MIN (request->priority, CRUNCH_PRIORITY_MAX);

  if (self->settings.per_client_limit != 0 &&
      client->in_flight >= self->settings.per_client_limit) {
    self->counters.rejected_client_limit++;
    p->retry_after =
        retry_seconds ((queued_work_locked (self, client) + running_left_locked (self, now)) /
                       worker_count (self));
    return CRUNCH_ADMIT_CLIENT_LIMIT;
  }
  if (request->fn == NULL)
    return CRUNCH_ADMIT_OK;
  p->run = estimate_locked (self, request->fn);
  if (p->run >= 0 && batches (self, request->fn)) /* alone, a call pays for a whole pass */
    p->run = MAX (p->run, learnt_locked (self, request->fn)->batch_seconds);
  p->wait = predict_wait_locked (self, client, cls, now);
  if (p->run < 0 || request->deadline_us == 0 || p->wait + p->run <= p->timeout)
    return CRUNCH_ADMIT_OK;
  self->counters.rejected_deadline++;
  /* when enough of the queue ahead of it will have drained for it to fit */
  p->retry_after = retry_seconds (p->wait - MAX (p->timeout - p->run, 0));
  return CRUNCH_ADMIT_DEADLINE;
}

CrunchAdmit
crunch_scheduler_admit_call (CrunchScheduler *self, const CrunchAdmitRequest *request,
                             CrunchPrediction *p)
{
  gint64 now = g_get_monotonic_time ();
  CrunchAdmit verdict;
  Client *client;

  *p = (CrunchPrediction){0, -1, 0, 1};
  if (request->deadline_us != 0)
    p->timeout = (request->deadline_us - now) / 1e6;
  g_mutex_lock (&self->lock);
  if (self->draining) {
    verdict = CRUNCH_ADMIT_DRAINING;
  } else if (self->queued + self->reserved >= self->settings.queue_limit ||
             self->tickets >= self->settings.queue_limit + self->settings.threads) {
    verdict = CRUNCH_ADMIT_QUEUE_FULL;
    self->counters.rejected_queue_full++;
    /* when the work queued now will have drained */
    p->retry_after = retry_seconds (
        (queued_work_locked (self, NULL) + running_left_locked (self, now)) / worker_count (self));
  } else {
    client = client_get (self, request->client);
    verdict = admit_client_locked (self, client, request, p, now);
    if (verdict == CRUNCH_ADMIT_OK) {
      client->in_flight++;
      self->tickets++;
      self->reserved++;
    } else {
      client_release (self, client);
    }
  }
  g_mutex_unlock (&self->lock);
  return verdict;
}

CrunchAdmit
crunch_scheduler_admit (CrunchScheduler *self, const gchar *client_key)
{
  CrunchPrediction prediction;

  return crunch_scheduler_admit_call (self, &(CrunchAdmitRequest){client_key, NULL, 0, 0},
                                      &prediction);
}

GBytes *
crunch_scheduler_cached (CrunchScheduler *self, const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *key = NULL;

  if (!crunch_cache_enabled (self->cache) || (key = crunch_function_key (fn, args)) == NULL)
    return NULL;
  return crunch_cache_lookup (self->cache, key);
}

/* With the lock held: a new waiting job for the ticket, in its client's flow of its class. */
static SchedJob *
new_job_locked (CrunchScheduler *self, CrunchTicket *ticket)
{
  SchedJob *sj = g_new0 (SchedJob, 1);
  guint cls = MIN (ticket->priority, CRUNCH_PRIORITY_MAX);

  sj->job = crunch_job_new (ticket->fn, ticket->args);
  sj->job->scheduler_data = sj;
  sj->job->scheduler = self;
  sj->job->cancel.progress = on_progress;
  sj->job->cancel.progress_data = sj->job;
  sj->tickets = g_ptr_array_new ();
  sj->cls = cls;
  sj->estimate = MAX (estimate_locked (self, ticket->fn), 0);
  sj->flow = &client_get (self, ticket->client)->flows[cls];
  queue_job (self, sj);
  return sj;
}

/* With the lock held: attach the ticket to a job, an identical one if there is one (running, or
 * waiting in a class at least as high as the ticket's). */
static void
enqueue_locked (CrunchScheduler *self, CrunchTicket *ticket)
{
  g_autofree gchar *key = crunch_function_key (ticket->fn, ticket->args);
  gboolean shared = key != NULL && self->settings.coalesce;
  SchedJob *sj = shared ? g_hash_table_lookup (self->coalescing, key) : NULL;

  if (sj != NULL && !sj->running && sj->cls < ticket->priority)
    sj = NULL; /* a job of its own, which later identical tickets join instead */
  if (sj != NULL) {
    ticket->coalesced = TRUE;
    self->counters.tickets_coalesced++;
  } else {
    sj = new_job_locked (self, ticket);
    sj->key = g_steal_pointer (&key);
    if (shared) /* replace(): the key string is the new job's */
      g_hash_table_replace (self->coalescing, sj->key, sj);
  }
  g_ptr_array_add (sj->tickets, crunch_ticket_ref (ticket));
  if (ticket->deadline_us > __atomic_load_n (&sj->job->deadline_us, __ATOMIC_RELAXED))
    __atomic_store_n (&sj->job->deadline_us, ticket->deadline_us, __ATOMIC_RELAXED);
  ticket->job = sj;
  ticket->state = TICKET_ATTACHED;
  if (sj->batch != NULL && sj->batch->open) { /* its deadline may not wait for company */
    bound_close (self, sj->batch, ticket, g_get_monotonic_time ());
    g_cond_broadcast (&self->batch_cond);
  }
  if (sj->running)
    ticket_started (ticket);
  if (sj->running && sj->progress > 0 && ticket->progress != NULL)
    ticket->progress (ticket, sj->progress, sj->progress_message, ticket->answered_data);
}

void
crunch_scheduler_submit (CrunchScheduler *self, CrunchTicket *ticket)
{
  GPtrArray *answers = g_ptr_array_new ();

  ticket->t_submitted = g_get_monotonic_time ();
  g_mutex_lock (&self->lock);
  self->reserved--;
  if (ticket->state == TICKET_ANSWERED) {
    /* abandoned between admit() and submit(): already answered */
  } else if (self->draining) {
    answer_locked (self, crunch_ticket_ref (ticket), CRUNCH_JOB_SHUTDOWN, NULL, answers);
  } else {
    enqueue_locked (self, ticket);
    dispatch_locked (self);
  }
  g_mutex_unlock (&self->lock);
  flush_answers (answers);
}

/* With the lock held: a running job has taken longer than its function's own deadline. Identical
 * requests that join it later keep it wanted, each with a deadline of its own; without this, a
 * request every few seconds would keep a worker on one job forever (attack review). */
static gboolean
overran_locked (SchedJob *sj)
{
  gint64 timeout_us = __atomic_load_n (&sj->job->fn->timeout_us, __ATOMIC_RELAXED);

  return sj->running && timeout_us > 0 && g_get_monotonic_time () - sj->started_us >= timeout_us;
}

/* With the lock held: asks a running job to stop. A member of a batch stops alone (its flag,
 * which its function may look at); the batch itself once every member has been asked. */
static void
cancel_running_locked (CrunchScheduler *self, SchedJob *sj, CrunchJobOutcome why)
{
  Batch *b = sj->batch;

  if (!crunch_job_cancel (sj->job, why))
    return;
  if (b == NULL) {
    crunch_executor_cancel (self->executor, sj->job);
    return;
  }
  for (guint i = 0; i < b->members->len; i++)
    if (!crunch_cancelled (&((SchedJob *)b->members->pdata[i])->job->cancel))
      return;
  close_batch (self, b, g_get_monotonic_time ()); /* nobody left to wait for */
  if (crunch_job_cancel (b->job, why))
    crunch_executor_cancel (self->executor, b->job);
}

/* With the lock held: the ticket no longer waits for its job; drop or stop the job if nobody
 * else does, or if it has overrun its function's deadline (its other tickets then get its
 * TIMED_OUT answer when it stops). */
static void
detach_locked (CrunchScheduler *self, CrunchTicket *ticket, CrunchJobOutcome why)
{
  SchedJob *sj = ticket->job;

  g_ptr_array_remove_fast (sj->tickets, ticket);
  crunch_ticket_unref (ticket); /* the job's reference; the caller holds another */
  if (sj->stopping ||
      (sj->tickets->len > 0 && !(why == CRUNCH_JOB_TIMED_OUT && overran_locked (sj))))
    return;
  sj->stopping = sj->tickets->len > 0;
  self->counters.jobs_cancelled++;
  forget_key (self, sj);
  if (sj->running) {
    cancel_running_locked (self, sj, why);
  } else {
    Client *owner = sj->flow->client;
    unqueue (self, sj);
    client_release (self, owner);
    sched_job_free (sj);
  }
}

gboolean
crunch_scheduler_ticket_running (CrunchScheduler *self, CrunchTicket *ticket)
{
  gboolean running;

  g_mutex_lock (&self->lock);
  running = ticket->state == TICKET_ATTACHED && ((SchedJob *)ticket->job)->running;
  g_mutex_unlock (&self->lock);
  return running;
}

void
crunch_scheduler_abandon (CrunchScheduler *self, CrunchTicket *ticket, CrunchJobOutcome why)
{
  GPtrArray *answers = g_ptr_array_new ();

  g_mutex_lock (&self->lock);
  if (ticket->state != TICKET_ANSWERED) {
    crunch_ticket_ref (ticket); /* moves to answers */
    if (ticket->state == TICKET_ATTACHED)
      detach_locked (self, ticket, why);
    if (why == CRUNCH_JOB_TIMED_OUT)
      self->counters.tickets_timed_out++;
    else if (why == CRUNCH_JOB_CLIENT_GONE)
      self->counters.tickets_client_gone++;
    answer_locked (self, ticket, why, NULL, answers);
  }
  g_mutex_unlock (&self->lock);
  flush_answers (answers);
}

void
crunch_scheduler_drain (CrunchScheduler *self)
{
  GPtrArray *answers = g_ptr_array_new ();
  g_autoptr (GPtrArray) dropped = g_ptr_array_new_with_free_func ((GDestroyNotify)sched_job_free);

  g_mutex_lock (&self->lock);
  self->draining = TRUE;
  g_cond_broadcast (&self->batch_cond); /* open batches run with what they have */
  /* empty every queue first: answering may free idle clients */
  for (guint c = 0; c < N_CLASSES; c++) {
    GSequence *active = self->classes[c].active;
    while (g_sequence_get_length (active) > 0) {
      Flow *flow = g_sequence_get (g_sequence_get_begin_iter (active));
      SchedJob *sj = g_queue_peek_head (&flow->queue);
      unqueue (self, sj); /* the flow leaves the turns with its last job */
      forget_key (self, sj);
      g_ptr_array_add (dropped, sj);
    }
  }
  for (guint i = 0; i < dropped->len; i++) {
    SchedJob *sj = dropped->pdata[i];
    for (guint j = 0; j < sj->tickets->len; j++)
      answer_locked (self, sj->tickets->pdata[j], CRUNCH_JOB_SHUTDOWN, NULL, answers);
    g_ptr_array_set_size (sj->tickets, 0);
  }
  g_mutex_unlock (&self->lock);
  flush_answers (answers);
}

void
crunch_scheduler_cancel_running (CrunchScheduler *self, CrunchJobOutcome reason)
{
  GHashTableIter iter;
  gpointer sj;

  g_mutex_lock (&self->lock);
  g_hash_table_iter_init (&iter, self->running);
  while (g_hash_table_iter_next (&iter, &sj, NULL))
    cancel_running_locked (self, sj, reason);
  g_mutex_unlock (&self->lock);
}

void
crunch_scheduler_answer_running (CrunchScheduler *self, CrunchJobOutcome why)
{
  GPtrArray *answers = g_ptr_array_new ();
  GHashTableIter iter;
  gpointer sj;

  g_mutex_lock (&self->lock);
  g_hash_table_iter_init (&iter, self->running);
  while (g_hash_table_iter_next (&iter, &sj, NULL)) {
    GPtrArray *tickets = ((SchedJob *)sj)->tickets;
    for (guint i = 0; i < tickets->len; i++)
      answer_locked (self, tickets->pdata[i], why, NULL, answers);
    g_ptr_array_set_size (tickets, 0);
  }
  g_mutex_unlock (&self->lock);
  flush_answers (answers);
}

/* One function's series of a histogram family: cumulative buckets by `bounds` (n of them, then
 * +Inf), its sum (text) and count. */
static void
render_histogram (GString *out, const gchar *family, const gchar *fn, const guint64 *counts,
                  const gdouble *bounds, guint n, const gchar *sum, guint64 count)
{
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];
  guint64 total = 0;

  for (guint i = 0; i <= n; i++) {
    total += counts[i];
    g_string_append_printf (
        out, "%s_bucket{function=\"%s\",le=\"%s\"} %" G_GUINT64_FORMAT "\n", family, fn,
        i < n ? g_ascii_formatd (buf, sizeof buf, "%g", bounds[i]) : "+Inf", total);
  }
  g_string_append_printf (
      out, "%s_sum{function=\"%s\"} %s\n%s_count{function=\"%s\"} %" G_GUINT64_FORMAT "\n", family,
      fn, sum, family, fn, count);
}

/* With the lock held: the batch-size and batching-wait histograms of the functions that have
 * run batches. */
static void
render_batches_locked (CrunchScheduler *self, GList *names, GString *out)
{
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

  g_string_append (out, "# HELP crunchd_batch_size Calls computed together per batch, by function "
                        "(functions that declare max_batch > 1).\n# TYPE crunchd_batch_size "
                        "histogram\n");
  for (GList *l = names; l != NULL; l = l->next) {
    const Learnt *learnt = g_hash_table_lookup (self->estimates, l->data);
    g_autofree gchar *items = g_strdup_printf ("%" G_GUINT64_FORMAT, learnt->items);
    if (learnt->batches > 0)
      render_histogram (out, "crunchd_batch_size", l->data, learnt->sizes, size_bounds,
                        G_N_ELEMENTS (size_bounds), items, learnt->batches);
  }
  g_string_append (out, "# HELP crunchd_batch_wait_seconds How long a batch waited for more calls "
                        "(up to its function's max_delay) before it ran, by function.\n"
                        "# TYPE crunchd_batch_wait_seconds histogram\n");
  for (GList *l = names; l != NULL; l = l->next) {
    const Learnt *learnt = g_hash_table_lookup (self->estimates, l->data);
    if (learnt->batches > 0)
      render_histogram (out, "crunchd_batch_wait_seconds", l->data, learnt->waits, wait_bounds,
                        G_N_ELEMENTS (wait_bounds),
                        g_ascii_formatd (buf, sizeof buf, "%.6f", learnt->wait_sum),
                        learnt->batches);
  }
}

void
crunch_scheduler_render_metrics (CrunchScheduler *self, GString *out)
{
  g_autoptr (GList) names = NULL;
  gchar buf[G_ASCII_DTOSTR_BUF_SIZE];

  g_string_append (out, "# HELP crunchd_function_run_estimate_seconds The running estimate of a "
                        "function's run time (EWMA of its successful runs) that admission uses.\n"
                        "# TYPE crunchd_function_run_estimate_seconds gauge\n");
  g_mutex_lock (&self->lock);
  names = g_list_sort (g_hash_table_get_keys (self->estimates), (GCompareFunc)g_strcmp0);
  for (GList *l = names; l != NULL; l = l->next) {
    const Learnt *learnt = g_hash_table_lookup (self->estimates, l->data);
    if (!learnt->estimated)
      continue;
    /* (Prometheus wants '.', whatever the locale) */
    g_string_append_printf (out, "crunchd_function_run_estimate_seconds{function=\"%s\"} %s\n",
                            (const gchar *)l->data,
                            g_ascii_formatd (buf, sizeof buf, "%.6f", learnt->seconds));
  }
  render_batches_locked (self, names, out);
  g_string_append (out, "# HELP crunchd_jobs_queued_by_priority Jobs waiting for a worker, by "
                        "priority class.\n# TYPE crunchd_jobs_queued_by_priority gauge\n");
  for (guint c = 0; c < N_CLASSES; c++)
    g_string_append_printf (out, "crunchd_jobs_queued_by_priority{priority=\"%u\"} %u\n", c,
                            self->classes[c].queued);
  g_mutex_unlock (&self->lock);
}

void
crunch_scheduler_render_status (GString *out, gpointer data)
{
  CrunchScheduler *self = data;
  g_autoptr (GList) names = NULL;
  gchar a[G_ASCII_DTOSTR_BUF_SIZE], b[G_ASCII_DTOSTR_BUF_SIZE];
  gboolean first = TRUE;

  g_string_append (out, "\"batches\":[");
  g_mutex_lock (&self->lock);
  names = g_list_sort (g_hash_table_get_keys (self->estimates), (GCompareFunc)g_strcmp0);
  for (GList *l = names; l != NULL; l = l->next) {
    const Learnt *learnt = g_hash_table_lookup (self->estimates, l->data);
    const CrunchFunction *fn = crunch_functions_lookup (l->data);
    if (learnt->batches == 0 || fn == NULL)
      continue;
    g_string_append_printf (
        out,
        "%s{\"function\":\"%s\",\"max_batch\":%u,\"batches\":%" G_GUINT64_FORMAT
        ",\"mean_size\":%s,\"mean_wait_seconds\":%s}",
        first ? "" : ",", fn->name, fn->max_batch, learnt->batches,
        g_ascii_formatd (a, sizeof a, "%.3f", (gdouble)learnt->items / learnt->batches),
        g_ascii_formatd (b, sizeof b, "%.6f", learnt->wait_sum / learnt->batches));
    first = FALSE;
  }
  g_mutex_unlock (&self->lock);
  g_string_append (out, "],");
}

CrunchExecutor *
crunch_scheduler_executor (CrunchScheduler *self)
{
  return self->executor;
}

void
crunch_scheduler_get_stats (CrunchScheduler *self, CrunchSchedulerStats *stats)
{
  g_mutex_lock (&self->lock);
  *stats = self->counters;
  stats->queued = self->queued;
  stats->running = g_hash_table_size (self->running);
  stats->busy = self->busy;
  stats->threads = self->settings.threads;
  stats->queue_limit = self->settings.queue_limit;
  stats->clients = g_hash_table_size (self->clients);
  g_mutex_unlock (&self->lock);
  crunch_cache_get_stats (self->cache, &stats->cache_size, &stats->cache_hits,
                          &stats->cache_misses);
}
