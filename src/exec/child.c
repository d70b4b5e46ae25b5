/* child.c - see child.h.
 *
 * DESIGN
 * Children are forked by one spawner thread that lives as long as the process, because
 * PR_SET_PDEATHSIG fires when the *thread* that forked exits, and the threads that ask for a
 * child (job threads of a GThreadPool) may come and go. A caller queues a request and waits on
 * its condition variable until the spawner has forked.
 * Each child's stderr is read by a small detached thread that logs it line by line (at most
 * 4096 bytes a line), tagged with the program and pid, at most LOG_BURST lines at once and
 * LOG_RATE a second after that (a plugin printing in a loop would otherwise flood the journal,
 * whose own limit is per service and would drop crunchd's messages too); it counts what it
 * drops, says so, and ends at EOF, when the child has exited. */
#include "child.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "wire.h"

#define LOG_LINE_MAX 4096
#define LOG_BURST 200.0
#define LOG_RATE 100.0 /* lines a second, after the burst */

typedef struct {
  gchar **argv;
  guint memory_limit_mb;
  gint nice;
  CrunchChild *child;
  int err_fd;
  gboolean ok;
  GError *error;
  gboolean done;
  GMutex lock;
  GCond cond;
} SpawnRequest;

typedef struct {
  pid_t parent;
  guint memory_limit_mb;
  gint nice;
} ChildSetup;

/* In the child, between fork and exec: async-signal-safe calls only. */
static void
child_setup (gpointer data)
{
  const ChildSetup *c = data;

  prctl (PR_SET_PDEATHSIG, SIGKILL);
  setpgid (0, 0); /* its own group: whatever it starts is stopped with it (crunch_child_kill) */
  if (getppid () != c->parent)
    _exit (1);               /* crunchd died before prctl took effect */
  signal (SIGPIPE, SIG_DFL); /* (the signal mask is reset after fork() by service.c) */
  /* the niceness of crunchd's worker threads ([executor] nice), not the spawner thread's */
  setpriority (PRIO_PROCESS, 0, c->nice);
  if (c->memory_limit_mb > 0) {
    struct rlimit r = {(rlim_t)c->memory_limit_mb << 20, (rlim_t)c->memory_limit_mb << 20};
    setrlimit (RLIMIT_AS, &r);
  }
}

static gchar **
child_environ (void)
{
  gchar **env = g_environ_setenv (g_get_environ (), CRUNCH_WIRE_ENV, "1", TRUE);
  const gchar *old = g_environ_getenv (env, "PYTHONPATH");
  g_autofree gchar *path = old != NULL && *old != '\0'
                               ? g_strconcat (CRUNCHD_PYTHONDIR, ":", old, NULL)
                               : g_strdup (CRUNCHD_PYTHONDIR);

  return g_environ_setenv (env, "PYTHONPATH", path, TRUE);
}

static void
spawn_now (SpawnRequest *r)
{
  ChildSetup setup = {getpid (), r->memory_limit_mb, r->nice};
  g_auto (GStrv) env = child_environ ();

  r->ok = g_spawn_async_with_pipes_and_fds (
      NULL, (const gchar *const *)r->argv, (const gchar *const *)env, G_SPAWN_DO_NOT_REAP_CHILD,
      child_setup, &setup, -1, -1, -1, NULL, NULL, 0, &r->child->pid, &r->child->in_fd,
      &r->child->out_fd, &r->err_fd, &r->error);
}

static gpointer
spawner_thread (gpointer data)
{
  GAsyncQueue *requests = data;

  for (;;) {
    SpawnRequest *r = g_async_queue_pop (requests);
    spawn_now (r);
    g_mutex_lock (&r->lock);
    r->done = TRUE;
    g_cond_signal (&r->cond);
    g_mutex_unlock (&r->lock);
  }
  return NULL;
}

static GAsyncQueue *
spawner (void)
{
  static gsize once;
  static GAsyncQueue *requests;

  if (g_once_init_enter (&once)) {
    requests = g_async_queue_new ();
    g_thread_unref (g_thread_new ("crunchd-spawner", spawner_thread, requests));
    g_once_init_leave (&once, 1);
  }
  return requests;
}

/* ---- the child's stderr ---- */

typedef struct {
  gchar *program;
  GPid pid;
  int fd;
  gdouble tokens; /* lines that may be logged now */
  gint64 refilled;
  guint64 dropped; /* since the last line logged */
} LogTail;

static void
say_dropped (LogTail *t)
{
  if (t->dropped > 0)
    g_message ("%s[%d]: (%" G_GUINT64_FORMAT " lines of its stderr not logged: more than %g a "
               "second)",
               t->program, (gint)t->pid, t->dropped, LOG_RATE);
  t->dropped = 0;
}

/* Logs one line of the child's stderr, or counts it as dropped. */
static void
log_line (LogTail *t, const gchar *line, gint len)
{
  gint64 now = g_get_monotonic_time ();

  t->tokens = MIN (LOG_BURST, t->tokens + (gdouble)(now - t->refilled) * LOG_RATE / 1e6);
  t->refilled = now;
  if (t->tokens < 1) {
    t->dropped++;
    return;
  }
  t->tokens--;
  say_dropped (t);
  g_message ("%s[%d]: %.*s", t->program, (gint)t->pid, len, line);
}

static gpointer
stderr_thread (gpointer data)
{
  LogTail *t = data;
  gchar buf[LOG_LINE_MAX];
  gsize len = 0;
  ssize_t got;

  t->tokens = LOG_BURST;
  t->refilled = g_get_monotonic_time ();
  while ((got = read (t->fd, buf + len, LOG_LINE_MAX - len)) > 0 || (got < 0 && errno == EINTR)) {
    gchar *start = buf, *nl;
    len += got > 0 ? (gsize)got : 0;
    while ((nl = memchr (start, '\n', len - (gsize)(start - buf))) != NULL) {
      log_line (t, start, (gint)(nl - start));
      start = nl + 1;
    }
    len -= (gsize)(start - buf);
    memmove (buf, start, len);
    if (len == LOG_LINE_MAX) { /* a line too long: log it in pieces */
      log_line (t, buf, (gint)len);
      len = 0;
    }
  }
  if (len > 0)
    log_line (t, buf, (gint)len);
  say_dropped (t);
  close (t->fd);
  g_free (t->program);
  g_free (t);
  return NULL;
}

gboolean
crunch_child_spawn (gchar **argv, const gchar *program, guint memory_limit_mb, gint nice,
                    CrunchChild *child, GError **error)
{
  SpawnRequest r = {
      .argv = argv, .memory_limit_mb = memory_limit_mb, .nice = nice, .child = child, .err_fd = -1};
  LogTail *tail;

  g_mutex_init (&r.lock);
  g_cond_init (&r.cond);
  g_mutex_lock (&r.lock);
  g_async_queue_push (spawner (), &r);
  while (!r.done)
    g_cond_wait (&r.cond, &r.lock);
  g_mutex_unlock (&r.lock);
  g_mutex_clear (&r.lock);
  g_cond_clear (&r.cond);
  if (!r.ok) {
    g_propagate_error (error, r.error);
    return FALSE;
  }
  /* writes to a child that stalls must not block its caller for good (wire.c waits with poll) */
  fcntl (child->in_fd, F_SETFL, fcntl (child->in_fd, F_GETFL) | O_NONBLOCK);
  tail = g_new0 (LogTail, 1);
  tail->program = g_strdup (program);
  tail->pid = child->pid;
  tail->fd = r.err_fd;
  g_thread_unref (g_thread_new ("crunchd-stderr", stderr_thread, tail));
  return TRUE;
}

gint
crunch_child_reap (GPid pid, gint64 grace_us)
{
  gint64 until = g_get_monotonic_time () + grace_us;
  gint status = 0;

  for (;;) {
    pid_t got = waitpid (pid, &status, WNOHANG);
    if (got == pid || (got < 0 && errno != EINTR)) {
      kill (-pid, SIGKILL); /* what it started and left behind */
      return status;
    }
    if (got == 0 && g_get_monotonic_time () >= until)
      break;
    g_usleep (2000);
  }
  crunch_child_kill (pid);
  while (waitpid (pid, &status, 0) < 0 && errno == EINTR)
    ;
  return status;
}

void
crunch_child_kill (GPid pid)
{
  kill (-pid, SIGKILL); /* its group: the process and whatever it started */
  kill (pid, SIGKILL);  /* in case it could not have a group of its own */
}

gboolean
crunch_child_exited (GPid pid)
{
  siginfo_t info = {0};

  /* WNOWAIT: it stays a zombie, for crunch_child_reap() to reap and describe */
  return waitid (P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

gchar *
crunch_child_describe_exit (gint status)
{
  if (WIFSIGNALED (status)) {
    const gchar *name = sigabbrev_np (WTERMSIG (status));
    return name != NULL ? g_strdup_printf ("killed by signal SIG%s", name)
                        : g_strdup_printf ("killed by signal %d", WTERMSIG (status));
  }
  if (WIFEXITED (status))
    return g_strdup_printf ("exited with status %d", WEXITSTATUS (status));
  return g_strdup ("ended");
}
