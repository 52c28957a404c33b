/*
 * flush_worker.c — the per-database flush worker: drains each sink's queue in
 * batches into Kafka or Redis.
 *
 * One worker per database (started by the launcher) serves every sink of that
 * database, round robin. Why one per database and not one per sink: a sink is
 * mostly waiting on the network, the expensive part (decoding rows to JSON) is
 * CPU that several workers would only fight over on a small machine, and one
 * connection per database keeps max_worker_processes needs predictable. A slow
 * or failing sink must not starve the others, so:
 *   - a sink whose last delivery failed is in backoff (capped exponential with
 *     jitter) and is skipped until its retry time; before sending to it again
 *     the worker probes it with a short timeout;
 *   - a send never waits longer than batchkit.send_timeout (then the batch is
 *     retried later), and linger (max_wait_ms) is a per-sink deadline, not a sleep.
 *
 * Per sink, a pipeline of depth two (see consume.h for the queue protocol and
 * bk_sink_start_batch in batchkit/sink.h for the sink's side). Each round:
 *   one tx: dead-letter what the sink refused for good and acknowledge batch
 *           N-1 (delivered in the previous round), claim (or replay) batch N+1,
 *           decode it to messages, commit;
 *   no tx:  start N+1 (encode, write / produce) while the sink still works on N,
 *           then finish N (wait for its replies / delivery reports); N is
 *           acknowledged with the next claim. The worker holds no snapshot
 *           during network I/O.
 * So Redis executing N (librdkafka delivering N) overlaps the worker's
 * acknowledging, claiming, decoding and encoding: they no longer take turns.
 * Up to two batches per sink are in batchkit.inflight. A crash replays them with
 * their batch_seq, lowest first: Kafka may see duplicates (same idempotency
 * key), Redis skips what it applied by its fence: effectively once. A failure
 * of N drops the pipeline: N+1 is finished but not acknowledged, both stay in
 * flight and are replayed in order (Redis refuses to apply N+1 after a failed N,
 * or its fence would skip N's replay). Acknowledgements follow batch_seq order.
 * Memory: three batch contexts per sink (claiming, in flight, awaiting its
 * acknowledgement), reset and reused round after round.
 *
 * Errors: each sink's round runs under PG_TRY; a Postgres error aborts the
 * transaction, is recorded as the sink's last error and puts it in backoff; the
 * worker keeps serving the other sinks. Core (C++) calls are noexcept and are
 * never on the stack when an ereport happens.
 *
 * Threads: librdkafka's threads never call back into this file; its logs are
 * pulled with bk_sink_next_log after each call.
 */
#include "postgres.h"

#include <malloc.h>
#include <math.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type_d.h"
#include "commands/dbcommands.h"
#include "common/pg_prng.h"
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
#include "utils/array.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "batchkit/core.h"
#include "batchkit/encoding.h"
#include "batchkit/flush_policy.h"
#include "batchkit/sink.h"
#include "shmem/shmem.h"
#include "queue/queue.h"
#include "queue/consume.h"
#include "metrics/metrics.h"
#include "flush/flush.h"

#define BK_MAX_SINKS_PER_DB 256
#define BK_MAINTAIN_INTERVAL_MS 1000
#define BK_PROBE_TIMEOUT_MS 1000
#define BK_SEND_TIMEOUT_MS 10000
#define BK_TEMPLATE_CACHE 32

typedef struct TemplateEntry
{
	char	   *source;			/* "schema.table" */
	uint32		layout_hash;	/* of the column names it was compiled for */
	bk_template *tpl;
	int			ncols;
	char	  **cols;			/* columns the template may use, in compile order */
} TemplateEntry;

typedef struct SinkRuntime
{
	int32		sink_id;
	char		name[NAMEDATALEN];
	char		kind[16];
	bool		paused;
	bool		seen;
	char	   *config;			/* canonical option text: reopen when it changes */
	bk_sink    *sink;
	bk_flush_limits limits;
	bk_retry_policy retry;
	int			format;
	char	   *target_template;	/* topic (kafka) or key (redis) */
	char	   *outbox_target;	/* where enqueue()d messages go */
	bool		is_hset;
	bool		is_redis;
	bool		fence_unknown;	/* redis: fence not read since the sink was opened */
	int			send_timeout_ms;
	int64		max_message_bytes;
	bool		failing;
	uint32		failures;		/* consecutive failed deliveries */
	TimestampTz retry_at;
	TimestampTz last_claim;		/* last time a claim was tried */
	struct Pipeline *pending;	/* batches in flight / awaiting acknowledgement */
	int64		reject_batch;	/* batch whose rejections are being retried */
	uint32		reject_attempts;
	TemplateEntry templates[BK_TEMPLATE_CACHE];
	int			ntemplates;
	BkSinkSlot *slot;
} SinkRuntime;

static SinkRuntime *sinks = NULL;
static int	nsinks = 0;
static BkWorkerSlot *my_slot = NULL;
static MemoryContext batch_cxt = NULL;

/* ---- statistics (shared memory) ------------------------------------------------ */

static BkSinkSlot *
stats_slot(SinkRuntime *s)
{
	if (s->slot == NULL || !s->slot->in_use || s->slot->sink_id != s->sink_id)
		s->slot = bk_sink_slot(MyDatabaseId, s->sink_id, true);
	return s->slot;
}

static void
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

static void
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

static void
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

static void drop_in_flight(SinkRuntime *s, bool finish);

static void
close_sink(SinkRuntime *s)
{
	/* a batch in flight is abandoned: it stays in batchkit.inflight and is replayed */
	drop_in_flight(s, false);
	if (s->sink)
		bk_sink_close(s->sink);
	s->sink = NULL;
	for (int i = 0; i < s->ntemplates; i++)
		bk_template_free(s->templates[i].tpl);
	s->ntemplates = 0;
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
 * opened, e.g. at promotion), nothing is claimed for the sink (deliver_one).
 */
static void
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
configure_sink(SinkRuntime *s, Datum *keys, Datum *values, bool *nulls, int n, const char *config)
{
	MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);
	bk_sink_option *opts = palloc(sizeof(bk_sink_option) * (n + 1));
	int			nopts = 0;
	bk_status	st;
	const char *command;

	close_sink(s);
	if (s->config)
		pfree(s->config);
	if (s->target_template)
		pfree(s->target_template);
	if (s->outbox_target)
		pfree(s->outbox_target);
	s->config = pstrdup(config);

	for (int i = 0; i < n; i++)
	{
		opts[nopts].key = TextDatumGetCString(keys[i]);
		opts[nopts].value = nulls[i] ? NULL : TextDatumGetCString(values[i]);
		nopts++;
	}
	opts[nopts].key = "name";
	opts[nopts].value = s->name;
	nopts++;

	s->limits.batch_size = (uint32) opt_int(opts, nopts, "batch_size", 10000);
	s->limits.max_batch_bytes = (uint64) opt_int(opts, nopts, "max_batch_bytes", 16 * 1024 * 1024);
	s->limits.max_wait_ms = (uint32) opt_int(opts, nopts, "max_wait_ms", 10);
	s->retry.max_attempts = (uint32) opt_int(opts, nopts, "max_attempts", 5);
	s->retry.backoff_base_ms = (uint32) opt_int(opts, nopts, "retry_backoff_ms", 100);
	s->retry.backoff_cap_ms = (uint32) opt_int(opts, nopts, "retry_backoff_max_ms", 30000);
	s->format = strcmp(opt_str(opts, nopts, "format", "envelope"), "row") == 0 ?
		BK_FORMAT_ROW : BK_FORMAT_ENVELOPE;
	s->is_redis = strcmp(s->kind, "redis") == 0;
	s->send_timeout_ms = (int) opt_int(opts, nopts, "send_timeout_ms", BK_SEND_TIMEOUT_MS);
	s->max_message_bytes = opt_int(opts, nopts, "max_message_bytes", INT64CONST(536870912));
	command = opt_str(opts, nopts, "command", "");
	s->is_hset = s->is_redis && strcmp(command, "hset") == 0;
	s->target_template = pstrdup(opt_str(opts, nopts, s->is_redis ? "key" : "topic",
										 s->is_redis ? "batchkit:{sink}" : "{schema}.{table}"));
	s->outbox_target = pstrdup(opt_str(opts, nopts, "outbox_target", s->name));

	s->sink = bk_sink_open(s->kind, opts, nopts, &st);
	MemoryContextSwitchTo(old);
	if (s->sink == NULL)
	{
		s->failing = true;
		s->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 5000);
		stats_error(s, st.message, 0);
		ereport(WARNING,
				(errmsg("batchkit sink \"%s\" cannot be opened: %s", s->name, st.message)));
		return;
	}
	/* Redis: continue above whatever fence the sink's data already carries */
	if (s->is_redis)
	{
		int64_t		fence = 0;

		s->fence_unknown = true;
		if (bk_sink_read_fence(s->sink, &fence, BK_PROBE_TIMEOUT_MS, &st) == BK_OK)
		{
			record_fence(s, fence);
			s->fence_unknown = false;
		}
		drain_sink_logs(s);
	}
}

static void free_pending(SinkRuntime *s);

static SinkRuntime *
find_sink(int32 sink_id)
{
	for (int i = 0; i < nsinks; i++)
		if (sinks[i].sink_id == sink_id)
			return &sinks[i];
	return NULL;
}

/* Re-read the sinks of this database (inside a transaction, SPI connected). */
static void
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
		sinks[i].seen = false;
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
			s = &sinks[nsinks++];
			memset(s, 0, sizeof(*s));
			s->sink_id = id;
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
			s->failing = false;
			s->failures = 0;
			s->retry_at = 0;
			configure_sink(s, keys, vals, nk ? vn : NULL, nk, config);
		}
		stats_state(s, s->paused ? "paused" : (s->failing ? "failing" : "idle"));
	}
	/* forget dropped sinks */
	for (int i = 0; i < nsinks; i++)
	{
		if (!sinks[i].seen)
		{
			close_sink(&sinks[i]);
			free_pending(&sinks[i]);
			bk_sink_slot_forget(MyDatabaseId, sinks[i].sink_id);
			sinks[i] = sinks[nsinks - 1];
			nsinks--;
			i--;
		}
	}
}

/* ---- building messages ---------------------------------------------------------- */

typedef struct PendingMsg
{
	uint8		op;
	int64		seq;
	size_t		key_off,
				key_len;
	bool		has_key;
	size_t		val_off,
				val_len;
	size_t		tgt_off,
				tgt_len;
	bool		has_target;
	size_t		src_off,
				src_len;
	bool		has_source;
	int			field_first;	/* into fields[] */
	int			nfields;
	int			header_first;
	int			nheaders;
	TimestampTz captured_at;
} PendingMsg;

typedef struct PendingField
{
	size_t		name_off,
				name_len;
	size_t		val_off,
				val_len;
	bool		isnull;
} PendingField;

typedef struct BatchBuild
{
	SinkRuntime *sink;
	StringInfoData arena;
	PendingMsg *msgs;
	int			nmsgs,
				maxmsgs;
	PendingField *fields;
	int			nfields,
				maxfields;
	/*
	 * What every row of one chunk shares, stored once per chunk: its source
	 * name and, when the target template does not depend on the row, the
	 * rendered target (and the template entry found for the chunk's layout).
	 */
	int64		chunk_id;
	bool		chunk_valid;
	size_t		chunk_src_off,
				chunk_src_len;
	struct TemplateEntry *chunk_te;
	bool		chunk_tgt_valid;
	size_t		chunk_tgt_off,
				chunk_tgt_len;
	char		error[256];
} BatchBuild;

static size_t
arena_add(BatchBuild *b, const char *p, size_t n)
{
	size_t		off = b->arena.len;

	appendBinaryStringInfo(&b->arena, p, n);
	return off;
}

static PendingField *
next_field(BatchBuild *b)
{
	if (b->nfields == b->maxfields)
	{
		b->maxfields = b->maxfields ? b->maxfields * 2 : 1024;
		b->fields = b->fields ? repalloc(b->fields, sizeof(PendingField) * b->maxfields)
			: MemoryContextAlloc(batch_cxt, sizeof(PendingField) * b->maxfields);
	}
	return &b->fields[b->nfields++];
}

static void
collect_field(const char *name, const char *value, void *arg)
{
	BatchBuild *b = (BatchBuild *) arg;
	PendingField *f = next_field(b);

	f->name_off = arena_add(b, name, strlen(name));
	f->name_len = strlen(name);
	f->isnull = value == NULL;
	if (value)
	{
		f->val_len = strlen(value);
		f->val_off = arena_add(b, value, f->val_len);
	}
}

static uint32
layout_hash(BkChunkReader *r)
{
	uint32		h = 2166136261u;

	for (int i = 0; i < r->hdr->natts; i++)
		for (const char *p = r->attnames[i]; *p; p++)
			h = (h ^ (uint8) *p) * 16777619u;
	return h ^ r->hdr->natts;
}

/* The compiled target template of a sink for a source table's current layout. */
static TemplateEntry *
template_for(SinkRuntime *s, BkChunkReader *r, const char *source, char *err, size_t errlen)
{
	uint32		lh = r ? layout_hash(r) : 0;
	TemplateEntry *e;
	bk_status	st;
	MemoryContext old;

	for (int i = 0; i < s->ntemplates; i++)
		if (strcmp(s->templates[i].source, source) == 0 && s->templates[i].layout_hash == lh)
			return &s->templates[i];
	if (s->ntemplates == BK_TEMPLATE_CACHE)
	{
		for (int i = 0; i < s->ntemplates; i++)
			bk_template_free(s->templates[i].tpl);
		s->ntemplates = 0;
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	e = &s->templates[s->ntemplates];
	memset(e, 0, sizeof(*e));
	e->source = pstrdup(source);
	e->layout_hash = lh;
	if (r)
	{
		e->cols = palloc(sizeof(char *) * Max(r->hdr->natts, 1));
		for (int i = 0; i < r->hdr->natts; i++)
			if (!(r->atts[i].flags & BK_ATT_DROPPED))
				e->cols[e->ncols++] = pstrdup(r->attnames[i]);
	}
	MemoryContextSwitchTo(old);
	e->tpl = bk_template_compile(s->target_template, s->name, r ? r->schema : "",
								 r ? r->table : "", (const char *const *) e->cols, e->ncols, &st);
	if (e->tpl == NULL)
	{
		snprintf(err, errlen, "bad %s template \"%s\": %s", s->is_redis ? "key" : "topic",
				 s->target_template, st.message);
		return NULL;
	}
	s->ntemplates++;
	return e;
}

/*
 * Top-level fields of a JSON object as hash fields: strings as their text, null
 * as NULL, anything else as its JSON text. An envelope contributes its "after".
 */
static void
json_object_fields(BatchBuild *b, const char *json, int len)
{
	Jsonb	   *jb;
	JsonbValue	after;
	JsonbValue *av;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			level = 0;

	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(json, len))));
	if (!JB_ROOT_IS_OBJECT(jb))
		return;
	av = getKeyJsonValueFromContainer(&jb->root, "after", 5, &after);
	if (av != NULL && av->type == jbvBinary)
		jb = JsonbValueToJsonb(av);
	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_OBJECT)
			level++;
		else if (tok == WJB_END_OBJECT)
			level--;
		else if (tok == WJB_KEY && level == 1)
		{
			PendingField *f = next_field(b);
			JsonbValue	val;

			f->name_len = v.val.string.len;
			f->name_off = arena_add(b, v.val.string.val, v.val.string.len);
			tok = JsonbIteratorNext(&it, &val, true);
			f->isnull = val.type == jbvNull;
			if (val.type == jbvString)
			{
				f->val_len = val.val.string.len;
				f->val_off = arena_add(b, val.val.string.val, f->val_len);
			}
			else if (!f->isnull)
			{
				char	   *txt;

				if (val.type == jbvBinary)
					txt = JsonbToCString(NULL, val.val.binary.data, val.val.binary.len);
				else
					txt = JsonbToCString(NULL, &JsonbValueToJsonb(&val)->root, 0);
				f->val_len = strlen(txt);
				f->val_off = arena_add(b, txt, f->val_len);
			}
		}
	}
}

static void
collect_message(BkMessage *m, void *arg)
{
	BatchBuild *b = (BatchBuild *) arg;
	SinkRuntime *s = b->sink;
	PendingMsg *p;

	if (b->nmsgs == b->maxmsgs)
	{
		b->maxmsgs = b->maxmsgs ? b->maxmsgs * 2 : 1024;
		b->msgs = b->msgs ? repalloc(b->msgs, sizeof(PendingMsg) * b->maxmsgs)
			: MemoryContextAlloc(batch_cxt, sizeof(PendingMsg) * b->maxmsgs);
	}
	p = &b->msgs[b->nmsgs++];
	memset(p, 0, sizeof(*p));
	p->seq = m->seq;
	p->captured_at = m->captured_at;
	switch (m->op)
	{
		case BK_REC_INSERT:
			p->op = BK_OP_INSERT;
			break;
		case BK_REC_UPDATE:
			p->op = BK_OP_UPDATE;
			break;
		case BK_REC_DELETE:
			p->op = BK_OP_DELETE;
			break;
		default:
			p->op = BK_OP_MESSAGE;
			break;
	}
	p->has_key = m->has_key;
	if (m->has_key)
	{
		p->key_len = m->key.len;
		p->key_off = arena_add(b, m->key.data, m->key.len);
	}
	p->val_len = m->value.len;
	p->val_off = arena_add(b, m->value.data, m->value.len);
	if (m->source && (!b->chunk_valid || b->chunk_id != m->chunk_id))
	{
		/* first row of a chunk: what the chunk's rows share */
		b->chunk_valid = true;
		b->chunk_id = m->chunk_id;
		b->chunk_src_len = strlen(m->source);
		b->chunk_src_off = arena_add(b, m->source, b->chunk_src_len);
		b->chunk_te = m->target ? NULL :
			template_for(s, m->reader, m->source, b->error, sizeof(b->error));
		b->chunk_tgt_valid = false;
	}
	if (m->source)
	{
		p->has_source = true;
		p->src_len = b->chunk_src_len;
		p->src_off = b->chunk_src_off;
	}

	/* target: explicit (replayed dead letter), outbox, or the rendered template */
	if (m->target)
	{
		p->has_target = true;
		p->tgt_len = m->targetlen;
		p->tgt_off = arena_add(b, m->target, m->targetlen);
	}
	else if (m->source == NULL)
	{
		p->has_target = true;
		p->tgt_len = strlen(s->outbox_target);
		p->tgt_off = arena_add(b, s->outbox_target, p->tgt_len);
	}
	else if (b->chunk_tgt_valid)
	{
		/* a template that names no column: rendered once for the chunk */
		p->has_target = true;
		p->tgt_len = b->chunk_tgt_len;
		p->tgt_off = b->chunk_tgt_off;
	}
	else
	{
		TemplateEntry *te = b->chunk_te;

		if (te != NULL)
		{
			bool		is_static = bk_template_is_static(te->tpl);
			bk_slice   *vals = palloc0(sizeof(bk_slice) * Max(te->ncols, 1));
			StringInfoData v;
			bk_buf		out = BK_BUF_INIT;
			size_t		off,
						len;
			bk_status	st;

			initStringInfo(&v);
			if (!is_static)
			{
				/* only the columns the template names are rendered as text */
				for (int i = 0; i < te->ncols; i++)
				{
					if (strstr(s->target_template, te->cols[i]) == NULL)
						continue;
					resetStringInfo(&v);
					if (bk_chunk_row_attr_text(m->reader, m->row, te->cols[i], &v))
						vals[i].ptr = pstrdup(v.data), vals[i].len = v.len;
				}
			}
			if (bk_template_render(te->tpl, vals, te->ncols, &out, &off, &len, &st) == BK_OK)
			{
				p->has_target = true;
				p->tgt_len = len;
				p->tgt_off = arena_add(b, out.data + off, len);
				if (is_static)
				{
					b->chunk_tgt_valid = true;
					b->chunk_tgt_off = p->tgt_off;
					b->chunk_tgt_len = len;
				}
			}
			else
				snprintf(b->error, sizeof(b->error), "rendering the target failed: %s", st.message);
			bk_buf_free(&out);
			pfree(v.data);
			pfree(vals);
		}
	}

	if (s->is_hset && m->row != NULL && m->reader != NULL)
	{
		p->field_first = b->nfields;
		bk_chunk_row_fields(m->reader, m->row, collect_field, b);
		p->nfields = b->nfields - p->field_first;
	}
	else if (s->is_hset && p->op != BK_OP_DELETE)
	{
		/* an enqueued or replayed message: its JSON object (or envelope's "after") gives the fields */
		p->field_first = b->nfields;
		json_object_fields(b, m->value.data, m->value.len);
		p->nfields = b->nfields - p->field_first;
	}
	if (m->headers && m->headerslen > 0)
	{
		/* enqueue() headers: a flat JSON object of strings, parsed by jsonb */
		Datum		j = DirectFunctionCall1(jsonb_in, CStringGetDatum(pnstrdup(m->headers,
																				m->headerslen)));
		Jsonb	   *jb = DatumGetJsonbP(j);
		JsonbIterator *it = JsonbIteratorInit(&jb->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		PendingField *cur = NULL;

		p->header_first = b->nfields;
		while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				cur = next_field(b);
				cur->name_len = v.val.string.len;
				cur->name_off = arena_add(b, v.val.string.val, v.val.string.len);
			}
			else if (tok == WJB_VALUE && cur != NULL)
			{
				cur->isnull = v.type != jbvString;
				if (!cur->isnull)
				{
					cur->val_len = v.val.string.len;
					cur->val_off = arena_add(b, v.val.string.val, v.val.string.len);
				}
			}
		}
		p->nheaders = b->nfields - p->header_first;
	}
}

/* ---- one delivery round for one sink ---------------------------------------------- */

/*
 * The sink's depth counter (slot->queued), rebuilt from the queue table the
 * first time the worker serves the sink after start-up (bk_queue_rebuild_depth
 * says how it stays right while writers commit): from then on the worker and
 * every reader of sink_stats / metrics() use the counter instead of summing the
 * queue (a read would otherwise scan the whole backlog, and more of it the
 * longer a drain has been deleting chunks).
 */
static BkSinkSlot *
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

static bool force_reload = false;
static SPIPlanPtr plan_current = NULL;
static SPIPlanPtr plan_oldest = NULL;

/*
 * Inside the claim transaction: is the sink still unpaused, with the options the
 * client was opened with? Checked before every batch, so pause_sink() and
 * alter_sink() take effect within one batch of their commit.
 */
static bool
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

static double
random01(void)
{
	return pg_prng_double(&pg_global_prng_state);
}

static void
dead_letter_and_ack(SinkRuntime *s, BkBatch *batch, BatchBuild *b, bk_send_result *results,
					uint64 *dead)
{
	Oid			types[9] = {INT4OID, INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	INT4OID};

	*dead = 0;
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
		v[8] = Int32GetDatum(s->is_redis ? 1 : (int32) Max(s->reject_attempts, 1));
		SPI_execute_with_args("INSERT INTO batchkit.dead_letter (sink_id, seq, op, source, key, "
							  "message, error, target, attempts) "
							  "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
							  9, types, v, nulls, false, 0);
		(*dead)++;
	}
	bk_ack_batch(s->sink_id, batch->batch_seq);
}

static void
fail_sink(SinkRuntime *s, const char *msg, uint64 rows)
{
	uint32		delay;

	s->failing = true;
	s->failures++;
	delay = bk_backoff_delay_ms(s->failures, Max(s->retry.backoff_base_ms, 1),
								Max(s->retry.backoff_cap_ms, 1), random01());
	s->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay);
	stats_error(s, msg, rows);
}

/*
 * A batch of the pipeline: claimed and decoded, then started (handed to the
 * sink), finished (the sink's outcome is in) and, when delivered, acknowledged
 * with the next claim. Everything of it lives in its own memory context, which
 * the sink reads (messages) and writes (results) until the batch is finished.
 */
typedef struct Flight
{
	BkBatch		batch;
	BatchBuild	build;
	bk_message *tosend;			/* what went to the sink: oversized messages left out */
	bk_send_result *sent;		/* the sink's results, per tosend */
	int		   *map;			/* tosend index -> build.msgs index */
	int			nsend;
	size_t		oversize;
	bk_send_result *results;	/* per build.msgs */
	uint64		bytes;
	TimestampTz t0;
	double		seconds;
	MemoryContext cxt;
} Flight;

/*
 * A sink's pipeline: at most one batch started and not finished (sent), one
 * finished and delivered awaiting its acknowledgement (done), and the one being
 * claimed: three batch contexts, reused round after round.
 */
typedef struct Pipeline
{
	Flight	   *sent;
	Flight	   *done;
	Flight		slots[3];
} Pipeline;

static void
free_pending(SinkRuntime *s)
{
	if (s->pending == NULL)
		return;
	for (int i = 0; i < 3; i++)
		MemoryContextDelete(s->pending->slots[i].cxt);
	pfree(s->pending);
	s->pending = NULL;
}

static Pipeline *
pipeline_of(SinkRuntime *s)
{
	if (s->pending == NULL)
	{
		Pipeline   *p = MemoryContextAllocZero(TopMemoryContext, sizeof(Pipeline));

		for (int i = 0; i < 3; i++)
			p->slots[i].cxt = AllocSetContextCreate(TopMemoryContext, "batchkit batch",
													ALLOCSET_DEFAULT_SIZES);
		s->pending = p;
	}
	return s->pending;
}

/* A slot neither in flight nor awaiting its acknowledgement, reset for a new batch. */
static Flight *
free_flight(Pipeline *p)
{
	for (int i = 0; i < 3; i++)
	{
		Flight	   *f = &p->slots[i];

		if (f != p->sent && f != p->done)
		{
			MemoryContext cxt = f->cxt;

			MemoryContextReset(cxt);
			memset(f, 0, sizeof(*f));
			f->cxt = cxt;
			return f;
		}
	}
	elog(ERROR, "batchkit: no free batch slot");	/* not reached */
	return NULL;
}

/* Rows of the sink's batches the worker holds (in flight or awaiting acknowledgement). */
static int64
pipeline_rows(Pipeline *p)
{
	return (p->sent ? p->sent->build.nmsgs : 0) + (p->done ? p->done->build.nmsgs : 0);
}

/*
 * Forget the batch in flight without acknowledging it: it stays in
 * batchkit.inflight and is replayed, in batch_seq order, by a later claim.
 * finish: collect its outcome from the sink first (the sink stops using its
 * memory); false when the sink is closed or being reopened (close abandons it).
 */
static void
drop_in_flight(SinkRuntime *s, bool finish)
{
	Pipeline   *p = s->pending;
	bk_send_summary summary;
	bk_status	st;

	if (p == NULL || p->sent == NULL)
		return;
	if (finish && s->sink != NULL && p->sent->nsend > 0)
		(void) bk_sink_finish_batch(s->sink, p->sent->batch.batch_seq, &summary, &st);
	p->sent = NULL;
}

/* Stats and logs of an acknowledged batch (after its transaction committed). */
static void
finish_delivered(SinkRuntime *s, Flight *d, uint64 dead)
{
	TimestampTz now = GetCurrentTimestamp();
	double	   *lags = MemoryContextAlloc(d->cxt, sizeof(double) * Max(d->build.nmsgs, 1));

	for (int i = 0; i < d->build.nmsgs; i++)
		lags[i] = (double) (now - d->build.msgs[i].captured_at) / 1000000.0;
	stats_batch(s, d->build.nmsgs, dead, d->bytes, d->seconds, lags, d->build.nmsgs);
	if (dead > 0)
		ereport(WARNING,
				(errmsg("batchkit sink \"%s\": %llu messages moved to batchkit.dead_letters",
						s->name, (unsigned long long) dead)));
}

/*
 * Build the core's message array of a claimed batch (pointers into its arena)
 * and hand it to the sink. A message larger than max_message_bytes is refused
 * before sending: a server that drops the connection on it (Redis past
 * proto-max-bulk-len) would otherwise look like an outage and block the sink
 * forever.
 */
static void
start_flight(SinkRuntime *s, Flight *f)
{
	BatchBuild *b = &f->build;
	MemoryContext old = MemoryContextSwitchTo(f->cxt);
	bk_message *msgs = palloc0(sizeof(bk_message) * Max(b->nmsgs, 1));
	bk_field   *fields = palloc0(sizeof(bk_field) * Max(b->nfields, 1));
	bk_status	st;

	f->results = palloc0(sizeof(bk_send_result) * Max(b->nmsgs, 1));
	f->map = palloc(sizeof(int) * Max(b->nmsgs, 1));
	f->tosend = palloc(sizeof(bk_message) * Max(b->nmsgs, 1));
	f->sent = palloc0(sizeof(bk_send_result) * Max(b->nmsgs, 1));
	for (int i = 0; i < b->nfields; i++)
	{
		fields[i].name = b->arena.data + b->fields[i].name_off;
		fields[i].name_len = b->fields[i].name_len;
		fields[i].value = b->fields[i].isnull ? NULL : b->arena.data + b->fields[i].val_off;
		fields[i].value_len = b->fields[i].isnull ? 0 : b->fields[i].val_len;
	}
	for (int i = 0; i < b->nmsgs; i++)
	{
		PendingMsg *p = &b->msgs[i];
		bk_message *m = &msgs[i];

		m->op = p->op;
		m->seq = p->seq;
		if (p->has_target)
		{
			m->target = b->arena.data + p->tgt_off;
			m->target_len = p->tgt_len;
		}
		if (p->has_key)
		{
			m->key = b->arena.data + p->key_off;
			m->key_len = p->key_len;
		}
		m->value = b->arena.data + p->val_off;
		m->value_len = p->val_len;
		if (p->has_source)
		{
			m->table = b->arena.data + p->src_off;
			m->table_len = p->src_len;
		}
		if (p->nfields > 0)
		{
			m->fields = &fields[p->field_first];
			m->nfields = p->nfields;
		}
		if (p->nheaders > 0)
		{
			m->headers = &fields[p->header_first];
			m->nheaders = p->nheaders;
		}
		f->bytes += p->val_len + p->key_len;
		if ((int64) (m->value_len + m->key_len) > s->max_message_bytes)
		{
			f->results[i].code = BK_SEND_REJECTED;
			f->results[i].message = psprintf("message of %zu bytes exceeds max_message_bytes (%lld)",
											 m->value_len + m->key_len,
											 (long long) s->max_message_bytes);
			f->oversize++;
			continue;
		}
		f->map[f->nsend] = i;
		f->tosend[f->nsend++] = *m;
	}
	MemoryContextSwitchTo(old);

	bk_slot_set_state(my_slot, "sending", s->name);
	f->t0 = GetCurrentTimestamp();
	if (f->nsend > 0 &&
		bk_sink_start_batch(s->sink, f->tosend, f->nsend, f->batch.batch_seq, f->sent,
							s->send_timeout_ms, &st) != BK_OK)
	{
		/* a misuse of the pipeline (not expected): nothing started */
		f->nsend = 0;
		elog(ERROR, "batchkit sink \"%s\": starting batch " INT64_FORMAT " failed: %s",
			 s->name, f->batch.batch_seq, st.message);
	}
}

/*
 * Wait for the sink's outcome of a started batch and decide: true when it is
 * delivered (acknowledge it with the next claim), false when it stays in flight
 * to be replayed (the sink is then put in backoff). *interrupted: the send gave
 * way to an interrupt.
 */
static bool
finish_flight(SinkRuntime *s, Flight *f, bool *interrupted)
{
	bk_send_summary summary;
	bk_status	st;

	memset(&summary, 0, sizeof(summary));
	memset(&st, 0, sizeof(st));
	*interrupted = false;
	if (f->nsend > 0)
		(void) bk_sink_finish_batch(s->sink, f->batch.batch_seq, &summary, &st);
	for (int k = 0; k < f->nsend; k++)
	{
		f->results[f->map[k]] = f->sent[k];
		/* the sink's text lives in its memory: copy it, but not the empty text of every OK */
		if (f->sent[k].message)
			f->results[f->map[k]].message = f->sent[k].message[0] == '\0' ? "" :
				MemoryContextStrdup(f->cxt, f->sent[k].message);
	}
	if (f->oversize > 0 && summary.retryable == 0 && summary.rejected == 0)
		snprintf(st.message, sizeof(st.message), "%zu message(s) exceed max_message_bytes",
				 f->oversize);
	f->seconds = (double) (GetCurrentTimestamp() - f->t0) / 1000000.0;
	drain_sink_logs(s);

	if (summary.retryable > 0 && InterruptPending)
	{
		/* the send gave way to an interrupt: not the sink's fault; replayed later */
		*interrupted = true;
		return false;
	}
	if (summary.retryable > 0)
	{
		/* the sink (or the network) failed: the batch stays in flight and is replayed */
		fail_sink(s, st.message, summary.retryable);
		ereport(LOG,
				(errmsg("batchkit sink \"%s\": delivery of batch " INT64_FORMAT " failed, will retry: %s",
						s->name, f->batch.batch_seq, st.message)));
		return false;
	}
	if (summary.rejected > 0 && !s->is_redis)
	{
		/* Kafka: retry the whole batch (duplicates keep their idempotency key) until max_attempts */
		if (s->reject_batch != f->batch.batch_seq)
		{
			s->reject_batch = f->batch.batch_seq;
			s->reject_attempts = 0;
		}
		s->reject_attempts++;
		if (s->reject_attempts < Max(s->retry.max_attempts, 1))
		{
			fail_sink(s, st.message, summary.rejected);
			return false;
		}
	}
	return true;
}

/*
 * One round for one sink, a pipeline of depth two. In ONE transaction:
 * acknowledge the batch delivered before (dead-lettering what the sink refused)
 * and claim and decode the next one; commit. Then, without a transaction open:
 * start the new batch (encode, write/produce) and only then wait for the sink's
 * outcome of the batch started in the previous round. So while Redis executes
 * batch N (or librdkafka delivers it), the worker acknowledges N-1, claims and
 * decodes N+1 and writes it. Riding the acknowledgement on the next claim halves
 * the commits per batch.
 *
 * For Kafka the transaction commits asynchronously (no WAL flush wait): losing
 * it in a crash only re-sends batches, which at-least-once allows. Redis needs
 * a durable claim (its fence relies on a batch keeping its sequence number), so
 * its transaction commits synchronously.
 *
 * Failures drop the pipeline: when the batch in flight fails, the one started
 * after it is finished too but not acknowledged; both stay in batchkit.inflight
 * and are replayed in batch_seq order (Redis refuses to apply the later one, see
 * bk_sink_start_batch). Acknowledgements therefore always follow batch_seq order.
 *
 * Returns true when it did something (the caller loops again at once) and sets
 * *wait_ms to when this sink next needs attention.
 */
static bool
deliver_one(SinkRuntime *s, bool force, int64 *wait_ms)
{
	Pipeline   *p = pipeline_of(s);
	Flight	   *prev = p->done;
	Flight	   *cur = NULL;
	bool		can_claim = true;
	bool		claimed = false;
	bool		acked = false;
	uint64		dead = 0;
	bk_status	st;
	BkSinkSlot *slot = rebuild_depth(s);
	uint64		depth = slot ? pg_atomic_read_u64(&slot->queued) : 1;
	bool		known = slot ? slot->depth_known : false;
	int			saved_sync = synchronous_commit;
	bool		interrupted = false;
	bool		finish_first = false;
	int64		fence_read = -1;
	bool		fence_recorded = false;

	*wait_ms = -1;
	if (s->paused || s->sink == NULL)
		can_claim = false;
	else if (s->failing && GetCurrentTimestamp() < s->retry_at)
	{
		long		secs;
		int			usecs;

		TimestampDifference(GetCurrentTimestamp(), s->retry_at, &secs, &usecs);
		*wait_ms = secs * 1000 + usecs / 1000 + 1;
		can_claim = false;
	}
	else if (known && (int64) depth - pipeline_rows(p) <= 0 && !force &&
			 !TimestampDifferenceExceeds(s->last_claim, GetCurrentTimestamp(), bk_naptime_ms))
	{
		/*
		 * Nothing committed is waiting (in-flight rows still count in depth).
		 * The queue is still looked at once per naptime, in case the counter
		 * is short (a writer that found no free shared slot at its commit).
		 */
		can_claim = false;
	}
	else if (!force && p->done == NULL && p->sent == NULL && s->limits.max_wait_ms > 0 &&
			 known && depth < s->limits.batch_size)
	{
		/* linger: a partial batch waits until its oldest row is max_wait_ms old */
		int			r;
		bool		isnull;
		Datum		arg[1];
		Oid			types[1] = {INT4OID};

		arg[0] = Int32GetDatum(s->sink_id);
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		r = SPI_execute_plan(bk_keep_plan(&plan_oldest,
										  "SELECT (extract(epoch FROM clock_timestamp() - captured_at) * 1000)::bigint "
										  "FROM batchkit.queue WHERE sink_id = $1 ORDER BY chunk_id LIMIT 1",
										  1, types),
							 arg, NULL, true, 1);
		if (r == SPI_OK_SELECT && SPI_processed == 1)
		{
			int64		age = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull));
			bk_flush_decision d = bk_flush_decide(&s->limits, depth, 0, age, 0);

			if (!d.flush_now)
			{
				*wait_ms = d.wait_ms;
				can_claim = false;
			}
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}

	if (can_claim && s->failing && p->sent == NULL)
	{
		if (bk_sink_probe(s->sink, BK_PROBE_TIMEOUT_MS, &st) != BK_OK)
		{
			drain_sink_logs(s);
			fail_sink(s, st.message, 0);
			*wait_ms = 1;
			can_claim = false;
		}
		drain_sink_logs(s);
	}

	/*
	 * A Redis sink whose fence could not be read when it was opened: read it
	 * now, before any batch is numbered (record_fence); recorded in the claim
	 * transaction below. No batch is in flight (opening dropped the pipeline).
	 */
	if (can_claim && s->fence_unknown)
	{
		int64_t		fence = 0;

		if (bk_sink_read_fence(s->sink, &fence, BK_PROBE_TIMEOUT_MS, &st) != BK_OK)
		{
			drain_sink_logs(s);
			fail_sink(s, st.message, 0);
			*wait_ms = 1;
			can_claim = false;
		}
		else
			fence_read = fence;
		drain_sink_logs(s);
	}

	/*
	 * Nothing new to claim but a batch in flight: collect its outcome now, so
	 * that it is acknowledged in this round (pause, alter and flush() wait for it).
	 */
	if (!can_claim && p->sent != NULL && p->done == NULL)
	{
		Flight	   *f = p->sent;

		p->sent = NULL;
		bk_slot_set_state(my_slot, "sending", s->name);
		if (finish_flight(s, f, &interrupted))
		{
			p->done = prev = f;
			s->failing = false;
			s->failures = 0;
			s->reject_batch = 0;
		}
		else if (interrupted)
		{
			CHECK_FOR_INTERRUPTS();
			return false;
		}
		else
			return false;
	}
	if (!can_claim && prev == NULL)
		return false;

	/* one transaction: acknowledge the delivered batch, claim and decode the next */
	if (can_claim)
	{
		MemoryContext old;

		cur = free_flight(p);
		old = MemoryContextSwitchTo(cur->cxt);
		cur->build.sink = s;
		initStringInfo(&cur->build.arena);
		MemoryContextSwitchTo(old);
	}

	bk_slot_set_state(my_slot, "claiming", s->name);
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (prev != NULL)
	{
		bk_slot_set_state(my_slot, "acknowledging", s->name);
		dead_letter_and_ack(s, &prev->batch, &prev->build, prev->results, &dead);
		acked = true;
	}
	if (can_claim)
	{
		if (!sink_still_current(s))
			force_reload = true;	/* paused or altered: reload before sending anything */
		else
		{
			MemoryContext old;

			if (fence_read >= 0)
			{
				record_fence(s, fence_read);
				fence_recorded = true;
			}
			s->last_claim = GetCurrentTimestamp();
			batch_cxt = cur->cxt;	/* collect_message allocates here */
			old = MemoryContextSwitchTo(cur->cxt);
			claimed = bk_claim_batch(s->sink_id,
									 s->limits.batch_size ? s->limits.batch_size : PG_INT32_MAX,
									 s->limits.max_batch_bytes ?
									 (int64) s->limits.max_batch_bytes : PG_INT64_MAX,
									 p->sent ? p->sent->batch.batch_seq : 0,
									 &cur->batch);
			if (claimed)
				bk_batch_decode(&cur->batch, s->format, collect_message, &cur->build);
			MemoryContextSwitchTo(old);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	if (!s->is_redis || !claimed)
		synchronous_commit = SYNCHRONOUS_COMMIT_OFF;
	CommitTransactionCommand();
	synchronous_commit = saved_sync;
	if (fence_recorded)
		s->fence_unknown = false;	/* committed with the claim */
	if (acked)
	{
		finish_delivered(s, prev, dead);
		p->done = NULL;
	}
	if (claimed && cur->build.error[0])
	{
		/* a configuration error (bad template): nothing can be sent until it is fixed */
		drop_in_flight(s, true);
		fail_sink(s, cur->build.error, cur->build.nmsgs);
		return false;
	}

	/*
	 * Start the new batch, then collect the outcome of the one before it. Unless
	 * the sink already refused part of that one when it was started (Kafka:
	 * message too large): it is then retried, so its outcome is collected first
	 * and the new batch waits, unsent, for its turn (started behind it, the new
	 * batch would be delivered now and again after the retry).
	 */
	if (claimed && p->sent != NULL)
	{
		for (int k = 0; k < p->sent->nsend && !finish_first; k++)
			finish_first = p->sent->sent[k].code == BK_SEND_REJECTED;
	}
	if (claimed && !finish_first)
		start_flight(s, cur);
	if (p->sent != NULL)
	{
		Flight	   *f = p->sent;

		p->sent = NULL;
		bk_slot_set_state(my_slot, "sending", s->name);
		if (finish_flight(s, f, &interrupted))
		{
			p->done = f;
			s->failing = false;
			s->failures = 0;
			s->reject_batch = 0;
		}
		else
		{
			/*
			 * The pipeline is dropped: the batch just started must not be
			 * acknowledged before the failed one. Both stay in flight and are
			 * replayed in order.
			 */
			if (claimed && !finish_first)
			{
				p->sent = cur;
				drop_in_flight(s, true);
			}
			if (interrupted)
				CHECK_FOR_INTERRUPTS();
			return false;
		}
	}
	if (claimed && finish_first)
		start_flight(s, cur);
	if (claimed)
		p->sent = cur;
	else if (!acked && p->done == NULL)
	{
		stats_state(s, s->paused ? "paused" : "idle");
		return false;
	}
	return true;
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

static void
maintain_queue(void)
{
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_execute("SELECT * FROM batchkit.maintain_queue()", false, 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

void
batchkit_flush_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	TimestampTz last_maintain = 0;
	TimestampTz last_reload = 0;
	bool		restore_held = false;

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

	sinks = MemoryContextAllocZero(TopMemoryContext, sizeof(SinkRuntime) * BK_MAX_SINKS_PER_DB);
	StartTransactionCommand();
	ereport(LOG, (errmsg("batchkit flush worker started for database \"%s\"",
						 get_database_name(dboid))));
	CommitTransactionCommand();

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
		now = GetCurrentTimestamp();
		if (TimestampDifferenceExceeds(last_reload, now, 200) || last_reload == 0 || force_reload)
		{
			force_reload = false;
			if (!extension_present())
			{
				ereport(LOG, (errmsg("batchkit flush worker exiting: the extension was dropped")));
				break;
			}
			PG_TRY();
			{
				StartTransactionCommand();
				SPI_connect();
				PushActiveSnapshot(GetTransactionSnapshot());
				reload_sinks();
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
			last_reload = now;
		}

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
		{
			SinkRuntime *s = &sinks[i];
			int64		w = -1;
			bool		force = false;
			MemoryContext loopcxt = CurrentMemoryContext;

			if (s->slot && pg_atomic_read_u32(&s->slot->flush_requested) > 0)
				force = true;
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
				drop_in_flight(s, true);
				fail_sink(s, edata->message, 0);
				ereport(WARNING,
						(errmsg("batchkit sink \"%s\": %s", s->name, edata->message)));
				FreeErrorData(edata);
				w = 1;
			}
			PG_END_TRY();
			if (w >= 0 && w < wait_ms)
				wait_ms = w;
		}
		pgstat_report_stat(false);
		bk_metrics_publish_gauges();	/* about once a second, for the launcher's /metrics */

		now = GetCurrentTimestamp();
		if (!busy && TimestampDifferenceExceeds(last_maintain, now, BK_MAINTAIN_INTERVAL_MS))
		{
			PG_TRY();
			{
				maintain_queue();
			}
			PG_CATCH();
			{
				EmitErrorReport();
				FlushErrorState();
				AbortCurrentTransaction();
			}
			PG_END_TRY();
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
		close_sink(&sinks[i]);
	proc_exit(0);
}
