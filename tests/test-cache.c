/* test-cache.c - the LRU result cache. */
#include <string.h>

#include "cache.h"

static GBytes *
bytes (const gchar *text)
{
  return g_bytes_new_static (text, strlen (text));
}

static void
assert_cached (CrunchCache *cache, const gchar *key, const gchar *expect)
{
  g_autoptr (GBytes) value = crunch_cache_lookup (cache, key);

  if (expect == NULL) {
    g_assert_null (value);
    return;
  }
  g_assert_nonnull (value);
  g_assert_cmpmem (g_bytes_get_data (value, NULL), g_bytes_get_size (value), expect,
                   strlen (expect));
}

static void
test_lru (void)
{
  CrunchCache *cache = crunch_cache_new (2);
  g_autoptr (GBytes) a = bytes ("A"), b = bytes ("B"), c = bytes ("C");
  guint size;
  guint64 hits, misses;

  crunch_cache_insert (cache, "a", a);
  crunch_cache_insert (cache, "b", b);
  assert_cached (cache, "a", "A");     /* a is now the most recent */
  crunch_cache_insert (cache, "c", c); /* evicts b, the least recent */
  assert_cached (cache, "b", NULL);
  assert_cached (cache, "a", "A");
  assert_cached (cache, "c", "C");
  crunch_cache_get_stats (cache, &size, &hits, &misses);
  g_assert_cmpuint (size, ==, 2);
  g_assert_cmpuint (hits, ==, 3);
  g_assert_cmpuint (misses, ==, 1);
  crunch_cache_resize (cache, 1); /* keeps the most recent */
  assert_cached (cache, "a", NULL);
  assert_cached (cache, "c", "C");
  crunch_cache_free (cache);
}

static void
test_disabled (void)
{
  CrunchCache *cache = crunch_cache_new (0);
  g_autoptr (GBytes) a = bytes ("A");
  guint size;
  guint64 hits, misses;

  g_assert_false (crunch_cache_enabled (cache));
  crunch_cache_insert (cache, "a", a);
  assert_cached (cache, "a", NULL);
  crunch_cache_get_stats (cache, &size, &hits, &misses);
  g_assert_cmpuint (size + hits + misses, ==, 0);
  crunch_cache_resize (cache, 4);
  g_assert_true (crunch_cache_enabled (cache));
  crunch_cache_insert (cache, "a", a);
  assert_cached (cache, "a", "A");
  crunch_cache_free (cache);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/cache/lru", test_lru);
  g_test_add_func ("/cache/disabled", test_disabled);
  return g_test_run ();
}
