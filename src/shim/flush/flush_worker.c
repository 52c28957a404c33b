/*
 * flush_worker.c — the per-database flush worker: drains each sink's queue in
 * batches into Kafka or Redis. This file is the Postgres side of it; what
 * happens to the batches (linger, claim, start, finish, acknowledge in order,
 * backoff and probing, dead letters, drop and replay) is decided by the core's
 * flush pipeline (batchkit/flush_pipeline.h, src/core/flush/pipeline.cpp: its
 * state machine is written there), which this file drives through its ports.
 *
 * One worker per database (started by the launcher) serves every sink of that
 * database, round robin. Why one per database and not one per sink: a sink is
 * mostly waiting on the network, the expensive part (decoding rows to JSON) is
 * CPU that several workers would only fight over on a small machine, and one
 * connection per database keeps max_worker_processes needs predictable. A slow
 * or failing sink must not starve the others: it backs off (the pipeline says
 * until when), a send never waits longer than batchkit.send_timeout, and linger
 * (max_wait_ms) is a per-sink deadline, not a sleep.
 *
 * Per sink, a pipeline of depth two (BK_SINK_MAX_IN_FLIGHT; consume.h has the
 * queue protocol, bk_sink_start_batch in batchkit/sink.h the sink's side). The
 * queue port's round is ONE transaction: dead-letter what the sink refused for
 * good and acknowledge batch N-1, claim (or replay) batch N+1, decode it,
 * commit. Then, with no transaction open and no snapshot held, the pipeline
 * starts N+1 while the sink still works on N and finishes N. Up to two batches
 * per sink are in batchkit.inflight; a crash replays them with their batch_seq,
 * lowest first: Kafka may see duplicates (same idempotency key), Redis skips
 * what it applied by its fence: effectively once.
 *
 * For Kafka the round commits asynchronously (no WAL flush wait): losing it in
 * a crash only re-sends batches, which at-least-once allows. Redis needs a
 * durable claim (its fence relies on a batch keeping its sequence number), so
 * its claims commit synchronously.
 *
 * Errors: a port call runs its Postgres work under PG_TRY and returns an error
 * as a value (the pipeline then drops its batches in flight and backs off); no
 * ereport(ERROR) ever unwinds through the core's frames. The worker loop's own
 * PG_TRY covers the rest of a sink's turn; a Postgres error is recorded as the
 * sink's last error and the worker keeps serving the other sinks. Interrupts a
 * send gave way to are processed after the pipeline's step returned.
 *
 * Threads: librdkafka's threads never call back into this file; its logs are
 * pulled with bk_sink_next_log after each call.
 */
#include "postgres.h"

#include <malloc.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type_d.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batchkit/core.h"
#include "batchkit/flush_pipeline.h"
#include "batchkit/sink.h"
#include "batchkit.h"
#include "shmem/shmem.h"
#include "queue/queue.h"
#include "queue/consume.h"
#include "metrics/metrics.h"
#include "flush/flush.h"
#include "flush/flush_batch.h"
#include "flush/flush_worker.h"

#define BK_MAINTAIN_INTERVAL_MS 1000


#define sinks bk_flush_sinks
#define nsinks bk_flush_nsinks

static BkWorkerSlot *my_slot = NULL;
static bool force_reload = false;
static SPIPlanPtr plan_oldest = NULL;
/* ---- the queue port: transactions around consume.h ------------------------------ */

static uint64
dead_letter_and_ack(SinkRuntime *s, const bk_flush_ack *ack)
{
	FlushBatch *f = (FlushBatch *) ack->batch->handle;
	BatchBuild *b = &f->build;
	const bk_send_result *results = ack->results;
	uint64		dead = 0;
	Oid			types[9] = {INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID};

	for (int i = 0; i < b->nmsgs; i++)
	{
		PendingMsg *p = &b->msgs[i];
		Datum		v[9];
		char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
		static const char *ops[] = {"insert", "update", "delete", "message"};

		if (results[i].code != BK_SEND_REJECTED)
			continue;
		v[0] = Int32GetDatum(s->sink_id);
		v[1] = Int64GetDatum(p->seq);
		v[2] = CStringGetTextDatum(ops[p->op & 3]);
		if (p->has_source)
			v[3] = PointerGetDatum(cstring_to_text_with_len(b->arena.data + p->src_off, p->src_len));
		else
			nulls[3] = 'n';
		if (p->has_key)
			v[4] = PointerGetDatum(cstring_to_text_with_len(b->arena.data + p->key_off, p->key_len));
		else
			nulls[4] = 'n';
		v[5] = PointerGetDatum(cstring_to_text_with_len(b->arena.data + p->val_off, p->val_len));
		v[6] = CStringGetTextDatum(results[i].message ? results[i].message : "rejected");
		if (p->has_target)
			v[7] = PointerGetDatum(cstring_to_text_with_len(b->arena.data + p->tgt_off, p->tgt_len));
		else
			nulls[7] = 'n';
		v[8] = Int32GetDatum((int32) Max(ack->attempts, 1));
		SPI_execute_with_args("INSERT INTO batchkit.dead_letter (sink_id, seq, op, source, key, "
							  "message, error, target, attempts) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, v, nulls, false, 0);
		dead++;
	}
	bk_ack_batch(s->sink_id, f->batch.batch_seq);
	return dead;
}

/* Stats and logs of an acknowledged batch (after its transaction committed). */
static void
finish_delivered(SinkRuntime *s, const bk_flush_ack *ack, uint64 dead)
{
	FlushBatch *f = (FlushBatch *) ack->batch->handle;
	TimestampTz now = GetCurrentTimestamp();
	int			n = f->build.nmsgs;
	double	   *lags = MemoryContextAlloc(f->cxt, sizeof(double) * Max(n, 1));

	for (int i = 0; i < n; i++)
		lags[i] = (double) (now - f->build.msgs[i].captured_at) / 1000000.0;
	stats_batch(s, n, dead, ack->bytes, ack->seconds, lags, n);
	if (dead > 0)
		ereport(WARNING,
				(errmsg("batchkit sink \"%s\": %llu messages moved to batchkit.dead_letters",
						s->name, (unsigned long long) dead)));
}

/* An error raised inside a port call, as the port's return value. */
static bk_code
caught_error(MemoryContext cxt, bk_status *st)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	st->code = BK_UNAVAILABLE;
	strlcpy(st->message, edata->message, sizeof(st->message));
	FreeErrorData(edata);
	return BK_UNAVAILABLE;
}

/* Inside the round's transaction: claim (or replay) and decode the next batch. */
static bool
claim_next(SinkRuntime *s, bk_queue_round *r)
{
	FlushBatch *f;

	if (!sink_still_current(s))
	{
		r->stale = 1;			/* paused or altered: reload before sending anything */
		return false;
	}
	if (r->fence >= 0)
		record_fence(s, r->fence);
	s->fmt.name = s->name;
	f = bk_flush_batch_get(&s->batches, &s->fmt);
	if (!bk_flush_batch_claim(f, s->sink_id, s->format, r->max_rows, r->max_bytes, r->after_seq))
	{
		bk_flush_batch_put(f);
		return false;
	}
	r->claimed = 1;
	r->batch.batch_seq = f->batch.batch_seq;
	r->batch.replay = f->batch.replay;
	r->batch.msgs = f->msgs;
	r->batch.nmsgs = f->build.nmsgs;
	r->batch.decode_error = f->build.error[0] ? f->build.error : NULL;
	r->batch.handle = f;
	return true;
}

/*
 * The round: ONE transaction acknowledges the delivered batches (dead-lettering
 * what the sink refused) and claims and decodes the next one. Riding the
 * acknowledgement on the next claim halves the commits per batch.
 */
static bk_code
port_round(void *ctx, bk_queue_round *r, bk_status *st)
{
	SinkRuntime *s = (SinkRuntime *) ctx;
	MemoryContext cxt = CurrentMemoryContext;
	int			saved_sync = synchronous_commit;
	uint64	   *dead = palloc0(sizeof(uint64) * Max(r->nacks, 1));
	volatile bk_code rc = BK_OK;

	r->stale = r->claimed = 0;
	PG_TRY();
	{
		bk_slot_set_state(my_slot, "claiming", s->name);
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		for (size_t i = 0; i < r->nacks; i++)
		{
			bk_slot_set_state(my_slot, "acknowledging", s->name);
			dead[i] = dead_letter_and_ack(s, &r->acks[i]);
		}
		if (r->claim)
			(void) claim_next(s, r);
		SPI_finish();
		PopActiveSnapshot();
		if (!s->fmt.is_redis || !r->claimed)
			synchronous_commit = SYNCHRONOUS_COMMIT_OFF;
		CommitTransactionCommand();
		synchronous_commit = saved_sync;
	}
	PG_CATCH();
	{
		synchronous_commit = saved_sync;
		if (r->claimed)
			bk_flush_batch_put((FlushBatch *) r->batch.handle);
		r->claimed = 0;
		rc = caught_error(cxt, st);
	}
	PG_END_TRY();
	if (rc == BK_OK)
		for (size_t i = 0; i < r->nacks; i++)
			finish_delivered(s, &r->acks[i], dead[i]);
	pfree(dead);
	return rc;
}

/* Linger: age of the oldest row waiting for the sink. */
static bk_code
port_oldest_age(void *ctx, int64_t *age_ms, int *found, bk_status *st)
{
	SinkRuntime *s = (SinkRuntime *) ctx;
	MemoryContext cxt = CurrentMemoryContext;
	volatile bk_code rc = BK_OK;

	*found = 0;
	PG_TRY();
	{
		Datum		arg[1];
		Oid			types[1] = {INT4OID};
		bool		isnull;

		arg[0] = Int32GetDatum(s->sink_id);
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (SPI_execute_plan(bk_keep_plan(&plan_oldest,
										  "SELECT (extract(epoch FROM clock_timestamp() - captured_at) * 1000)::bigint "
										  "FROM batchkit.queue WHERE sink_id = $1 ORDER BY chunk_id LIMIT 1",
										  1, types),
							 arg, NULL, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
		{
			*age_ms = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												  1, &isnull));
			*found = 1;
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		rc = caught_error(cxt, st);
	}
	PG_END_TRY();
	return rc;
}

/* The depth counter (rebuilt before the step: rebuild_depth). */
static void
port_waiting(void *ctx, uint64_t *rows, int *known)
{
	BkSinkSlot *slot = stats_slot((SinkRuntime *) ctx);

	*rows = slot ? pg_atomic_read_u64(&slot->queued) : 1;
	*known = slot ? slot->depth_known : 0;
}

static void
port_release(void *ctx, bk_flush_batch *b)
{
	bk_flush_batch_put((FlushBatch *) b->handle);
}

static void
port_note(void *ctx, bk_flush_note_kind kind, int64_t batch_seq, uint64_t rows, const char *msg)
{
	SinkRuntime *s = (SinkRuntime *) ctx;

	if (kind == BK_FLUSH_NOTE_FAILED)
		stats_error(s, msg, rows);
	else if (kind == BK_FLUSH_NOTE_RETRY)
		ereport(LOG,
				(errmsg("batchkit sink \"%s\": delivery of batch " INT64_FORMAT " failed, will retry: %s",
						s->name, (int64) batch_seq, msg)));
	else if (kind == BK_FLUSH_NOTE_IDLE)
		stats_state(s, s->paused ? "paused" : "idle");
	else if (kind == BK_FLUSH_NOTE_SENDING)
		bk_slot_set_state(my_slot, "sending", s->name);
}

/* A (re)configured sink's pipeline: created once, reconfigured when reopened. */
void
configure_pipeline(SinkRuntime *s, bool fence_unknown)
{
	bk_queue_port q = {s, port_round, port_oldest_age, port_waiting, port_release, port_note};
	bk_sink_port k = bk_flush_sink_port(s);
	bk_flush_env e = bk_flush_env_port(s);
	bk_status	st;

	s->pcfg.fence_unknown = fence_unknown;
	if (s->pipe == NULL)
		s->pipe = bk_flush_pipeline_create(&s->pcfg, &q, &k, &e, &st);
	else
		(void) bk_flush_pipeline_configure(s->pipe, &s->pcfg, &st);
	if (s->pipe == NULL)
		elog(ERROR, "batchkit sink \"%s\": %s", s->name, st.message);
}

void
free_sink(SinkRuntime *s)
{
	bk_flush_pipeline_destroy(s->pipe);
	bk_flush_batch_free_all(&s->batches);
	bk_sink_slot_forget(MyDatabaseId, s->sink_id);
	if (s->config)
		pfree(s->config);
	pfree(s);
}

/*
 * One turn of a sink: a step of its pipeline. Returns true when it did
 * something (the caller loops again at once) and sets *wait_ms to when this
 * sink next needs attention.
 */
static bool
deliver_one(SinkRuntime *s, bool force, int64 *wait_ms)
{
	bk_flush_step io;
	bk_status	st;
	bk_code		rc;

	*wait_ms = -1;
	if (s->pipe == NULL)
		return false;
	(void) rebuild_depth(s);
	memset(&io, 0, sizeof(io));
	io.force = force;
	/* a client that could not be opened sends nothing: it acknowledges what was delivered */
	io.paused = s->paused || s->sink == NULL;
	io.naptime_ms = (uint32) bk_naptime_ms;
	rc = bk_flush_pipeline_step(s->pipe, &io, &st);
	*wait_ms = io.wait_ms;
	if (io.reload)
		force_reload = true;
	if (rc != BK_OK)
		ereport(WARNING, (errmsg("batchkit sink \"%s\": %s", s->name, st.message)));
	if (io.interrupted)
		CHECK_FOR_INTERRUPTS();
	return io.busy;
}
/* ---- the worker --------------------------------------------------------------------- */

/*
 * Is the extension installed in this database? Also says, once per version seen,
 * when the database's SQL objects are older than this library (after make install
 * of a new batchkit.so and a restart, until ALTER EXTENSION batchkit UPDATE): the
 * library serves older versions, so delivery goes on meanwhile.
 */
static bool
extension_present(void)
{
	static char logged[NAMEDATALEN] = "";
	bool		present = false;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("batchkit"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion, RelationGetDescr(rel),
									 &isnull);
		char	   *version = isnull ? pstrdup("?") : TextDatumGetCString(d);

		present = true;
		if (strcmp(version, bk_core_version()) != 0 && strcmp(version, logged) != 0)
			ereport(LOG,
					(errmsg("batchkit: database \"%s\" has batchkit %s, the library is %s",
							get_database_name(MyDatabaseId), version, bk_core_version()),
					 errdetail("Capture and delivery go on meanwhile."),
					 errhint("Run ALTER EXTENSION batchkit UPDATE in that database.")));
		strlcpy(logged, version, sizeof(logged));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return present;
}

/*
 * Run fn in a transaction of its own, SPI connected, with a snapshot; an error is
 * logged and the transaction aborted (the worker goes on with its next round).
 */
static void
run_in_transaction(void (*fn) (void))
{
	PG_TRY();
	{
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		fn();
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
}

static void
run_maintain_queue(void)
{
	SPI_execute("SELECT * FROM batchkit.maintain_queue()", false, 0);
}

static void
maintain_queue(void)
{
	run_in_transaction(run_maintain_queue);
}

/* Re-read the sinks every 200 ms or when asked; false: the extension was dropped. */
static bool
reload_if_due(TimestampTz *last_reload)
{
	TimestampTz now = GetCurrentTimestamp();

	if (my_slot && pg_atomic_exchange_u32(&my_slot->reload_requested, 0) != 0)
		force_reload = true;	/* a sink was paused, resumed, altered, ... */
	if (!TimestampDifferenceExceeds(*last_reload, now, 200) && *last_reload != 0 && !force_reload)
		return true;
	force_reload = false;
	if (!extension_present())
	{
		ereport(LOG, (errmsg("batchkit flush worker exiting: the extension was dropped")));
		return false;
	}
	run_in_transaction(reload_sinks);
	*last_reload = now;
	return true;
}

/* One sink's turn; lowers *wait_ms to when it next needs attention. True: busy. */
static bool
serve_sink(SinkRuntime *s, int64 *wait_ms)
{
	int64		w = -1;
	bool		force = s->slot && pg_atomic_read_u32(&s->slot->flush_requested) > 0;
	volatile bool busy = false;
	MemoryContext loopcxt = CurrentMemoryContext;

	PG_TRY();
	{
		if (deliver_one(s, force, &w))
			busy = true;
		else if (force && s->slot)
			pg_atomic_write_u32(&s->slot->flush_requested, 0);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(loopcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		/* the batch in flight is replayed, in order, after the backoff */
		bk_flush_pipeline_drop(s->pipe, 1);
		bk_flush_pipeline_backoff(s->pipe, edata->message, 0);
		ereport(WARNING, (errmsg("batchkit sink \"%s\": %s", s->name, edata->message)));
		FreeErrorData(edata);
		w = 1;
	}
	PG_END_TRY();
	if (w >= 0 && w < *wait_ms)
		*wait_ms = w;
	return busy;
}

/* Signals, settings, this database's worker slot; exits when it is not needed. */
static void
worker_setup(Oid dboid)
{
	/*
	 * No glibc fastbins in this process. A Kafka drain allocates a message, its
	 * header list and three headers per row and frees them in the delivery
	 * reports thousands of messages later, while PostgreSQL's large blocks come
	 * and go: each free that coalesces past 64 kB then consolidates the
	 * fastbins, and the small allocations that follow take glibc's slow path
	 * (16% of a drain's CPU). Without fastbins, a replay of that pattern
	 * (bench/flush/malloc_replay.c) runs ~25% faster; drains alternated with and
	 * without it: bench/flush/RESULTS.md. Only this worker process is affected.
	 */
	mallopt(M_MXFAST, 0);
	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("batchkit flush worker");
	/*
	 * The worker runs as a superuser: settings a database owner may attach to the
	 * database (ALTER DATABASE ... SET search_path) must not choose the functions
	 * and operators its queries run.
	 */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Every query of the worker reaches the queue through its (sink_id,
	 * chunk_id) index. Its plans are kept for the worker's life; one made while
	 * a queue segment was small or empty (statistics of an analyzed, drained
	 * segment) must not become a scan of the whole backlog once it is full.
	 */
	SetConfigOption("enable_seqscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("enable_bitmapscan", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* short queries run over and over: compiling them (jit_above_cost) only costs */
	SetConfigOption("jit", "off", PGC_SUSET, PGC_S_OVERRIDE);
	/* a send stalled on the network gives way to shutdown, DROP DATABASE, barriers */
	bk_sink_set_interrupt_flag((const volatile int *) &InterruptPending);

	/* one worker per database */
	LWLockAcquire(bk_shared->lock, LW_SHARED);
	for (int i = 1; i <= bk_shared->max_workers; i++)
	{
		if (bk_shared->slots[i].in_use && bk_shared->slots[i].dboid == dboid)
		{
			LWLockRelease(bk_shared->lock);
			proc_exit(0);
		}
	}
	LWLockRelease(bk_shared->lock);
	my_slot = bk_slot_claim(BK_WORKER_KIND_FLUSH, dboid);
	if (my_slot == NULL)
		proc_exit(0);
	if (!extension_present())
		proc_exit(0);			/* the launcher tries again later */

	StartTransactionCommand();
	ereport(LOG, (errmsg("batchkit flush worker started for database \"%s\"",
						 get_database_name(dboid))));
	CommitTransactionCommand();
}

void
batchkit_flush_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	TimestampTz last_maintain = 0;
	TimestampTz last_reload = 0;
	bool		restore_held = false;

	worker_setup(dboid);

	for (;;)
	{
		int64		wait_ms = bk_naptime_ms;
		bool		busy = false;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (my_slot && pg_atomic_exchange_u32(&my_slot->reload_requested, 0) != 0)
			force_reload = true;	/* a sink was paused, resumed, altered, ... */
		if (!reload_if_due(&last_reload))
			break;

		/*
		 * A session is restoring this database's queue from a dump (chunk_io.c):
		 * deliver nothing until it ends, or a segment restored early would be
		 * sent before an older one still loading (per-key order). Its exit
		 * wakes us; the sinks' depth counters are rebuilt then.
		 */
		if (bk_restore_pending(MyDatabaseId))
		{
			restore_held = true;
			bk_slot_set_state(my_slot, "waiting for a restore", NULL);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 bk_naptime_ms, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}
		if (restore_held)
		{
			restore_held = false;
			bk_forget_depths(MyDatabaseId);
			force_reload = true;
			continue;
		}

		for (int i = 0; i < nsinks; i++)
			if (serve_sink(sinks[i], &wait_ms))
				busy = true;
		pgstat_report_stat(false);
		bk_metrics_publish_gauges();	/* about once a second, for the launcher's /metrics */

		now = GetCurrentTimestamp();
		if (!busy && TimestampDifferenceExceeds(last_maintain, now, BK_MAINTAIN_INTERVAL_MS))
		{
			maintain_queue();
			last_maintain = now;
		}
		if (busy)
			continue;
		bk_slot_set_state(my_slot, "idle", NULL);
		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	for (int i = 0; i < nsinks; i++)
		close_sink(sinks[i]);
	proc_exit(0);
}
