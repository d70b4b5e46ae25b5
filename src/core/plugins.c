/* plugins.c - plugins are shared objects loaded with GModule at start-up.
 *
 * Each exports `crunchd_plugin` (a CrunchdPlugin); its first member is the ABI version it was
 * built for, checked before anything else is read: CRUNCHD_PLUGIN_ABI_VERSION_MIN up to ours
 * load (nothing a plugin hands us grew between them; CrunchdCall, which we hand it, only grew at
 * its end). init() then calls host->register_function()
 * for each function, which lands in crunch_functions_add(). The built-ins go through
 * crunch_plugins_register() too, so every function is declared and validated the same way.
 *
 * Why no loading on reload: the function registry is read without a lock by the HTTP threads
 * because it never changes after start-up, and a plugin can never be unloaded while a worker may
 * be inside its code. Reload reports a changed [plugins] section as needing a restart. */
#include "plugins.h"

#include <gmodule.h>
#include <string.h>

#include "functions.h"

typedef struct {
  const gchar *label;
  guint abi;     /* the plugin's */
  GError *error; /* the first registration error */
} HostState;

static int
host_register (CrunchdHost *host, const CrunchdFunction *fn)
{
  HostState *state = host->priv;
  GError *local = NULL;

  if (crunch_functions_add_abi (fn, state->abi, state->label, &local))
    return 0;
  if (state->error == NULL)
    state->error = local;
  else
    g_error_free (local);
  return -1;
}

gboolean
crunch_plugins_register (const CrunchdPlugin *plugin, const gchar *label, GError **error)
{
  HostState state = {label, plugin->abi_version, NULL};
  CrunchdHost host = {CRUNCHD_PLUGIN_ABI_VERSION, host_register, &state};
  int status;

  if (plugin->abi_version < CRUNCHD_PLUGIN_ABI_VERSION_MIN ||
      plugin->abi_version > CRUNCHD_PLUGIN_ABI_VERSION) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': built for plugin ABI %u, this crunchd loads ABI %u to %u: rebuild "
                 "it against this crunchd's crunchd-plugin.h",
                 label, plugin->abi_version, CRUNCHD_PLUGIN_ABI_VERSION_MIN,
                 CRUNCHD_PLUGIN_ABI_VERSION);
    return FALSE;
  }
  if (plugin->init == NULL) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': no init function", label);
    return FALSE;
  }
  status = plugin->init (&host);
  if (state.error != NULL) {
    g_propagate_error (error, state.error);
    return FALSE;
  }
  if (status != 0) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': init failed (returned %d)", label, status);
    return FALSE;
  }
  return TRUE;
}

/* A program plugin: an executable regular file, `dir`/name or a path, when no shared object
 * `dir`/name.so exists and the path does not end in ".so". NULL otherwise. */
static gchar *
program_path (const gchar *dir, const gchar *name)
{
  g_autofree gchar *so = crunch_plugins_path (dir, name);
  g_autofree gchar *path =
      strchr (name, '/') != NULL ? g_strdup (name) : g_build_filename (dir, name, NULL);

  if (g_str_has_suffix (path, ".so") ||
      (strchr (name, '/') == NULL && g_file_test (so, G_FILE_TEST_EXISTS)))
    return NULL;
  if (g_file_test (path, G_FILE_TEST_IS_REGULAR) && g_file_test (path, G_FILE_TEST_IS_EXECUTABLE))
    return g_steal_pointer (&path);
  return NULL;
}

gchar *
crunch_plugins_path (const gchar *dir, const gchar *name)
{
  g_autofree gchar *file = NULL;

  if (strchr (name, '/') != NULL)
    return g_strdup (name);
  file = g_strconcat (name, ".so", NULL);
  return g_build_filename (dir, file, NULL);
}

static gboolean
load_one (const gchar *dir, const gchar *name, GError **error)
{
  g_autofree gchar *path = crunch_plugins_path (dir, name);
  g_autofree gchar *label = NULL;
  GModule *module;
  gpointer symbol = NULL;
  g_autoptr (GError) local = NULL;

  if (!g_file_test (path, G_FILE_TEST_EXISTS)) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': no such file %s ([plugins] dir = %s)", name, path, dir);
    return FALSE;
  }
  /* LOCAL: plugins cannot see each other's symbols; LAZY is not used, so an unresolved symbol
   * is found now rather than in a worker thread later. */
  module = g_module_open (path, G_MODULE_BIND_LOCAL);
  if (module == NULL) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': cannot load %s: %s", name, path, g_module_error ());
    return FALSE;
  }
  if (!g_module_symbol (module, CRUNCHD_PLUGIN_SYMBOL, &symbol) || symbol == NULL) {
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION,
                 "plugin '%s': %s has no entry point '" CRUNCHD_PLUGIN_SYMBOL
                 "' (define it with CRUNCHD_PLUGIN_DEFINE)",
                 name, path);
    g_module_close (module);
    return FALSE;
  }
  if (!crunch_plugins_register (symbol, name, &local)) {
    /* registered functions may point into the module: keep it, the registry is reset anyway */
    g_module_make_resident (module);
    g_set_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION, "%s (%s)",
                 local->message, path);
    return FALSE;
  }
  g_module_make_resident (module);
  g_info ("plugin '%s' loaded from %s", name, path);
  return TRUE;
}

gboolean
crunch_plugins_load (const gchar *dir, gchar **names, CrunchProgramLoader programs, gpointer data,
                     GError **error)
{
  for (gchar **n = names; n != NULL && *n != NULL; n++) {
    g_autofree gchar *program = program_path (dir, *n);
    if (program != NULL && programs == NULL)
      g_info ("plugin '%s': program %s is not loaded here", *n, program);
    else if (program != NULL && !programs (*n, program, data, error))
      return FALSE;
    else if (program == NULL && !load_one (dir, *n, error))
      return FALSE;
  }
  return TRUE;
}
