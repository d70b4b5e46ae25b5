/* abi1.c - a plugin built against version 1 of the plugin ABI (tests/plugins/abi1/ holds that
 * header as it was released), to show that crunchd still loads and runs it: GET /fn/oldsum. */
#include <crunchd/crunchd-plugin.h>
#include <stdlib.h>

#if CRUNCHD_PLUGIN_ABI_VERSION != 1
#error "abi1.c must be built against the version-1 header (tests/plugins/abi1)"
#endif

static const CrunchdArg args[] = {
    {"a", CRUNCHD_ARG_INT, -1000000, 1000000, NULL, "first"},
    {"b", CRUNCHD_ARG_INT, -1000000, 1000000, "1", "second"},
};

static CrunchdStatus
run_oldsum (const CrunchdCall *call, CrunchdResult *result)
{
  char *text = malloc (32);

  if (text == NULL)
    return crunchd_result_error (result, "out of memory");
  result->len =
      (size_t)snprintf (text, 32, "%lld\n", (long long)(call->args[0].v.i + call->args[1].v.i));
  result->data = text;
  return crunchd_cancelled (call) ? CRUNCHD_CANCELLED : CRUNCHD_OK;
}

static const CrunchdFunction oldsum = {
    .name = "oldsum",
    .description = "a + b, from a plugin built for ABI 1",
    .args = args,
    .n_args = 2,
    .pure = 1,
    .deadline = 5,
    .content_type = "text/plain; charset=utf-8",
    .run = run_oldsum,
};

static int
init (CrunchdHost *host)
{
  return host->register_function (host, &oldsum);
}

CRUNCHD_PLUGIN_DEFINE ("abi1", "1.0", init);
