/*
 * metrics/metrics.h — the per-sink statistics in shared memory as the files
 * that show them see them (metrics.c: the SQL views and metrics(), the gauges
 * the flush worker publishes; metrics_http.c: the launcher's /metrics
 * endpoint). Locking: see metrics.c. Keeping them across a clean restart is
 * shared memory's business (shmem/stats_file.c).
 */
#ifndef BATCHKIT_SHIM_METRICS_H
#define BATCHKIT_SHIM_METRICS_H

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

/* metrics.c: the flush worker publishes gauges for the /metrics endpoint */
extern void bk_metrics_publish_gauges(void);

/* metrics_http.c: the launcher's optional /metrics endpoint */
extern int	bk_metrics_port;
extern char *bk_metrics_listen_address;
extern void bk_metrics_http_define_gucs(void);
extern int	bk_metrics_http_wait(long timeout_ms);

#endif							/* BATCHKIT_SHIM_METRICS_H */
