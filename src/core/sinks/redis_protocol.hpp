// redis_protocol.hpp — the Redis sink's wire layer: URL, command names, error
// classes, and RESP encoding/decoding done in place on the socket.
//
// Why not hiredis's reply objects on the hot path: they cost a malloc per reply
// (two per message: +QUEUED and the EXEC element) and hiredis copies every
// request into its own output buffer. The sink lets hiredis connect and
// authenticate, then writes its own buffer to the socket and parses replies in
// place. Both classes are single-threaded; RespReader's string_views are valid
// until its next call.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "batchkit/encoding.h"
#include "batchkit/sink.h"

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

// Builds pipelined requests. Each command is sized exactly first, so the buffer
// grows at most once per command and is filled with plain memcpy.
class RespWriter {
  public:
    RespWriter() = default;
    RespWriter(const RespWriter &) = delete;
    RespWriter &operator=(const RespWriter &) = delete;
    ~RespWriter() { bk_buf_free(&buf_); }

    void clear() { buf_.len = 0; }
    void command(std::initializer_list<std::string_view> args) {
        command(args.begin(), args.size());
    }
    void command(const std::string_view *args, size_t n);
    std::string_view data() const { return std::string_view(buf_.data ? buf_.data : "", buf_.len); }

  private:
    bk_buf buf_ = BK_BUF_INIT;
};

// Formats an integer argument into its own storage.
struct IntArg {
    explicit IntArg(int64_t v);
    std::string_view view() const { return std::string_view(buf, len); }
    char buf[24];
    size_t len;
};

// One RESP reply (or, for arrays, its header: the elements follow as further items).
struct RespItem {
    char type;            // '+', '-', ':', '$', '*'
    int64_t n = 0;        // integer value, bulk length or array count (-1: nil)
    std::string_view str; // simple string, error or bulk payload
    bool is_error() const { return type == '-'; }
    bool is_nil() const { return (type == '$' || type == '*') && n < 0; }
};

class RespReader {
  public:
    void reset(int fd) {
        fd_ = fd;
        start_ = end_ = 0;
    }
    // The next item; throws Error(BK_UNAVAILABLE) on I/O error, timeout, EOF or
    // a protocol error (the connection is then unusable).
    RespItem next(std::chrono::steady_clock::time_point deadline);
    // Read whatever is available without blocking (used while writing).
    void drain_available();

  private:
    void fill(std::chrono::steady_clock::time_point deadline);
    int fd_ = -1;
    std::vector<char> buf_;
    size_t start_ = 0, end_ = 0;
};

// Write all of data to fd before the deadline, reading replies that arrive
// meanwhile into reader. Throws Error(BK_UNAVAILABLE) on failure or timeout.
void send_all(int fd, std::string_view data, RespReader &reader,
              std::chrono::steady_clock::time_point deadline);

} // namespace bk
