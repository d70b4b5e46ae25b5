/* timer-thread.h - one thread running a private GMainContext, for timers other threads arm:
 * crunchd's one timer mechanism. The front end's deadline watcher (parked.c) and connection guard
 * (conns.c) share one; the NATS executor and crunchd-worker each run their own, which they stop
 * when they are freed, so that none of their callbacks can outlive them. */
#pragma once

#include <glib.h>

typedef struct CrunchTimerThread CrunchTimerThread;

CrunchTimerThread *crunch_timer_thread_new (const gchar *name);
/* Stops the thread (pending timers never fire) and joins it. */
void crunch_timer_thread_free (CrunchTimerThread *self);

/* A timer that fires once at `ready_us` (monotonic; -1 = not armed) on the timer thread.
 * Re-arm it from any thread with g_source_set_ready_time(); the callback's return value keeps or
 * removes it, and a kept timer stays disarmed until armed again. Returns a new reference. */
GSource *crunch_timer_thread_add (CrunchTimerThread *self, gint64 ready_us, GSourceFunc callback,
                                  gpointer data, GDestroyNotify destroy);
/* The same timer, also fired when `fd` is readable (an epoll or event fd). */
GSource *crunch_timer_thread_add_fd (CrunchTimerThread *self, gint fd, gint64 ready_us,
                                     GSourceFunc callback, gpointer data, GDestroyNotify destroy);
/* Stops a timer from any thread: its callback does not run again, and `destroy` runs once no
 * callback is running any more (possibly on the timer thread). Drops the caller's reference. */
void crunch_timer_thread_remove (GSource *timer);
