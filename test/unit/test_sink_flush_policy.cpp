// Unit tests of the flush policy and the retry decision (batchkit/flush_policy.h).
#include <gtest/gtest.h>

#include "batchkit/flush_policy.h"
#include "batchkit/sink.h"

TEST(SinkFlushPolicy, NothingWaitingMeansSleepUntilWoken) {
    bk_flush_limits l{1000, 1 << 20, 50};
    bk_flush_decision d = bk_flush_decide(&l, 0, 0, 10000, 0);
    EXPECT_EQ(d.flush_now, 0);
    EXPECT_EQ(d.wait_ms, -1);
    EXPECT_EQ(d.reason, BK_FLUSH_WAIT_EMPTY);
    d = bk_flush_decide(&l, 0, 0, 0, 1); // forced, but nothing to send
    EXPECT_EQ(d.flush_now, 0);
}

TEST(SinkFlushPolicy, LingersOnlyWhileFewerThanBatchSizeRowsWait) {
    bk_flush_limits l{1000, 1 << 20, 50};
    bk_flush_decision d = bk_flush_decide(&l, 10, 1000, 20, 0);
    EXPECT_EQ(d.flush_now, 0);
    EXPECT_EQ(d.wait_ms, 30);
    EXPECT_EQ(d.reason, BK_FLUSH_WAIT_LINGER);
    d = bk_flush_decide(&l, 1000, 1000, 0, 0);
    EXPECT_EQ(d.flush_now, 1);
    EXPECT_EQ(d.reason, BK_FLUSH_ROWS);
    d = bk_flush_decide(&l, 5000, 1000, 0, 0);
    EXPECT_EQ(d.reason, BK_FLUSH_ROWS);
}

TEST(SinkFlushPolicy, BytesAndAgeAndForceFlush) {
    bk_flush_limits l{1000, 4096, 50};
    EXPECT_EQ(bk_flush_decide(&l, 3, 4096, 0, 0).reason, BK_FLUSH_BYTES);
    EXPECT_EQ(bk_flush_decide(&l, 3, 10, 50, 0).reason, BK_FLUSH_AGE);
    EXPECT_EQ(bk_flush_decide(&l, 3, 10, 51, 0).flush_now, 1);
    EXPECT_EQ(bk_flush_decide(&l, 3, 10, 0, 1).reason, BK_FLUSH_FORCED);
    // A clock that went backwards counts as "just arrived".
    bk_flush_decision d = bk_flush_decide(&l, 3, 10, -100, 0);
    EXPECT_EQ(d.flush_now, 0);
    EXPECT_EQ(d.wait_ms, 50);
}

TEST(SinkFlushPolicy, ZeroLimitsMeanNoLimitAndZeroWaitMeansNow) {
    bk_flush_limits l{0, 0, 0};
    bk_flush_decision d = bk_flush_decide(&l, 1, 1, 0, 0);
    EXPECT_EQ(d.flush_now, 1);
    EXPECT_EQ(d.reason, BK_FLUSH_AGE);
    bk_flush_limits m{0, 0, 100};
    d = bk_flush_decide(&m, 1000000, 1ull << 40, 10, 0);
    EXPECT_EQ(d.flush_now, 0);
    EXPECT_EQ(d.wait_ms, 90);
}

TEST(SinkFlushPolicy, RowFitsRespectsRowsAndBytesButAlwaysTakesOne) {
    bk_flush_limits l{3, 100, 50};
    EXPECT_EQ(bk_flush_row_fits(&l, 0, 0, 1000), 1); // oversized first row goes alone
    EXPECT_EQ(bk_flush_row_fits(&l, 1, 1000, 1), 0);
    EXPECT_EQ(bk_flush_row_fits(&l, 1, 40, 60), 1);
    EXPECT_EQ(bk_flush_row_fits(&l, 1, 40, 61), 0);
    EXPECT_EQ(bk_flush_row_fits(&l, 2, 10, 10), 1);
    EXPECT_EQ(bk_flush_row_fits(&l, 3, 10, 10), 0);
    bk_flush_limits unlimited{0, 0, 0};
    EXPECT_EQ(bk_flush_row_fits(&unlimited, 1u << 30, 1ull << 50, 1ull << 40), 1);
    // No overflow near the top of the range.
    bk_flush_limits big{0, UINT64_MAX, 0};
    EXPECT_EQ(bk_flush_row_fits(&big, 1, UINT64_MAX - 5, 10), 0);
    EXPECT_EQ(bk_flush_row_fits(&big, 1, UINT64_MAX - 10, 10), 1);
}

TEST(SinkRetryPolicy, OkNeedsNothing) {
    bk_retry_policy p{3, 100, 10000};
    EXPECT_EQ(bk_retry_decide(&p, BK_SEND_OK, 1, 0.5).action, BK_RETRY_NONE);
}

TEST(SinkRetryPolicy, RetryableRetriesForeverWithCappedBackoff) {
    bk_retry_policy p{3, 100, 10000};
    bk_retry_decision d = bk_retry_decide(&p, BK_SEND_RETRYABLE, 1, 1.0);
    EXPECT_EQ(d.action, BK_RETRY_AFTER);
    EXPECT_EQ(d.delay_ms, 100u);
    d = bk_retry_decide(&p, BK_SEND_RETRYABLE, 3, 1.0);
    EXPECT_EQ(d.delay_ms, 400u);
    d = bk_retry_decide(&p, BK_SEND_RETRYABLE, 1000, 0.0); // never dead-lettered
    EXPECT_EQ(d.action, BK_RETRY_AFTER);
    EXPECT_EQ(d.delay_ms, 5000u);
    EXPECT_EQ(bk_retry_decide(&p, 77, 1000, 1.0).action, BK_RETRY_AFTER); // unknown: keep it
}

TEST(SinkRetryPolicy, RejectedIsDeadLetteredAfterMaxAttempts) {
    bk_retry_policy p{3, 100, 10000};
    EXPECT_EQ(bk_retry_decide(&p, BK_SEND_REJECTED, 1, 0.5).action, BK_RETRY_AFTER);
    EXPECT_EQ(bk_retry_decide(&p, BK_SEND_REJECTED, 2, 0.5).action, BK_RETRY_AFTER);
    EXPECT_EQ(bk_retry_decide(&p, BK_SEND_REJECTED, 3, 0.5).action, BK_RETRY_DEAD_LETTER);
    EXPECT_EQ(bk_retry_decide(&p, BK_SEND_REJECTED, 4, 0.5).action, BK_RETRY_DEAD_LETTER);
    bk_retry_policy once{0, 100, 1000}; // 0 means 1
    EXPECT_EQ(bk_retry_decide(&once, BK_SEND_REJECTED, 1, 0.5).action, BK_RETRY_DEAD_LETTER);
    bk_retry_decision d = bk_retry_decide(&p, BK_SEND_REJECTED, 2, 0.0);
    EXPECT_EQ(d.delay_ms, 100u); // half of 200, the jitter's floor
}
