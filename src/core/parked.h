/* parked.h - watch suspended connections for their deadline and for the client hanging up.
 *
 * libmicrohttpd neither times out a suspended connection nor notices its client leaving, so
 * crunchd does both here: one epoll set of parked sockets (EPOLLRDHUP) plus a deadline order,
 * watched by one timer on the timer thread it is handed. When either fires, `expire` runs on that
 * thread. */
#pragma once

#include <glib.h>

#include "executor.h"
#include "timer-thread.h"

typedef struct CrunchParked CrunchParked;
typedef struct CrunchParkedEntry CrunchParkedEntry;

/* item: the caller's reference-counted object (a ticket); the watcher holds a reference from
 * add() to remove(), via `ref`/`unref`. */
typedef void (*CrunchParkedExpire) (gpointer item, CrunchJobOutcome why, gpointer data);

CrunchParked *crunch_parked_new (CrunchTimerThread *timers, CrunchParkedExpire expire,
                                 gpointer data, gpointer (*ref) (gpointer), GDestroyNotify unref);
/* Watch `fd` until remove(); `deadline_us` is monotonic (0 = none). Any thread. */
CrunchParkedEntry *crunch_parked_add (CrunchParked *self, gint fd, gint64 deadline_us,
                                      gpointer item);
/* Stop watching; call while the socket is still open. Any thread; NULL is a no-op. */
void crunch_parked_remove (CrunchParked *self, CrunchParkedEntry *entry);
guint crunch_parked_count (CrunchParked *self);
/* Stops watching; entries must have been removed. */
void crunch_parked_free (CrunchParked *self);
