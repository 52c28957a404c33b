// backoff.cpp — capped exponential backoff with "equal jitter".
//
// Half of the delay is fixed (so retries never hammer a sink that just failed),
// half is random (so many sinks failing together do not retry in lockstep).
#include "batchkit/core.h"

#include <algorithm>
#include <cmath>

extern "C" uint32_t bk_backoff_delay_ms(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms,
                                        double random01) {
    if (base_ms == 0 || attempt == 0)
        return 0;
    if (cap_ms < base_ms)
        cap_ms = base_ms;
    double r = std::clamp(std::isnan(random01) ? 0.0 : random01, 0.0, 1.0);
    // 2^(attempt-1) * base, computed in double so large attempts saturate at the cap.
    double exp_delay = std::ldexp(static_cast<double>(base_ms), static_cast<int>(std::min<uint32_t>(attempt - 1, 62)));
    double capped = std::min(exp_delay, static_cast<double>(cap_ms));
    double delay = capped / 2.0 + r * (capped / 2.0);
    return static_cast<uint32_t>(std::min(delay, static_cast<double>(cap_ms)));
}
