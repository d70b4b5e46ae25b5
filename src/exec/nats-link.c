/* nats-link.c - see nats-link.h. */
#include "nats-link.h"

#include <gio/gio.h>

static const gchar *const status_names[] = {
    [CRUNCH_WIRE_OK] = "ok",
    [CRUNCH_WIRE_FAILED] = "failed",
    [CRUNCH_WIRE_TIMED_OUT] = "timed-out",
    [CRUNCH_WIRE_CANCELLED] = "cancelled",
    [CRUNCH_WIRE_SHUTDOWN] = "shutdown",
    [CRUNCH_WIRE_RUNNING] = "running",
    [CRUNCH_WIRE_CRASHED] = "crashed",
    [CRUNCH_WIRE_UNAVAILABLE] = "unavailable",
};

const gchar *
crunch_wire_status_name (CrunchWireStatus status)
{
  return status < CRUNCH_WIRE_UNKNOWN ? status_names[status] : "unknown";
}

CrunchWireStatus
crunch_wire_status_parse (const gchar *name)
{
  for (guint i = 0; name != NULL && i < CRUNCH_WIRE_UNKNOWN; i++) {
    if (g_str_equal (status_names[i], name))
      return (CrunchWireStatus)i;
  }
  return CRUNCH_WIRE_UNKNOWN;
}

void
crunch_nats_set_error (GError **error, natsStatus status, const gchar *what)
{
  const gchar *last = nats_GetLastError (NULL);

  g_set_error (error, G_IO_ERROR, G_IO_ERROR_FAILED, "%s: %s%s%s", what,
               natsStatus_GetText (status), last != NULL && *last != '\0' ? ": " : "",
               last != NULL ? last : "");
}

/* Applies [nats] settings to `opts`; stops at the first refusal. */
static natsStatus
set_options (natsOptions *opts, const CrunchConfig *config, const gchar *name,
             gboolean global_delivery, const CrunchNatsHandlers *h)
{
  natsStatus s;

  s = natsOptions_SetServers (opts, (const char **)config->nats.servers,
                              (int)g_strv_length (config->nats.servers));
  if (s == NATS_OK)
    s = natsOptions_SetName (opts, name);
  /* Without this nats.c buffers outgoing messages and flushes them from a timer: ~1 ms each. */
  if (s == NATS_OK)
    s = natsOptions_SetSendAsap (opts, true);
  if (s == NATS_OK)
    s = natsOptions_SetMaxReconnect (opts, config->nats.max_reconnect);
  if (s == NATS_OK)
    s = natsOptions_SetReconnectWait (opts, (int64_t)(config->nats.reconnect_wait * 1000));
  /* A server that vanishes without closing TCP is noticed within two pings. */
  if (s == NATS_OK)
    s = natsOptions_SetPingInterval (opts, 2000);
  if (s == NATS_OK)
    s = natsOptions_SetMaxPingsOut (opts, 2);
  if (s == NATS_OK)
    s = natsOptions_SetTimeout (opts, 2000);
  if (s == NATS_OK)
    s = natsOptions_UseGlobalMessageDelivery (opts, global_delivery);
  if (s == NATS_OK)
    s = natsOptions_SetRetryOnFailedConnect (opts, true, h->connected, h->data);
  if (s == NATS_OK && h->disconnected != NULL)
    s = natsOptions_SetDisconnectedCB (opts, h->disconnected, h->data);
  if (s == NATS_OK && h->reconnected != NULL)
    s = natsOptions_SetReconnectedCB (opts, h->reconnected, h->data);
  if (s == NATS_OK && h->closed != NULL)
    s = natsOptions_SetClosedCB (opts, h->closed, h->data);
  return s;
}

natsConnection *
crunch_nats_connect (const CrunchConfig *config, const gchar *name, gboolean global_delivery,
                     const CrunchNatsHandlers *handlers, gboolean *connected, GError **error)
{
  natsOptions *opts = NULL;
  natsConnection *nc = NULL;
  natsStatus s;

  s = natsOptions_Create (&opts);
  if (s == NATS_OK)
    s = set_options (opts, config, name, global_delivery, handlers);
  if (s != NATS_OK) {
    crunch_nats_set_error (error, s, "NATS options");
    natsOptions_Destroy (opts);
    return NULL;
  }
  s = natsConnection_Connect (&nc, opts);
  natsOptions_Destroy (opts); /* the connection keeps its own copy */
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) {
    crunch_nats_set_error (error, s, "NATS connect");
    natsConnection_Destroy (nc);
    return NULL;
  }
  *connected = s == NATS_OK;
  return nc;
}

gchar *
crunch_nats_connected_url (natsConnection *nc)
{
  gchar buf[256];

  if (natsConnection_GetConnectedUrl (nc, buf, sizeof buf) != NATS_OK || buf[0] == '\0')
    return g_strdup ("(none)");
  return g_strdup (buf);
}

gchar *
crunch_nats_subject (const gchar *prefix, const gchar *suffix)
{
  return g_strconcat (prefix, ".", suffix, NULL);
}

const gchar *
crunch_nats_header (natsMsg *msg, const gchar *name)
{
  const char *value = NULL;

  if (natsMsgHeader_Get (msg, name, &value) != NATS_OK)
    return NULL;
  return value;
}

gint64
crunch_nats_header_int (natsMsg *msg, const gchar *name, gint64 fallback)
{
  const gchar *text = crunch_nats_header (msg, name);
  gint64 value;

  if (text == NULL || !g_ascii_string_to_signed (text, 10, G_MININT64, G_MAXINT64, &value, NULL))
    return fallback;
  return value;
}

void
crunch_nats_header_set_int (natsMsg *msg, const gchar *name, gint64 value)
{
  gchar buf[24];

  g_snprintf (buf, sizeof buf, "%" G_GINT64_FORMAT, value);
  natsMsgHeader_Set (msg, name, buf);
}

GBytes *
crunch_nats_args_encode (GVariant *args, const gchar **type)
{
  *type = g_variant_get_type_string (args);
  return g_variant_get_data_as_bytes (args);
}

GVariant *
crunch_nats_args_decode (const gchar *type, gconstpointer data, gsize size, GError **error)
{
  g_autoptr (GBytes) bytes = NULL;

  if (type == NULL || !g_variant_type_string_is_valid (type)) {
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_INVALID_DATA,
                 "missing or invalid " CRUNCH_HDR_ARGS_TYPE " '%s'", type ? type : "");
    return NULL;
  }
  bytes = g_bytes_new (data, size);
  return g_variant_ref_sink (
      g_variant_new_from_bytes (G_VARIANT_TYPE (type), bytes, FALSE /* untrusted */));
}
