/*
 * batchkit/status.h — how errors cross the shim/core boundary.
 *
 * Every core function the shim calls returns a bk_code and, on failure, fills a
 * caller-owned bk_status with a message. No exception ever crosses this boundary
 * and the core never allocates memory the shim must free (or the reverse).
 */
#ifndef BATCHKIT_STATUS_H
#define BATCHKIT_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum bk_code {
    BK_OK = 0,
    BK_INVALID_ARGUMENT = 1, /* the caller's input is wrong: a user error */
    BK_UNAVAILABLE = 2,      /* a sink or service cannot be reached right now: retry */
    BK_REJECTED = 3,         /* the sink refused this message for good: dead-letter it */
    BK_OUT_OF_MEMORY = 4,
    BK_INTERNAL = 5 /* a bug: an unexpected exception or state */
} bk_code;

#define BK_STATUS_MESSAGE_MAX 512

typedef struct bk_status {
    bk_code code;
    char message[BK_STATUS_MESSAGE_MAX];
} bk_status;

/* Clear a status to BK_OK with an empty message. */
void bk_status_clear(bk_status *st);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_STATUS_H */
