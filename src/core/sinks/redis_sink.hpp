// redis_sink.hpp — a batch to Redis in one fenced MULTI/EXEC over one connection.
//
// Threads: none of its own (hiredis in blocking mode, on the worker's thread).
// Lifetime: the connection lives across batches; it is dropped on any I/O error
// or timeout (its state is then unknown) and re-made on a later call, no sooner
// than the reconnect backoff allows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sinks/sink_base.hpp"

struct redisContext;
struct redisReply;

namespace bk {

struct RedisEndpoint {
    bool unix_socket = false;
    std::string host = "127.0.0.1";
    int port = 6379;
    std::string path; // unix socket
    std::string user, password;
    int db = 0;
};

// redis://[[user]:password@]host[:port][/db] or unix:///path[?db=N]; throws BK_INVALID_ARGUMENT.
RedisEndpoint parse_redis_url(const std::string &url);

// An error reply ("WRONGTYPE ...", "OOM ..."): REJECTED when the command itself is
// at fault (wrong type of key, bad argument), RETRYABLE when the server is.
bk_send_code redis_classify_error(std::string_view reply);

enum class RedisCommand { Xadd, Lpush, Rpush, Publish, Set, Hset };
RedisCommand parse_redis_command(const std::string &s);

// RESP request builder (the wire format of redis commands).
class RespWriter {
  public:
    void clear() { buf_.clear(); }
    void array(size_t n);
    void bulk(const char *p, size_t n);
    void bulk(std::string_view s) { bulk(s.data(), s.size()); }
    void bulk_int(int64_t v);
    const std::string &data() const { return buf_; }

  private:
    void header(char kind, uint64_t n);
    std::string buf_;
};

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
    // Appends the command(s) of one message; returns how many, 0 when it is invalid
    // (then *why says why).
    size_t append_commands(const bk_message &m, const char **why);
    void connect(Clock::time_point deadline, bool ignore_backoff);
    void disconnect(const std::string &why) noexcept;
    void set_io_timeout(Clock::time_point deadline);
    // Write what is pending and read one reply; throws Error(BK_UNAVAILABLE) on I/O failure.
    struct ReplyDeleter {
        void operator()(void *r) const noexcept;
    };
    using Reply = std::unique_ptr<::redisReply, ReplyDeleter>;
    Reply read_reply();
    void send_raw(const std::string &bytes);
    int64_t parse_fence(const ::redisReply *r);

    RedisEndpoint ep_;
    RedisCommand command_;
    std::string default_key_;
    std::string fence_key_;
    int64_t maxlen_;  // xadd MAXLEN ~ N; 0 = none
    int64_t ttl_ms_;  // set PX; 0 = none
    int connect_timeout_ms_;

    redisContext *ctx_ = nullptr;
    uint32_t connect_failures_ = 0;
    Clock::time_point next_connect_{};
    std::string last_error_;

    RespWriter out_;
    std::vector<uint32_t> cmd_owner_; // command index -> message index
};

} // namespace bk
