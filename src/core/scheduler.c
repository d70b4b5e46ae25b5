/* scheduler.c - decides which job runs when, and who gets which answer.
 *
 * DESIGN
 * One mutex guards everything here. Callers:
 * - MHD polling threads: admit(), submit();
 * - worker threads, through on_finished(): a job ended, answer its tickets, start the next job;
 * - the parked-connection watcher thread: abandon() on a deadline or a client hang-up;
 * - the main thread: configure() on reload, drain() and cancel_running() on shutdown.
 * Each client (IP or API key) has its own FIFO of waiting jobs. Clients with waiting jobs take
 * turns by start-time fair queuing: each has a virtual start tag, the lowest tag goes next and
 * then moves one step on; a client that just became active starts at the current virtual time.
 * So a flood from one client cannot starve another, and a newcomer's job runs at the next free
 * worker instead of behind a full round. The executor is given at
 * most `threads` jobs, so the order is decided here and the queue bound is exact.
 * A pure function's identical tickets share one job (keyed by function name and printed
 * arguments) while it is queued or running. A job nobody waits for any more is dropped from its
 * queue, or cancelled through its flag if it runs. Tickets are answered outside the mutex: their
 * callbacks resume connections. Contract with executors: submit() must not call `finished`
 * synchronously (it runs under this mutex). */
#include "scheduler.h"

#include "cache.h"
#include "metrics.h"

enum { TICKET_NEW, TICKET_ATTACHED, TICKET_ANSWERED };

typedef struct {
  gchar *key;
  guint in_flight;     /* admitted tickets not yet answered */
  GQueue queue;        /* SchedJob*, waiting */
  GSequenceIter *turn; /* in `active` while it has waiting jobs */
  guint64 vtag;        /* virtual start time of its next job */
  guint64 seq;         /* breaks ties: earlier first */
} Client;

typedef struct {
  CrunchJob *job;
  gchar *key; /* crunch_function_key(): NULL if the job may not be shared or cached */
  Client *owner;
  GList *link; /* in owner->queue while waiting */
  GPtrArray *tickets;
  gboolean running;
  gint64 started_us;       /* monotonic, when it went to the executor */
  gboolean stopping;       /* cancelled while tickets still waited (it overran): count it once */
  gdouble progress;        /* the highest fraction reported */
  gchar *progress_message; /* with the latest report, for tickets that join later */
} SchedJob;

struct CrunchScheduler {
  GMutex lock;
  CrunchExecutor *executor;
  CrunchExecutorFactory factory; /* NULL: the local pool */
  gpointer factory_data;
  CrunchCache *cache;
  CrunchSchedulerSettings settings;
  GHashTable *clients; /* key -> Client */
  GSequence *active;   /* Client* with waiting jobs, by (vtag, seq) */
  guint64 vclock, next_seq;
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
    g_queue_init (&client->queue);
    g_hash_table_insert (self->clients, client->key, client);
  }
  return client;
}

static void
client_release (CrunchScheduler *self, Client *client)
{
  if (client->in_flight == 0 && client->queue.length == 0 && client->turn == NULL)
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
  const Client *x = a, *y = b;

  if (x->vtag != y->vtag)
    return x->vtag < y->vtag ? -1 : 1;
  return x->seq < y->seq ? -1 : (x->seq > y->seq);
}

/* With the lock held: the client has waiting jobs; give it its place among the active ones. */
static void
take_turn (CrunchScheduler *self, Client *client)
{
  client->vtag = MAX (client->vtag, self->vclock);
  client->seq = self->next_seq++;
  client->turn = g_sequence_insert_sorted (self->active, client, by_turn, NULL);
}

static void
leave_turns (Client *client)
{
  g_sequence_remove (client->turn);
  client->turn = NULL;
}

/* Take a waiting job out of its client's queue (and the client out of the turns if idle). */
static void
unqueue (CrunchScheduler *self, SchedJob *sj)
{
  Client *owner = sj->owner;

  g_queue_delete_link (&owner->queue, sj->link);
  sj->link = NULL;
  self->queued--;
  if (owner->queue.length == 0 && owner->turn != NULL)
    leave_turns (owner);
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

/* With the lock held: start as many waiting jobs as there are free threads, the client with the
 * lowest tag first. */
static void
dispatch_locked (CrunchScheduler *self)
{
  while (g_hash_table_size (self->running) < self->settings.threads &&
         g_sequence_get_length (self->active) > 0) {
    Client *client = g_sequence_get (g_sequence_get_begin_iter (self->active));
    SchedJob *sj = g_queue_pop_head (&client->queue);

    sj->link = NULL;
    self->queued--;
    leave_turns (client);
    self->vclock = client->vtag;
    client->vtag++;
    if (client->queue.length > 0)
      take_turn (self, client);
    sj->running = TRUE;
    sj->started_us = g_get_monotonic_time ();
    for (guint i = 0; i < sj->tickets->len; i++)
      ticket_started (sj->tickets->pdata[i]);
    g_hash_table_add (self->running, sj);
    self->counters.jobs_started++;
    crunch_executor_submit (self->executor, sj->job);
    client_release (self, client);
  }
}

/* Executor callback, on the thread that ran the job. */
static void
on_finished (CrunchJob *job, gpointer data)
{
  CrunchScheduler *self = data;
  SchedJob *sj = job->scheduler_data;
  GPtrArray *answers = g_ptr_array_new ();

  g_mutex_lock (&self->lock);
  g_hash_table_remove (self->running, sj);
  job->scheduler_data = NULL; /* a late progress report finds no tickets */
  forget_key (self, sj);
  if (sj->key != NULL && job->outcome == CRUNCH_JOB_OK)
    crunch_cache_insert (self->cache, sj->key, job->result);
  for (guint i = 0; i < sj->tickets->len; i++)
    answer_locked (self, sj->tickets->pdata[i], job->outcome, job, answers);
  g_ptr_array_set_size (sj->tickets, 0);
  dispatch_locked (self);
  g_mutex_unlock (&self->lock);
  crunch_metrics_job_ran (job);
  flush_answers (answers);
  sched_job_free (sj);
}

/* ---- the public interface ---- */

static CrunchExecutorSettings
executor_settings (const CrunchSchedulerSettings *settings)
{
  return (CrunchExecutorSettings){settings->threads, settings->nice, settings->policy};
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
  self->clients = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, client_free);
  self->active = g_sequence_new (NULL);
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
  g_hash_table_unref (self->coalescing);
  g_hash_table_unref (self->clients);
  g_sequence_free (self->active);
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

CrunchAdmit
crunch_scheduler_admit (CrunchScheduler *self, const gchar *client_key)
{
  CrunchAdmit verdict = CRUNCH_ADMIT_OK;
  Client *client;

  g_mutex_lock (&self->lock);
  if (self->draining) {
    verdict = CRUNCH_ADMIT_DRAINING;
  } else if (self->queued + self->reserved >= self->settings.queue_limit ||
             self->tickets >= self->settings.queue_limit + self->settings.threads) {
    verdict = CRUNCH_ADMIT_QUEUE_FULL;
    self->counters.rejected_queue_full++;
  } else {
    client = client_get (self, client_key);
    if (self->settings.per_client_limit != 0 &&
        client->in_flight >= self->settings.per_client_limit) {
      verdict = CRUNCH_ADMIT_CLIENT_LIMIT;
      self->counters.rejected_client_limit++;
      client_release (self, client);
    } else {
      client->in_flight++;
      self->tickets++;
      self->reserved++;
    }
  }
  g_mutex_unlock (&self->lock);
  return verdict;
}

GBytes *
crunch_scheduler_cached (CrunchScheduler *self, const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *key = NULL;

  if (!crunch_cache_enabled (self->cache) || (key = crunch_function_key (fn, args)) == NULL)
    return NULL;
  return crunch_cache_lookup (self->cache, key);
}

/* With the lock held: attach the ticket to a job, an identical one if there is one. */
static void
enqueue_locked (CrunchScheduler *self, CrunchTicket *ticket)
{
  g_autofree gchar *key = crunch_function_key (ticket->fn, ticket->args);
  gboolean shared = key != NULL && self->settings.coalesce;
  SchedJob *sj = shared ? g_hash_table_lookup (self->coalescing, key) : NULL;

  if (sj != NULL) {
    ticket->coalesced = TRUE;
    self->counters.tickets_coalesced++;
  } else {
    sj = g_new0 (SchedJob, 1);
    sj->job = crunch_job_new (ticket->fn, ticket->args);
    sj->job->scheduler_data = sj;
    sj->job->scheduler = self;
    sj->job->cancel.progress = on_progress;
    sj->job->cancel.progress_data = sj->job;
    sj->tickets = g_ptr_array_new ();
    sj->owner = client_get (self, ticket->client);
    g_queue_push_tail (&sj->owner->queue, sj);
    sj->link = sj->owner->queue.tail;
    self->queued++;
    if (sj->owner->turn == NULL)
      take_turn (self, sj->owner);
    sj->key = g_steal_pointer (&key);
    if (shared)
      g_hash_table_insert (self->coalescing, sj->key, sj);
  }
  g_ptr_array_add (sj->tickets, crunch_ticket_ref (ticket));
  if (ticket->deadline_us > __atomic_load_n (&sj->job->deadline_us, __ATOMIC_RELAXED))
    __atomic_store_n (&sj->job->deadline_us, ticket->deadline_us, __ATOMIC_RELAXED);
  ticket->job = sj;
  ticket->state = TICKET_ATTACHED;
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
    if (crunch_job_cancel (sj->job, why))
      crunch_executor_cancel (self->executor, sj->job);
  } else {
    Client *owner = sj->owner;
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
  Client *client;

  g_mutex_lock (&self->lock);
  self->draining = TRUE;
  /* empty every queue first: answering may free idle clients */
  while (g_sequence_get_length (self->active) > 0) {
    SchedJob *sj;
    client = g_sequence_get (g_sequence_get_begin_iter (self->active));
    leave_turns (client);
    while ((sj = g_queue_pop_head (&client->queue)) != NULL) {
      sj->link = NULL;
      self->queued--;
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
    if (crunch_job_cancel (((SchedJob *)sj)->job, reason))
      crunch_executor_cancel (self->executor, ((SchedJob *)sj)->job);
  g_mutex_unlock (&self->lock);
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
  stats->threads = self->settings.threads;
  stats->queue_limit = self->settings.queue_limit;
  stats->clients = g_hash_table_size (self->clients);
  g_mutex_unlock (&self->lock);
  crunch_cache_get_stats (self->cache, &stats->cache_size, &stats->cache_hits,
                          &stats->cache_misses);
}
