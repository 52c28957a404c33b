/*
 * flush_sinks.c — the flush worker's sinks: their configuration read from the
 * catalog (batchkit.sink, batchkit.sink_secret), their clients (opened, reopened
 * after alter_sink, closed), their shared-memory statistics, and the sink port
 * of their flush pipelines (batchkit/sink.h, the client's logs drained after
 * each wait).
 */
#include "postgres.h"

#include "catalog/pg_type_d.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "access/xact.h"
#include "utils/timestamp.h"

#include "batchkit/core.h"
#include "batchkit/flush_pipeline.h"
#include "batchkit/sink.h"
#include "batchkit.h"
#include "shmem/shmem.h"
#include "queue/queue.h"
#include "queue/consume.h"
#include "flush/flush_batch.h"
#include "flush/flush_worker.h"

SinkRuntime *bk_flush_sinks[BK_MAX_SINKS_PER_DB];
int			bk_flush_nsinks = 0;

static SPIPlanPtr plan_current = NULL;

#define sinks bk_flush_sinks
#define nsinks bk_flush_nsinks

/* ---- statistics (shared memory) ------------------------------------------------ */

BkSinkSlot *
stats_slot(SinkRuntime *s)
{
	if (s->slot == NULL || !s->slot->in_use || s->slot->sink_id != s->sink_id)
		s->slot = bk_sink_slot(MyDatabaseId, s->sink_id, true);
	return s->slot;
}

void
stats_state(SinkRuntime *s, const char *state)
{
	BkSinkSlot *slot = stats_slot(s);

	if (slot == NULL)
		return;
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->name, s->name, NAMEDATALEN);
	strlcpy(slot->state, state, sizeof(slot->state));
	SpinLockRelease(&slot->mutex);
}

void
stats_error(SinkRuntime *s, const char *msg, uint64 rows_failed)
{
	BkSinkSlot *slot = stats_slot(s);

	if (slot == NULL)
		return;
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->state, "failing", sizeof(slot->state));
	strlcpy(slot->last_error, msg, sizeof(slot->last_error));
	slot->last_error_at = GetCurrentTimestamp();
	slot->rows_failed += rows_failed;
	if (rows_failed > 0)
		slot->retries++;
	SpinLockRelease(&slot->mutex);
}

void
stats_batch(SinkRuntime *s, uint64 rows, uint64 dead, uint64 bytes, double seconds,
			const double *lags, int nlags)
{
	BkSinkSlot *slot = stats_slot(s);
	bk_histogram lag = {{0}};

	if (slot == NULL)
		return;
	/* one observation per row: bucket them here, merge under the spinlock below */
	for (int i = 0; i < nlags; i++)
		bk_histogram_observe(&lag, BK_HIST_LAG_SECONDS, lags[i]);
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->state, "active", sizeof(slot->state));
	slot->batches++;
	slot->rows_sent += rows - dead;
	slot->rows_dead += dead;
	slot->bytes_sent += bytes;
	slot->last_batch_size = rows;
	slot->last_flush_at = GetCurrentTimestamp();
	slot->last_flush_seconds = seconds;
	bk_histogram_observe(&slot->hist[BK_HIST_BATCH_SIZE], BK_HIST_BATCH_SIZE, (double) rows);
	bk_histogram_observe(&slot->hist[BK_HIST_FLUSH_SECONDS], BK_HIST_FLUSH_SECONDS, seconds);
	for (int i = 0; i <= BK_HISTOGRAM_MAX_BOUNDS; i++)
		slot->hist[BK_HIST_LAG_SECONDS].counts[i] += lag.counts[i];
	slot->hist[BK_HIST_LAG_SECONDS].count += lag.count;
	slot->hist[BK_HIST_LAG_SECONDS].sum += lag.sum;
	SpinLockRelease(&slot->mutex);
}

/* ---- sink configuration ---------------------------------------------------------- */

static int64
opt_int(bk_sink_option *opts, int n, const char *key, int64 dflt)
{
	for (int i = 0; i < n; i++)
		if (strcmp(opts[i].key, key) == 0 && opts[i].value)
			return strtoll(opts[i].value, NULL, 10);
	return dflt;
}

static const char *
opt_str(bk_sink_option *opts, int n, const char *key, const char *dflt)
{
	for (int i = 0; i < n; i++)
		if (strcmp(opts[i].key, key) == 0 && opts[i].value)
			return opts[i].value;
	return dflt;
}

void
close_sink(SinkRuntime *s)
{
	/* a batch in flight is abandoned: it stays in batchkit.inflight and is replayed */
	if (s->pipe)
		bk_flush_pipeline_drop(s->pipe, 0);
	if (s->sink)
		bk_sink_close(s->sink);
	s->sink = NULL;
	bk_flush_format_forget_templates(&s->fmt);
}

static void
drain_sink_logs(SinkRuntime *s)
{
	bk_log_entry e;

	if (s->sink == NULL)
		return;
	while (bk_sink_next_log(s->sink, &e))
	{
		int			level = e.level <= 4 ? WARNING : (e.level <= 6 ? LOG : DEBUG1);

		ereport(level,
				(errmsg("batchkit sink \"%s\": %s: %s", s->name, e.facility, e.message),
				 e.dropped ? errdetail("%llu earlier log lines were dropped.",
									   (unsigned long long) e.dropped) : 0));
	}
}

/*
 * Redis: new batches are numbered above the fence the sink's data carries
 * (inside a transaction, SPI connected). Redis skips a batch at or below its
 * fence as a replay, so a sequence that Redis has seen but this database has
 * not used must never be given to new rows: after a failover to a standby that
 * lagged behind the old primary (whose last claims and acknowledgements were
 * lost with it), a database restored from a backup, a sink re-created under the
 * same name. Until the fence has been read (Redis may be down when the sink is
 * opened, e.g. at promotion), nothing is claimed for the sink (the pipeline reads it first: fence_unknown).
 */
void
record_fence(SinkRuntime *s, int64 fence)
{
	Oid			types[2] = {INT4OID, INT8OID};
	Datum		v[2];

	if (fence <= 0)
		return;
	v[0] = Int32GetDatum(s->sink_id);
	v[1] = Int64GetDatum(fence);
	SPI_execute_with_args("INSERT INTO batchkit.sink_progress AS p (sink_id, last_batch_seq) "
						  "VALUES ($1, $2) ON CONFLICT (sink_id) DO UPDATE SET "
						  "last_batch_seq = greatest(p.last_batch_seq, $2)",
						  2, types, v, NULL, false, 0);
}

/*
 * Open (or reopen after alter_sink) the client of a sink from its full
 * configuration (secrets included: the worker runs as the bootstrap superuser).
 */
static void
set_string(char **dst, const char *v)
{
	if (*dst)
		pfree(*dst);
	*dst = v ? MemoryContextStrdup(TopMemoryContext, v) : NULL;
}


/*
 * Open (or reopen after alter_sink) the client of a sink from its full
 * configuration (secrets included: the worker runs as the bootstrap superuser).
 */
static void
configure_sink(SinkRuntime *s, Datum *keys, Datum *values, bool *nulls, int n, const char *config)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	bk_sink_option *opts = palloc(sizeof(bk_sink_option) * (n + 1));
	int			nopts = 0;
	bk_status	st;
	bk_flush_config *c = &s->pcfg;
	bool		is_redis = strcmp(s->kind, "redis") == 0;

	close_sink(s);
	set_string(&s->config, config);
	for (int i = 0; i < n; i++)
	{
		opts[nopts].key = TextDatumGetCString(keys[i]);
		opts[nopts].value = nulls[i] ? NULL : TextDatumGetCString(values[i]);
		nopts++;
	}
	opts[nopts].key = "name";
	opts[nopts].value = s->name;
	nopts++;

	memset(c, 0, sizeof(*c));
	c->depth = BK_SINK_MAX_IN_FLIGHT;
	c->limits.batch_size = (uint32) opt_int(opts, nopts, "batch_size", 10000);
	c->limits.max_batch_bytes = (uint64) opt_int(opts, nopts, "max_batch_bytes", 16 * 1024 * 1024);
	c->limits.max_wait_ms = (uint32) opt_int(opts, nopts, "max_wait_ms", 10);
	c->retry.max_attempts = (uint32) opt_int(opts, nopts, "max_attempts", 5);
	c->retry.backoff_base_ms = (uint32) opt_int(opts, nopts, "retry_backoff_ms", 100);
	c->retry.backoff_cap_ms = (uint32) opt_int(opts, nopts, "retry_backoff_max_ms", 30000);
	c->send_timeout_ms = (int) opt_int(opts, nopts, "send_timeout_ms", BK_SEND_TIMEOUT_MS);
	c->probe_timeout_ms = BK_PROBE_TIMEOUT_MS;
	c->max_message_bytes = opt_int(opts, nopts, "max_message_bytes", INT64CONST(536870912));
	c->fenced = is_redis;
	s->format = strcmp(opt_str(opts, nopts, "format", "envelope"), "row") == 0 ?
		BK_FORMAT_ROW : BK_FORMAT_ENVELOPE;
	s->fmt.is_redis = is_redis;
	s->fmt.is_hset = is_redis && strcmp(opt_str(opts, nopts, "command", ""), "hset") == 0;
	set_string(&s->fmt.target_template,
			   opt_str(opts, nopts, is_redis ? "key" : "topic",
					   is_redis ? "batchkit:{sink}" : "{schema}.{table}"));
	set_string(&s->fmt.outbox_target, opt_str(opts, nopts, "outbox_target", s->name));

	s->sink = bk_sink_open(s->kind, opts, nopts, &st);
	MemoryContextSwitchTo(old);
	s->open_failed = s->sink == NULL;
	if (s->sink == NULL)
	{
		stats_error(s, st.message, 0);
		ereport(WARNING,
				(errmsg("batchkit sink \"%s\" cannot be opened: %s", s->name, st.message)));
		configure_pipeline(s, false);
		return;
	}
	/* Redis: continue above whatever fence the sink's data already carries */
	if (is_redis)
	{
		int64_t		fence = 0;
		bool		unknown = true;

		if (bk_sink_read_fence(s->sink, &fence, BK_PROBE_TIMEOUT_MS, &st) == BK_OK)
		{
			record_fence(s, fence);
			unknown = false;
		}
		drain_sink_logs(s);
		configure_pipeline(s, unknown);
	}
	else
		configure_pipeline(s, false);
}

static SinkRuntime *
find_sink(int32 sink_id)
{
	for (int i = 0; i < nsinks; i++)
		if (sinks[i]->sink_id == sink_id)
			return sinks[i];
	return NULL;
}

/* Re-read the sinks of this database (inside a transaction, SPI connected). */
void
reload_sinks(void)
{
	int			rc;
	int32	   *slot_ids = palloc(sizeof(int32) * bk_max_sinks);
	int			nslot_ids;

	/*
	 * The slots of this database, listed BEFORE the catalog is read: a slot
	 * whose sink the catalog then lacks belongs to a dropped sink (a slot is
	 * only ever taken for a sink its taker saw, and ids are never reused). Such
	 * a slot can outlive the forgetting below: a transaction that enqueue()d
	 * before the drop takes it again at its commit. Forgetting a slot is always
	 * safe: a live sink's depth is rebuilt from the queue.
	 */
	nslot_ids = bk_sink_slot_ids(MyDatabaseId, slot_ids, bk_max_sinks);
	PushActiveSnapshot(GetLatestSnapshot());	/* taken after the listing */
	rc = SPI_execute("SELECT s.sink_id, s.name, s.kind, s.paused, c.keys, c.vals, "
					 "  (s.options || COALESCE(x.options, '{}'))::text "
					 "FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x USING (sink_id) "
					 "CROSS JOIN LATERAL (SELECT array_agg(key ORDER BY key) AS keys, "
					 "  array_agg(value ORDER BY key) AS vals "
					 "  FROM batchkit._sink_config(s.sink_id)) c ORDER BY s.sink_id",
					 true, 0);
	PopActiveSnapshot();
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "batchkit: reading sinks failed");
	for (int k = 0; k < nslot_ids; k++)
	{
		bool		exists = false;

		for (uint64 r = 0; r < SPI_processed && !exists; r++)
		{
			bool		isnull;

			exists = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc,
												 1, &isnull)) == slot_ids[k];
		}
		if (!exists && find_sink(slot_ids[k]) == NULL)
			bk_sink_slot_forget(MyDatabaseId, slot_ids[k]);
	}
	pfree(slot_ids);
	for (int i = 0; i < nsinks; i++)
		sinks[i]->seen = false;
	for (uint64 r = 0; r < SPI_processed && r < BK_MAX_SINKS_PER_DB; r++)
	{
		HeapTuple	t = SPI_tuptable->vals[r];
		TupleDesc	d = SPI_tuptable->tupdesc;
		bool		isnull;
		int32		id = DatumGetInt32(SPI_getbinval(t, d, 1, &isnull));
		SinkRuntime *s = find_sink(id);
		char	   *config = SPI_getvalue(t, d, 7);
		Datum		kd = SPI_getbinval(t, d, 5, &isnull);
		bool		knull = isnull;
		Datum		vd = SPI_getbinval(t, d, 6, &isnull);

		if (s == NULL)
		{
			s = MemoryContextAllocZero(TopMemoryContext, sizeof(SinkRuntime));
			s->sink_id = id;
			sinks[nsinks++] = s;
		}
		s->seen = true;
		strlcpy(s->name, SPI_getvalue(t, d, 2), NAMEDATALEN);
		strlcpy(s->kind, SPI_getvalue(t, d, 3), sizeof(s->kind));
		s->paused = DatumGetBool(SPI_getbinval(t, d, 4, &isnull));
		if (s->config == NULL || strcmp(s->config, config) != 0)
		{
			Datum	   *keys = NULL,
					   *vals = NULL;
			bool	   *kn,
					   *vn;
			int			nk = 0,
						nv = 0;

			if (!knull)
			{
				deconstruct_array(DatumGetArrayTypeP(kd), TEXTOID, -1, false, TYPALIGN_INT,
								  &keys, &kn, &nk);
				deconstruct_array(DatumGetArrayTypeP(vd), TEXTOID, -1, false, TYPALIGN_INT,
								  &vals, &vn, &nv);
			}
			configure_sink(s, keys, vals, nk ? vn : NULL, nk, config);
		}
		stats_state(s, s->paused ? "paused" :
					(s->open_failed || bk_flush_pipeline_failing(s->pipe) ? "failing" : "idle"));
	}
	/* forget dropped sinks */
	for (int i = 0; i < nsinks; i++)
	{
		if (!sinks[i]->seen)
		{
			close_sink(sinks[i]);
			free_sink(sinks[i]);
			sinks[i] = sinks[nsinks - 1];
			nsinks--;
			i--;
		}
	}
}
/* ---- the sink port: batchkit/sink.h, its logs drained after each wait ------------ */

static bk_code
port_start(void *ctx, const bk_message *msgs, size_t n, int64_t seq, bk_send_result *results,
		   int timeout_ms, bk_status *st)
{
	return bk_sink_start_batch(((SinkRuntime *) ctx)->sink, msgs, n, seq, results, timeout_ms, st);
}

static bk_code
port_finish(void *ctx, int64_t seq, bk_send_summary *summary, bk_status *st)
{
	SinkRuntime *s = (SinkRuntime *) ctx;
	bk_code		rc = bk_sink_finish_batch(s->sink, seq, summary, st);

	drain_sink_logs(s);
	return rc;
}

static bk_code
port_probe(void *ctx, int timeout_ms, bk_status *st)
{
	SinkRuntime *s = (SinkRuntime *) ctx;
	bk_code		rc = bk_sink_probe(s->sink, timeout_ms, st);

	drain_sink_logs(s);
	return rc;
}

static bk_code
port_read_fence(void *ctx, int64_t *fence, int timeout_ms, bk_status *st)
{
	SinkRuntime *s = (SinkRuntime *) ctx;
	bk_code		rc = bk_sink_read_fence(s->sink, fence, timeout_ms, st);

	drain_sink_logs(s);
	return rc;
}

/* ---- the environment: clock, jitter, interrupts ----------------------------------- */

static int64_t
env_now_us(void *ctx)
{
	return (int64_t) GetCurrentTimestamp();
}

static double
env_random01(void *ctx)
{
	return pg_prng_double(&pg_global_prng_state);
}

static int
env_interrupted(void *ctx)
{
	return InterruptPending ? 1 : 0;
}

bk_sink_port
bk_flush_sink_port(SinkRuntime *s)
{
	bk_sink_port k = {s, port_start, port_finish, port_probe, port_read_fence};

	return k;
}

bk_flush_env
bk_flush_env_port(SinkRuntime *s)
{
	bk_flush_env e = {s, env_now_us, env_random01, env_interrupted};

	return e;
}

/*
 * The sink's depth counter (slot->queued), rebuilt from the queue table the
 * first time the worker serves the sink after start-up (bk_queue_rebuild_depth
 * says how it stays right while writers commit): from then on the worker and
 * every reader of sink_stats / metrics() use the counter instead of summing the
 * queue (a read would otherwise scan the whole backlog, and more of it the
 * longer a drain has been deleting chunks).
 */
BkSinkSlot *
rebuild_depth(SinkRuntime *s)
{
	BkSinkSlot *slot = stats_slot(s);

	if (slot == NULL || slot->depth_known)
		return slot;
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	(void) bk_queue_rebuild_depth(slot, s->sink_id);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return slot;
}

/*
 * Inside the claim transaction: is the sink still unpaused, with the options the
 * client was opened with? Checked before every batch, so pause_sink() and
 * alter_sink() take effect within one batch of their commit.
 */
bool
sink_still_current(SinkRuntime *s)
{
	Datum		arg[1];
	Oid			types[1] = {INT4OID};
	int			rc;
	bool		isnull;
	bool		ok = false;

	arg[0] = Int32GetDatum(s->sink_id);
	rc = SPI_execute_plan(bk_keep_plan(&plan_current,
									   "SELECT s.paused, (s.options || COALESCE(x.options, '{}'))::text "
									   "FROM batchkit.sink s LEFT JOIN batchkit.sink_secret x USING (sink_id) "
									   "WHERE s.sink_id = $1", 1, types),
						  arg, NULL, true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		paused = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
														SPI_tuptable->tupdesc, 1, &isnull));
		char	   *config = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);

		ok = !paused && s->config != NULL && strcmp(config, s->config) == 0;
	}
	return ok;
}
