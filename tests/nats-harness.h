/* nats-harness.h - nats-server nodes and crunchd-worker processes for integration tests.
 * Everything listens on 127.0.0.1 only; every process dies with the test (PR_SET_PDEATHSIG) and
 * every wait is bounded. */
#pragma once

#include "harness.h"

typedef struct {
  GSubprocess *proc;
  gchar *dir;
  guint16 port, cluster_port;
  guint16 monitor_port; /* nats-server's HTTP monitoring (/connz, /subsz) */
  gchar *routes;        /* "nats://127.0.0.1:P,..." or NULL */
  gchar *url;           /* "nats://127.0.0.1:PORT" */
  gboolean jetstream;
  gchar *conf; /* nats-server's configuration file, or NULL */
} TestNats;

/* Starts nats-server on a free port (and, with `cluster`, a free cluster port, joining
 * `routes`); returns once it accepts connections. */
TestNats *test_nats_start (gboolean cluster, const gchar *routes);
/* A single node with JetStream on (its store in the node's directory). */
TestNats *test_nats_start_js (void);
/* A single node with this configuration file's text (nats-server -c), e.g. "max_payload: 4096". */
TestNats *test_nats_start_conf (const gchar *conf);
/* Starts it again on the same ports after test_nats_kill(). */
void test_nats_restart (TestNats *nats);
/* SIGKILL and reap; the struct stays usable for a restart. */
void test_nats_kill (TestNats *nats);
void test_nats_free (TestNats *nats);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (TestNats, test_nats_free)

typedef struct {
  GSubprocess *proc;
  gchar *dir, *log_path, *id;
} TestWorker;

/* Writes `ini` and starts crunchd-worker --threads N --id ID; returns once it is ready. */
TestWorker *test_worker_start (const gchar *ini, const gchar *id, guint threads);
void test_worker_signal (TestWorker *worker, gint signum);
/* SIGTERM, bounded wait; returns the jobs it reports done (-1 if it did not say). */
gint test_worker_stop (TestWorker *worker);
/* The same, and its log (free it) in *log. */
gint test_worker_stop_with_log (TestWorker *worker, gchar **log);
/* SIGTERM, bounded wait; returns its exit status (128+signal) whatever it is, its log (free it)
 * in *log, and frees the worker. */
gint test_worker_stop_status (TestWorker *worker, gchar **log);
/* After SIGKILL: reap and free. */
void test_worker_free (TestWorker *worker);

/* `total` GETs of `url` from `concurrency` threads (keep-alive); adds to `load` (zero it first):
 * counts[status] (0 = no answer). Latencies in seconds into `latencies` if not NULL. */
typedef struct {
  guint counts[600];
  guint answered;
  gdouble max_seconds;
} TestLoad;
void test_load (const gchar *url, guint total, guint concurrency, TestLoad *load,
                GArray *latencies);
/* Runs test_load() on a thread; join with test_load_join(). */
GThread *test_load_start (const gchar *url, guint total, guint concurrency, TestLoad *load);
void test_load_join (GThread *thread);
