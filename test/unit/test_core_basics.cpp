// Unit tests of the core's general pieces: version, backoff, histograms, the ABI guard.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

#include "batchkit/core.h"
#include "batchkit/histogram.h"
#include "util/abi_guard.hpp"

TEST(CoreVersion, ReportsVersionsOfCoreAndClients) {
    EXPECT_STREQ(bk_core_version(), "0.2.0");
    EXPECT_FALSE(std::string(bk_core_librdkafka_version()).empty());
    EXPECT_NE(std::string(bk_core_hiredis_version()).find('.'), std::string::npos);
}

TEST(Backoff, GrowsExponentiallyAndIsCapped) {
    // random01 = 1 gives the full (capped) delay, 0 gives half of it.
    EXPECT_EQ(bk_backoff_delay_ms(1, 100, 10000, 1.0), 100u);
    EXPECT_EQ(bk_backoff_delay_ms(2, 100, 10000, 1.0), 200u);
    EXPECT_EQ(bk_backoff_delay_ms(4, 100, 10000, 1.0), 800u);
    EXPECT_EQ(bk_backoff_delay_ms(4, 100, 10000, 0.0), 400u);
    EXPECT_EQ(bk_backoff_delay_ms(30, 100, 10000, 1.0), 10000u);
    EXPECT_EQ(bk_backoff_delay_ms(4000000000u, 100, 10000, 0.5), 7500u);
}

TEST(Backoff, JitterStaysWithinHalfAndFull) {
    for (int i = 0; i <= 100; i++) {
        uint32_t d = bk_backoff_delay_ms(3, 100, 10000, i / 100.0);
        EXPECT_GE(d, 200u);
        EXPECT_LE(d, 400u);
    }
}

TEST(Backoff, EdgeCases) {
    EXPECT_EQ(bk_backoff_delay_ms(0, 100, 1000, 0.5), 0u);
    EXPECT_EQ(bk_backoff_delay_ms(3, 0, 1000, 0.5), 0u);
    EXPECT_EQ(bk_backoff_delay_ms(1, 500, 100, 1.0), 500u); // cap below base: base wins
    EXPECT_EQ(bk_backoff_delay_ms(1, 100, 1000, -3.0), 50u); // random clamped
}

TEST(Histogram, BucketsFollowTheDocumentedBounds) {
    int n = 0;
    const double *b = bk_histogram_bounds(BK_HIST_BATCH_SIZE, &n);
    ASSERT_EQ(n, 7);
    EXPECT_EQ(b[0], 10);
    EXPECT_EQ(b[6], 10000);
    b = bk_histogram_bounds(BK_HIST_FLUSH_SECONDS, &n);
    ASSERT_EQ(n, 7);
    EXPECT_DOUBLE_EQ(b[0], 0.01);
    EXPECT_DOUBLE_EQ(b[6], 10);
}

TEST(Histogram, ObserveCountsUpperInclusiveAndOverflow) {
    bk_histogram h{};
    bk_histogram_observe(&h, BK_HIST_BATCH_SIZE, 10);    // <= 10
    bk_histogram_observe(&h, BK_HIST_BATCH_SIZE, 11);    // <= 50
    bk_histogram_observe(&h, BK_HIST_BATCH_SIZE, 10000); // <= 10000
    bk_histogram_observe(&h, BK_HIST_BATCH_SIZE, 10001); // +Inf
    EXPECT_EQ(h.counts[0], 1u);
    EXPECT_EQ(h.counts[1], 1u);
    EXPECT_EQ(h.counts[6], 1u);
    EXPECT_EQ(h.counts[7], 1u);
    EXPECT_EQ(h.count, 4u);
    EXPECT_DOUBLE_EQ(h.sum, 20022);
}

TEST(Histogram, QuantileInterpolatesInsideTheBucket) {
    bk_histogram h{};
    EXPECT_LT(bk_histogram_quantile(&h, BK_HIST_FLUSH_SECONDS, 0.5), 0);
    for (int i = 0; i < 100; i++)
        bk_histogram_observe(&h, BK_HIST_FLUSH_SECONDS, 0.03); // all in (0.01, 0.05]
    double p50 = bk_histogram_quantile(&h, BK_HIST_FLUSH_SECONDS, 0.5);
    EXPECT_NEAR(p50, 0.03, 1e-9);
    double p99 = bk_histogram_quantile(&h, BK_HIST_FLUSH_SECONDS, 0.99);
    EXPECT_GT(p99, p50);
    EXPECT_LE(p99, 0.05);
}

TEST(AbiGuard, ConvertsExceptionsToStatus) {
    bk_status st{};
    EXPECT_EQ(bk::guarded(&st, [] { throw bk::Error(BK_INVALID_ARGUMENT, "bad option \"x\""); }),
              BK_INVALID_ARGUMENT);
    EXPECT_STREQ(st.message, "bad option \"x\"");
    EXPECT_EQ(bk::guarded(&st, [] { throw std::runtime_error("boom"); }), BK_INTERNAL);
    EXPECT_STREQ(st.message, "boom");
    EXPECT_EQ(bk::guarded(&st, [] { throw 42; }), BK_INTERNAL);
    EXPECT_EQ(bk::guarded(&st, [] {}), BK_OK);
    EXPECT_EQ(st.code, BK_OK);
    EXPECT_STREQ(st.message, "");
}
