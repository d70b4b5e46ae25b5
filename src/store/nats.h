/* nats.h - the JetStream job store ([jobs] store = nats): jobs kept in a NATS JetStream
 * key-value bucket, shared by every front end on the cluster. A job submitted through one can be
 * read, awaited and cancelled through any other, and when the front end that runs it dies, another
 * takes it over once its lease has lapsed. */
#pragma once

#include "config.h"
#include "store.h"

typedef struct {
  const CrunchConfig *config; /* [nats] servers and reconnection settings */
  const gchar *bucket;        /* the key-value bucket, created if missing */
  gdouble lease;              /* seconds a front end owns a job without renewing it */
  gdouble ttl;                /* [jobs] ttl: finished jobs older than this are deleted */
} CrunchNatsStoreSettings;

/* Connects and opens (or creates) the bucket; NULL and an error naming the servers and the bucket
 * when NATS or JetStream cannot be reached. */
CrunchStore *crunch_store_nats_open (const CrunchNatsStoreSettings *settings, GError **error);
