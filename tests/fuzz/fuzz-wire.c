/* fuzz-wire.c - libFuzzer target: the worker protocol's reading side (wire.c), what crunchd
 * reads from a worker process and a worker from crunchd. The input is a byte stream on a
 * socket: frames are read until the end or the first error; each frame is parsed as a hello (its
 * declarations then registered, as for a program plugin) and as a call of a function with one
 * argument of every type. Either the reader or parser says what is wrong (a CRUNCH_WIRE_ERROR
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

static const CrunchdFunction decl = {
    "every", NULL, args, G_N_ELEMENTS (args), 1, 1, "text/plain", run, NULL, 0, 0, NULL,
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
    crunch_wire_frame_free (frame);
  }
  expect_wire_error (error);
  g_error_free (error);
  close (fds[1]);
  crunch_wire_reader_free (reader);
  return 0;
}
