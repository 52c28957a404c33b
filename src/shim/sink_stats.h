/*
 * sink_stats.h — copies of the per-sink statistics in shared memory, shared by
 * the files that show them (metrics.c, metrics_http.c) and the file that keeps
 * them across a clean restart (stats_file.c). Locking: see metrics.c.
 */
#ifndef BATCHKIT_SINK_STATS_H
#define BATCHKIT_SINK_STATS_H

#include "batchkit.h"
#include "batchkit/metrics.h"

/* A sink's slot as copied under its spinlock, plus the depth counter read after. */
typedef struct BkSinkStatsCopy
{
	BkSinkSlot	slot;
	bool		depth_known;
	uint64		queued;
} BkSinkStatsCopy;

/* metrics.c */
extern void bk_metrics_copy_locked(BkSinkSlot *s, BkSinkStatsCopy *out);
extern int	bk_metrics_copy_slots(Oid dboid, BkSinkStatsCopy **out);
extern const char *bk_metrics_state(const BkSinkStatsCopy *c);
extern double bk_metrics_unix_seconds(TimestampTz ts);
extern void bk_metrics_fill_sink(const BkSinkStatsCopy *c, bk_metrics_sink *m);
extern void bk_metrics_forget_database(Oid dboid);
extern text *bk_metrics_render(const bk_metrics_sink *sinks, int nsinks,
							   const bk_metrics_upsert *ups, int nups, MemoryContext cxt);

/* stats_file.c: statistics saved at clean shutdown, loaded at start-up */
extern void bk_stats_file_load(void);
extern void bk_stats_file_save(int code, Datum arg);

#endif							/* BATCHKIT_SINK_STATS_H */
