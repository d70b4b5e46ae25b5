/* timer-thread.h - one thread running a private GMainContext, for timers other threads arm. */
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
