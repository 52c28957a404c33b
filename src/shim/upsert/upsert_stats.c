/*
 * upsert_stats.c — per-target statistics of batch_upsert in shared memory,
 * behind batchkit._upsert_stats() and the batchkit.upsert_stats view.
 *
 * Shared memory: a hash table keyed by (database oid, relation oid) with at
 * most BK_UPSERT_STATS_MAX entries, requested and initialised by this file's
 * own shmem_request/shmem_startup hooks (installed from _PG_init when batchkit
 * is preloaded; each hook chains to the previous one, pg_stat_statements
 * style). Without shared_preload_libraries nothing is allocated:
 * batch_upsert still works and records nothing; the view fails with
 * "must be loaded via shared_preload_libraries" (bk_require_shmem).
 *
 * Locking contract: BkUpsertStats->lock (LWLock tranche "batchkit_upsert_stats").
 *   - EXCLUSIVE: adding an entry, or adding one call's numbers to an entry
 *     (once per call, a few additions: short and cheap).
 *   - SHARED: reading (the SRF copies every entry out, then releases).
 * The lock is never held across anything that can ereport(ERROR) or do I/O.
 * When the table is full, calls on new targets are counted in `dropped` only.
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "shmem/shmem.h"
#include "upsert/upsert.h"

#define BK_UPSERT_STATS_MAX 1000

typedef struct BkUpsertStatsKey
{
	Oid			dbid;
	Oid			relid;
} BkUpsertStatsKey;

typedef struct BkUpsertStatsEntry
{
	BkUpsertStatsKey key;		/* hash key: must be first */
	uint64		calls;
	uint64		rows_in;
	uint64		inserted;
	uint64		updated;
	uint64		fallbacks;		/* calls where MERGE raced and ON CONFLICT took over */
	double		total_ms;
	double		max_ms;
	TimestampTz last_call;
} BkUpsertStatsEntry;

typedef struct BkUpsertStats
{
	LWLock	   *lock;
	uint64		dropped;		/* calls not recorded because the table was full */
} BkUpsertStats;

static BkUpsertStats *bk_upsert_stats = NULL;
static HTAB *bk_upsert_stats_hash = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

PG_FUNCTION_INFO_V1(batchkit_upsert_stats);

static void
bk_upsert_stats_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(MAXALIGN(sizeof(BkUpsertStats)),
									hash_estimate_size(BK_UPSERT_STATS_MAX,
													   sizeof(BkUpsertStatsEntry))));
	RequestNamedLWLockTranche("batchkit_upsert_stats", 1);
}

static void
bk_upsert_stats_startup(void)
{
	bool		found;
	HASHCTL		info;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bk_upsert_stats = ShmemInitStruct("batchkit_upsert_stats", sizeof(BkUpsertStats), &found);
	if (!found)
	{
		bk_upsert_stats->lock = &(GetNamedLWLockTranche("batchkit_upsert_stats"))->lock;
		bk_upsert_stats->dropped = 0;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(BkUpsertStatsKey);
	info.entrysize = sizeof(BkUpsertStatsEntry);
	bk_upsert_stats_hash = ShmemInitHash("batchkit_upsert_stats hash",
										 BK_UPSERT_STATS_MAX, BK_UPSERT_STATS_MAX,
										 &info, HASH_ELEM | HASH_BLOBS);
	LWLockRelease(AddinShmemInitLock);
}

void
bk_upsert_stats_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bk_upsert_stats_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bk_upsert_stats_startup;
}

/* Add one call's numbers; a no-op when batchkit is not preloaded. */
void
bk_upsert_stats_record(Oid relid, uint64 rows_in, uint64 inserted, uint64 updated,
					   double elapsed_ms, bool raced)
{
	BkUpsertStatsKey key;
	BkUpsertStatsEntry *e;
	bool		found;
	TimestampTz now;

	if (bk_upsert_stats == NULL || bk_upsert_stats_hash == NULL)
		return;
	now = GetCurrentTimestamp();
	memset(&key, 0, sizeof(key));
	key.dbid = MyDatabaseId;
	key.relid = relid;

	LWLockAcquire(bk_upsert_stats->lock, LW_EXCLUSIVE);
	/* HASH_ENTER_NULL: a full table returns NULL instead of raising an error */
	e = hash_search(bk_upsert_stats_hash, &key, HASH_ENTER_NULL, &found);
	if (e == NULL)
		bk_upsert_stats->dropped++;
	else
	{
		if (!found)
		{
			memset((char *) e + sizeof(BkUpsertStatsKey), 0,
				   sizeof(BkUpsertStatsEntry) - sizeof(BkUpsertStatsKey));
		}
		e->calls++;
		e->rows_in += rows_in;
		e->inserted += inserted;
		e->updated += updated;
		if (raced)
			e->fallbacks++;
		e->total_ms += elapsed_ms;
		if (elapsed_ms > e->max_ms)
			e->max_ms = elapsed_ms;
		e->last_call = now;
	}
	LWLockRelease(bk_upsert_stats->lock);
}

/* One row per (database, target) seen since the server started. */
Datum
batchkit_upsert_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BkUpsertStatsEntry *copy;
	HASH_SEQ_STATUS seq;
	BkUpsertStatsEntry *e;
	int			n = 0;

	bk_require_shmem();
	if (bk_upsert_stats == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("batchkit must be loaded via shared_preload_libraries")));
	InitMaterializedSRF(fcinfo, 0);

	copy = palloc(sizeof(BkUpsertStatsEntry) * BK_UPSERT_STATS_MAX);
	LWLockAcquire(bk_upsert_stats->lock, LW_SHARED);
	hash_seq_init(&seq, bk_upsert_stats_hash);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (n < BK_UPSERT_STATS_MAX)
			copy[n++] = *e;
	}
	LWLockRelease(bk_upsert_stats->lock);

	for (int i = 0; i < n; i++)
	{
		Datum		values[10];
		bool		nulls[10] = {0};
		BkUpsertStatsEntry *s = &copy[i];

		values[0] = ObjectIdGetDatum(s->key.dbid);
		values[1] = ObjectIdGetDatum(s->key.relid);
		values[2] = Int64GetDatum((int64) s->calls);
		values[3] = Int64GetDatum((int64) s->rows_in);
		values[4] = Int64GetDatum((int64) s->inserted);
		values[5] = Int64GetDatum((int64) s->updated);
		values[6] = Int64GetDatum((int64) s->fallbacks);
		values[7] = Float8GetDatum(s->total_ms);
		values[8] = Float8GetDatum(s->max_ms);
		values[9] = TimestampTzGetDatum(s->last_call);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
