/* auth.h - API keys: [auth] keys_file, who is calling and what that key may do.
 *
 * The keys file names each key in a group of its own; only the SHA-256 of a key's token is
 * stored, never the token:
 *   [alice]
 *   sha256 = 64 hex digits   (crunchd --new-key alice prints the token and this group)
 *   functions = fib, mandel*  (names or globs, comma-separated; default *; empty: none)
 *   max_in_flight = 4         (its requests being answered at once; 0 = no limit, the default)
 *   rate = 10/s               (token bucket: N/s, N/min or N/h; absent = no limit)
 *   burst = 20                (the bucket's size; default the rate per second rounded up)
 *   ops = true                (the ops routes on the public listeners; default false)
 *   priority = 7              (its requests' class, 0-9, and the most Crunch-Priority may ask;
 *                             default [executor] default_priority)
 * The parser is pure (no HTTP, no clock), so it is unit-tested and fuzzed on its own
 * (tests/fuzz/fuzz-keys.c). */
#pragma once

#include <glib.h>

#include "config.h"
#include "reply.h"
#include "routes.h"

/* Bounds on what a user (or an attacker who can write the file) controls. */
#define CRUNCH_AUTH_MAX_FILE_SIZE (1024 * 1024) /* bytes of the keys file */
#define CRUNCH_AUTH_MAX_KEYS 1024               /* groups in the keys file */
#define CRUNCH_AUTH_MAX_FUNCTIONS 64            /* patterns in one key's functions */
#define CRUNCH_AUTH_MAX_NAME 64                 /* a key name: [A-Za-z0-9_.-], 1 to 64 */
#define CRUNCH_AUTH_MAX_HEADER 1024             /* the Authorization value looked at */
#define CRUNCH_AUTH_METRIC_KEYS 64 /* key names with their own metrics label; others "other" */

/* A parsed keys file (immutable). */
typedef struct CrunchKeyring CrunchKeyring;
/* `data` (`len` bytes, the contents of `file`) as a keys file. Errors name the file, the group
 * (the key name), the key and its value, as crunchd.ini's do. */
CrunchKeyring *crunch_keyring_parse (const gchar *data, gsize len, const gchar *file,
                                     GError **error);
guint crunch_keyring_size (const CrunchKeyring *keyring);
void crunch_keyring_free (CrunchKeyring *keyring);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchKeyring, crunch_keyring_free)

/* A fresh token: 32 bytes from getrandom(2), base64url without padding (43 characters). NULL
 * and an error if the kernel gives no randomness. */
gchar *crunch_auth_token_new (GError **error);
/* The SHA-256 of a token, as the keys file holds it (64 lower-case hex digits). */
gchar *crunch_auth_token_hash (const gchar *token);
/* A valid key name (a group name in the keys file). */
gboolean crunch_auth_name_valid (const gchar *name);

/* The server's view: the running keys, [auth] public, and per-key state (rate, in flight) that
 * outlives reloads for keys that keep their name. Always exists; with [auth] keys_file empty,
 * authentication is off and every check passes. */
typedef struct CrunchAuth CrunchAuth;
typedef struct CrunchAuthKey CrunchAuthKey;

/* The keys and public routes `config` names, read and checked, ready to publish. */
typedef struct CrunchAuthSettings CrunchAuthSettings;
CrunchAuthSettings *crunch_auth_settings_load (const CrunchConfig *config, GError **error);
/* Settings from a parsed keyring (taken; NULL: authentication off) and public route patterns. */
CrunchAuthSettings *crunch_auth_settings_new (CrunchKeyring *keyring, const gchar *path,
                                              const gchar *const *public);
void crunch_auth_settings_free (CrunchAuthSettings *settings);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchAuthSettings, crunch_auth_settings_free)

CrunchAuth *crunch_auth_new (void);
/* Main thread: the settings take effect for the next request (takes `settings`). */
void crunch_auth_publish (CrunchAuth *self, CrunchAuthSettings *settings);
void crunch_auth_free (CrunchAuth *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchAuth, crunch_auth_free)

typedef enum {
  CRUNCH_AUTH_OPEN,         /* no key needed: auth off, a public route, the ops listener */
  CRUNCH_AUTH_OK,           /* a key, allowed */
  CRUNCH_AUTH_UNAUTHORIZED, /* 401: no key, or a wrong one */
  CRUNCH_AUTH_FORBIDDEN,    /* 403: the key may not call this */
  CRUNCH_AUTH_LIMITED,      /* 429: over its rate or its in-flight limit */
} CrunchAuthOutcome;

/* What a request holds of auth from its routing to its end. Zeroed with the request. */
typedef struct {
  CrunchAuthOutcome outcome;
  CrunchAuthKey *key; /* the caller's key (a reference), or NULL */
  gboolean on;        /* authentication was on for it: jobs belong to their creator */
  gboolean counted;   /* in its key's in-flight count */
} CrunchAuthGrant;

/* Polling thread, once per request, once it is routed. `authorization` is the Authorization
 * header (all fields joined), or NULL; `ops_listener`: it came to the [metrics] listen address.
 * TRUE: it may go on (`grant` says as whom). FALSE: `refusal` is its 401, 403 or 429. */
gboolean crunch_auth_check (CrunchAuth *self, const CrunchRoute *route, gboolean ops_listener,
                            const gchar *authorization, CrunchAuthGrant *grant,
                            CrunchReply *refusal);
/* Whether the grant's key may call `function` (always with no key); FALSE gives the 403. */
gboolean crunch_auth_may_call (CrunchAuthGrant *grant, const gchar *function, CrunchReply *refusal);
/* The request ended: counts it in the metrics, leaves the in-flight count, drops the key. */
void crunch_auth_finish (CrunchAuth *self, CrunchAuthGrant *grant);
/* The grant's key name, or NULL. */
const gchar *crunch_auth_grant_name (const CrunchAuthGrant *grant);
/* The grant's key's `priority`, or -1 (no key, or a key without one). */
gint crunch_auth_grant_priority (const CrunchAuthGrant *grant);

/* crunchd_auth_requests_total{key,result}: a CrunchMetricsSource render function. */
void crunch_auth_render_metrics (GString *out, gpointer auth);
