/* test-wire.c - the worker protocol (src/exec/wire.c): frames over a socketpair, calls and hello
 * encoded and decoded, and hostile frames (lengths out of range, truncated, not a JSON object,
 * wrong member types, bytes outside the payload). */
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "functions.h"
#include "procpool.h"
#include "wire.h"

static CrunchdStatus
echo_run (const CrunchdCall *call, CrunchdResult *result)
{
  return CRUNCHD_OK;
}

static const CrunchdArg all_args[] = {
    {"n", CRUNCHD_ARG_INT, -10, 10, "3", NULL},
    {"x", CRUNCHD_ARG_FLOAT, -1, 1, NULL, "a float"},
    {"s", CRUNCHD_ARG_STRING, 0, 8, "ab", NULL},
    {"b", CRUNCHD_ARG_BYTES, 0, 8, NULL, NULL},
};
static const CrunchdFunction all_decl = {"all",        "every type", all_args, 4, 1, 2.5,
                                         "text/plain", echo_run,     NULL,     0, 0, NULL};

static const CrunchFunction *
setup (void)
{
  crunch_functions_reset ();
  g_assert_true (crunch_functions_add (&all_decl, "test", NULL));
  return crunch_functions_lookup ("all");
}

typedef struct {
  int fds[2];
  CrunchWireReader *reader;
} Pair;

static void
pair_open (Pair *p)
{
  g_assert_cmpint (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->fds), ==, 0);
  p->reader = crunch_wire_reader_new (1024);
}

static void
pair_close (Pair *p)
{
  if (p->fds[0] >= 0)
    close (p->fds[0]);
  close (p->fds[1]);
  crunch_wire_reader_free (p->reader);
}

static gboolean
give_up (gpointer data)
{
  gint *steps = data;

  return ++*steps < 3;
}

/* Raw bytes in, the reader's verdict out (after closing the writing end). */
static CrunchWireFrame *
read_raw (const void *bytes, gsize len, gboolean close_after, GError **error)
{
  Pair p;
  CrunchWireFrame *frame;
  gint steps = 0;

  pair_open (&p);
  g_assert_cmpint (write (p.fds[0], bytes, len), ==, (gssize)len);
  if (close_after) {
    close (p.fds[0]);
    p.fds[0] = -1;
  }
  frame = crunch_wire_read (p.reader, p.fds[1], give_up, &steps, error);
  pair_close (&p);
  return frame;
}

static GByteArray *
raw_frame (guint32 h, guint32 p, const gchar *header, gsize payload_len)
{
  GByteArray *out = g_byte_array_new ();
  guint32 prefix[2] = {GUINT32_TO_BE (h), GUINT32_TO_BE (p)};

  g_byte_array_append (out, (const guint8 *)prefix, 8);
  g_byte_array_append (out, (const guint8 *)header, (guint)strlen (header));
  for (gsize i = 0; i < payload_len; i++)
    g_byte_array_append (out, (const guint8 *)"x", 1);
  return out;
}

static void
expect_protocol_error (guint32 h, guint32 p, const gchar *header, const gchar *message_part)
{
  g_autoptr (GByteArray) raw = raw_frame (h, p, header, p);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchWireFrame) frame = read_raw (raw->data, raw->len, FALSE, &error);

  g_assert_null (frame);
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
  g_assert_true (g_utf8_validate (error->message, -1, NULL));
  if (strstr (error->message, message_part) == NULL)
    g_error ("'%s' does not say '%s'", error->message, message_part);
}

static void
test_round_trip (void)
{
  Pair p;
  g_autoptr (JsonObject) header = crunch_wire_header ("result", 17);
  g_autoptr (GBytes) payload = g_bytes_new_static ("\0\1\2binary", 9);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchWireFrame) frame = NULL;
  g_autoptr (CrunchWireFrame) empty = NULL;
  gint64 id = 0;

  pair_open (&p);
  g_assert_true (crunch_wire_write (p.fds[0], header, payload, &error));
  g_assert_true (crunch_wire_write (p.fds[0], header, NULL, &error));
  frame = crunch_wire_read (p.reader, p.fds[1], NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpstr (frame->type, ==, "result");
  g_assert_true (crunch_wire_get_int (frame->header, "id", &id, NULL));
  g_assert_cmpint (id, ==, 17);
  g_assert_true (g_bytes_equal (frame->payload, payload));
  empty = crunch_wire_read (p.reader, p.fds[1], NULL, NULL, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (g_bytes_get_size (empty->payload), ==, 0);
  close (p.fds[0]);
  p.fds[0] = -1;
  g_assert_null (crunch_wire_read (p.reader, p.fds[1], NULL, NULL, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_EOF);
  pair_close (&p);
}

typedef struct {
  int fd;
  GBytes *payload;
} Writer;

static gpointer
write_thread (gpointer data)
{
  Writer *w = data;
  g_autoptr (JsonObject) header = crunch_wire_header ("result", 2);

  g_assert_true (crunch_wire_write (w->fd, header, w->payload, NULL));
  g_assert_true (crunch_wire_write (w->fd, header, NULL, NULL));
  return NULL;
}

/* A payload bigger than the socket buffer, written while it is read; then a small frame. */
static void
test_big_payload (void)
{
  Pair p;
  guint8 *bytes = g_malloc (3 << 20);
  Writer w;
  GThread *writer;
  g_autoptr (CrunchWireFrame) big = NULL;
  g_autoptr (CrunchWireFrame) small = NULL;

  for (gsize i = 0; i < (3 << 20); i++)
    bytes[i] = (guint8)(i * 7);
  pair_open (&p);
  crunch_wire_reader_free (p.reader);
  p.reader = crunch_wire_reader_new (4 << 20);
  w = (Writer){p.fds[0], g_bytes_new_take (bytes, 3 << 20)};
  writer = g_thread_new ("writer", write_thread, &w);
  big = crunch_wire_read (p.reader, p.fds[1], NULL, NULL, NULL);
  small = crunch_wire_read (p.reader, p.fds[1], NULL, NULL, NULL);
  g_thread_join (writer);
  g_assert_true (g_bytes_equal (big->payload, w.payload));
  g_assert_cmpuint (g_bytes_get_size (small->payload), ==, 0);
  g_bytes_unref (w.payload);
  pair_close (&p);
}

static gboolean
never (gpointer data)
{
  return FALSE;
}

/* A byte in the wake pipe gets the reader to its check at once, not after a poll step. */
static void
test_wake (void)
{
  Pair p;
  int wake[2];
  g_autoptr (GError) error = NULL;
  gint64 start;

  pair_open (&p);
  g_assert_cmpint (pipe (wake), ==, 0);
  g_assert_cmpint (write (wake[1], "", 1), ==, 1);
  start = g_get_monotonic_time ();
  g_assert_null (crunch_wire_read_or_wake (p.reader, p.fds[1], wake[0], never, NULL, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED);
  /* how soon: a step (10 ms) would mean the poll timed out instead; not asserted on loaded hosts */
  g_test_message ("woken after %" G_GINT64_FORMAT " us", g_get_monotonic_time () - start);
  close (wake[0]);
  close (wake[1]);
  pair_close (&p);
}

/* A peer that never reads: the write gives up when the check says so. */
static void
test_write_stalled (void)
{
  Pair p;
  g_autoptr (JsonObject) header = crunch_wire_header ("call", 1);
  g_autoptr (GBytes) big = g_bytes_new_take (g_malloc0 (8 << 20), 8 << 20);
  g_autoptr (GError) error = NULL;
  gint steps = 0;

  pair_open (&p);
  g_assert_cmpint (fcntl (p.fds[0], F_SETFL, O_NONBLOCK), ==, 0);
  g_assert_false (crunch_wire_write_checked (p.fds[0], header, big, give_up, &steps, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED);
  g_assert_cmpint (steps, ==, 3);
  pair_close (&p);
}

static void
test_hostile_frames (void)
{
  expect_protocol_error (0, 0, "", "header length 0");
  expect_protocol_error ((1u << 20) + 1, 0, "{}", "header length 1048577");
  expect_protocol_error (2, 1025, "{}", "payload length 1025 over the limit of 1024");
  expect_protocol_error (4, 0, "[1,]", "not strict JSON: an unexpected character");
  expect_protocol_error (3, 0, "[1]", "not a JSON object");
  expect_protocol_error (2, 0, "42", "not a JSON object");
  expect_protocol_error (2, 0, "{}", "\"type\" is missing");
  expect_protocol_error (10, 0, "{\"type\":1}", "\"type\" must be a string");
  expect_protocol_error (14, 0, "{\"type\":\"\xff\"}  ", "not UTF-8");
  /* json-glib decodes a lone surrogate escape into bytes that are not UTF-8 */
  expect_protocol_error (18, 0, "{\"type\":\"\\ud800x\"}",
                         "not strict JSON: a lone surrogate in a \\u escape");
  /* nesting bounded before json-glib recurses */
  g_autofree gchar *deep = g_strnfill (1000, '[');
  expect_protocol_error (1000, 0, deep, "not strict JSON: arrays or objects nested too deep");
}

static void
test_truncated (void)
{
  g_autoptr (GByteArray) raw = raw_frame (16, 4, "{\"type\":\"x\"}", 0);
  g_autoptr (GError) error = NULL;
  g_autoptr (GError) stalled = NULL;
  g_autoptr (CrunchWireFrame) frame = read_raw (raw->data, raw->len, TRUE, &error);

  g_assert_null (frame);
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_IO);
  g_assert_nonnull (strstr (error->message, "inside a frame"));
  /* a peer that stalls mid-frame: the check stops the wait */
  g_assert_null (read_raw (raw->data, raw->len, FALSE, &stalled));
  g_assert_error (stalled, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_STOPPED);
}

static CrunchWireFrame *
frame_of (JsonObject *header, GBytes *payload)
{
  CrunchWireFrame *frame = g_new0 (CrunchWireFrame, 1);

  frame->header = json_object_ref (header);
  frame->type = json_object_get_string_member (header, "type");
  frame->payload = payload ? g_bytes_ref (payload) : g_bytes_new (NULL, 0);
  return frame;
}

static void
test_call (void)
{
  const CrunchFunction *fn = setup (), *got = NULL;
  GVariant *items[] = {g_variant_new_int64 (-7), g_variant_new_double (0.5),
                       g_variant_new_string ("héllo"),
                       g_variant_new_fixed_array (G_VARIANT_TYPE_BYTE, "\0\1\2", 3, 1)};
  g_autoptr (GVariant) args = g_variant_ref_sink (g_variant_new_tuple (items, 4));
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) header = crunch_wire_encode_call (fn, args, 9, 1.5, &payload);
  g_autoptr (CrunchWireFrame) frame = frame_of (header, payload);
  g_autoptr (GError) error = NULL;
  g_autoptr (GVariant) back = NULL;
  gint64 id = 0;

  g_assert_cmpuint (g_bytes_get_size (payload), ==, 3);
  back = crunch_wire_decode_call (frame, &got, &id, &error);
  g_assert_no_error (error);
  g_assert_true (got == fn);
  g_assert_cmpint (id, ==, 9);
  g_assert_true (g_variant_equal (back, args));
  crunch_functions_reset ();
}

static void
expect_bad_call (const gchar *json, gsize payload_len, const gchar *message_part)
{
  const CrunchFunction *fn = NULL;
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GBytes) payload = g_bytes_new_take (g_malloc0 (payload_len), payload_len);
  g_autoptr (CrunchWireFrame) frame = NULL;
  g_autoptr (GError) error = NULL;
  gint64 id;

  g_assert_true (json_parser_load_from_data (parser, json, -1, NULL));
  frame = frame_of (json_node_get_object (json_parser_get_root (parser)), payload);
  g_assert_null (crunch_wire_decode_call (frame, &fn, &id, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
  if (strstr (error->message, message_part) == NULL)
    g_error ("'%s' does not say '%s'", error->message, message_part);
}

#define ARGS(n, x, s, b) "{\"n\":" n ",\"x\":" x ",\"s\":" s ",\"b\":" b "}"
#define CALL(args) "{\"type\":\"call\",\"id\":1,\"function\":\"all\",\"args\":" args "}"

static void
test_call_hostile (void)
{
  setup ();
  expect_bad_call ("{\"type\":\"call\",\"id\":\"1\"}", 0, "\"id\" must be an integer");
  expect_bad_call ("{\"type\":\"call\",\"id\":1,\"function\":\"nope\"}", 0, "no function");
  expect_bad_call ("{\"type\":\"call\",\"id\":1,\"function\":\"all\",\"args\":[]}", 0,
                   "\"args\" must be an object");
  expect_bad_call (CALL ("{\"n\":1}"), 0, "exactly the 4 declared");
  expect_bad_call (CALL (ARGS ("1.5", "0", "\"a\"", "{\"offset\":0,\"length\":0}")), 0,
                   "\"n\" must be an integer");
  expect_bad_call (CALL (ARGS ("1", "\"0\"", "\"a\"", "{\"offset\":0,\"length\":0}")), 0,
                   "\"x\" must be a number");
  expect_bad_call (CALL (ARGS ("1", "0", "null", "{\"offset\":0,\"length\":0}")), 0,
                   "\"s\" must be a string");
  expect_bad_call (CALL (ARGS ("1", "0", "\"a\"", "\"AAA=\"")), 0, "{\"offset\", \"length\"}");
  expect_bad_call (CALL (ARGS ("1", "0", "\"a\"", "{\"offset\":2,\"length\":3}")), 4,
                   "outside the payload of 4");
  expect_bad_call (CALL (ARGS ("1", "0", "\"a\"", "{\"offset\":-1,\"length\":1}")), 4,
                   "outside the payload");
  expect_bad_call (CALL (ARGS ("1", "0", "\"a\"", "{\"offset\":0,\"length\":9223372036854775807}")),
                   4, "outside the payload");
  crunch_functions_reset ();
}

static CrunchWireHello *
parse_hello_text (const gchar *json, GError **error)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (CrunchWireFrame) frame = NULL;

  g_assert_true (json_parser_load_from_data (parser, json, -1, NULL));
  frame = frame_of (json_node_get_object (json_parser_get_root (parser)), NULL);
  return crunch_wire_parse_hello (frame, error);
}

static GBytes *
hook_run (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel, gpointer data,
          GError **error)
{
  return g_bytes_new_static (data, strlen (data));
}

static void
test_hello_round_trip (void)
{
  const CrunchFunction *fn = setup ();
  g_autoptr (JsonObject) header = crunch_wire_encode_hello ("t", "1.0", &fn, 1);
  g_autoptr (CrunchWireFrame) frame = frame_of (header, NULL);
  g_autoptr (GError) error = NULL;
  CrunchWireHello *hello = crunch_wire_parse_hello (frame, &error);
  g_autoptr (GVariant) args = NULL;
  g_autoptr (GBytes) out = NULL;
  const CrunchFunction *again;

  g_assert_no_error (error);
  g_assert_cmpstr (hello->name, ==, "t");
  g_assert_cmpuint (hello->n_functions, ==, 1);
  g_assert_cmpstr (hello->functions[0].args[1].description, ==, "a float");
  g_assert_null (hello->functions[0].args[3].default_value);
  crunch_functions_reset ();
  /* what crunchd does with a program's hello: register with a hook, then run through it */
  g_assert_true (
      crunch_functions_add_hooked (&hello->functions[0], "prog", hook_run, "hi", &error));
  again = crunch_functions_lookup ("all");
  g_assert_true (again->pure);
  g_assert_cmpfloat (again->timeout_us, ==, 2500000);
  args = g_variant_ref_sink (g_variant_new_parsed ("(@x 1, 0.0, 'a', @ay [])"));
  out = crunch_function_run (again, args, &(CrunchCancel){0}, &error);
  g_assert_cmpmem (g_bytes_get_data (out, NULL), g_bytes_get_size (out), "hi", 2);
  crunch_functions_reset ();
  crunch_wire_hello_free (hello);
}

#define HELLO(fns)                                                                                 \
  "{\"type\":\"hello\",\"protocol\":1,\"name\":\"p\",\"version\":\"1\","                           \
  "\"functions\":" fns "}"
#define FN(extra)                                                                                  \
  "[{\"name\":\"f\",\"pure\":true,\"deadline\":1,\"content_type\":\"text/plain\","                 \
  "\"args\":[" extra "]}]"

static void
test_hello_hostile (void)
{
  static const struct {
    const gchar *json, *message;
  } cases[] = {
      {"{\"type\":\"result\",\"id\":1}", "expected hello"},
      {"{\"type\":\"hello\",\"protocol\":2}", "protocol 2"},
      {"{\"type\":\"hello\",\"protocol\":1,\"name\":\"p\",\"version\":\"1\"}",
       "\"functions\" must be an array"},
      {HELLO ("[1]"), "function 0 is not an object"},
      {HELLO ("[{\"name\":\"f\",\"pure\":1}]"), "\"pure\" must be true or false"},
      {HELLO (FN ("{\"name\":\"n\",\"type\":\"complex\",\"min\":0,\"max\":1}")),
       "unknown argument type \"complex\""},
      {HELLO (FN ("{\"name\":\"n\",\"type\":\"int\",\"min\":\"0\",\"max\":1}")),
       "\"min\" must be a number"},
      {HELLO (FN ("{\"name\":\"n\",\"type\":\"int\",\"min\":0,\"max\":1,\"default\":5}")),
       "\"default\" must be a string"},
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (GError) error = NULL;
    g_assert_null (parse_hello_text (cases[i].json, &error));
    g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
    if (strstr (error->message, cases[i].message) == NULL)
      g_error ("case %u: '%s' does not say '%s'", i, error->message, cases[i].message);
  }
}

/* Rules the registry enforces for plugins apply to a program's declaration too. */
static void
test_hello_rules (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchWireHello) hello = parse_hello_text (
      HELLO (FN ("{\"name\":\"n\",\"type\":\"int\",\"min\":5,\"max\":1}")), &error);

  g_assert_no_error (error);
  crunch_functions_reset ();
  g_assert_false (crunch_functions_add_hooked (&hello->functions[0], "prog", hook_run, "", &error));
  g_assert_error (error, CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_REGISTRATION);
  g_assert_cmpstr (
      error->message, ==,
      "plugin 'prog': function 'f': argument 'n': bounds must be finite with min <= max");
}

/* ---- batches ---- */

static void
sum_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
           CrunchdStatus *statuses)
{
}

static const CrunchdFunction batch_decl = {
    "all",     "every type, in batches", all_args, 4, 1, 2.5, "text/plain", NULL, NULL, 4, 0.005,
    sum_batch,
};

static const CrunchFunction *
setup_batch (void)
{
  crunch_functions_reset ();
  g_assert_true (crunch_functions_add (&batch_decl, "test", NULL));
  return crunch_functions_lookup ("all");
}

static CrunchWireFrame *
frame_of_text (const gchar *json, gsize payload_len)
{
  g_autoptr (JsonParser) parser = json_parser_new ();
  g_autoptr (GBytes) payload = g_bytes_new_take (g_malloc0 (payload_len), payload_len);

  g_assert_true (json_parser_load_from_data (parser, json, -1, NULL));
  return frame_of (json_node_get_object (json_parser_get_root (parser)), payload);
}

static void
test_batch (void)
{
  const CrunchFunction *fn = setup_batch (), *got = NULL;
  GVariant *args[3];
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) header = NULL;
  g_autoptr (CrunchWireFrame) frame = NULL;
  g_autoptr (GError) error = NULL;
  g_autoptr (GPtrArray) back = NULL;
  gint64 id = 0;

  args[0] = g_variant_ref_sink (g_variant_new_parsed ("(@x 1, 0.5, 'a', @ay [120, 121])"));
  args[1] = g_variant_ref_sink (g_variant_new_parsed ("(@x -2, 0.0, 'héllo', @ay [])"));
  args[2] = g_variant_ref_sink (g_variant_new_parsed ("(@x 3, -1.0, '', @ay [122, 122, 122])"));
  header = crunch_wire_encode_batch (fn, 3, args, 17, 9.5, &payload);
  g_assert_cmpstr (json_object_get_string_member (header, "type"), ==, "batch");
  g_assert_cmpuint (g_bytes_get_size (payload), ==, 5); /* xy + zzz, one payload */
  frame = frame_of (header, payload);
  back = crunch_wire_decode_batch (frame, &got, &id, &error);
  g_assert_no_error (error);
  g_assert_true (got == fn);
  g_assert_cmpint (id, ==, 17);
  g_assert_cmpuint (back->len, ==, 3);
  for (guint i = 0; i < 3; i++) {
    g_assert_true (g_variant_equal (back->pdata[i], args[i]));
    g_variant_unref (args[i]);
  }
  crunch_functions_reset ();
}

#define BATCH(calls)                                                                               \
  "{\"type\":\"batch\",\"id\":1,\"function\":\"all\",\"deadline\":1,\"calls\":" calls "}"
#define GOOD ARGS ("1", "0", "\"a\"", "{\"offset\":0,\"length\":1}")

static void
expect_bad_batch (const gchar *json, gsize payload_len, const gchar *message_part)
{
  const CrunchFunction *fn = NULL;
  g_autoptr (CrunchWireFrame) frame = frame_of_text (json, payload_len);
  g_autoptr (GError) error = NULL;
  gint64 id;

  g_assert_null (crunch_wire_decode_batch (frame, &fn, &id, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
  if (strstr (error->message, message_part) == NULL)
    g_error ("'%s' does not say '%s'", error->message, message_part);
}

static void
test_batch_hostile (void)
{
  setup_batch ();
  expect_bad_batch ("{\"type\":\"batch\",\"id\":1,\"function\":\"nope\",\"calls\":[]}", 0,
                    "no function \"nope\"");
  expect_bad_batch ("{\"type\":\"batch\",\"id\":1,\"function\":\"all\"}", 0,
                    "\"calls\" must be an array");
  expect_bad_batch (BATCH ("{}"), 0, "\"calls\" must be an array");
  expect_bad_batch (BATCH ("[]"), 0, "a batch of 0 calls (all takes 1 to 4)");
  expect_bad_batch (BATCH ("[{\"args\":" GOOD "},{\"args\":" GOOD "},{\"args\":" GOOD
                           "},{\"args\":" GOOD "},{\"args\":" GOOD "}]"),
                    1, "a batch of 5 calls (all takes 1 to 4)");
  expect_bad_batch (BATCH ("[{\"args\":" GOOD "},7]"), 1, "call 1: call 1 is not an object");
  expect_bad_batch (BATCH ("[{\"arg\":" GOOD "}]"), 1, "call 0: member \"args\" must be an object");
  expect_bad_batch (BATCH ("[{\"args\":{\"n\":1}}]"), 1, "call 0: \"args\" must hold exactly");
  expect_bad_batch (BATCH ("[{\"args\":" GOOD "},{\"args\":" ARGS (
                        "1", "0", "\"a\"", "{\"offset\":1,\"length\":1}") "}]"),
                    1, "call 1: argument \"b\": bytes 1+1 outside the payload of 1");
  /* a function that takes no batches takes none */
  setup ();
  expect_bad_batch (BATCH ("[{\"args\":" GOOD "}]"), 1, "a batch of all, which takes no batches");
  crunch_functions_reset ();
}

static void
test_batch_result (void)
{
  const CrunchFunction *fn = setup_batch ();
  g_autoptr (GBytes) one = g_bytes_new_static ("one", 3);
  g_autoptr (GBytes) none = g_bytes_new_static ("", 0);
  GBytes *results[5] = {one, NULL, NULL, NULL, none};
  GError *errors[5] = {NULL};
  GBytes *back[5] = {NULL};
  GError *back_errors[5] = {NULL};
  g_autoptr (GBytes) payload = NULL;
  g_autoptr (JsonObject) header = NULL;
  g_autoptr (CrunchWireFrame) frame = NULL;
  g_autoptr (GError) error = NULL;

  g_set_error (&errors[1], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED, "all: bad n");
  g_set_error (&errors[2], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED, "cancelled");
  g_set_error (&errors[3], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY, "big");
  header = crunch_wire_encode_batch_result (fn, 17, 5, results, errors, &payload);
  frame = frame_of (header, payload);
  g_assert_cmpstr (frame->type, ==, "batch-result");
  /* a batch of another size is answered wrongly */
  g_assert_false (crunch_wire_parse_batch_result (frame, fn, 4, back, back_errors, &error));
  g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
  g_assert_cmpstr (error->message, ==, "5 results for a batch of 4 calls");
  g_clear_error (&error);
  g_assert_true (crunch_wire_parse_batch_result (frame, fn, 5, back, back_errors, &error));
  g_assert_no_error (error);
  g_assert_true (g_bytes_equal (back[0], one));
  g_assert_true (g_bytes_equal (back[4], none));
  g_assert_error (back_errors[1], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_FAILED);
  g_assert_cmpstr (back_errors[1]->message, ==, "all: bad n"); /* named once */
  g_assert_error (back_errors[2], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_CANCELLED);
  g_assert_error (back_errors[3], CRUNCH_FUNCTION_ERROR, CRUNCH_FUNCTION_ERROR_OUT_OF_MEMORY);
  g_assert_cmpstr (back_errors[3]->message, ==, "all: out of memory: big");
  for (guint i = 0; i < 5; i++) {
    g_assert_true ((back[i] == NULL) != (back_errors[i] == NULL));
    g_clear_pointer (&back[i], g_bytes_unref);
    g_clear_error (&back_errors[i]);
    g_clear_error (&errors[i]);
  }
  crunch_functions_reset ();
}

#define RESULTS(list) "{\"type\":\"batch-result\",\"id\":1,\"results\":" list "}"
#define OK(o, l) "{\"status\":\"ok\",\"offset\":" #o ",\"length\":" #l "}"

static void
test_batch_result_hostile (void)
{
  static const struct {
    const gchar *json;
    guint n;
    const gchar *message;
  } cases[] = {
      {"{\"type\":\"batch-result\",\"id\":1}", 1, "\"results\" must be an array"},
      {RESULTS ("[" OK (0, 1) "]"), 2, "1 results for a batch of 2 calls"},
      {RESULTS ("[" OK (0, 1) "," OK (0, 1) "," OK (0, 1) "]"), 2, "3 results for a batch of 2"},
      {RESULTS ("[" OK (0, 4) "," OK (3, 2) "]"), 2,
       "result 1: bytes 3+2 outside the payload of 4"},
      {RESULTS ("[" OK (-1, 1) "]"), 1, "result 0: bytes -1+1 outside"},
      {RESULTS ("[" OK (0, 9223372036854775807) "]"), 1, "outside the payload"},
      {RESULTS ("[{\"status\":\"ok\",\"offset\":0}]"), 1, "result 0: member \"length\""},
      {RESULTS ("[" OK (0, 1) ",\"ok\"]"), 2, "result 1: result 1 is not an object"},
      {RESULTS ("[{\"status\":\"fine\"}]"), 1, "result 0: unknown status \"fine\""},
      {RESULTS ("[{\"status\":7}]"), 1, "result 0: member \"status\" must be a string"},
      {RESULTS ("[{\"status\":\"error\"}]"), 1, "result 0: member \"message\""},
      {RESULTS ("[{\"status\":\"error\",\"message\":\"x\",\"kind\":1}]"), 1,
       "member \"kind\" must be a string"},
  };
  const CrunchFunction *fn = setup_batch ();

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (CrunchWireFrame) frame = frame_of_text (cases[i].json, 4);
    g_autoptr (GError) error = NULL;
    GBytes *results[3] = {NULL};
    GError *errors[3] = {NULL};
    g_assert_false (
        crunch_wire_parse_batch_result (frame, fn, cases[i].n, results, errors, &error));
    g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
    if (strstr (error->message, cases[i].message) == NULL)
      g_error ("case %u: '%s' does not say '%s'", i, error->message, cases[i].message);
    for (guint j = 0; j < 3; j++) /* all or nothing */
      g_assert_true (results[j] == NULL && errors[j] == NULL);
  }
  crunch_functions_reset ();
}

static void
test_progress (void)
{
  static const struct {
    const gchar *json;
    guint n_items;
    const gchar *message; /* NULL: accepted */
    gint item;
  } cases[] = {
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5}", 0, NULL, -1},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5}", 3, NULL, -1},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":1,\"item\":2,\"message\":\"m\"}", 3, NULL, 2},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5,\"item\":0}", 0, "for a call", 0},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5,\"item\":3}", 3,
       "\"item\" 3 is not in 0 .. 2", 0},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5,\"item\":-1}", 3, "\"item\" -1", 0},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5,\"item\":1.5}", 3,
       "\"item\" must be an integer", 0},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":1.5,\"item\":0}", 3, "not in [0, 1]", 0},
      {"{\"type\":\"progress\",\"id\":1,\"fraction\":0.5,\"message\":3}", 0,
       "\"message\" must be a string", 0},
  };

  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_autoptr (CrunchWireFrame) frame = frame_of_text (cases[i].json, 0);
    g_autoptr (GError) error = NULL;
    gdouble fraction = -1;
    const gchar *message = NULL;
    gint item = 7;
    gboolean ok =
        crunch_wire_parse_progress (frame, cases[i].n_items, &fraction, &message, &item, &error);
    if (cases[i].message == NULL) {
      g_assert_no_error (error);
      g_assert_true (ok);
      g_assert_cmpint (item, ==, cases[i].item);
      continue;
    }
    g_assert_false (ok);
    g_assert_error (error, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
    if (strstr (error->message, cases[i].message) == NULL)
      g_error ("case %u: '%s' does not say '%s'", i, error->message, cases[i].message);
  }
}

#define BFN(batching)                                                                              \
  "[{\"name\":\"f\",\"pure\":true,\"deadline\":1,\"content_type\":\"text/plain\"," batching        \
  "\"args\":[]}]"

/* A program declares max_batch and max_delay; a C function's hello carries them. */
static void
test_hello_batching (void)
{
  static const struct {
    const gchar *json, *message;
  } bad[] = {
      {HELLO (BFN ("\"max_batch\":0,")), "function \"f\": \"max_batch\" 0 is not in 1 .. 1024"},
      {HELLO (BFN ("\"max_batch\":1025,")), "\"max_batch\" 1025 is not in 1 .. 1024"},
      {HELLO (BFN ("\"max_batch\":-4294967295,")), "is not in 1 .. 1024"},
      {HELLO (BFN ("\"max_batch\":\"8\",")), "member \"max_batch\" must be an integer"},
      {HELLO (BFN ("\"max_batch\":8.0,")), "member \"max_batch\" must be an integer"},
      {HELLO (BFN ("\"max_batch\":8,\"max_delay\":\"1ms\",")), "\"max_delay\" must be a number"},
  };
  const CrunchFunction *fn = setup_batch (), *again;
  g_autoptr (JsonObject) header = crunch_wire_encode_hello ("t", "1.0", &fn, 1);
  g_autoptr (CrunchWireFrame) frame = frame_of (header, NULL);
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchWireHello) hello = crunch_wire_parse_hello (frame, &error);
  g_autoptr (CrunchWireHello) plain = NULL;
  g_autoptr (CrunchWireHello) slow = NULL;

  g_assert_no_error (error);
  g_assert_cmpuint (hello->functions[0].max_batch, ==, 4);
  g_assert_cmpfloat_with_epsilon (hello->functions[0].max_delay, 0.005, 1e-9);
  crunch_functions_reset ();
  g_assert_true (
      crunch_functions_add_hooked (&hello->functions[0], "prog", hook_run, "hi", &error));
  again = crunch_functions_lookup ("all");
  g_assert_cmpuint (again->max_batch, ==, 4);
  g_assert_cmpint (again->max_delay_us, ==, 5000);
  g_assert_null (again->run_batch); /* until a batch hook is set */
  crunch_functions_reset ();
  /* absent: 1 and 0, and a hello without batches does not mention them */
  plain = parse_hello_text (HELLO (BFN ("")), &error);
  g_assert_no_error (error);
  g_assert_cmpuint (plain->functions[0].max_batch, ==, 1);
  g_assert_cmpfloat (plain->functions[0].max_delay, ==, 0);
  setup ();
  fn = crunch_functions_lookup ("all");
  g_clear_pointer (&header, json_object_unref);
  header = crunch_wire_encode_hello ("t", "1.0", &fn, 1);
  g_assert_false (json_object_has_member (
      json_array_get_object_element (json_object_get_array_member (header, "functions"), 0),
      "max_batch"));
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_autoptr (GError) local = NULL;
    g_assert_null (parse_hello_text (bad[i].json, &local));
    g_assert_error (local, CRUNCH_WIRE_ERROR, CRUNCH_WIRE_ERROR_PROTOCOL);
    if (strstr (local->message, bad[i].message) == NULL)
      g_error ("case %u: '%s' does not say '%s'", i, local->message, bad[i].message);
  }
  /* the range of max_delay is the registry's rule, as for a C plugin */
  slow = parse_hello_text (HELLO (BFN ("\"max_batch\":8,\"max_delay\":2,")), &error);
  g_assert_no_error (error);
  crunch_functions_reset ();
  g_assert_false (crunch_functions_add_hooked (&slow->functions[0], "prog", hook_run, "", &error));
  g_assert_cmpstr (error->message, ==,
                   "plugin 'prog': function 'f': max_delay must be in [0, 1] seconds");
  crunch_functions_reset ();
}

/* The batch hook is set only where batches are declared and a run hook exists. */
static void
test_hook_batch (void)
{
  g_autoptr (GError) error = NULL;
  g_autoptr (CrunchWireHello) hello =
      parse_hello_text (HELLO ("[{\"name\":\"f\",\"pure\":true,\"deadline\":1,\"content_type\":"
                               "\"text/plain\",\"max_batch\":8,\"args\":[]},"
                               "{\"name\":\"g\",\"pure\":true,\"deadline\":1,\"content_type\":"
                               "\"text/plain\",\"args\":[]}]"),
                        &error);

  g_assert_no_error (error);
  crunch_functions_reset ();
  g_assert_true (crunch_functions_add_hooked (&hello->functions[0], "p", hook_run, "", &error));
  g_assert_true (crunch_functions_add_hooked (&hello->functions[1], "p", hook_run, "", &error));
  g_assert_true (crunch_functions_hook_batch ("f", crunch_procpool_call_batch));
  g_assert_true (crunch_functions_lookup ("f")->run_batch == crunch_procpool_call_batch);
  g_assert_false (crunch_functions_hook_batch ("g", crunch_procpool_call_batch));
  g_assert_false (crunch_functions_hook_batch ("nope", crunch_procpool_call_batch));
  g_assert_null (crunch_functions_lookup ("g")->run_batch);
  setup_batch (); /* a C batch function runs its own entry in the thread: no run hook */
  g_assert_false (crunch_functions_hook_batch ("all", crunch_procpool_call_batch));
  crunch_functions_reset ();
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/wire/round-trip", test_round_trip);
  g_test_add_func ("/wire/big-payload", test_big_payload);
  g_test_add_func ("/wire/write-stalled", test_write_stalled);
  g_test_add_func ("/wire/wake", test_wake);
  g_test_add_func ("/wire/hostile-frames", test_hostile_frames);
  g_test_add_func ("/wire/truncated", test_truncated);
  g_test_add_func ("/wire/call", test_call);
  g_test_add_func ("/wire/call-hostile", test_call_hostile);
  g_test_add_func ("/wire/hello-round-trip", test_hello_round_trip);
  g_test_add_func ("/wire/hello-hostile", test_hello_hostile);
  g_test_add_func ("/wire/hello-rules", test_hello_rules);
  g_test_add_func ("/wire/batch", test_batch);
  g_test_add_func ("/wire/batch-hostile", test_batch_hostile);
  g_test_add_func ("/wire/batch-result", test_batch_result);
  g_test_add_func ("/wire/batch-result-hostile", test_batch_result_hostile);
  g_test_add_func ("/wire/progress", test_progress);
  g_test_add_func ("/wire/hello-batching", test_hello_batching);
  g_test_add_func ("/wire/hook-batch", test_hook_batch);
  return g_test_run ();
}
