/* alltypes.c - test plugin: one argument of every type, echoed back. */
#include <crunchd/crunchd-plugin.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const CrunchdArg args[] = {
    {"i", CRUNCHD_ARG_INT, -1000, 1000, NULL, "an int"},
    {"f", CRUNCHD_ARG_FLOAT, -1, 1, NULL, "a float"},
    {"s", CRUNCHD_ARG_STRING, 1, 8, NULL, "a string"},
    {"b", CRUNCHD_ARG_BYTES, 0, 4, "", "bytes"},
    {"d", CRUNCHD_ARG_INT, 0, 10, "7", "an int with a default"},
};

static CrunchdStatus
echo_run (const CrunchdCall *call, CrunchdResult *result)
{
  char *text = malloc (256);
  int n;

  if (text == NULL)
    return crunchd_result_error (result, "out of memory");
  n = snprintf (text, 256, "i=%lld f=%g s=%s d=%lld b=", (long long)call->args[0].v.i,
                call->args[1].v.f, call->args[2].v.s.data, (long long)call->args[4].v.i);
  for (size_t k = 0; k < call->args[3].v.s.len; k++)
    n += snprintf (text + n, 256 - n, "%02x", (unsigned char)call->args[3].v.s.data[k]);
  result->data = text;
  result->len = (size_t)n;
  return CRUNCHD_OK;
}

static CrunchdStatus
fail_run (const CrunchdCall *call, CrunchdResult *result)
{
  return crunchd_result_error (result, "failed on purpose");
}

/* like spin, with a short deadline: for deadline tests */
static CrunchdStatus
slow_run (const CrunchdCall *call, CrunchdResult *result)
{
  struct timespec start, t;

  clock_gettime (CLOCK_MONOTONIC, &start);
  do {
    if (crunchd_cancelled (call))
      return CRUNCHD_CANCELLED;
    nanosleep (&(struct timespec){0, 20000000}, NULL);
    clock_gettime (CLOCK_MONOTONIC, &t);
  } while ((t.tv_sec - start.tv_sec) + (t.tv_nsec - start.tv_nsec) / 1e9 < call->args[0].v.f);
  return crunchd_result_error (result, "not cancelled in time");
}

static const CrunchdArg slow_args[] = {{"seconds", CRUNCHD_ARG_FLOAT, 0, 60, NULL, NULL}};

static const CrunchdFunction functions[] = {
    {"slow", "sleeps, checking cancellation", slow_args, 1, 0, 0.5, "text/plain", slow_run, NULL, 0,
     0, NULL},
    {"echo", "echo every argument type", args, sizeof args / sizeof args[0], 1, 5,
     "text/plain; charset=utf-8", echo_run, NULL, 0, 0, NULL},
    {"fail", "always fails", NULL, 0, 0, 5, "text/plain; charset=utf-8", fail_run, NULL, 0, 0,
     NULL},
};

static int
init (CrunchdHost *host)
{
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    if (host->register_function (host, &functions[i]) != 0)
      return -1;
  }
  return 0;
}

CRUNCHD_PLUGIN_DEFINE ("alltypes", "1.0", init);
