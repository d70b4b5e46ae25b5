/* decode.c - large request bodies decoded off the polling threads.
 *
 * DESIGN
 * json-glib takes up to 160 ms for a 1 MiB body (an array of small numbers), and a polling thread
 * parsing it answers nothing else meanwhile: two clients posting such bodies in a loop held /fast
 * at 53 req/s, 150 ms each. So a body longer than CRUNCH_DECODE_INLINE_MAX is decoded the way a
 * job runs: the server suspends the connection and hands the body here; a decoder thread checks
 * and parses it into the function's arguments (or the 400's reason) and its `done` resumes the
 * connection. The polling thread then carries on with the request where it left it.
 * Threads: an exclusive GThreadPool, its queue sorted shorter body first. Its threads run at the
 * workers' niceness, so the polling threads win the CPU from them as from a job. Each body is
 * first asked whether it is still `wanted` (the server says no once it drains, or when the
 * client has gone), so that a queue of abandoned bodies costs nothing. A task touches only its
 * CrunchDecode: it reads the body, writes the results, and calls `done` last. The function registry
 * is read-only after start-up (functions.c), so a POST /jobs body's function is looked up here
 * without a lock. Lifecycle: created and freed by the server; crunch_decoder_free() decodes what is
 * queued first (the requests waiting for it count in flight, so a drain waits for them as well). */
#include "decode.h"

#include "args.h"
#include "executor.h"

struct CrunchDecoder {
  GThreadPool *pool;
  gint nice; /* atomic */
};

void
crunch_decode_run (CrunchDecode *d)
{
  if (d->fn != NULL)
    d->args = crunch_args_from_body (d->fn, d->body, d->len, &d->error);
  else
    d->args = crunch_args_from_job_body (d->body, d->len, &d->fn, &d->error);
  if (d->args != NULL)
    g_variant_ref_sink (d->args);
}

static void
decode (gpointer data, gpointer user_data)
{
  CrunchDecode *d = data;
  CrunchDecoder *self = user_data;

  /* as a worker thread is: the policy stays SCHED_OTHER */
  crunch_worker_thread_prepare (g_atomic_int_get (&self->nice), CRUNCH_WORKER_POLICY_OTHER);
  if (d->wanted == NULL || d->wanted (d, d->data))
    crunch_decode_run (d);
  d->done (d, d->data);
}

static gint
shorter_first (gconstpointer a, gconstpointer b, gpointer user_data)
{
  const CrunchDecode *x = a, *y = b;

  return (x->len > y->len) - (x->len < y->len);
}

CrunchDecoder *
crunch_decoder_new (guint threads, gint nice)
{
  CrunchDecoder *self = g_new0 (CrunchDecoder, 1);

  self->nice = nice;
  /* exclusive: the threads' niceness stays theirs */
  self->pool = g_thread_pool_new (decode, self, (gint)MAX (threads, 1), TRUE, NULL);
  g_thread_pool_set_sort_function (self->pool, shorter_first, NULL);
  return self;
}

void
crunch_decoder_set_nice (CrunchDecoder *self, gint nice)
{
  g_atomic_int_set (&self->nice, nice);
}

void
crunch_decoder_submit (CrunchDecoder *self, CrunchDecode *decode)
{
  g_thread_pool_push (self->pool, decode, NULL);
}

void
crunch_decoder_free (CrunchDecoder *self)
{
  if (self == NULL)
    return;
  g_thread_pool_free (self->pool, FALSE, TRUE);
  g_free (self);
}

void
crunch_decode_clear (CrunchDecode *decode)
{
  g_clear_pointer (&decode->args, g_variant_unref);
  g_clear_error (&decode->error);
}
