/* parked.h - watch suspended connections for their deadline and for the client hanging up; and
 * the one timer service of both programs.
 *
 * libmicrohttpd neither times out a suspended connection nor notices its client leaving, so
 * crunchd does both here: one watcher thread, one epoll set of parked sockets (EPOLLRDHUP) plus a
 * deadline order. When either fires, `expire` runs on the watcher thread. */
#pragma once

#include <glib.h>

#include "executor.h"

typedef struct CrunchParked CrunchParked;
typedef struct CrunchParkedEntry CrunchParkedEntry;

/* item: the caller's reference-counted object (a ticket); the watcher holds a reference from
 * add() to remove(), via `ref`/`unref`. */
typedef void (*CrunchParkedExpire) (gpointer item, CrunchJobOutcome why, gpointer data);

/* What an entry's item is and what to do when it fires. */
typedef struct {
  CrunchParkedExpire expire;
  gpointer data; /* for expire */
  gpointer (*ref) (gpointer);
  GDestroyNotify unref;
} CrunchParkedKind;

CrunchParked *crunch_parked_new (CrunchParkedExpire expire, gpointer data,
                                 gpointer (*ref) (gpointer), GDestroyNotify unref);
/* Watch `fd` until remove(); `deadline_us` is monotonic (0 = none). Any thread. */
CrunchParkedEntry *crunch_parked_add (CrunchParked *self, gint fd, gint64 deadline_us,
                                      gpointer item);
/* A deadline only, for an item of another kind (which must outlive the entry): the watcher's
 * thread serves as a timer. `expire` gets CRUNCH_JOB_TIMED_OUT. Any thread. */
CrunchParkedEntry *crunch_parked_add_timer (CrunchParked *self, gint64 deadline_us, gpointer item,
                                            const CrunchParkedKind *kind);
/* A socket only, for an item of another kind: `expire` gets CRUNCH_JOB_CLIENT_GONE once the peer
 * hangs up. Any thread. */
CrunchParkedEntry *crunch_parked_watch (CrunchParked *self, gint fd, gpointer item,
                                        const CrunchParkedKind *kind);
/* Move a timer entry's deadline (0 = disarm), whether or not it has fired: it fires (again) at
 * the new time. The caller keeps the entry valid (no concurrent remove()). Any thread. */
void crunch_parked_rearm (CrunchParked *self, CrunchParkedEntry *entry, gint64 deadline_us);
/* Stop watching; call while the socket is still open. Any thread; NULL is a no-op. */
void crunch_parked_remove (CrunchParked *self, CrunchParkedEntry *entry);
/* How many sockets have joined the epoll set so far (each costs two epoll_ctl calls): those still
 * parked at the tick after they were added. For tests. */
guint64 crunch_parked_sockets_watched (CrunchParked *self);
/* Stops the watcher thread; entries must have been removed. */
void crunch_parked_free (CrunchParked *self);
