/*
 * batchkit/core.h — the C ABI of the batchkit C++ core (general part).
 *
 * Plain C types only; every function is noexcept on the C++ side and safe to
 * call from the Postgres backend thread. Functions are thread-safe unless noted.
 */
#ifndef BATCHKIT_CORE_H
#define BATCHKIT_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Version of the core library, e.g. "0.2.0". Static storage. */
const char *bk_core_version(void);

/* Versions of the client libraries the core was linked with (static storage). */
const char *bk_core_librdkafka_version(void);
const char *bk_core_hiredis_version(void);

/*
 * Retry delay before attempt number `attempt` (1 = first retry): exponential
 * from base_ms, capped at cap_ms, with "equal jitter" — half fixed, half drawn
 * from `random01` in [0,1). Returns 0 when base_ms is 0.
 */
uint32_t bk_backoff_delay_ms(uint32_t attempt, uint32_t base_ms, uint32_t cap_ms, double random01);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_CORE_H */
