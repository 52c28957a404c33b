// redis_sink.hpp — a batch to Redis in one fenced MULTI/EXEC over one connection;
// up to two batches in flight on it (see redis_sink.cpp for the pipeline).
//
// Threads: none of its own (hiredis connects in blocking mode; the batch path uses
// the socket directly), all on the worker's thread.
// Lifetime: the connection lives across batches; it is dropped on any I/O error
// or timeout (its state is then unknown) and re-made on a later call, no sooner
// than the reconnect backoff allows.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sinks/redis_protocol.hpp"
#include "sinks/sink_base.hpp"

struct redisContext;

namespace bk {

class RedisSink final : public Sink {
  public:
    explicit RedisSink(const Options &opts);
    ~RedisSink() override;

    void start_batch(const bk_message *msgs, size_t n, int64_t batch_seq, bk_send_result *results,
                     Clock::time_point deadline) override;
    void finish_batch(bk_send_summary *summary) override;
    void poison() noexcept override { poisoned_ = true; }
    void probe(Clock::time_point deadline) override;
    int64_t read_fence(Clock::time_point deadline) override;

    const std::string &fence_key() const { return fence_key_; }

  private:
    // A started batch whose replies after GET's are not all read yet.
    struct InFlight {
        int64_t seq = 0;
        size_t n = 0;
        bk_send_result *results = nullptr;
        Clock::time_point deadline{};
        std::vector<uint32_t> cmd_owner; // command index -> message index
        uint64_t conn = 0;               // conn_id_ it was written on
        bool awaiting = false;           // EXEC/DISCARD sent, its replies unread
        bool exec = false;               // EXEC (not DISCARD) was sent
        bool watch_read = false;         // WATCH's and GET's replies were read
        bool replay = false;             // the fence said: applied before
        std::string problem;             // why it was DISCARDed (replay aside)
        bool clean = false;              // done, and nothing of it RETRYABLE
        int64_t fence_before = -1;
        // A replay: the TYPE of each distinct key sent after DISCARD (replay_types),
        // and which message's command needed which of them (message, TYPE reply).
        std::vector<std::pair<uint32_t, uint32_t>> type_checks;
        size_t ntypes = 0;
    };
    // On a replay (the fence says the batch was applied), ask Redis for the type
    // of each key a command of the batch could have failed on (WRONGTYPE).
    void replay_types(InFlight &b, const bk_message *msgs, RespWriter &w);
    void start(InFlight &b, const bk_message *msgs);
    void complete(InFlight &b);                              // reads its replies
    void fail(InFlight &b, const std::string &why) noexcept; // RETRYABLE, done
    // Appends the command(s) of one message; returns how many, 0 when the message is
    // invalid (then *why says why).
    size_t append_commands(const bk_message &m, const char **why);
    void connect(Clock::time_point deadline, bool ignore_backoff);
    void disconnect(const std::string &why) noexcept;
    RespItem next(Clock::time_point deadline); // drops the connection on failure
    void send(std::string_view bytes, Clock::time_point deadline);
    int64_t parse_fence(const RespItem &r) const;
    void skip_item(const RespItem &r, Clock::time_point deadline); // an array's elements

    RedisEndpoint ep_;
    RedisCommand command_;
    bool row_format_;        // stream entries carry op and table themselves (no envelope)
    bool idempotency_field_; // xadd: an idempotency_key field in every entry
    std::string default_key_;
    // The key a message's command writes: its rendered target, or the sink's "key".
    std::string_view key_of(const bk_message &m) const {
        return m.target ? std::string_view(m.target, m.target_len) : std::string_view(default_key_);
    }
    std::string fence_key_;
    int64_t maxlen_; // xadd MAXLEN ~ N; 0 = none
    int64_t ttl_ms_; // set PX; 0 = none
    int connect_timeout_ms_;

    redisContext *ctx_ = nullptr;
    RespReader reader_;
    uint32_t connect_failures_ = 0;
    Clock::time_point next_connect_{};
    std::string last_error_;

    RespWriter out_;
    std::vector<std::string_view> args_;
    std::deque<InFlight> in_flight_;
    uint64_t conn_id_ = 0; // bumped by every (re)connect
    // A batch of the current pipeline failed: later batches started before the
    // pipeline empties are not applied (their EXEC would move the fence past it).
    bool poisoned_ = false;
};

} // namespace bk
