/* test-conns.c - the connection guard: request deadlines, making room, never a busy
 * connection. Socket pairs stand in for MHD's connections; the guard's timer runs on a watcher
 * thread (parked.c) of its own, as on crunchd's. */
#include "conns.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
  gint ours, peer; /* ours is what the guard shuts down; the peer sees the end */
  CrunchConn *conn;
} Pair;

static void
pair_open (CrunchConns *guard, Pair *p)
{
  gint fds[2];

  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), ==, 0);
  p->ours = fds[0];
  p->peer = fds[1];
  p->conn = crunch_conns_opened (guard, p->ours);
}

/* The peer has seen the end of the stream (the guard shut the connection down). */
static gboolean
pair_shut (Pair *p)
{
  gchar c;
  gssize n = recv (p->peer, &c, 1, MSG_DONTWAIT);

  return n == 0;
}

static void
pair_close (Pair *p)
{
  crunch_conns_closed (p->conn);
  close (p->ours);
  close (p->peer);
}

static CrunchParked *timers;

static void
never (gpointer item, CrunchJobOutcome why, gpointer data)
{
  g_assert_not_reached ();
}

static gpointer
same (gpointer item)
{
  return item;
}

static void
nothing (gpointer item)
{
}

static void
iterate_for (gdouble seconds)
{
  g_usleep ((gulong)(seconds * G_USEC_PER_SEC));
}

/* A 2 s deadline; each check comes 0.5 s from one, so a loaded machine has room either way. */
static void
test_deadline (void)
{
  CrunchConns *guard = crunch_conns_new (100, "test", timers);
  CrunchConnsStats stats;
  Pair waiting, busy, again;

  crunch_conns_set_timeout (guard, 2);
  pair_open (guard, &waiting);
  pair_open (guard, &busy);
  pair_open (guard, &again);
  crunch_conns_request_complete (busy.conn);
  /* a kept-alive connection whose request ended waits again, with a fresh deadline (at 3 s) */
  crunch_conns_request_complete (again.conn);
  iterate_for (1.0);
  crunch_conns_request_ended (again.conn);
  iterate_for (1.5);
  g_assert_true (pair_shut (&waiting));
  g_assert_false (pair_shut (&busy));
  g_assert_false (pair_shut (&again));
  iterate_for (1.0);
  g_assert_true (pair_shut (&again));
  g_assert_false (pair_shut (&busy));
  crunch_conns_get_stats (guard, &stats);
  g_assert_cmpuint (stats.open, ==, 3);
  g_assert_cmpuint (stats.timed_out, ==, 2);
  g_assert_cmpuint (stats.made_room, ==, 0);
  pair_close (&waiting);
  pair_close (&busy);
  pair_close (&again);
  crunch_conns_get_stats (guard, &stats);
  g_assert_cmpuint (stats.open, ==, 0);
  crunch_conns_free (guard);
}

/* A table of 32 keeps 2 (a sixteenth) free: the 31st connection closes the oldest waiting one,
 * skipping busy ones, and closing ones are not counted twice. */
static void
test_make_room (void)
{
  enum { MAX = 32 };
  CrunchConns *guard = crunch_conns_new (MAX, "test", timers);
  CrunchConnsStats stats;
  Pair p[MAX + 4];

  crunch_conns_set_timeout (guard, 0); /* no deadline: only room is made */
  for (guint i = 0; i < MAX - 2; i++)
    pair_open (guard, &p[i]);
  crunch_conns_request_complete (p[0].conn); /* the oldest is busy: never closed */
  for (guint i = 0; i < MAX - 2; i++)
    g_assert_false (pair_shut (&p[i]));
  pair_open (guard, &p[MAX - 2]);
  g_assert_false (pair_shut (&p[0]));
  g_assert_true (pair_shut (&p[1]));
  g_assert_false (pair_shut (&p[2]));
  for (guint i = MAX - 1; i < MAX + 4; i++)
    pair_open (guard, &p[i]);
  for (guint i = 2; i < 7; i++)
    g_assert_true (pair_shut (&p[i]));
  g_assert_false (pair_shut (&p[7]));
  crunch_conns_get_stats (guard, &stats);
  g_assert_cmpuint (stats.made_room, ==, 6);
  g_assert_cmpuint (stats.timed_out, ==, 0);
  for (guint i = 0; i < MAX + 4; i++)
    pair_close (&p[i]);
  crunch_conns_free (guard);
}

/* When no connection waits, the one answering longest (a slow reader) makes room, once it has
 * been answering for a second; a parked one never does. */
static void
test_make_room_answering (void)
{
  enum { MAX = 32 };
  CrunchConns *guard = crunch_conns_new (MAX, "test", timers);
  CrunchConnsStats stats;
  Pair p[MAX];

  crunch_conns_set_timeout (guard, 0);
  for (guint i = 0; i < MAX - 2; i++) {
    pair_open (guard, &p[i]);
    crunch_conns_request_complete (p[i].conn);
  }
  crunch_conns_request_parked (p[0].conn, TRUE);
  pair_open (guard, &p[MAX - 2]); /* the answers are young: nobody is closed */
  crunch_conns_get_stats (guard, &stats);
  g_assert_cmpuint (stats.made_room, ==, 0);
  crunch_conns_request_complete (p[MAX - 2].conn);
  iterate_for (1.1);
  pair_open (guard, &p[MAX - 1]);
  g_assert_false (pair_shut (&p[0])); /* parked */
  g_assert_true (pair_shut (&p[1]));  /* the oldest answering */
  g_assert_false (pair_shut (&p[2]));
  crunch_conns_get_stats (guard, &stats);
  g_assert_cmpuint (stats.made_room, ==, 1);
  for (guint i = 0; i < MAX; i++)
    pair_close (&p[i]);
  crunch_conns_free (guard);
}

/* A longer deadline set while connections wait applies to them; 0 turns the deadline off. */
static void
test_reconfigure (void)
{
  CrunchConns *guard = crunch_conns_new (100, "test", timers);
  Pair a;

  crunch_conns_set_timeout (guard, 0);
  pair_open (guard, &a);
  iterate_for (0.3);
  crunch_conns_set_timeout (guard, 2); /* due 2 s after a opened */
  iterate_for (1.2);
  g_assert_false (pair_shut (&a));
  iterate_for (1.0);
  g_assert_true (pair_shut (&a));
  pair_close (&a);
  crunch_conns_free (guard);
}

int
main (int argc, char **argv)
{
  gint status;

  g_test_init (&argc, &argv, NULL);
  timers = crunch_parked_new (never, NULL, same, nothing);
  g_test_add_func ("/conns/deadline", test_deadline);
  g_test_add_func ("/conns/make-room", test_make_room);
  g_test_add_func ("/conns/make-room-answering", test_make_room_answering);
  g_test_add_func ("/conns/reconfigure", test_reconfigure);
  status = g_test_run ();
  crunch_parked_free (timers);
  return status;
}
