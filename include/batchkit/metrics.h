/*
 * batchkit/metrics.h — rendering batchkit's statistics as Prometheus text, and
 * keeping secrets out of the text that monitoring shows.
 *
 * The shim gathers plain structs (copied out of shared memory and the catalog)
 * and the core formats them: the exposition format's escaping, number
 * formatting and histogram layout live in one place, unit-tested without a
 * server. Strings passed in are borrowed for the duration of the call (palloc
 * memory stays the shim's); the output is a core-owned bk_buf the caller
 * releases with bk_buf_free. Every function is noexcept and thread-compatible.
 */
#ifndef BATCHKIT_METRICS_H
#define BATCHKIT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/encoding.h"
#include "batchkit/histogram.h"
#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One sink's numbers. Label strings: NULL database means "no database label". */
typedef struct bk_metrics_sink {
    const char *database; /* label "database"; NULL: omitted */
    const char *sink;     /* label "operation" (the sink name); required */
    const char *state;    /* "active", "paused", "failing" or "idle" */
    uint64_t rows_sent;   /* acknowledged by the sink */
    uint64_t rows_failed; /* rows of delivery attempts that failed and were retried */
    uint64_t rows_dead;   /* moved to dead_letters */
    uint64_t bytes_sent;
    uint64_t retries;
    int queued_known;                 /* 0: batch_queue_size is omitted for this sink */
    uint64_t queued;                  /* committed rows not yet acknowledged */
    double oldest_queued_age_seconds; /* age of the oldest queued row; NaN: unknown, omitted */
    int64_t dead_letters;             /* rows now in dead_letters; < 0: unknown, omitted */
    double last_flush_unix;           /* seconds since the Unix epoch; 0: never */
    double last_error_unix;           /* 0: never */
    double stats_reset_unix;          /* 0: unknown */
    bk_histogram hist[BK_HIST_KIND_COUNT];
} bk_metrics_sink;

/* batch_upsert statistics of one target. */
typedef struct bk_metrics_upsert {
    const char *database; /* NULL: omitted */
    const char *target;   /* label "target" (the table's name); required */
    uint64_t calls;
    uint64_t rows_in;
    uint64_t inserted;
    uint64_t updated;
    uint64_t fallbacks;
    double total_seconds;
} bk_metrics_upsert;

/*
 * Append the Prometheus text exposition (format 0.0.4) of the given sinks and
 * upsert targets to *out: HELP and TYPE once per family, every family's
 * samples together, label values escaped (\\, \", \n), histograms with
 * cumulative _bucket{le} series ending in le="+Inf", then _sum and _count.
 * docs/metrics.md lists the families.
 */
bk_code bk_metrics_prometheus(const bk_metrics_sink *sinks, size_t nsinks,
                              const bk_metrics_upsert *upserts, size_t nupserts, bk_buf *out,
                              bk_status *st);

/*
 * Copy text to out (NUL-terminated, truncated to outcap) with every occurrence
 * of a secret replaced by "***". A secret that is a URL with a password
 * (redis://user:pass@host) also has that password masked on its own. Secrets
 * shorter than BK_REDACT_MIN_LEN are ignored: masking every "a" would destroy
 * the message and hide nothing worth hiding. Returns the length written.
 */
#define BK_REDACT_MIN_LEN 3
size_t bk_redact_secrets(const char *text, const char *const *secrets, size_t nsecrets, char *out,
                         size_t outcap);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_METRICS_H */
