/* functions.c - name -> CrunchFunction. The table is filled at start-up and read-only after, so
 * lookups from the MHD thread need no lock; live settings inside entries are atomics. */
#include "functions.h"

G_DEFINE_QUARK (crunch - function - error - quark, crunch_function_error)

static CrunchFunction *const registry[] = {
    &crunch_fib_function,
};

void
crunch_functions_init (const CrunchConfig *config)
{
  crunch_functions_configure (config);
}

void
crunch_functions_configure (const CrunchConfig *config)
{
  for (gsize i = 0; i < G_N_ELEMENTS (registry); i++) {
    if (registry[i]->configure != NULL)
      registry[i]->configure (registry[i], config);
  }
}

gchar *
crunch_function_key (const CrunchFunction *fn, GVariant *args)
{
  g_autofree gchar *printed = NULL;

  if (!fn->pure)
    return NULL;
  printed = g_variant_print (args, TRUE);
  return g_strconcat (fn->name, " ", printed, NULL);
}

const CrunchFunction *
crunch_functions_lookup (const gchar *name)
{
  for (gsize i = 0; i < G_N_ELEMENTS (registry); i++) {
    if (g_str_equal (registry[i]->name, name))
      return registry[i];
  }
  return NULL;
}
