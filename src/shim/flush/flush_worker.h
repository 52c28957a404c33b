/*
 * flush/flush_worker.h — what the flush worker's files share (flush_worker.c: the loop
 * and the queue port; flush_sinks.c: the sinks' configuration, statistics and
 * sink port). Private to the flush worker.
 */
#ifndef BATCHKIT_FLUSH_WORKER_H
#define BATCHKIT_FLUSH_WORKER_H

#include "postgres.h"

#include "batchkit/flush_pipeline.h"
#include "batchkit/sink.h"
#include "batchkit.h"
#include "shmem/shmem.h"
#include "flush/flush_batch.h"

#define BK_MAX_SINKS_PER_DB 256
#define BK_PROBE_TIMEOUT_MS 1000
#define BK_SEND_TIMEOUT_MS 10000

typedef struct SinkRuntime
{
	int32		sink_id;
	char		name[NAMEDATALEN];
	char		kind[16];
	bool		paused;
	bool		seen;
	char	   *config;			/* canonical option text: reopen when it changes */
	bk_sink    *sink;
	bool		open_failed;	/* the client could not be opened (until altered) */
	bk_flush_config pcfg;
	bk_flush_pipeline *pipe;
	FlushBatch *batches;		/* the pipeline's, in use or free for reuse */
	BkFlushFormat fmt;
	int			format;
	BkSinkSlot *slot;
} SinkRuntime;

/* the sinks of this database (flush_sinks.c) */
extern SinkRuntime *bk_flush_sinks[BK_MAX_SINKS_PER_DB];
extern int	bk_flush_nsinks;

/* flush_sinks.c */
extern BkSinkSlot *stats_slot(SinkRuntime *s);
extern void stats_state(SinkRuntime *s, const char *state);
extern void stats_error(SinkRuntime *s, const char *msg, uint64 rows_failed);
extern void stats_batch(SinkRuntime *s, uint64 rows, uint64 dead, uint64 bytes, double seconds,
						const double *lags, int nlags);
extern void record_fence(SinkRuntime *s, int64 fence);
extern void close_sink(SinkRuntime *s);
extern void reload_sinks(void);
extern BkSinkSlot *rebuild_depth(SinkRuntime *s);
extern bool sink_still_current(SinkRuntime *s);
extern bk_sink_port bk_flush_sink_port(SinkRuntime *s);
extern bk_flush_env bk_flush_env_port(SinkRuntime *s);

/* flush_worker.c */
extern void configure_pipeline(SinkRuntime *s, bool fence_unknown);
extern void free_sink(SinkRuntime *s);

#endif							/* BATCHKIT_FLUSH_WORKER_H */
