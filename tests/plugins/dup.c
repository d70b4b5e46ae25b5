/* dup.c - test plugin that registers a name crunchd already has: loading it must fail. */
#include <crunchd/crunchd-plugin.h>

static CrunchdStatus
run (const CrunchdCall *call, CrunchdResult *result)
{
  return CRUNCHD_OK;
}

static const CrunchdFunction fib = {
    "fib", "a second fib", NULL, 0, 1, 1, "text/plain", run, NULL, 0, 0, NULL,
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &fib);
}

CRUNCHD_PLUGIN_DEFINE ("dup", "1.0", init);
