/* spin.c - example crunchd plugin: burn CPU for a while, checking for cancellation coarsely.
 *
 * GET /fn/spin?seconds=2&grain=100 keeps one core busy for `seconds`, looking at the cancel flag
 * only once every `grain` milliseconds: the pattern for work that cannot be interrupted at a fine
 * grain (a solver step, a batch, a call into a library). A cancelled call stops within one grain.
 * It reports its progress (seconds spun) at every grain with crunchd_progress() (ABI 2).
 * Build: cc -shared -fPIC $(pkg-config --cflags crunchd-plugin) -o spin.so spin.c */
#include <crunchd/crunchd-plugin.h>
#include <stdlib.h>
#include <time.h>

static const CrunchdArg args[] = {
    {"seconds", CRUNCHD_ARG_FLOAT, 0, 3600, NULL, "how long to keep a core busy"},
    {"grain", CRUNCHD_ARG_INT, 1, 10000, "100", "milliseconds between cancellation checks"},
};

static double
now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* One uninterruptible piece of work: spin until `until`. */
static void
busy_until (double until)
{
  volatile unsigned long sink = 0;

  while (now () < until)
    for (int i = 0; i < 1000; i++)
      sink += i;
}

static CrunchdStatus
spin_run (const CrunchdCall *call, CrunchdResult *result)
{
  double seconds = call->args[0].v.f, grain = call->args[1].v.i / 1000.0;
  double start = now (), end = start + seconds;
  unsigned long checks = 0;
  char *text;
  int len;

  for (double t = start; t < end; t = now ()) {
    char message[64];

    checks++;
    if (crunchd_cancelled (call))
      return CRUNCHD_CANCELLED;
    snprintf (message, sizeof message, "%.1f of %.1f s", t - start, seconds);
    crunchd_progress (call, (t - start) / seconds, message); /* crunchd keeps a few a second */
    busy_until (t + grain < end ? t + grain : end);
  }
  len = snprintf (NULL, 0, "spun %.3f s, %lu checks\n", now () - start, checks);
  text = malloc (len + 1);
  if (text == NULL)
    return crunchd_result_error (result, "out of memory");
  snprintf (text, len + 1, "spun %.3f s, %lu checks\n", now () - start, checks);
  result->data = text;
  result->len = len;
  return CRUNCHD_OK;
}

static const CrunchdFunction spin = {
    .name = "spin",
    .description = "keep a core busy for a while; checks cancellation every `grain` ms",
    .args = args,
    .n_args = sizeof args / sizeof args[0],
    .pure = 0, /* two clients asking to spin want two spins */
    .deadline = 30,
    .content_type = "text/plain; charset=utf-8",
    .run = spin_run,
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &spin);
}

CRUNCHD_PLUGIN_DEFINE ("spin", "1.0", init);
