// service_env.hpp — what the sink service tests share: where the services are
// (REDIS_PORT, KAFKA_BOOTSTRAP: a missing one fails the test, never skips it), an
// independent Redis reader (plain hiredis commands), a private redis-server the
// restart test can kill, and Java's murmur2 partitioner to check key placement.
#pragma once

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "batchkit/sink.h"

namespace svc {

using Clock = std::chrono::steady_clock;

inline std::string env(const char *name) {
    const char *v = std::getenv(name);
    return v ? v : "";
}

// A unique suffix so tests never see each other's keys or topics.
inline std::string unique(const std::string &prefix) {
    static std::mt19937_64 rng(std::random_device{}());
    return prefix + "-" + std::to_string(getpid()) + "-" + std::to_string(rng() % 1000000000);
}

struct ReplyFree {
    void operator()(redisReply *r) const {
        if (r)
            freeReplyObject(r);
    }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// The independent reader: hiredis's own formatted commands, one at a time.
class RedisClient {
  public:
    explicit RedisClient(int port) {
        timeval tv{5, 0};
        c_ = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (c_ && !c_->err)
            redisSetTimeout(c_, tv);
    }
    ~RedisClient() {
        if (c_)
            redisFree(c_);
    }
    bool ok() const { return c_ && !c_->err; }
    std::string error() const { return c_ ? c_->errstr : "no context"; }
    Reply cmd(const std::vector<std::string> &args) {
        std::vector<const char *> argv;
        std::vector<size_t> lens;
        for (auto &a : args) {
            argv.push_back(a.data());
            lens.push_back(a.size());
        }
        return Reply(static_cast<redisReply *>(
            redisCommandArgv(c_, static_cast<int>(argv.size()), argv.data(), lens.data())));
    }
    long long integer(const std::vector<std::string> &args) {
        Reply r = cmd(args);
        return r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
    }
    std::string str(const std::vector<std::string> &args) {
        Reply r = cmd(args);
        if (!r)
            return "(io error)";
        if (r->type == REDIS_REPLY_NIL)
            return "(nil)";
        return std::string(r->str ? r->str : "", r->len);
    }
    redisContext *ctx() { return c_; }

  private:
    redisContext *c_ = nullptr;
};

inline int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
}

// A redis-server of the test's own (foreground child), for killing and restarting.
class PrivateRedis {
  public:
    explicit PrivateRedis(int port) : port_(port) {}
    ~PrivateRedis() { stop(SIGKILL); }
    bool start() {
        pid_ = fork();
        if (pid_ == 0) {
            std::string p = std::to_string(port_);
            execlp("redis-server", "redis-server", "--port", p.c_str(), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--loglevel", "warning", (char *)nullptr);
            _exit(127);
        }
        for (int i = 0; i < 100; i++) { // up to 5 s
            RedisClient c(port_);
            if (c.ok() && c.str({"PING"}) == "PONG")
                return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return false;
    }
    void stop(int sig) {
        if (pid_ > 0) {
            kill(pid_, sig);
            waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
    }
    int port() const { return port_; }

  private:
    int port_;
    pid_t pid_ = -1;
};

// Apache Kafka's Utils.murmur2 (what Java's DefaultPartitioner hashes keys with).
inline int32_t java_murmur2(const std::string &key) {
    const uint32_t m = 0x5bd1e995;
    const int r = 24;
    const auto *d = reinterpret_cast<const unsigned char *>(key.data());
    size_t len = key.size();
    uint32_t h = 0x9747b28c ^ static_cast<uint32_t>(len);
    for (size_t i = 0; i + 4 <= len; i += 4) {
        uint32_t k =
            d[i] | (d[i + 1] << 8) | (d[i + 2] << 16) | (static_cast<uint32_t>(d[i + 3]) << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    size_t tail = len & ~static_cast<size_t>(3);
    switch (len % 4) {
    case 3:
        h ^= static_cast<uint32_t>(d[tail + 2]) << 16;
        [[fallthrough]];
    case 2:
        h ^= static_cast<uint32_t>(d[tail + 1]) << 8;
        [[fallthrough]];
    case 1:
        h ^= d[tail];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return static_cast<int32_t>(h);
}

inline int32_t java_partition(const std::string &key, int32_t partitions) {
    return (java_murmur2(key) & 0x7fffffff) % partitions;
}

// The message points into target and value: they must outlive it (temporaries are refused).
bk_message message(std::string &&, const std::string &, int64_t, uint8_t = BK_OP_INSERT) = delete;
bk_message message(const std::string &, std::string &&, int64_t, uint8_t = BK_OP_INSERT) = delete;
bk_message message(std::string &&, std::string &&, int64_t, uint8_t = BK_OP_INSERT) = delete;
inline bk_message message(const std::string &target, const std::string &value, int64_t seq,
                          uint8_t op = BK_OP_INSERT) {
    bk_message m{};
    m.target = target.data();
    m.target_len = target.size();
    m.value = value.data();
    m.value_len = value.size();
    m.seq = seq;
    m.op = op;
    return m;
}

inline bk_sink *open_sink(const char *kind, std::vector<std::pair<std::string, std::string>> kv,
                          bk_status *st) {
    std::vector<bk_sink_option> o;
    for (auto &p : kv)
        o.push_back({p.first.c_str(), p.second.c_str()});
    return bk_sink_open(kind, o.data(), o.size(), st);
}

inline std::vector<std::string> drain_log(bk_sink *s) {
    std::vector<std::string> lines;
    bk_log_entry e;
    while (bk_sink_next_log(s, &e))
        lines.push_back(std::string(e.facility) + ": " + e.message);
    return lines;
}

} // namespace svc
