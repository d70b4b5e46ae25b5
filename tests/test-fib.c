/* test-fib.c - the fib function against an iterative reference, and its cancellation. */
#include "functions.h"

#include <pthread.h>
#include <time.h>

static guint64
fib_iterative (guint n)
{
  guint64 a = 0, b = 1;

  for (guint i = 0; i < n; i++) {
    guint64 t = a + b;
    a = b;
    b = t;
  }
  return a;
}

/* The naive recursion costs fib(n) calls, so 0..70 would take days; 0..36 covers every path
 * (base cases, the cancel check above n = 24) in about a second. */
static void
test_values (void)
{
  CrunchCancel cancel = {0};

  for (guint n = 0; n <= 36; n++)
    g_assert_cmpuint (crunch_fib (n, &cancel), ==, fib_iterative (n));
}

/* The reference itself reaches the 64-bit limit exactly at max_n = 93. */
static void
test_reference_limit (void)
{
  g_assert_cmpuint (fib_iterative (70), ==, G_GUINT64_CONSTANT (190392490709135));
  g_assert_cmpuint (fib_iterative (93), ==, G_GUINT64_CONSTANT (12200160415121876738));
  g_assert_cmpuint (fib_iterative (94), <, fib_iterative (93)); /* wraps: 94 would overflow */
}

static void
test_run_formats (void)
{
  CrunchConfig config = {.fib.max_n = 93, .fib.timeout = 1};
  CrunchCancel cancel = {0};
  const CrunchFunction *fib;
  g_autoptr (GError) error = NULL;
  g_autoptr (GVariant) args = NULL;
  g_autoptr (GBytes) result = NULL;

  config.plugins_dir = (gchar *)"/nonexistent";
  g_assert_true (crunch_functions_init (&config, NULL));
  fib = crunch_functions_lookup ("fib");
  args = g_variant_ref_sink (fib->parse (fib, "30", NULL));
  result = crunch_function_run (fib, args, &cancel, &error);
  g_assert_no_error (error);
  g_assert_cmpmem (g_bytes_get_data (result, NULL), g_bytes_get_size (result), "832040", 6);
}

typedef struct {
  CrunchCancel cancel;
  clockid_t cpu;   /* the fib thread's CPU-time clock */
  gint started;    /* atomic: `cpu` is set */
  gint read;       /* atomic: the test has read `cpu` after raising the flag */
  gint64 cpu_stop; /* its CPU time when fib returned, us */
} CancelRun;

static gint64
cpu_us (clockid_t clock)
{
  struct timespec ts;

  g_assert_cmpint (clock_gettime (clock, &ts), ==, 0);
  return ts.tv_sec * G_USEC_PER_SEC + ts.tv_nsec / 1000;
}

static gpointer
run_fib_60 (gpointer data)
{
  CancelRun *run = data;

  g_assert_cmpint (pthread_getcpuclockid (pthread_self (), &run->cpu), ==, 0);
  g_atomic_int_set (&run->started, 1);
  crunch_fib (60, &run->cancel);
  run->cpu_stop = cpu_us (CLOCK_THREAD_CPUTIME_ID);
  while (!g_atomic_int_get (&run->read)) /* its clock goes with the thread */
    g_usleep (1000);
  return NULL;
}

/* fib(60) would run for hours; a raised flag must stop it within 100 ms of its computing. Its
 * CPU time is what counts: on a loaded machine the thread may wait longer than that for a CPU. */
static void
test_cancel_latency (void)
{
  CancelRun run = {{0}, 0, 0, 0, 0};
  GThread *thread = g_thread_new ("fib", run_fib_60, &run);
  gint64 cpu_at_flag;

  while (!g_atomic_int_get (&run.started))
    g_usleep (1000);
  g_usleep (50000);
  /* the flag first: were this thread held back between the two, the fib thread's computing
   * meanwhile would not be counted against it */
  g_atomic_int_set (&run.cancel.flag, 1);
  cpu_at_flag = cpu_us (run.cpu);
  g_atomic_int_set (&run.read, 1);
  g_thread_join (thread);
  g_test_message ("fib(60) stopped after %.3f ms of CPU time from the flag",
                  (run.cpu_stop - cpu_at_flag) / 1e3);
  g_assert_cmpint (run.cpu_stop - cpu_at_flag, <, 100000);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/fib/values", test_values);
  g_test_add_func ("/fib/reference-limit", test_reference_limit);
  g_test_add_func ("/fib/run-formats", test_run_formats);
  g_test_add_func ("/fib/cancel-latency", test_cancel_latency);
  return g_test_run ();
}
