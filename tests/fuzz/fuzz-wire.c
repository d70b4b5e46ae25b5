/* fuzz-wire.c - libFuzzer target: the worker protocol's reading side (wire.c), what crunchd
 * reads from a worker process and a worker from crunchd. The input is a byte stream on a
 * socket: frames are read until the end or the first error; each frame is parsed as a hello (its
 * declarations then registered, as for a program plugin) and as a call of a function with one
 * argument of every type, as a batch of such calls, and as a batch-result and a progress frame
 * for a batch of three. Either the reader or parser says what is wrong (a CRUNCH_WIRE_ERROR
 * with a UTF-8 message), or what it returns is well formed: a decoded call has the declared
 * types, bytes taken from inside the payload. */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wire.h"

int LLVMFuzzerTestOneInput (const guint8 *data, gsize size);

static const CrunchdArg args[] = {
    {"i", CRUNCHD_ARG_INT, -1000, 1000, NULL, NULL},
    {"f", CRUNCHD_ARG_FLOAT, -1, 1, "0.5", NULL},
    {"s", CRUNCHD_ARG_STRING, 1, 8, "x", NULL},
    {"b", CRUNCHD_ARG_BYTES, 0, 4, "", NULL},
};

static CrunchdStatus
run (const CrunchdCall *call, CrunchdResult *result)
{
  return CRUNCHD_OK;
}

static void
run_batch (const CrunchdCall *const *calls, unsigned n, CrunchdResult *results,
           CrunchdStatus *statuses)
{
}

static const CrunchdFunction decl = {
    "every", NULL, args, G_N_ELEMENTS (args), 1, 1, "text/plain", run, NULL, 0, 0, NULL,
};
static const CrunchdFunction batch_decl = {
    "batched", NULL, args, G_N_ELEMENTS (args), 1, 1, "text/plain", NULL, NULL, 4, 0.01, run_batch,
};

static GBytes *
hook (const CrunchFunction *fn, GVariant *args, const CrunchCancel *cancel, gpointer data,
      GError **error)
{
  return NULL;
}

static void
expect_wire_error (const GError *error)
{
  g_assert (error != NULL && error->domain == CRUNCH_WIRE_ERROR);
  g_assert (g_utf8_validate (error->message, -1, NULL));
}

/* A hello's declarations go through the registry's checks, then are taken out again. */
static void
try_hello (const CrunchWireFrame *frame)
{
  GError *error = NULL;
  CrunchWireHello *hello = crunch_wire_parse_hello (frame, &error);

  if (hello == NULL) {
    expect_wire_error (error);
    g_error_free (error);
    return;
  }
  crunch_functions_reset ();
  for (guint i = 0; i < hello->n_functions; i++) {
    if (!crunch_functions_add_hooked (&hello->functions[i], "fuzz", hook, NULL, &error)) {
      g_assert (g_utf8_validate (error->message, -1, NULL));
      g_clear_error (&error);
    }
  }
  crunch_functions_reset ();
  crunch_wire_hello_free (hello);
}

static void
try_call (const CrunchWireFrame *frame)
{
  const CrunchFunction *fn = NULL;
  gint64 id;
  GError *error = NULL;
  GVariant *v;

  crunch_functions_reset ();
  g_assert (crunch_functions_add (&decl, "fuzz", NULL));
  g_assert (crunch_functions_add (&batch_decl, "fuzz", NULL));
  v = crunch_wire_decode_call (frame, &fn, &id, &error);
  if (v == NULL) {
    expect_wire_error (error);
    g_error_free (error);
  } else {
    g_variant_ref_sink (v);
    g_assert (g_variant_is_of_type (v, G_VARIANT_TYPE ("(xdsay)")));
    g_variant_unref (v);
  }
  crunch_functions_reset ();
}

/* As a batch (of the batch function: 1 to 4 calls), and as its batch-result and progress. */
static void
try_batch (const CrunchWireFrame *frame)
{
  const CrunchFunction *fn = NULL;
  gint64 id;
  GError *error = NULL;
  GPtrArray *calls;
  GBytes *results[3] = {NULL};
  GError *errors[3] = {NULL};
  gsize size = g_bytes_get_size (frame->payload);
  gdouble fraction;
  const gchar *message;
  gint item;
  gboolean answered;

  crunch_functions_reset ();
  g_assert (crunch_functions_add (&decl, "fuzz", NULL));
  g_assert (crunch_functions_add (&batch_decl, "fuzz", NULL));
  calls = crunch_wire_decode_batch (frame, &fn, &id, &error);
  if (calls == NULL) {
    expect_wire_error (error);
    g_clear_error (&error);
  } else {
    g_assert (calls->len >= 1 && calls->len <= 4 && g_str_equal (fn->name, "batched"));
    for (guint i = 0; i < calls->len; i++)
      g_assert (g_variant_is_of_type (calls->pdata[i], G_VARIANT_TYPE ("(xdsay)")));
    g_ptr_array_unref (calls);
  }
  fn = crunch_functions_lookup ("batched");
  answered = crunch_wire_parse_batch_result (frame, fn, 3, results, errors, &error);
  if (!answered) {
    expect_wire_error (error);
    g_clear_error (&error);
  }
  for (guint i = 0; i < 3; i++) { /* each call answered once, or none at all */
    g_assert (answered ? (results[i] == NULL) != (errors[i] == NULL)
                       : results[i] == NULL && errors[i] == NULL);
    g_assert (results[i] == NULL || g_bytes_get_size (results[i]) <= size);
    g_clear_pointer (&results[i], g_bytes_unref);
    g_clear_error (&errors[i]);
  }
  if (!crunch_wire_parse_progress (frame, 3, &fraction, &message, &item, &error)) {
    expect_wire_error (error);
    g_clear_error (&error);
  } else {
    g_assert (fraction >= 0 && fraction <= 1 && item >= -1 && item < 3);
  }
  crunch_functions_reset ();
}

int
LLVMFuzzerTestOneInput (const guint8 *data, gsize size)
{
  int fds[2];
  CrunchWireReader *reader = crunch_wire_reader_new (4096);
  CrunchWireFrame *frame;
  GError *error = NULL;

  g_assert (socketpair (AF_UNIX, SOCK_STREAM, 0, fds) == 0);
  g_assert (write (fds[0], data, size) == (gssize)size); /* max_len is below the buffer size */
  close (fds[0]);
  while ((frame = crunch_wire_read (reader, fds[1], NULL, NULL, &error)) != NULL) {
    g_assert (frame->type != NULL && g_bytes_get_size (frame->payload) <= 4096);
    try_hello (frame);
    try_call (frame);
    try_batch (frame);
    crunch_wire_frame_free (frame);
  }
  expect_wire_error (error);
  g_error_free (error);
  close (fds[1]);
  crunch_wire_reader_free (reader);
  return 0;
}
