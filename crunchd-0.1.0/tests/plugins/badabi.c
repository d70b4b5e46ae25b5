/* badabi.c - test plugin built for a future ABI: loading it must fail. */
#include <crunchd/crunchd-plugin.h>

static int
init (CrunchdHost *host)
{
  return 0;
}

__attribute__ ((visibility ("default")))
const CrunchdPlugin crunchd_plugin = {CRUNCHD_PLUGIN_ABI_VERSION + 1, "badabi", "1.0", init};
