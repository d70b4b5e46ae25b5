/* store.c - what every job store shares: the stored job's copy and free. */
#include "store.h"

#include <string.h>

void
crunch_stored_job_free (CrunchStoredJob *record)
{
  if (record == NULL)
    return;
  g_free (record->id);
  g_free (record->fn);
  g_clear_pointer (&record->args, g_variant_unref);
  g_free (record->client);
  g_free (record->idempotency_key);
  g_free (record->body_hash);
  g_free (record->outcome);
  g_free (record->error);
  g_clear_pointer (&record->result, g_bytes_unref);
  g_free (record->owner);
  g_free (record);
}

CrunchStoredJob *
crunch_stored_job_copy (const CrunchStoredJob *r)
{
  CrunchStoredJob *copy = g_new (CrunchStoredJob, 1);

  *copy = *r;
  copy->id = g_strdup (r->id);
  copy->fn = g_strdup (r->fn);
  copy->args = r->args ? g_variant_ref (r->args) : NULL;
  copy->client = g_strdup (r->client);
  copy->idempotency_key = g_strdup (r->idempotency_key);
  copy->body_hash = g_strdup (r->body_hash);
  copy->outcome = g_strdup (r->outcome);
  copy->error = g_strdup (r->error);
  copy->result = r->result ? g_bytes_ref (r->result) : NULL;
  copy->owner = g_strdup (r->owner);
  return copy;
}

GVariant *
crunch_store_args_from_bytes (const gchar *type, GBytes *bytes)
{
  GVariant *args;

  /* a definite tuple, or g_variant_new_from_bytes() asserts */
  if (type == NULL || bytes == NULL || !g_variant_type_string_is_valid (type) ||
      !g_variant_type_is_definite (G_VARIANT_TYPE (type)) ||
      !g_variant_type_is_tuple (G_VARIANT_TYPE (type)))
    return NULL;
  args = g_variant_ref_sink (g_variant_new_from_bytes (G_VARIANT_TYPE (type), bytes, FALSE));
  if (!g_variant_is_normal_form (args)) {
    g_variant_unref (args);
    return NULL;
  }
  return args;
}

gboolean
crunch_store_id_valid (const gchar *id)
{
  return id != NULL && strlen (id) == 32 && strspn (id, "0123456789abcdef") == 32;
}

void
crunch_store_queue_init (CrunchStoreQueue *q)
{
  q->queue = g_async_queue_new ();
  g_mutex_init (&q->lock);
  g_cond_init (&q->cond);
  q->pushed = q->done = 0;
  q->pending = 0;
}

void
crunch_store_queue_clear (CrunchStoreQueue *q)
{
  g_async_queue_unref (q->queue);
  g_mutex_clear (&q->lock);
  g_cond_clear (&q->cond);
}

void
crunch_store_queue_push (CrunchStoreQueue *q, gpointer item, guint64 *seq)
{
  g_atomic_int_inc (&q->pending);
  g_mutex_lock (&q->lock);
  *seq = ++q->pushed;
  g_async_queue_push (q->queue, item);
  g_mutex_unlock (&q->lock);
}

void
crunch_store_queue_done (CrunchStoreQueue *q, guint64 seq)
{
  g_atomic_int_add (&q->pending, -1);
  g_mutex_lock (&q->lock);
  q->done = MAX (q->done, seq);
  g_cond_broadcast (&q->cond);
  g_mutex_unlock (&q->lock);
}

void
crunch_store_queue_barrier (CrunchStoreQueue *q)
{
  g_mutex_lock (&q->lock);
  for (guint64 mine = q->pushed; q->done < mine;)
    g_cond_wait (&q->cond, &q->lock);
  g_mutex_unlock (&q->lock);
}
