/*
 * batchkit/flush_pipeline.h — a sink's flush pipeline: the batches in flight and
 * what happens next (linger or claim, start, finish, acknowledge in batch order,
 * back off, probe, dead-letter, drop and replay). The state machine is written at
 * the top of src/core/flush/pipeline.cpp.
 *
 * The pipeline owns no I/O. It calls three ports the caller implements:
 *   - bk_queue_port: the durable queue (the shim: transactions, SPI, consume.h);
 *   - bk_sink_port: the sink (the shim: bk_sink_start_batch / bk_sink_finish_batch
 *     of batchkit/sink.h; tests: fake sinks);
 *   - bk_flush_env: the clock, randomness (backoff jitter) and the interrupt flag.
 * Every port function returns its failures as values (bk_code + bk_status); it
 * never throws, longjmps or ereports through the pipeline's frames. Every
 * function below is noexcept.
 *
 * Lifetimes: a batch the queue port hands out (bk_flush_batch: its messages and
 * everything they point to) stays valid and unchanged until the pipeline passes
 * it to release(). Result messages handed to round() (dead letters) are valid for
 * that call only. Single-threaded: one pipeline is used by one thread.
 */
#ifndef BATCHKIT_FLUSH_PIPELINE_H
#define BATCHKIT_FLUSH_PIPELINE_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/flush_policy.h"
#include "batchkit/sink.h"
#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A claimed (or replayed) batch, decoded into the sink's messages. */
typedef struct bk_flush_batch {
    int64_t batch_seq;
    int replay;             /* claimed before and never acknowledged */
    const bk_message *msgs; /* owned by the queue port until release() */
    size_t nmsgs;
    const char *decode_error; /* non-NULL: the batch cannot be sent (a bad template) */
    void *handle;             /* the queue port's own */
} bk_flush_batch;

/* A delivered batch to acknowledge, dead-lettering its REJECTED messages. */
typedef struct bk_flush_ack {
    const bk_flush_batch *batch;
    const bk_send_result *results; /* one per batch->msgs */
    uint32_t attempts;             /* deliveries of its rejected messages (dead_letter.attempts) */
    uint64_t bytes;                /* of keys and values */
    double seconds;                /* from its start to its outcome */
} bk_flush_ack;

/*
 * One exchange with the queue, atomically (the shim: ONE transaction): first
 * acknowledge acks[0..nacks) in that order (they are in batch_seq order), then,
 * when claim is set and the sink is still as configured (not paused, not
 * altered: else set stale and claim nothing), record fence (when >= 0) and
 * claim a batch: the lowest in-flight batch above after_seq again (a replay),
 * or new records up to max_rows / max_bytes. A failure (non-OK) means none of it
 * happened.
 */
typedef struct bk_queue_round {
    const bk_flush_ack *acks;
    size_t nacks;
    int claim;
    int64_t after_seq;
    int64_t max_rows;
    int64_t max_bytes;
    int64_t fence;
    /* out */
    int stale;
    int claimed;
    bk_flush_batch batch;
} bk_queue_round;

typedef enum bk_flush_note_kind {
    BK_FLUSH_NOTE_FAILED = 1, /* the sink is put in backoff: msg, rows failed */
    BK_FLUSH_NOTE_RETRY = 2,  /* batch_seq failed and will be replayed: msg */
    BK_FLUSH_NOTE_IDLE = 3,   /* nothing to claim */
    BK_FLUSH_NOTE_SENDING = 4 /* about to wait on the sink */
} bk_flush_note_kind;

typedef struct bk_queue_port {
    void *ctx;
    bk_code (*round)(void *ctx, bk_queue_round *r, bk_status *st);
    /* age of the oldest committed, unclaimed row; *found = 0 when none */
    bk_code (*oldest_age_ms)(void *ctx, int64_t *age_ms, int *found, bk_status *st);
    /* rows queued for the sink (in-flight rows included); *known = 0: not counted yet */
    void (*waiting)(void *ctx, uint64_t *rows, int *known);
    /* the pipeline no longer uses the batch (acknowledged, or dropped for a replay) */
    void (*release)(void *ctx, bk_flush_batch *batch);
    /* statistics and logs; may be NULL */
    void (*note)(void *ctx, bk_flush_note_kind kind, int64_t batch_seq, uint64_t rows,
                 const char *msg);
} bk_queue_port;

/* The sink, as batchkit/sink.h describes bk_sink_start_batch & co. */
typedef struct bk_sink_port {
    void *ctx;
    bk_code (*start)(void *ctx, const bk_message *msgs, size_t n, int64_t batch_seq,
                     bk_send_result *results, int timeout_ms, bk_status *st);
    bk_code (*finish)(void *ctx, int64_t batch_seq, bk_send_summary *summary, bk_status *st);
    bk_code (*probe)(void *ctx, int timeout_ms, bk_status *st);
    bk_code (*read_fence)(void *ctx, int64_t *fence, int timeout_ms, bk_status *st);
} bk_sink_port;

typedef struct bk_flush_env {
    void *ctx;
    int64_t (*now_us)(void *ctx);
    double (*random01)(void *ctx); /* in [0, 1) */
    int (*interrupted)(void *ctx); /* an interrupt is pending (a failed send gave way to it) */
} bk_flush_env;

typedef struct bk_flush_config {
    uint32_t depth; /* batches started and not finished at most (today's worker: 2) */
    bk_flush_limits limits;
    bk_retry_policy retry;
    int send_timeout_ms;
    int probe_timeout_ms;
    int64_t max_message_bytes; /* larger messages are refused (REJECTED) before sending */
    int fenced;                /* Redis: rejects are final (dead-lettered at once), replays skipped
                                  by the sink's fence */
    int fence_unknown;         /* fenced: read the sink's fence before the first claim */
} bk_flush_config;

/* One step of the pipeline (the worker's round for this sink). */
typedef struct bk_flush_step {
    int force;           /* flush() asked: no linger, no "nothing waits" shortcut */
    int paused;          /* the sink is paused: claim nothing, acknowledge what is delivered */
    uint32_t naptime_ms; /* look at the queue at least this often, whatever the counter says */
    /* out */
    int busy;        /* something was done: step again at once */
    int64_t wait_ms; /* when this sink next needs attention; -1: when woken */
    int interrupted; /* a send gave way to an interrupt: process it */
    int reload;      /* the sink was paused or altered: reload it before sending */
} bk_flush_step;

typedef struct bk_flush_pipeline bk_flush_pipeline;

/* NULL (and *st) when out of memory or the configuration is invalid (depth 0). */
bk_flush_pipeline *bk_flush_pipeline_create(const bk_flush_config *cfg, const bk_queue_port *queue,
                                            const bk_sink_port *sink, const bk_flush_env *env,
                                            bk_status *st);
/* Releases every batch it holds (unacknowledged ones stay in the queue's in-flight record). */
void bk_flush_pipeline_destroy(bk_flush_pipeline *p);

/* A new configuration (the sink was reopened): backoff and reject counting start over. */
bk_code bk_flush_pipeline_configure(bk_flush_pipeline *p, const bk_flush_config *cfg,
                                    bk_status *st);

/*
 * A step. BK_OK, or the failure of a port call that made the pipeline drop its
 * batches in flight and back off (*st says why; io->wait_ms is then 1).
 */
bk_code bk_flush_pipeline_step(bk_flush_pipeline *p, bk_flush_step *io, bk_status *st);

/*
 * Forget the batches started and not acknowledged (they are replayed, in order,
 * by later claims). finish: collect their outcome from the sink first (it stops
 * using their memory); 0 when the sink is being closed. Delivered batches are
 * kept and acknowledged by the next step.
 */
void bk_flush_pipeline_drop(bk_flush_pipeline *p, int finish);

/* The caller failed the sink's turn (an error outside the ports): back off. */
void bk_flush_pipeline_backoff(bk_flush_pipeline *p, const char *msg, uint64_t rows_failed);

int bk_flush_pipeline_failing(const bk_flush_pipeline *p);
/* Rows of the batches the pipeline holds. */
uint64_t bk_flush_pipeline_rows(const bk_flush_pipeline *p);
/* Batches it holds (claimed, started or awaiting their acknowledgement). */
size_t bk_flush_pipeline_batches(const bk_flush_pipeline *p);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_FLUSH_PIPELINE_H */
