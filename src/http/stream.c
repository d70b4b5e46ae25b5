/* stream.c - Server-Sent Events bodies (stream.h).
 *
 * DESIGN
 * A stream is a byte buffer under its own lock (a leaf, below the producers' locks; MHD's own
 * locks are taken under it by MHD_suspend/resume_connection()). Threads:
 * - producers (any thread, usually with their own lock held) append events, or end the stream;
 * - the MHD polling thread calls crunch_stream_read() from the response's content callback: it
 *   takes what is buffered, or, with nothing to send, marks the stream suspended and suspends
 *   the connection in the same critical section and returns 0 (MHD calls it again on resume);
 * - the watcher thread of parked.c fires the heartbeat timer (a comment line) and the hang-up
 *   watch of the socket;
 * - the polling thread again at the end, in crunch_stream_detach() (the request completed).
 * Whoever adds bytes or ends a suspended stream resumes its connection, under the lock: a
 * suspended connection cannot complete, so the connection is alive while `suspended` is set.
 * The response holds a reference (freed by MHD), the producer one, each watcher entry one.
 * Lifecycle: new (counted against [jobs] max_streams) -> attach -> read ... -> detach, which
 * removes the watcher entries and tells the producer `gone` unless it ended the stream itself. */
#include "stream.h"

#include <microhttpd.h>
#include <string.h>

/* A client that reads nothing while this much waits is cut off. */
#define MAX_BUFFERED (256 * 1024)

struct CrunchStream {
  gint ref;
  GMutex lock;
  GString *out;    /* bytes not yet taken by MHD */
  gchar *client;   /* whose: its share of [jobs] max_streams_per_client */
  guint64 sent;    /* bytes MHD has taken (for the access log) */
  gboolean ended;  /* the producer sent its last event */
  gboolean closed; /* the client left, the buffer overflowed, or the request ended */
  gboolean told;   /* the producer has been told `gone` */
  gboolean suspended;
  struct MHD_Connection *connection;
  CrunchParked *watcher;
  CrunchParkedEntry *hangup, *heartbeat; /* NULL once removed */
  CrunchStreamGone gone;
  gpointer gone_data;
  GDestroyNotify gone_destroy;
};

static GMutex streams_lock;
static GHashTable *streams;     /* CrunchStream* set: the open ones, for end_all() */
static GHashTable *per_client;  /* client -> streams it has open (GUINT_TO_POINTER) */
static guint max_streams = 256; /* under streams_lock, as the next one */
static guint max_per_client = 32;
static gint64 heartbeat_us = 15 * G_USEC_PER_SEC; /* atomic */

void
crunch_streams_configure (guint max, guint client_max, gdouble heartbeat_s)
{
  g_mutex_lock (&streams_lock);
  max_streams = max;
  max_per_client = client_max;
  g_mutex_unlock (&streams_lock);
  __atomic_store_n (&heartbeat_us, (gint64)(heartbeat_s * G_USEC_PER_SEC), __ATOMIC_RELAXED);
}

guint
crunch_streams_open (void)
{
  guint n;

  g_mutex_lock (&streams_lock);
  n = streams != NULL ? g_hash_table_size (streams) : 0;
  g_mutex_unlock (&streams_lock);
  return n;
}

void
crunch_streams_end_all (void)
{
  GHashTableIter iter;
  gpointer stream;

  g_mutex_lock (&streams_lock);
  if (streams != NULL) {
    g_hash_table_iter_init (&iter, streams);
    while (g_hash_table_iter_next (&iter, &stream, NULL))
      crunch_stream_end (
          stream); /* takes no reference: a stream leaves the set before it is freed */
  }
  g_mutex_unlock (&streams_lock);
}

CrunchStream *
crunch_stream_new (const gchar *client, gboolean *client_full)
{
  CrunchStream *self;
  guint held;

  g_mutex_lock (&streams_lock);
  if (streams == NULL) {
    streams = g_hash_table_new (NULL, NULL);
    per_client = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, NULL);
  }
  held = GPOINTER_TO_UINT (g_hash_table_lookup (per_client, client));
  *client_full = max_per_client > 0 && held >= max_per_client;
  if (g_hash_table_size (streams) >= max_streams || *client_full) {
    g_mutex_unlock (&streams_lock);
    return NULL;
  }
  self = g_new0 (CrunchStream, 1);
  self->ref = 1;
  g_mutex_init (&self->lock);
  self->out = g_string_new (NULL);
  self->client = g_strdup (client);
  g_hash_table_add (streams, self);
  g_hash_table_insert (per_client, g_strdup (client), GUINT_TO_POINTER (held + 1));
  g_mutex_unlock (&streams_lock);
  return self;
}

CrunchStream *
crunch_stream_ref (CrunchStream *self)
{
  g_atomic_int_inc (&self->ref);
  return self;
}

void
crunch_stream_unref (CrunchStream *self)
{
  guint held;

  if (self == NULL || !g_atomic_int_dec_and_test (&self->ref))
    return;
  g_mutex_lock (&streams_lock);
  g_hash_table_remove (streams, self);
  held = GPOINTER_TO_UINT (g_hash_table_lookup (per_client, self->client));
  if (held > 1)
    g_hash_table_insert (per_client, g_strdup (self->client), GUINT_TO_POINTER (held - 1));
  else
    g_hash_table_remove (per_client, self->client);
  g_mutex_unlock (&streams_lock);
  g_free (self->client);
  if (self->gone_destroy != NULL)
    self->gone_destroy (self->gone_data);
  g_string_free (self->out, TRUE);
  g_mutex_clear (&self->lock);
  g_free (self);
}

void
crunch_stream_set_gone (CrunchStream *self, CrunchStreamGone gone, gpointer data,
                        GDestroyNotify destroy)
{
  self->gone = gone;
  self->gone_data = data;
  self->gone_destroy = destroy;
}

/* With the lock held: MHD may take bytes again. */
static void
wake_locked (CrunchStream *self)
{
  if (self->suspended) {
    self->suspended = FALSE;
    MHD_resume_connection (self->connection);
  }
}

/* With the lock held: whether the producer is to be told `gone` now (once, and never after it
 * ended the stream). Only threads that hold none of the producer's locks ask: the watcher's and
 * the polling thread in detach(). */
static gboolean
take_tell_locked (CrunchStream *self)
{
  gboolean tell = !self->told && !self->ended && self->gone != NULL;

  self->told |= tell;
  return tell;
}

/* With the lock held: no more bytes go out; MHD ends the response (with an error). */
static void
close_locked (CrunchStream *self)
{
  self->closed = TRUE;
  g_string_truncate (self->out, 0); /* nothing more for a client judged gone or too slow */
  wake_locked (self);
}

static void
tell_gone (CrunchStream *self, gboolean tell)
{
  if (tell)
    self->gone (self->gone_data);
}

/* With the lock held: `text` goes out, or the stream closes when the client reads nothing (the
 * producer hears of it from detach(), never here: it may hold its own locks). */
static gboolean
append_locked (CrunchStream *self, const gchar *text)
{
  if (self->closed || self->ended)
    return FALSE;
  /* one event larger than the bound (an outcome with a long text result) goes out alone */
  if (self->out->len > 0 && self->out->len + strlen (text) > MAX_BUFFERED) {
    close_locked (self);
    return FALSE;
  }
  g_string_append (self->out, text);
  wake_locked (self);
  return TRUE;
}

gboolean
crunch_stream_event (CrunchStream *self, const gchar *id, const gchar *event, const gchar *data)
{
  g_autofree gchar *text = g_strdup_printf ("id: %s\nevent: %s\ndata: %s\n\n", id, event, data);
  gboolean sent;

  g_mutex_lock (&self->lock);
  sent = append_locked (self, text);
  g_mutex_unlock (&self->lock);
  return sent;
}

void
crunch_stream_end (CrunchStream *self)
{
  g_mutex_lock (&self->lock);
  self->ended = TRUE;
  wake_locked (self);
  g_mutex_unlock (&self->lock);
}

/* ---- the watcher's entries (parked.c) ---- */

static void
on_heartbeat (gpointer item, CrunchJobOutcome why, gpointer data)
{
  CrunchStream *self = item;
  gboolean tell = FALSE;

  g_mutex_lock (&self->lock);
  if (self->heartbeat != NULL) { /* not detached yet: the entry is valid */
    if (!append_locked (self, ": heartbeat\n\n"))
      tell = self->closed && take_tell_locked (self);
    crunch_parked_rearm (self->watcher, self->heartbeat,
                         g_get_monotonic_time () +
                             __atomic_load_n (&heartbeat_us, __ATOMIC_RELAXED));
  }
  g_mutex_unlock (&self->lock);
  tell_gone (self, tell);
}

static void
on_hangup (gpointer item, CrunchJobOutcome why, gpointer data)
{
  CrunchStream *self = item;
  gboolean tell;

  g_mutex_lock (&self->lock);
  close_locked (self);
  tell = take_tell_locked (self);
  g_mutex_unlock (&self->lock);
  tell_gone (self, tell);
}

static gpointer
stream_ref (gpointer item)
{
  return crunch_stream_ref (item);
}

static void
stream_unref (gpointer item)
{
  crunch_stream_unref (item);
}

static const CrunchParkedKind heartbeat_kind = {on_heartbeat, NULL, stream_ref, stream_unref};
static const CrunchParkedKind hangup_kind = {on_hangup, NULL, stream_ref, stream_unref};

void
crunch_stream_attach (CrunchStream *self, gpointer connection, gint fd, CrunchParked *watcher)
{
  gint64 interval = __atomic_load_n (&heartbeat_us, __ATOMIC_RELAXED);

  g_mutex_lock (&self->lock);
  self->connection = connection;
  self->watcher = watcher;
  self->heartbeat =
      crunch_parked_add_timer (watcher, g_get_monotonic_time () + interval, self, &heartbeat_kind);
  if (fd >= 0)
    self->hangup = crunch_parked_watch (watcher, fd, self, &hangup_kind);
  g_mutex_unlock (&self->lock);
}

gssize
crunch_stream_read (gpointer cls, guint64 pos, gchar *buf, gsize max)
{
  CrunchStream *self = cls;
  gssize n = 0;

  g_mutex_lock (&self->lock);
  if (self->out->len > 0) {
    n = (gssize)MIN (max, self->out->len);
    memcpy (buf, self->out->str, (gsize)n);
    g_string_erase (self->out, 0, n);
    self->sent += (guint64)n;
  } else if (self->closed) {
    n = MHD_CONTENT_READER_END_WITH_ERROR;
  } else if (self->ended) {
    n = MHD_CONTENT_READER_END_OF_STREAM;
  } else { /* nothing to send: parked until there is (never a busy loop) */
    self->suspended = TRUE;
    MHD_suspend_connection (self->connection);
  }
  g_mutex_unlock (&self->lock);
  return n;
}

guint64
crunch_stream_sent (CrunchStream *self)
{
  guint64 sent;

  g_mutex_lock (&self->lock);
  sent = self->sent;
  g_mutex_unlock (&self->lock);
  return sent;
}

void
crunch_stream_detach (CrunchStream *self)
{
  CrunchParkedEntry *heartbeat, *hangup;
  gboolean tell;

  g_mutex_lock (&self->lock);
  self->suspended = FALSE; /* (a suspended connection cannot complete) */
  close_locked (self);
  tell = take_tell_locked (self);
  heartbeat = g_steal_pointer (&self->heartbeat);
  hangup = g_steal_pointer (&self->hangup);
  g_mutex_unlock (&self->lock);
  if (self->watcher != NULL) {
    crunch_parked_remove (self->watcher, heartbeat);
    crunch_parked_remove (self->watcher, hangup);
  }
  tell_gone (self, tell);
}
