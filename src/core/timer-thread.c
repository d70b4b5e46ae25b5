/* timer-thread.c - see timer-thread.h.
 *
 * DESIGN
 * The thread owns a GMainContext and runs a loop on it until freed. Other threads attach and
 * re-arm sources (both thread-safe in GLib); callbacks run on this thread only. A source is a
 * bare ready-time source rather than g_timeout_source, because the NATS executor moves one
 * attempt's deadline many times (heartbeats) and g_source_set_ready_time() is cheap and can be
 * called from any thread. */
#include "timer-thread.h"

struct CrunchTimerThread {
  GMainContext *context;
  GMainLoop *loop;
  GThread *thread;
};

static gpointer
run (gpointer data)
{
  CrunchTimerThread *self = data;

  g_main_context_push_thread_default (self->context);
  g_main_loop_run (self->loop);
  g_main_context_pop_thread_default (self->context);
  return NULL;
}

CrunchTimerThread *
crunch_timer_thread_new (const gchar *name)
{
  CrunchTimerThread *self = g_new0 (CrunchTimerThread, 1);

  self->context = g_main_context_new ();
  self->loop = g_main_loop_new (self->context, FALSE);
  self->thread = g_thread_new (name, run, self);
  return self;
}

static gboolean
quit (gpointer data)
{
  g_main_loop_quit (data);
  return G_SOURCE_REMOVE;
}

void
crunch_timer_thread_free (CrunchTimerThread *self)
{
  GSource *source;

  if (self == NULL)
    return;
  source = g_idle_source_new ();
  g_source_set_callback (source, quit, self->loop, NULL);
  g_source_attach (source, self->context);
  g_source_unref (source);
  g_thread_join (self->thread);
  g_main_loop_unref (self->loop);
  g_main_context_unref (self->context);
  g_free (self);
}

static gboolean
dispatch (GSource *source, GSourceFunc callback, gpointer data)
{
  g_source_set_ready_time (source, -1); /* one shot, until re-armed */
  return callback (data);
}

static GSourceFuncs timer_funcs = {.dispatch = dispatch};

GSource *
crunch_timer_thread_add (CrunchTimerThread *self, gint64 ready_us, GSourceFunc callback,
                         gpointer data, GDestroyNotify destroy)
{
  GSource *source = g_source_new (&timer_funcs, sizeof (GSource));

  g_source_set_callback (source, callback, data, destroy);
  g_source_set_ready_time (source, ready_us);
  g_source_attach (source, self->context);
  return source;
}
