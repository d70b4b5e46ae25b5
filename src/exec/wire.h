/* wire.h - the worker protocol, version 1 (man crunchd-worker(8), "PROTOCOL"): the one owner of
 * its frames, limits and messages, for both sides (the process pool in crunchd, and
 * `crunchd-worker --stdio`).
 *
 * A frame is u32 BE header length, u32 BE payload length, a JSON object header with a string
 * member "type", then raw payload bytes. Everything a peer sends is checked here: lengths against
 * the limits, the header's JSON (nesting bounded before json-glib parses), member types, bytes
 * offsets inside the payload. Any violation is CRUNCH_WIRE_ERROR_PROTOCOL with a message that says
 * what was wrong; the caller ends that peer. */
#pragma once

#include <glib.h>
#include <json-glib/json-glib.h>

#include "functions.h"

#define CRUNCH_WIRE_PROTOCOL 1
#define CRUNCH_WIRE_MAX_HEADER (1u << 20)         /* 1 MiB */
#define CRUNCH_WIRE_MAX_PAYLOAD (256u << 20)      /* crunchd's limit: 256 MiB */
#define CRUNCH_WIRE_STEP_MS 10                    /* reads wake at least this often */
#define CRUNCH_WIRE_ENV "CRUNCHD_WORKER_PROTOCOL" /* set to "1" in a worker's environment */

#define CRUNCH_WIRE_ERROR (crunch_wire_error_quark ())
GQuark crunch_wire_error_quark (void);
typedef enum {
  CRUNCH_WIRE_ERROR_EOF,       /* the peer closed its end between frames */
  CRUNCH_WIRE_ERROR_IO,        /* read/write failed, or EOF inside a frame */
  CRUNCH_WIRE_ERROR_PROTOCOL,  /* the peer broke the protocol */
  CRUNCH_WIRE_ERROR_STOPPED,   /* the caller's check said stop (deadline, cancel) */
  CRUNCH_WIRE_ERROR_TOO_LARGE, /* write: the header would pass CRUNCH_WIRE_MAX_HEADER; nothing sent
                                */
} CrunchWireError;

typedef struct {
  JsonObject *header; /* owned */
  const gchar *type;  /* header's "type" */
  GBytes *payload;    /* never NULL */
} CrunchWireFrame;

void crunch_wire_frame_free (CrunchWireFrame *frame);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchWireFrame, crunch_wire_frame_free)

/* Called between poll steps of crunch_wire_read() and crunch_wire_write_checked(); return FALSE
 * to stop waiting. */
typedef gboolean (*CrunchWireCheck) (gpointer data);

/* Writes one frame (writev; a non-blocking fd is waited for with poll()). `header` is serialised
 * as is; payload may be NULL. Never raises SIGPIPE on a socket; callers that write to pipes
 * ignore SIGPIPE. */
gboolean crunch_wire_write (int fd, JsonObject *header, GBytes *payload, GError **error);
/* The same on a non-blocking fd that may stay full (a stalled peer): while it is, `check` is
 * called every CRUNCH_WIRE_STEP_MS, and FALSE stops (CRUNCH_WIRE_ERROR_STOPPED, the frame cut
 * short: the caller ends that peer). */
gboolean crunch_wire_write_checked (int fd, JsonObject *header, GBytes *payload,
                                    CrunchWireCheck check, gpointer data, GError **error);

/* Incremental reader: bytes accumulate until a whole frame is there, so a peer that stalls
 * mid-frame never blocks the reading thread longer than one poll step. */
typedef struct CrunchWireReader CrunchWireReader;
CrunchWireReader *crunch_wire_reader_new (gsize max_payload);
void crunch_wire_reader_free (CrunchWireReader *reader);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchWireReader, crunch_wire_reader_free)

/* Waits for and returns the next frame from `fd`, polling in steps of CRUNCH_WIRE_STEP_MS and
 * calling `check` (if not NULL) after each step that brought no whole frame. NULL with an error
 * from CRUNCH_WIRE_ERROR otherwise. */
CrunchWireFrame *crunch_wire_read (CrunchWireReader *reader, int fd, CrunchWireCheck check,
                                   gpointer data, GError **error);

/* The same, also waking (to call `check` at once) when `wake_fd` becomes readable; the caller
 * drains it. */
CrunchWireFrame *crunch_wire_read_or_wake (CrunchWireReader *reader, int fd, int wake_fd,
                                           CrunchWireCheck check, gpointer data, GError **error);

/* Strict member access for received headers: missing or mistyped members are protocol errors
 * naming the member. */
gboolean crunch_wire_get_int (JsonObject *object, const gchar *name, gint64 *value, GError **error);
gboolean crunch_wire_get_number (JsonObject *object, const gchar *name, gdouble *value,
                                 GError **error);
const gchar *crunch_wire_get_string (JsonObject *object, const gchar *name, GError **error);

/* A header {"type": type, "id": id} to add members to. */
JsonObject *crunch_wire_header (const gchar *type, gint64 id);

/* call: the canonical args tuple -> header members and payload (bytes concatenated). */
JsonObject *crunch_wire_encode_call (const CrunchFunction *fn, GVariant *args, gint64 id,
                                     gdouble deadline_s, GBytes **payload);
/* call (worker side): the function it names (looked up in the registry) and the canonical
 * tuple; every declared argument must be there with its type, and nothing else. */
GVariant *crunch_wire_decode_call (const CrunchWireFrame *frame, const CrunchFunction **fn,
                                   gint64 *id, GError **error);

/* batch: n calls of one function at once (1 <= n <= fn->max_batch), sent only to a worker that
 * declared max_batch > 1 for it: {"calls": [{"args": {...}}, ...]}, each call's arguments as in
 * a call, the bytes of all of them concatenated in one payload. */
JsonObject *crunch_wire_encode_batch (const CrunchFunction *fn, guint n, GVariant *const *args,
                                      gint64 id, gdouble deadline_s, GBytes **payload);
/* batch (worker side): the function and its calls' canonical tuples (GVariant*, owned), checked
 * as crunch_wire_decode_call() checks one call; their number must be 1 .. fn->max_batch. */
GPtrArray *crunch_wire_decode_batch (const CrunchWireFrame *frame, const CrunchFunction **fn,
                                     gint64 *id, GError **error);
/* batch-result (worker side): the final reply to a batch of n calls, results[i] or errors[i]
 * (a CRUNCH_FUNCTION_ERROR: CANCELLED, OUT_OF_MEMORY, anything else "error") for call i; the
 * results concatenated in the payload. */
JsonObject *crunch_wire_encode_batch_result (const CrunchFunction *fn, gint64 id, guint n,
                                             GBytes *const *results, GError *const *errors,
                                             GBytes **payload);
/* batch-result (crunchd side), answering a batch of n calls of fn: one entry per call, each
 * "ok" with its bytes inside the payload (results[i], a slice of it) or "error" / "cancelled"
 * (errors[i], a CRUNCH_FUNCTION_ERROR naming fn). FALSE with a protocol error (and nothing set)
 * if anything is wrong with the frame. */
gboolean crunch_wire_parse_batch_result (const CrunchWireFrame *frame, const CrunchFunction *fn,
                                         guint n, GBytes **results, GError **errors,
                                         GError **error);

/* progress (crunchd side): "fraction" in [0, 1], "message" (*message NULL when absent or null)
 * and "item": *item -1 when absent; for a call (n_items 0) an item is a protocol error, for a
 * batch of n_items calls it must be in 0 .. n_items - 1. */
gboolean crunch_wire_parse_progress (const CrunchWireFrame *frame, guint n_items, gdouble *fraction,
                                     const gchar **message, gint *item, GError **error);

/* hello: what a worker declares. */
JsonObject *crunch_wire_encode_hello (const gchar *name, const gchar *version,
                                      const CrunchFunction *const *functions, guint n);

typedef struct {
  gchar *name, *version;
  guint n_functions;
  /* Allocated for the process lifetime (the registry keeps pointers into them); `run` is NULL:
   * the caller registers them with a run hook (crunch_functions_add_hooked). */
  CrunchdFunction *functions;
} CrunchWireHello;

/* Parses a hello frame. Types and shapes are checked here; the declarations' rules (names,
 * bounds, defaults) by crunch_functions_add_hooked, as for a C plugin. */
CrunchWireHello *crunch_wire_parse_hello (const CrunchWireFrame *frame, GError **error);
/* Frees a hello whose functions were not registered (after an error). */
void crunch_wire_hello_free (CrunchWireHello *hello);
G_DEFINE_AUTOPTR_CLEANUP_FUNC (CrunchWireHello, crunch_wire_hello_free)
