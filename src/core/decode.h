/* decode.h - request bodies -> a function and its arguments: on the polling thread when short,
 * on a pool of their own when long (the compute lane's shape: suspend, pool, resume). */
#pragma once

#include <glib.h>

#include "functions.h"

/* Bodies up to this many bytes are decoded inline: the costliest JSON of that size (an array of
 * small numbers) takes json-glib about 0.1 ms. Longer ones go to the decoder. */
#define CRUNCH_DECODE_INLINE_MAX 1024

typedef struct CrunchDecoder CrunchDecoder;
typedef struct CrunchDecode CrunchDecode;

struct CrunchDecode {
  /* in: the body (borrowed until `done`); `fn` the function it holds the arguments of
   * (POST /fn/NAME), or NULL: the body names it (a POST /jobs body, {"fn": ..., "args": ...}) */
  const gchar *body;
  gsize len;
  const CrunchFunction *fn;
  /* out: the canonical arguments (owned), with `fn` set; or NULL and `error` (a 400's reason) */
  GVariant *args;
  GError *error;
  /* on a decoder thread, before decoding: FALSE skips it (`args` and `error` stay NULL) */
  gboolean (*wanted) (CrunchDecode *decode, gpointer data);
  /* called once, last, on a decoder thread */
  void (*done) (CrunchDecode *decode, gpointer data);
  gpointer data;
};

/* Decodes on the calling thread (a body short enough for a polling thread); `wanted` and
 * `done` are not used. */
void crunch_decode_run (CrunchDecode *decode);
/* `threads` decoder threads at niceness `nice`. */
CrunchDecoder *crunch_decoder_new (guint threads, gint nice);
/* [executor] nice on reload: the decoders keep the workers' niceness. */
void crunch_decoder_set_nice (CrunchDecoder *self, gint nice);
/* Any thread: decode->done will be called from a decoder thread. Shorter bodies go first: a
 * small one never waits for a queue of large ones, only for those already being decoded. */
void crunch_decoder_submit (CrunchDecoder *self, CrunchDecode *decode);
/* Decodes everything queued first (every `done` is called), then stops the threads. */
void crunch_decoder_free (CrunchDecoder *self);
/* The results of a decode, freed (the CrunchDecode itself is the caller's). */
void crunch_decode_clear (CrunchDecode *decode);
