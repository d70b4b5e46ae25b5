/* tls.h - HTTPS for the public listeners: [tls] certificate, key and client_ca, read and checked
 * here, handed to libmicrohttpd (GnuTLS) and swapped on reload without dropping connections. */
#pragma once

#include <glib.h>

#include "config.h"

/* The GnuTLS priority string: TLS 1.3 and 1.2 only, GnuTLS's NORMAL ciphers otherwise, without
 * static RSA key exchange (no forward secrecy). Documented in crunchd.ini(5). */
#define CRUNCH_TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-RSA"

typedef struct CrunchTls CrunchTls;

/* Reads and checks the [tls] files of `config`: *tls is NULL when [tls] certificate is not set
 * (plain HTTP). FALSE, with an error naming the configuration file, [tls] key, value and what is
 * wrong (missing, unreadable, not PEM, key not matching the certificate), or when libmicrohttpd
 * was built without TLS. Only one CrunchTls may exist at a time (GnuTLS's certificate callback
 * has no closure). */
gboolean crunch_tls_new (const CrunchConfig *config, CrunchTls **tls, GError **error);
/* SIGHUP: reads the files `config` names now; new handshakes get the new certificate, existing
 * connections keep theirs. On an error (as crunch_tls_new()) the running certificate stays. */
gboolean crunch_tls_reload (CrunchTls *self, const CrunchConfig *config, GError **error);
/* The client CA certificates (PEM) for MHD_OPTION_HTTPS_MEM_TRUST, or NULL: no client certificates.
 * Fixed at start (the daemons own it); a reload that changes [tls] client_ca needs a restart. */
const gchar *crunch_tls_client_ca (const CrunchTls *self);
/* MHD_OPTION_HTTPS_CERT_CALLBACK: a gnutls_certificate_retrieve_function2. */
gpointer crunch_tls_certificate_callback (void);
/* The client of this gnutls_session_t presented a certificate that verifies against client_ca
 * (signed by it, in its validity period). */
gboolean crunch_tls_client_verified (gpointer session);
/* After the daemons have stopped. */
void crunch_tls_free (CrunchTls *self);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchTls, crunch_tls_free)
