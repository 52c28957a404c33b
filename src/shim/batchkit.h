/*
 * batchkit.h — what every file of the C shim shares: the shared-memory layout
 * and the GUCs of module.c. Each concern declares what it exports in a header
 * of its own folder. Shim headers are named by their path from src/shim, from
 * every folder including their own (#include "queue/queue.h"; the Makefile
 * puts src/shim on the include path).
 *
 * The shim is the only code that includes postgres.h. It owns shared memory,
 * GUCs, background workers and SQL entry points, and calls the C++ core only
 * through the headers in include/batchkit.
 *
 * Folders, and the one direction their dependencies go: a file includes the
 * headers of its own folder and of the folders it points to below, never of a
 * folder above it (files of one folder may use each other):
 *
 *   module.c   _PG_init: GUCs, hooks, the launcher    -> every folder
 *   flush/     the launcher, the flush worker, the
 *              utility hook (workers leave a database) -> metrics, queue, shmem
 *   catalog/   batchkit.sink and its options           -> queue
 *   capture/   capture trigger, enqueue(), column_list -> queue, shmem
 *   metrics/   sink_stats, metrics(), /metrics (HTTP)  -> queue, shmem
 *   upsert/    batch_upsert and its statistics         -> shmem
 *   queue/     the durable queue: write, chunks,
 *              claim and acknowledge batches           -> shmem
 *   shmem/     shared memory, worker and sink slots,
 *              the statistics file                     -> (batchkit.h only)
 *   sql_info.c version(), the workers view             -> shmem
 *
 * Every file may include batchkit.h (this file: the shared-memory layout, the
 * GUC variables of module.c). Nothing outside flush/ and module.c calls a
 * worker: the queue wakes the launcher and the flush workers through shmem/
 * (bk_wake_launcher, bk_wake_database). catalog/ is also the name of a
 * PostgreSQL include directory: no file in it may share a name with one of
 * PostgreSQL's catalog headers.
 *
 * Shared memory and locking contract (see shmem/shmem.c):
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
#include "storage/spin.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"

#include "batchkit/histogram.h"

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
    Latch *latch;              /* the process's latch: set to wake it */
    pg_atomic_uint32 reload_requested; /* a sink changed: re-read the catalog */
} BkWorkerSlot;

/*
 * Per-sink shared state, keyed by (database, sink_id). `queued` counts committed,
 * unacknowledged records: writers add at commit (queue.c's XactCallback), the flush
 * worker subtracts at acknowledgement. It is rebuilt from the queue table the first
 * time the flush worker serves the sink after start-up, or a writer checks the sink's
 * max_queue (depth_known), so reading it never needs a count(*). Atomics: writers
 * never take a lock to update it.
 */
typedef struct BkSinkSlot {
    bool in_use;
    bool depth_known;
    Oid dboid;
    int32 sink_id;
    /*
     * The depth counter: committed, unacknowledged records. Read without a lock;
     * written under `mutex` (a commit's delta, the rebuild's store), which also
     * counts the writes in `applied`. `committing` counts transactions between
     * their PRE_COMMIT and their delta (queue.c, "depth").
     */
    pg_atomic_uint64 queued;
    pg_atomic_uint32 committing;
    uint64 applied;
    pg_atomic_uint32 flush_requested; /* flush() asks the worker to skip the linger */

    /*
     * Statistics, written only by the flush worker serving the sink, under `mutex`
     * (a spinlock: held for a few stores or one memcpy, never across a call).
     * Readers copy the whole slot out under the same spinlock.
     */
    slock_t mutex;
    char name[NAMEDATALEN];
    char state[16];             /* active, idle, paused, failing */
    uint64 batches;
    uint64 rows_sent;
    uint64 rows_failed;         /* rows of deliveries that failed and were retried */
    uint64 rows_dead;           /* rows moved to dead_letters */
    uint64 bytes_sent;
    uint64 retries;
    uint64 last_batch_size;
    TimestampTz last_flush_at;
    double last_flush_seconds;
    char last_error[256];
    TimestampTz last_error_at;
    TimestampTz stats_reset;
    bk_histogram hist[BK_HIST_KIND_COUNT];

    /*
     * Gauges the flush worker copies from its database about once a second, for
     * the launcher's /metrics endpoint, which cannot read any database (metrics.c).
     */
    TimestampTz oldest_queued_at; /* capture time of the oldest queued chunk; 0: none */
    int64 dead_letters;           /* rows in dead_letters */
    int64 queued_in_table;        /* rows queued, summed while `queued` is not rebuilt; -1: not */
    TimestampTz gauges_at;        /* when published; 0: never */
} BkSinkSlot;

/*
 * A session restoring this database's queue from a dump (chunk_io.c): while one
 * is connected, the database's flush worker delivers nothing (bk_restore_pending).
 */
#define BK_MAX_RESTORES 16
typedef struct BkRestoreMark {
    Oid dboid;                 /* InvalidOid: free */
    int pid;
} BkRestoreMark;

typedef struct BkShared {
    LWLock *lock;
    int max_workers;           /* flush worker slots; slot 0 is the launcher */
    int max_sinks;
    uint64 launcher_starts;    /* how many times a launcher has started */
    uint64 recheck_generation; /* bumped to make the launcher retry every database now */
    Oid evicted_dboid;         /* a database whose worker was asked to leave (utility_hook.c) */
    TimestampTz evicted_at;
    BkRestoreMark restores[BK_MAX_RESTORES];
    BkSinkSlot *sinks;         /* max_sinks entries, after the worker slots */
    BkWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BkShared;

/* GUCs (module.c) */
extern int bk_max_workers;
extern int bk_max_sinks;
extern int bk_chunk_records;
extern int bk_naptime_ms;
extern bool bk_launcher_enabled;

#endif /* BATCHKIT_SHIM_H */
