/* sqlite.h - the SQLite job store ([jobs] store = sqlite): one database file in WAL mode, held
 * exclusively by one crunchd, written by one store thread in batched transactions. */
#pragma once

#include "store.h"

typedef struct {
  const gchar *path;
  gboolean synchronous_full; /* PRAGMA synchronous = FULL (else NORMAL) */
  guint64 max_size; /* bytes the database may grow to (PRAGMA max_page_count); 0: no bound */
} CrunchSqliteSettings;

/* Opens (creating it if needed) and checks the database; NULL and an error that names the file
 * when it cannot be opened, is in use by another process, is not a crunchd job database, or is
 * damaged (PRAGMA quick_check). */
CrunchStore *crunch_store_sqlite_open (const CrunchSqliteSettings *settings, GError **error);
