/* idleguard.h - raises starved SCHED_IDLE workers ([executor] policy = auto). */
#pragma once

#include <glib.h>

typedef struct CrunchIdleGuard CrunchIdleGuard;

/* Whether this process may move a thread at niceness `nice` out of SCHED_IDLE again (it tries,
 * on a short-lived thread): CAP_SYS_NICE, or RLIMIT_NICE of at least 20 - nice. */
gboolean crunch_idle_guard_permitted (gint nice);

/* A guard that raises a worker to SCHED_OTHER (at the niceness it has) once it has had less than
 * half a core for `grace` seconds, net, while running jobs. */
CrunchIdleGuard *crunch_idle_guard_new (gdouble grace);
void crunch_idle_guard_set (CrunchIdleGuard *self, gdouble grace);
void crunch_idle_guard_free (CrunchIdleGuard *self);

/* Called by a worker thread, already in SCHED_IDLE, around each job. */
void crunch_idle_guard_enter (CrunchIdleGuard *self);
void crunch_idle_guard_leave (CrunchIdleGuard *self);

/* Jobs raised so far. */
guint64 crunch_idle_guard_raised (CrunchIdleGuard *self);
