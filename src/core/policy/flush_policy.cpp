// flush_policy.cpp — when to flush a sink and what to do after a failed delivery.
//
// Pure functions of what the worker measured; the worker owns the clock, the
// queue and the sleeping. Kept free of I/O so every branch is unit-tested.
#include "batchkit/core.h"
#include "batchkit/flush_policy.h"
#include "batchkit/sink.h"

extern "C" {

bk_flush_decision bk_flush_decide(const bk_flush_limits *limits, uint64_t rows_waiting,
                                  uint64_t bytes_waiting, int64_t ms_since_first, int force) {
    bk_flush_decision d{0, -1, BK_FLUSH_WAIT_EMPTY};
    if (rows_waiting == 0)
        return d; // even when forced: there is nothing to send
    if (force) {
        d.flush_now = 1;
        d.reason = BK_FLUSH_FORCED;
        return d;
    }
    bk_flush_limits l = limits ? *limits : bk_flush_limits{0, 0, 0};
    if (l.batch_size != 0 && rows_waiting >= l.batch_size) {
        d.flush_now = 1;
        d.reason = BK_FLUSH_ROWS;
        return d;
    }
    if (l.max_batch_bytes != 0 && bytes_waiting >= l.max_batch_bytes) {
        d.flush_now = 1;
        d.reason = BK_FLUSH_BYTES;
        return d;
    }
    // A clock that went backwards (or a caller without one) counts as "just arrived".
    int64_t age = ms_since_first < 0 ? 0 : ms_since_first;
    if (age >= static_cast<int64_t>(l.max_wait_ms)) {
        d.flush_now = 1;
        d.reason = BK_FLUSH_AGE;
        return d;
    }
    d.wait_ms = static_cast<int64_t>(l.max_wait_ms) - age;
    d.reason = BK_FLUSH_WAIT_LINGER;
    return d;
}

int bk_flush_row_fits(const bk_flush_limits *limits, uint64_t rows, uint64_t bytes,
                      uint64_t row_bytes) {
    if (rows == 0)
        return 1;
    if (limits == nullptr)
        return 1;
    if (limits->batch_size != 0 && rows >= limits->batch_size)
        return 0;
    if (limits->max_batch_bytes != 0 &&
        (bytes >= limits->max_batch_bytes || row_bytes > limits->max_batch_bytes - bytes))
        return 0;
    return 1;
}

bk_retry_decision bk_retry_decide(const bk_retry_policy *policy, uint8_t send_code,
                                  uint32_t attempts, double random01) {
    bk_retry_decision d{BK_RETRY_NONE, 0};
    if (send_code == BK_SEND_OK)
        return d;
    bk_retry_policy p = policy ? *policy : bk_retry_policy{1, 0, 0};
    if (attempts == 0)
        attempts = 1;
    if (send_code == BK_SEND_REJECTED) {
        uint32_t max_attempts = p.max_attempts == 0 ? 1 : p.max_attempts;
        if (attempts >= max_attempts) {
            d.action = BK_RETRY_DEAD_LETTER;
            return d;
        }
    }
    d.action = BK_RETRY_AFTER;
    d.delay_ms = bk_backoff_delay_ms(attempts, p.backoff_base_ms, p.backoff_cap_ms, random01);
    return d;
}
}
