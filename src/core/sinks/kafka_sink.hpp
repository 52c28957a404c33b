// kafka_sink.hpp — a batch to Kafka through one librdkafka producer per sink.
//
// Threads: librdkafka's threads call only log_cb/error_cb, which touch the
// LogQueue (mutex) and the atomic fatal_ flag. Delivery reports (dr_cb) run on
// the worker's thread inside rd_kafka_poll/flush, called from start_batch and
// finish_batch.
// Lifetime: up to two batches are in flight (started, not finished); finish_batch
// never returns with a message of ITS batch still inside librdkafka (it waits for
// the reports, or purges and waits), so that batch's memory may be freed as soon
// as it returns. With copy_payloads=false librdkafka points into the caller's
// messages until then.
#pragma once

#include <atomic>
#include <deque>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <librdkafka/rdkafka.h>

#include "sinks/sink_base.hpp"

namespace bk {

// The librdkafka configuration a sink's options produce, defaults included, in
// the order it is applied. Keys the core uses itself are left out.
std::vector<std::pair<std::string, std::string>> kafka_effective_config(const Options &opts);

// Options only batchkit uses (never given to rd_kafka_conf_set).
bool kafka_is_batchkit_option(const std::string &key);

// A delivery error: REJECTED when the message itself is at fault, else RETRYABLE.
bk_send_code kafka_classify_error(rd_kafka_resp_err_t err);

// Per-key order: once a message failed RETRYABLE, later messages of the batch that
// Kafka acknowledged on the same partition (the same topic when the failed one has
// no partition yet) are turned RETRYABLE too, so re-sending the non-OK messages in
// order never puts an older version of a key after a newer one.
void kafka_keep_key_order(const bk_message *msgs, size_t n, bk_send_result *results,
                          const std::string &default_topic);

class KafkaSink final : public Sink {
  public:
    explicit KafkaSink(const Options &opts);
    ~KafkaSink() override;

    void start_batch(const bk_message *msgs, size_t n, int64_t batch_seq, bk_send_result *results,
                     Clock::time_point deadline) override;
    void finish_batch(bk_send_summary *summary) override;
    void probe(Clock::time_point deadline) override;

  private:
    void create_producer();
    void destroy_producer() noexcept;
    rd_kafka_topic_t *topic(const char *name, size_t len);
    void on_delivery(const rd_kafka_message_t *m) noexcept;
    struct Batch;
    void produce(Batch &b);
    bool drain_window(size_t window, Clock::time_point deadline); // false: the deadline passed
    void wait_for_reports(Batch &b);
    static constexpr size_t kMaxOutstanding = 3000; // messages in librdkafka per batch
    // The same with a batch in flight ahead of this one (pipelined drains). Measured
    // with bench/flush/run.py --phases drain --sinks kafka, 4 alternating pairs on
    // this shared 2-core machine: 12000 gave 139-187k rows/s (broker CPU 1.15-1.45 s
    // per 1M rows) against 112-154k rows/s (1.59-2.37 s) with 3000.
    static constexpr size_t kMaxOutstandingPipelined = 12000;

    static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque);
    static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);
    static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);

    std::vector<std::pair<std::string, std::string>> conf_;
    std::string default_topic_;
    bool copy_payloads_;
    bool headers_; // op, table and idempotency_key on every message (option "headers")
    rd_kafka_t *rk_ = nullptr;
    std::unordered_map<std::string, rd_kafka_topic_t *> topics_;
    std::string last_topic_name_;
    rd_kafka_topic_t *last_topic_ = nullptr;
    std::atomic<bool> fatal_{false};

    // The batches in flight, oldest first (only touched on the worker's thread).
    // A delivery report finds its batch by the generation in its opaque; one of a
    // batch no longer here (finished, or abandoned) is stale and ignored.
    struct Batch {
        uint32_t gen = 0;
        const bk_message *msgs = nullptr;
        size_t n = 0;
        bk_send_result *results = nullptr;
        size_t outstanding = 0; // produced, no report yet
        Clock::time_point deadline{};
    };
    uint32_t gen_ = 0;
    std::deque<Batch> batches_;
    size_t outstanding_ = 0; // of all batches in flight
};

} // namespace bk
