/*
 * capture_trigger.c — the C statement-level trigger that captures changed rows.
 *
 * batchkit.capture() installs, per (table, sink), one AFTER ... FOR EACH
 * STATEMENT trigger per event with a transition table (REFERENCING NEW/OLD
 * TABLE). The trigger reads the transition table once and packs its rows into
 * chunks (chunk.c) of at most batchkit.chunk_records records / ~1 MB, each
 * written with one queue insert: the writer pays a memcpy per row and one heap
 * insert per chunk instead of a trigger call, a jsonb build and an index entry
 * per row. Memory stays bounded for any statement size: one chunk is built at a
 * time, in a context reset after each chunk.
 *
 * Trigger arguments (set by batchkit.capture(), validated against
 * batchkit.capture so a hand-made trigger cannot inject into another sink):
 *   0 capture_id   1 sink_id   2 flags ("b" = include_before)
 *   3 key attnums "1,2"   4 emitted attnums "" (all) or "1,3"
 * The columns are taken from batchkit.capture (key_attnums, column_attnums:
 * column_list.c) when it has them, as every capture made by batchkit 0.2.0 does:
 * a dump writes them by name and a restore reads them back by name, whereas the
 * numbers in the arguments are those of the dumped database (pg_dump leaves
 * dropped columns out, so later ones are renumbered). Arguments 3 and 4 serve
 * captures recorded without them (made by 0.1.0, or by hand).
 *
 * An UPDATE that changes a key is captured as a delete of the old key followed
 * by an insert of the new one, so key-addressed sinks (Redis set/hset) never
 * keep a stale key.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "catalog/namespace.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/tuplestore.h"

#include "shmem/shmem.h"
#include "queue/queue.h"
#include "queue/chunk.h"
#include "capture/capture.h"

PG_FUNCTION_INFO_V1(batchkit_capture_trigger);

#define BK_CHUNK_MAX_BYTES (1024 * 1024)

/* Backend-local cache of validated (capture_id -> relid, sink_id, columns). */
typedef struct CaptureCacheEntry
{
	int32		capture_id;
	Oid			relid;
	int32		sink_id;
	bool		has_lists;		/* key/cols below come from batchkit.capture */
	int			nkeys;
	int16	   *keys;
	int			ncols;			/* -1: every column */
	int16	   *cols;
} CaptureCacheEntry;

static HTAB *capture_cache = NULL;

static CaptureCacheEntry *
capture_cached(int32 capture_id, Oid relid, int32 sink_id)
{
	CaptureCacheEntry *e;

	if (capture_cache == NULL)
		return NULL;
	e = hash_search(capture_cache, &capture_id, HASH_FIND, NULL);
	return (e != NULL && e->relid == relid && e->sink_id == sink_id) ? e : NULL;
}

/* Copy a column_list's numbers into TopMemoryContext; false if it is NULL. */
static bool
list_attnums(HeapTuple t, TupleDesc d, int col, Oid relid, int *n, int16 **out)
{
	bool		isnull;
	Datum		v = SPI_getbinval(t, d, col, &isnull);
	BkColumnList *cl;

	if (isnull)
		return false;
	cl = (BkColumnList *) PG_DETOAST_DATUM(v);
	if (cl->relid != relid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("batchkit capture of table \"%s\" records the columns of another table",
						get_rel_name(relid)),
				 errhint("Run batchkit.uncapture() and batchkit.capture() again.")));
	*n = cl->natts;
	*out = MemoryContextAlloc(TopMemoryContext, sizeof(int16) * Max(cl->natts, 1));
	memcpy(*out, cl->attnums, sizeof(int16) * cl->natts);
	return true;
}

/* Does this database's batchkit.capture record the columns (0.2.0 and later)? */
static bool
catalog_has_lists(void)
{
	Oid			nsp = get_namespace_oid("batchkit", false);

	return get_attnum(get_relname_relid("capture", nsp), "key_attnums") != InvalidAttrNumber;
}

static CaptureCacheEntry *
validate_capture(int32 capture_id, Oid relid, int32 sink_id)
{
	CaptureCacheEntry *e;
	bool		found;
	Datum		arg[1];
	Oid			argtypes[1] = {INT4OID};
	int			rc;
	bool		isnull;
	Oid			cap_relid = InvalidOid;
	int32		cap_sink = 0;
	bool		with_lists;
	bool		has_lists = false;
	int			nkeys = 0,
				ncols = -1;
	int16	   *keys = NULL,
			   *cols = NULL;

	if (capture_cache == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(int32);
		ctl.entrysize = sizeof(CaptureCacheEntry);
		ctl.hcxt = TopMemoryContext;
		capture_cache = hash_create("batchkit capture cache", 16, &ctl,
									HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	if ((e = capture_cached(capture_id, relid, sink_id)) != NULL)
		return e;

	arg[0] = Int32GetDatum(capture_id);
	with_lists = catalog_has_lists();
	rc = SPI_execute_with_args(with_lists ?
							   "SELECT source::oid, sink_id, key_attnums, column_attnums "
							   "FROM batchkit.capture WHERE capture_id = $1" :
							   "SELECT source::oid, sink_id FROM batchkit.capture "
							   "WHERE capture_id = $1", 1, argtypes, arg, NULL, true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		cap_relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												   1, &isnull));
		cap_sink = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											   2, &isnull));
	}
	if (cap_relid != relid || cap_sink != sink_id)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("trigger does not match a batchkit capture of table \"%s\"",
						get_rel_name(relid)),
				 errhint("Capture triggers are created by batchkit.capture(); drop this one.")));
	if (with_lists)
	{
		HeapTuple	t = SPI_tuptable->vals[0];
		TupleDesc	d = SPI_tuptable->tupdesc;

		has_lists = list_attnums(t, d, 3, relid, &nkeys, &keys);
		if (has_lists && !list_attnums(t, d, 4, relid, &ncols, &cols))
			ncols = -1;
	}
	e = hash_search(capture_cache, &capture_id, HASH_ENTER, &found);
	if (found)
	{
		if (e->keys)
			pfree(e->keys);
		if (e->cols)
			pfree(e->cols);
	}
	e->relid = relid;
	e->sink_id = sink_id;
	e->has_lists = has_lists;
	e->nkeys = nkeys;
	e->keys = keys;
	e->ncols = ncols;
	e->cols = cols;
	return e;
}

static void pg_attribute_noreturn()
column_gone(const char *what, Relation rel)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("a %s column captured by batchkit no longer exists in table \"%s\"",
					what, RelationGetRelationName(rel)),
			 errhint("Run batchkit.uncapture() and batchkit.capture() again.")));
}

/* A 1-based bitmap over the relation's attributes from attribute numbers; n < 0: all. */
static void
map_attnums(const int16 *attnums, int n, TupleDesc desc, bool *map, const char *what,
			Relation rel)
{
	memset(map, 0, sizeof(bool) * (desc->natts + 1));
	if (n < 0)
	{
		for (int i = 1; i <= desc->natts; i++)
			map[i] = !TupleDescAttr(desc, i - 1)->attisdropped;
		return;
	}
	for (int i = 0; i < n; i++)
	{
		int			a = attnums[i];

		if (a < 1 || a > desc->natts || TupleDescAttr(desc, a - 1)->attisdropped)
			column_gone(what, rel);
		map[a] = true;
	}
}

/* Parse "1,2,3" into a 1-based bitmap over the relation's attributes. */
static void
parse_attnums(const char *list, TupleDesc desc, bool *map, bool all_if_empty, const char *what,
			  Relation rel)
{
	const char *p = list;

	memset(map, 0, sizeof(bool) * (desc->natts + 1));
	if (*p == '\0' && all_if_empty)
	{
		for (int i = 1; i <= desc->natts; i++)
			map[i] = !TupleDescAttr(desc, i - 1)->attisdropped;
		return;
	}
	while (*p)
	{
		char	   *end;
		long		n = strtol(p, &end, 10);

		if (end == p || n < 1 || n > desc->natts || TupleDescAttr(desc, n - 1)->attisdropped)
			column_gone(what, rel);
		map[n] = true;
		p = (*end == ',') ? end + 1 : end;
	}
}

/* Did an UPDATE change any key column? Compares the stored (binary) values. */
static bool
key_changed(TupleTableSlot *oldslot, TupleTableSlot *newslot, TupleDesc desc, const bool *is_key)
{
	for (int i = 1; i <= desc->natts; i++)
	{
		bool		n1,
					n2;
		Datum		d1,
					d2;
		Form_pg_attribute att;

		if (!is_key[i])
			continue;
		att = TupleDescAttr(desc, i - 1);
		d1 = slot_getattr(oldslot, i, &n1);
		d2 = slot_getattr(newslot, i, &n2);
		if (n1 != n2)
			return true;
		if (!n1 && !datumIsEqual(d1, d2, att->attbyval, att->attlen))
			return true;
	}
	return false;
}

typedef struct CaptureState
{
	BkChunkWriter w;
	int32		sink_id;
	Oid			relid;
	uint64		total;
	MemoryContext chunk_cxt;
} CaptureState;

static void
flush_chunk(CaptureState *cs)
{
	if (cs->w.nrecords == 0)
		return;
	bk_chunk_finish(&cs->w);
	bk_queue_insert_chunk(cs->sink_id, cs->relid, cs->w.buf.data, cs->w.buf.len, cs->w.nrecords);
	cs->total += cs->w.nrecords;
	bk_chunk_reset(&cs->w);
	MemoryContextReset(cs->chunk_cxt);
}

static void
add_row(CaptureState *cs, char op, TupleDesc desc, TupleTableSlot *before, TupleTableSlot *after)
{
	MemoryContext old = MemoryContextSwitchTo(cs->chunk_cxt);
	bool		sf;
	MinimalTuple b = before ? ExecFetchSlotMinimalTuple(before, &sf) : NULL;
	MinimalTuple a = after ? ExecFetchSlotMinimalTuple(after, &sf) : NULL;

	bk_chunk_add_row(&cs->w, op, desc, b, a);
	MemoryContextSwitchTo(old);
	if (cs->w.nrecords >= (uint32) bk_chunk_records || cs->w.buf.len >= BK_CHUNK_MAX_BYTES)
		flush_chunk(cs);
}

Datum
batchkit_capture_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *td;
	Trigger    *tg;
	Relation	rel;
	TupleDesc	desc;
	int32		capture_id,
				sink_id;
	bool		include_before;
	bool	   *is_key,
			   *is_emitted;
	Tuplestorestate *oldtab,
			   *newtab;
	int64		n;
	Oid			save_userid = InvalidOid;
	int			save_sec = 0;
	bool		use_spi;
	CaptureCacheEntry *entry;
	CaptureState cs;
	TupleTableSlot *oldslot = NULL,
			   *newslot = NULL;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("batchkit capture function was not called by the trigger manager")));
	td = (TriggerData *) fcinfo->context;
	tg = td->tg_trigger;
	if (!TRIGGER_FIRED_AFTER(td->tg_event) || !TRIGGER_FIRED_FOR_STATEMENT(td->tg_event) ||
		tg->tgnargs != 5)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("batchkit capture trigger \"%s\" must be AFTER ... FOR EACH STATEMENT "
						"with 5 arguments", tg->tgname),
				 errhint("Capture triggers are created by batchkit.capture().")));

	rel = td->tg_relation;
	desc = RelationGetDescr(rel);
	oldtab = td->tg_oldtable;
	newtab = td->tg_newtable;
	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
		n = newtab ? tuplestore_tuple_count(newtab) : -1;
	else
		n = oldtab ? tuplestore_tuple_count(oldtab) : -1;
	if (n < 0)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("batchkit capture trigger \"%s\" has no transition table", tg->tgname)));
	if (n == 0)
		return PointerGetDatum(NULL);

	capture_id = pg_strtoint32(tg->tgargs[0]);
	sink_id = pg_strtoint32(tg->tgargs[1]);
	include_before = strchr(tg->tgargs[2], 'b') != NULL;

	/*
	 * The catalog lookups (on a cache miss) run SQL as the queue's owner; once
	 * cached, nothing here needs SPI or the owner's rights (the chunk insert
	 * is a direct heap insert), so the user switch is skipped.
	 */
	bk_queue_init_backend();
	entry = capture_cached(capture_id, RelationGetRelid(rel), sink_id);
	use_spi = entry == NULL || bk_queue_needs_spi(sink_id);
	if (use_spi)
	{
		bk_begin_as_owner(&save_userid, &save_sec);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "batchkit: SPI_connect failed");
		entry = validate_capture(capture_id, RelationGetRelid(rel), sink_id);
	}
	is_key = palloc(sizeof(bool) * (desc->natts + 1));
	is_emitted = palloc(sizeof(bool) * (desc->natts + 1));
	if (entry->has_lists)
	{
		map_attnums(entry->keys, entry->nkeys, desc, is_key, "key", rel);
		map_attnums(entry->cols, entry->ncols, desc, is_emitted, "captured", rel);
	}
	else
	{
		parse_attnums(tg->tgargs[3], desc, is_key, false, "key", rel);
		parse_attnums(tg->tgargs[4], desc, is_emitted, true, "captured", rel);
	}
	bk_queue_check_backpressure(sink_id, (uint64) n);

	memset(&cs, 0, sizeof(cs));
	cs.sink_id = sink_id;
	cs.relid = RelationGetRelid(rel);
	cs.chunk_cxt = AllocSetContextCreate(CurrentMemoryContext, "batchkit capture chunk",
										 ALLOCSET_DEFAULT_SIZES);
	bk_chunk_begin_rows(&cs.w, rel, is_key, is_emitted);
	if (include_before)
		((BkChunkHeader *) cs.w.buf.data)->flags |= BK_CHUNK_FLAG_INCLUDE_BEFORE;

	if (oldtab)
	{
		oldslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
		tuplestore_rescan(oldtab);
	}
	if (newtab)
	{
		newslot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
		tuplestore_rescan(newtab);
	}

	if (TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		while (tuplestore_gettupleslot(newtab, true, false, newslot))
			add_row(&cs, BK_REC_INSERT, desc, NULL, newslot);
	}
	else if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		while (tuplestore_gettupleslot(oldtab, true, false, oldslot))
			add_row(&cs, BK_REC_DELETE, desc, oldslot, NULL);
	}
	else if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		/* the old and new transition tables hold the rows of each update in step */
		while (tuplestore_gettupleslot(oldtab, true, false, oldslot))
		{
			if (!tuplestore_gettupleslot(newtab, true, false, newslot))
				elog(ERROR, "batchkit: transition tables of an UPDATE differ in length");
			if (key_changed(oldslot, newslot, desc, is_key))
			{
				add_row(&cs, BK_REC_DELETE, desc, oldslot, NULL);
				add_row(&cs, BK_REC_INSERT, desc, NULL, newslot);
			}
			else
				add_row(&cs, BK_REC_UPDATE, desc, include_before ? oldslot : NULL, newslot);
		}
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("batchkit capture trigger fired for an unsupported event")));
	flush_chunk(&cs);

	if (oldslot)
		ExecDropSingleTupleTableSlot(oldslot);
	if (newslot)
		ExecDropSingleTupleTableSlot(newslot);
	if (use_spi)
	{
		SPI_finish();
		bk_end_as_owner(save_userid, save_sec);
	}
	bk_queue_note_enqueued(sink_id, cs.total);
	return PointerGetDatum(NULL);
}
