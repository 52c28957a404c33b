/*
 * batchkit/flush_policy.h — when a worker flushes a sink, and what it does
 * after a failed delivery. Pure functions: no state, no clock, no I/O; the
 * worker passes in what it measured and acts on the decision.
 */
#ifndef BATCHKIT_FLUSH_POLICY_H
#define BATCHKIT_FLUSH_POLICY_H

#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A sink's limits (options batch_size, max_batch_bytes, max_wait_ms). A zero
 * batch_size or max_batch_bytes means "no limit" on that axis. */
typedef struct bk_flush_limits {
    uint32_t batch_size;
    uint64_t max_batch_bytes;
    uint32_t max_wait_ms;
} bk_flush_limits;

typedef enum bk_flush_reason {
    BK_FLUSH_WAIT_EMPTY = 0,  /* nothing waits: sleep until woken (wait_ms = -1) */
    BK_FLUSH_WAIT_LINGER = 1, /* fewer than batch_size rows wait: linger wait_ms */
    BK_FLUSH_ROWS = 2,        /* batch_size rows wait */
    BK_FLUSH_BYTES = 3,       /* max_batch_bytes wait */
    BK_FLUSH_AGE = 4,         /* the oldest waiting row waited max_wait_ms */
    BK_FLUSH_FORCED = 5       /* flush()/shutdown asked for it */
} bk_flush_reason;

typedef struct bk_flush_decision {
    int flush_now;   /* 1: claim a batch now */
    int64_t wait_ms; /* when flush_now == 0: how long to wait; -1 = until woken */
    bk_flush_reason reason;
} bk_flush_decision;

/*
 * rows_waiting/bytes_waiting: what is committed and unclaimed for the sink;
 * ms_since_first: age of the oldest waiting row (ignored when rows_waiting is 0);
 * force: flush whatever waits (flush() called, shutting down).
 */
bk_flush_decision bk_flush_decide(const bk_flush_limits *limits, uint64_t rows_waiting,
                                  uint64_t bytes_waiting, int64_t ms_since_first, int force);

/*
 * While building a batch: may a row of row_bytes join a batch that already has
 * rows/bytes? The first row always fits (a row larger than max_batch_bytes is
 * sent alone rather than blocking the sink forever).
 */
int bk_flush_row_fits(const bk_flush_limits *limits, uint64_t rows, uint64_t bytes,
                      uint64_t row_bytes);

/* Retry options of a sink: max_attempts, retry_backoff_ms, retry_backoff_max_ms. */
typedef struct bk_retry_policy {
    uint32_t max_attempts; /* deliveries of a REJECTED message before it is dead-lettered
                              (0 is treated as 1) */
    uint32_t backoff_base_ms;
    uint32_t backoff_cap_ms;
} bk_retry_policy;

typedef enum bk_retry_action {
    BK_RETRY_NONE = 0,       /* delivered: nothing to do */
    BK_RETRY_AFTER = 1,      /* send again after delay_ms */
    BK_RETRY_DEAD_LETTER = 2 /* move the message to dead_letters and go on */
} bk_retry_action;

typedef struct bk_retry_decision {
    bk_retry_action action;
    uint32_t delay_ms;
} bk_retry_decision;

/*
 * What to do with a message whose latest delivery ended with send_code
 * (bk_send_code from batchkit/sink.h) after `attempts` deliveries (>= 1, this
 * one included). RETRYABLE (the sink is down) retries forever with capped
 * exponential backoff and jitter (bk_backoff_delay_ms, random01 in [0,1));
 * REJECTED is retried the same way until attempts reaches max_attempts, then
 * dead-lettered. An unknown send_code is treated as RETRYABLE (never lose data).
 */
bk_retry_decision bk_retry_decide(const bk_retry_policy *policy, uint8_t send_code,
                                  uint32_t attempts, double random01);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_FLUSH_POLICY_H */
