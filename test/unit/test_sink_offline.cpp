// Unit tests of sinks whose server is down (a closed loopback port): opening is
// fast, every message comes back RETRYABLE within the timeout, reconnects back
// off, and the failure is logged to the queue the worker drains. No server needed.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <librdkafka/rdkafka.h>

#include "batchkit/sink.h"

namespace {

using Clock = std::chrono::steady_clock;

// A loopback port with nothing listening (bound, then closed).
int closed_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a);
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
    close(fd);
    return ntohs(a.sin_port);
}

long ms_since(Clock::time_point t) {
    return static_cast<long>(
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count());
}

bk_message msg(const char *v, int64_t seq) {
    bk_message m{};
    m.value = v;
    m.value_len = std::char_traits<char>::length(v);
    m.seq = seq;
    m.op = BK_OP_INSERT;
    return m;
}

} // namespace

TEST(SinkOffline, RedisDownGivesRetryableQuicklyAndBacksOff) {
    std::string url = "redis://127.0.0.1:" + std::to_string(closed_port());
    bk_sink_option o[] = {
        {"name", "off"}, {"command", "rpush"}, {"key", "k"}, {"url", url.c_str()}};
    bk_status st{};
    auto t0 = Clock::now();
    bk_sink *s = bk_sink_open("redis", o, 4, &st);
    ASSERT_NE(s, nullptr) << st.message;
    EXPECT_LT(ms_since(t0), 100);

    bk_message m[2] = {msg("a", 1), msg("b", 2)};
    bk_send_result r[2];
    bk_send_summary sum;
    t0 = Clock::now();
    EXPECT_EQ(bk_sink_send_batch(s, m, 2, 1, r, 2000, &sum, &st), BK_UNAVAILABLE);
    EXPECT_LT(ms_since(t0), 1000);
    EXPECT_EQ(r[0].code, BK_SEND_RETRYABLE);
    EXPECT_EQ(r[1].code, BK_SEND_RETRYABLE);
    EXPECT_NE(std::string(r[0].message).find("cannot connect"), std::string::npos) << r[0].message;
    EXPECT_EQ(sum.retryable, 2u);
    EXPECT_NE(std::string(st.message).find("cannot connect"), std::string::npos);

    // Right away again: inside the backoff window, no new connection attempt.
    EXPECT_EQ(bk_sink_send_batch(s, m, 2, 1, r, 2000, &sum, &st), BK_UNAVAILABLE);
    EXPECT_NE(std::string(r[0].message).find("next attempt in"), std::string::npos) << r[0].message;

    bk_log_entry e{};
    ASSERT_EQ(bk_sink_next_log(s, &e), 1);
    EXPECT_EQ(e.level, 4);
    EXPECT_STREQ(e.facility, "redis");
    EXPECT_NE(std::string(e.message).find("cannot connect"), std::string::npos);

    // probe ignores the backoff and reports the failure.
    EXPECT_EQ(bk_sink_probe(s, 500, &st), BK_UNAVAILABLE);
    int64_t fence = 0;
    EXPECT_EQ(bk_sink_read_fence(s, &fence, 500, &st), BK_UNAVAILABLE);
    bk_sink_close(s);
}

TEST(SinkOffline, RedisInvalidMessagesAreRejectedWithoutTheNetwork) {
    std::string url = "redis://127.0.0.1:" + std::to_string(closed_port());
    bk_sink_option o[] = {{"name", "off"}, {"command", "hset"}, {"url", url.c_str()}};
    bk_status st{};
    bk_sink *s = bk_sink_open("redis", o, 3, &st);
    ASSERT_NE(s, nullptr) << st.message;
    bk_message m[2] = {msg("a", 1), msg("b", 2)};
    m[1].target = "h:1";
    m[1].target_len = 3; // has a key but no fields
    bk_send_result r[2];
    EXPECT_EQ(bk_sink_send_batch(s, m, 2, 1, r, 1000, nullptr, &st), BK_REJECTED);
    EXPECT_EQ(r[0].code, BK_SEND_REJECTED);
    EXPECT_NE(std::string(r[0].message).find("no key"), std::string::npos);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_NE(std::string(r[1].message).find("fields"), std::string::npos);
    bk_log_entry e;
    EXPECT_EQ(bk_sink_next_log(s, &e), 0) << "connected for nothing: " << e.message;
    bk_sink_close(s);
}

TEST(SinkOffline, KafkaBrokerDownGivesRetryableWithinTheTimeout) {
    std::string bootstrap = "127.0.0.1:" + std::to_string(closed_port());
    bk_sink_option o[] = {
        {"name", "koff"}, {"bootstrap.servers", bootstrap.c_str()}, {"topic", "t"}};
    bk_status st{};
    auto t0 = Clock::now();
    bk_sink *s = bk_sink_open("kafka", o, 3, &st);
    ASSERT_NE(s, nullptr) << st.message;
    EXPECT_LT(ms_since(t0), 500);

    bk_message m[3] = {msg("a", 1), msg("b", 2), msg("c", 3)};
    bk_send_result r[3];
    bk_send_summary sum;
    t0 = Clock::now();
    EXPECT_EQ(bk_sink_send_batch(s, m, 3, 1, r, 1500, &sum, &st), BK_UNAVAILABLE);
    long took = ms_since(t0);
    EXPECT_GE(took, 1400);
    EXPECT_LT(took, 4000);
    for (auto &x : r) {
        EXPECT_EQ(x.code, BK_SEND_RETRYABLE);
        EXPECT_EQ(x.error, RD_KAFKA_RESP_ERR__PURGE_QUEUE) << x.message;
    }
    EXPECT_EQ(sum.retryable, 3u);
    EXPECT_EQ(bk_sink_probe(s, 300, &st), BK_UNAVAILABLE);

    // The failure was logged (librdkafka's threads -> queue -> this thread).
    bk_log_entry e{};
    int lines = 0;
    while (bk_sink_next_log(s, &e))
        lines++;
    EXPECT_GT(lines, 0);
    t0 = Clock::now();
    bk_sink_close(s);
    EXPECT_LT(ms_since(t0), 2000);
}

TEST(SinkOffline, KafkaRejectsOversizedMessagesLocally) {
    std::string bootstrap = "127.0.0.1:" + std::to_string(closed_port());
    bk_sink_option o[] = {{"name", "koff"},
                          {"bootstrap.servers", bootstrap.c_str()},
                          {"topic", "t"},
                          {"message.max.bytes", "10000"}};
    bk_status st{};
    bk_sink *s = bk_sink_open("kafka", o, 4, &st);
    ASSERT_NE(s, nullptr) << st.message;
    std::string big(20000, 'x');
    bk_message m[1] = {msg("", 1)};
    m[0].value = big.data();
    m[0].value_len = big.size();
    bk_send_result r[1];
    EXPECT_EQ(bk_sink_send_batch(s, m, 1, 1, r, 1000, nullptr, &st), BK_REJECTED);
    EXPECT_EQ(r[0].code, BK_SEND_REJECTED);
    EXPECT_EQ(r[0].error, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    bk_sink_close(s);
}

TEST(SinkOffline, KafkaLargeBatchToADeadBrokerStopsAtTheDeadline) {
    // More messages than one send window: the window wait must honour the deadline too.
    std::string bootstrap = "127.0.0.1:" + std::to_string(closed_port());
    bk_sink_option o[] = {
        {"name", "koff"}, {"bootstrap.servers", bootstrap.c_str()}, {"topic", "t"}};
    bk_status st{};
    bk_sink *s = bk_sink_open("kafka", o, 3, &st);
    ASSERT_NE(s, nullptr) << st.message;
    const size_t n = 8000;
    std::vector<bk_message> m(n, msg("v", 0));
    std::vector<bk_send_result> r(n);
    bk_send_summary sum;
    auto t0 = Clock::now();
    EXPECT_EQ(bk_sink_send_batch(s, m.data(), n, 1, r.data(), 1200, &sum, &st), BK_UNAVAILABLE);
    long took = ms_since(t0);
    EXPECT_GE(took, 1100);
    EXPECT_LT(took, 4000);
    EXPECT_EQ(sum.retryable, n);
    for (auto &x : r)
        ASSERT_EQ(x.code, BK_SEND_RETRYABLE);
    bk_sink_close(s);
}
