/* child.h - starting and ending worker processes: fork/exec with the protocol's pipes, the
 * child's safety settings (PR_SET_PDEATHSIG, RLIMIT_AS, SIGPIPE default), its environment
 * (CRUNCHD_WORKER_PROTOCOL, PYTHONPATH), its stderr in crunchd's log, reaping. */
#pragma once

#include <glib.h>

typedef struct {
  GPid pid;
  int in_fd;  /* the child's stdin (write end) */
  int out_fd; /* the child's stdout (read end) */
} CrunchChild;

/* Starts argv; `program` tags its stderr lines ("program[pid]: line") in the log. Every fd but
 * the three pipes is closed in the child, which runs at niceness `nice` in a process group of
 * its own. Blocks until the fork is done. */
gboolean crunch_child_spawn (gchar **argv, const gchar *program, guint memory_limit_mb, gint nice,
                             CrunchChild *child, GError **error);
/* Waits up to `grace_us` for the child to exit, then SIGKILLs it; its wait status. */
gint crunch_child_reap (GPid pid, gint64 grace_us);
/* SIGKILL to the child and to every process it started (its process group). */
void crunch_child_kill (GPid pid);
/* Whether `pid` (a child of ours) has exited; it is left to be reaped (crunch_child_reap()). */
gboolean crunch_child_exited (GPid pid);
/* "killed by signal SIGSEGV", "exited with status 3" */
gchar *crunch_child_describe_exit (gint status);
