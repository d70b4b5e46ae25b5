/* cache.h - a bounded LRU cache of results of pure functions, keyed by function and arguments. */
#pragma once

#include <glib.h>

typedef struct CrunchCache CrunchCache;

/* entries = 0: the cache is off (lookups miss, inserts are dropped). */
CrunchCache *crunch_cache_new (guint entries);
void crunch_cache_free (CrunchCache *self);
gboolean crunch_cache_enabled (CrunchCache *self);
void crunch_cache_resize (CrunchCache *self, guint entries);
/* A new reference to the cached result, or NULL. Any thread. */
GBytes *crunch_cache_lookup (CrunchCache *self, const gchar *key);
void crunch_cache_insert (CrunchCache *self, const gchar *key, GBytes *value);
void crunch_cache_get_stats (CrunchCache *self, guint *size, guint64 *hits, guint64 *misses);
