// redis_sink.hpp — a batch to Redis in one fenced MULTI/EXEC over one connection.
//
// Threads: none of its own (hiredis connects in blocking mode; the batch path uses
// the socket directly), all on the worker's thread.
// Lifetime: the connection lives across batches; it is dropped on any I/O error
// or timeout (its state is then unknown) and re-made on a later call, no sooner
// than the reconnect backoff allows.
#pragma once

#include <cstdint>
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

    void send_batch(const bk_message *msgs, size_t n, int64_t batch_seq, bk_send_result *results,
                    Clock::time_point deadline, bk_send_summary *summary) override;
    void probe(Clock::time_point deadline) override;
    int64_t read_fence(Clock::time_point deadline) override;

    const std::string &fence_key() const { return fence_key_; }

  private:
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
    bool row_format_; // stream entries carry op and table themselves (no envelope)
    std::string default_key_;
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
    std::vector<uint32_t> cmd_owner_; // command index -> message index
    std::vector<std::string_view> args_;
};

} // namespace bk
