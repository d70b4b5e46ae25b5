/* auth.c - API keys (see auth.h).
 *
 * DESIGN
 * Threads: the main thread reads the keys file (at start and on SIGHUP) and publishes it with
 * crunch_auth_publish(); MHD's polling threads check each request against the published settings
 * (crunch_auth_check()) under the reader side of `lock`, and keep a reference to the caller's key
 * until the request ends (crunch_auth_finish()), so a reload never frees a key a request holds.
 * Each key has a State (token bucket, in-flight count, metrics slot) that a reload hands on to
 * the new key of the same name: a reload neither refills a bucket nor forgets what is in flight.
 * The bucket is guarded by the State's own mutex (a leaf, held for a few arithmetic operations);
 * in-flight counts and metrics counters are atomics. Metrics slots (key names) are assigned by
 * the main thread at publish, at most CRUNCH_AUTH_METRIC_KEYS, under `names_lock` (a leaf) which
 * the /metrics reader takes too. */
#include "auth.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "scheduler.h"

#define HASH_LEN 32
#define TOKEN_BYTES 32
#define MAX_PATTERN 128
#define MAX_RATE 1e6 /* per second */
/* RFC 6750 2.1 b64token, before any trailing '=' */
#define B64TOKEN_CHARS "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"

#define AUTHENTICATE "Bearer realm=\"crunchd\""
#define AUTHENTICATE_INVALID "Bearer realm=\"crunchd\", error=\"invalid_token\""

/* Metrics rows: the named slots, then "other" (names past the bound), then "" (no key found). */
#define SLOT_OTHER CRUNCH_AUTH_METRIC_KEYS
#define SLOT_UNKNOWN (CRUNCH_AUTH_METRIC_KEYS + 1)
#define N_SLOTS (CRUNCH_AUTH_METRIC_KEYS + 2)
#define N_RESULTS 4 /* ok, unauthorized, forbidden, limited */

typedef struct {
  gint ref;
  GMutex lock;        /* guards the bucket */
  gdouble tokens;     /* the bucket, up to the key's burst */
  gint64 refilled_us; /* monotonic time the bucket was last filled */
  gint in_flight;     /* atomic */
  guint slot;         /* metrics row */
} State;

struct CrunchAuthKey {
  gint ref;
  gchar *name;
  guint8 hash[HASH_LEN];
  GPtrArray *functions; /* GPatternSpec */
  guint max_in_flight;  /* 0 = no limit */
  gdouble rate;         /* tokens per second; 0 = no limit */
  gdouble burst;
  gchar *rate_text; /* as written, for the 429 message */
  gboolean ops;
  gint priority; /* 0 to CRUNCH_PRIORITY_MAX; -1 = not set */
  State *state;  /* set at publish */
};

struct CrunchKeyring {
  GPtrArray *keys; /* CrunchAuthKey, in file order */
};

struct CrunchAuthSettings {
  CrunchKeyring *keyring; /* NULL: authentication off */
  gchar *path;            /* the keys file */
  gchar **public;         /* route patterns open without a key */
};

struct CrunchAuth {
  GRWLock lock; /* guards current: read per request, replaced on reload */
  CrunchAuthSettings *current;
  GMutex names_lock; /* guards names, n_names */
  gchar *names[CRUNCH_AUTH_METRIC_KEYS];
  guint n_names;
  guint64 counts[N_SLOTS][N_RESULTS]; /* atomic */
};

static const gchar *const result_names[N_RESULTS] = {"ok", "unauthorized", "forbidden", "limited"};

/* ---- keys ---- */

static State *
state_ref (State *state)
{
  g_atomic_int_inc (&state->ref);
  return state;
}

static void
state_unref (State *state)
{
  if (state == NULL || !g_atomic_int_dec_and_test (&state->ref))
    return;
  g_mutex_clear (&state->lock);
  g_free (state);
}

static CrunchAuthKey *
key_ref (CrunchAuthKey *key)
{
  g_atomic_int_inc (&key->ref);
  return key;
}

static void
key_unref (CrunchAuthKey *key)
{
  if (key == NULL || !g_atomic_int_dec_and_test (&key->ref))
    return;
  g_free (key->name);
  g_ptr_array_unref (key->functions);
  g_free (key->rate_text);
  state_unref (key->state);
  g_free (key);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchAuthKey, key_unref)

gboolean
crunch_auth_name_valid (const gchar *name)
{
  gsize len = strlen (name);

  return len > 0 && len <= CRUNCH_AUTH_MAX_NAME &&
         strspn (name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") == len;
}

/* ---- parsing the keys file ---- */

static gboolean G_GNUC_PRINTF (6, 7)
    fail (GError **error, const gchar *file, const gchar *group, const gchar *field,
          const gchar *value, const gchar *format, ...)
{
  g_autofree gchar *why = NULL;
  va_list ap;

  va_start (ap, format);
  why = g_strdup_vprintf (format, ap);
  va_end (ap);
  if (field == NULL)
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: [%s]: %s", file,
                 group, why);
  else
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: [%s] %s = '%s': %s",
                 file, group, field, value, why);
  return FALSE;
}

static gboolean
parse_hash (const gchar *value, guint8 hash[HASH_LEN])
{
  if (strlen (value) != 2 * HASH_LEN)
    return FALSE;
  for (guint i = 0; i < HASH_LEN; i++) {
    gint hi = g_ascii_xdigit_value (value[2 * i]), lo = g_ascii_xdigit_value (value[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return FALSE;
    hash[i] = (guint8)(hi << 4 | lo);
  }
  return TRUE;
}

/* "N/s", "N/min" or "N/h" with N > 0: tokens per second. */
static gboolean
parse_rate (const gchar *value, gdouble *rate)
{
  const gchar *slash = strchr (value, '/');
  g_autofree gchar *number = slash != NULL ? g_strndup (value, (gsize)(slash - value)) : NULL;
  gchar *end = NULL;
  gdouble n;

  if (number == NULL || *number == '\0' || !g_ascii_isdigit (*number))
    return FALSE;
  n = g_ascii_strtod (number, &end);
  if (*end != '\0' || !isfinite (n) || n <= 0)
    return FALSE;
  if (g_str_equal (slash + 1, "s"))
    *rate = n;
  else if (g_str_equal (slash + 1, "min"))
    *rate = n / 60;
  else if (g_str_equal (slash + 1, "h"))
    *rate = n / 3600;
  else
    return FALSE;
  return *rate <= MAX_RATE;
}

static gboolean
parse_functions (CrunchAuthKey *key, const gchar *value, const gchar *file, GError **error)
{
  g_auto (GStrv) items = g_strsplit (value, ",", -1);

  g_ptr_array_set_size (key->functions, 0);
  for (gchar **it = items; *it != NULL; it++) {
    g_strstrip (*it);
    if (**it == '\0')
      continue;
    if (strlen (*it) > MAX_PATTERN || key->functions->len == CRUNCH_AUTH_MAX_FUNCTIONS)
      return fail (error, file, key->name, "functions", value,
                   "at most %d names or globs of at most %d characters each",
                   CRUNCH_AUTH_MAX_FUNCTIONS, MAX_PATTERN);
    g_ptr_array_add (key->functions, g_pattern_spec_new (*it));
  }
  return TRUE; /* none: a key for the ops routes alone */
}

static gboolean
parse_number (const gchar *value, guint64 min, guint64 max, guint *out)
{
  guint64 n;

  if (!g_ascii_string_to_unsigned (value, 10, min, max, &n, NULL))
    return FALSE;
  *out = (guint)n;
  return TRUE;
}

/* One `field = value` of a key. */
static gboolean
parse_field (CrunchAuthKey *key, const gchar *field, const gchar *value, const gchar *file,
             GError **error)
{
  guint n;

  if (g_str_equal (field, "sha256")) {
    if (!parse_hash (value, key->hash))
      return fail (error, file, key->name, field, value,
                   "expected 64 hex digits, the SHA-256 of the token (crunchd --new-key NAME "
                   "prints it)");
  } else if (g_str_equal (field, "functions")) {
    return parse_functions (key, value, file, error);
  } else if (g_str_equal (field, "max_in_flight")) {
    if (!parse_number (value, 0, 1000000, &key->max_in_flight))
      return fail (error, file, key->name, field, value, "expected an integer from 0 to 1000000");
  } else if (g_str_equal (field, "rate")) {
    if (!parse_rate (value, &key->rate))
      return fail (error, file, key->name, field, value,
                   "expected requests per second, minute or hour: N/s, N/min or N/h (N > 0, at "
                   "most 1000000/s)");
    g_free (key->rate_text);
    key->rate_text = g_strdup (value);
  } else if (g_str_equal (field, "burst")) {
    if (!parse_number (value, 1, 1000000, &n))
      return fail (error, file, key->name, field, value, "expected an integer from 1 to 1000000");
    key->burst = n;
  } else if (g_str_equal (field, "ops")) {
    if (!g_str_equal (value, "true") && !g_str_equal (value, "false"))
      return fail (error, file, key->name, field, value, "expected true or false");
    key->ops = g_str_equal (value, "true");
  } else if (g_str_equal (field, "priority")) {
    if (!parse_number (value, 0, CRUNCH_PRIORITY_MAX, &n))
      return fail (error, file, key->name, field, value, "expected an integer from 0 to %d",
                   CRUNCH_PRIORITY_MAX);
    key->priority = (gint)n;
  } else {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [%s] %s: unknown key", file, key->name, field);
    return FALSE;
  }
  return TRUE;
}

/* GKeyFile keeps a key written twice in a group, and reads the last: say so instead. */
static gboolean
repeated (gchar **fields, gchar **field)
{
  for (gchar **f = fields; f < field; f++) {
    if (g_str_equal (*f, *field))
      return TRUE;
  }
  return FALSE;
}

static CrunchAuthKey *
parse_key (GKeyFile *kf, const gchar *group, const gchar *file, GError **error)
{
  g_autoptr (CrunchAuthKey) key = g_new0 (CrunchAuthKey, 1);
  g_auto (GStrv) fields = g_key_file_get_keys (kf, group, NULL, NULL);

  key->ref = 1;
  key->priority = -1;
  key->name = g_strdup (group);
  key->functions = g_ptr_array_new_with_free_func ((GDestroyNotify)g_pattern_spec_free);
  if (!crunch_auth_name_valid (group)) {
    fail (error, file, group, NULL, NULL,
          "a key name is 1 to %d characters of A-Z, a-z, 0-9, '_', '.' and '-'",
          CRUNCH_AUTH_MAX_NAME);
    return NULL;
  }
  g_ptr_array_add (key->functions, g_pattern_spec_new ("*"));
  for (gchar **f = fields; f != NULL && *f != NULL; f++) {
    g_autofree gchar *value = g_key_file_get_string (kf, group, *f, NULL);
    if (repeated (fields, f)) {
      g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                   "%s: [%s] %s: given more than once", file, group, *f);
      return NULL;
    }
    if (value == NULL) {
      g_autofree gchar *raw = g_key_file_get_value (kf, group, *f, NULL);
      fail (error, file, group, *f, raw ? raw : "", "not a valid string");
      return NULL;
    }
    if (!parse_field (key, *f, g_strstrip (value), file, error))
      return NULL;
  }
  if (!g_key_file_has_key (kf, group, "sha256", NULL)) {
    fail (error, file, group, NULL, NULL, "sha256 is missing (crunchd --new-key %s prints it)",
          group);
    return NULL;
  }
  if (key->burst > 0 && key->rate == 0) {
    g_autofree gchar *burst = g_strdup_printf ("%.0f", key->burst);
    fail (error, file, group, "burst", burst, "a burst needs a rate (rate = N/s)");
    return NULL;
  }
  if (key->burst == 0)
    key->burst = MAX (1.0, ceil (key->rate));
  return g_steal_pointer (&key);
}

void
crunch_keyring_free (CrunchKeyring *keyring)
{
  if (keyring == NULL)
    return;
  g_ptr_array_unref (keyring->keys);
  g_free (keyring);
}

guint
crunch_keyring_size (const CrunchKeyring *keyring)
{
  return keyring->keys->len;
}

/* Two keys with one token would make the caller's identity depend on the file's order. */
static gboolean
check_unique (const CrunchKeyring *keyring, const gchar *file, GError **error)
{
  for (guint i = 1; i < keyring->keys->len; i++) {
    const CrunchAuthKey *key = keyring->keys->pdata[i];
    for (guint j = 0; j < i; j++) {
      const CrunchAuthKey *other = keyring->keys->pdata[j];
      if (memcmp (key->hash, other->hash, HASH_LEN) == 0)
        return fail (error, file, key->name, NULL, NULL, "the same sha256 as [%s]", other->name);
    }
  }
  return TRUE;
}

CrunchKeyring *
crunch_keyring_parse (const gchar *data, gsize len, const gchar *file, GError **error)
{
  g_autoptr (GKeyFile) kf = g_key_file_new ();
  g_autoptr (CrunchKeyring) keyring = g_new0 (CrunchKeyring, 1);
  g_autoptr (GError) local = NULL;
  g_auto (GStrv) groups = NULL;
  gsize n_groups = 0;

  keyring->keys = g_ptr_array_new_with_free_func ((GDestroyNotify)key_unref);
  if (len > CRUNCH_AUTH_MAX_FILE_SIZE || memchr (data, '\0', len) != NULL) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: not a keys file (larger than %d bytes, or binary)", file,
                 CRUNCH_AUTH_MAX_FILE_SIZE);
    return NULL;
  }
  if (!g_key_file_load_from_data (kf, data, len, G_KEY_FILE_NONE, &local)) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: %s", file,
                 local->message);
    return NULL;
  }
  groups = g_key_file_get_groups (kf, &n_groups);
  if (n_groups > CRUNCH_AUTH_MAX_KEYS) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: %zu keys, at most %d are allowed", file, n_groups, CRUNCH_AUTH_MAX_KEYS);
    return NULL;
  }
  for (gchar **g = groups; *g != NULL; g++) {
    CrunchAuthKey *key = parse_key (kf, *g, file, error);
    if (key == NULL)
      return NULL;
    g_ptr_array_add (keyring->keys, key);
  }
  if (!check_unique (keyring, file, error))
    return NULL;
  return g_steal_pointer (&keyring);
}

/* ---- tokens ---- */

gchar *
crunch_auth_token_new (GError **error)
{
  guint8 bytes[TOKEN_BYTES];
  gsize got = 0;
  gchar *token;

  while (got < sizeof bytes) {
    gssize n = getrandom (bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (errno), "getrandom: %s",
                   g_strerror (errno));
      return NULL;
    }
    got += (gsize)n;
  }
  token = g_base64_encode (bytes, sizeof bytes);
  explicit_bzero (bytes, sizeof bytes);
  g_strdelimit (token, "+", '-');
  g_strdelimit (token, "/", '_');
  *strchr (token, '=') = '\0'; /* 32 bytes: 43 characters and one '=' */
  return token;
}

static void
token_digest (const gchar *token, gsize len, guint8 hash[HASH_LEN])
{
  g_autoptr (GChecksum) sum = g_checksum_new (G_CHECKSUM_SHA256);
  gsize n = HASH_LEN;

  g_checksum_update (sum, (const guchar *)token, (gssize)len);
  g_checksum_get_digest (sum, hash, &n);
}

gchar *
crunch_auth_token_hash (const gchar *token)
{
  return g_compute_checksum_for_string (G_CHECKSUM_SHA256, token, -1);
}

/* The token of "Bearer TOKEN" (RFC 6750 2.1: the scheme in any case, a b64token). */
static gboolean
bearer_token (const gchar *value, const gchar **token, gsize *len)
{
  const gchar *p;

  if (value == NULL || strnlen (value, CRUNCH_AUTH_MAX_HEADER + 1) > CRUNCH_AUTH_MAX_HEADER ||
      g_ascii_strncasecmp (value, "Bearer ", 7) != 0)
    return FALSE;
  for (p = value + 7; *p == ' ';)
    p++;
  *token = p;
  p += strspn (p, B64TOKEN_CHARS);
  if (p == *token)
    return FALSE;
  p += strspn (p, "=");
  *len = (gsize)(p - *token);
  p += strspn (p, " \t");
  return *p == '\0';
}

/* The key whose hash is `hash`, or NULL. Constant-time: every key is compared, over all of its
 * 32 bytes, by OR-ing the XOR of each byte pair, and the match is picked with a mask computed
 * arithmetically, not with a branch; nothing stops early (memcmp() returns at the first byte
 * that differs). So the time taken depends only on the number of keys, not on how many leading
 * bytes of a guess were right nor on which key matched, and response times cannot be used to
 * find a stored hash byte by byte. Comparing hashes of tokens, not the tokens, adds a second
 * wall: a partial match of hashes says nothing about the token that would produce it. */
static CrunchAuthKey *
find_key_constant_time (const CrunchKeyring *keyring, const guint8 hash[HASH_LEN])
{
  guint32 found = 0; /* index + 1 of the matching key, 0 = none */

  for (guint i = 0; i < keyring->keys->len; i++) {
    const CrunchAuthKey *key = keyring->keys->pdata[i];
    guint32 diff = 0, equal;
    for (guint b = 0; b < HASH_LEN; b++)
      diff |= (guint32)(key->hash[b] ^ hash[b]);
    equal = (diff - 1) >> 31; /* diff is 0..255: 1 when 0, else 0 */
    found |= (0u - equal) & (i + 1);
  }
  return found != 0 ? keyring->keys->pdata[found - 1] : NULL;
}

/* ---- the running settings ---- */

CrunchAuthSettings *
crunch_auth_settings_new (CrunchKeyring *keyring, const gchar *path, const gchar *const *public)
{
  CrunchAuthSettings *settings = g_new0 (CrunchAuthSettings, 1);

  settings->keyring = keyring;
  settings->path = g_strdup (path);
  settings->public = g_strdupv ((gchar **)public);
  return settings;
}

CrunchAuthSettings *
crunch_auth_settings_load (const CrunchConfig *config, GError **error)
{
  const gchar *value = config->auth_keys_file;
  g_autofree gchar *path = NULL, *data = NULL;
  g_autoptr (GError) local = NULL;
  CrunchKeyring *keyring;
  GStatBuf st;
  gsize len;

  if (*value == '\0')
    return crunch_auth_settings_new (NULL, NULL, (const gchar *const *)config->auth_public);
  path = crunch_config_resolve_path (config, value);
  if (g_stat (path, &st) == 0 && st.st_size > CRUNCH_AUTH_MAX_FILE_SIZE)
    g_set_error (&local, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s is larger than %d bytes", path,
                 CRUNCH_AUTH_MAX_FILE_SIZE);
  else
    g_file_get_contents (path, &data, &len, &local);
  if (local != NULL) {
    g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID,
                 "%s: [auth] keys_file = '%s': %s", config->path ? config->path : "(defaults)",
                 value, local->message);
    return NULL;
  }
  keyring = crunch_keyring_parse (data, len, path, error);
  if (keyring == NULL)
    return NULL;
  return crunch_auth_settings_new (keyring, path, (const gchar *const *)config->auth_public);
}

void
crunch_auth_settings_free (CrunchAuthSettings *settings)
{
  if (settings == NULL)
    return;
  crunch_keyring_free (settings->keyring);
  g_free (settings->path);
  g_strfreev (settings->public);
  g_free (settings);
}

CrunchAuth *
crunch_auth_new (void)
{
  CrunchAuth *self = g_new0 (CrunchAuth, 1);

  g_rw_lock_init (&self->lock);
  g_mutex_init (&self->names_lock);
  self->current = g_new0 (CrunchAuthSettings, 1);
  return self;
}

void
crunch_auth_free (CrunchAuth *self)
{
  if (self == NULL)
    return;
  crunch_auth_settings_free (self->current);
  for (guint i = 0; i < self->n_names; i++)
    g_free (self->names[i]);
  g_mutex_clear (&self->names_lock);
  g_rw_lock_clear (&self->lock);
  g_free (self);
}

/* Main thread: the metrics row of a key name; names keep their row for the process's life. */
static guint
name_slot (CrunchAuth *self, const gchar *name)
{
  guint slot = SLOT_OTHER;

  g_mutex_lock (&self->names_lock);
  for (guint i = 0; i < self->n_names && slot == SLOT_OTHER; i++) {
    if (g_str_equal (self->names[i], name))
      slot = i;
  }
  if (slot == SLOT_OTHER && self->n_names < CRUNCH_AUTH_METRIC_KEYS) {
    slot = self->n_names;
    self->names[self->n_names++] = g_strdup (name);
  }
  g_mutex_unlock (&self->names_lock);
  return slot;
}

/* Main thread: each new key takes on the state of the running key of its name, or a full
 * bucket. */
static void
attach_states (CrunchAuth *self, CrunchKeyring *keyring, const CrunchKeyring *old)
{
  g_autoptr (GHashTable) by_name = g_hash_table_new (g_str_hash, g_str_equal);

  for (guint i = 0; old != NULL && i < old->keys->len; i++) {
    CrunchAuthKey *key = old->keys->pdata[i];
    g_hash_table_insert (by_name, key->name, key);
  }
  for (guint i = 0; i < keyring->keys->len; i++) {
    CrunchAuthKey *key = keyring->keys->pdata[i];
    CrunchAuthKey *before = g_hash_table_lookup (by_name, key->name);
    if (before != NULL) {
      key->state = state_ref (before->state);
      continue;
    }
    key->state = g_new0 (State, 1);
    key->state->ref = 1;
    g_mutex_init (&key->state->lock);
    key->state->tokens = key->burst;
    key->state->refilled_us = g_get_monotonic_time ();
    key->state->slot = name_slot (self, key->name);
  }
}

void
crunch_auth_publish (CrunchAuth *self, CrunchAuthSettings *settings)
{
  CrunchAuthSettings *old;

  /* only this thread replaces `current`: reading it here without the lock is safe */
  if (settings->keyring != NULL) {
    g_autofree gchar *open = g_strjoinv (", ", settings->public);
    attach_states (self, settings->keyring, self->current->keyring);
    g_message ("API keys: %u from %s; open without a key: %s",
               crunch_keyring_size (settings->keyring), settings->path, *open ? open : "none");
  }
  g_rw_lock_writer_lock (&self->lock);
  old = self->current;
  self->current = settings;
  g_rw_lock_writer_unlock (&self->lock);
  crunch_auth_settings_free (old); /* requests hold references to the keys they use */
}

/* ---- requests ---- */

static gboolean
refuse (CrunchAuthGrant *grant, CrunchAuthOutcome outcome)
{
  grant->outcome = outcome;
  return FALSE;
}

/* The key's bucket gives a token now, or says in how many seconds one will be there. */
static gboolean
take_token (CrunchAuthKey *key, guint *wait_s)
{
  State *s = key->state;
  gint64 now = g_get_monotonic_time ();
  gboolean ok;

  if (key->rate == 0)
    return TRUE;
  g_mutex_lock (&s->lock);
  s->tokens = MIN (key->burst, s->tokens + (now - s->refilled_us) / 1e6 * key->rate);
  s->refilled_us = now;
  ok = s->tokens >= 1;
  if (ok)
    s->tokens -= 1;
  else
    *wait_s = (guint)MAX (1.0, ceil ((1 - s->tokens) / key->rate));
  g_mutex_unlock (&s->lock);
  return ok;
}

/* In-flight limit, then rate; FALSE with the 429 in `refusal`. */
static gboolean
admit (CrunchAuthGrant *grant, CrunchReply *refusal)
{
  CrunchAuthKey *key = grant->key;
  gint in_flight = g_atomic_int_add (&key->state->in_flight, 1) + 1;
  guint wait_s = 1;

  grant->counted = TRUE;
  if (key->max_in_flight > 0 && (guint)in_flight > key->max_in_flight) {
    *refusal = crunch_reply_text (429, "key %s already has max_in_flight (%u) requests in flight",
                                  key->name, key->max_in_flight);
    refusal->retry_after = g_strdup ("1");
    return refuse (grant, CRUNCH_AUTH_LIMITED);
  }
  if (!take_token (key, &wait_s)) {
    *refusal = crunch_reply_text (429, "key %s is over its rate of %s", key->name, key->rate_text);
    refusal->retry_after = g_strdup_printf ("%u", wait_s);
    return refuse (grant, CRUNCH_AUTH_LIMITED);
  }
  return TRUE;
}

/* Under the reader lock: whether the request needs no key, else the key its token names (a
 * reference) in grant->key. */
static gboolean
identify (CrunchAuth *self, const CrunchRoute *route, gboolean ops_listener, const guint8 *hash,
          CrunchAuthGrant *grant)
{
  const CrunchAuthSettings *s;
  gboolean open;

  g_rw_lock_reader_lock (&self->lock);
  s = self->current;
  grant->on = s->keyring != NULL;
  open = !grant->on || ops_listener ||
         (s->public != NULL && g_strv_contains ((const gchar *const *)s->public, route->pattern));
  if (!open && hash != NULL) {
    CrunchAuthKey *key = find_key_constant_time (s->keyring, hash);
    grant->key = key != NULL ? key_ref (key) : NULL;
  }
  g_rw_lock_reader_unlock (&self->lock);
  return open;
}

gboolean
crunch_auth_check (CrunchAuth *self, const CrunchRoute *route, gboolean ops_listener,
                   const gchar *authorization, CrunchAuthGrant *grant, CrunchReply *refusal)
{
  guint8 hash[HASH_LEN];
  const gchar *token = NULL;
  gsize len = 0;
  gboolean bearer = bearer_token (authorization, &token, &len);

  if (bearer)
    token_digest (token, len, hash);
  if (identify (self, route, ops_listener, bearer ? hash : NULL, grant)) {
    grant->outcome = CRUNCH_AUTH_OPEN;
    return TRUE;
  }
  if (grant->key == NULL) {
    *refusal = authorization == NULL
                   ? crunch_reply_text (401, "an API key is required: Authorization: Bearer TOKEN")
                   : crunch_reply_text (401, "invalid API key");
    refusal->authenticate = authorization == NULL ? AUTHENTICATE : AUTHENTICATE_INVALID;
    return refuse (grant, CRUNCH_AUTH_UNAUTHORIZED);
  }
  if (route->lane == CRUNCH_LANE_OPS && !grant->key->ops) {
    *refusal = crunch_reply_text (403, "key %s may not use the ops endpoints (ops = false)",
                                  grant->key->name);
    return refuse (grant, CRUNCH_AUTH_FORBIDDEN);
  }
  if (!admit (grant, refusal))
    return FALSE;
  grant->outcome = CRUNCH_AUTH_OK;
  return TRUE;
}

gboolean
crunch_auth_may_call (CrunchAuthGrant *grant, const gchar *function, CrunchReply *refusal)
{
  CrunchAuthKey *key = grant->key;
  gsize len = strlen (function);

  if (key == NULL)
    return TRUE;
  for (guint i = 0; i < key->functions->len; i++) {
    if (g_pattern_spec_match (key->functions->pdata[i], len, function, NULL))
      return TRUE;
  }
  *refusal = crunch_reply_text (403, "key %s may not call %s", key->name, function);
  return refuse (grant, CRUNCH_AUTH_FORBIDDEN);
}

const gchar *
crunch_auth_grant_name (const CrunchAuthGrant *grant)
{
  return grant->key != NULL ? grant->key->name : NULL;
}

gint
crunch_auth_grant_priority (const CrunchAuthGrant *grant)
{
  return grant->key != NULL ? grant->key->priority : -1;
}

void
crunch_auth_finish (CrunchAuth *self, CrunchAuthGrant *grant)
{
  guint slot = grant->key != NULL ? grant->key->state->slot : SLOT_UNKNOWN;

  if (grant->outcome != CRUNCH_AUTH_OPEN)
    __atomic_add_fetch (&self->counts[slot][grant->outcome - CRUNCH_AUTH_OK], 1, __ATOMIC_RELAXED);
  if (grant->counted)
    g_atomic_int_add (&grant->key->state->in_flight, -1);
  g_clear_pointer (&grant->key, key_unref);
  grant->counted = FALSE;
}

static void
render_row (GString *out, const guint64 *counts, const gchar *name)
{
  for (guint r = 0; r < N_RESULTS; r++)
    g_string_append_printf (
        out, "crunchd_auth_requests_total{key=\"%s\",result=\"%s\"} %" G_GUINT64_FORMAT "\n", name,
        result_names[r], __atomic_load_n (&counts[r], __ATOMIC_RELAXED));
}

void
crunch_auth_render_metrics (GString *out, gpointer data)
{
  CrunchAuth *self = data;

  g_string_append (out, "# HELP crunchd_auth_requests_total Requests that needed an API key, by "
                        "key name (\"other\" past the first 64 names, \"\" when no key matched) "
                        "and result.\n"
                        "# TYPE crunchd_auth_requests_total counter\n");
  g_mutex_lock (&self->names_lock);
  for (guint i = 0; i < self->n_names; i++)
    render_row (out, self->counts[i], self->names[i]);
  if (self->n_names == CRUNCH_AUTH_METRIC_KEYS)
    render_row (out, self->counts[SLOT_OTHER], "other");
  g_mutex_unlock (&self->names_lock);
  /* without a key a request can only be unauthorized */
  g_string_append_printf (
      out, "crunchd_auth_requests_total{key=\"\",result=\"unauthorized\"} %" G_GUINT64_FORMAT "\n",
      __atomic_load_n (&self->counts[SLOT_UNKNOWN][1], __ATOMIC_RELAXED));
}
