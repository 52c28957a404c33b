/*
 * batchkit.h — declarations shared by the C shim's files.
 *
 * The shim is the only code that includes postgres.h. It owns shared memory,
 * GUCs, background workers and SQL entry points, and calls the C++ core only
 * through the headers in include/batchkit.
 *
 * Shared memory and locking contract (see shmem.c):
 *   - BkShared lives in the main shared memory segment, sized from
 *     batchkit.max_workers at postmaster start (PGC_POSTMASTER).
 *   - BkShared->lock (an LWLock of tranche "batchkit") protects the worker
 *     slots and launcher fields: EXCLUSIVE to claim/release/update a slot,
 *     SHARED to read them (readers copy out and release at once).
 *   - No lock is held while calling the core or doing I/O.
 */
#ifndef BATCHKIT_SHIM_H
#define BATCHKIT_SHIM_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "storage/lwlock.h"

#define BK_WORKER_KIND_LAUNCHER 'L'
#define BK_WORKER_KIND_FLUSH 'F'
#define BK_STATE_LEN 32

typedef struct BkWorkerSlot {
    bool in_use;
    char kind;          /* BK_WORKER_KIND_* */
    int pid;
    Oid dboid;          /* InvalidOid for the launcher */
    TimestampTz started;
    TimestampTz last_activity;
    char state[BK_STATE_LEN];  /* "starting", "idle", "flushing", ... */
    char sink[NAMEDATALEN];    /* sink being served, "" when none */
} BkWorkerSlot;

typedef struct BkShared {
    LWLock *lock;
    int max_workers;           /* flush worker slots; slot 0 is the launcher */
    uint64 launcher_starts;    /* how many times a launcher has started */
    BkWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BkShared;

/* GUCs (module.c) */
extern int bk_max_workers;
extern int bk_naptime_ms;
extern bool bk_launcher_enabled;

/* shmem.c */
extern BkShared *bk_shared;
extern void bk_shmem_install_hooks(void);
extern void bk_require_shmem(void);
extern BkWorkerSlot *bk_slot_claim(char kind, Oid dboid);
extern void bk_slot_set_state(BkWorkerSlot *slot, const char *state, const char *sink);

/* upsert_stats.c: per-target batch_upsert statistics (own shmem hooks) */
extern void bk_upsert_stats_install_hooks(void);

/* launcher.c */
extern void bk_register_launcher(void);
PGDLLEXPORT void batchkit_launcher_main(Datum main_arg);

#endif /* BATCHKIT_SHIM_H */
