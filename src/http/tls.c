/* tls.c - HTTPS credentials (see tls.h).
 *
 * DESIGN
 * Threads: the main thread loads credentials (at start and on SIGHUP). MHD's polling threads run
 * handshakes, and GnuTLS asks retrieve() for the certificate of each: one atomic load of
 * `current`. A reload publishes new credentials with one atomic store, so new handshakes get
 * them while connections already established keep the session they have (nothing is dropped).
 * A handshake that loaded the old pointer may still be using it, and GnuTLS keeps the
 * certificate and key it was handed for its session; so credentials once published are never
 * freed while serving: CrunchTls keeps them all until crunch_tls_free(), after the daemons have
 * stopped. A reload whose files did not change keeps the running credentials, so only a real
 * renewal adds one (a few KB).
 * The client CA is given to MHD at daemon start (MHD_OPTION_HTTPS_MEM_TRUST); MHD asks clients for
 * a certificate, and server.c refuses requests whose certificate does not verify (403). */
#include "tls.h"

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <time.h>

typedef struct {
  gnutls_pcert_st *pcerts; /* the certificate, then its chain */
  guint n;
  gnutls_privkey_t key;
  gchar *fingerprint; /* SHA-256 over both files: unchanged files, same credentials */
} Creds;

struct CrunchTls {
  GPtrArray *all;   /* every Creds published, the current one last */
  gchar *client_ca; /* PEM, or NULL */
};

/* GnuTLS's certificate callback has no user data: this is the one CrunchTls's current Creds. */
static Creds *current;

static void
creds_free (Creds *c)
{
  for (guint i = 0; c->pcerts != NULL && i < c->n; i++)
    gnutls_pcert_deinit (&c->pcerts[i]);
  g_free (c->pcerts);
  if (c->key != NULL)
    gnutls_privkey_deinit (c->key);
  g_free (c->fingerprint);
  g_free (c);
}
G_DEFINE_AUTOPTR_CLEANUP_FUNC (Creds, creds_free)

static gboolean G_GNUC_PRINTF (5, 6)
    fail (GError **error, const CrunchConfig *config, const gchar *key, const gchar *value,
          const gchar *format, ...)
{
  g_autofree gchar *why = NULL;
  va_list ap;

  va_start (ap, format);
  why = g_strdup_vprintf (format, ap);
  va_end (ap);
  g_set_error (error, CRUNCH_CONFIG_ERROR, CRUNCH_CONFIG_ERROR_INVALID, "%s: [tls] %s = '%s': %s",
               config->path ? config->path : "(defaults)", key, value, why);
  return FALSE;
}

static gboolean
read_pem (const CrunchConfig *config, const gchar *key, const gchar *value, gchar **path,
          gchar **data, gsize *len, GError **error)
{
  g_autoptr (GError) local = NULL;

  *path = crunch_config_resolve_path (config, value);
  if (!g_file_get_contents (*path, data, len, &local))
    return fail (error, config, key, value, "%s", local->message);
  if (*len > G_MAXINT32)
    return fail (error, config, key, value, "%s is too large", *path);
  return TRUE;
}

static gboolean
import_certificates (const CrunchConfig *config, const gchar *key, const gchar *value,
                     const gchar *path, const gchar *pem, gsize len, gnutls_x509_crt_t **crts,
                     guint *n, GError **error)
{
  gnutls_datum_t datum = {(guchar *)pem, (guint)len};
  gint ret = gnutls_x509_crt_list_import2 (crts, n, &datum, GNUTLS_X509_FMT_PEM, 0);

  if (ret < 0 || *n == 0)
    return fail (error, config, key, value, "%s holds no PEM certificate (%s)", path,
                 ret < 0 ? gnutls_strerror (ret) : "empty");
  return TRUE;
}

static void
free_certificates (gnutls_x509_crt_t *crts, guint n)
{
  for (guint i = 0; i < n; i++)
    gnutls_x509_crt_deinit (crts[i]);
  gnutls_free (crts);
}

/* GnuTLS's own check that the key belongs to the certificate. */
static gint
key_matches (const gchar *cert_pem, gsize cert_len, const gchar *key_pem, gsize key_len)
{
  gnutls_certificate_credentials_t check;
  gnutls_datum_t cert = {(guchar *)cert_pem, (guint)cert_len};
  gnutls_datum_t key = {(guchar *)key_pem, (guint)key_len};
  gint ret;

  if (gnutls_certificate_allocate_credentials (&check) < 0)
    return GNUTLS_E_MEMORY_ERROR;
  ret = gnutls_certificate_set_x509_key_mem (check, &cert, &key, GNUTLS_X509_FMT_PEM);
  gnutls_certificate_free_credentials (check);
  return ret;
}

static void
warn_expired (const gchar *path, gnutls_x509_crt_t crt)
{
  time_t until = gnutls_x509_crt_get_expiration_time (crt);
  g_autoptr (GDateTime) when = g_date_time_new_from_unix_utc (until);
  g_autofree gchar *text = when != NULL ? g_date_time_format_iso8601 (when) : g_strdup ("?");

  if (until != (time_t)-1 && until < time (NULL))
    g_warning ("[tls] certificate %s expired on %s: clients will refuse it", path, text);
}

static gchar *
fingerprint (const gchar *cert, gsize cert_len, const gchar *key, gsize key_len)
{
  g_autoptr (GChecksum) sum = g_checksum_new (G_CHECKSUM_SHA256);

  g_checksum_update (sum, (const guchar *)cert, (gssize)cert_len);
  g_checksum_update (sum, (const guchar *)key, (gssize)key_len);
  return g_strdup (g_checksum_get_string (sum));
}

/* The private key, and that it matches the certificate. */
static gboolean
import_key (const CrunchConfig *config, Creds *c, const gchar *cert, gsize cert_len,
            const gchar *path, const gchar *pem, gsize len, GError **error)
{
  const gchar *value = config->tls.key;
  gnutls_datum_t datum = {(guchar *)pem, (guint)len};
  gint ret;

  if ((ret = gnutls_privkey_init (&c->key)) < 0 ||
      (ret = gnutls_privkey_import_x509_raw (c->key, &datum, GNUTLS_X509_FMT_PEM, NULL, 0)) < 0)
    return fail (error, config, "key", value, "%s holds no unencrypted PEM private key (%s)", path,
                 gnutls_strerror (ret));
  if ((ret = key_matches (cert, cert_len, pem, len)) < 0)
    return fail (error, config, "key", value, "%s does not go with [tls] certificate %s (%s)", path,
                 config->tls.certificate, gnutls_strerror (ret));
  return TRUE;
}

static Creds *
load_creds (const CrunchConfig *config, GError **error)
{
  g_autoptr (Creds) c = g_new0 (Creds, 1);
  g_autofree gchar *cert_path = NULL, *key_path = NULL, *cert = NULL, *key = NULL;
  gsize cert_len, key_len;
  gnutls_x509_crt_t *crts = NULL;
  guint n = 0;
  gint ret;

  if (!read_pem (config, "certificate", config->tls.certificate, &cert_path, &cert, &cert_len,
                 error) ||
      !import_certificates (config, "certificate", config->tls.certificate, cert_path, cert,
                            cert_len, &crts, &n, error))
    return NULL;
  c->pcerts = g_new0 (gnutls_pcert_st, n);
  c->n = n;
  ret = gnutls_pcert_import_x509_list (c->pcerts, crts, &c->n, 0);
  if (ret >= 0)
    warn_expired (cert_path, crts[0]);
  free_certificates (crts, n);
  if (ret < 0) {
    c->n = 0;
    fail (error, config, "certificate", config->tls.certificate, "%s: %s", cert_path,
          gnutls_strerror (ret));
    return NULL;
  }
  if (!read_pem (config, "key", config->tls.key, &key_path, &key, &key_len, error) ||
      !import_key (config, c, cert, cert_len, key_path, key, key_len, error))
    return NULL;
  c->fingerprint = fingerprint (cert, cert_len, key, key_len);
  return g_steal_pointer (&c);
}

/* The client CA file: PEM text holding at least one certificate. */
static gboolean
load_client_ca (const CrunchConfig *config, gchar **pem, GError **error)
{
  const gchar *value = config->tls.client_ca;
  g_autofree gchar *path = NULL, *data = NULL;
  gnutls_x509_crt_t *crts = NULL;
  gsize len;
  guint n = 0;

  *pem = NULL;
  if (*value == '\0')
    return TRUE;
  if (!read_pem (config, "client_ca", value, &path, &data, &len, error) ||
      !import_certificates (config, "client_ca", value, path, data, len, &crts, &n, error))
    return FALSE;
  free_certificates (crts, n);
  *pem = g_steal_pointer (&data);
  return TRUE;
}

static int
retrieve (gnutls_session_t session, const gnutls_datum_t *req_ca_rdn, int nreqs,
          const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length, gnutls_pcert_st **pcert,
          unsigned int *pcert_length, gnutls_privkey_t *privkey)
{
  Creds *c = g_atomic_pointer_get (&current);

  if (c == NULL)
    return -1;
  *pcert = c->pcerts;
  *pcert_length = c->n;
  *privkey = c->key;
  return 0;
}

gpointer
crunch_tls_certificate_callback (void)
{
  return (gpointer)retrieve;
}

static void
publish (CrunchTls *self, Creds *c)
{
  g_ptr_array_add (self->all, c);
  g_atomic_pointer_set (&current, c);
}

gboolean
crunch_tls_new (const CrunchConfig *config, CrunchTls **tls, GError **error)
{
  g_autoptr (CrunchTls) self = NULL;
  Creds *c;

  *tls = NULL;
  if (*config->tls.certificate == '\0')
    return TRUE;
  if (MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES ||
      MHD_is_feature_supported (MHD_FEATURE_HTTPS_CERT_CALLBACK) != MHD_YES)
    return fail (error, config, "certificate", config->tls.certificate,
                 "this libmicrohttpd was built without TLS (GnuTLS) support");
  self = g_new0 (CrunchTls, 1);
  self->all = g_ptr_array_new_with_free_func ((GDestroyNotify)creds_free);
  if (!load_client_ca (config, &self->client_ca, error) || (c = load_creds (config, error)) == NULL)
    return FALSE;
  publish (self, c);
  *tls = g_steal_pointer (&self);
  return TRUE;
}

gboolean
crunch_tls_reload (CrunchTls *self, const CrunchConfig *config, GError **error)
{
  g_autofree gchar *client_ca = NULL;
  Creds *c;

  if (self == NULL || *config->tls.certificate == '\0')
    return TRUE; /* turning HTTPS on or off needs a restart: main.c says so */
  if (!load_client_ca (config, &client_ca, error) || (c = load_creds (config, error)) == NULL)
    return FALSE;
  if (g_strcmp0 (client_ca, self->client_ca) != 0)
    g_warning ("reload: a changed [tls] client_ca applies only after a restart; keeping the old "
               "one");
  if (g_str_equal (c->fingerprint, ((Creds *)g_atomic_pointer_get (&current))->fingerprint)) {
    creds_free (c);
    return TRUE;
  }
  publish (self, c);
  g_message ("reload: new TLS certificate from %s for new connections", config->tls.certificate);
  return TRUE;
}

const gchar *
crunch_tls_client_ca (const CrunchTls *self)
{
  return self != NULL ? self->client_ca : NULL;
}

gboolean
crunch_tls_client_verified (gpointer session)
{
  guint status = 0;

  return session != NULL && gnutls_certificate_verify_peers2 (session, &status) >= 0 && status == 0;
}

void
crunch_tls_free (CrunchTls *self)
{
  if (self == NULL)
    return;
  g_atomic_pointer_set (&current, NULL);
  g_ptr_array_unref (self->all);
  g_free (self->client_ca);
  g_free (self);
}
