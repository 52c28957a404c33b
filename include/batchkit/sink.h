/*
 * batchkit/sink.h — delivering a batch of encoded messages to Kafka or Redis.
 *
 * The shim (a flush worker) opens one bk_sink per configured sink and hands it
 * batches of messages it has already encoded (see batchkit/encoding.h for the
 * envelope encoder and the key/topic template renderer). The core delivers the
 * batch and reports, per message, whether the sink acknowledged it.
 *
 * Threads and lifetime
 *   - A bk_sink is used by ONE thread at a time (the worker's). Every call below
 *     runs on the caller's thread; librdkafka's internal threads only append to
 *     the sink's log queue (a mutex-protected ring) and set atomic flags. Kafka
 *     delivery reports are served by rd_kafka_poll/flush inside
 *     bk_sink_send_batch, on the caller's thread.
 *   - No callback into the shim ever runs: logs are pulled with bk_sink_next_log,
 *     so the shim may ereport freely between calls (no C++ frame is on the stack).
 *   - Memory passed in (options, messages) is only read during the call; nothing
 *     of it is kept after the call returns - except for a batch started with
 *     bk_sink_start_batch, whose messages and results are used until its
 *     bk_sink_finish_batch returns. Memory handed out (result messages) is owned
 *     by the sink and valid until the next call on the same sink (pipelined
 *     batches: see bk_sink_start_batch).
 *   - Every function is noexcept: failures come back as a bk_code plus *st.
 *
 * Delivery semantics: see bk_sink_send_batch and docs/sinks-internals.md.
 */
#ifndef BATCHKIT_SINK_H
#define BATCHKIT_SINK_H

#include <stddef.h>
#include <stdint.h>

#include "batchkit/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bk_sink bk_sink;

/* One option, already validated upstream (include/batchkit/sink_options.h). */
typedef struct bk_sink_option {
    const char *key;
    const char *value;
} bk_sink_option;

/*
 * Open a sink. kind is "kafka" or "redis". Options used by the core:
 *   both:  name (the sink's name; idempotency keys and the Redis fence use it;
 *          required for redis), send_timeout_ms (default for timeout_ms <= 0,
 *          default 30000)
 *   kafka: topic (used when a message has no rendered target), every other key
 *          is a librdkafka property passed to rd_kafka_conf_set (dotted keys,
 *          and undotted ones librdkafka knows: acks, partitioner, debug, ...).
 *          Undotted keys librdkafka does not know are batchkit options the core
 *          does not use (batch_size, max_wait_ms, format, ...) and are ignored.
 *          Defaults applied when absent: enable.idempotence=true, acks=all,
 *          partitioner=murmur2_random, max.in.flight.requests.per.connection=5
 *          (1 when idempotence is turned off), message.timeout.ms=30000,
 *          linger.ms=5, batch.num.messages=10000, client.id=batchkit-<name>.
 *   redis: url (redis://[[user]:password@]host[:port][/db] or
 *          unix:///path[?db=N]; default redis://127.0.0.1:6379/0), command
 *          (xadd|lpush|rpush|publish|set|hset; required), key (used when a
 *          message has no rendered target), maxlen (xadd: MAXLEN ~ N),
 *          ttl_ms (set: PX), connect_timeout_ms (default 2000). Other keys
 *          are ignored.
 * Opening never waits for the network (Kafka connects in the background, Redis
 * on the first send), so it is fast when the sink is down; use bk_sink_probe
 * to check reachability. Returns NULL and fills *st on failure
 * (BK_INVALID_ARGUMENT for a bad option, with the option named).
 */
bk_sink *bk_sink_open(const char *kind, const bk_sink_option *opts, size_t nopts, bk_status *st);

/* Close a sink: purges anything still queued in librdkafka (batches started
 * and not finished are abandoned: their results are not written again),
 * destroys the producer/connection. NULL is a no-op. */
void bk_sink_close(bk_sink *sink);

/* Operation of a message. BK_OP_MESSAGE is an enqueue()d payload: no op header
 * or stream field, treated like an insert by set/hset. */
typedef enum bk_op {
    BK_OP_INSERT = 0,
    BK_OP_UPDATE = 1,
    BK_OP_DELETE = 2,
    BK_OP_MESSAGE = 3
} bk_op;

/* A name/value pair: a Kafka header or a Redis hash field. value == NULL is SQL
 * NULL (a header without value; for hset, the field is removed with HDEL). */
typedef struct bk_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
} bk_field;

/* One message. Strings are (pointer, length), not NUL-terminated. */
typedef struct bk_message {
    /* Kafka topic, or Redis key (xadd/lpush/rpush/set/hset) or channel (publish),
     * already rendered (bk_template_render). NULL: the sink's "topic"/"key". */
    const char *target;
    size_t target_len;
    /* Kafka message key (partitioning); NULL: no key. Redis: unused. */
    const char *key;
    size_t key_len;
    /* The payload (JSON). NULL: a null value (a Kafka tombstone; an empty string
     * for Redis). Unused by hset (fields) and by delete for set/hset. */
    const char *value;
    size_t value_len;
    /* "schema.name": Kafka header and stream field "table". NULL: none. */
    const char *table;
    size_t table_len;
    /* hset: one field per column, in order (values as text). */
    const bk_field *fields;
    size_t nfields;
    /* Extra Kafka headers (enqueue()'s headers), after op/table/idempotency_key.
     * Redis: unused. */
    const bk_field *headers;
    size_t nheaders;
    /* Per-sink message sequence: idempotency key "<sink name>:<seq>". Must be the
     * same for the same row on every (re)delivery. */
    int64_t seq;
    uint8_t op; /* bk_op */
} bk_message;

typedef enum bk_send_code {
    BK_SEND_OK = 0,        /* acknowledged by the sink */
    BK_SEND_RETRYABLE = 1, /* not (known to be) delivered: the sink or network failed,
                              or the timeout elapsed; send again, never dead-letter */
    BK_SEND_REJECTED = 2   /* the sink refused this message itself (too large, wrong
                              type of key, ...): count an attempt, dead-letter after
                              max_attempts */
} bk_send_code;

typedef struct bk_send_result {
    uint8_t code;        /* bk_send_code */
    int32_t error;       /* native code: rd_kafka_resp_err_t, or 0/-1 for Redis */
    const char *message; /* why; "" when ok. Valid until the next call on the sink */
    int32_t partition;   /* Kafka: partition written to, else -1 */
    int64_t offset;      /* Kafka: offset when known, else -1 */
} bk_send_result;

typedef struct bk_send_summary {
    size_t ok;
    size_t retryable;
    size_t rejected;
    /* Redis: 1 when the fence showed the batch was already applied (a replay):
     * nothing was written and every valid message reported ok. */
    int skipped_by_fence;
    /* Redis: the fence value read before writing (-1 when unknown / Kafka). */
    int64_t fence_before;
} bk_send_summary;

/*
 * Deliver msgs[0..n) and fill results[0..n) (always fully written, whatever the
 * return code). Returns when every message is acknowledged or failed, or after
 * timeout_ms (<= 0: the sink's send_timeout_ms); messages still outstanding then
 * are purged from librdkafka and reported RETRYABLE. Nothing of the batch is
 * referenced after the call returns.
 *
 * batch_seq: the worker's per-sink batch sequence, strictly increasing.
 *   Redis writes the batch and "SET batchkit:fence:<name> <batch_seq>" in one
 *   MULTI/EXEC; if the fence is already >= batch_seq the batch was applied
 *   before (a replay after a crash) and every message is reported OK without
 *   writing anything. Hence the shim's rules:
 *     - same batch_seq <=> exactly the same messages (replays after a crash or
 *       after an all-RETRYABLE result);
 *     - after a call where any result is OK or REJECTED, send whatever remains
 *       under a NEW batch_seq.
 *   Kafka ignores batch_seq.
 *
 * Result contract (both kinds):
 *   - Ack every OK message; re-send the others in their original order.
 *   - Per-key order: when a Kafka message fails RETRYABLE, every later message of
 *     the batch that went to the same partition (same topic if the partition is
 *     unknown) is reported RETRYABLE too, even if Kafka acknowledged it, so that
 *     re-sending the non-OK messages never lets an older version of a key
 *     overtake a newer one (the duplicates carry the same idempotency key).
 *   - Redis: either the outcome is unknown or nothing was applied — every valid
 *     message RETRYABLE (connection lost, timeout; an aborted transaction may also
 *     mark the commands Redis refused for their own fault REJECTED) — or the
 *     transaction ran: each message is OK, REJECTED (WRONGTYPE, ...) or, for an
 *     error about the server's state on that one command, RETRYABLE. Redis does
 *     not roll back the other commands of a transaction when one fails.
 *
 * Returns BK_OK when all messages are OK, BK_UNAVAILABLE when any is RETRYABLE
 * (*st: the first error), BK_REJECTED when some are REJECTED and none RETRYABLE,
 * BK_INVALID_ARGUMENT for a NULL sink/msgs/results. summary may be NULL.
 */
bk_code bk_sink_send_batch(bk_sink *sink, const bk_message *msgs, size_t n, int64_t batch_seq,
                           bk_send_result *results, int timeout_ms, bk_send_summary *summary,
                           bk_status *st);

/*
 * Pipelined delivery: bk_sink_send_batch split in two, so that the caller can
 * prepare (claim, decode, encode) batch N+1 while the sink works on batch N.
 *
 * bk_sink_start_batch encodes and writes (Redis) / produces (Kafka) the batch
 * and returns without waiting for the sink's acknowledgement of it;
 * bk_sink_finish_batch waits for the replies / delivery reports of the OLDEST
 * started batch (batch_seq must be that batch's) and fills its results and
 * summary exactly as bk_sink_send_batch would. bk_sink_send_batch is start
 * followed by finish.
 *
 * Rules:
 *   - at most BK_SINK_MAX_IN_FLIGHT batches are started and not finished; batches
 *     finish in the order they started; batch_seq strictly increases;
 *   - msgs[] (and the memory it points to) and results[] must stay valid and
 *     unchanged until the batch's finish returns: the sink writes results[]
 *     during later start/finish calls and reads msgs[] at finish;
 *   - timeout_ms counts from the start of the batch;
 *   - result messages stay valid until the next start or finish call after the
 *     batch's own finish;
 *   - when a batch fails (any result RETRYABLE), every batch started after it
 *     and not yet finished is unreliable in ORDER: Redis refuses to apply it (it
 *     is DISCARDed, all RETRYABLE: applying it would move the fence past the
 *     failed batch, whose replay would then be skipped); Kafka may have delivered
 *     it. The caller must not acknowledge it before the failed batch, i.e. it
 *     finishes it, keeps both unacknowledged and replays them in order.
 * bk_sink_start_batch returns BK_OK when the batch was taken (its outcome,
 * failures included, comes from bk_sink_finish_batch) or BK_INVALID_ARGUMENT
 * for a misuse (NULL arguments, too many batches in flight; nothing started).
 * bk_sink_finish_batch returns like bk_sink_send_batch; BK_INVALID_ARGUMENT
 * when batch_seq is not the oldest started batch (nothing changes then).
 * bk_sink_in_flight tells how many batches are started and not finished.
 */
#define BK_SINK_MAX_IN_FLIGHT 2

bk_code bk_sink_start_batch(bk_sink *sink, const bk_message *msgs, size_t n, int64_t batch_seq,
                            bk_send_result *results, int timeout_ms, bk_status *st);
bk_code bk_sink_finish_batch(bk_sink *sink, int64_t batch_seq, bk_send_summary *summary,
                             bk_status *st);
int bk_sink_in_flight(const bk_sink *sink);

/*
 * Check that the sink is reachable within timeout_ms: Kafka asks a broker for
 * metadata, Redis connects (if needed) and sends PING. BK_OK or BK_UNAVAILABLE;
 * BK_INVALID_ARGUMENT while a batch is in flight (probe between batches).
 */
bk_code bk_sink_probe(bk_sink *sink, int timeout_ms, bk_status *st);

/*
 * Redis: read the sink's fence (the last batch_seq applied) into *fence
 * (0 when the key is absent). A worker starting a sink whose Redis data outlived
 * it (the sink was dropped and re-created under the same name) must continue its
 * batch_seq above this value, or every batch up to it is skipped as a replay.
 * Kafka, or a batch in flight: BK_INVALID_ARGUMENT.
 */
bk_code bk_sink_read_fence(bk_sink *sink, int64_t *fence, int timeout_ms, bk_status *st);

/* A log line from the sink's client library or from the core (reconnects). */
typedef struct bk_log_entry {
    int level;         /* syslog level: 3 error, 4 warning, 6 info, 7 debug */
    char facility[32]; /* librdkafka facility ("FAIL", "REQTMOUT", ...) or "redis" */
    char message[BK_STATUS_MESSAGE_MAX];
    uint64_t dropped; /* entries dropped before this one (queue full) */
} bk_log_entry;

/* Pop the oldest queued log entry into *out: 1 if one was copied, 0 if the
 * queue is empty. Thread-safe; call it from the worker after each batch. The
 * queue keeps the newest 1024 entries. */
int bk_sink_next_log(bk_sink *sink, bk_log_entry *out);

/*
 * Give the core a flag to watch while it waits on the network (the worker passes
 * Postgres's InterruptPending): when it becomes non-zero, a send stops within
 * ~100 ms and reports what is outstanding as RETRYABLE, so a stalled sink never
 * keeps the worker from a shutdown, DROP DATABASE or other interrupt. Process-wide.
 */
void bk_sink_set_interrupt_flag(const volatile int *flag);

/* Name of a bk_send_code ("ok", "retryable", "rejected"). Static storage. */
const char *bk_send_code_name(uint8_t code);

#ifdef __cplusplus
}
#endif

#endif /* BATCHKIT_SINK_H */
