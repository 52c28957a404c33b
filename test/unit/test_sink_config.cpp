// Unit tests of sink configuration: Kafka defaults and pass-through, Redis URLs and
// commands, the RESP encoder, and opening sinks (no server needed).
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>
#include <map>
#include <string>
#include <vector>

#include "batchkit/sink.h"
#include "sinks/kafka_sink.hpp"
#include "sinks/redis_protocol.hpp"
#include "sinks/redis_sink.hpp"
#include "util/abi_guard.hpp"

namespace {

std::map<std::string, std::string> kafka_conf(std::vector<bk_sink_option> opts) {
    bk::Options o(opts.data(), opts.size());
    std::map<std::string, std::string> m;
    for (auto &kv : bk::kafka_effective_config(o)) {
        EXPECT_EQ(m.count(kv.first), 0u) << "key given twice: " << kv.first;
        m[kv.first] = kv.second;
    }
    return m;
}

} // namespace

TEST(SinkKafkaConfig, AppliesBatchkitDefaults) {
    auto m = kafka_conf({{"name", "orders"}, {"bootstrap.servers", "b:9092"}, {"topic", "t"}});
    EXPECT_EQ(m["enable.idempotence"], "true");
    EXPECT_EQ(m["acks"], "all");
    EXPECT_EQ(m["partitioner"], "murmur2_random");
    EXPECT_EQ(m["max.in.flight.requests.per.connection"], "5");
    EXPECT_EQ(m["message.timeout.ms"], "30000");
    EXPECT_EQ(m["client.id"], "batchkit-orders");
    EXPECT_EQ(m["bootstrap.servers"], "b:9092");
    EXPECT_EQ(m.count("topic"), 0u); // batchkit's own options never reach librdkafka
    EXPECT_EQ(m.count("name"), 0u);
}

TEST(SinkKafkaConfig, UserValuesAndAliasesWin) {
    auto m = kafka_conf({{"acks", "1"},
                         {"partitioner", "consistent_random"},
                         {"delivery.timeout.ms", "5000"},
                         {"compression.type", "lz4"},
                         {"queue.buffering.max.ms", "20"},
                         {"batch_size", "500"},
                         {"max_wait_ms", "10"}});
    EXPECT_EQ(m["acks"], "1");
    EXPECT_EQ(m["partitioner"], "consistent_random");
    EXPECT_EQ(m.count("message.timeout.ms"), 0u); // its alias was given
    EXPECT_EQ(m["delivery.timeout.ms"], "5000");
    EXPECT_EQ(m["compression.type"], "lz4");
    EXPECT_EQ(m.count("linger.ms"), 0u);
    EXPECT_EQ(m.count("batch_size"), 0u);
    EXPECT_EQ(m.count("max_wait_ms"), 0u);
}

TEST(SinkKafkaConfig, WithoutIdempotenceOnlyOneRequestInFlightKeepsOrder) {
    auto m = kafka_conf({{"enable.idempotence", "false"}});
    EXPECT_EQ(m["enable.idempotence"], "false");
    EXPECT_EQ(m["max.in.flight.requests.per.connection"], "1");
    auto n = kafka_conf({{"enable.idempotence", "false"}, {"max.in.flight", "3"}});
    EXPECT_EQ(n.count("max.in.flight.requests.per.connection"), 0u);
    EXPECT_EQ(n["max.in.flight"], "3");
}

TEST(SinkKafkaConfig, OpenRejectsBadPropertiesByName) {
    bk_status st{};
    bk_sink_option bad[] = {
        {"name", "k"}, {"bootstrap.servers", "127.0.0.1:1"}, {"linger.ms", "banana"}};
    EXPECT_EQ(bk_sink_open("kafka", bad, 3, &st), nullptr);
    EXPECT_EQ(st.code, BK_INVALID_ARGUMENT);
    EXPECT_NE(std::string(st.message).find("linger.ms"), std::string::npos) << st.message;

    bk_sink_option unknown[] = {{"no.such.property", "1"}};
    EXPECT_EQ(bk_sink_open("kafka", unknown, 1, &st), nullptr);
    EXPECT_NE(std::string(st.message).find("no.such.property"), std::string::npos);

    // Idempotence with more than 5 in flight would break ordering: librdkafka refuses.
    bk_sink_option inflight[] = {{"max.in.flight.requests.per.connection", "10"}};
    EXPECT_EQ(bk_sink_open("kafka", inflight, 1, &st), nullptr);
    EXPECT_EQ(st.code, BK_INVALID_ARGUMENT);

    // Undotted options librdkafka does not know are batchkit's: ignored by the core.
    bk_sink_option policy[] = {{"name", "k"}, {"on_full", "wait"}, {"some_future_option", "x"}};
    bk_sink *s = bk_sink_open("kafka", policy, 3, &st);
    EXPECT_NE(s, nullptr) << st.message;
    bk_sink_close(s);
}

TEST(SinkOpen, UnknownKindAndMissingRedisOptions) {
    bk_status st{};
    EXPECT_EQ(bk_sink_open("rabbitmq", nullptr, 0, &st), nullptr);
    EXPECT_EQ(st.code, BK_INVALID_ARGUMENT);
    EXPECT_NE(std::string(st.message).find("rabbitmq"), std::string::npos);
    EXPECT_EQ(bk_sink_open(nullptr, nullptr, 0, &st), nullptr);

    bk_sink_option noname[] = {{"command", "xadd"}};
    EXPECT_EQ(bk_sink_open("redis", noname, 1, &st), nullptr);
    EXPECT_NE(std::string(st.message).find("name"), std::string::npos);
    bk_sink_option nocmd[] = {{"name", "r"}};
    EXPECT_EQ(bk_sink_open("redis", nocmd, 1, &st), nullptr);
    EXPECT_NE(std::string(st.message).find("command"), std::string::npos);
    bk_sink_option badcmd[] = {{"name", "r"}, {"command", "zadd"}};
    EXPECT_EQ(bk_sink_open("redis", badcmd, 2, &st), nullptr);
    bk_sink_option badmax[] = {{"name", "r"}, {"command", "xadd"}, {"maxlen", "-1"}};
    EXPECT_EQ(bk_sink_open("redis", badmax, 3, &st), nullptr);
    EXPECT_NE(std::string(st.message).find("maxlen"), std::string::npos);
}

TEST(SinkRedisConfig, ParsesUrls) {
    auto ep = bk::parse_redis_url("redis://127.0.0.1:6390/2");
    EXPECT_FALSE(ep.unix_socket);
    EXPECT_EQ(ep.host, "127.0.0.1");
    EXPECT_EQ(ep.port, 6390);
    EXPECT_EQ(ep.db, 2);
    EXPECT_TRUE(ep.password.empty());
    ep = bk::parse_redis_url("redis://app:p%40ss:w@cache.local");
    EXPECT_EQ(ep.user, "app");
    EXPECT_EQ(ep.password, "p@ss:w");
    EXPECT_EQ(ep.host, "cache.local");
    EXPECT_EQ(ep.port, 6379);
    ep = bk::parse_redis_url("redis://:secret@[::1]:7000/");
    EXPECT_EQ(ep.user, "");
    EXPECT_EQ(ep.password, "secret");
    EXPECT_EQ(ep.host, "::1");
    EXPECT_EQ(ep.port, 7000);
    EXPECT_EQ(ep.db, 0);
    ep = bk::parse_redis_url("unix:///run/redis.sock?db=3");
    EXPECT_TRUE(ep.unix_socket);
    EXPECT_EQ(ep.path, "/run/redis.sock");
    EXPECT_EQ(ep.db, 3);
    for (const char *bad : {"http://x", "redis://h:0", "redis://h:99999", "redis://h:1/x",
                            "unix://relative", "rediss://h", "redis://[::1"}) {
        try {
            bk::parse_redis_url(bad);
            ADD_FAILURE() << "accepted " << bad;
        } catch (const bk::Error &e) {
            EXPECT_EQ(e.code(), BK_INVALID_ARGUMENT) << bad;
        }
    }
}

TEST(SinkRedisConfig, EncodesResp) {
    bk::RespWriter w;
    bk::IntArg v(-42);
    w.command({"SET", std::string_view("k\r\n", 3), v.view()});
    EXPECT_EQ(w.data(), "*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$3\r\n-42\r\n");
    w.clear();
    w.command({""});
    EXPECT_EQ(w.data(), "*1\r\n$0\r\n\r\n");
    std::string big(100000, 'b');
    std::vector<std::string_view> args(12, big);
    w.clear();
    w.command(args.data(), args.size());
    // "*12\r\n", then per argument "$100000\r\n" + the bytes + "\r\n"
    EXPECT_EQ(w.data().size(), 5u + 12u * (9u + 100000u + 2u));
    EXPECT_EQ(w.data().substr(5, 9), "$100000\r\n");
    EXPECT_EQ(bk::parse_redis_command("XADD"), bk::RedisCommand::Xadd);
    EXPECT_EQ(bk::parse_redis_command("hset"), bk::RedisCommand::Hset);
}

namespace {

// A socket pair: the test writes "server" bytes on one end, the reader parses the other.
struct Pipe {
    int fd[2];
    Pipe() { socketpair(AF_UNIX, SOCK_STREAM, 0, fd); }
    ~Pipe() {
        close(fd[0]);
        close(fd[1]);
    }
    void server_says(const std::string &s) {
        ASSERT_EQ(write(fd[1], s.data(), s.size()), (ssize_t)s.size());
    }
};

auto soon() {
    return std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
}

} // namespace

TEST(SinkRedisProtocol, ReadsEveryReplyTypeInPlace) {
    Pipe p;
    bk::RespReader r;
    r.reset(p.fd[0]);
    p.server_says("+QUEUED\r\n-WRONGTYPE Operation against a key\r\n:42\r\n$5\r\nhe\r\no\r\n"
                  "$-1\r\n*2\r\n$0\r\n\r\n:-7\r\n*-1\r\n");
    bk::RespItem a = r.next(soon());
    EXPECT_EQ(a.type, '+');
    EXPECT_EQ(a.str, "QUEUED");
    bk::RespItem b = r.next(soon());
    EXPECT_TRUE(b.is_error());
    EXPECT_EQ(b.str, "WRONGTYPE Operation against a key");
    EXPECT_EQ(r.next(soon()).n, 42);
    bk::RespItem d = r.next(soon());
    EXPECT_EQ(d.str, std::string_view("he\r\no", 5)); // binary-safe bulk
    EXPECT_TRUE(r.next(soon()).is_nil());
    bk::RespItem arr = r.next(soon());
    EXPECT_EQ(arr.type, '*');
    EXPECT_EQ(arr.n, 2);
    EXPECT_EQ(r.next(soon()).str, "");
    EXPECT_EQ(r.next(soon()).n, -7);
    EXPECT_TRUE(r.next(soon()).is_nil());
}

TEST(SinkRedisProtocol, ReassemblesRepliesSplitAcrossReadsAndLargeBulks) {
    Pipe p;
    bk::RespReader r;
    r.reset(p.fd[0]);
    std::string big(300000, 'z');
    std::string wire = "$" + std::to_string(big.size()) + "\r\n" + big + "\r\n+OK\r\n";
    std::thread writer([&] {
        for (size_t i = 0; i < wire.size(); i += 7000) {
            std::string part = wire.substr(i, 7000);
            ASSERT_EQ(write(p.fd[1], part.data(), part.size()), (ssize_t)part.size());
        }
    });
    bk::RespItem a = r.next(std::chrono::steady_clock::now() + std::chrono::seconds(5));
    EXPECT_EQ(a.str.size(), big.size());
    EXPECT_EQ(a.str, big);
    EXPECT_EQ(r.next(soon()).str, "OK");
    writer.join();
}

TEST(SinkRedisProtocol, TimeoutEofAndGarbageAreUnavailable) {
    {
        Pipe p;
        bk::RespReader r;
        r.reset(p.fd[0]);
        p.server_says("+PART");
        auto t0 = std::chrono::steady_clock::now();
        try {
            r.next(t0 + std::chrono::milliseconds(100));
            ADD_FAILURE() << "no timeout";
        } catch (const bk::Error &e) {
            EXPECT_EQ(e.code(), BK_UNAVAILABLE);
            EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos);
        }
        EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(90));
    }
    {
        Pipe p;
        bk::RespReader r;
        r.reset(p.fd[0]);
        close(p.fd[1]);
        p.fd[1] = socket(AF_UNIX, SOCK_STREAM, 0); // keep the destructor's close valid
        try {
            r.next(soon());
            ADD_FAILURE() << "no EOF";
        } catch (const bk::Error &e) {
            EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos);
        }
    }
    {
        Pipe p;
        bk::RespReader r;
        r.reset(p.fd[0]);
        p.server_says("?what\r\n");
        EXPECT_THROW(r.next(soon()), bk::Error);
    }
}

TEST(SinkRedisProtocol, SendAllWritesEverythingWhileDrainingReplies) {
    Pipe p;
    bk::RespReader r;
    r.reset(p.fd[0]);
    std::string payload(8 << 20, 'q'); // far more than the socket buffers hold
    std::string got;
    std::thread server([&] {
        char buf[65536];
        p.server_says("+QUEUED\r\n");
        while (got.size() < payload.size()) {
            ssize_t n = read(p.fd[1], buf, sizeof buf);
            if (n <= 0)
                break;
            got.append(buf, static_cast<size_t>(n));
        }
        p.server_says("+DONE\r\n");
    });
    bk::send_all(p.fd[0], payload, r, std::chrono::steady_clock::now() + std::chrono::seconds(20));
    server.join();
    EXPECT_EQ(got.size(), payload.size());
    EXPECT_EQ(r.next(soon()).str, "QUEUED");
    EXPECT_EQ(r.next(soon()).str, "DONE");
}

TEST(SinkLog, QueueKeepsTheNewestAndCountsDrops) {
    bk::LogQueue q;
    for (size_t i = 0; i < bk::LogQueue::kCapacity + 10; i++)
        q.push(6, "fac", "line " + std::to_string(i));
    bk_log_entry e{};
    ASSERT_TRUE(q.pop(&e));
    EXPECT_STREQ(e.message, "line 10");
    EXPECT_EQ(e.dropped, 10u);
    EXPECT_STREQ(e.facility, "fac");
    size_t rest = 0;
    while (q.pop(&e))
        rest++;
    EXPECT_EQ(rest, bk::LogQueue::kCapacity - 1);
    EXPECT_STREQ(e.message, ("line " + std::to_string(bk::LogQueue::kCapacity + 9)).c_str());
    EXPECT_EQ(e.dropped, 0u);
    q.push(3, std::string(100, 'f'), std::string(5000, 'm')); // truncated, not overflowing
    ASSERT_TRUE(q.pop(&e));
    EXPECT_EQ(std::string(e.facility).size(), sizeof e.facility - 1);
    EXPECT_EQ(std::string(e.message).size(), sizeof e.message - 1);
}

TEST(SinkAbi, SendBatchChecksArgumentsAndNamesCodes) {
    bk_status st{};
    bk_send_result r[2];
    bk_message m[2] = {};
    EXPECT_EQ(bk_sink_send_batch(nullptr, m, 2, 1, r, 100, nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(r[0].code, BK_SEND_RETRYABLE);
    EXPECT_EQ(r[1].code, BK_SEND_RETRYABLE);
    EXPECT_EQ(bk_sink_send_batch(nullptr, m, 2, 1, nullptr, 100, nullptr, &st),
              BK_INVALID_ARGUMENT);
    EXPECT_STREQ(bk_send_code_name(BK_SEND_OK), "ok");
    EXPECT_STREQ(bk_send_code_name(BK_SEND_REJECTED), "rejected");
    EXPECT_STREQ(bk_send_code_name(BK_SEND_RETRYABLE), "retryable");
    bk_log_entry e;
    EXPECT_EQ(bk_sink_next_log(nullptr, &e), 0);
    bk_sink_close(nullptr);
}
