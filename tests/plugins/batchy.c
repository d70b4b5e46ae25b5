/* batchy.c - a test plugin for dynamic batching: shows each caller the batch it ran in.
 *
 * /fn/batchy?x=N answers "x=N n=SIZE batch=SEQ": SIZE is how many calls its run_batch got, SEQ
 * counts the batches this process ran. sleep_ms (the batch sleeps the largest of its calls',
 * checking every millisecond whether all its calls are gone), fail=1 fails that call alone.
 * max_batch 8, max_delay 0.3 s: long enough to see a lone call wait, and to fill a batch from
 * threads that send at once. /fn/patient is the same with max_delay 1 s (the most a plugin may
 * ask), for tests that show a batch closing early: a bound of 0.6 s tells early from max_delay even
 * on a starved machine. */
#include <crunchd/crunchd-plugin.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const CrunchdArg args[] = {
    {"x", CRUNCHD_ARG_INT, 0, 1000000, NULL, "echoed"},
    {"sleep_ms", CRUNCHD_ARG_INT, 0, 10000, "0", "how long the batch takes"},
    {"fail", CRUNCHD_ARG_INT, 0, 1, "0", "1: this call fails"},
};

static unsigned long batches;

static int
all_gone (const CrunchdCall *const *calls, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    if (!crunchd_cancelled (calls[i]))
      return 0;
  return 1;
}

static void
batchy_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
              CrunchdStatus *statuses)
{
  unsigned long seq = __atomic_add_fetch (&batches, 1, __ATOMIC_RELAXED);
  long long sleep_ms = 0;

  for (unsigned i = 0; i < n; i++)
    if (calls[i]->args[1].v.i > sleep_ms)
      sleep_ms = calls[i]->args[1].v.i;
  for (long long t = 0; t < sleep_ms; t++) {
    struct timespec ms = {0, 1000000};
    if (all_gone (calls, n)) {
      for (unsigned i = 0; i < n; i++)
        statuses[i] = CRUNCHD_CANCELLED;
      return;
    }
    /* crunchd's timeslice signal ends a sleep early (crunchd-plugin(3)): sleep the rest */
    while (nanosleep (&ms, &ms) != 0 && errno == EINTR)
      ;
  }
  for (unsigned i = 0; i < n; i++) {
    char *text = malloc (64);
    if (calls[i]->args[2].v.i != 0) {
      free (text);
      statuses[i] = crunchd_result_error (&results[i], "call %lld failed on request",
                                          (long long)calls[i]->args[0].v.i);
      continue;
    }
    results[i].len = (size_t)snprintf (text, 64, "x=%lld n=%u batch=%lu",
                                       (long long)calls[i]->args[0].v.i, n, seq);
    results[i].data = text;
    statuses[i] = CRUNCHD_OK;
  }
}

static const CrunchdFunction batchy = {
    .name = "batchy",
    .description = "tells each caller its batch",
    .args = args,
    .n_args = sizeof args / sizeof args[0],
    .pure = 1,
    .deadline = 20,
    .content_type = "text/plain",
    .max_batch = 8,
    .max_delay = 0.3,
    .run_batch = batchy_batch,
};

static int
init (CrunchdHost *host)
{
  static CrunchdFunction patient;
  int rc = host->register_function (host, &batchy);

  patient = batchy;
  patient.name = "patient";
  patient.description = "batchy with max_delay 1 s";
  patient.max_delay = 1.0;
  return rc != 0 ? rc : host->register_function (host, &patient);
}

CRUNCHD_PLUGIN_DEFINE ("batchy", "1.0", init);
