/*
 * enqueue.c — the transactional outbox for application SQL:
 *   batchkit.enqueue(sink, payload jsonb, key text, headers jsonb)
 *   batchkit.enqueue_many(sink, payloads jsonb[], keys text[], headers jsonb[])
 * Messages are packed into chunks like captured rows and commit or roll back
 * with the caller's transaction. Also batchkit._catalog_changed(), which
 * catalog functions call so every backend drops its cached sink settings.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "pgstat.h"

#include "shmem/shmem.h"
#include "queue/queue.h"
#include "queue/chunk.h"

PG_FUNCTION_INFO_V1(batchkit_enqueue);
PG_FUNCTION_INFO_V1(batchkit_enqueue_many);
PG_FUNCTION_INFO_V1(batchkit_catalog_changed);
PG_FUNCTION_INFO_V1(batchkit_queue_depth);
PG_FUNCTION_INFO_V1(batchkit_requeue);
PG_FUNCTION_INFO_V1(batchkit_wake_launcher);
PG_FUNCTION_INFO_V1(batchkit_flush);

#define BK_CHUNK_MAX_BYTES (1024 * 1024)

static void
check_headers(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			level = 0;

	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batchkit message headers must be a JSON object of strings")));
	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT || tok == WJB_BEGIN_ARRAY)
			level++;
		else if (tok == WJB_END_OBJECT || tok == WJB_END_ARRAY)
			level--;
		else if (tok == WJB_VALUE && (level != 1 || v.type != jbvString))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batchkit message headers must be a JSON object of strings")));
		if (level > 1)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batchkit message headers must be a JSON object of strings")));
	}
}

typedef struct Outbox
{
	BkChunkWriter w;
	int32		sink_id;
	uint64		total;
} Outbox;

static void
outbox_flush(Outbox *o)
{
	if (o->w.nrecords == 0)
		return;
	bk_chunk_finish(&o->w);
	bk_queue_insert_chunk(o->sink_id, InvalidOid, o->w.buf.data, o->w.buf.len, o->w.nrecords);
	o->total += o->w.nrecords;
	bk_chunk_reset(&o->w);
}

static void
outbox_add(Outbox *o, Jsonb *payload, text *key, Jsonb *headers)
{
	char	   *p = JsonbToCString(NULL, &payload->root, VARSIZE(payload));
	char	   *h = NULL;

	if (headers)
	{
		check_headers(headers);
		h = JsonbToCString(NULL, &headers->root, VARSIZE(headers));
	}
	bk_chunk_add_message(&o->w, BK_REC_MESSAGE, key ? VARDATA_ANY(key) : NULL,
						 key ? VARSIZE_ANY_EXHDR(key) : 0, p, strlen(p), h, h ? strlen(h) : 0,
						 NULL, 0);
	pfree(p);
	if (h)
		pfree(h);
	if (o->w.nrecords >= (uint32) bk_chunk_records || o->w.buf.len >= BK_CHUNK_MAX_BYTES)
		outbox_flush(o);
}

static void
outbox_begin(Outbox *o, text *sink, uint64 count, Oid *save_userid, int *save_sec)
{
	char	   *name = text_to_cstring(sink);

	memset(o, 0, sizeof(*o));
	bk_queue_init_backend();
	bk_begin_as_owner(save_userid, save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	o->sink_id = bk_lookup_sink_id(name, false);
	bk_queue_check_backpressure(o->sink_id, count);
	bk_chunk_begin_messages(&o->w);
}

static void
outbox_end(Outbox *o, Oid save_userid, int save_sec)
{
	outbox_flush(o);
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	bk_queue_note_enqueued(o->sink_id, o->total);
}

/* batchkit.enqueue(sink text, payload jsonb, key text DEFAULT NULL, headers jsonb DEFAULT NULL) */
Datum
batchkit_enqueue(PG_FUNCTION_ARGS)
{
	Outbox		o;
	Oid			save_userid;
	int			save_sec;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("batchkit.enqueue needs a sink and a payload")));
	outbox_begin(&o, PG_GETARG_TEXT_PP(0), 1, &save_userid, &save_sec);
	outbox_add(&o, PG_GETARG_JSONB_P(1), PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2),
			   PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3));
	outbox_end(&o, save_userid, save_sec);
	PG_RETURN_INT64((int64) o.total);
}

static Datum *
array_elems(ArrayType *a, Oid typid, int16 typlen, bool byval, char align, bool **nulls, int *n,
			const char *what)
{
	Datum	   *elems;

	if (ARR_NDIM(a) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("batchkit.enqueue_many: %s must be a one-dimensional array", what)));
	deconstruct_array(a, typid, typlen, byval, align, &elems, nulls, n);
	return elems;
}

/* batchkit.enqueue_many(sink text, payloads jsonb[], keys text[] DEFAULT NULL, headers jsonb[] DEFAULT NULL) */
Datum
batchkit_enqueue_many(PG_FUNCTION_ARGS)
{
	Outbox		o;
	Oid			save_userid;
	int			save_sec;
	Datum	   *payloads,
			   *keys = NULL,
			   *headers = NULL;
	bool	   *pnulls,
			   *knulls = NULL,
			   *hnulls = NULL;
	int			n,
				nk = 0,
				nh = 0;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("batchkit.enqueue_many needs a sink and an array of payloads")));
	payloads = array_elems(PG_GETARG_ARRAYTYPE_P(1), JSONBOID, -1, false, TYPALIGN_INT,
						   &pnulls, &n, "payloads");
	if (!PG_ARGISNULL(2))
	{
		keys = array_elems(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT,
						   &knulls, &nk, "keys");
		if (nk != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batchkit.enqueue_many: %d keys given for %d payloads", nk, n)));
	}
	if (!PG_ARGISNULL(3))
	{
		headers = array_elems(PG_GETARG_ARRAYTYPE_P(3), JSONBOID, -1, false, TYPALIGN_INT,
							  &hnulls, &nh, "headers");
		if (nh != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("batchkit.enqueue_many: %d headers given for %d payloads", nh, n)));
	}
	for (int i = 0; i < n; i++)
		if (pnulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("batchkit.enqueue_many: payload %d is NULL", i + 1)));

	outbox_begin(&o, PG_GETARG_TEXT_PP(0), n, &save_userid, &save_sec);
	for (int i = 0; i < n; i++)
		outbox_add(&o, DatumGetJsonbP(payloads[i]),
				   (keys && !knulls[i]) ? DatumGetTextPP(keys[i]) : NULL,
				   (headers && !hnulls[i]) ? DatumGetJsonbP(headers[i]) : NULL);
	outbox_end(&o, save_userid, save_sec);
	PG_RETURN_INT64((int64) o.total);
}

/* batchkit._catalog_changed(): every backend drops its cached sink settings at commit. */
Datum
batchkit_catalog_changed(PG_FUNCTION_ARGS)
{
	bk_invalidate_catalog_cache();
	PG_RETURN_VOID();
}

/* batchkit.queue_depth(sink): committed, unacknowledged records (shared counter). */
Datum
batchkit_queue_depth(PG_FUNCTION_ARGS)
{
	char	   *sink = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			save_userid;
	int			save_sec;
	int32		sink_id;
	uint64		depth;
	bool		known;

	bk_require_shmem();
	bk_queue_init_backend();
	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	sink_id = bk_lookup_sink_id(sink, false);
	depth = bk_sink_depth(sink_id, &known);
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	if (!known)
		PG_RETURN_NULL();
	PG_RETURN_INT64((int64) depth);
}

/*
 * batchkit._requeue(sink, ops text[], targets text[], keys text[], payloads text[]):
 * put messages back into a sink's queue exactly as they were sent (replayed dead
 * letters keep their topic/key, key and payload).
 */
Datum
batchkit_requeue(PG_FUNCTION_ARGS)
{
	Outbox		o;
	Oid			save_userid;
	int			save_sec;
	Datum	   *ops,
			   *targets,
			   *keys,
			   *payloads;
	bool	   *on,
			   *tn,
			   *kn,
			   *pn;
	int			n,
				n2,
				n3,
				n4;

	ops = array_elems(PG_GETARG_ARRAYTYPE_P(1), TEXTOID, -1, false, TYPALIGN_INT, &on, &n, "ops");
	targets = array_elems(PG_GETARG_ARRAYTYPE_P(2), TEXTOID, -1, false, TYPALIGN_INT, &tn, &n2, "targets");
	keys = array_elems(PG_GETARG_ARRAYTYPE_P(3), TEXTOID, -1, false, TYPALIGN_INT, &kn, &n3, "keys");
	payloads = array_elems(PG_GETARG_ARRAYTYPE_P(4), TEXTOID, -1, false, TYPALIGN_INT, &pn, &n4, "payloads");
	if (n2 != n || n3 != n || n4 != n)
		elog(ERROR, "batchkit._requeue: arrays differ in length");
	outbox_begin(&o, PG_GETARG_TEXT_PP(0), 0, &save_userid, &save_sec);
	for (int i = 0; i < n; i++)
	{
		char	   *op = on[i] ? "message" : TextDatumGetCString(ops[i]);
		char		opc = strcmp(op, "insert") == 0 ? BK_REC_INSERT :
			strcmp(op, "update") == 0 ? BK_REC_UPDATE :
			strcmp(op, "delete") == 0 ? BK_REC_DELETE : BK_REC_MESSAGE;
		text	   *t = tn[i] ? NULL : DatumGetTextPP(targets[i]);
		text	   *k = kn[i] ? NULL : DatumGetTextPP(keys[i]);
		text	   *p = pn[i] ? cstring_to_text("") : DatumGetTextPP(payloads[i]);

		bk_chunk_add_message(&o.w, opc, k ? VARDATA_ANY(k) : NULL, k ? VARSIZE_ANY_EXHDR(k) : 0,
							 VARDATA_ANY(p), VARSIZE_ANY_EXHDR(p), NULL, 0,
							 t ? VARDATA_ANY(t) : NULL, t ? VARSIZE_ANY_EXHDR(t) : 0);
		if (o.w.nrecords >= (uint32) bk_chunk_records || o.w.buf.len >= BK_CHUNK_MAX_BYTES)
			outbox_flush(&o);
	}
	outbox_end(&o, save_userid, save_sec);
	PG_RETURN_INT64((int64) o.total);
}

Datum
batchkit_wake_launcher(PG_FUNCTION_ARGS)
{
	bk_wake_launcher_at_commit();
	PG_RETURN_VOID();
}

/*
 * batchkit.flush(sink, timeout): wait until every row committed before the call
 * has been acknowledged by the sink. Returns false on timeout.
 */
Datum
batchkit_flush(PG_FUNCTION_ARGS)
{
	char	   *sink = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Interval   *timeout = PG_GETARG_INTERVAL_P(1);
	Oid			save_userid;
	int			save_sec;
	int32		sink_id;
	int64		max_id = 0;
	bool		drained = false;
	bool		isnull;
	TimestampTz deadline;
	BkSinkSlot *slot;
	Datum		args[2];
	Oid			types[2] = {INT4OID, INT8OID};
	int64		timeout_ms;

	bk_require_shmem();
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("batchkit.flush() needs READ COMMITTED isolation"),
				 errdetail("It must see the flush worker's acknowledgements as they commit.")));
	timeout_ms = (int64) (timeout->time / 1000) +
		(int64) timeout->day * 86400000 + (int64) timeout->month * 30 * 86400000;
	if (timeout_ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	bk_queue_init_backend();
	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	sink_id = bk_lookup_sink_id(sink, false);
	args[0] = Int32GetDatum(sink_id);
	/* rows of this very transaction cannot be delivered before it commits: not waited for */
	if (SPI_execute_with_args("SELECT max(chunk_id) FROM batchkit.queue WHERE sink_id = $1 "
							  "AND txid IS DISTINCT FROM pg_catalog.pg_current_xact_id_if_assigned()",
							  1, types, args, NULL, false, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			max_id = DatumGetInt64(d);
	}
	slot = bk_sink_slot(MyDatabaseId, sink_id, true);
	if (max_id == 0)
		drained = true;
	else if (slot)
	{
		pg_atomic_fetch_add_u32(&slot->flush_requested, 1);
		bk_wake_database(MyDatabaseId);
	}
	args[1] = Int64GetDatum(max_id);
	while (!drained)
	{
		if (SPI_execute_with_args("SELECT NOT EXISTS (SELECT 1 FROM batchkit.queue WHERE sink_id = $1 "
								  "AND chunk_id <= $2 AND txid IS DISTINCT FROM "
								  "pg_catalog.pg_current_xact_id_if_assigned())",
								  2, types, args, NULL, false, 1) == SPI_OK_SELECT)
			drained = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
												 &isnull));
		if (drained || GetCurrentTimestamp() >= deadline)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	PG_RETURN_BOOL(drained);
}
