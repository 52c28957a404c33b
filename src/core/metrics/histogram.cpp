// histogram.cpp — fixed-bucket histograms for batch size, flush duration and lag.
//
// The bucket bounds follow the names dashboards already use for batch metrics
// (batch_processing_size, batch_processing_duration_seconds). Memory and locking
// belong to the caller (shared memory in the shim); this file only computes.
#include "batchkit/histogram.h"

#include <cmath>

namespace {
const double kBatchSize[] = {10, 50, 100, 500, 1000, 5000, 10000};
const double kFlushSeconds[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10};
const double kLagSeconds[] = {0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 5, 10, 60};

template <size_t N> const double *with_count(const double (&a)[N], int *n) {
    static_assert(N <= BK_HISTOGRAM_MAX_BOUNDS, "too many buckets");
    if (n)
        *n = static_cast<int>(N);
    return a;
}
} // namespace

extern "C" {

const double *bk_histogram_bounds(bk_histogram_kind kind, int *nbounds) {
    switch (kind) {
    case BK_HIST_BATCH_SIZE:
        return with_count(kBatchSize, nbounds);
    case BK_HIST_FLUSH_SECONDS:
        return with_count(kFlushSeconds, nbounds);
    case BK_HIST_LAG_SECONDS:
        return with_count(kLagSeconds, nbounds);
    default:
        if (nbounds)
            *nbounds = 0;
        return nullptr;
    }
}

const char *bk_histogram_name(bk_histogram_kind kind) {
    switch (kind) {
    case BK_HIST_BATCH_SIZE:
        return "batch_size";
    case BK_HIST_FLUSH_SECONDS:
        return "flush_duration_seconds";
    case BK_HIST_LAG_SECONDS:
        return "lag_seconds";
    default:
        return "unknown";
    }
}

void bk_histogram_observe(bk_histogram *h, bk_histogram_kind kind, double value) {
    if (h == nullptr || std::isnan(value))
        return;
    int n = 0;
    const double *bounds = bk_histogram_bounds(kind, &n);
    int i = 0;
    while (i < n && value > bounds[i])
        i++;
    h->counts[i]++;
    h->count++;
    h->sum += value;
}

double bk_histogram_quantile(const bk_histogram *h, bk_histogram_kind kind, double q) {
    if (h == nullptr || h->count == 0 || !(q > 0.0 && q < 1.0))
        return -1.0;
    int n = 0;
    const double *bounds = bk_histogram_bounds(kind, &n);
    double rank = q * static_cast<double>(h->count);
    uint64_t cumulative = 0;
    for (int i = 0; i <= n; i++) {
        uint64_t before = cumulative;
        cumulative += h->counts[i];
        if (static_cast<double>(cumulative) >= rank && h->counts[i] > 0) {
            if (i == n) // +Inf bucket: the best we can say is the highest finite bound
                return n > 0 ? bounds[n - 1] : -1.0;
            double lower = i == 0 ? 0.0 : bounds[i - 1];
            double upper = bounds[i];
            double frac = (rank - static_cast<double>(before)) / static_cast<double>(h->counts[i]);
            return lower + (upper - lower) * frac;
        }
    }
    return n > 0 ? bounds[n - 1] : -1.0;
}
}
