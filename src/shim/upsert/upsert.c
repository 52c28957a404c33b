/*
 * upsert.c — SQL entry points of batchkit.batch_upsert and the plan of a call.
 *
 *   batch_upsert(target, rows jsonb, ...)        batchkit_upsert_jsonb
 *   batch_upsert(target, rows anyarray, ...)     batchkit_upsert_array
 *   batch_upsert_from(target, source, ...)       batchkit_upsert_from
 *
 * A call (jsonb and array input):
 *   1. read the target's columns and usable unique indexes; pass 1 over the
 *      input finds its columns and each row's signature (columns it gives);
 *   2. the core resolves conflict/update columns (validation, messages);
 *   3. the conflict key of every row is converted to the column type; rows are
 *      sorted by key with the arbiter index's own comparators, and only the
 *      last occurrence of each key is kept (so "last wins", and every session
 *      touches keys in ascending order, which keeps concurrent calls from
 *      deadlocking each other);
 *   4. chunk by chunk (chunk_size unique rows, ascending keys), the rows are
 *      converted into a tuplestore registered as an ephemeral named relation
 *      and merged into the target with one MERGE (matched: UPDATE, not
 *      matched: INSERT) — a single join instead of one speculative insertion
 *      per row — falling back to INSERT ... ON CONFLICT when another session
 *      raced us (upsert_exec.c).
 * Everything runs with the caller's rights (SECURITY INVOKER, executor
 * permission checks, RLS, triggers); an error anywhere aborts the caller's
 * (sub)transaction, so a rejected call changes nothing.
 *
 * Memory: the input datum itself, one key per row and one int per row (for the
 * sort) for the whole call; converted rows only for the current chunk (the
 * tuplestore spills to disk beyond work_mem).
 *
 * No C++ object is ever alive here: the core is called through its C ABI and
 * returns status values; ereport happens after it returned.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_index.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "parser/parse_coerce.h"
#include "portability/instr_time.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/sortsupport.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"

#include "batchkit/upsert.h"
#include "upsert/upsert.h"

PG_FUNCTION_INFO_V1(batchkit_upsert_jsonb);
PG_FUNCTION_INFO_V1(batchkit_upsert_array);
PG_FUNCTION_INFO_V1(batchkit_upsert_text);
PG_FUNCTION_INFO_V1(batchkit_upsert_from);

#define BK_ENR_NAME "batchkit_upsert_rows"

typedef struct BkCall
{
	BkTarget	t;
	bk_upsert_plan plan;
	Oid			arbiter;		/* the unique index matching the conflict columns */
	int			chunk_size;
	uint64		inserted;
	uint64		updated;
	bool		raced;
	instr_time	start;
} BkCall;

/* ---------------------------------------------------------------- target */

static void
target_open(BkTarget *t, Oid relid)
{
	Relation	rel;
	TupleDesc	desc;
	List	   *indexes;
	ListCell   *lc;
	int			n = 0;

	rel = relation_open(relid, RowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel)),
				 errdetail("batch_upsert writes to ordinary and partitioned tables.")));
	t->rel = rel;
	t->relid = relid;
	t->schema = get_namespace_name(RelationGetNamespace(rel));
	t->name = pstrdup(RelationGetRelationName(rel));
	desc = RelationGetDescr(rel);
	t->attnums = palloc(sizeof(AttrNumber) * Max(desc->natts, 1));
	t->colnames = palloc(sizeof(char *) * Max(desc->natts, 1));
	t->colflags = palloc0(sizeof(int) * Max(desc->natts, 1));
	t->typids = palloc(sizeof(Oid) * Max(desc->natts, 1));
	t->typmods = palloc(sizeof(int32) * Max(desc->natts, 1));
	t->collations = palloc(sizeof(Oid) * Max(desc->natts, 1));
	t->conv = palloc0(sizeof(BkColumnConv) * Max(desc->natts, 1));
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped)
			continue;
		t->attnums[n] = att->attnum;
		t->colnames[n] = pstrdup(NameStr(att->attname));
		if (att->attgenerated == ATTRIBUTE_GENERATED_STORED)
			t->colflags[n] |= BK_UPSERT_COL_GENERATED;
		if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
			t->colflags[n] |= BK_UPSERT_COL_IDENTITY_ALWAYS;
		t->typids[n] = att->atttypid;
		t->typmods[n] = att->atttypmod;
		t->collations[n] = att->attcollation;
		n++;
	}
	t->ncols = n;

	/* Usable arbiters: valid, immediate, non-partial unique indexes on plain columns. */
	indexes = RelationGetIndexList(rel);
	t->unique_ncols = palloc(sizeof(int) * Max(list_length(indexes), 1));
	t->unique_cols = palloc(sizeof(int *) * Max(list_length(indexes), 1));
	t->unique_oids = palloc(sizeof(Oid) * Max(list_length(indexes), 1));
	t->nunique = 0;
	t->npk = 0;
	t->pk = NULL;
	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index idx;
		int		   *cols;
		bool		plain = true;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		idx = (Form_pg_index) GETSTRUCT(tup);
		if (!idx->indisunique || !idx->indimmediate || !idx->indisvalid ||
			idx->indisexclusion ||
			!heap_attisnull(tup, Anum_pg_index_indpred, NULL) ||
			!heap_attisnull(tup, Anum_pg_index_indexprs, NULL))
		{
			ReleaseSysCache(tup);
			continue;
		}
		cols = palloc(sizeof(int) * idx->indnkeyatts);
		for (int k = 0; k < idx->indnkeyatts; k++)
		{
			AttrNumber	attnum = idx->indkey.values[k];

			cols[k] = -1;
			for (int c = 0; c < t->ncols; c++)
				if (t->attnums[c] == attnum)
					cols[k] = c;
			if (cols[k] < 0)
				plain = false;
		}
		if (plain)
		{
			t->unique_ncols[t->nunique] = idx->indnkeyatts;
			t->unique_cols[t->nunique] = cols;
			t->unique_oids[t->nunique] = indexoid;
			if (idx->indisprimary)
			{
				t->npk = idx->indnkeyatts;
				t->pk = cols;
			}
			t->nunique++;
		}
		ReleaseSysCache(tup);
	}
}

static void
target_close(BkTarget *t)
{
	/* keep the lock until the end of the transaction, as statements do */
	relation_close(t->rel, NoLock);
}

/* text[] -> array of C strings; n = -1 for a NULL array. */
static const char **
text_array_to_cstrings(FunctionCallInfo fcinfo, int argno, int *n)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	const char **out;

	if (PG_ARGISNULL(argno))
	{
		*n = -1;
		return NULL;
	}
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("column lists must be one-dimensional arrays")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &nelems);
	out = palloc(sizeof(char *) * Max(nelems, 1));
	for (int i = 0; i < nelems; i++)
		out[i] = nulls[i] ? NULL : TextDatumGetCString(elems[i]);
	*n = nelems;
	return out;
}

static int
plan_errcode(bk_upsert_error e)
{
	switch (e)
	{
		case BK_UPSERT_ERR_UNDEFINED_COLUMN:
			return ERRCODE_UNDEFINED_COLUMN;
		case BK_UPSERT_ERR_NO_CONFLICT_TARGET:
			return ERRCODE_INVALID_COLUMN_REFERENCE;
		case BK_UPSERT_ERR_GENERATED:
			return ERRCODE_GENERATED_ALWAYS;
		case BK_UPSERT_ERR_DUPLICATE_COLUMN:
			return ERRCODE_DUPLICATE_COLUMN;
		case BK_UPSERT_ERR_INVALID_PARAMETER:
		default:
			return ERRCODE_INVALID_PARAMETER_VALUE;
	}
}

/* Step 2: the core resolves the options against the table and the input. */
static void
resolve_plan(BkCall *call, FunctionCallInfo fcinfo, int conflict_arg, int update_arg)
{
	BkTarget   *t = &call->t;
	bk_upsert_table table;
	bk_upsert_options opts;
	bk_status	st;
	bk_code		rc;

	opts.conflict = text_array_to_cstrings(fcinfo, conflict_arg, &opts.nconflict);
	opts.update = text_array_to_cstrings(fcinfo, update_arg, &opts.nupdate);
	table.schema = t->schema;
	table.name = t->name;
	table.ncolumns = t->ncols;
	table.columns = (const char *const *) t->colnames;
	table.column_flags = t->colflags;
	table.npk = t->npk;
	table.pk = t->pk;
	table.nunique = t->nunique;
	table.unique_ncols = t->unique_ncols;
	table.unique_cols = (const int *const *) t->unique_cols;
	call->plan.conflict = palloc(sizeof(int) * Max(t->ncols, 1));
	call->plan.update = palloc(sizeof(int) * Max(t->ncols, 1));
	rc = bk_upsert_resolve(&table, &opts, &call->plan, &st);
	if (rc != BK_OK)
		ereport(ERROR,
				(errcode(rc == BK_INVALID_ARGUMENT ? plan_errcode(call->plan.error)
						 : ERRCODE_INTERNAL_ERROR),
				 errmsg("%s", st.message),
				 call->plan.detail[0] ? errdetail("%s", call->plan.detail) : 0));

	/* the arbiter index: the unique index whose columns are the conflict set */
	call->arbiter = InvalidOid;
	for (int u = 0; u < t->nunique && !OidIsValid(call->arbiter); u++)
	{
		bool		same = t->unique_ncols[u] == call->plan.nconflict;

		for (int k = 0; same && k < call->plan.nconflict; k++)
		{
			bool		found = false;

			for (int j = 0; j < t->unique_ncols[u]; j++)
				if (t->unique_cols[u][j] == call->plan.conflict[k])
					found = true;
			same = found;
		}
		if (same)
			call->arbiter = t->unique_oids[u];
	}
	if (!OidIsValid(call->arbiter))
		elog(ERROR, "batchkit: no arbiter index for the resolved conflict columns");
}

static char *
build_sql(bk_upsert_sql_spec *spec, bk_upsert_sql_kind kind)
{
	bk_status	st;
	size_t		len = bk_upsert_build_sql(spec, kind, NULL, 0, &st);
	char	   *buf;

	if (len == (size_t) -1)
		elog(ERROR, "batchkit: could not build the upsert statement: %s", st.message);
	buf = palloc(len + 1);
	if (bk_upsert_build_sql(spec, kind, buf, len + 1, &st) == (size_t) -1)
		elog(ERROR, "batchkit: could not build the upsert statement: %s", st.message);
	return buf;
}

static bk_upsert_table
core_table(BkTarget *t)
{
	bk_upsert_table table;

	table.schema = t->schema;
	table.name = t->name;
	table.ncolumns = t->ncols;
	table.columns = (const char *const *) t->colnames;
	table.column_flags = t->colflags;
	table.npk = t->npk;
	table.pk = t->pk;
	table.nunique = t->nunique;
	table.unique_ncols = t->unique_ncols;
	table.unique_cols = (const int *const *) t->unique_cols;
	return table;
}

/* ---------------------------------------------------------------- keys: sort and dedup */

typedef struct KeySort
{
	Datum	   *keys;			/* nrows * nkeys */
	int			nkeys;
	SortSupport ssup;
} KeySort;

static int
key_compare(const void *a, const void *b, void *arg)
{
	KeySort    *ks = arg;
	int32		ra = *(const int32 *) a;
	int32		rb = *(const int32 *) b;

	for (int k = 0; k < ks->nkeys; k++)
	{
		int			r = ApplySortComparator(ks->keys[(int64) ra * ks->nkeys + k], false,
											ks->keys[(int64) rb * ks->nkeys + k], false,
											&ks->ssup[k]);

		if (r != 0)
			return r;
	}
	/* same key: the later row first, so it is the one kept */
	return ra < rb ? 1 : (ra > rb ? -1 : 0);
}

static bool
keys_equal(KeySort *ks, int32 ra, int32 rb)
{
	for (int k = 0; k < ks->nkeys; k++)
		if (ApplySortComparator(ks->keys[(int64) ra * ks->nkeys + k], false,
								ks->keys[(int64) rb * ks->nkeys + k], false,
								&ks->ssup[k]) != 0)
			return false;
	return true;
}

/*
 * Step 3: convert every row's key, sort by key with the arbiter's comparators
 * and keep the last occurrence of each key. Returns the kept rows in key order.
 */
static int32 *
dedup_rows(BkCall *call, BkInput *in, const int32 *sig_of_row, int32 *nkept)
{
	BkTarget   *t = &call->t;
	int			nk = call->plan.nconflict;
	int64		n = in->nrows;
	KeySort		ks;
	int32	   *order;
	bool	   *knulls = palloc(sizeof(bool) * nk);
	Relation	index;
	int32		kept = 0;
	MemoryContext cxt = CurrentMemoryContext;

	ks.nkeys = nk;
	ks.keys = MemoryContextAllocHuge(cxt, sizeof(Datum) * n * nk);
	ks.ssup = palloc0(sizeof(SortSupportData) * nk);
	order = MemoryContextAllocHuge(cxt, sizeof(int32) * Max(n, 1));

	PG_TRY();
	{
		for (int64 i = 0; i < n; i++)
		{
			const bool *present = in->signature(in, sig_of_row[i]);

			for (int k = 0; k < nk; k++)
				if (!present[call->plan.conflict[k]])
					ereport(ERROR,
							(errcode(ERRCODE_NOT_NULL_VIOLATION),
							 errmsg("row %lld has no value for conflict column \"%s\"",
									(long long) i + 1, t->colnames[call->plan.conflict[k]])));
			in->values(in, t, i, call->plan.conflict, nk, &ks.keys[i * nk], knulls);
			for (int k = 0; k < nk; k++)
				if (knulls[k])
					ereport(ERROR,
							(errcode(ERRCODE_NOT_NULL_VIOLATION),
							 errmsg("row %lld: conflict column \"%s\" is null",
									(long long) i + 1, t->colnames[call->plan.conflict[k]])));
			order[i] = (int32) i;
		}
	}
	PG_CATCH();
	{
		if (bk_input_pos.row >= 0)
		{
			MemoryContextSwitchTo(cxt);
			bk_upsert_rethrow_at_position();
		}
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* the arbiter's own ordering: its equality is what "same key" means */
	index = index_open(call->arbiter, AccessShareLock);
	for (int k = 0; k < nk; k++)
	{
		int			col = call->plan.conflict[k];
		int			pos = -1;

		for (int j = 0; j < IndexRelationGetNumberOfKeyAttributes(index); j++)
			if (index->rd_index->indkey.values[j] == t->attnums[col])
				pos = j;
		Assert(pos >= 0);
		ks.ssup[k].ssup_cxt = cxt;
		ks.ssup[k].ssup_collation = index->rd_indcollation[pos];
		ks.ssup[k].ssup_nulls_first = false;
		ks.ssup[k].ssup_attno = pos + 1;
		ks.ssup[k].abbreviate = false;
		PrepareSortSupportFromIndexRel(index, BTLessStrategyNumber, &ks.ssup[k]);
		/* the index may be DESC: the order does not matter, equality does */
		ks.ssup[k].ssup_reverse = false;
	}
	index_close(index, AccessShareLock);

	if (n > 1)
		qsort_arg(order, n, sizeof(int32), key_compare, &ks);
	for (int64 i = 0; i < n; i++)
		if (kept == 0 || !keys_equal(&ks, order[kept - 1], order[i]))
			order[kept++] = order[i];
	*nkept = kept;
	return order;
}

/* ---------------------------------------------------------------- chunks */

/* Step 4 for the rows of one signature in a chunk: tuplestore, MERGE. */
static void
run_group(BkCall *call, BkInput *in, const bool *present, const int32 *rows, int32 nrows,
		  MemoryContext rowcxt)
{
	BkTarget   *t = &call->t;
	int		   *cols = palloc(sizeof(int) * t->ncols);
	int			ncols = 0;
	TupleDesc	desc;
	Tuplestorestate *ts;
	Datum	   *values;
	bool	   *nulls;
	EphemeralNamedRelation enr;
	QueryEnvironment *qenv;
	bk_upsert_table table = core_table(t);
	bk_upsert_sql_spec spec;
	char	   *merge_sql;
	char	   *fallback_sql;
	BkStmtResult res;
	MemoryContext cxt = CurrentMemoryContext;

	for (int c = 0; c < t->ncols; c++)
		if (present[c])
			cols[ncols++] = c;
	desc = CreateTemplateTupleDesc(ncols);
	for (int i = 0; i < ncols; i++)
	{
		TupleDescInitEntry(desc, i + 1, t->colnames[cols[i]], t->typids[cols[i]],
						   t->typmods[cols[i]], 0);
		TupleDescInitEntryCollation(desc, i + 1, t->collations[cols[i]]);
	}
	values = palloc(sizeof(Datum) * ncols);
	nulls = palloc(sizeof(bool) * ncols);
	ts = tuplestore_begin_heap(false, false, work_mem);

	PG_TRY();
	{
		for (int32 r = 0; r < nrows; r++)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);

			in->values(in, t, rows[r], cols, ncols, values, nulls);
			MemoryContextSwitchTo(old);
			tuplestore_putvalues(ts, desc, values, nulls);
			MemoryContextReset(rowcxt);
		}
	}
	PG_CATCH();
	{
		if (bk_input_pos.row >= 0)
		{
			MemoryContextSwitchTo(cxt);
			bk_upsert_rethrow_at_position();
		}
		PG_RE_THROW();
	}
	PG_END_TRY();

	enr = palloc0(sizeof(EphemeralNamedRelationData));
	enr->md.name = BK_ENR_NAME;
	enr->md.reliddesc = InvalidOid;
	enr->md.tupdesc = desc;
	enr->md.enrtype = ENR_NAMED_TUPLESTORE;
	enr->md.enrtuples = nrows;
	enr->reldata = ts;
	qenv = create_queryEnv();
	register_ENR(qenv, enr);

	memset(&spec, 0, sizeof(spec));
	spec.table = &table;
	spec.plan = &call->plan;
	spec.ncolumns = ncols;
	spec.columns = cols;
	spec.source_name = BK_ENR_NAME;
	fallback_sql = build_sql(&spec, BK_UPSERT_SQL_ON_CONFLICT);
	if (t->rel->rd_rel->relhasrules)
	{
		/* MERGE refuses relations with rules; ON CONFLICT says what plain SQL says */
		bk_exec_statement(fallback_sql, qenv, BK_UPSERT_SQL_ON_CONFLICT, &res);
	}
	else
	{
		merge_sql = build_sql(&spec, BK_UPSERT_SQL_MERGE);
		if (bk_exec_merge_or_fallback(merge_sql, fallback_sql, qenv, &res))
			call->raced = true;
	}
	call->inserted += res.inserted;
	call->updated += res.updated;
	tuplestore_end(ts);
}

static void
run_chunks(BkCall *call, BkInput *in, const int32 *sig_of_row, const int32 *rows, int32 nrows)
{
	MemoryContext chunkcxt = AllocSetContextCreate(CurrentMemoryContext,
												   "batchkit upsert chunk",
												   ALLOCSET_DEFAULT_SIZES);
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext,
												 "batchkit upsert row",
												 ALLOCSET_DEFAULT_SIZES);
	int32	   *group = palloc(sizeof(int32) * Min(nrows, call->chunk_size) + sizeof(int32));
	bool	   *done = palloc0(Max(in->nsignatures, 1));

	for (int32 start = 0; start < nrows; start += call->chunk_size)
	{
		int32		end = Min((int64) start + call->chunk_size, nrows);
		int32		sig0 = sig_of_row[rows[start]];
		bool		uniform = true;
		MemoryContext old;

		CHECK_FOR_INTERRUPTS();
		for (int32 i = start; i < end && uniform; i++)
			uniform = sig_of_row[rows[i]] == sig0;
		old = MemoryContextSwitchTo(chunkcxt);
		if (uniform)
			run_group(call, in, in->signature(in, sig0), rows + start, end - start, rowcxt);
		else
		{
			/* rows giving different columns: one statement per column set */
			memset(done, 0, Max(in->nsignatures, 1));
			for (int32 i = start; i < end; i++)
			{
				int32		sig = sig_of_row[rows[i]];
				int32		ng = 0;

				if (done[sig])
					continue;
				done[sig] = true;
				for (int32 j = i; j < end; j++)
					if (sig_of_row[rows[j]] == sig)
						group[ng++] = rows[j];
				run_group(call, in, in->signature(in, sig), group, ng, rowcxt);
			}
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(chunkcxt);
	}
	MemoryContextDelete(rowcxt);
	MemoryContextDelete(chunkcxt);
}

/* ---------------------------------------------------------------- entry points */

static Datum
result_datum(FunctionCallInfo fcinfo, uint64 inserted, uint64 updated)
{
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "batchkit: return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = Int64GetDatum((int64) inserted);
	values[1] = Int64GetDatum((int64) updated);
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

static void
check_args(FunctionCallInfo fcinfo, int chunk_arg)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target must not be NULL")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rows must not be NULL")));
	if (chunk_arg >= 0 && (PG_ARGISNULL(chunk_arg) || PG_GETARG_INT32(chunk_arg) < 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("chunk_size must be a positive number of rows")));
}

static Datum
upsert_input(FunctionCallInfo fcinfo, bool is_array, bool is_text)
{
	BkCall		call;
	BkInput		in;
	int32	   *sig_of_row;
	int32	   *rows;
	int32		nkept;
	instr_time	elapsed;
	MemoryContext callcxt;
	MemoryContext old;

	check_args(fcinfo, 4);
	memset(&call, 0, sizeof(call));
	memset(&in, 0, sizeof(in));
	INSTR_TIME_SET_CURRENT(call.start);
	call.chunk_size = PG_GETARG_INT32(4);
	callcxt = AllocSetContextCreate(CurrentMemoryContext, "batchkit upsert",
									ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(callcxt);

	target_open(&call.t, PG_GETARG_OID(0));
	if (is_array)
		bk_input_init_array(&in, PG_GETARG_DATUM(1), &call.t);
	else if (is_text)
		bk_input_init_jsonb(&in, DirectFunctionCall1(jsonb_in,
													 CStringGetDatum(TextDatumGetCString(PG_GETARG_DATUM(1)))));
	else
		bk_input_init_jsonb(&in, PG_GETARG_DATUM(1));
	if (in.nrows > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("batch_upsert takes at most %d rows per call", PG_INT32_MAX)));
	sig_of_row = MemoryContextAllocHuge(callcxt, sizeof(int32) * Max(in.nrows, 1));
	in.scan(&in, &call.t, sig_of_row);
	if (in.nrows > 0)
	{
		resolve_plan(&call, fcinfo, 2, 3);
		for (int c = 0; c < call.t.ncols; c++)
			if (call.t.colflags[c] & BK_UPSERT_COL_INPUT)
				bk_conv_prepare(&call.t, c);
		rows = dedup_rows(&call, &in, sig_of_row, &nkept);
		run_chunks(&call, &in, sig_of_row, rows, nkept);
	}
	target_close(&call.t);

	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, call.start);
	bk_upsert_stats_record(call.t.relid, (uint64) in.nrows, call.inserted, call.updated,
						   INSTR_TIME_GET_MILLISEC(elapsed), call.raced);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(callcxt);
	return result_datum(fcinfo, call.inserted, call.updated);
}

Datum
batchkit_upsert_jsonb(PG_FUNCTION_ARGS)
{
	return upsert_input(fcinfo, false, false);
}

/* An untyped literal or text parameter: read as JSON (see 30_upsert.sql). */
Datum
batchkit_upsert_text(PG_FUNCTION_ARGS)
{
	return upsert_input(fcinfo, false, true);
}

Datum
batchkit_upsert_array(PG_FUNCTION_ARGS)
{
	return upsert_input(fcinfo, true, false);
}

/*
 * A temporary staging table that was never analyzed (autovacuum never visits
 * temporary tables, and TRUNCATE forgets the statistics) leaves the planner
 * guessing 200 distinct keys: a million-row batch then gets a nested loop of
 * index probes instead of one merge join with the target's index. ANALYZE it
 * first when it is big enough for that to matter. The table is private to
 * this session, so nothing another session sees changes. Tables of other
 * sessions' roles are left alone (ANALYZE would only warn), and so are
 * permanent tables: their statistics are the owner's business (docs/upsert.md
 * says to ANALYZE a freshly loaded one).
 *
 * Only the key columns are analyzed, from a small sample (statistics target
 * 10: 3,000 rows, unless a column has a target of its own): the statement
 * needs the table's size and the number of distinct keys, to within a factor
 * that does not change the join, and nothing else. A full ANALYZE of a
 * million-row staging table samples 30,000 rows of every column, sorts the
 * text ones and cost 3-5x as much (0.3-0.5 s here, 5% of the call).
 */
#define BK_ANALYZE_MIN_PAGES 128	/* 1 MB: about 10k narrow rows */
#define BK_ANALYZE_TARGET "10"

static void
analyze_fresh_temp_source(Relation src, const char *const *keycols, int nkeys)
{
	StringInfoData q;
	int			nest;

	if (src->rd_rel->relkind != RELKIND_RELATION ||
		src->rd_rel->relpersistence != RELPERSISTENCE_TEMP ||
		src->rd_rel->reltuples >= 0 ||
		RelationGetNumberOfBlocks(src) < BK_ANALYZE_MIN_PAGES ||
		!pg_class_ownercheck(RelationGetRelid(src), GetUserId()))
		return;
	initStringInfo(&q);
	appendStringInfo(&q, "ANALYZE %s.%s (",
					 quote_identifier(get_namespace_name(RelationGetNamespace(src))),
					 quote_identifier(RelationGetRelationName(src)));
	for (int k = 0; k < nkeys; k++)
		appendStringInfo(&q, "%s%s", k ? ", " : "", quote_identifier(keycols[k]));
	appendStringInfoChar(&q, ')');
	nest = NewGUCNestLevel();
	(void) set_config_option("default_statistics_target", BK_ANALYZE_TARGET, PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute(q.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "batchkit: could not analyze the staging table");
	SPI_finish();
	AtEOXact_GUC(true, nest);
	pfree(q.data);
}

/*
 * batch_upsert_from(target, source, conflict_columns, update_columns,
 *                   order_column): one MERGE from the source relation,
 * de-duplicated on the conflict columns (last row in order_column order, or in
 * physical order for tables, wins) and sorted by key — the sort spills to disk,
 * so memory stays bounded whatever the source's size. Before it: one scan for
 * NULL keys unless NOT NULL on the source's key columns already rules them out,
 * and ANALYZE of a large never-analyzed temporary source (see above).
 */
Datum
batchkit_upsert_from(PG_FUNCTION_ARGS)
{
	BkCall		call;
	Relation	src;
	TupleDesc	sdesc;
	char	   *order_column = PG_ARGISNULL(4) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(4));
	int		   *cols;
	const char **srccols;
	const char **casts;
	int			ncols = 0;
	List	   *unknown = NIL;
	bool		order_found = false;
	bk_upsert_table table;
	bk_upsert_sql_spec spec;
	BkStmtResult res;
	char	   *schema;
	char	   *merge_sql;
	char	   *fallback_sql;
	instr_time	elapsed;
	uint64		rows_in = 0;
	bool		keys_not_null;
	MemoryContext callcxt;
	MemoryContext old;

	check_args(fcinfo, -1);
	memset(&call, 0, sizeof(call));
	INSTR_TIME_SET_CURRENT(call.start);
	callcxt = AllocSetContextCreate(CurrentMemoryContext, "batchkit upsert",
									ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(callcxt);

	target_open(&call.t, PG_GETARG_OID(0));
	src = relation_open(PG_GETARG_OID(1), AccessShareLock);
	if (src->rd_rel->relkind != RELKIND_RELATION &&
		src->rd_rel->relkind != RELKIND_MATVIEW &&
		src->rd_rel->relkind != RELKIND_PARTITIONED_TABLE &&
		src->rd_rel->relkind != RELKIND_VIEW &&
		src->rd_rel->relkind != RELKIND_FOREIGN_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" cannot be a source of rows", RelationGetRelationName(src))));
	if (order_column == NULL && src->rd_rel->relkind != RELKIND_RELATION &&
		src->rd_rel->relkind != RELKIND_MATVIEW)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the order of the rows of \"%s\" is not defined",
						RelationGetRelationName(src)),
				 errhint("Pass order_column: when keys repeat, the row with its highest value wins.")));
	schema = get_namespace_name(RelationGetNamespace(src));
	sdesc = RelationGetDescr(src);
	cols = palloc(sizeof(int) * Max(sdesc->natts, 1));
	srccols = palloc(sizeof(char *) * Max(sdesc->natts, 1));
	for (int a = 0; a < sdesc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(sdesc, a);
		const char *name = NameStr(att->attname);
		int			c = -1;

		if (att->attisdropped)
			continue;
		if (order_column && strcmp(name, order_column) == 0)
		{
			order_found = true;
			continue;
		}
		for (int j = 0; j < call.t.ncols; j++)
			if (strcmp(call.t.colnames[j], name) == 0)
				c = j;
		if (c < 0)
		{
			unknown = lappend(unknown, pstrdup(name));
			continue;
		}
		if (!can_coerce_type(1, &att->atttypid, &call.t.typids[c], COERCION_ASSIGNMENT))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of \"%s\" has type %s, which cannot be assigned to column \"%s\" of type %s",
							name, RelationGetRelationName(src), format_type_be(att->atttypid),
							name, format_type_with_typemod(call.t.typids[c], call.t.typmods[c]))));
		call.t.colflags[c] |= BK_UPSERT_COL_INPUT;
		cols[ncols] = c;
		srccols[ncols] = pstrdup(name);
		ncols++;
	}
	if (order_column && !order_found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("order column \"%s\" does not exist in \"%s\"", order_column,
						RelationGetRelationName(src))));
	if (unknown != NIL)
	{
		StringInfoData buf;
		ListCell   *lc;

		initStringInfo(&buf);
		foreach(lc, unknown)
			appendStringInfo(&buf, "%s\"%s\"", buf.len ? ", " : "", (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg(list_length(unknown) == 1
						? "column %s of \"%s\" is not a column of table \"%s\""
						: "columns %s of \"%s\" are not columns of table \"%s\"",
						buf.data, RelationGetRelationName(src), call.t.name)));
	}
	resolve_plan(&call, fcinfo, 2, 3);

	/*
	 * Keys are compared as the target's types. NOT NULL on a table's (or
	 * partitioned table's) key columns is enforced, so it spares the scan for
	 * NULL keys below; views and foreign tables promise nothing.
	 */
	keys_not_null = src->rd_rel->relkind == RELKIND_RELATION ||
		src->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;
	casts = palloc0(sizeof(char *) * call.plan.nconflict);
	for (int k = 0; k < call.plan.nconflict; k++)
	{
		int			c = call.plan.conflict[k];
		bool		not_null = false;

		for (int i = 0; i < ncols; i++)
			if (cols[i] == c)
			{
				Form_pg_attribute att = NULL;

				for (int a = 0; a < sdesc->natts; a++)
					if (strcmp(NameStr(TupleDescAttr(sdesc, a)->attname), srccols[i]) == 0)
						att = TupleDescAttr(sdesc, a);
				if (att && (att->atttypid != call.t.typids[c]))
					casts[k] = format_type_with_typemod(call.t.typids[c], call.t.typmods[c]);
				not_null = att && att->attnotnull;
			}
		keys_not_null = keys_not_null && not_null;
	}

	/*
	 * Statistics on the source's key columns (a source without the key fails
	 * below, when the statement is built).
	 */
	{
		const char **keycols = palloc(sizeof(char *) * call.plan.nconflict);
		bool		all_keys = true;

		for (int k = 0; k < call.plan.nconflict; k++)
		{
			keycols[k] = NULL;
			for (int i = 0; i < ncols; i++)
				if (cols[i] == call.plan.conflict[k])
					keycols[k] = srccols[i];
			all_keys = all_keys && keycols[k] != NULL;
		}
		if (all_keys)
			analyze_fresh_temp_source(src, keycols, call.plan.nconflict);
	}

	/* NULL keys are an error, not rows silently inserted next to their twins */
	if (!keys_not_null)
	{
		StringInfoData q;

		initStringInfo(&q);
		appendStringInfo(&q, "SELECT 1 FROM %s.%s AS bk_s WHERE ", quote_identifier(schema),
						 quote_identifier(RelationGetRelationName(src)));
		for (int k = 0; k < call.plan.nconflict; k++)
			appendStringInfo(&q, "%sbk_s.%s IS NULL", k ? " OR " : "",
							 quote_identifier(call.t.colnames[call.plan.conflict[k]]));
		appendStringInfoString(&q, " LIMIT 1");
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute(q.data, false, 0) != SPI_OK_SELECT)
			elog(ERROR, "batchkit: could not check the source for NULL keys");
		if (SPI_processed > 0)
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("a row of \"%s\" has a NULL conflict column",
							RelationGetRelationName(src))));
		SPI_finish();
	}

	table = core_table(&call.t);
	memset(&spec, 0, sizeof(spec));
	spec.table = &table;
	spec.plan = &call.plan;
	spec.ncolumns = ncols;
	spec.columns = cols;
	spec.source_schema = schema;
	spec.source_relation = RelationGetRelationName(src);
	spec.source_columns = srccols;
	spec.key_casts = casts;
	spec.order_by = order_column;
	fallback_sql = build_sql(&spec, BK_UPSERT_SQL_ON_CONFLICT);
	if (call.t.rel->rd_rel->relhasrules)
		bk_exec_statement(fallback_sql, NULL, BK_UPSERT_SQL_ON_CONFLICT, &res);
	else
	{
		merge_sql = build_sql(&spec, BK_UPSERT_SQL_MERGE);
		call.raced = bk_exec_merge_or_fallback(merge_sql, fallback_sql, NULL, &res);
	}
	call.inserted = res.inserted;
	call.updated = res.updated;
	rows_in = res.inserted + res.updated;

	relation_close(src, NoLock);
	target_close(&call.t);
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, call.start);
	bk_upsert_stats_record(call.t.relid, rows_in, call.inserted, call.updated,
						   INSTR_TIME_GET_MILLISEC(elapsed), call.raced);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(callcxt);
	return result_datum(fcinfo, call.inserted, call.updated);
}
