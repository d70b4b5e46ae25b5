/* fuzz-config.c - libFuzzer target: the whole config loader (crunch_config_load_data). A file it
 * accepts must come back unchanged through --check-config's output (crunch_config_to_string). */
#include "config.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  g_autofree gchar *text = g_strndup ((const gchar *)data, size);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchConfig) config = crunch_config_load_data (text, "fuzz.ini", &error);
  g_autoptr (CrunchConfig) again = NULL;
  g_autofree gchar *printed = NULL, *reprinted = NULL;

  g_assert ((config == NULL) == (error != NULL));
  if (config == NULL) {
    g_assert (g_str_has_prefix (error->message, "fuzz.ini"));
    return 0;
  }
  printed = crunch_config_to_string (config);
  again = crunch_config_load_data (printed, "printed.ini", &error);
  if (again == NULL)
    g_error ("the printed configuration does not load: %s\n%s", error->message, printed);
  reprinted = crunch_config_to_string (again);
  g_assert_cmpstr (printed, ==, reprinted);
  return 0;
}
