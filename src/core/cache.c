/* cache.c - LRU: a hash table for lookups and a queue for recency, under one mutex (called from
 * MHD threads on lookup and from worker threads on insert). Values are immutable GBytes, so a hit
 * hands out a reference and copies nothing. */
#include "cache.h"

typedef struct {
  gchar *key;
  GBytes *value;
  GList *link; /* in `order`, most recent at the head */
} Entry;

struct CrunchCache {
  GMutex lock;
  GHashTable *entries; /* key -> Entry */
  GQueue order;
  guint capacity; /* atomic */
  guint64 hits, misses;
};

static void
entry_free (gpointer data)
{
  Entry *entry = data;

  g_free (entry->key);
  g_bytes_unref (entry->value);
  g_free (entry);
}

CrunchCache *
crunch_cache_new (guint entries)
{
  CrunchCache *self = g_new0 (CrunchCache, 1);

  g_mutex_init (&self->lock);
  self->entries = g_hash_table_new_full (g_str_hash, g_str_equal, NULL, entry_free);
  g_queue_init (&self->order);
  self->capacity = entries;
  return self;
}

void
crunch_cache_free (CrunchCache *self)
{
  if (self == NULL)
    return;
  g_queue_clear (&self->order);
  g_hash_table_unref (self->entries);
  g_mutex_clear (&self->lock);
  g_free (self);
}

/* With the lock held: drop least recently used entries beyond the capacity. */
static void
trim_locked (CrunchCache *self)
{
  while (self->order.length > self->capacity) {
    Entry *oldest = g_queue_pop_tail (&self->order);
    g_hash_table_remove (self->entries, oldest->key);
  }
}

/* Lock-free, so a disabled cache costs a request nothing. */
gboolean
crunch_cache_enabled (CrunchCache *self)
{
  return g_atomic_int_get (&self->capacity) > 0;
}

void
crunch_cache_resize (CrunchCache *self, guint entries)
{
  g_mutex_lock (&self->lock);
  g_atomic_int_set (&self->capacity, entries);
  trim_locked (self);
  g_mutex_unlock (&self->lock);
}

GBytes *
crunch_cache_lookup (CrunchCache *self, const gchar *key)
{
  GBytes *value = NULL;
  Entry *entry;

  g_mutex_lock (&self->lock);
  if (self->capacity > 0) {
    entry = g_hash_table_lookup (self->entries, key);
    if (entry != NULL) {
      g_queue_unlink (&self->order, entry->link);
      g_queue_push_head_link (&self->order, entry->link);
      value = g_bytes_ref (entry->value);
      self->hits++;
    } else {
      self->misses++;
    }
  }
  g_mutex_unlock (&self->lock);
  return value;
}

void
crunch_cache_insert (CrunchCache *self, const gchar *key, GBytes *value)
{
  Entry *entry;

  g_mutex_lock (&self->lock);
  if (self->capacity > 0 && !g_hash_table_contains (self->entries, key)) {
    entry = g_new0 (Entry, 1);
    entry->key = g_strdup (key);
    entry->value = g_bytes_ref (value);
    g_queue_push_head (&self->order, entry);
    entry->link = self->order.head;
    g_hash_table_insert (self->entries, entry->key, entry);
    trim_locked (self);
  }
  g_mutex_unlock (&self->lock);
}

void
crunch_cache_get_stats (CrunchCache *self, guint *size, guint64 *hits, guint64 *misses)
{
  g_mutex_lock (&self->lock);
  *size = self->order.length;
  *hits = self->hits;
  *misses = self->misses;
  g_mutex_unlock (&self->lock);
}
