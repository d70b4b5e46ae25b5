/* test-scheduler.c - admission, priorities and aging, fairness, coalescing, abandonment, drain,
 * run-time estimates and deadline-aware admission, with a fake function. */
#include "scheduler.h"

#include <math.h>

/* "nap": sleeps `ms` milliseconds in 1 ms steps, stopping early when cancelled; nap(HELD) runs
 * until the test releases it (one release() lets one held nap end), so that what a test submits
 * behind it waits however slowly the test runs (10 s at most). */
#define HELD 99999
static gint naps_started, releases;

static void
release (void)
{
  g_atomic_int_inc (&releases);
}

static CrunchdStatus
nap_run (const CrunchdCall *call, CrunchdResult *result)
{
  g_atomic_int_inc (&naps_started);
  for (gint64 i = 0; i < (call->args[0].v.i == HELD ? 10000 : call->args[0].v.i); i++) {
    gint n = g_atomic_int_get (&releases);
    if (crunchd_cancelled (call))
      return CRUNCHD_CANCELLED;
    if (call->args[0].v.i == HELD && n > 0 &&
        g_atomic_int_compare_and_exchange (&releases, n, n - 1))
      break;
    g_usleep (1000);
  }
  result->data = g_strdup ("done");
  result->len = 4;
  result->free_data = g_free;
  return CRUNCHD_OK;
}

static const CrunchdArg nap_args[] = {{"ms", CRUNCHD_ARG_INT, 0, 100000, NULL, NULL}};
static const CrunchdFunction nap_decl = {.name = "nap",
                                         .args = nap_args,
                                         .n_args = 1,
                                         .pure = 1,
                                         .deadline = 10,
                                         .content_type = "text/plain",
                                         .run = nap_run};
static CrunchFunction nap = {
    .decl = &nap_decl, .name = "nap", .pure = TRUE, .content_type = "text/plain"};

typedef struct {
  GMutex lock;
  GCond cond;
  GPtrArray *answered; /* CrunchTicket*, in answer order (a reference each) */
} Results;

static void
on_answered (CrunchTicket *ticket, gpointer data)
{
  Results *r = data;

  g_mutex_lock (&r->lock);
  g_ptr_array_add (r->answered, crunch_ticket_ref (ticket));
  g_cond_signal (&r->cond);
  g_mutex_unlock (&r->lock);
}

static void
wait_for (Results *r, guint count)
{
  gint64 until = g_get_monotonic_time () + 10 * G_USEC_PER_SEC;

  g_mutex_lock (&r->lock);
  while (r->answered->len < count)
    g_assert_true (g_cond_wait_until (&r->cond, &r->lock, until));
  g_mutex_unlock (&r->lock);
}

static CrunchTicket *
submit_class (CrunchScheduler *s, Results *r, const gchar *client, guint ms, guint priority)
{
  CrunchTicket *t;

  g_assert_cmpint (crunch_scheduler_admit (s, client), ==, CRUNCH_ADMIT_OK);
  t = crunch_ticket_new (&nap, g_variant_new ("(x)", (gint64)ms), client, 0, on_answered, r);
  t->priority = priority;
  crunch_scheduler_submit (s, t);
  return t;
}

static CrunchTicket *
submit (CrunchScheduler *s, Results *r, const gchar *client, guint ms)
{
  return submit_class (s, r, client, ms, 0);
}

static CrunchScheduler *
scheduler_aging (guint threads, guint queue_limit, guint per_client, gboolean coalesce,
                 gdouble aging)
{
  CrunchSchedulerSettings settings = {.threads = threads,
                                      .queue_limit = queue_limit,
                                      .per_client_limit = per_client,
                                      .coalesce = coalesce,
                                      .priority_aging = aging,
                                      .batching = TRUE};
  return crunch_scheduler_new (&settings);
}

static CrunchScheduler *
scheduler (guint threads, guint queue_limit, guint per_client, gboolean coalesce)
{
  return scheduler_aging (threads, queue_limit, per_client, coalesce, 0);
}

static void
results_init (Results *r)
{
  g_mutex_init (&r->lock);
  g_cond_init (&r->cond);
  r->answered = g_ptr_array_new_with_free_func ((GDestroyNotify)crunch_ticket_unref);
}

static void
results_clear (Results *r)
{
  g_ptr_array_unref (r->answered);
  g_mutex_clear (&r->lock);
  g_cond_clear (&r->cond);
}

static CrunchSchedulerStats
stats (CrunchScheduler *s)
{
  CrunchSchedulerStats st;
  crunch_scheduler_get_stats (s, &st);
  return st;
}

static void
test_fifo_and_bound (void)
{
  CrunchScheduler *s = scheduler (1, 3, 0, FALSE);
  Results r;
  CrunchTicket *t[4];

  results_init (&r);
  t[0] = submit (s, &r, "a", 100); /* runs */
  g_usleep (20000);
  for (gint i = 1; i < 4; i++)
    t[i] = submit (s, &r, "a", i); /* queued: 3 = queue_limit */
  g_assert_cmpuint (stats (s).running, ==, 1);
  g_assert_cmpuint (stats (s).queued, ==, 3);
  g_assert_cmpint (crunch_scheduler_admit (s, "b"), ==, CRUNCH_ADMIT_QUEUE_FULL);
  g_assert_cmpuint (stats (s).rejected_queue_full, ==, 1);
  wait_for (&r, 4);
  for (gint i = 0; i < 4; i++) {
    g_assert_true (r.answered->pdata[i] == t[i]); /* one client: first in, first out */
    g_assert_cmpint (t[i]->outcome, ==, CRUNCH_JOB_OK);
    g_assert_cmpmem (g_bytes_get_data (t[i]->result, NULL), 4, "done", 4);
    crunch_ticket_unref (t[i]);
  }
  g_assert_cmpuint (stats (s).clients, ==, 0);
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* Client a queues 6 jobs, then b queues 1: b's runs at the next free worker, not seventh; then
 * two clients with queued work alternate. */
static void
test_fair_turns (void)
{
  CrunchScheduler *s = scheduler (1, 100, 0, FALSE);
  Results r;
  CrunchTicket *a[6], *b[3];

  results_init (&r);
  g_atomic_int_set (&releases, 0);
  for (gint i = 0; i < 6; i++)
    a[i] = submit (s, &r, "a", i < 2 ? HELD : 20 + i);
  b[0] = submit (s, &r, "b", 20);
  release ();
  wait_for (&r, 2);               /* a[1] runs, held */
  b[1] = submit (s, &r, "b", 21); /* b is active again while a still waits */
  b[2] = submit (s, &r, "b", 22);
  release ();
  wait_for (&r, 9);
  g_assert_true (r.answered->pdata[0] == a[0]);
  g_assert_true (r.answered->pdata[1] == b[0]);
  for (gint i = 2; i < 6; i += 2) /* a and b take turns while both have work */
    g_assert_cmpstr (((CrunchTicket *)r.answered->pdata[i])->client, !=,
                     ((CrunchTicket *)r.answered->pdata[i + 1])->client);
  for (gint i = 0; i < 6; i++)
    crunch_ticket_unref (a[i]);
  for (gint i = 0; i < 3; i++)
    crunch_ticket_unref (b[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

static void
test_per_client_limit (void)
{
  CrunchScheduler *s = scheduler (1, 100, 2, FALSE);
  Results r;
  CrunchTicket *t[3];

  results_init (&r);
  t[0] = submit (s, &r, "a", 50);
  t[1] = submit (s, &r, "a", 51);
  g_assert_cmpint (crunch_scheduler_admit (s, "a"), ==, CRUNCH_ADMIT_CLIENT_LIMIT);
  t[2] = submit (s, &r, "b", 52); /* another client is not limited by a */
  wait_for (&r, 3);
  g_assert_cmpuint (stats (s).rejected_client_limit, ==, 1);
  g_assert_cmpint (crunch_scheduler_admit (s, "a"), ==, CRUNCH_ADMIT_OK); /* a's slots are back */
  crunch_ticket_unref (t[0]);
  crunch_scheduler_submit (s, t[0] = crunch_ticket_new (&nap, g_variant_new ("(x)", (gint64)1), "a",
                                                        0, on_answered, &r));
  wait_for (&r, 4);
  for (gint i = 0; i < 3; i++)
    crunch_ticket_unref (t[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

static void
test_coalescing (void)
{
  CrunchScheduler *s = scheduler (2, 100, 0, TRUE);
  Results r;
  CrunchTicket *t[10];

  results_init (&r);
  g_atomic_int_set (&naps_started, 0);
  for (gint i = 0; i < 10; i++)
    t[i] = submit (s, &r, i % 2 ? "a" : "b", 100);
  wait_for (&r, 10);
  g_assert_cmpint (g_atomic_int_get (&naps_started), ==, 1);
  g_assert_cmpuint (stats (s).tickets_coalesced, ==, 9);
  for (gint i = 0; i < 10; i++) {
    g_assert_cmpint (t[i]->outcome, ==, CRUNCH_JOB_OK);
    g_assert_cmpint (t[i]->coalesced, ==, i > 0);
    crunch_ticket_unref (t[i]);
  }
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* A ticket nobody waits for: dropped if queued, cancelled if running, shared jobs go on. */
static void
test_abandon (void)
{
  CrunchScheduler *s = scheduler (1, 100, 0, TRUE);
  Results r;
  CrunchTicket *running, *shared, *queued;
  gint64 t0;

  results_init (&r);
  g_atomic_int_set (&naps_started, 0);
  running = submit (s, &r, "a", 60000);
  shared = submit (s, &r, "b", 60000); /* coalesced with running */
  queued = submit (s, &r, "c", 60001);
  g_usleep (20000);
  crunch_scheduler_abandon (s, queued, CRUNCH_JOB_CLIENT_GONE);
  g_assert_cmpint (queued->outcome, ==, CRUNCH_JOB_CLIENT_GONE);
  g_assert_cmpuint (stats (s).queued, ==, 0);
  crunch_scheduler_abandon (s, queued, CRUNCH_JOB_TIMED_OUT); /* answered once only */
  crunch_scheduler_abandon (s, running, CRUNCH_JOB_TIMED_OUT);
  g_assert_cmpuint (stats (s).running, ==, 1); /* `shared` still waits for it */
  t0 = g_get_monotonic_time ();
  crunch_scheduler_abandon (s, shared, CRUNCH_JOB_CLIENT_GONE);
  wait_for (&r, 3);
  while (stats (s).running > 0 && g_get_monotonic_time () - t0 < G_USEC_PER_SEC)
    g_usleep (1000);
  g_assert_cmpuint (stats (s).running, ==, 0); /* the computation stopped */
  g_assert_cmpint (running->outcome, ==, CRUNCH_JOB_TIMED_OUT);
  g_assert_cmpint (shared->outcome, ==, CRUNCH_JOB_CLIENT_GONE);
  g_assert_cmpuint (stats (s).jobs_cancelled, ==, 2);
  g_assert_cmpuint (stats (s).tickets_client_gone, ==, 2);
  g_assert_cmpuint (stats (s).tickets_timed_out, ==, 1);
  g_assert_cmpint (g_atomic_int_get (&naps_started), ==, 1);
  crunch_ticket_unref (running);
  crunch_ticket_unref (shared);
  crunch_ticket_unref (queued);
  crunch_scheduler_free (s);
  results_clear (&r);
}

static void
test_drain_and_cancel (void)
{
  CrunchScheduler *s = scheduler (2, 10, 0, FALSE);
  Results r;
  CrunchTicket *t[5];

  results_init (&r);
  for (gint i = 0; i < 5; i++)
    t[i] = submit (s, &r, "a", 60000);
  g_usleep (20000);
  crunch_scheduler_drain (s);
  wait_for (&r, 3); /* the queued three are answered at once */
  for (gint i = 2; i < 5; i++)
    g_assert_cmpint (t[i]->outcome, ==, CRUNCH_JOB_SHUTDOWN);
  g_assert_cmpint (crunch_scheduler_admit (s, "a"), ==, CRUNCH_ADMIT_DRAINING);
  crunch_scheduler_cancel_running (s, CRUNCH_JOB_SHUTDOWN);
  wait_for (&r, 5);
  for (gint i = 0; i < 5; i++) {
    g_assert_cmpint (t[i]->outcome, ==, CRUNCH_JOB_SHUTDOWN);
    crunch_ticket_unref (t[i]);
  }
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* More threads on reload start queued jobs at once. */
static void
test_configure_threads (void)
{
  CrunchScheduler *s = scheduler (1, 10, 0, FALSE);
  CrunchSchedulerSettings more = {.threads = 3, .queue_limit = 10, .batching = TRUE};
  Results r;
  CrunchTicket *t[3];

  results_init (&r);
  for (gint i = 0; i < 3; i++)
    t[i] = submit (s, &r, "a", 300 + i);
  g_usleep (20000);
  g_assert_cmpuint (stats (s).running, ==, 1);
  crunch_scheduler_configure (s, &more);
  g_usleep (50000);
  g_assert_cmpuint (stats (s).running, ==, 3);
  g_assert_cmpuint (stats (s).threads, ==, 3);
  wait_for (&r, 3);
  for (gint i = 0; i < 3; i++)
    crunch_ticket_unref (t[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* The position of `t` among the answers. */
static guint
answer_index (Results *r, CrunchTicket *t)
{
  guint i;

  g_assert_true (g_ptr_array_find (r->answered, t, &i));
  return i;
}

/* A waiting higher class goes first; within a class, clients take turns. */
static void
test_priority_order (void)
{
  CrunchScheduler *s = scheduler (1, 100, 0, FALSE);
  Results r;
  CrunchTicket *blocker, *low[3], *mid, *high[4];

  results_init (&r);
  g_atomic_int_set (&releases, 0);
  blocker = submit_class (s, &r, "a", HELD, 0); /* runs: the rest wait */
  for (gint i = 0; i < 3; i++)
    low[i] = submit_class (s, &r, "a", 1 + i, 0);
  mid = submit_class (s, &r, "c", 4, 5);
  for (gint i = 0; i < 4; i++) /* a, a, b, b */
    high[i] = submit_class (s, &r, i < 2 ? "a" : "b", 5 + i, 9);
  release ();
  wait_for (&r, 9);
  g_assert_true (r.answered->pdata[0] == blocker);
  g_assert_true (r.answered->pdata[1] == high[0]);
  g_assert_true (r.answered->pdata[2] == high[2]); /* b's turn within class 9 */
  g_assert_true (r.answered->pdata[3] == high[1]);
  g_assert_true (r.answered->pdata[4] == high[3]);
  g_assert_true (r.answered->pdata[5] == mid);
  for (gint i = 0; i < 3; i++)
    g_assert_true (r.answered->pdata[6 + i] == low[i]);
  g_assert_cmpuint (stats (s).clients, ==, 0);
  crunch_ticket_unref (blocker);
  crunch_ticket_unref (mid);
  for (gint i = 0; i < 3; i++)
    crunch_ticket_unref (low[i]);
  for (gint i = 0; i < 4; i++)
    crunch_ticket_unref (high[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* 30 class-2 jobs of 10 ms wait ahead of one class-0 job: without aging it runs last; with
 * priority_aging = 0.05 s it outranks them after about 0.1 s, long before their end. */
static void
test_aging (void)
{
  for (gint aging = 0; aging < 2; aging++) {
    CrunchScheduler *s = scheduler_aging (1, 100, 0, FALSE, aging ? 0.05 : 0);
    CrunchTicket *high[30], *low;
    Results r;
    guint at;

    results_init (&r);
    for (gint i = 0; i < 30; i++)
      high[i] = submit_class (s, &r, "h", 10 + i, 2);
    low = submit_class (s, &r, "l", 10, 0);
    wait_for (&r, 31);
    at = answer_index (&r, low);
    g_test_message ("aging %s: the low job ran %uth of 31", aging ? "0.05 s" : "off", at + 1);
    if (aging)
      g_assert_cmpuint (at, <=, 20);
    else
      g_assert_cmpuint (at, ==, 30);
    crunch_ticket_unref (low);
    for (gint i = 0; i < 30; i++)
      crunch_ticket_unref (high[i]);
    crunch_scheduler_free (s);
    results_clear (&r);
  }
}

/* A higher-class ticket does not join an identical job waiting at a lower class's place: it gets
 * a job of its own, which later identical tickets join. */
static void
test_coalescing_classes (void)
{
  CrunchScheduler *s = scheduler (1, 100, 0, TRUE);
  CrunchTicket *blocker, *low, *high, *later;
  Results r;

  results_init (&r);
  g_atomic_int_set (&naps_started, 0);
  g_atomic_int_set (&releases, 0);
  blocker = submit_class (s, &r, "a", HELD, 0);
  low = submit_class (s, &r, "b", 20, 0);
  high = submit_class (s, &r, "c", 20, 9);
  later = submit_class (s, &r, "d", 20, 0); /* joins high's job, the one in the table */
  release ();
  wait_for (&r, 4);
  g_assert_false (high->coalesced);
  g_assert_true (later->coalesced);
  g_assert_true (r.answered->pdata[1] == high);
  g_assert_true (r.answered->pdata[2] == later);
  g_assert_true (r.answered->pdata[3] == low);
  g_assert_cmpint (g_atomic_int_get (&naps_started), ==, 3);
  crunch_ticket_unref (blocker);
  crunch_ticket_unref (low);
  crunch_ticket_unref (high);
  crunch_ticket_unref (later);
  crunch_scheduler_free (s);
  results_clear (&r);
}

static CrunchAdmit
admit_call (CrunchScheduler *s, const gchar *client, guint priority, gdouble timeout,
            CrunchPrediction *p)
{
  gint64 deadline = g_get_monotonic_time () + (gint64)(timeout * G_USEC_PER_SEC);

  return crunch_scheduler_admit_call (s, &(CrunchAdmitRequest){client, &nap, priority, deadline},
                                      p);
}

/* Submits a ticket for a place admit_call() reserved. */
static CrunchTicket *
submit_admitted (CrunchScheduler *s, Results *r, const gchar *client, guint ms, guint priority)
{
  CrunchTicket *t =
      crunch_ticket_new (&nap, g_variant_new ("(x)", (gint64)ms), client, 0, on_answered, r);

  t->priority = priority;
  crunch_scheduler_submit (s, t);
  return t;
}

/* No estimate: admitted whatever its deadline. With one (an EWMA of successful runs), a call
 * whose predicted wait + run exceeds its deadline is refused with a Retry-After; a higher class
 * has less ahead of it and fits. */
static void
test_deadline_admission (void)
{
  CrunchScheduler *s = scheduler (1, 100, 0, FALSE);
  CrunchTicket *first, *t[5], *high;
  CrunchPrediction p;
  Results r;
  gdouble est;

  results_init (&r);
  g_assert_cmpfloat (crunch_scheduler_estimate (s, &nap), <, 0);
  g_assert_cmpint (admit_call (s, "a", 0, 0.001, &p), ==, CRUNCH_ADMIT_OK);
  g_assert_cmpfloat (p.run, <, 0);
  first = submit_admitted (s, &r, "a", 50, 0);
  wait_for (&r, 1);
  /* nap(50) sleeps in 1 ms steps, which a loaded machine stretches: the deadlines below are set
   * from what it measured (a fixed 0.19 s failed once nap(50) had taken 95 ms) */
  est = crunch_scheduler_estimate (s, &nap);
  g_assert_cmpfloat (est, >=, 0.045);
  for (gint i = 0; i < 5; i++)
    t[i] = submit (s, &r, "a", 50); /* one runs, four wait: about 4 x est of work ahead of a */
  g_assert_cmpint (admit_call (s, "a", 0, 3 * est, &p), ==, CRUNCH_ADMIT_DEADLINE);
  g_test_message ("predicted wait %.3f s + run %.3f s > %.3f s, retry after %u s", p.wait, p.run,
                  p.timeout, p.retry_after);
  g_assert_cmpfloat (p.wait, >=, 4 * est * 0.99);
  g_assert_cmpfloat (p.run, >=, est * 0.99);
  g_assert_cmpuint (p.retry_after, >=, 1);
  g_assert_cmpuint (stats (s).rejected_deadline, ==, 1);
  /* nothing ahead (3.5 x est: less than the 4 x est queued below it, more than the running job
   * and its own run) */
  g_assert_cmpint (admit_call (s, "a", 9, 3.5 * est, &p), ==, CRUNCH_ADMIT_OK);
  /* only what is left of the running job, not the work queued in the lower class */
  g_assert_cmpfloat (p.wait, <, 2 * est);
  high = submit_admitted (s, &r, "a", 1, 9);
  wait_for (&r, 7);
  g_assert_true (r.answered->pdata[2] == high); /* after the job running when it came */
  crunch_ticket_unref (first);
  crunch_ticket_unref (high);
  for (gint i = 0; i < 5; i++)
    crunch_ticket_unref (t[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

/* Retry-After of a full queue grows with the work queued. */
static void
test_retry_after (void)
{
  CrunchScheduler *s = scheduler (1, 3, 0, FALSE);
  CrunchTicket *t[4];
  CrunchPrediction p;
  Results r;
  gdouble estimate;

  results_init (&r);
  t[0] = submit (s, &r, "a", 1200);
  wait_for (&r, 1);
  estimate = crunch_scheduler_estimate (s, &nap); /* 1.2 s and a little */
  crunch_ticket_unref (t[0]);
  for (gint i = 0; i < 4; i++)
    t[i] = submit (s, &r, "a", 1200); /* one runs, three wait: the queue is full */
  g_assert_cmpint (admit_call (s, "a", 0, 100, &p), ==, CRUNCH_ADMIT_QUEUE_FULL);
  g_test_message ("estimate %.3f s; queue full, retry after %u s", estimate, p.retry_after);
  /* 3 estimates queued, and what is left of the running one */
  g_assert_cmpuint (p.retry_after, >=, (guint)ceil (3 * estimate));
  g_assert_cmpuint (p.retry_after, <=, (guint)ceil (4 * estimate));
  for (gint i = 0; i < 4; i++)
    crunch_scheduler_abandon (s, t[i], CRUNCH_JOB_CLIENT_GONE);
  for (gint i = 0; i < 4; i++)
    crunch_ticket_unref (t[i]);
  crunch_scheduler_free (s);
  results_clear (&r);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/scheduler/fifo-and-bound", test_fifo_and_bound);
  g_test_add_func ("/scheduler/fair-turns", test_fair_turns);
  g_test_add_func ("/scheduler/per-client-limit", test_per_client_limit);
  g_test_add_func ("/scheduler/coalescing", test_coalescing);
  g_test_add_func ("/scheduler/abandon", test_abandon);
  g_test_add_func ("/scheduler/drain-and-cancel", test_drain_and_cancel);
  g_test_add_func ("/scheduler/configure-threads", test_configure_threads);
  g_test_add_func ("/scheduler/priority-order", test_priority_order);
  g_test_add_func ("/scheduler/aging", test_aging);
  g_test_add_func ("/scheduler/coalescing-classes", test_coalescing_classes);
  g_test_add_func ("/scheduler/deadline-admission", test_deadline_admission);
  g_test_add_func ("/scheduler/retry-after", test_retry_after);
  return g_test_run ();
}
