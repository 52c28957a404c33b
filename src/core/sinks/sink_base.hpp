// sink_base.hpp — what every sink (Kafka, Redis) is to the C ABI in sink.cpp.
//
// Threads: a Sink is driven by one thread at a time (the flush worker's). Only
// its LogQueue is touched by other threads (librdkafka's), under the queue's own
// mutex. Lifetime: created by bk_sink_open, destroyed by bk_sink_close; strings
// handed out in bk_send_result.message live in the Sink until its next call.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "batchkit/sink.h"

namespace bk {

// The interrupt flag of bk_sink_set_interrupt_flag (nullptr: never interrupted).
extern const volatile int *g_interrupt_flag;
bool sink_interrupted() noexcept;
// Waits on the network are cut into slices of at most this many ms, to watch it.
constexpr int kInterruptSliceMs = 100;


using Clock = std::chrono::steady_clock;

// Bounded, thread-safe queue of log lines; drained by the worker (bk_sink_next_log).
class LogQueue {
  public:
    static constexpr size_t kCapacity = 1024;
    void push(int level, std::string_view facility, std::string_view message) noexcept;
    bool pop(bk_log_entry *out) noexcept;

  private:
    struct Entry {
        int level;
        std::string facility, message;
        uint64_t dropped_before;
    };
    std::mutex mu_;
    std::deque<Entry> entries_;
    uint64_t dropped_ = 0; // dropped while the queue was empty (capacity 1 only)
};

// The options given to bk_sink_open, by key (the last value wins).
class Options {
  public:
    Options(const bk_sink_option *opts, size_t n);
    std::optional<std::string> get(const std::string &key) const;
    std::string get_or(const std::string &key, const std::string &dflt) const;
    // Integer option in [lo, hi]; throws BK_INVALID_ARGUMENT naming the option.
    int64_t get_int(const std::string &key, int64_t dflt, int64_t lo, int64_t hi) const;
    const std::map<std::string, std::string> &all() const { return kv_; }
    // Keys in their original order (librdkafka applies them in order).
    const std::deque<std::pair<std::string, std::string>> &ordered() const { return ordered_; }

  private:
    std::map<std::string, std::string> kv_;
    std::deque<std::pair<std::string, std::string>> ordered_;
};

class Sink {
  public:
    explicit Sink(const Options &opts);
    virtual ~Sink() = default;
    Sink(const Sink &) = delete;
    Sink &operator=(const Sink &) = delete;

    // Pipelined delivery (bk_sink_start_batch / bk_sink_finish_batch). start_batch
    // either records the batch (finish_batch is then called for it, in start order)
    // or throws having recorded nothing (the caller then reports it RETRYABLE and
    // calls poison()). results[] arrive pre-filled RETRYABLE "not sent" and stay
    // valid, like msgs[], until the batch's finish_batch returned.
    virtual void start_batch(const bk_message *msgs, size_t n, int64_t batch_seq,
                             bk_send_result *results, Clock::time_point deadline) = 0;
    // Completes the oldest started batch: every results[i] final, *summary's
    // fence_before / skipped_by_fence set. Forgets the batch even when it throws.
    virtual void finish_batch(bk_send_summary *summary) = 0;
    // A batch started after a failed one must not be applied before it (Redis).
    virtual void poison() noexcept {}
    virtual void probe(Clock::time_point deadline) = 0; // throws BK_UNAVAILABLE
    virtual int64_t read_fence(Clock::time_point deadline);

    LogQueue &log() noexcept { return log_; }
    const std::string &name() const noexcept { return name_; }
    int send_timeout_ms() const noexcept { return send_timeout_ms_; }

    // Result strings that must outlive the call: stored until dropped. A mark
    // numbers the strings kept so far; drop_messages_before(mark) forgets older ones
    // (references to the others stay valid: a deque keeps them in place).
    const char *keep_message(std::string_view msg);
    uint64_t message_mark() const noexcept { return msg_first_ + messages_.size(); }
    void drop_messages_before(uint64_t mark) noexcept;

  protected:
    LogQueue log_;
    std::string name_;
    int send_timeout_ms_;

  private:
    std::deque<std::string> messages_;
    uint64_t msg_first_ = 0; // mark of messages_.front()
};

// Operation names as they appear in headers and stream fields.
const char *op_name(uint8_t op) noexcept;

// "<sink name>:<seq>" into buf (>= name.size() + 21 bytes); returns the length.
size_t format_idempotency_key(char *buf, std::string_view name, int64_t seq) noexcept;

} // namespace bk
