/* wire.c - see wire.h. No threads of its own: a reader belongs to the one thread that reads its
 * fd, and a frame is written by the one thread that owns the peer at that moment. */
#include "wire.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "json.h"

G_DEFINE_QUARK (crunch - wire - error - quark, crunch_wire_error)

#define PREFIX 8

static gboolean protocol_error (GError **error, const gchar *format, ...) G_GNUC_PRINTF (2, 3);

static gboolean
protocol_error (GError **error, const gchar *format, ...)
{
  va_list ap;
  g_autofree gchar *message = NULL;

  va_start (ap, format);
  message = g_strdup_vprintf (format, ap);
  va_end (ap);
  g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL, message);
  return FALSE;
}

void
crunch_wire_frame_free (CrunchWireFrame *frame)
{
  if (frame == NULL)
    return;
  g_clear_pointer (&frame->header, json_object_unref);
  g_clear_pointer (&frame->payload, g_bytes_unref);
  g_free (frame);
}

/* ---- writing ---- */

static gboolean
wait_writable (int fd, CrunchWireCheck check, gpointer data, GError **error)
{
  struct pollfd p = {.fd = fd, .events = POLLOUT};

  for (;;) {
    int ready = poll (&p, 1, check != NULL ? CRUNCH_WIRE_STEP_MS : -1);
    if (ready > 0)
      return TRUE;
    if (ready < 0 && errno != EINTR) {
      g_set_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO, "poll: %s", g_strerror (errno));
      return FALSE;
    }
    if (ready == 0 && !check (data)) {
      g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED, "stopped");
      return FALSE;
    }
  }
}

static gboolean
write_all (int fd, struct iovec *iov, int n, CrunchWireCheck check, gpointer data, GError **error)
{
  while (n > 0) {
    ssize_t done = writev (fd, iov, n);
    if (done < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_writable (fd, check, data, error))
        return FALSE;
      continue;
    }
    if (done < 0 && errno == EINTR)
      continue;
    if (done < 0) {
      g_set_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO, "write: %s", g_strerror (errno));
      return FALSE;
    }
    while (n > 0 && (gsize)done >= iov->iov_len) {
      done -= (ssize_t)iov->iov_len;
      iov++, n--;
    }
    if (n > 0) {
      iov->iov_base = (gchar *)iov->iov_base + done;
      iov->iov_len -= (gsize)done;
    }
  }
  return TRUE;
}

gboolean
crunch_wire_write (int fd, JsonObject *header, GBytes *payload, GError **error)
{
  return crunch_wire_write_checked (fd, header, payload, NULL, NULL, error);
}

gboolean
crunch_wire_write_checked (int fd, JsonObject *header, GBytes *payload, CrunchWireCheck check,
                           gpointer data, GError **error)
{
  g_autoptr (JsonNode) node = json_node_init_object (json_node_alloc (), header);
  gsize header_len = 0, payload_len = 0;
  g_autofree gchar *text = json_to_string (node, FALSE);
  gconstpointer bytes = payload != NULL ? g_bytes_get_data (payload, &payload_len) : NULL;
  guint32 prefix[2];
  struct iovec iov[3];

  header_len = strlen (text);
  if (header_len > CRUNCH_WIRE_MAX_HEADER) {
    g_set_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_TOO_LARGE,
                 "its JSON header would be %zu bytes, more than the protocol's %u", header_len,
                 CRUNCH_WIRE_MAX_HEADER);
    return FALSE;
  }
  prefix[0] = GUINT32_TO_BE ((guint32)header_len);
  prefix[1] = GUINT32_TO_BE ((guint32)payload_len);
  iov[0] = (struct iovec){prefix, sizeof prefix};
  iov[1] = (struct iovec){text, header_len};
  iov[2] = (struct iovec){(gpointer)bytes, payload_len};
  return write_all (fd, iov, payload_len > 0 ? 3 : 2, check, data, error);
}

/* ---- reading ---- */

struct CrunchWireReader {
  GByteArray *buf;
  gsize max_payload;
  gsize need; /* bytes the current frame has in all, once its prefix is known; else PREFIX */
};

CrunchWireReader *
crunch_wire_reader_new (gsize max_payload)
{
  CrunchWireReader *reader = g_new0 (CrunchWireReader, 1);

  reader->buf = g_byte_array_new ();
  reader->max_payload = max_payload;
  reader->need = PREFIX;
  return reader;
}

void
crunch_wire_reader_free (CrunchWireReader *reader)
{
  if (reader == NULL)
    return;
  g_byte_array_unref (reader->buf);
  g_free (reader);
}

static gboolean
check_prefix (CrunchWireReader *reader, GError **error)
{
  guint32 h, p;

  memcpy (&h, reader->buf->data, 4);
  memcpy (&p, reader->buf->data + 4, 4);
  h = GUINT32_FROM_BE (h);
  p = GUINT32_FROM_BE (p);
  if (h < 1 || h > CRUNCH_WIRE_MAX_HEADER)
    return protocol_error (error, "header length %u outside 1 .. %u", h, CRUNCH_WIRE_MAX_HEADER);
  if (p > reader->max_payload)
    return protocol_error (error, "payload length %u over the limit of %zu", p,
                           reader->max_payload);
  reader->need = PREFIX + (gsize)h + p;
  return TRUE;
}

static JsonObject *
parse_header (const gchar *text, gsize len, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new_immutable ();
  g_autoptr (GError) local = NULL;
  const gchar *strict = NULL;
  JsonNode *root;

  if (!g_utf8_validate (text, (gssize)len, NULL)) {
    protocol_error (error, "header is not UTF-8");
    return NULL;
  }
  if (crunch_json_check (text, len, CRUNCH_JSON_MAX_DEPTH, &strict) != CRUNCH_JSON_OK) {
    protocol_error (error, "header is not strict JSON: %s", strict);
    return NULL;
  }
  if (!json_parser_load_from_data (parser, text, (gssize)len, &local)) {
    /* json-glib may quote what it read: keep the message UTF-8 */
    g_autofree gchar *why = g_utf8_make_valid (local->message, -1);
    protocol_error (error, "header is not JSON: %s", why);
    return NULL;
  }
  root = json_parser_get_root (parser);
  if (root == NULL || !JSON_NODE_HOLDS_OBJECT (root)) {
    protocol_error (error, "header is not a JSON object");
    return NULL;
  }
  return json_object_ref (json_node_get_object (root));
}

/* The buffer holds exactly one whole frame: take it apart and reset. */
static CrunchWireFrame *
take_frame (CrunchWireReader *reader, GError **error)
{
  const gchar *data = (const gchar *)reader->buf->data;
  guint32 h;
  g_autoptr (CrunchWireFrame) frame = g_new0 (CrunchWireFrame, 1);

  gsize len = reader->buf->len;

  memcpy (&h, data, 4);
  h = GUINT32_FROM_BE (h);
  reader->need = PREFIX;
  frame->header = parse_header (data + PREFIX, h, error);
  if (len > (1u << 20)) {
    /* a big payload is handed over without a copy, and its buffer not kept for small frames */
    g_autoptr (GBytes) all = g_byte_array_free_to_bytes (reader->buf);
    frame->payload = g_bytes_new_from_bytes (all, PREFIX + h, len - PREFIX - h);
    reader->buf = g_byte_array_new ();
  } else {
    frame->payload = g_bytes_new (data + PREFIX + h, len - PREFIX - h);
    g_byte_array_set_size (reader->buf, 0);
  }
  if (frame->header == NULL)
    return NULL;
  frame->type = crunch_wire_get_string (frame->header, "type", error);
  if (frame->type == NULL)
    return NULL;
  return g_steal_pointer (&frame);
}

/* One read of what the current frame still lacks. TRUE if the buffer holds the whole frame. */
static gboolean
fill (CrunchWireReader *reader, int fd, gboolean *complete, GError **error)
{
  guint8 chunk[65536];
  gsize want = MIN (sizeof chunk, reader->need - reader->buf->len);
  ssize_t got = read (fd, chunk, want);

  *complete = FALSE;
  if (got < 0)
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
           (g_set_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO, "read: %s",
                         g_strerror (errno)),
            FALSE);
  if (got == 0) {
    if (reader->buf->len == 0)
      g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_EOF, "end of stream");
    else
      g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO,
                           "end of stream inside a frame");
    return FALSE;
  }
  g_byte_array_append (reader->buf, chunk, (guint)got);
  if (reader->buf->len == PREFIX && reader->need == PREFIX && !check_prefix (reader, error))
    return FALSE;
  *complete = reader->buf->len == reader->need && reader->need > PREFIX;
  return TRUE;
}

CrunchWireFrame *
crunch_wire_read (CrunchWireReader *reader, int fd, CrunchWireCheck check, gpointer data,
                  GError **error)
{
  return crunch_wire_read_or_wake (reader, fd, -1, check, data, error);
}

CrunchWireFrame *
crunch_wire_read_or_wake (CrunchWireReader *reader, int fd, int wake_fd, CrunchWireCheck check,
                          gpointer data, GError **error)
{
  for (;;) {
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = wake_fd, .events = POLLIN}};
    gboolean complete = FALSE;
    int ready = poll (p, wake_fd >= 0 ? 2 : 1, CRUNCH_WIRE_STEP_MS);

    if (ready < 0 && errno != EINTR) {
      g_set_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO, "poll: %s", g_strerror (errno));
      return NULL;
    }
    if (ready > 0 && p[0].revents != 0 && !fill (reader, fd, &complete, error))
      return NULL;
    if (complete)
      return take_frame (reader, error);
    if (check != NULL && !check (data)) {
      g_set_error_literal (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED, "stopped");
      return NULL;
    }
  }
}

/* ---- members ---- */

static JsonNode *
get_value (JsonObject *object, const gchar *name, GError **error)
{
  JsonNode *node = json_object_get_member (object, name);

  /* the typed getters check the type: json_node_get_value_type() of an object, array or null
   * is never one they accept */
  if (node == NULL)
    protocol_error (error, "member \"%s\" is missing", name);
  return node;
}

gboolean
crunch_wire_get_int (JsonObject *object, const gchar *name, gint64 *value, GError **error)
{
  JsonNode *node = get_value (object, name, error);

  if (node == NULL)
    return FALSE;
  if (json_node_get_value_type (node) != G_TYPE_INT64)
    return protocol_error (error, "member \"%s\" must be an integer", name);
  *value = json_node_get_int (node);
  return TRUE;
}

gboolean
crunch_wire_get_number (JsonObject *object, const gchar *name, gdouble *value, GError **error)
{
  JsonNode *node = get_value (object, name, error);
  GType type = node != NULL ? json_node_get_value_type (node) : G_TYPE_INVALID;

  if (node == NULL)
    return FALSE;
  if (type != G_TYPE_INT64 && type != G_TYPE_DOUBLE)
    return protocol_error (error, "member \"%s\" must be a number", name);
  *value = type == G_TYPE_INT64 ? (gdouble)json_node_get_int (node) : json_node_get_double (node);
  if (!isfinite (*value))
    return protocol_error (error, "member \"%s\" must be finite", name);
  return TRUE;
}

const gchar *
crunch_wire_get_string (JsonObject *object, const gchar *name, GError **error)
{
  JsonNode *node = get_value (object, name, error);

  if (node == NULL)
    return NULL;
  if (json_node_get_value_type (node) != G_TYPE_STRING) {
    protocol_error (error, "member \"%s\" must be a string", name);
    return NULL;
  }
  /* json-glib decodes a lone surrogate escape (\ud800) into bytes that are not UTF-8 */
  if (!g_utf8_validate (json_node_get_string (node), -1, NULL)) {
    protocol_error (error, "member \"%s\" is not valid UTF-8", name);
    return NULL;
  }
  return json_node_get_string (node);
}

JsonObject *
crunch_wire_header (const gchar *type, gint64 id)
{
  JsonObject *header = json_object_new ();

  json_object_set_string_member (header, "type", type);
  json_object_set_int_member (header, "id", id);
  return header;
}

/* ---- call ---- */

static JsonNode *
encode_arg (GVariant *child, CrunchdArgType type, GByteArray *payload)
{
  JsonNode *node = json_node_alloc ();
  JsonObject *span;
  gsize len = 0;
  gconstpointer data;

  switch (type) {
  case CRUNCHD_ARG_INT:
    return json_node_init_int (node, g_variant_get_int64 (child));
  case CRUNCHD_ARG_FLOAT:
    return json_node_init_double (node, g_variant_get_double (child));
  case CRUNCHD_ARG_STRING:
    return json_node_init_string (node, g_variant_get_string (child, NULL));
  case CRUNCHD_ARG_BYTES:
    data = g_variant_get_fixed_array (child, &len, 1);
    span = json_object_new ();
    json_object_set_int_member (span, "offset", payload->len);
    json_object_set_int_member (span, "length", (gint64)len);
    g_byte_array_append (payload, data, (guint)len);
    return json_node_init_object (node, span);
  }
  g_return_val_if_reached (json_node_init_null (node));
}

/* One call's "args" object; its bytes go to the end of `payload`. */
static JsonObject *
encode_args (const CrunchFunction *fn, GVariant *args, GByteArray *payload)
{
  JsonObject *values = json_object_new ();

  for (guint i = 0; i < fn->decl->n_args; i++) {
    g_autoptr (GVariant) child = g_variant_get_child_value (args, i);
    json_object_set_member (values, fn->decl->args[i].name,
                            encode_arg (child, fn->decl->args[i].type, payload));
  }
  return values;
}

JsonObject *
crunch_wire_encode_call (const CrunchFunction *fn, GVariant *args, gint64 id, gdouble deadline_s,
                         GBytes **payload)
{
  JsonObject *header = crunch_wire_header ("call", id);
  GByteArray *bytes = g_byte_array_new ();

  json_object_set_string_member (header, "function", fn->name);
  json_object_set_double_member (header, "deadline", MAX (deadline_s, 0));
  json_object_set_object_member (header, "args", encode_args (fn, args, bytes));
  *payload = g_byte_array_free_to_bytes (bytes);
  return header;
}

static GVariant *
decode_bytes (JsonObject *values, const gchar *name, GBytes *payload, GError **error)
{
  JsonNode *node = json_object_get_member (values, name);
  JsonObject *span =
      node != NULL && JSON_NODE_HOLDS_OBJECT (node) ? json_node_get_object (node) : NULL;
  gint64 offset, length;
  gsize size = 0;
  const guint8 *data = g_bytes_get_data (payload, &size);

  if (span == NULL) {
    protocol_error (error, "argument \"%s\" must be {\"offset\", \"length\"}", name);
    return NULL;
  }
  if (!crunch_wire_get_int (span, "offset", &offset, error) ||
      !crunch_wire_get_int (span, "length", &length, error))
    return NULL;
  if (offset < 0 || length < 0 || (guint64)offset > size || (guint64)length > size - offset) {
    protocol_error (error,
                    "argument \"%s\": bytes %" G_GINT64_FORMAT "+%" G_GINT64_FORMAT
                    " outside the payload of %zu",
                    name, offset, length, size);
    return NULL;
  }
  return g_variant_new_fixed_array (G_VARIANT_TYPE_BYTE, data + offset, (gsize)length, 1);
}

static GVariant *
decode_arg (JsonObject *values, const CrunchdArg *arg, GBytes *payload, GError **error)
{
  gint64 i;
  gdouble d;
  const gchar *s;

  switch (arg->type) {
  case CRUNCHD_ARG_INT:
    return crunch_wire_get_int (values, arg->name, &i, error) ? g_variant_new_int64 (i) : NULL;
  case CRUNCHD_ARG_FLOAT:
    return crunch_wire_get_number (values, arg->name, &d, error) ? g_variant_new_double (d) : NULL;
  case CRUNCHD_ARG_STRING:
    s = crunch_wire_get_string (values, arg->name, error);
    return s != NULL ? g_variant_new_string (s) : NULL;
  case CRUNCHD_ARG_BYTES:
    return decode_bytes (values, arg->name, payload, error);
  }
  g_return_val_if_reached (NULL);
}

/* The "args" member of `holder` (a call's header, or one call of a batch) as the tuple. */
static GVariant *
decode_args (JsonObject *holder, const CrunchFunction *fn, GBytes *payload, GError **error)
{
  JsonNode *node = json_object_get_member (holder, "args");
  JsonObject *values;
  g_autoptr (GPtrArray) children = g_ptr_array_new_with_free_func ((GDestroyNotify)g_variant_unref);

  if (node == NULL || !JSON_NODE_HOLDS_OBJECT (node)) {
    protocol_error (error, "member \"args\" must be an object");
    return NULL;
  }
  values = json_node_get_object (node);
  if (json_object_get_size (values) != fn->decl->n_args) {
    protocol_error (error, "\"args\" must hold exactly the %u declared arguments",
                    fn->decl->n_args);
    return NULL;
  }
  for (guint i = 0; i < fn->decl->n_args; i++) {
    GVariant *child = decode_arg (values, &fn->decl->args[i], payload, error);
    if (child == NULL)
      return NULL;
    g_ptr_array_add (children, g_variant_ref_sink (child));
  }
  return g_variant_new_tuple ((GVariant **)children->pdata, children->len);
}

/* A call's or a batch's "id" and "function" (which must be registered here). */
static gboolean
decode_target (const CrunchWireFrame *frame, const CrunchFunction **fn, gint64 *id, GError **error)
{
  const gchar *name;

  if (!crunch_wire_get_int (frame->header, "id", id, error) ||
      (name = crunch_wire_get_string (frame->header, "function", error)) == NULL)
    return FALSE;
  if ((*fn = crunch_functions_lookup (name)) == NULL)
    return protocol_error (error, "no function \"%s\" here", name);
  return TRUE;
}

GVariant *
crunch_wire_decode_call (const CrunchWireFrame *frame, const CrunchFunction **fn, gint64 *id,
                         GError **error)
{
  if (!decode_target (frame, fn, id, error))
    return NULL;
  return decode_args (frame->header, *fn, frame->payload, error);
}

/* ---- hello ---- */

static const gchar *const type_names[] = {NULL, "int", "float", "string", "bytes"};

static JsonObject *
encode_arg_decl (const CrunchdArg *arg)
{
  JsonObject *o = json_object_new ();

  json_object_set_string_member (o, "name", arg->name);
  json_object_set_string_member (o, "type", type_names[arg->type]);
  json_object_set_double_member (o, "min", arg->min);
  json_object_set_double_member (o, "max", arg->max);
  if (arg->default_value != NULL)
    json_object_set_string_member (o, "default", arg->default_value);
  else
    json_object_set_null_member (o, "default");
  if (arg->description != NULL)
    json_object_set_string_member (o, "description", arg->description);
  return o;
}

static JsonObject *
encode_function (const CrunchFunction *fn)
{
  const CrunchdFunction *decl = fn->decl;
  JsonObject *o = json_object_new ();
  JsonArray *args = json_array_new ();

  json_object_set_string_member (o, "name", decl->name);
  json_object_set_string_member (o, "description", decl->description ? decl->description : "");
  json_object_set_boolean_member (o, "pure", decl->pure != 0);
  json_object_set_double_member (o, "deadline", decl->deadline);
  json_object_set_string_member (o, "content_type", decl->content_type);
  for (guint i = 0; i < decl->n_args; i++)
    json_array_add_object_element (args, encode_arg_decl (&decl->args[i]));
  json_object_set_array_member (o, "args", args);
  if (fn->max_batch > 1) { /* only then: a hello without batches is as it always was */
    json_object_set_int_member (o, "max_batch", fn->max_batch);
    json_object_set_double_member (o, "max_delay", (gdouble)fn->max_delay_us / G_USEC_PER_SEC);
  }
  return o;
}

JsonObject *
crunch_wire_encode_hello (const gchar *name, const gchar *version,
                          const CrunchFunction *const *functions, guint n)
{
  JsonObject *header = json_object_new ();
  JsonArray *list = json_array_new ();

  json_object_set_string_member (header, "type", "hello");
  json_object_set_int_member (header, "protocol", CRUNCH_WIRE_PROTOCOL);
  json_object_set_string_member (header, "name", name);
  json_object_set_string_member (header, "version", version);
  for (guint i = 0; i < n; i++)
    json_array_add_object_element (list, encode_function (functions[i]));
  json_object_set_array_member (header, "functions", list);
  return header;
}

/* An optional string member: absent or null -> NULL (and TRUE). */
static gboolean
optional_string (JsonObject *o, const gchar *name, gchar **value, GError **error)
{
  JsonNode *node = json_object_get_member (o, name);
  const gchar *s;

  *value = NULL;
  if (node == NULL || JSON_NODE_HOLDS_NULL (node))
    return TRUE;
  if ((s = crunch_wire_get_string (o, name, error)) == NULL)
    return FALSE;
  *value = g_strdup (s);
  return TRUE;
}

static JsonObject *
element_object (JsonArray *array, guint i, const gchar *what, GError **error)
{
  JsonNode *node = json_array_get_element (array, i);

  if (!JSON_NODE_HOLDS_OBJECT (node)) {
    protocol_error (error, "%s %u is not an object", what, i);
    return NULL;
  }
  return json_node_get_object (node);
}

static JsonArray *
array_member (JsonObject *o, const gchar *name, GError **error)
{
  JsonNode *node = json_object_get_member (o, name);

  if (node == NULL || !JSON_NODE_HOLDS_ARRAY (node)) {
    protocol_error (error, "member \"%s\" must be an array", name);
    return NULL;
  }
  return json_node_get_array (node);
}

static gboolean
parse_arg_type (JsonObject *o, CrunchdArgType *type, GError **error)
{
  const gchar *name = crunch_wire_get_string (o, "type", error);

  for (guint t = CRUNCHD_ARG_INT; name != NULL && t <= CRUNCHD_ARG_BYTES; t++) {
    if (g_str_equal (name, type_names[t])) {
      *type = (CrunchdArgType)t;
      return TRUE;
    }
  }
  return name != NULL && protocol_error (error, "unknown argument type \"%s\"", name);
}

static gboolean
parse_arg (JsonObject *o, CrunchdArg *arg, GError **error)
{
  const gchar *name = crunch_wire_get_string (o, "name", error);
  gchar *def = NULL, *description = NULL;

  if (name == NULL || !parse_arg_type (o, &arg->type, error) ||
      !crunch_wire_get_number (o, "min", &arg->min, error) ||
      !crunch_wire_get_number (o, "max", &arg->max, error) ||
      !optional_string (o, "default", &def, error) ||
      !optional_string (o, "description", &description, error)) {
    g_free (def);
    return FALSE;
  }
  arg->name = g_strdup (name);
  arg->default_value = def;
  arg->description = description;
  return TRUE;
}

static gboolean
parse_args (JsonObject *o, CrunchdFunction *decl, GError **error)
{
  JsonArray *list = array_member (o, "args", error);
  CrunchdArg *args;

  if (list == NULL)
    return FALSE;
  decl->n_args = json_array_get_length (list);
  if (decl->n_args > 64)
    return protocol_error (error, "function \"%s\": more than 64 arguments", decl->name);
  args = g_new0 (CrunchdArg, decl->n_args + 1);
  decl->args = args;
  for (guint i = 0; i < decl->n_args; i++) {
    JsonObject *a = element_object (list, i, "argument", error);
    if (a == NULL || !parse_arg (a, &args[i], error)) {
      g_prefix_error (error, "function \"%s\": ", decl->name);
      return FALSE;
    }
  }
  return TRUE;
}

/* Optional "max_batch" (an integer, 1 .. CRUNCH_MAX_BATCH, default 1) and "max_delay" (seconds,
 * default 0; its range is the registry's rule, as for a C plugin). */
static gboolean
parse_batching (JsonObject *o, CrunchdFunction *decl, GError **error)
{
  gint64 max_batch = 1;

  decl->max_batch = 1;
  decl->max_delay = 0;
  if (json_object_has_member (o, "max_batch") &&
      !crunch_wire_get_int (o, "max_batch", &max_batch, error))
    return FALSE;
  if (max_batch < 1 || max_batch > CRUNCH_MAX_BATCH)
    return protocol_error (error, "\"max_batch\" %" G_GINT64_FORMAT " is not in 1 .. %d", max_batch,
                           CRUNCH_MAX_BATCH);
  decl->max_batch = (unsigned)max_batch;
  if (json_object_has_member (o, "max_delay") &&
      !crunch_wire_get_number (o, "max_delay", &decl->max_delay, error))
    return FALSE;
  return TRUE;
}

static gboolean
parse_function (JsonObject *o, CrunchdFunction *decl, GError **error)
{
  const gchar *name = crunch_wire_get_string (o, "name", error);
  JsonNode *pure;
  gchar *description = NULL;
  const gchar *content_type;

  if (name == NULL)
    return FALSE;
  decl->name = g_strdup (name);
  pure = json_object_get_member (o, "pure");
  if (pure == NULL || json_node_get_value_type (pure) != G_TYPE_BOOLEAN)
    return protocol_error (error, "function \"%s\": member \"pure\" must be true or false", name);
  decl->pure = json_node_get_boolean (pure);
  if (!crunch_wire_get_number (o, "deadline", &decl->deadline, error) ||
      (content_type = crunch_wire_get_string (o, "content_type", error)) == NULL ||
      !optional_string (o, "description", &description, error)) {
    g_prefix_error (error, "function \"%s\": ", name);
    return FALSE;
  }
  decl->content_type = g_strdup (content_type);
  decl->description = description ? description : g_strdup ("");
  if (!parse_batching (o, decl, error)) {
    g_prefix_error (error, "function \"%s\": ", name);
    return FALSE;
  }
  return parse_args (o, decl, error);
}

static gboolean
check_hello (JsonObject *h, GError **error)
{
  gint64 protocol;

  if (!crunch_wire_get_int (h, "protocol", &protocol, error))
    return FALSE;
  if (protocol != CRUNCH_WIRE_PROTOCOL)
    return protocol_error (error, "protocol %" G_GINT64_FORMAT " (crunchd speaks %d)", protocol,
                           CRUNCH_WIRE_PROTOCOL);
  return TRUE;
}

CrunchWireHello *
crunch_wire_parse_hello (const CrunchWireFrame *frame, GError **error)
{
  g_autoptr (CrunchWireHello) hello = g_new0 (CrunchWireHello, 1);
  JsonObject *h = frame->header;
  JsonArray *list;
  const gchar *name, *version;

  if (!g_str_equal (frame->type, "hello")) {
    protocol_error (error, "expected hello, got \"%s\"", frame->type);
    return NULL;
  }
  if (!check_hello (h, error) || (name = crunch_wire_get_string (h, "name", error)) == NULL ||
      (version = crunch_wire_get_string (h, "version", error)) == NULL ||
      (list = array_member (h, "functions", error)) == NULL)
    return NULL;
  hello->name = g_strdup (name);
  hello->version = g_strdup (version);
  hello->n_functions = MIN (json_array_get_length (list), 1024);
  if (json_array_get_length (list) > 1024) {
    protocol_error (error, "more than 1024 functions");
    return NULL;
  }
  hello->functions = g_new0 (CrunchdFunction, hello->n_functions + 1);
  for (guint i = 0; i < hello->n_functions; i++) {
    JsonObject *f = element_object (list, i, "function", error);
    if (f == NULL || !parse_function (f, &hello->functions[i], error))
      return NULL;
  }
  return g_steal_pointer (&hello);
}

void
crunch_wire_hello_free (CrunchWireHello *hello)
{
  if (hello == NULL)
    return;
  for (guint i = 0; hello->functions != NULL && i < hello->n_functions; i++) {
    CrunchdFunction *f = &hello->functions[i];
    for (guint j = 0; f->args != NULL && j < f->n_args; j++) {
      g_free ((gchar *)f->args[j].name);
      g_free ((gchar *)f->args[j].default_value);
      g_free ((gchar *)f->args[j].description);
    }
    g_free ((CrunchdArg *)f->args);
    g_free ((gchar *)f->name);
    g_free ((gchar *)f->description);
    g_free ((gchar *)f->content_type);
  }
  g_free (hello->functions);
  g_free (hello->name);
  g_free (hello->version);
  g_free (hello);
}

/* ---- batch ---- */

JsonObject *
crunch_wire_encode_batch (const CrunchFunction *fn, guint n, GVariant *const *args, gint64 id,
                          gdouble deadline_s, GBytes **payload)
{
  JsonObject *header = crunch_wire_header ("batch", id);
  JsonArray *calls = json_array_new ();
  GByteArray *bytes = g_byte_array_new ();

  json_object_set_string_member (header, "function", fn->name);
  json_object_set_double_member (header, "deadline", MAX (deadline_s, 0));
  for (guint i = 0; i < n; i++) {
    JsonObject *call = json_object_new ();
    json_object_set_object_member (call, "args", encode_args (fn, args[i], bytes));
    json_array_add_object_element (calls, call);
  }
  json_object_set_array_member (header, "calls", calls);
  *payload = g_byte_array_free_to_bytes (bytes);
  return header;
}

GPtrArray *
crunch_wire_decode_batch (const CrunchWireFrame *frame, const CrunchFunction **fn, gint64 *id,
                          GError **error)
{
  g_autoptr (GPtrArray) tuples = g_ptr_array_new_with_free_func ((GDestroyNotify)g_variant_unref);
  JsonArray *calls;
  guint n;

  if (!decode_target (frame, fn, id, error) ||
      (calls = array_member (frame->header, "calls", error)) == NULL)
    return NULL;
  n = json_array_get_length (calls);
  if ((*fn)->max_batch <= 1) {
    protocol_error (error, "a batch of %s, which takes no batches", (*fn)->name);
    return NULL;
  }
  if (n < 1 || n > (*fn)->max_batch) {
    protocol_error (error, "a batch of %u calls (%s takes 1 to %u)", n, (*fn)->name,
                    (*fn)->max_batch);
    return NULL;
  }
  for (guint i = 0; i < n; i++) {
    JsonObject *call = element_object (calls, i, "call", error);
    GVariant *tuple = call != NULL ? decode_args (call, *fn, frame->payload, error) : NULL;
    if (tuple == NULL) {
      g_prefix_error (error, "call %u: ", i);
      return NULL;
    }
    g_ptr_array_add (tuples, g_variant_ref_sink (tuple));
  }
  return g_steal_pointer (&tuples);
}

/* An error's message without the function's name in front ("bad n", not "f: bad n"): the
 * receiver names the function itself. */
static const gchar *
own_message (const CrunchFunction *fn, const GError *error)
{
  gsize len = strlen (fn->name);

  if (error == NULL)
    return "failed";
  if (g_str_has_prefix (error->message, fn->name) && g_str_has_prefix (error->message + len, ": "))
    return error->message + len + 2;
  return error->message;
}

JsonObject *
crunch_wire_encode_batch_result (const CrunchFunction *fn, gint64 id, guint n,
                                 GBytes *const *results, GError *const *errors, GBytes **payload)
{
  JsonObject *header = crunch_wire_header ("batch-result", id);
  JsonArray *list = json_array_new ();
  GByteArray *bytes = g_byte_array_new ();

  for (guint i = 0; i < n; i++) {
    JsonObject *o = json_object_new ();
    gsize len = 0;
    gconstpointer data;
    if (results[i] != NULL) {
      data = g_bytes_get_data (results[i], &len);
      json_object_set_string_member (o, "status", "ok");
      json_object_set_int_member (o, "offset", bytes->len);
      json_object_set_int_member (o, "length", (gint64)len);
      g_byte_array_append (bytes, data, (guint)len);
    } else if (g_error_matches (errors[i], CRUNCH_FUNCTION_ERROR,
                                CRUNCH_FUNCTION_ERROR_CANCELLED)) {
      json_object_set_string_member (o, "status", "cancelled");
    } else {
      json_object_set_string_member (o, "status", "error");
      json_object_set_string_member (o, "message", own_message (fn, errors[i]));
      if (g_error_matches (errors[i], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY))
        json_object_set_string_member (o, "kind", "memory");
    }
    json_array_add_object_element (list, o);
  }
  json_object_set_array_member (header, "results", list);
  *payload = g_byte_array_free_to_bytes (bytes);
  return header;
}

/* One entry of a batch-result: results[i] or errors[i] set, or FALSE with a protocol error. */
static gboolean
parse_outcome (JsonObject *o, const CrunchFunction *fn, GBytes *payload, GBytes **result,
               GError **outcome, GError **error)
{
  const gchar *status = crunch_wire_get_string (o, "status", error), *message, *kind = "";
  gint64 offset, length;
  gsize size = g_bytes_get_size (payload);

  if (status == NULL)
    return FALSE;
  if (g_str_equal (status, "ok")) {
    if (!crunch_wire_get_int (o, "offset", &offset, error) ||
        !crunch_wire_get_int (o, "length", &length, error))
      return FALSE;
    if (offset < 0 || length < 0 || (guint64)offset > size || (guint64)length > size - offset)
      return protocol_error (
          error, "bytes %" G_GINT64_FORMAT "+%" G_GINT64_FORMAT " outside the payload of %zu",
          offset, length, size);
    *result = g_bytes_new_from_bytes (payload, (gsize)offset, (gsize)length);
  } else if (g_str_equal (status, "cancelled")) {
    g_set_error (outcome, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "%s: cancelled",
                 fn->name);
  } else if (g_str_equal (status, "error")) {
    if ((message = crunch_wire_get_string (o, "message", error)) == NULL ||
        (json_object_has_member (o, "kind") &&
         (kind = crunch_wire_get_string (o, "kind", error)) == NULL))
      return FALSE;
    if (g_str_equal (kind, "memory"))
      g_set_error (outcome, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY,
                   "%s: out of memory: %s", fn->name, message);
    else
      g_set_error (outcome, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED, "%s: %s", fn->name,
                   message);
  } else {
    return protocol_error (error, "unknown status \"%s\"", status);
  }
  return TRUE;
}

gboolean
crunch_wire_parse_batch_result (const CrunchWireFrame *frame, const CrunchFunction *fn, guint n,
                                GBytes **results, GError **errors, GError **error)
{
  JsonArray *list = array_member (frame->header, "results", error);
  guint got = list != NULL ? json_array_get_length (list) : 0;
  guint i;

  if (list == NULL)
    return FALSE;
  if (got != n)
    return protocol_error (error, "%u results for a batch of %u calls", got, n);
  for (i = 0; i < n; i++) {
    JsonObject *o = element_object (list, i, "result", error);
    if (o == NULL || !parse_outcome (o, fn, frame->payload, &results[i], &errors[i], error)) {
      g_prefix_error (error, "result %u: ", i);
      break;
    }
  }
  if (i == n)
    return TRUE;
  for (guint j = 0; j < i; j++) { /* all or nothing */
    g_clear_pointer (&results[j], g_bytes_unref);
    g_clear_error (&errors[j]);
  }
  return FALSE;
}

/* ---- progress ---- */

gboolean
crunch_wire_parse_progress (const CrunchWireFrame *frame, guint n_items, gdouble *fraction,
                            const gchar **message, gint *item, GError **error)
{
  JsonObject *h = frame->header;
  gint64 i;

  *message = NULL;
  *item = -1;
  if (!crunch_wire_get_number (h, "fraction", fraction, error))
    return FALSE;
  if (!(*fraction >= 0.0 && *fraction <= 1.0))
    return protocol_error (error, "progress \"fraction\" %g is not in [0, 1]", *fraction);
  if (json_object_has_member (h, "message") && !json_object_get_null_member (h, "message") &&
      (*message = crunch_wire_get_string (h, "message", error)) == NULL)
    return FALSE;
  if (!json_object_has_member (h, "item"))
    return TRUE;
  if (n_items == 0)
    return protocol_error (error, "progress with an \"item\" for a call (not a batch)");
  if (!crunch_wire_get_int (h, "item", &i, error))
    return FALSE;
  if (i < 0 || i >= n_items)
    return protocol_error (error,
                           "progress \"item\" %" G_GINT64_FORMAT " is not in 0 .. %u of the batch",
                           i, n_items - 1);
  *item = (gint)i;
  return TRUE;
}
