/* reply.h - the one answer type. Every handler (the fast lane, the ops endpoints, the jobs API)
 * returns a CrunchReply; only server.c renders it: it adds the request id to error bodies, the
 * headers below, and the request id header. */
#pragma once

#include <glib.h>

typedef struct CrunchStream CrunchStream;

typedef struct {
  guint status;
  const gchar *text; /* a static body, sent without copying; or NULL */
  const gchar *content_type;
  GBytes *bytes;             /* a body built for this request (owned); or NULL */
  const gchar *allow;        /* Allow (405), static */
  const gchar *authenticate; /* WWW-Authenticate (401), static */
  gchar *location;           /* Location (owned) */
  gchar *retry_after;        /* Retry-After in seconds (owned) */
  gboolean close;            /* Connection: close */
  CrunchStream *stream;      /* the body is this event stream (a reference, owned); see stream.h */
} CrunchReply;

#define CRUNCH_TEXT_PLAIN "text/plain; charset=utf-8"

/* A static body, sent without copying. */
static inline CrunchReply
crunch_reply_static (guint status, const gchar *text, const gchar *content_type)
{
  return (CrunchReply){.status = status, .text = text, .content_type = content_type};
}

/* What a handler returns once it has deferred its reply (CrunchRequestInfo.defer). */
static inline CrunchReply
crunch_reply_later (void)
{
  return (CrunchReply){.status = 0};
}

/* A one-line text/plain body (a newline is added). Errors (status >= 400) are such lines: the
 * server appends " (request id ID)" when it sends them. */
CrunchReply crunch_reply_text (guint status, const gchar *format, ...) G_GNUC_PRINTF (2, 3);
/* A body built for this request; takes `bytes`. */
CrunchReply crunch_reply_bytes (guint status, GBytes *bytes, const gchar *content_type);
/* 200 text/event-stream: the body is `stream` (takes the reference). */
CrunchReply crunch_reply_stream (CrunchStream *stream);
void crunch_reply_clear (CrunchReply *reply);
