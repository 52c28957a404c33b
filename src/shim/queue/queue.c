/*
 * queue.c — writing the durable queue from a user's transaction, and the
 * bookkeeping around it: queue depth, backpressure, wake-on-commit, catalog cache.
 *
 * Writers (capture triggers, enqueue) call bk_queue_insert_chunk() inside their
 * own transaction, so a chunk commits or rolls back with the rows it describes.
 * Inserts run as the owner of batchkit's queue (the user id is switched for the
 * duration of the SPI call and restored — also by transaction abort), so a role
 * that may write a captured table needs no grant on the queue.
 *
 * Per-transaction state (backend-local, TopMemoryContext):
 *   pending[]   records enqueued per (sink, subtransaction); on subtransaction
 *               abort the aborted ones are forgotten, at commit they are added
 *               to the shared depth counters and the database's flush worker is
 *               woken (SetLatch), at abort all are forgotten.
 *   marks[]     from PRE_COMMIT to COMMIT/ABORT: the net delta per sink, and
 *               the slot whose `committing` count this transaction is in.
 * PREPARE TRANSACTION of a transaction that enqueued is refused: the commit
 * would happen in another backend and the wake-up and depth would be lost.
 *
 * Catalog cache (backend-local): sink id -> name and backpressure options;
 * cleared by a relcache invalidation of batchkit.sink, which every catalog
 * change sends (batchkit._catalog_changed() at the end of create/alter/drop).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type_d.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "shmem/shmem.h"
#include "queue/queue.h"

typedef struct PendingCount
{
	int32		sink_id;
	SubTransactionId subid;
	int64		delta;			/* records queued (+) or acknowledged (-) */
} PendingCount;

static bool wake_launcher_at_commit = false;
static bool wake_worker_at_commit = false;
static bool reload_worker_at_commit = false;
static PendingCount *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;

/*
 * A committing transaction's net delta per sink, counted in the slot's
 * `committing` from PRE_COMMIT (before its rows become visible) until the
 * delta is applied at COMMIT, or until ABORT.
 */
typedef struct CommitMark
{
	int32		sink_id;
	int64		delta;
	bool		enqueued;		/* some records were queued (wake the worker) */
	BkSinkSlot *slot;
} CommitMark;

static CommitMark *marks = NULL;
static int	nmarks = 0;
static int	maxmarks = 0;
static int	npending_marked = 0;	/* pending[] entries the marks cover */
static bool callbacks_registered = false;

typedef struct SinkCacheEntry
{
	int32		sink_id;		/* hash key */
	bool		valid;
	char		name[NAMEDATALEN];
	int64		max_queue;		/* 0: unlimited */
	bool		on_full_wait;
	int32		on_full_timeout_ms;
} SinkCacheEntry;

static HTAB *sink_cache = NULL;
static Oid	sink_relid_cached = InvalidOid;

static SPIPlanPtr lookup_plan = NULL;

/*
 * Prepare a statement once per backend and keep it (the plan cache re-plans it
 * when what it references changes). Every statement batchkit runs on a hot
 * path goes through here, so none is parsed and planned per row or per batch.
 */
SPIPlanPtr
bk_keep_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *argtypes)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "batchkit: SPI_prepare failed for \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*slot = p;
	}
	return *slot;
}
static Oid	int4type[1] = {INT4OID};
static SPIPlanPtr sink_plan = NULL;
static SPIPlanPtr depth_plan = NULL;

/* ---- catalog cache and invalidation ------------------------------------- */

static Oid
batchkit_relid(const char *relname)
{
	Oid			nsp = get_namespace_oid("batchkit", false);
	Oid			relid = get_relname_relid(relname, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("batchkit.%s does not exist", relname),
				 errhint("Is the batchkit extension installed in this database?")));
	return relid;
}

static void forget_queue_relations(void);

static void
catalog_relcache_callback(Datum arg, Oid relid)
{
	if (sink_cache != NULL && (relid == InvalidOid || relid == sink_relid_cached))
	{
		HASH_SEQ_STATUS st;
		SinkCacheEntry *e;

		hash_seq_init(&st, sink_cache);
		while ((e = hash_seq_search(&st)) != NULL)
			e->valid = false;
	}
	if (relid == InvalidOid || relid == sink_relid_cached)
	{
		sink_relid_cached = InvalidOid;
		forget_queue_relations();
	}
}

void
bk_invalidate_catalog_cache(void)
{
	CacheInvalidateRelcacheByRelid(batchkit_relid("sink"));
}

static void xact_callback(XactEvent event, void *arg);
static void subxact_callback(SubXactEvent event, SubTransactionId mySubid,
							 SubTransactionId parentSubid, void *arg);

void
bk_queue_init_backend(void)
{
	HASHCTL		ctl;

	if (callbacks_registered)
		return;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(int32);
	ctl.entrysize = sizeof(SinkCacheEntry);
	ctl.hcxt = TopMemoryContext;
	sink_cache = hash_create("batchkit sink cache", 16, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	RegisterXactCallback(xact_callback, NULL);
	RegisterSubXactCallback(subxact_callback, NULL);
	CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
	callbacks_registered = true;
}

/* ---- running as the queue's owner ---------------------------------------- */

Oid
bk_queue_owner(void)
{
	Oid			relid = batchkit_relid("queue");
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Run as the queue's owner, like a SECURITY DEFINER function with
 * SET search_path = pg_catalog, pg_temp: the caller's search_path must not
 * choose the functions or operators that run with the owner's rights. Calls
 * nest; an error unwinds both (transaction abort restores the user id and GUCs).
 */
#define BK_OWNER_MAX_DEPTH 32
static int	owner_nest[BK_OWNER_MAX_DEPTH];
static SubTransactionId owner_subid[BK_OWNER_MAX_DEPTH];
static int	owner_depth = 0;

void
bk_begin_as_owner(Oid *save_userid, int *save_sec)
{
	Oid			owner = bk_queue_owner();

	bk_queue_init_backend();	/* the (sub)transaction callbacks keep owner_depth right */
	if (owner_depth >= BK_OWNER_MAX_DEPTH)
		elog(ERROR, "batchkit: owner context nested too deeply");
	GetUserIdAndSecContext(save_userid, save_sec);
	SetUserIdAndSecContext(owner,
						   *save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	owner_subid[owner_depth] = GetCurrentSubTransactionId();
	owner_nest[owner_depth++] = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

void
bk_end_as_owner(Oid save_userid, int save_sec)
{
	if (owner_depth > 0)
		AtEOXact_GUC(true, owner_nest[--owner_depth]);
	SetUserIdAndSecContext(save_userid, save_sec);
}

/* ---- sink lookups (run as the queue owner, inside SPI) ------------------- */

static SinkCacheEntry *
sink_entry(int32 sink_id)
{
	SinkCacheEntry *e;
	bool		found;
	Datum		arg[1];
	int			rc;

	bk_queue_init_backend();
	if (!OidIsValid(sink_relid_cached))
		sink_relid_cached = batchkit_relid("sink");
	e = hash_search(sink_cache, &sink_id, HASH_ENTER, &found);
	if (found && e->valid)
		return e;

	arg[0] = Int32GetDatum(sink_id);
	rc = SPI_execute_plan(bk_keep_plan(&sink_plan, "SELECT name, "
									"COALESCE((options->>'max_queue')::bigint, 0), "
									"COALESCE(options->>'on_full', 'error') = 'wait', "
									"COALESCE((options->>'on_full_timeout_ms')::integer, 10000) "
									"FROM batchkit.sink WHERE sink_id = $1", 1, int4type),
						  arg, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
	{
		hash_search(sink_cache, &sink_id, HASH_REMOVE, NULL);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("batchkit sink %d does not exist", sink_id),
				 errhint("The sink was dropped while a capture still pointed at it.")));
	}
	{
		bool		isnull;
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;
		char	   *name = TextDatumGetCString(SPI_getbinval(t, d, 1, &isnull));

		strlcpy(e->name, name, NAMEDATALEN);
		e->max_queue = DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		e->on_full_wait = DatumGetBool(SPI_getbinval(t, d, 3, &isnull));
		e->on_full_timeout_ms = DatumGetInt32(SPI_getbinval(t, d, 4, &isnull));
	}
	e->valid = true;
	return e;
}

/*
 * Would bk_queue_check_backpressure() need SPI (and so the owner's rights) for
 * this sink? Not once its settings are cached and, with a max_queue, its depth
 * is known: then the capture trigger skips the user switch altogether.
 */
bool
bk_queue_needs_spi(int32 sink_id)
{
	SinkCacheEntry *e;
	BkSinkSlot *slot;

	bk_queue_init_backend();
	if (!OidIsValid(sink_relid_cached))
		return true;
	e = hash_search(sink_cache, &sink_id, HASH_FIND, NULL);
	if (e == NULL || !e->valid)
		return true;
	if (e->max_queue <= 0)
		return false;
	slot = bk_sink_slot(MyDatabaseId, sink_id, false);
	return slot == NULL || !slot->depth_known;
}

int32
bk_lookup_sink_id(const char *name, bool missing_ok)
{
	Datum		arg[1];
	Oid			argtypes[1] = {TEXTOID};
	int			rc;
	bool		isnull;

	arg[0] = CStringGetTextDatum(name);
	rc = SPI_execute_plan(bk_keep_plan(&lookup_plan, "SELECT sink_id FROM batchkit.sink WHERE name = $1",
									   1, argtypes), arg, NULL, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
	{
		if (missing_ok)
			return 0;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("batchkit sink \"%s\" does not exist", name)));
	}
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* ---- depth ----------------------------------------------------------------- */

static uint64
pending_for(int32 sink_id)
{
	uint64		n = 0;

	for (int i = 0; i < npending; i++)
		if (pending[i].sink_id == sink_id && pending[i].delta > 0)
			n += pending[i].delta;
	return n;
}

/* This transaction's net change to a sink's queue, not yet in the counter. */
static int64
pending_net(int32 sink_id)
{
	int64		n = 0;

	for (int i = 0; i < npending; i++)
		if (pending[i].sink_id == sink_id)
			n += pending[i].delta;
	return n;
}

/*
 * Rebuild a sink's depth counter (slot->queued) from the queue table, if it is
 * not known (inside SPI and a transaction, as the owner). The flush worker does
 * it the first time it serves a sink after start-up; a writer does it when its
 * sink has a max_queue and the worker has not got there yet.
 *
 * Race with writers, who add their delta to the counter at commit, after
 * their rows became visible, also while it is unknown. A writer is counted in
 * slot->committing from its PRE_COMMIT (before its rows can be in anyone's
 * snapshot) until its delta is applied; the delta and the rebuild's store are
 * written under slot->mutex, which counts them in slot->applied. The sum is
 * stored only if, after the snapshot, no writer is committing (so every commit
 * the snapshot sees has applied its delta) and nothing was applied since
 * before the snapshot (so the counter holds no commit the snapshot missed):
 * then the sum replaces the counter exactly. Otherwise the queue is summed
 * again; after a few attempts the counter stays unknown and the next caller
 * tries again (the flush worker does, every round).
 *
 * The calling transaction sees its own queued (and acknowledged) records,
 * which reach the counter only at its commit: they are taken out of the sum.
 * Returns the counter when it is known (the committed, unacknowledged records
 * of the sink), else the last sum (the same, as of a fresh snapshot), else 0.
 */
uint64
bk_queue_rebuild_depth(BkSinkSlot *slot, int32 sink_id)
{
	int64		sum = -1;

	for (int attempt = 0; attempt < 5 && !slot->depth_known; attempt++)
	{
		uint64		applied_before;
		Datum		arg[1];
		bool		isnull;

		if (attempt > 0)
			pg_usleep(200L);	/* let the committing writers apply their deltas */
		SpinLockAcquire(&slot->mutex);
		applied_before = slot->applied;
		SpinLockRelease(&slot->mutex);
		arg[0] = Int32GetDatum(sink_id);
		if (SPI_execute_snapshot(bk_keep_plan(&depth_plan,
											  "SELECT COALESCE(sum(nrecords - done_records), 0)::int8 "
											  "FROM batchkit.queue WHERE sink_id = $1", 1, int4type),
								 arg, NULL, GetLatestSnapshot(), InvalidSnapshot, true, false,
								 1) != SPI_OK_SELECT || SPI_processed != 1)
			break;
		sum = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
										  &isnull)) - pending_net(sink_id);
		sum = Max(sum, 0);
		pg_memory_barrier();
		if (pg_atomic_read_u32(&slot->committing) != 0)
			continue;
		SpinLockAcquire(&slot->mutex);
		if (slot->applied == applied_before)
		{
			pg_atomic_write_u64(&slot->queued, (uint64) sum);
			slot->applied++;
			slot->depth_known = true;
		}
		SpinLockRelease(&slot->mutex);
	}
	if (!slot->depth_known && sum >= 0)
		return (uint64) sum;
	return pg_atomic_read_u64(&slot->queued);
}

uint64
bk_sink_depth(int32 sink_id, bool *known)
{
	BkSinkSlot *slot = bk_sink_slot(MyDatabaseId, sink_id, true);

	*known = slot != NULL;
	return slot ? bk_queue_rebuild_depth(slot, sink_id) : 0;
}

/*
 * Apply the sink's max_queue policy before `adding` more records are queued by
 * this transaction (inside SPI, as the owner). on_full = 'error' fails at once;
 * 'wait' waits for the flush worker to make room, up to on_full_timeout_ms.
 */
void
bk_queue_check_backpressure(int32 sink_id, uint64 adding)
{
	SinkCacheEntry *e = sink_entry(sink_id);
	BkSinkSlot *slot;
	TimestampTz deadline;
	uint64		depth;

	if (e->max_queue <= 0)
		return;
	slot = bk_sink_slot(MyDatabaseId, sink_id, true);
	if (slot == NULL)
		return;					/* not preloaded, or out of slots (warned) */

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), e->on_full_timeout_ms);
	for (;;)
	{
		uint64		mine = pending_for(sink_id);

		depth = bk_queue_rebuild_depth(slot, sink_id);
		if (depth + mine + adding <= (uint64) e->max_queue)
			return;
		/* waiting cannot help when this transaction alone overflows the queue */
		if (!e->on_full_wait || mine + adding > (uint64) e->max_queue ||
			GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("batchkit sink \"%s\" is full: %llu rows queued, adding %llu would exceed "
					"max_queue %lld", e->name, (unsigned long long) (depth + pending_for(sink_id)),
					(unsigned long long) adding, (long long) e->max_queue),
			 e->on_full_wait ?
			 errdetail("Waited %d ms (on_full_timeout_ms) for the flush worker to make room.",
					   e->on_full_timeout_ms) : 0,
			 errhint("Check that the sink is running and not paused, or raise max_queue with "
					 "batchkit.alter_sink().")));
}

/* ---- writing a chunk --------------------------------------------------------- */

/*
 * The writer's path inserts the chunk straight into the current segment's
 * partition (heap insert + its one index), not through SPI: planning-free, no
 * partition routing, no permission checks (the queue is batchkit's own table,
 * and the caller already runs as its owner). Per single-row statement this was
 * most of the capture trigger's CPU. The current segment, the partitions' and
 * the sequence's OIDs are cached per backend and dropped by the same relcache
 * invalidation as the sink cache, which maintain_queue() sends when it rotates.
 * A stale segment is harmless: maintain_queue() truncates a segment only under
 * an ACCESS EXCLUSIVE lock after finding it empty, so a writer that still
 * inserts into an older segment merely keeps that segment from being truncated
 * until its chunks are consumed.
 */
#define BK_QUEUE_SEGMENTS 3
#define BK_QUEUE_NATTS 10
static int	cached_segment = -1;
static Oid	segment_relid[BK_QUEUE_SEGMENTS];
static Oid	chunk_seq_relid = InvalidOid;
static AttrNumber queue_attnum[BK_QUEUE_NATTS];	/* by column, see queue_columns */
static const char *const queue_columns[BK_QUEUE_NATTS] = {
	"segment", "chunk_id", "sink_id", "source", "nrecords", "nbytes", "txid",
	"captured_at", "done_records", "payload"
};

static void
forget_queue_relations(void)
{
	cached_segment = -1;
	for (int i = 0; i < BK_QUEUE_SEGMENTS; i++)
		segment_relid[i] = InvalidOid;
	chunk_seq_relid = InvalidOid;
}

static int
current_segment(void)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		isnull = true;
	Datum		d = (Datum) 0;

	if (cached_segment >= 0)
		return cached_segment;
	/* the invalidation that drops the cache is keyed on batchkit.sink's OID */
	if (!OidIsValid(sink_relid_cached))
		sink_relid_cached = batchkit_relid("sink");
	rel = table_open(batchkit_relid("queue_state"), AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		d = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (isnull || DatumGetInt16(d) < 0 || DatumGetInt16(d) >= BK_QUEUE_SEGMENTS)
		elog(ERROR, "batchkit.queue_state has no valid current_segment");
	cached_segment = DatumGetInt16(d);
	return cached_segment;
}

static Relation
open_segment(int seg)
{
	char		name[NAMEDATALEN];
	Relation	rel;
	Oid			relid;

	snprintf(name, sizeof(name), "queue_%d", seg);
	if (OidIsValid(segment_relid[seg]))
	{
		rel = try_table_open(segment_relid[seg], RowExclusiveLock);
		if (rel != NULL && strcmp(RelationGetRelationName(rel), name) == 0 &&
			RelationGetDescr(rel)->natts >= BK_QUEUE_NATTS)
			return rel;
		if (rel != NULL)
			table_close(rel, RowExclusiveLock);
	}
	/*
	 * A local copy: the lookups below may accept invalidation messages, and a
	 * catalog change (a sink created, a segment rotated) resets segment_relid[]
	 * from catalog_relcache_callback in the middle of the loop.
	 */
	relid = batchkit_relid(name);
	rel = table_open(relid, RowExclusiveLock);
	for (int i = 0; i < BK_QUEUE_NATTS; i++)
	{
		AttrNumber	a = get_attnum(relid, queue_columns[i]);

		if (a == InvalidAttrNumber)
			elog(ERROR, "batchkit.%s has no column \"%s\"", name, queue_columns[i]);
		queue_attnum[i] = a;
	}
	segment_relid[seg] = relid;
	return rel;
}

void
bk_queue_insert_chunk(int32 sink_id, Oid source, const char *data, int len, uint32 nrecords)
{
	int			seg = current_segment();
	Relation	rel = open_segment(seg);
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc0(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	bytea	   *payload;
	HeapTuple	tup;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	List	   *recheck;
	Oid			seq_relid;

	if (!OidIsValid(chunk_seq_relid))
		chunk_seq_relid = batchkit_relid("chunk_id_seq");
	seq_relid = chunk_seq_relid;	/* the callback may reset the static one */
	payload = (bytea *) palloc(VARHDRSZ + len);
	SET_VARSIZE(payload, VARHDRSZ + len);
	memcpy(VARDATA(payload), data, len);

	for (int i = 0; i < desc->natts; i++)
		nulls[i] = true;
#define SETCOL(i, v) (values[queue_attnum[i] - 1] = (v), nulls[queue_attnum[i] - 1] = false)
	SETCOL(0, Int16GetDatum((int16) seg));
	SETCOL(1, Int64GetDatum(nextval_internal(seq_relid, false)));
	SETCOL(2, Int32GetDatum(sink_id));
	if (OidIsValid(source))
		SETCOL(3, ObjectIdGetDatum(source));
	SETCOL(4, Int32GetDatum((int32) nrecords));
	SETCOL(5, Int32GetDatum(len));
	SETCOL(6, FullTransactionIdGetDatum(GetTopFullTransactionId()));
	SETCOL(7, TimestampTzGetDatum(GetCurrentTimestamp()));
	SETCOL(8, Int32GetDatum(0));
	SETCOL(9, PointerGetDatum(payload));
#undef SETCOL
	tup = heap_form_tuple(desc, values, nulls);

	/* heap insert (TOAST and the column's lz4 compression included) + the index */
	estate = CreateExecutorState();
	rri = makeNode(ResultRelInfo);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	slot = ExecInitExtraTupleSlot(estate, desc, &TTSOpsHeapTuple);
	ExecStoreHeapTuple(tup, slot, false);
	table_tuple_insert(rel, slot, GetCurrentCommandId(true), 0, NULL);
	recheck = ExecInsertIndexTuples(rri, slot, estate, false, false, NULL, NIL);
	list_free(recheck);
	ExecDropSingleTupleTableSlot(slot);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	table_close(rel, NoLock);	/* the lock is kept until the transaction ends */
	heap_freetuple(tup);
	pfree(payload);
	pfree(values);
	pfree(nulls);
}

/* ---- transaction bookkeeping ----------------------------------------------------- */

static void note_delta(int32 sink_id, int64 delta);

void
bk_queue_note_enqueued(int32 sink_id, uint64 nrecords)
{
	note_delta(sink_id, (int64) nrecords);
}

void
bk_queue_note_acked(int32 sink_id, uint64 nrecords)
{
	note_delta(sink_id, -(int64) nrecords);
}

static void
note_delta(int32 sink_id, int64 delta)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	bk_queue_init_backend();
	if (npending > 0 && pending[npending - 1].sink_id == sink_id &&
		pending[npending - 1].subid == subid)
	{
		pending[npending - 1].delta += delta;
		return;
	}
	if (npending == maxpending)
	{
		int			newmax = maxpending ? maxpending * 2 : 16;

		pending = pending ?
			repalloc(pending, sizeof(PendingCount) * newmax) :
			MemoryContextAlloc(TopMemoryContext, sizeof(PendingCount) * newmax);
		maxpending = newmax;
	}
	pending[npending].sink_id = sink_id;
	pending[npending].subid = subid;
	pending[npending].delta = delta;
	npending++;
}

/* Add or subtract, never below zero (a counter that is not rebuilt yet may be short). */
static void
apply_delta(BkSinkSlot *slot, int64 delta)
{
	uint64		cur;

	SpinLockAcquire(&slot->mutex);
	cur = pg_atomic_read_u64(&slot->queued);
	if (delta >= 0)
		cur += (uint64) delta;
	else
		cur = cur > (uint64) (-delta) ? cur - (uint64) (-delta) : 0;
	pg_atomic_write_u64(&slot->queued, cur);
	slot->applied++;
	SpinLockRelease(&slot->mutex);
}

/* Never below zero: a slot freed and taken again for the sink while we committed was zeroed. */
static void
leave_committing(BkSinkSlot *slot)
{
	uint32		cur = pg_atomic_read_u32(&slot->committing);

	while (cur > 0 && !pg_atomic_compare_exchange_u32(&slot->committing, &cur, cur - 1))
		;
}

/*
 * PRE_COMMIT: sum this transaction's deltas per sink and enter each sink's
 * `committing` (taking a slot if the sink has none yet, so that a rebuild
 * that starts before our COMMIT callback sees us). May fail: the transaction
 * then aborts.
 */
static void
mark_committing(void)
{
	if (maxmarks < npending)
	{
		marks = marks ?
			repalloc(marks, sizeof(CommitMark) * npending) :
			MemoryContextAlloc(TopMemoryContext, sizeof(CommitMark) * npending);
		maxmarks = npending;
	}
	for (int i = 0; i < npending; i++)
	{
		int			j;

		for (j = 0; j < nmarks; j++)
			if (marks[j].sink_id == pending[i].sink_id)
				break;
		if (j == nmarks)
		{
			marks[nmarks].sink_id = pending[i].sink_id;
			marks[nmarks].delta = 0;
			marks[nmarks].enqueued = false;
			marks[nmarks].slot = NULL;
			nmarks++;
		}
		marks[j].delta += pending[i].delta;
		marks[j].enqueued |= pending[i].delta > 0;
	}
	npending_marked = npending;
	for (int j = 0; j < nmarks; j++)
	{
		BkSinkSlot *slot = bk_sink_slot(MyDatabaseId, marks[j].sink_id, true);

		if (slot)
		{
			pg_atomic_fetch_add_u32(&slot->committing, 1);
			marks[j].slot = slot;
		}
	}
}

/* ABORT after PRE_COMMIT: leave `committing` without applying anything. */
static void
unmark_committing(void)
{
	for (int j = 0; j < nmarks; j++)
		if (marks[j].slot &&
			bk_sink_slot(MyDatabaseId, marks[j].sink_id, false) == marks[j].slot)
			leave_committing(marks[j].slot);
	nmarks = 0;
	npending_marked = 0;
}

/* The sink's worker last published it as paused (a stale answer only delays a wake-up to the naptime). */
static bool
sink_slot_paused(BkSinkSlot *slot)
{
	bool		paused;

	if (slot == NULL)
		return false;
	SpinLockAcquire(&slot->mutex);
	paused = strcmp(slot->state, "paused") == 0;
	SpinLockRelease(&slot->mutex);
	return paused;
}

static void
xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (npending > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that queued rows for batchkit")));
			break;
		case XACT_EVENT_PRE_COMMIT:
			if (npending > 0 && bk_shared != NULL)
				mark_committing();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (wake_launcher_at_commit)
				bk_wake_launcher();
			wake_launcher_at_commit = false;
			if (npending > 0 && bk_shared != NULL)
			{
				bool		wake = false;

				/*
				 * post-commit: nothing here may fail. Applied while the counter
				 * is unknown too: a rebuild that began before this stores its
				 * sum only if no delta was applied meanwhile (see "depth").
				 */
				for (int j = 0; j < nmarks; j++)
				{
					BkSinkSlot *slot = marks[j].slot;

					/* no slot at PRE_COMMIT (none free): nobody counts this sink */
					if (slot != NULL)
					{
						/*
						 * Unless it was freed since (sink or database dropped)
						 * and maybe taken by another sink: its reuse zeroes it.
						 */
						if (bk_sink_slot(MyDatabaseId, marks[j].sink_id, false) == slot)
						{
							if (marks[j].delta != 0)
								apply_delta(slot, marks[j].delta);
							leave_committing(slot);
						}
						else
							slot = NULL;
					}

					/*
					 * A paused sink's worker has nothing to do with new rows:
					 * not waking it spares each writer a signal (kill()) and
					 * the worker a loop per commit. resume_sink() wakes it.
					 */
					if (marks[j].enqueued && !sink_slot_paused(slot))
						wake = true;
				}
				/* deltas noted after PRE_COMMIT (none are expected) */
				for (int i = npending_marked; i < npending; i++)
				{
					BkSinkSlot *slot = bk_sink_slot(MyDatabaseId, pending[i].sink_id, false);

					if (slot)
						apply_delta(slot, pending[i].delta);
					if (pending[i].delta > 0 && !sink_slot_paused(slot))
						wake = true;
				}
				if (wake)
					wake_worker_at_commit = true;
			}
			nmarks = 0;
			npending_marked = 0;
			npending = 0;
			if (reload_worker_at_commit && bk_shared != NULL)
				bk_request_reload(MyDatabaseId);
			else if (wake_worker_at_commit && bk_shared != NULL)
				bk_wake_database(MyDatabaseId);
			wake_worker_at_commit = false;
			reload_worker_at_commit = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			owner_depth = 0;	/* the abort unwound the GUC nest levels */
			unmark_committing();
			npending = 0;
			wake_launcher_at_commit = false;
			wake_worker_at_commit = false;
			reload_worker_at_commit = false;
			break;
		default:
			break;
	}
}

static void
subxact_callback(SubXactEvent event, SubTransactionId mySubid,
				 SubTransactionId parentSubid, void *arg)
{
	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	/* owner contexts entered in the aborted subtransaction were unwound by the abort */
	while (owner_depth > 0 && owner_subid[owner_depth - 1] >= mySubid)
		owner_depth--;
	/* subtransaction ids grow: the aborted one and its children are >= mySubid */
	{
		int			keep = 0;

		for (int i = 0; i < npending; i++)
			if (pending[i].subid < mySubid)
				pending[keep++] = pending[i];
		npending = keep;
	}
}

/* Wake the launcher when this transaction commits (CREATE EXTENSION: start a worker). */
void
bk_wake_launcher_at_commit(void)
{
	bk_queue_init_backend();
	wake_launcher_at_commit = true;
}

/*
 * A catalog change (resume, alter, ...) makes this database's flush worker
 * re-read the catalog at commit, so it takes effect at once, not at the next
 * periodic reload.
 */
void
bk_wake_worker_at_commit(void)
{
	bk_queue_init_backend();
	reload_worker_at_commit = true;
}
