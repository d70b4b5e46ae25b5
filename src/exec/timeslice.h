/* timeslice.h - while the fast lane answers requests, threads computing in crunchd's process get a
 * timer tick every [executor] timeslice seconds, so that a woken polling thread does not wait for
 * the kernel's own scheduler tick (up to 4 ms) to get a CPU. */
#pragma once

#include <glib.h>

/* The interval from now on (a timer already running keeps its own until it stops, at its thread's
 * first idle tick); 0 turns ticks off. The first non-zero interval installs the signal handler
 * (SIGRTMIN, process-wide). Any thread. */
void crunch_timeslice_set (gdouble seconds);

/* The fast lane answered a request at `now` (g_get_monotonic_time()): computing threads get ticks
 * until it has been quiet for 100 ms. Cheap enough for every request: it does more than a
 * compare at most every 10 ms. Any thread. */
void crunch_timeslice_busy (gint64 now);

/* The calling thread starts or ends computing in this process (around a function's run, not
 * around a wait for a child process). No system call unless the thread's timer must start. */
void crunch_timeslice_enter (void);
void crunch_timeslice_leave (void);

/* The calling thread's scheduling policy was just set (sched_setscheduler() drops a thread's own
 * slice): its next crunch_timeslice_enter() asks for the slice again. */
void crunch_timeslice_policy_changed (void);

/* Ticks that interrupted a computing thread so far (every thread). */
guint64 crunch_timeslice_ticks (void);
/* Whether the calling thread's timer is running (tests). */
gboolean crunch_timeslice_armed (void);
