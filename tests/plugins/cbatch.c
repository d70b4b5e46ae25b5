/* cbatch.c - test plugin (ABI 2): a function that takes batches, for the process pool's batch
 * frames (tests/test-batch-procs.c). bsum(x) answers "x:n" for each call, n being the size of
 * the batch it came in; x = 13 fails that call alone, 14 crashes the process (abort()), 15 waits
 * up to 5 s for every call of the batch to be cancelled. Each call reports progress once. */
#include <crunchd/crunchd-plugin.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const CrunchdArg args[] = {{"x", CRUNCHD_ARG_INT, -1000, 1000, NULL, "a number"}};

static int
all_cancelled (const CrunchdCall *const *calls, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    if (!crunchd_cancelled (calls[i]))
      return 0;
  return 1;
}

static void
bsum_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
            CrunchdStatus *statuses)
{
  for (unsigned i = 0; i < n; i++) {
    long long x = calls[i]->args[0].v.i;
    if (x == 14)
      abort ();
    if (x == 15) {
      for (int step = 0; step < 500 && !all_cancelled (calls, n); step++) {
        struct timespec ts = {0, 10000000};
        while (nanosleep (&ts, &ts) != 0 && errno == EINTR)
          ;
      }
    }
  }
  for (unsigned i = 0; i < n; i++) {
    long long x = calls[i]->args[0].v.i;
    char *text;
    crunchd_progress (calls[i], 0.5, "half way");
    if (crunchd_cancelled (calls[i])) {
      statuses[i] = CRUNCHD_CANCELLED;
      continue;
    }
    if (x == 13) {
      statuses[i] = crunchd_result_error (&results[i], "unlucky 13");
      continue;
    }
    text = malloc (64);
    if (text == NULL) {
      statuses[i] = crunchd_result_error (&results[i], "out of memory");
      continue;
    }
    results[i].data = text;
    results[i].len = (size_t)snprintf (text, 64, "%lld:%u", x, n);
    statuses[i] = CRUNCHD_OK;
  }
}

static const CrunchdFunction functions[] = {
    {"bsum", "x and the size of its batch", args, 1, 0, 10, "text/plain", NULL, NULL, 8, 0.05,
     bsum_batch},
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &functions[0]);
}

CRUNCHD_PLUGIN_DEFINE ("cbatch", "1.0", init);
