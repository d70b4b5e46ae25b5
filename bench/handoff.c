/* handoff.c - the floor under E5: the two thread hand-offs of a compute request, and nothing else.
 *
 * A compute request is parked by the polling thread, pushed to a GThreadPool worker, and resumed
 * by the worker through libmicrohttpd's eventfd, which wakes the polling thread's epoll_wait().
 * This program does only that, serially: the main thread pushes an item to a GThreadPool and
 * sleeps in epoll_wait() on an eventfd; the worker writes the eventfd. The median round trip is
 * what any server of this shape pays on this machine before parsing, scheduling or answering, so
 * bench/run prints it beside E5 from the same run. It is measured three ways: as the kernel
 * places the threads ("any"), with both pinned to one CPU ("same": a wake-up without an
 * inter-processor interrupt), and pinned to two ("cross": every wake-up is one); on a virtual
 * machine the last two can differ by 2x, and which one a server's threads get decides E5.
 *
 * usage: handoff [-n N] [-t THREADS]; prints one JSON object, median, 90th and 99th percentile
 * in microseconds per placement: {"n":N,"any":{"p50_us":..,"p90_us":..,"p99_us":..},...};
 * "cross" is null on one CPU. */
#define _GNU_SOURCE /* sched_setaffinity */
#include <glib.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Pins the calling thread to cpu, or lets it run anywhere (-1). */
static void
pin (gint cpu)
{
  cpu_set_t set;

  CPU_ZERO (&set);
  if (cpu < 0) {
    for (gint i = 0; i < CPU_SETSIZE; i++)
      CPU_SET (i, &set);
  } else {
    CPU_SET (cpu, &set);
  }
  sched_setaffinity (0, sizeof set, &set); /* best effort: unpinned on failure */
}

static void
answer (gpointer item, gpointer efd)
{
  static __thread gint pinned = G_MININT; /* pool threads outlive a pool: pin on a change only */
  gint cpu = GPOINTER_TO_INT (item) - 2;  /* the item is worker_cpu + 2 */
  uint64_t one = 1;

  if (cpu != pinned) {
    pin (cpu);
    pinned = cpu;
  }
  if (write (GPOINTER_TO_INT (efd), &one, sizeof one) != sizeof one)
    abort ();
}

static gint
by_value (gconstpointer a, gconstpointer b)
{
  gint64 x = *(const gint64 *)a, y = *(const gint64 *)b;

  return (x > y) - (x < y);
}

/* n serial round trips with the main thread on main_cpu and the pool's on worker_cpu (-1:
 * anywhere); appends {"p50_us":..,"p90_us":..,"p99_us":..} to out. */
static void
measure (gint n, gint threads, gint main_cpu, gint worker_cpu, GString *out)
{
  struct epoll_event ev = {.events = EPOLLIN}, got;
  gint efd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC), ep = epoll_create1 (EPOLL_CLOEXEC);
  g_autofree gint64 *t = g_new (gint64, n);
  GThreadPool *pool;

  if (efd < 0 || ep < 0 || epoll_ctl (ep, EPOLL_CTL_ADD, efd, &ev) < 0) {
    perror ("handoff");
    exit (1);
  }
  pin (main_cpu);
  pool = g_thread_pool_new (answer, GINT_TO_POINTER (efd), threads, FALSE, NULL);
  for (gint i = 0; i < n; i++) {
    gint64 t0 = g_get_monotonic_time ();
    uint64_t count;
    g_thread_pool_push (pool, GINT_TO_POINTER (worker_cpu + 2), NULL);
    while (epoll_wait (ep, &got, 1, -1) != 1)
      ;
    if (read (efd, &count, sizeof count) != sizeof count)
      abort ();
    t[i] = g_get_monotonic_time () - t0;
  }
  g_thread_pool_free (pool, FALSE, TRUE);
  pin (-1);
  qsort (t, (gsize)n, sizeof *t, by_value);
  g_string_append_printf (out,
                          "{\"p50_us\":%" G_GINT64_FORMAT ",\"p90_us\":%" G_GINT64_FORMAT
                          ",\"p99_us\":%" G_GINT64_FORMAT "}",
                          t[n / 2], t[(gsize)n * 9 / 10], t[(gsize)n * 99 / 100]);
  close (ep);
  close (efd);
}

int
main (int argc, char *argv[])
{
  gint n = 20000, threads = (gint)g_get_num_processors ();
  GOptionEntry entries[] = {
      {"count", 'n', 0, G_OPTION_ARG_INT, &n, "round trips per placement (default 20000)", "N"},
      {"threads", 't', 0, G_OPTION_ARG_INT, &threads, "pool threads (default: one per CPU)", "T"},
      {NULL}};
  g_autoptr (GOptionContext) context = g_option_context_new ("- the floor under E5");
  g_autoptr (GError) error = NULL;
  g_autoptr (GString) out = g_string_new (NULL);

  g_option_context_add_main_entries (context, entries, NULL);
  if (!g_option_context_parse (context, &argc, &argv, &error) || n < 100 || threads < 1) {
    fprintf (stderr, "handoff: %s\n", error != NULL ? error->message : "need -n >= 100, -t >= 1");
    return 2;
  }
  g_string_append_printf (out, "{\"n\":%d,\"threads\":%d,\"any\":", n, threads);
  measure (n, threads, -1, -1, out);
  g_string_append (out, ",\"same\":");
  measure (n, threads, 0, 0, out);
  g_string_append (out, ",\"cross\":");
  if (g_get_num_processors () > 1)
    measure (n, threads, 0, 1, out);
  else
    g_string_append (out, "null");
  puts (g_string_append (out, "}")->str);
  return 0;
}
