/* tsan-glib.c - make GLib's synchronization visible to ThreadSanitizer (TSan builds only).
 *
 * GLib's GMutex and GCond are built on raw futex system calls, which TSan cannot see, so every
 * access made safe by a GMutex looks like a race, and so does every hand-off through a
 * GThreadPool or an idle source. Linked into TSan builds only (configure
 * --enable-sanitizers=thread), this file defines the GLib functions crunchd calls, calls the real
 * ones (dlsym RTLD_NEXT) and tells TSan the happens-before edge each one creates:
 *   g_mutex_lock/trylock/unlock   TSan's mutex annotations, so that it also reports lock-order
 *                                 inversions (potential deadlocks) between crunchd's mutexes,
 *                                 and the unref lock below;
 *   g_cond_wait/wait_until        an unlock of the mutex while waiting, a lock again after;
 *   g_thread_pool_push + worker   release on the item when pushed, acquire when a worker gets it;
 *   g_thread_pool_free            acquire what every worker released after its last item;
 *   g_async_queue_push + pop      release on the item when pushed, acquire when it is popped
 *   (and try_pop, timeout_pop)    (child.c's spawn requests, stdio-worker.c's calls, the job
 *                                 store's writes);
 *   g_idle_add + callback         release on the data when added, acquire when it runs;
 *   g_bytes_unref, g_variant_unref, g_atomic_rc_box_release_full  one lock, so that the
 *                                 unref that frees comes after every other one.
 * Definitions in the executable take precedence over libglib's for crunchd's own calls, so only
 * crunchd's uses are annotated; races that remain are real, except for the few inside GLib and
 * libc listed (each with the reason) in __tsan_default_suppressions() at the end. They are
 * compiled in rather than given in TSAN_OPTIONS so that they hold however crunchd is started
 * (systemd-socket-activate, for one, passes no environment on). */
#include <dlfcn.h>
#include <glib.h>
#include <pthread.h>
#include <sanitizer/tsan_interface.h>

/* The real function, looked up once; several threads may get here first, so the pointer is
 * only ever read and written atomically (a plain read of it raced with another thread's first
 * store, found in CI). `real_NAME` is a local copy. */
#define REAL(name)                                                                                 \
  static __typeof__ (&name) real_##name##_once;                                                    \
  __typeof__ (&name) real_##name = __atomic_load_n (&real_##name##_once, __ATOMIC_ACQUIRE);        \
  if (real_##name == NULL) {                                                                       \
    real_##name = (__typeof__ (&name))dlsym (RTLD_NEXT, #name);                                    \
    __atomic_store_n (&real_##name##_once, real_##name, __ATOMIC_RELEASE);                         \
  }

void
g_mutex_lock (GMutex *mutex)
{
  REAL (g_mutex_lock);
  __tsan_mutex_pre_lock (mutex, 0);
  real_g_mutex_lock (mutex);
  __tsan_mutex_post_lock (mutex, 0, 0);
}

gboolean
g_mutex_trylock (GMutex *mutex)
{
  REAL (g_mutex_trylock);
  gboolean got;

  __tsan_mutex_pre_lock (mutex, __tsan_mutex_try_lock);
  got = real_g_mutex_trylock (mutex);
  __tsan_mutex_post_lock (
      mutex, got ? __tsan_mutex_try_lock : __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed, 0);
  return got;
}

void
g_mutex_unlock (GMutex *mutex)
{
  REAL (g_mutex_unlock);
  __tsan_mutex_pre_unlock (mutex, 0);
  real_g_mutex_unlock (mutex);
  __tsan_mutex_post_unlock (mutex, 0);
}

void
g_cond_wait (GCond *cond, GMutex *mutex)
{
  REAL (g_cond_wait);
  __tsan_mutex_pre_unlock (mutex, 0);
  __tsan_mutex_post_unlock (mutex, 0);
  real_g_cond_wait (cond, mutex);
  __tsan_mutex_pre_lock (mutex, 0);
  __tsan_mutex_post_lock (mutex, 0, 0);
}

gboolean
g_cond_wait_until (GCond *cond, GMutex *mutex, gint64 end_time)
{
  REAL (g_cond_wait_until);
  gboolean signalled;

  __tsan_mutex_pre_unlock (mutex, 0);
  __tsan_mutex_post_unlock (mutex, 0);
  signalled = real_g_cond_wait_until (cond, mutex, end_time);
  __tsan_mutex_pre_lock (mutex, 0);
  __tsan_mutex_post_lock (mutex, 0, 0);
  return signalled;
}

/* ---- GThreadPool: the item is handed from the pushing thread to a worker ---- */

typedef struct {
  GFunc func;
  gpointer user_data;
} PoolFunc;

/* What every worker has done so far, for g_thread_pool_free(). A single sync object for all
 * pools: the free must not read the pool, which the last worker frees inside GLib. */
static gint pools_done;

static void
pool_trampoline (gpointer item, gpointer data)
{
  PoolFunc *pf = data;

  __tsan_acquire (item);
  pf->func (item, pf->user_data);
  __tsan_release (&pools_done);
}

GThreadPool *
g_thread_pool_new (GFunc func, gpointer user_data, gint max_threads, gboolean exclusive,
                   GError **error)
{
  REAL (g_thread_pool_new);
  /* one small block per pool, never freed (see pools_done; TSan has no leak checker) */
  PoolFunc *pf = g_new (PoolFunc, 1);

  pf->func = func;
  pf->user_data = user_data;
  return real_g_thread_pool_new (pool_trampoline, pf, max_threads, exclusive, error);
}

gboolean
g_thread_pool_push (GThreadPool *pool, gpointer item, GError **error)
{
  REAL (g_thread_pool_push);
  __tsan_release (item);
  return real_g_thread_pool_push (pool, item, error);
}

void
g_async_queue_push (GAsyncQueue *queue, gpointer data)
{
  REAL (g_async_queue_push);
  __tsan_release (data);
  real_g_async_queue_push (queue, data);
}

gpointer
g_async_queue_pop (GAsyncQueue *queue)
{
  REAL (g_async_queue_pop);
  gpointer data = real_g_async_queue_pop (queue);

  __tsan_acquire (data);
  return data;
}

gpointer
g_async_queue_try_pop (GAsyncQueue *queue)
{
  REAL (g_async_queue_try_pop);
  gpointer data = real_g_async_queue_try_pop (queue);

  if (data != NULL)
    __tsan_acquire (data);
  return data;
}

gpointer
g_async_queue_timeout_pop (GAsyncQueue *queue, guint64 timeout)
{
  REAL (g_async_queue_timeout_pop);
  gpointer data = real_g_async_queue_timeout_pop (queue, timeout);

  if (data != NULL)
    __tsan_acquire (data);
  return data;
}

void
g_thread_pool_free (GThreadPool *pool, gboolean immediate, gboolean wait_)
{
  REAL (g_thread_pool_free);
  real_g_thread_pool_free (pool, immediate, wait_);
  __tsan_acquire (&pools_done);
}

/* ---- reference counts: GLib's atomics are not instrumented ---- */

/* The last unref frees, on whichever thread it happens (a job's result is dropped by the worker,
 * the cache and MHD's response in any order), so the freeing unref must come after every other
 * unref and what its thread did before. An acquire-release on the object before the real unref
 * is not enough: two threads may annotate in one order and decrement in the other, and then the
 * free seems to race with the other thread's last read (found in CI: MHD's sendmsg() of a result
 * against the worker's free). So every unref holds one lock that TSan sees (a pthread mutex, as
 * the atomic count serializes them); recursive, as a free may drop other references. */
static pthread_mutex_t unref_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

void
g_bytes_unref (GBytes *bytes)
{
  REAL (g_bytes_unref);
  pthread_mutex_lock (&unref_lock);
  real_g_bytes_unref (bytes);
  pthread_mutex_unlock (&unref_lock);
}

void
g_atomic_rc_box_release_full (gpointer mem_block, GDestroyNotify clear_func)
{
  REAL (g_atomic_rc_box_release_full);
  pthread_mutex_lock (&unref_lock);
  real_g_atomic_rc_box_release_full (mem_block, clear_func);
  pthread_mutex_unlock (&unref_lock);
}

void
g_variant_unref (GVariant *value)
{
  REAL (g_variant_unref);
  pthread_mutex_lock (&unref_lock);
  real_g_variant_unref (value);
  pthread_mutex_unlock (&unref_lock);
}

/* ---- g_idle_add: data handed to the thread that runs the main context ---- */

typedef struct {
  GSourceFunc func;
  gpointer data;
} IdleFunc;

/* One sync object for every hand-off: everything the adding thread did before g_idle_add()
 * (the IdleFunc, GLib's own GSource and list nodes, which TSan cannot see GLib lock) happens
 * before the callback and the source's destruction on the main thread. */
static gint idle_handoff;

static gboolean
idle_trampoline (gpointer data)
{
  IdleFunc *idle;

  __tsan_acquire (&idle_handoff);
  idle = data;
  __tsan_acquire (idle->data);
  return idle->func (idle->data);
}

/* The destroy notify runs before GLib frees the source on the main thread. */
static void
idle_free (gpointer data)
{
  __tsan_acquire (&idle_handoff);
  g_free (data);
}

guint
g_idle_add (GSourceFunc function, gpointer data)
{
  IdleFunc *idle = g_new (IdleFunc, 1);

  idle->func = function;
  idle->data = data;
  guint id;

  __tsan_release (data);
  __tsan_release (&idle_handoff);
  id = g_idle_add_full (G_PRIORITY_DEFAULT_IDLE, idle_trampoline, idle, idle_free);
  __tsan_release (&idle_handoff); /* GLib allocated the source inside that call */
  return id;
}

/* GThreadPool keeps the threads of a freed pool and hands them to the next pool through its own
 * futex-locked queue, which TSan does not see: a reused thread that frees the next pool's memory
 * looks like a race with the thread that allocated it (test-scheduler creates a pool per test;
 * found in CI). TSan builds keep no unused threads, so every pool's threads are new. */
__attribute__ ((constructor)) static void
keep_no_unused_threads (void)
{
  g_thread_pool_set_max_unused_threads (0);
}

/* ---- suppressions: only reports inside GLib or libc internals, each checked by hand ---- */

const char *__tsan_default_suppressions (void);
const char *
__tsan_default_suppressions (void)
{
  return
      /* GLib 2.74's default log formatter calls localtime(), whose static struct tm two threads
       * logging at the same moment share: at worst one stderr line shows the other's time. The
       * state is libc's, the effect cosmetic, and not crunchd's to fix. */
      "race:g_log_writer_format_fields\n"
      /* localtime() -> tzset(): glibc serializes tzset_internal with an internal lock that TSan
       * does not see (a false positive). */
      "race:tzset_internal\n"
      /* GLib's cache of local time zones (g_date_time_new_now_local(), the access log's
       * timestamp, from two MHD daemons at once) is guarded by a G_LOCK, GLib's own futex lock
       * that TSan does not see (found in CI: a false positive inside GLib). */
      "race:g_time_zone_new_identifier\n"
      /* GLib's slice allocator (GList and GQueue nodes, g_slice_new) moves freed blocks between
       * threads through magazines guarded by GLib's futex locks: TSan sees a block written by
       * one thread reused by another with nothing in between. */
      "race:g_slice_alloc\n"
      "race:g_slice_alloc0\n"
      "race:g_slice_free1\n"
      /* With G_SLICE=always-malloc (make check sets it) the slices above are plain malloc, but
       * then GAsyncQueue's own list nodes, which GThreadPool passes between threads under GLib's
       * futex lock, show up freed on another thread than the one that allocated them. (cache.c
       * also calls g_queue_pop_tail, under its GMutex, which this file makes visible.) */
      "race:g_queue_pop_tail\n"
      /* GVariant's cache of type information is guarded by a GRecMutex whose pthread mutex GLib
       * allocates on first use and publishes with its own atomics, which TSan does not see: the
       * second thread to decode arguments (crunchd-worker's slots, each on its own thread) locks
       * a mutex another thread allocated, with nothing in between (a false positive). */
      "race:g_variant_type_info_get\n";
}
