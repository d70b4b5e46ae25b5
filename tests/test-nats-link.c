/* test-nats-link.c - the NATS job protocol pieces that need no server, and the timer thread. */
#include "nats-link.h"
#include "timer-thread.h"

static void
test_wire_status (void)
{
  for (guint i = 0; i < CRUNCH_WIRE_UNKNOWN; i++)
    g_assert_cmpint (crunch_wire_status_parse (crunch_wire_status_name (i)), ==, i);
  g_assert_cmpint (crunch_wire_status_parse ("nonsense"), ==, CRUNCH_WIRE_UNKNOWN);
  g_assert_cmpint (crunch_wire_status_parse (NULL), ==, CRUNCH_WIRE_UNKNOWN);
  g_assert_cmpstr (crunch_wire_status_name (CRUNCH_WIRE_UNKNOWN), ==, "unknown");
}

static void
test_args (void)
{
  g_autoptr (GVariant) args = g_variant_ref_sink (g_variant_new ("(us)", 42, "x"));
  g_autoptr (GVariant) copy = NULL;
  g_autoptr (GVariant) junk = NULL;
  g_autoptr (GError) error = NULL;
  const gchar *type;
  g_autoptr (GBytes) wire = crunch_nats_args_encode (args, &type);
  gsize size;
  gconstpointer data = g_bytes_get_data (wire, &size);

  g_assert_cmpstr (type, ==, "(us)");
  copy = crunch_nats_args_decode (type, data, size, &error);
  g_assert_no_error (error);
  g_assert_true (g_variant_equal (args, copy));

  /* a bad type is refused; a body that does not fit the type reads as its default value */
  g_assert_null (crunch_nats_args_decode ("(u", data, size, &error));
  g_assert_nonnull (error);
  g_clear_error (&error);
  g_assert_null (crunch_nats_args_decode (NULL, data, size, &error));
  g_clear_error (&error);
  junk = crunch_nats_args_decode ("u", "abcdefg", 7, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_variant_get_uint32 (junk), ==, 0);
}

static gboolean
count (gpointer data)
{
  g_atomic_int_inc ((gint *)data);
  return G_SOURCE_CONTINUE;
}

static void
test_timer_thread (void)
{
  CrunchTimerThread *timers = crunch_timer_thread_new ("test-timers");
  gint fired = 0, never = 0;
  GSource *t =
      crunch_timer_thread_add (timers, g_get_monotonic_time () + 20000, count, &fired, NULL);
  GSource *idle = crunch_timer_thread_add (timers, -1, count, &never, NULL);
  gint64 until = g_get_monotonic_time () + 5 * G_USEC_PER_SEC;

  while (g_atomic_int_get (&fired) == 0 && g_get_monotonic_time () < until)
    g_usleep (1000);
  g_assert_cmpint (g_atomic_int_get (&fired), ==, 1);
  g_usleep (50000); /* one shot: it stays disarmed */
  g_assert_cmpint (g_atomic_int_get (&fired), ==, 1);
  g_source_set_ready_time (t, g_get_monotonic_time ()); /* re-armed from another thread */
  while (g_atomic_int_get (&fired) == 1 && g_get_monotonic_time () < until)
    g_usleep (1000);
  g_assert_cmpint (g_atomic_int_get (&fired), ==, 2);
  g_assert_cmpint (g_atomic_int_get (&never), ==, 0);
  g_source_destroy (t);
  g_source_unref (t);
  g_source_destroy (idle);
  g_source_unref (idle);
  crunch_timer_thread_free (timers);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/nats-link/wire-status", test_wire_status);
  g_test_add_func ("/nats-link/args", test_args);
  g_test_add_func ("/timer-thread/once-and-rearm", test_timer_thread);
  return g_test_run ();
}
