/* forward.c - example crunchd plugin: a function that is cheaper per call in batches.
 *
 * GET /fn/forward?x=7 answers "forward(7) = 50" (x * x + 1) the way a model answers an input: one
 * pass over a batch costs FIXED_MS of CPU, plus ITEM_MS per input in it (a forward pass, a
 * vectorised call, one database round trip for many keys). Alone, every call pays the fixed cost;
 * declared with max_batch and max_delay (ABI 2), crunchd hands run_batch up to 32 waiting calls
 * at once, so under concurrent load the fixed cost is shared.
 * fail=1 makes that input fail alone (its caller gets 500, the rest of the batch its answers).
 * A call whose client has gone is skipped; once every call of the batch is gone, the pass stops
 * at its next check (every millisecond).
 * Build: cc -shared -fPIC $(pkg-config --cflags crunchd-plugin) -o forward.so forward.c */
#include <crunchd/crunchd-plugin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define FIXED_MS 20.0
#define ITEM_MS 0.2

static const CrunchdArg args[] = {
    {"x", CRUNCHD_ARG_INT, 0, 1000000, NULL, "the input"},
    {"fail", CRUNCHD_ARG_INT, 0, 1, "0", "1: this input fails (the others do not)"},
};

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int
all_gone (const CrunchdCall *const *calls, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    if (!crunchd_cancelled (calls[i]))
      return 0;
  return 1;
}

/* Keeps a core busy for `ms`, looking at the calls every millisecond; 0 if they all went. */
static int
work (const CrunchdCall *const *calls, unsigned n, double ms)
{
  volatile unsigned long sink = 0;
  double end = now () + ms / 1000.0;

  for (double t = now (); t < end; t = now ()) {
    if (all_gone (calls, n))
      return 0;
    while (now () < t + 0.001 && now () < end)
      for (int i = 0; i < 1000; i++)
        sink += i;
  }
  return 1;
}

static void
forward_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
               CrunchdStatus *statuses)
{
  unsigned live = 0;

  for (unsigned i = 0; i < n; i++)
    live += !crunchd_cancelled (calls[i]);
  if (!work (calls, n, FIXED_MS + ITEM_MS * live)) {
    for (unsigned i = 0; i < n; i++)
      statuses[i] = CRUNCHD_CANCELLED;
    return;
  }
  for (unsigned i = 0; i < n; i++) {
    long long x = (long long)calls[i]->args[0].v.i;
    char *text;
    int len;

    if (crunchd_cancelled (calls[i])) {
      statuses[i] = CRUNCHD_CANCELLED;
      continue;
    }
    if (calls[i]->args[1].v.i != 0) {
      statuses[i] = crunchd_result_error (&results[i], "input %lld was asked to fail", x);
      continue;
    }
    len = snprintf (NULL, 0, "forward(%lld) = %lld\n", x, x * x + 1);
    text = malloc (len + 1);
    if (text == NULL) {
      statuses[i] = crunchd_result_error (&results[i], "out of memory");
      continue;
    }
    snprintf (text, len + 1, "forward(%lld) = %lld\n", x, x * x + 1);
    results[i].data = text;
    results[i].len = len;
    statuses[i] = CRUNCHD_OK;
  }
}

static const CrunchdFunction forward = {
    .name = "forward",
    .description = "x*x+1, at a model's cost: 20 ms per pass plus 0.2 ms per input; batches of "
                   "up to 32",
    .args = args,
    .n_args = sizeof args / sizeof args[0],
    .pure = 1,
    .deadline = 30,
    .content_type = "text/plain; charset=utf-8",
    .run = NULL, /* a single call is a batch of one */
    .max_batch = 32,
    .max_delay = 0.005,
    .run_batch = forward_batch,
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &forward);
}

CRUNCHD_PLUGIN_DEFINE ("forward", "1.0", init);
