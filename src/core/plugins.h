/* plugins.h - loading plugins (GModule) and running their entry point. */
#pragma once

#include <glib.h>

#include "crunchd/crunchd-plugin.h"

/* Checks the plugin's ABI version and runs its init, which registers its functions in the
 * function registry. `label` names it in errors ("builtin", or the name from [plugins] load). */
gboolean crunch_plugins_register (const CrunchdPlugin *plugin, const gchar *label, GError **error);

/* Starts a program plugin and registers its functions (procpool.c); FALSE with an error naming
 * the plugin and the program. */
typedef gboolean (*CrunchProgramLoader) (const gchar *name, const gchar *path, gpointer data,
                                         GError **error);

/* Loads each name in `names` (NULL or empty: none) from `dir`: "name" is `dir`/name.so, a name
 * with a '/' is a path. Errors name the plugin and the file. Loaded modules stay resident:
 * worker threads may be running their code at any time.
 * A name that is no shared object (no `dir`/name.so, a path not ending in ".so") but an
 * executable regular file (`dir`/name, or the path) is a program plugin: handed to `programs`,
 * or skipped (logged) when it is NULL (crunchd-worker --stdio). */
gboolean crunch_plugins_load (const gchar *dir, gchar **names, CrunchProgramLoader programs,
                              gpointer data, GError **error);

/* The file a name resolves to. */
gchar *crunch_plugins_path (const gchar *dir, const gchar *name);
