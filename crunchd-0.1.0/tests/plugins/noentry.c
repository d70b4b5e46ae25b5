/* noentry.c - test plugin that forgot CRUNCHD_PLUGIN_DEFINE: loading it must fail. */
__attribute__ ((visibility ("default"))) int crunchd_plugin_typo = 1;
