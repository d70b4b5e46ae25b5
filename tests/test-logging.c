/* test-logging.c - what journald receives: the level filter, and the structured fields of the
 * access log (PRIORITY, METHOD, ROUTE, STATUS, REQUEST_ID) from a server running in this process.
 */
#include <gio/gio.h>
#include <string.h>

#include "config.h"
#include "logging.h"
#include "scheduler.h"
#include "server.h"

/* Journal records, each a GHashTable field name -> value; written from MHD's thread too. */
static GMutex records_lock;
static GPtrArray *records;

static GLogWriterOutput
capture (GLogLevelFlags level, const GLogField *fields, gsize n_fields, gpointer data)
{
  GHashTable *record = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);

  for (gsize i = 0; i < n_fields; i++) {
    gsize len = fields[i].length < 0 ? strlen (fields[i].value) : (gsize)fields[i].length;
    g_hash_table_insert (record, g_strdup (fields[i].key), g_strndup (fields[i].value, len));
  }
  g_mutex_lock (&records_lock);
  g_ptr_array_add (records, record);
  g_mutex_unlock (&records_lock);
  return G_LOG_WRITER_HANDLED;
}

/* The first record whose MESSAGE contains `text`, waiting up to 5 s; NULL if none. */
static GHashTable *
find_record (const gchar *text)
{
  gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;

  do {
    g_mutex_lock (&records_lock);
    for (guint i = 0; i < records->len; i++) {
      GHashTable *record = records->pdata[i];
      const gchar *message = g_hash_table_lookup (record, "MESSAGE");
      if (message != NULL && strstr (message, text) != NULL) {
        g_mutex_unlock (&records_lock);
        return record;
      }
    }
    g_mutex_unlock (&records_lock);
    g_usleep (10000);
  } while (g_get_monotonic_time () < until);
  return NULL;
}

static void
test_level_filter (void)
{
  crunch_logging_set_level ("message");
  g_info ("info-below-the-level");
  g_message ("message-at-the-level");
  g_assert_nonnull (find_record ("message-at-the-level"));
  g_assert_null (find_record ("info-below-the-level"));
  crunch_logging_set_level ("info");
}

/* One HTTP/1.0 request on a fresh connection; returns the status line. */
static gchar *
http_get (guint16 port, const gchar *path)
{
  g_autoptr (GSocketClient) client = g_socket_client_new ();
  g_autoptr (GSocketConnection) conn = NULL;
  g_autoptr (GError) error = NULL;
  g_autofree gchar *request = g_strdup_printf ("GET %s HTTP/1.0\r\n\r\n", path);
  g_autoptr (GDataInputStream) in = NULL;

  conn = g_socket_client_connect_to_host (client, "127.0.0.1", port, NULL, &error);
  g_assert_no_error (error);
  g_output_stream_write_all (g_io_stream_get_output_stream (G_IO_STREAM (conn)), request,
                             strlen (request), NULL, NULL, &error);
  g_assert_no_error (error);
  in = g_data_input_stream_new (g_io_stream_get_input_stream (G_IO_STREAM (conn)));
  return g_data_input_stream_read_line (in, NULL, NULL, &error);
}

static void
assert_field (GHashTable *record, const gchar *key, const gchar *value)
{
  g_assert_nonnull (record);
  g_assert_cmpstr (g_hash_table_lookup (record, key), ==, value);
}

static void
test_access_fields (void)
{
  g_autoptr (CrunchConfig) config = crunch_config_new_default ();
  g_autoptr (GArray) no_fds = g_array_new (FALSE, FALSE, sizeof (gint));
  g_autoptr (GError) error = NULL;
  CrunchScheduler *scheduler =
      crunch_scheduler_new (&(CrunchSchedulerSettings){.threads = 1, .queue_limit = 8});
  CrunchCalls *calls = crunch_calls_new (scheduler);
  CrunchServer *server;
  GHashTable *listening;
  const gchar *port_text;
  guint16 port;
  g_autofree gchar *ok = NULL;
  g_autofree gchar *missing = NULL;

  g_strfreev (config->listen);
  config->listen = g_strsplit ("127.0.0.1:0", ",", -1);
  server = crunch_server_new (scheduler, calls, config);
  g_assert_true (crunch_server_start (server, no_fds, &error));
  listening = find_record ("listening on http://127.0.0.1:");
  g_assert_nonnull (listening);
  port_text = strrchr (g_hash_table_lookup (listening, "MESSAGE"), ':') + 1;
  port = (guint16)g_ascii_strtoull (port_text, NULL, 10);

  ok = http_get (port, "/fast");
  g_assert_true (g_str_has_prefix (ok, "HTTP/1.0 200") || g_str_has_prefix (ok, "HTTP/1.1 200"));
  missing = http_get (port, "/nowhere");
  g_assert_nonnull (strstr (missing, " 404"));

  GHashTable *fast = find_record ("\"GET /fast HTTP/1.0\" 200");
  assert_field (fast, "PRIORITY", "6"); /* info */
  assert_field (fast, "GLIB_DOMAIN", CRUNCH_LOG_ACCESS_DOMAIN);
  assert_field (fast, "METHOD", "GET");
  assert_field (fast, "ROUTE", "/fast");
  assert_field (fast, "STATUS", "200");
  g_assert_nonnull (g_hash_table_lookup (fast, "REQUEST_ID"));
  GHashTable *nowhere = find_record ("\"GET /nowhere HTTP/1.0\" 404");
  assert_field (nowhere, "ROUTE", "/nowhere");
  assert_field (nowhere, "STATUS", "404");

  crunch_server_free (server); /* no compute request was made: nothing is suspended */
  crunch_scheduler_free (scheduler);
  crunch_calls_free (calls);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  records = g_ptr_array_new_with_free_func ((GDestroyNotify)g_hash_table_unref);
  crunch_logging_init ();
  crunch_logging_set_journal_sink (capture, NULL);
  g_test_add_func ("/logging/level-filter", test_level_filter);
  g_test_add_func ("/logging/access-fields", test_access_fields);
  return g_test_run ();
}
