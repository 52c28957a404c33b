/*
 * batchkit/histogram.h — fixed-bucket histograms that live in shared memory.
 *
 * The shim owns the memory (a bk_histogram inside its shared-memory segment)
 * and the locking; the core only computes. Buckets are cumulative-friendly:
 * counts[i] counts observations <= bounds[i]; counts[nbounds] is +Inf.
 */
#ifndef BATCHKIT_HISTOGRAM_H
#define BATCHKIT_HISTOGRAM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BK_HISTOGRAM_MAX_BOUNDS 16

typedef enum bk_histogram_kind {
    BK_HIST_BATCH_SIZE = 0,       /* rows: 10, 50, 100, 500, 1000, 5000, 10000 */
    BK_HIST_FLUSH_SECONDS = 1,    /* seconds: 0.01, 0.05, 0.1, 0.5, 1, 5, 10 */
    BK_HIST_LAG_SECONDS = 2,      /* commit-to-ack lag, seconds */
    BK_HIST_KIND_COUNT = 3
} bk_histogram_kind;

typedef struct bk_histogram {
    uint64_t counts[BK_HISTOGRAM_MAX_BOUNDS + 1];
    uint64_t count;
    double sum;
} bk_histogram;

/* The upper bounds of a kind's buckets; *nbounds receives how many. Static storage. */
const double *bk_histogram_bounds(bk_histogram_kind kind, int *nbounds);

/* Metric name used in views and the Prometheus text, e.g. "batch_size". */
const char *bk_histogram_name(bk_histogram_kind kind);

/* Record one observation. Not thread-safe: the caller holds the lock. */
void bk_histogram_observe(bk_histogram *h, bk_histogram_kind kind, double value);

/*
 * Estimate the q-quantile (0 < q < 1) by linear interpolation inside the bucket
 * that holds it, as Prometheus's histogram_quantile does. Returns -1 when empty.
 */
double bk_histogram_quantile(const bk_histogram *h, bk_histogram_kind kind, double q);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_HISTOGRAM_H */
