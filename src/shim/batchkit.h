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

/* batchkit.column_list (column_list.c): columns of one table by attribute number */
typedef struct BkColumnList {
    int32 vl_len_;             /* varlena header */
    Oid relid;
    int32 natts;
    int16 attnums[FLEXIBLE_ARRAY_MEMBER]; /* 0: a column dropped before a restore */
} BkColumnList;

/* GUCs (module.c) */
extern int bk_max_workers;
extern int bk_max_sinks;
extern int bk_chunk_records;
extern int bk_naptime_ms;
extern bool bk_launcher_enabled;

/* shmem.c */
extern BkShared *bk_shared;
extern void bk_shmem_install_hooks(void);
extern void bk_require_shmem(void);
extern BkWorkerSlot *bk_slot_claim(char kind, Oid dboid);
extern void bk_slot_set_state(BkWorkerSlot *slot, const char *state, const char *sink);
extern BkSinkSlot *bk_sink_slot(Oid dboid, int32 sink_id, bool create);
extern void bk_sink_slot_forget(Oid dboid, int32 sink_id);
extern int bk_sink_slot_ids(Oid dboid, int32 *ids, int max);
extern void bk_wake_database(Oid dboid);
extern void bk_request_reload(Oid dboid);
extern void bk_wake_worker_at_commit(void);
extern void bk_note_restoring(void);
extern bool bk_restore_pending(Oid dboid);
extern void bk_forget_depths(Oid dboid);

/* queue.c */
struct _SPI_plan;
extern struct _SPI_plan *bk_keep_plan(struct _SPI_plan **slot, const char *sql, int nargs,
                                      Oid *argtypes);
extern void bk_queue_init_backend(void);
extern uint64 bk_sink_depth(int32 sink_id, bool *known);
extern uint64 bk_queue_rebuild_depth(BkSinkSlot *slot, int32 sink_id);
extern void bk_queue_note_enqueued(int32 sink_id, uint64 nrecords);
extern void bk_queue_note_acked(int32 sink_id, uint64 nrecords);
extern bool bk_queue_needs_spi(int32 sink_id);
extern void bk_queue_check_backpressure(int32 sink_id, uint64 adding);
extern void bk_queue_insert_chunk(int32 sink_id, Oid source, const char *data, int len,
                                  uint32 nrecords);
extern Oid bk_queue_owner(void);
extern void bk_begin_as_owner(Oid *save_userid, int *save_sec);
extern void bk_end_as_owner(Oid save_userid, int save_sec);
extern void bk_invalidate_catalog_cache(void);
extern void bk_wake_launcher_at_commit(void);
extern int32 bk_lookup_sink_id(const char *name, bool missing_ok);

/* upsert_stats.c: per-target batch_upsert statistics (own shmem hooks) */
extern void bk_upsert_stats_install_hooks(void);

/* metrics.c: the flush worker publishes gauges for the /metrics endpoint */
extern void bk_metrics_publish_gauges(void);

/* metrics_http.c: the launcher's optional /metrics endpoint */
extern int bk_metrics_port;
extern char *bk_metrics_listen_address;
extern void bk_metrics_http_define_gucs(void);
extern int bk_metrics_http_wait(long timeout_ms);

/* launcher.c */
extern void bk_register_launcher(void);
extern void bk_wake_launcher(void);
PGDLLEXPORT void batchkit_launcher_main(Datum main_arg);

/* utility_hook.c */
extern void bk_install_utility_hook(void);

/* flush_worker.c */
PGDLLEXPORT void batchkit_flush_worker_main(Datum main_arg);

#endif /* BATCHKIT_SHIM_H */
