/*
 * metrics.c — what a DBA sees of batching: the set-returning functions behind
 * the batchkit.sink_stats and batchkit.batch_histograms views,
 * batchkit.metrics() (Prometheus text) and batchkit.reset_stats(); and the
 * gauges the flush worker publishes for the launcher's /metrics endpoint.
 *
 * Locking contract (the statistics live in BkSinkSlot, shmem.c):
 *   - bk_shared->lock SHARED while finding and copying slots, so a slot cannot
 *     be forgotten and reused under the copy (EXCLUSIVE only to free the slots
 *     of a dropped database);
 *   - the slot's spinlock `mutex` around the copy itself (one struct
 *     assignment), around reset_stats' stores and the worker's gauge stores,
 *     nothing else: no call, no allocation, no ereport while it is held. The
 *     flush worker writes the statistics under the same spinlock, so a reader
 *     delays it by one memcpy at most and never makes it wait for SQL;
 *   - `queued` is an atomic, read without any lock.
 * Everything after the copy (quantiles, formatting, SPI) works on local copies.
 *
 * Cost: monitoring polls these often, so each call is one pass over the slots
 * and one prepared SPI query per purpose (plans kept for the backend's life);
 * the views are thin `SELECT * FROM fn()`. A sink's queue depth is the shared
 * counter when it is known; the flush worker rebuilds it the first time it
 * serves the sink after start-up (a read summing the queue cost ~1.5 ms with a
 * few million rows queued, and slowed a drain by 0.16% per read/s), so only in
 * the moment before that, or with no worker running, is the queue summed.
 * Reading never rebuilds it (no monitoring side effect).
 *
 * Privileges: the catalog is read through SPI as the queue's owner
 * (bk_begin_as_owner), because the callers — pg_monitor members — have no
 * privilege on batchkit's tables; EXECUTE on these functions is what is
 * granted. They run with search_path = pg_catalog, pg_temp (SQL SET clause),
 * so nothing a caller puts on its path runs as the owner. Secrets: no label is
 * free text (sink names are [A-Za-z0-9_.-]); last_error is shown only after
 * bk_redact_secrets has masked the sink's secret option values.
 *
 * C++ lifetime: bk_metrics_prometheus fills a core-owned bk_buf; it is copied
 * into palloc memory with MCXT_ALLOC_NO_OOM and freed before anything can
 * ereport.
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
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
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batchkit/encoding.h"
#include "batchkit/histogram.h"
#include "batchkit/metrics.h"
#include "shmem/shmem.h"
#include "queue/queue.h"
#include "metrics/metrics.h"

#define BK_GAUGES_INTERVAL_MS 1000

PG_FUNCTION_INFO_V1(batchkit_sink_stats);
PG_FUNCTION_INFO_V1(batchkit_batch_histograms);
PG_FUNCTION_INFO_V1(batchkit_metrics);
PG_FUNCTION_INFO_V1(batchkit_reset_stats);

/* ---- copying statistics out of shared memory ------------------------------------ */

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
 * Copy every slot of a database (every slot: InvalidOid). Two passes: count,
 * allocate (never while holding the lock), copy; a slot created in between
 * shows on the next call.
 */
int
bk_metrics_copy_slots(Oid dboid, BkSinkStatsCopy **out)
{
	int			n = 0;
	int			cap = 0;
	BkSinkStatsCopy *copies;

	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 0; i < bk_shared->max_sinks; i++)
		if (bk_shared->sinks[i].in_use &&
			(!OidIsValid(dboid) || bk_shared->sinks[i].dboid == dboid))
			cap++;
	LWLockRelease(bk_shared->lock);

	copies = palloc(sizeof(BkSinkStatsCopy) * Max(cap, 1));
	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 0; i < bk_shared->max_sinks && n < cap; i++)
		if (bk_shared->sinks[i].in_use &&
			(!OidIsValid(dboid) || bk_shared->sinks[i].dboid == dboid))
			bk_metrics_copy_locked(&bk_shared->sinks[i], &copies[n++]);
	LWLockRelease(bk_shared->lock);
	*out = copies;
	return n;
}

/*
 * The state shown for a sink that is not paused: failing while in backoff,
 * active while it has rows to deliver or has just delivered, else idle.
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

/* ---- the catalog side (SPI as the owner, prepared plans) --------------------------- */

/* One sink of this database: catalog columns, table-derived gauges, shared statistics. */
typedef struct SinkRow
{
	int32		sink_id;
	char	   *name;
	char	   *kind;
	bool		paused;
	bool		has_oldest;		/* a chunk is queued */
	TimestampTz oldest_at;		/* its capture time */
	int64		dead_letters;
	BkSinkStatsCopy stats;		/* zeros when the sink has no slot yet */
	bool		has_slot;
} SinkRow;

static SPIPlanPtr sinks_plan = NULL;
static SPIPlanPtr names_plan = NULL;
static SPIPlanPtr secrets_plan = NULL;
static SPIPlanPtr upserts_plan = NULL;

static SPIPlanPtr
prepare_kept(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "batchkit: SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * The sinks of this database, in name order, with their statistics. With
 * `gauges`, also the oldest queued chunk (one probe of the (sink_id, chunk_id)
 * index), the dead letter count, and — only for a sink whose depth counter is
 * not rebuilt yet — the queue depth summed from the table. Rows and strings are
 * allocated in `cxt`; SPI must not be connected.
 */
static int
gather_sinks(SinkRow **out, bool gauges, MemoryContext cxt)
{
	BkSinkStatsCopy *copies;
	int			ncopies = bk_metrics_copy_slots(MyDatabaseId, &copies);
	Datum	   *known = palloc(sizeof(Datum) * Max(ncopies, 1));
	int			nknown = 0;
	Oid			save_userid;
	int			save_sec;
	int			rc;
	int			n;
	SinkRow    *rows;

	for (int i = 0; i < ncopies; i++)
		if (copies[i].depth_known)
			known[nknown++] = Int32GetDatum(copies[i].slot.sink_id);

	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	if (gauges)
	{
		Oid			types[1] = {INT4ARRAYOID};
		Datum		args[1];

		args[0] = PointerGetDatum(construct_array(known, nknown, INT4OID, 4, true, TYPALIGN_INT));
		rc = SPI_execute_plan(prepare_kept(&sinks_plan,
										   "SELECT s.sink_id, s.name, s.kind, s.paused, "
										   "  (SELECT q.captured_at FROM batchkit.queue q "
										   "    WHERE q.sink_id = s.sink_id ORDER BY q.chunk_id LIMIT 1), "
										   "  (SELECT count(*) FROM batchkit.dead_letter d "
										   "    WHERE d.sink_id = s.sink_id), "
										   "  CASE WHEN s.sink_id = ANY ($1) THEN NULL ELSE "
										   "    (SELECT COALESCE(sum(q.nrecords - q.done_records), 0)::int8 "
										   "       FROM batchkit.queue q WHERE q.sink_id = s.sink_id) END "
										   "FROM batchkit.sink s ORDER BY s.name",
										   1, types),
							  args, NULL, true, 0);
	}
	else
		rc = SPI_execute_plan(prepare_kept(&names_plan,
										   "SELECT s.sink_id, s.name, s.kind, s.paused "
										   "FROM batchkit.sink s ORDER BY s.name", 0, NULL),
							  NULL, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading sinks failed: %s", SPI_result_code_string(rc));

	n = (int) SPI_processed;
	rows = MemoryContextAllocZero(cxt, sizeof(SinkRow) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		SinkRow    *r = &rows[i];
		bool		isnull;
		Datum		v;

		r->sink_id = DatumGetInt32(SPI_getbinval(t, d, 1, &isnull));
		r->name = MemoryContextStrdup(cxt, TextDatumGetCString(SPI_getbinval(t, d, 2, &isnull)));
		r->kind = MemoryContextStrdup(cxt, TextDatumGetCString(SPI_getbinval(t, d, 3, &isnull)));
		r->paused = DatumGetBool(SPI_getbinval(t, d, 4, &isnull));
		for (int j = 0; j < ncopies; j++)
			if (copies[j].slot.sink_id == r->sink_id)
			{
				r->stats = copies[j];
				r->has_slot = true;
				break;
			}
		if (!gauges)
			continue;
		v = SPI_getbinval(t, d, 5, &isnull);
		r->has_oldest = !isnull;
		r->oldest_at = isnull ? 0 : DatumGetTimestampTz(v);
		r->dead_letters = DatumGetInt64(SPI_getbinval(t, d, 6, &isnull));
		v = SPI_getbinval(t, d, 7, &isnull);
		if (!isnull)
		{
			/* counter not rebuilt yet: the table's sum stands in for it */
			r->stats.depth_known = true;
			r->stats.queued = (uint64) Max(DatumGetInt64(v), 0);
		}
	}
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	*out = rows;
	return n;
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
	Oid			types[1] = {INT4OID};
	Datum		args[1];
	const char **out;
	int			rc;

	*n = 0;
	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	args[0] = Int32GetDatum(sink_id);
	rc = SPI_execute_plan(prepare_kept(&secrets_plan,
									   "SELECT e.value FROM batchkit.sink_secret x, "
									   "  jsonb_each_text(x.options) e "
									   "WHERE x.sink_id = $1 AND e.value IS NOT NULL",
									   1, types),
						  args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading sink secrets failed: %s", SPI_result_code_string(rc));
	out = MemoryContextAllocZero(outer, sizeof(char *) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
		out[(*n)++] = MemoryContextStrdup(outer, SPI_getvalue(SPI_tuptable->vals[i],
															  SPI_tuptable->tupdesc, 1));
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
	return out;
}

/* ---- batchkit._sink_stats() -------------------------------------------------------- */

static Datum
interval_from_seconds(double seconds)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (TimeOffset) llround(seconds * USECS_PER_SEC);
	return IntervalPGetDatum(iv);
}

#define SINK_STATS_COLS 21

/* One row per sink of this database (zero counters for a sink with no slot yet). */
Datum
batchkit_sink_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SinkRow    *rows;
	int			n;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	bk_require_shmem();
	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != SINK_STATS_COLS)
		elog(ERROR, "batchkit._sink_stats: expected %d columns", SINK_STATS_COLS);
	n = gather_sinks(&rows, true, CurrentMemoryContext);

	for (int i = 0; i < n; i++)
	{
		SinkRow    *r = &rows[i];
		const BkSinkSlot *s = &r->stats.slot;
		Datum		values[SINK_STATS_COLS];
		bool		nulls[SINK_STATS_COLS] = {0};
		double		q;

		values[0] = CStringGetTextDatum(r->name);
		values[1] = CStringGetTextDatum(r->kind);
		values[2] = CStringGetTextDatum(r->paused ? "paused" : bk_metrics_state(&r->stats));
		values[3] = Int64GetDatum((int64) r->stats.queued);
		values[4] = interval_from_seconds(r->has_oldest ?
										  Max((double) (now - r->oldest_at) / USECS_PER_SEC, 0) : 0);
		values[5] = Int64GetDatum((int64) s->batches);
		values[6] = Int64GetDatum((int64) s->rows_sent);
		values[7] = Int64GetDatum((int64) s->rows_failed);
		values[8] = Int64GetDatum((int64) s->rows_dead);
		values[9] = Int64GetDatum(r->dead_letters);
		values[10] = Int64GetDatum((int64) s->bytes_sent);
		values[11] = Int64GetDatum((int64) s->retries);
		values[12] = Int64GetDatum((int64) s->last_batch_size);
		if (s->batches > 0)
			values[13] = Float8GetDatum((double) (s->rows_sent + s->rows_dead) / (double) s->batches);
		else
			nulls[13] = true;
		if (s->last_flush_at != 0)
		{
			values[14] = TimestampTzGetDatum(s->last_flush_at);
			values[15] = interval_from_seconds(s->last_flush_seconds);
		}
		else
			nulls[14] = nulls[15] = true;
		q = bk_histogram_quantile(&s->hist[BK_HIST_LAG_SECONDS], BK_HIST_LAG_SECONDS, 0.5);
		values[16] = Float8GetDatum(q * 1000.0);
		nulls[16] = q < 0;
		q = bk_histogram_quantile(&s->hist[BK_HIST_LAG_SECONDS], BK_HIST_LAG_SECONDS, 0.99);
		values[17] = Float8GetDatum(q * 1000.0);
		nulls[17] = q < 0;
		if (s->last_error[0] != '\0')
		{
			int			nsecrets;
			const char **secrets = sink_secrets(r->sink_id, &nsecrets);
			char		shown[sizeof(s->last_error)];

			bk_redact_secrets(s->last_error, secrets, nsecrets, shown, sizeof(shown));
			values[18] = CStringGetTextDatum(shown);
		}
		else
			nulls[18] = true;
		values[19] = TimestampTzGetDatum(s->last_error_at);
		nulls[19] = s->last_error_at == 0;
		values[20] = TimestampTzGetDatum(s->stats_reset);
		nulls[20] = !r->has_slot || s->stats_reset == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ---- batchkit._batch_histograms() ---------------------------------------------------- */

/* Cumulative buckets of the three histograms of every sink: (sink, metric, le, count). */
Datum
batchkit_batch_histograms(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	SinkRow    *rows;
	int			n;

	bk_require_shmem();
	InitMaterializedSRF(fcinfo, 0);
	n = gather_sinks(&rows, false, CurrentMemoryContext);

	for (int r = 0; r < n; r++)
	{
		/* metrics in name order: batch_size, flush_duration_seconds, lag_seconds */
		for (int k = 0; k < BK_HIST_KIND_COUNT; k++)
		{
			int			nb = 0;
			const double *bounds = bk_histogram_bounds((bk_histogram_kind) k, &nb);
			const bk_histogram *h = &rows[r].stats.slot.hist[k];
			uint64		cumulative = 0;

			for (int i = 0; i <= nb; i++)
			{
				Datum		values[4];
				bool		nulls[4] = {0};

				cumulative += h->counts[i];
				values[0] = CStringGetTextDatum(rows[r].name);
				values[1] = CStringGetTextDatum(bk_histogram_name((bk_histogram_kind) k));
				values[2] = Float8GetDatum(i < nb ? bounds[i] : get_float8_infinity());
				values[3] = Int64GetDatum((int64) cumulative);
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
		}
	}
	return (Datum) 0;
}

/* ---- batchkit.metrics() ---------------------------------------------------------- */

/* batch_upsert statistics of this database (SPI as owner); strings in cxt. */
static int
gather_upserts(bk_metrics_upsert **out, const char *dbname, MemoryContext cxt)
{
	Oid			save_userid;
	int			save_sec;
	Oid			types[1] = {OIDOID};
	Datum		args[1];
	int			rc;
	int			n;
	bk_metrics_upsert *u;

	bk_begin_as_owner(&save_userid, &save_sec);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "batchkit: SPI_connect failed");
	args[0] = ObjectIdGetDatum(MyDatabaseId);
	rc = SPI_execute_plan(prepare_kept(&upserts_plan,
									   "SELECT u.relid::regclass::text, u.calls, u.rows_in, "
									   "  u.inserted, u.updated, u.fallbacks, u.total_time_ms / 1000.0 "
									   "FROM batchkit._upsert_stats() u WHERE u.dbid = $1 ORDER BY 1",
									   1, types),
						  args, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading upsert statistics failed: %s", SPI_result_code_string(rc));
	n = (int) SPI_processed;
	u = MemoryContextAllocZero(cxt, sizeof(bk_metrics_upsert) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;

		u[i].database = dbname;
		u[i].target = MemoryContextStrdup(cxt, SPI_getvalue(t, d, 1));
		u[i].calls = (uint64) DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
		u[i].rows_in = (uint64) DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
		u[i].inserted = (uint64) DatumGetInt64(SPI_getbinval(t, d, 4, &isnull));
		u[i].updated = (uint64) DatumGetInt64(SPI_getbinval(t, d, 5, &isnull));
		u[i].fallbacks = (uint64) DatumGetInt64(SPI_getbinval(t, d, 6, &isnull));
		u[i].total_seconds = DatumGetFloat8(SPI_getbinval(t, d, 7, &isnull));
	}
	SPI_finish();
	bk_end_as_owner(save_userid, save_sec);
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
	MemoryContext cxt = CurrentMemoryContext;
	char	   *dbname;
	SinkRow    *rows;
	bk_metrics_sink *sinks;
	bk_metrics_upsert *ups;
	int			nsinks;
	int			nups;
	TimestampTz now = GetCurrentTransactionStartTimestamp();

	bk_require_shmem();
	dbname = get_database_name(MyDatabaseId);
	nsinks = gather_sinks(&rows, true, cxt);
	nups = gather_upserts(&ups, dbname, cxt);
	sinks = palloc0(sizeof(bk_metrics_sink) * Max(nsinks, 1));
	for (int i = 0; i < nsinks; i++)
	{
		SinkRow    *r = &rows[i];

		bk_metrics_fill_sink(&r->stats, &sinks[i]);
		sinks[i].database = dbname;
		sinks[i].sink = r->name;
		sinks[i].state = r->paused ? "paused" : bk_metrics_state(&r->stats);
		sinks[i].oldest_queued_age_seconds =
			r->has_oldest ? Max((double) (now - r->oldest_at) / USECS_PER_SEC, 0.0) : 0.0;
		sinks[i].dead_letters = r->dead_letters;
	}
	PG_RETURN_TEXT_P(bk_metrics_render(sinks, nsinks, ups, nups, cxt));
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
 * of one sink of this database, or of all of them. The queue depth and the
 * gauges are not statistics and are kept. Superusers and batchkit_admin only
 * (EXECUTE is granted to batchkit_admin; checked here too, in case it is
 * granted wider).
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

/* ---- gauges for the launcher's /metrics endpoint ------------------------------------- */

/*
 * Called by the flush worker on every loop iteration, outside any transaction:
 * while the /metrics endpoint is on (batchkit.metrics_port), about once a
 * second, copy into each sink's slot what the launcher cannot read itself — the capture time of the oldest queued chunk and the number of dead
 * letters. One short read-only transaction; a failure is logged and skipped.
 */
void
bk_metrics_publish_gauges(void)
{
	static TimestampTz last = 0;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext oldcxt = CurrentMemoryContext;

	/* only the endpoint needs them: nothing to do while it is off */
	if (bk_shared == NULL || bk_metrics_port == 0 ||
		!TimestampDifferenceExceeds(last, now, BK_GAUGES_INTERVAL_MS))
		return;
	last = now;
	PG_TRY();
	{
		int			rc;
		SPITupleTable *tt;
		uint64		nrows;

		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		/* the queue is summed only for a sink whose depth counter is not rebuilt */
		rc = SPI_execute("SELECT s.sink_id, "
						 "  (SELECT q.captured_at FROM batchkit.queue q "
						 "    WHERE q.sink_id = s.sink_id ORDER BY q.chunk_id LIMIT 1), "
						 "  (SELECT count(*) FROM batchkit.dead_letter d WHERE d.sink_id = s.sink_id) "
						 "FROM batchkit.sink s", true, 0);
		/* later SPI calls replace SPI_tuptable; this result stays valid until SPI_finish */
		tt = rc == SPI_OK_SELECT ? SPI_tuptable : NULL;
		nrows = rc == SPI_OK_SELECT ? SPI_processed : 0;
		for (uint64 i = 0; i < nrows; i++)
		{
			HeapTuple	t = tt->vals[i];
			TupleDesc	d = tt->tupdesc;
			bool		isnull;
			int32		sink_id = DatumGetInt32(SPI_getbinval(t, d, 1, &isnull));
			Datum		oldest = SPI_getbinval(t, d, 2, &isnull);
			TimestampTz oldest_at = isnull ? 0 : DatumGetTimestampTz(oldest);
			int64		dead = DatumGetInt64(SPI_getbinval(t, d, 3, &isnull));
			int64		in_table = -1;
			BkSinkSlot *slot = bk_sink_slot(MyDatabaseId, sink_id, false);

			if (slot == NULL)
				continue;
			if (!slot->depth_known)
			{
				Oid			types[1] = {INT4OID};
				Datum		args[1];

				args[0] = Int32GetDatum(sink_id);
				if (SPI_execute_with_args("SELECT COALESCE(sum(nrecords - done_records), 0)::int8 "
										  "FROM batchkit.queue WHERE sink_id = $1",
										  1, types, args, NULL, true, 1) == SPI_OK_SELECT &&
					SPI_processed == 1)
					in_table = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														   SPI_tuptable->tupdesc, 1, &isnull));
			}
			SpinLockAcquire(&slot->mutex);
			slot->oldest_queued_at = oldest_at;
			slot->dead_letters = dead;
			slot->queued_in_table = in_table;
			slot->gauges_at = now;
			SpinLockRelease(&slot->mutex);
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
}
