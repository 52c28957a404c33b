/*
 * metrics.c — what a DBA sees of batching: the C functions behind the
 * batchkit.sink_stats and batchkit.batch_histograms views, batchkit.metrics()
 * (Prometheus text) and batchkit.reset_stats().
 *
 * Locking contract (the statistics live in BkSinkSlot, shmem.c):
 *   - bk_shared->lock SHARED while looking a slot up and copying it, so the
 *     slot cannot be forgotten and reused under the copy;
 *   - the slot's spinlock `mutex` around the copy itself (one struct
 *     assignment) and around reset_stats' stores, nothing else: no call, no
 *     allocation, no ereport while it is held. The flush worker writes the
 *     statistics under the same spinlock, so a reader delays it by one memcpy
 *     at most, and it never waits for a reader's SQL;
 *   - `queued` is an atomic, read without any lock.
 * Everything after the copy (quantiles, formatting, SPI) works on the local copy.
 *
 * Catalog reads (sink names, pause flags, queue age, dead letters) go through
 * SPI as the queue's owner (bk_begin_as_owner), because the callers —
 * pg_monitor members — have no privilege on batchkit's tables; EXECUTE on these
 * functions is what is granted. Secrets: no label is free text (sink names are
 * [A-Za-z0-9_.-]); last_error is shown only after bk_redact_secrets has masked
 * the sink's secret option values.
 *
 * C++ lifetime: bk_metrics_prometheus fills a core-owned bk_buf; it is copied
 * into palloc memory with MCXT_ALLOC_NO_OOM and freed before anything can
 * ereport.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type_d.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/float.h"
#include "utils/timestamp.h"

#include "batchkit/encoding.h"
#include "batchkit/histogram.h"
#include "batchkit/metrics.h"
#include "batchkit.h"
#include "sink_stats.h"

PG_FUNCTION_INFO_V1(batchkit_sink_stats);
PG_FUNCTION_INFO_V1(batchkit_batch_histograms);
PG_FUNCTION_INFO_V1(batchkit_metrics);
PG_FUNCTION_INFO_V1(batchkit_reset_stats);
PG_FUNCTION_INFO_V1(batchkit_require_preload);

/*
 * batchkit._require_preload(): true, or the "must be loaded via
 * shared_preload_libraries" error. STABLE and argument-free, so in a view's
 * WHERE it is a one-time filter: the view fails clearly even with no sinks.
 */
Datum
batchkit_require_preload(PG_FUNCTION_ARGS)
{
	bk_require_shmem();
	PG_RETURN_BOOL(true);
}

/* ---- copying statistics out of shared memory ------------------------------------ */

/*
 * Copy the statistics of one sink. Returns false (and zeroes *out) when the sink
 * has no shared slot: it has never been seen by a worker or a writer since start.
 */
bool
bk_metrics_copy_slot(Oid dboid, int32 sink_id, BkSinkStatsCopy *out)
{
	bool		found = false;

	memset(out, 0, sizeof(*out));
	if (bk_shared == NULL)
		return false;
	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 0; i < bk_shared->max_sinks; i++)
	{
		BkSinkSlot *s = &bk_shared->sinks[i];

		if (s->in_use && s->dboid == dboid && s->sink_id == sink_id)
		{
			bk_metrics_copy_locked(s, out);
			found = true;
			break;
		}
	}
	LWLockRelease(bk_shared->lock);
	return found;
}

/* Copy a slot the caller found under bk_shared->lock (SHARED or EXCLUSIVE). */
void
bk_metrics_copy_locked(BkSinkSlot *s, BkSinkStatsCopy *out)
{
	SpinLockAcquire(&s->mutex);
	out->slot = *s;
	SpinLockRelease(&s->mutex);
	out->depth_known = s->depth_known;
	out->queued = pg_atomic_read_u64(&s->queued);
}

/*
 * The state shown for a sink that is not paused in the catalog: failing while
 * in backoff, active while it has rows to deliver or just delivered, else idle.
 */
const char *
bk_metrics_state(const BkSinkStatsCopy *c)
{
	if (strcmp(c->slot.state, "failing") == 0)
		return "failing";
	if (strcmp(c->slot.state, "active") == 0 || (c->depth_known && c->queued > 0))
		return "active";
	return "idle";
}

double
bk_metrics_unix_seconds(TimestampTz ts)
{
	if (ts == 0)
		return 0;
	return (double) ts / USECS_PER_SEC +
		(double) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY;
}

/* Fill the core's struct from a copy (strings are borrowed). */
void
bk_metrics_fill_sink(const BkSinkStatsCopy *c, bk_metrics_sink *m)
{
	m->rows_sent = c->slot.rows_sent;
	m->rows_failed = c->slot.rows_failed;
	m->rows_dead = c->slot.rows_dead;
	m->bytes_sent = c->slot.bytes_sent;
	m->retries = c->slot.retries;
	m->queued_known = c->depth_known;
	m->queued = c->queued;
	m->last_flush_unix = bk_metrics_unix_seconds(c->slot.last_flush_at);
	m->last_error_unix = bk_metrics_unix_seconds(c->slot.last_error_at);
	m->stats_reset_unix = bk_metrics_unix_seconds(c->slot.stats_reset);
	memcpy(m->hist, c->slot.hist, sizeof(m->hist));
}

/*
 * Free the slots of a dropped database (utility_hook.c, after DROP DATABASE):
 * its sinks are gone, and their statistics must not be saved at shutdown and
 * restored forever. Its flush worker has already been asked to exit.
 */
void
bk_metrics_forget_database(Oid dboid)
{
	if (bk_shared == NULL)
		return;
	LWLockAcquire(bk_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < bk_shared->max_sinks; i++)
		if (bk_shared->sinks[i].in_use && bk_shared->sinks[i].dboid == dboid)
			bk_shared->sinks[i].in_use = false;
	LWLockRelease(bk_shared->lock);
}

/* ---- batchkit._sink_stats(sink_id) -------------------------------------- */

static Datum
interval_from_seconds(double seconds)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (TimeOffset) llround(seconds * USECS_PER_SEC);
	return IntervalPGetDatum(iv);
}

/*
 * The clear values of a sink's secret options (batchkit.sink_secret, readable by
 * its owner only), to mask them in last_error. Allocated in the caller's context.
 */
static const char **
sink_secrets(int32 sink_id, int *n)
{
	MemoryContext outer = CurrentMemoryContext;
	Oid			save_userid;
	int			save_sec;
	Datum		arg[1];
	Oid			types[1] = {INT4OID};
	const char **out = NULL;
	int			rc;

	*n = 0;
	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	arg[0] = Int32GetDatum(sink_id);
	rc = SPI_execute_with_args("SELECT e.value FROM batchkit.sink_secret x, "
							   "pg_catalog.jsonb_each_text(x.options) e "
							   "WHERE x.sink_id = $1 AND e.value IS NOT NULL",
							   1, types, arg, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading sink secrets failed: %s", SPI_result_code_string(rc));
	out = MemoryContextAllocZero(outer, sizeof(char *) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);

		out[(*n)++] = MemoryContextStrdup(outer, v);
	}
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	return out;
}

/*
 * One row of statistics for a sink of the current database (zeros for a sink
 * with no shared slot yet). The view adds the catalog's columns.
 */
Datum
batchkit_sink_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[18];
	bool		nulls[18] = {0};
	BkSinkStatsCopy c;
	bool		found;
	int32		sink_id;
	const BkSinkSlot *s = &c.slot;
	double		q;

	bk_require_shmem();
	sink_id = PG_GETARG_INT32(0);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "batchkit._sink_stats: return type must be a row type");
	if (tupdesc->natts != lengthof(values))
		elog(ERROR, "batchkit._sink_stats: expected %d columns", (int) lengthof(values));

	found = bk_metrics_copy_slot(MyDatabaseId, sink_id, &c);

	values[0] = CStringGetTextDatum(bk_metrics_state(&c));
	values[1] = BoolGetDatum(c.depth_known);
	values[2] = Int64GetDatum((int64) c.queued);
	values[3] = Int64GetDatum((int64) s->batches);
	values[4] = Int64GetDatum((int64) s->rows_sent);
	values[5] = Int64GetDatum((int64) s->rows_failed);
	values[6] = Int64GetDatum((int64) s->rows_dead);
	values[7] = Int64GetDatum((int64) s->bytes_sent);
	values[8] = Int64GetDatum((int64) s->retries);
	values[9] = Int64GetDatum((int64) s->last_batch_size);
	if (s->batches > 0)
		values[10] = Float8GetDatum((double) (s->rows_sent + s->rows_dead) / (double) s->batches);
	else
		nulls[10] = true;
	if (s->last_flush_at != 0)
	{
		values[11] = TimestampTzGetDatum(s->last_flush_at);
		values[12] = interval_from_seconds(s->last_flush_seconds);
	}
	else
		nulls[11] = nulls[12] = true;
	q = bk_histogram_quantile(&s->hist[BK_HIST_LAG_SECONDS], BK_HIST_LAG_SECONDS, 0.5);
	if (q >= 0)
		values[13] = Float8GetDatum(q * 1000.0);
	else
		nulls[13] = true;
	q = bk_histogram_quantile(&s->hist[BK_HIST_LAG_SECONDS], BK_HIST_LAG_SECONDS, 0.99);
	if (q >= 0)
		values[14] = Float8GetDatum(q * 1000.0);
	else
		nulls[14] = true;
	if (s->last_error[0] != '\0')
	{
		int			nsecrets;
		const char **secrets = sink_secrets(sink_id, &nsecrets);
		char		shown[sizeof(s->last_error)];

		bk_redact_secrets(s->last_error, secrets, nsecrets, shown, sizeof(shown));
		values[15] = CStringGetTextDatum(shown);
	}
	else
		nulls[15] = true;
	if (s->last_error_at != 0)
		values[16] = TimestampTzGetDatum(s->last_error_at);
	else
		nulls[16] = true;
	if (found && s->stats_reset != 0)
		values[17] = TimestampTzGetDatum(s->stats_reset);
	else
		nulls[17] = true;

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/* ---- batchkit._batch_histograms(sink_id) ----------------------------------------- */

/* Cumulative buckets of the three histograms of a sink: (metric, le, count). */
Datum
batchkit_batch_histograms(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BkSinkStatsCopy c;

	bk_require_shmem();
	InitMaterializedSRF(fcinfo, 0);
	(void) bk_metrics_copy_slot(MyDatabaseId, PG_GETARG_INT32(0), &c);

	for (int k = 0; k < BK_HIST_KIND_COUNT; k++)
	{
		int			n = 0;
		const double *bounds = bk_histogram_bounds((bk_histogram_kind) k, &n);
		const bk_histogram *h = &c.slot.hist[k];
		uint64		cumulative = 0;

		for (int i = 0; i <= n; i++)
		{
			Datum		values[3];
			bool		nulls[3] = {0};

			cumulative += h->counts[i];
			values[0] = CStringGetTextDatum(bk_histogram_name((bk_histogram_kind) k));
			values[1] = Float8GetDatum(i < n ? bounds[i] : get_float8_infinity());
			values[2] = Int64GetDatum((int64) cumulative);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	return (Datum) 0;
}

/* ---- batchkit.metrics() ---------------------------------------------------------- */

/* Sinks of this database with their catalog-side numbers (SPI connected, as owner). */
static int
gather_sinks(bk_metrics_sink **out, BkSinkStatsCopy **copies_out)
{
	int			rc;
	int			n;
	bk_metrics_sink *m;
	BkSinkStatsCopy *copies;
	char	   *dbname = get_database_name(MyDatabaseId);

	/*
	 * The depth of a sink whose counter is not rebuilt yet is summed from the
	 * queue; otherwise the counter is exact and the sum is skipped (it scans every
	 * queued chunk of the sink). The oldest chunk is one index probe.
	 */
	rc = SPI_execute("SELECT s.sink_id, s.name, s.paused, "
					 "  (SELECT extract(epoch FROM now() - q.captured_at)::float8 "
					 "     FROM batchkit.queue q WHERE q.sink_id = s.sink_id "
					 "    ORDER BY q.chunk_id LIMIT 1), "
					 "  (SELECT count(*) FROM batchkit.dead_letter d WHERE d.sink_id = s.sink_id) "
					 "FROM batchkit.sink s ORDER BY s.name",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading sinks failed: %s", SPI_result_code_string(rc));
	n = (int) SPI_processed;
	m = palloc0(sizeof(bk_metrics_sink) * Max(n, 1));
	copies = palloc0(sizeof(BkSinkStatsCopy) * Max(n, 1));
	{
		SPITupleTable *tt = SPI_tuptable;

		for (int i = 0; i < n; i++)
		{
			HeapTuple	t = tt->vals[i];
			TupleDesc	d = tt->tupdesc;
			bool		isnull;
			int32		sink_id = DatumGetInt32(SPI_getbinval(t, d, 1, &isnull));
			bool		paused = DatumGetBool(SPI_getbinval(t, d, 3, &isnull));
			Datum		age = SPI_getbinval(t, d, 4, &isnull);

			(void) bk_metrics_copy_slot(MyDatabaseId, sink_id, &copies[i]);
			bk_metrics_fill_sink(&copies[i], &m[i]);
			m[i].database = dbname;
			m[i].sink = SPI_getvalue(t, d, 2);
			m[i].state = paused ? "paused" : bk_metrics_state(&copies[i]);
			m[i].oldest_queued_age_seconds = isnull ? 0.0 : Max(DatumGetFloat8(age), 0.0);
			m[i].dead_letters = DatumGetInt64(SPI_getbinval(t, d, 5, &isnull));
			copies[i].slot.sink_id = sink_id;
		}
	}
	/* depths the counters do not know yet */
	for (int i = 0; i < n; i++)
	{
		Datum		arg[1];
		Oid			types[1] = {INT4OID};
		bool		isnull;

		if (m[i].queued_known)
			continue;
		arg[0] = Int32GetDatum(copies[i].slot.sink_id);
		rc = SPI_execute_with_args("SELECT COALESCE(sum(nrecords - done_records), 0)::bigint "
								   "FROM batchkit.queue WHERE sink_id = $1",
								   1, types, arg, NULL, true, 1);
		if (rc == SPI_OK_SELECT && SPI_processed == 1)
		{
			m[i].queued = (uint64) DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
															  SPI_tuptable->tupdesc, 1, &isnull));
			m[i].queued_known = 1;
		}
	}
	*out = m;
	*copies_out = copies;
	return n;
}

/* batch_upsert statistics of this database (SPI connected, as owner). */
static int
gather_upserts(bk_metrics_upsert **out)
{
	int			rc;
	int			n;
	bk_metrics_upsert *u;
	char	   *dbname = get_database_name(MyDatabaseId);

	rc = SPI_execute("SELECT target, calls, rows_in, inserted, updated, fallbacks, "
					 "  total_time_ms / 1000.0 "
					 "FROM batchkit.upsert_stats "
					 "WHERE database = current_database() AND target IS NOT NULL "
					 "ORDER BY target",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading upsert_stats failed: %s", SPI_result_code_string(rc));
	n = (int) SPI_processed;
	u = palloc0(sizeof(bk_metrics_upsert) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;

		u[i].database = dbname;
		u[i].target = SPI_getvalue(t, d, 1);
		u[i].calls = (uint64) DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		u[i].rows_in = (uint64) DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
		u[i].inserted = (uint64) DatumGetInt64(SPI_getbinval(t, d, 4, &isnull));
		u[i].updated = (uint64) DatumGetInt64(SPI_getbinval(t, d, 5, &isnull));
		u[i].fallbacks = (uint64) DatumGetInt64(SPI_getbinval(t, d, 6, &isnull));
		u[i].total_seconds = DatumGetFloat8(SPI_getbinval(t, d, 7, &isnull));
	}
	*out = u;
	return n;
}

/*
 * Render with the core and copy into a text allocated in cxt. The core's buffer
 * is released before any ereport: the copy uses MCXT_ALLOC_NO_OOM.
 */
text *
bk_metrics_render(const bk_metrics_sink *sinks, int nsinks, const bk_metrics_upsert *ups,
				  int nups, MemoryContext cxt)
{
	bk_buf		buf = BK_BUF_INIT;
	bk_status	st;
	bk_code		rc;
	text	   *result;

	rc = bk_metrics_prometheus(sinks, (size_t) nsinks, ups, (size_t) nups, &buf, &st);
	if (rc != BK_OK)
	{
		bk_buf_free(&buf);
		ereport(ERROR,
				(errcode(rc == BK_OUT_OF_MEMORY ? ERRCODE_OUT_OF_MEMORY : ERRCODE_INTERNAL_ERROR),
				 errmsg("batchkit could not format metrics: %s", st.message)));
	}
	result = MemoryContextAllocExtended(cxt, VARHDRSZ + buf.len,
										MCXT_ALLOC_HUGE | MCXT_ALLOC_NO_OOM);
	if (result != NULL)
	{
		SET_VARSIZE(result, VARHDRSZ + buf.len);
		if (buf.len > 0)
			memcpy(VARDATA(result), buf.data, buf.len);
	}
	bk_buf_free(&buf);
	if (result == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory formatting batchkit metrics")));
	return result;
}

/* batchkit.metrics(): this database's sinks and upsert targets as Prometheus text. */
Datum
batchkit_metrics(PG_FUNCTION_ARGS)
{
	Oid			save_userid;
	int			save_sec;
	bk_metrics_sink *sinks;
	BkSinkStatsCopy *copies;
	bk_metrics_upsert *ups;
	int			nsinks;
	int			nups;
	text	   *result;
	MemoryContext outer = CurrentMemoryContext;

	bk_require_shmem();
	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	nsinks = gather_sinks(&sinks, &copies);
	nups = gather_upserts(&ups);
	/* the strings live in SPI's memory: render before SPI_finish, into the caller's context */
	result = bk_metrics_render(sinks, nsinks, ups, nups, outer);
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	PG_RETURN_TEXT_P(result);
}

/* ---- batchkit.reset_stats(sink) ---------------------------------------------------- */

static void
reset_slot_locked(BkSinkSlot *s, TimestampTz now)
{
	SpinLockAcquire(&s->mutex);
	s->batches = 0;
	s->rows_sent = 0;
	s->rows_failed = 0;
	s->rows_dead = 0;
	s->bytes_sent = 0;
	s->retries = 0;
	s->last_batch_size = 0;
	s->last_flush_at = 0;
	s->last_flush_seconds = 0;
	s->last_error[0] = '\0';
	s->last_error_at = 0;
	memset(s->hist, 0, sizeof(s->hist));
	s->stats_reset = now;
	SpinLockRelease(&s->mutex);
}

/*
 * batchkit.reset_stats(sink text DEFAULT NULL): zero the counters and histograms
 * of one sink of this database, or of all of them. The queue depth is not a
 * statistic and is kept. Superusers and batchkit_admin only (EXECUTE is granted
 * to batchkit_admin; checked here too, in case it is granted wider).
 */
Datum
batchkit_reset_stats(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Oid			admin = get_role_oid("batchkit_admin", true);
	int32		sink_id = 0;
	TimestampTz now = GetCurrentTimestamp();

	bk_require_shmem();
	if (!superuser_arg(caller) && !(OidIsValid(admin) && is_member_of_role(caller, admin)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to reset batchkit statistics"),
				 errhint("Only superusers and members of batchkit_admin reset statistics.")));
	if (!PG_ARGISNULL(0))
	{
		Oid			save_userid;
		int			save_sec;
		char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));

		bk_begin_as_owner(&save_userid, &save_sec);
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "batchkit: SPI_connect failed");
		sink_id = bk_lookup_sink_id(name, false);
		SPI_finish();
		bk_end_as_owner(save_userid, save_sec);
	}

	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 0; i < bk_shared->max_sinks; i++)
	{
		BkSinkSlot *s = &bk_shared->sinks[i];

		if (s->in_use && s->dboid == MyDatabaseId && (sink_id == 0 || s->sink_id == sink_id))
			reset_slot_locked(s, now);
	}
	LWLockRelease(bk_shared->lock);
	PG_RETURN_VOID();
}
