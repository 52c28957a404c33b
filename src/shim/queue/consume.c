/*
 * consume.c — claim, decode and acknowledge batches (see consume.h for the
 * protocol), plus the SQL entry points batchkit.claim_batch() and
 * batchkit.ack_batch() that expose the same protocol to tests and tools.
 *
 * Memory: a batch is decoded one chunk at a time (cursor fetch of one queue
 * row), each chunk in a context reset before the next, so a 5M-row backlog or
 * a 100 MB row never needs more than one chunk in memory.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "queue/queue.h"
#include "queue/consume.h"

PG_FUNCTION_INFO_V1(batchkit_claim_batch);
PG_FUNCTION_INFO_V1(batchkit_ack_batch);

static SPIPlanPtr plan_inflight = NULL;
static SPIPlanPtr plan_chunks = NULL;
static SPIPlanPtr plan_seq = NULL;
static SPIPlanPtr plan_record = NULL;
static SPIPlanPtr plan_payloads = NULL;

static SPIPlanPtr plan_ack = NULL;

static int64 *
int8_array(Datum d, int *n)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int64	   *out;

	deconstruct_array(a, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &nulls, n);
	out = palloc(sizeof(int64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = DatumGetInt64(elems[i]);
	return out;
}

static int32 *
int4_array(Datum d, int *n)
{
	ArrayType  *a = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int32	   *out;

	deconstruct_array(a, INT4OID, 4, true, TYPALIGN_INT, &elems, &nulls, n);
	out = palloc(sizeof(int32) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = DatumGetInt32(elems[i]);
	return out;
}

/* Records a batch in flight holds in one chunk: [start, end), end -1 = to its end. */
typedef struct HeldRange
{
	int64		chunk_id;
	int32		end;
} HeldRange;

static int
held_cmp(const void *a, const void *b)
{
	int64		x = ((const HeldRange *) a)->chunk_id;
	int64		y = ((const HeldRange *) b)->chunk_id;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/* Where a fresh claim may start in a chunk: past every record a batch in flight holds. */
static int32
held_end(HeldRange *held, int nheld, int64 chunk_id, int32 nrec)
{
	int			lo = 0,
				hi = nheld - 1;
	int32		end = -2;		/* not held */

	while (lo <= hi)
	{
		int			mid = (lo + hi) / 2;

		if (held[mid].chunk_id < chunk_id)
			lo = mid + 1;
		else if (held[mid].chunk_id > chunk_id)
			hi = mid - 1;
		else
		{
			/* the same chunk may be held by two batches (one per part): take the furthest */
			for (int i = mid; i >= 0 && held[i].chunk_id == chunk_id; i--)
				end = Max(end, held[i].end < 0 ? nrec : held[i].end);
			for (int i = mid + 1; i < nheld && held[i].chunk_id == chunk_id; i++)
				end = Max(end, held[i].end < 0 ? nrec : held[i].end);
			break;
		}
	}
	return end;
}

static void
fill_batch(BkBatch *batch, HeapTuple t, TupleDesc d)
{
	bool		isnull;
	int			n2;
	Datum		le;

	batch->replay = true;
	batch->batch_seq = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
	batch->chunk_ids = int8_array(SPI_getbinval(t, d, 2, &isnull), &batch->nchunks);
	batch->chunk_starts = int4_array(SPI_getbinval(t, d, 3, &isnull), &n2);
	le = SPI_getbinval(t, d, 4, &isnull);
	batch->last_end = isnull ? -1 : DatumGetInt32(le);
	batch->nrecords = DatumGetInt32(SPI_getbinval(t, d, 5, &isnull));
	if (n2 != batch->nchunks)
		elog(ERROR, "batchkit: inflight batch " INT64_FORMAT " is inconsistent", batch->batch_seq);
}

/*
 * Every query here runs with read_only = false: SPI then makes the transaction's
 * own earlier changes visible (the worker acknowledges the previous batch and
 * claims the next in one transaction; a read-only query would still see the
 * acknowledged batch in flight and claim it again).
 *
 * after_seq: the caller already holds the in-flight batches up to this batch_seq
 * (the flush worker's pipeline); 0: none (the SQL API, a restarted worker).
 */
bool
bk_claim_batch(int32 sink_id, int64 max_rows, int64 max_bytes, int64 after_seq, BkBatch *batch)
{
	Datum		arg[1];
	Oid			int4arg[1] = {INT4OID};
	int			rc;
	bool		isnull;
	Portal		portal;
	int			cap = 16;
	HeldRange  *held = NULL;
	int			nheld = 0;

	memset(batch, 0, sizeof(*batch));
	batch->sink_id = sink_id;
	batch->last_end = -1;
	arg[0] = Int32GetDatum(sink_id);

	/*
	 * 1. an unacknowledged batch the caller does not hold is replayed first,
	 * unchanged, lowest batch_seq first; the others' records are excluded from a
	 * fresh claim.
	 */
	rc = SPI_execute_plan(bk_keep_plan(&plan_inflight,
									"SELECT batch_seq, chunk_ids, chunk_starts, last_end, nrecords "
									"FROM batchkit.inflight WHERE sink_id = $1 "
									"ORDER BY batch_seq", 1, int4arg),
						  arg, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading inflight batches failed");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		BkBatch		b;

		memset(&b, 0, sizeof(b));
		b.sink_id = sink_id;
		fill_batch(&b, t, d);
		if (b.batch_seq > after_seq)
		{
			*batch = b;
			return true;
		}
		held = held ? repalloc(held, sizeof(HeldRange) * (nheld + b.nchunks))
			: palloc(sizeof(HeldRange) * Max(b.nchunks, 1));
		for (int i = 0; i < b.nchunks; i++)
		{
			held[nheld].chunk_id = b.chunk_ids[i];
			held[nheld].end = (i == b.nchunks - 1) ? b.last_end : -1;
			nheld++;
		}
	}
	if (nheld > 1)
		qsort(held, nheld, sizeof(HeldRange), held_cmp);

	/* 2. take the oldest chunks, in chunk_id order, up to the limits */
	batch->chunk_ids = palloc(sizeof(int64) * cap);
	batch->chunk_starts = palloc(sizeof(int32) * cap);
	portal = SPI_cursor_open(NULL, bk_keep_plan(&plan_chunks,
											 "SELECT chunk_id, nrecords, done_records, nbytes "
											 "FROM batchkit.queue WHERE sink_id = $1 "
											 "ORDER BY chunk_id", 1, int4arg),
							 arg, NULL, false);
	{
		int64		bytes = 0;
		bool		done = false;

		while (!done)
		{
			SPI_cursor_fetch(portal, true, 64);
			if (SPI_processed == 0)
				break;
			for (uint64 i = 0; i < SPI_processed && !done; i++)
			{
				HeapTuple	t = SPI_tuptable->vals[i];
				TupleDesc	d = SPI_tuptable->tupdesc;
				int64		chunk_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
				int32		nrec = DatumGetInt32(SPI_getbinval(t, d, 2, &isnull));
				int32		start = DatumGetInt32(SPI_getbinval(t, d, 3, &isnull));
				int32		nbytes = DatumGetInt32(SPI_getbinval(t, d, 4, &isnull));
				int64		avail;
				int64		take;

				/* records a batch in flight holds are not taken twice */
				if (nheld > 0)
					start = Max(start, held_end(held, nheld, chunk_id, nrec));
				avail = nrec - start;
				take = Min(avail, max_rows - batch->nrecords);
				if (avail <= 0)
					continue;
				if (batch->nchunks == cap)
				{
					cap *= 2;
					batch->chunk_ids = repalloc(batch->chunk_ids, sizeof(int64) * cap);
					batch->chunk_starts = repalloc(batch->chunk_starts, sizeof(int32) * cap);
				}
				batch->chunk_ids[batch->nchunks] = chunk_id;
				batch->chunk_starts[batch->nchunks] = start;
				batch->nchunks++;
				batch->nrecords += take;
				if (take < avail)
				{
					batch->last_end = start + (int32) take;
					done = true;
				}
				bytes += nrec > 0 ? (int64) nbytes * take / nrec : nbytes;
				if (batch->nrecords >= max_rows || bytes >= max_bytes)
					done = true;
			}
			SPI_freetuptable(SPI_tuptable);
		}
	}
	SPI_cursor_close(portal);
	if (batch->nrecords == 0)
		return false;

	/* 3. number it and record it, so it is replayed unchanged after a crash */
	rc = SPI_execute_plan(bk_keep_plan(&plan_seq,
									"INSERT INTO batchkit.sink_progress AS p (sink_id, last_batch_seq) "
									"VALUES ($1, 1) ON CONFLICT (sink_id) DO UPDATE "
									"SET last_batch_seq = p.last_batch_seq + 1 "
									"RETURNING last_batch_seq", 1, int4arg),
						  arg, NULL, false, 1);
	if (rc != SPI_OK_INSERT_RETURNING || SPI_processed != 1)
		elog(ERROR, "batchkit: numbering a batch failed");
	batch->batch_seq = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												   1, &isnull));
	{
		Oid			types[6] = {INT4OID, INT8OID, INT8ARRAYOID, INT4ARRAYOID, INT4OID, INT4OID};
		Datum		v[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
		Datum	   *ids = palloc(sizeof(Datum) * batch->nchunks);
		Datum	   *starts = palloc(sizeof(Datum) * batch->nchunks);

		for (int i = 0; i < batch->nchunks; i++)
		{
			ids[i] = Int64GetDatum(batch->chunk_ids[i]);
			starts[i] = Int32GetDatum(batch->chunk_starts[i]);
		}
		v[0] = Int32GetDatum(sink_id);
		v[1] = Int64GetDatum(batch->batch_seq);
		v[2] = PointerGetDatum(construct_array(ids, batch->nchunks, INT8OID, 8, FLOAT8PASSBYVAL,
											   TYPALIGN_DOUBLE));
		v[3] = PointerGetDatum(construct_array(starts, batch->nchunks, INT4OID, 4, true,
											   TYPALIGN_INT));
		v[4] = Int32GetDatum(batch->last_end);
		if (batch->last_end < 0)
			nulls[4] = 'n';
		v[5] = Int32GetDatum((int32) batch->nrecords);
		rc = SPI_execute_plan(bk_keep_plan(&plan_record,
										"INSERT INTO batchkit.inflight (sink_id, batch_seq, chunk_ids, "
										"chunk_starts, last_end, nrecords) VALUES ($1, $2, $3, $4, $5, $6)",
										6, types),
							  v, nulls, false, 0);
		if (rc != SPI_OK_INSERT)
			elog(ERROR, "batchkit: recording a batch failed");
	}
	return true;
}

static void
append_json_or_null(StringInfo out, BkChunkReader *r, HeapTupleHeader tup)
{
	if (tup)
		bk_chunk_row_json(r, tup, false, out);
	else
		BK_APPEND_LIT(out, "null");
}

static const char *
op_name(char op)
{
	switch (op)
	{
		case BK_REC_INSERT:
			return "insert";
		case BK_REC_UPDATE:
			return "update";
		case BK_REC_DELETE:
			return "delete";
		default:
			return "message";
	}
}

/* What every row of a chunk shares in its envelope, with lengths (no strlen per row). */
typedef struct ChunkEnvelope
{
	const char *txid;
	int			txid_len;
	const char *ts;
	int			ts_len;
	const char *source_json;
	int			source_json_len;
} ChunkEnvelope;


/* Encode one row record into m->key / m->value. */
static void
encode_row(BkChunkReader *r, BkChunkRecordView *rec, BkMessage *m, int format,
		   const ChunkEnvelope *env)
{
	HeapTupleHeader keytup = rec->after ? rec->after : rec->before;
	bool		include_before = (r->hdr->flags & BK_CHUNK_FLAG_INCLUDE_BEFORE) != 0;
	StringInfo	v = &m->value;

	m->row = keytup;
	m->has_key = true;
	bk_chunk_row_key_text(r, keytup, &m->key);
	if (format == BK_FORMAT_ROW)
	{
		if (rec->op == BK_REC_DELETE)
			bk_chunk_row_json(r, keytup, !include_before, v);
		else
			bk_chunk_row_json(r, rec->after, false, v);
		return;
	}
	switch (rec->op)
	{
		case BK_REC_INSERT:
			BK_APPEND_LIT(v, "{\"op\":\"insert\",\"table\":");
			break;
		case BK_REC_UPDATE:
			BK_APPEND_LIT(v, "{\"op\":\"update\",\"table\":");
			break;
		case BK_REC_DELETE:
			BK_APPEND_LIT(v, "{\"op\":\"delete\",\"table\":");
			break;
		default:
			BK_APPEND_LIT(v, "{\"op\":\"message\",\"table\":");
			break;
	}
	bk_append(v, env->source_json, env->source_json_len);
	BK_APPEND_LIT(v, ",\"key\":");
	bk_chunk_row_json(r, keytup, true, v);
	BK_APPEND_LIT(v, ",\"before\":");
	append_json_or_null(v, r, include_before ? rec->before : NULL);
	BK_APPEND_LIT(v, ",\"after\":");
	append_json_or_null(v, r, rec->after);
	{
		char		num[MAXINT8LEN + 1];
		int			n;

		BK_APPEND_LIT(v, ",\"txid\":");
		bk_append(v, env->txid, env->txid_len);
		BK_APPEND_LIT(v, ",\"seq\":");
		n = pg_lltoa(m->seq, num);
		bk_append(v, num, n);
		BK_APPEND_LIT(v, ",\"ts\":\"");
		bk_append(v, env->ts, env->ts_len);
		BK_APPEND_LIT(v, "\"}");
	}
}

void
bk_batch_decode(BkBatch *batch, int format, bk_message_cb cb, void *arg)
{
	Oid			types[2] = {INT4OID, INT8ARRAYOID};
	Datum		v[2];
	Datum	   *ids = palloc(sizeof(Datum) * batch->nchunks);
	Portal		portal;
	MemoryContext chunk_cxt = AllocSetContextCreate(CurrentMemoryContext, "batchkit decode",
													ALLOCSET_DEFAULT_SIZES);
	int			ci = 0;
	StringInfoData keybuf;
	StringInfoData valbuf;

	/*
	 * One key and one value buffer for the whole batch, reset per message: the
	 * callback copies what it keeps, and a palloc/pfree pair of 1 kB buffers per
	 * message (plus their growth) was a visible share of the drain's CPU.
	 */
	initStringInfo(&keybuf);
	initStringInfo(&valbuf);

	for (int i = 0; i < batch->nchunks; i++)
		ids[i] = Int64GetDatum(batch->chunk_ids[i]);
	v[0] = Int32GetDatum(batch->sink_id);
	v[1] = PointerGetDatum(construct_array(ids, batch->nchunks, INT8OID, 8, FLOAT8PASSBYVAL,
										   TYPALIGN_DOUBLE));
	portal = SPI_cursor_open(NULL, bk_keep_plan(&plan_payloads,
											 "SELECT chunk_id, payload, txid::text, captured_at "
											 "FROM batchkit.queue WHERE sink_id = $1 "
											 "AND chunk_id = ANY ($2) ORDER BY chunk_id", 2, types),
							 v, NULL, false);
	for (;;)
	{
		HeapTuple	t;
		TupleDesc	d;
		bool		isnull;
		int64		chunk_id;
		bytea	   *payload;
		char	   *data;
		Size		len;
		BkChunkReader reader;
		BkChunkRecordView rec;
		char	   *txid;
		TimestampTz captured;
		char		ts[MAXDATELEN + 1];
		char	   *source;
		char	   *source_json = NULL;
		ChunkEnvelope env;
		int32		start,
					end;
		MemoryContext old;

		SPI_cursor_fetch(portal, true, 1);
		if (SPI_processed == 0)
			break;
		t = SPI_tuptable->vals[0];
		d = SPI_tuptable->tupdesc;
		chunk_id = DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
		while (ci < batch->nchunks && batch->chunk_ids[ci] < chunk_id)
			ci++;				/* a chunk of the batch vanished: only drop_sink(force) does that */
		if (ci >= batch->nchunks || batch->chunk_ids[ci] != chunk_id)
			elog(ERROR, "batchkit: chunk " INT64_FORMAT " is not part of batch " INT64_FORMAT,
				 chunk_id, batch->batch_seq);
		start = batch->chunk_starts[ci];
		end = (ci == batch->nchunks - 1 && batch->last_end >= 0) ? batch->last_end : PG_INT32_MAX;

		old = MemoryContextSwitchTo(chunk_cxt);
		payload = DatumGetByteaPP(SPI_getbinval(t, d, 2, &isnull));
		len = VARSIZE_ANY_EXHDR(payload);
		data = palloc(len);		/* MAXALIGNed copy the reader may modify */
		memcpy(data, VARDATA_ANY(payload), len);
		txid = TextDatumGetCString(SPI_getbinval(t, d, 3, &isnull));
		captured = DatumGetTimestampTz(SPI_getbinval(t, d, 4, &isnull));
		JsonEncodeDateTime(ts, TimestampTzGetDatum(captured), TIMESTAMPTZOID, NULL);
		SPI_freetuptable(SPI_tuptable);

		bk_chunk_open(&reader, data, len);
		env.txid = txid;
		env.txid_len = strlen(txid);
		env.ts = ts;
		env.ts_len = strlen(ts);
		source = reader.hdr->kind == BK_CHUNK_KIND_ROWS ?
			psprintf("%s.%s", reader.schema, reader.table) : NULL;
		if (source)
		{
			StringInfoData sj;

			initStringInfo(&sj);
			escape_json(&sj, source);
			source_json = sj.data;
		}
		env.source_json = source_json;
		env.source_json_len = source_json ? strlen(source_json) : 0;
		while (bk_chunk_next(&reader, &rec))
		{
			BkMessage	m;

			if ((int32) rec.index < start)
				continue;
			if ((int32) rec.index >= end)
				break;
			memset(&m, 0, sizeof(m));
			m.op = rec.op;
			m.chunk_id = chunk_id;
			m.seq = BK_SEQ(chunk_id, rec.index);
			m.source = source;
			m.captured_at = captured;
			m.reader = &reader;
			resetStringInfo(&keybuf);
			resetStringInfo(&valbuf);
			m.key = keybuf;
			m.value = valbuf;
			if (reader.hdr->kind == BK_CHUNK_KIND_MESSAGES)
			{
				if (rec.key)
				{
					m.has_key = true;
					appendBinaryStringInfo(&m.key, rec.key, rec.keylen);
				}
				appendBinaryStringInfo(&m.value, rec.payload, rec.payloadlen);
				m.headers = rec.headers;
				m.headerslen = rec.headerslen;
				m.target = rec.target;
				m.targetlen = rec.targetlen;
			}
			else
				encode_row(&reader, &rec, &m, format, &env);
			cb(&m, arg);
			keybuf = m.key;		/* keep what the buffers grew to */
			valbuf = m.value;
		}
		MemoryContextSwitchTo(old);
		MemoryContextReset(chunk_cxt);
		ci++;
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(chunk_cxt);
	pfree(keybuf.data);
	pfree(valbuf.data);
}

int64
bk_ack_batch(int32 sink_id, int64 batch_seq)
{
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		v[2];
	int			rc;
	int64		n;
	bool		isnull;

	v[0] = Int32GetDatum(sink_id);
	v[1] = Int64GetDatum(batch_seq);
	/*
	 * One statement: remove the inflight row, delete every chunk the batch
	 * consumed to its end, advance done_records of a partly consumed last
	 * chunk, and count the acknowledgement.
	 */
	rc = SPI_execute_plan(bk_keep_plan(&plan_ack,
							   "WITH b AS (DELETE FROM batchkit.inflight WHERE sink_id = $1 AND batch_seq = $2 "
							   "  RETURNING chunk_ids, last_end, nrecords), "
							   "last AS (SELECT b.chunk_ids[cardinality(b.chunk_ids)] AS id, b.last_end FROM b), "
							   "del AS (DELETE FROM batchkit.queue q USING b WHERE q.sink_id = $1 "
							   "  AND q.chunk_id = ANY (b.chunk_ids) AND (b.last_end IS NULL "
							   "  OR q.chunk_id <> b.chunk_ids[cardinality(b.chunk_ids)]) RETURNING 1), "
							   "upd AS (UPDATE batchkit.queue q SET done_records = last.last_end FROM last "
							   "  WHERE q.sink_id = $1 AND q.chunk_id = last.id AND last.last_end IS NOT NULL "
							   "  RETURNING 1), "
							   "prog AS (UPDATE batchkit.sink_progress p SET acked_records = p.acked_records + b.nrecords, "
							   "  acked_at = pg_catalog.now() FROM b WHERE p.sink_id = $1 RETURNING 1) "
							   "SELECT b.nrecords, (SELECT count(*) FROM del), (SELECT count(*) FROM upd), "
							   "(SELECT count(*) FROM prog) FROM b",
										2, types),
						  v, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: acknowledging batch " INT64_FORMAT " failed", batch_seq);
	if (SPI_processed != 1)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("batchkit: batch " INT64_FORMAT " of this sink is not in flight", batch_seq),
				 errhint("A batch can be acknowledged once; claim_batch() returns the batch in flight.")));
	n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	bk_queue_note_acked(sink_id, (uint64) n);
	return n;
}

/* ---- SQL entry points ------------------------------------------------------------ */

typedef struct SrfState
{
	ReturnSetInfo *rsinfo;
	int64		batch_seq;
} SrfState;

static void
emit_row(BkMessage *m, void *arg)
{
	SrfState   *st = (SrfState *) arg;
	Datum		values[6];
	bool		nulls[6] = {0};

	values[0] = Int64GetDatum(st->batch_seq);
	values[1] = Int64GetDatum(m->seq);
	values[2] = CStringGetTextDatum(op_name(m->op));
	if (m->source)
		values[3] = CStringGetTextDatum(m->source);
	else
		nulls[3] = true;
	if (m->has_key)
		values[4] = PointerGetDatum(cstring_to_text_with_len(m->key.data, m->key.len));
	else
		nulls[4] = true;
	values[5] = PointerGetDatum(cstring_to_text_with_len(m->value.data, m->value.len));
	tuplestore_putvalues(st->rsinfo->setResult, st->rsinfo->setDesc, values, nulls);
}

static int
parse_format(const char *f)
{
	if (strcmp(f, "envelope") == 0)
		return BK_FORMAT_ENVELOPE;
	if (strcmp(f, "row") == 0)
		return BK_FORMAT_ROW;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown format \"%s\"", f),
			 errhint("Valid formats are \"envelope\" and \"row\".")));
	return 0;
}

/* batchkit.claim_batch(sink, max_rows, max_bytes, format) */
Datum
batchkit_claim_batch(PG_FUNCTION_ARGS)
{
	char	   *sink = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int32		max_rows = PG_GETARG_INT32(1);
	int32		max_bytes = PG_GETARG_INT32(2);
	int			format = parse_format(text_to_cstring(PG_GETARG_TEXT_PP(3)));
	Oid			save_userid;
	int			save_sec;
	int32		sink_id;
	BkBatch		batch;
	SrfState	st;

	if (max_rows < 1 || max_bytes < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_rows and max_bytes must be positive")));
	InitMaterializedSRF(fcinfo, 0);
	st.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	sink_id = bk_lookup_sink_id(sink, false);
	if (bk_claim_batch(sink_id, max_rows, max_bytes, 0, &batch))
	{
		st.batch_seq = batch.batch_seq;
		bk_batch_decode(&batch, format, emit_row, &st);
	}
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	return (Datum) 0;
}

/* batchkit.ack_batch(sink, batch_seq) returns the number of records acknowledged */
Datum
batchkit_ack_batch(PG_FUNCTION_ARGS)
{
	char	   *sink = text_to_cstring(PG_GETARG_TEXT_PP(0));
	int64		batch_seq = PG_GETARG_INT64(1);
	Oid			save_userid;
	int			save_sec;
	int64		n;

	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	n = bk_ack_batch(bk_lookup_sink_id(sink, false), batch_seq);
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	PG_RETURN_INT64(n);
}
