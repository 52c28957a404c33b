// The Kafka sink against the Kafka dev broker (KAFKA_BOOTSTRAP), read back by an
// independent librdkafka consumer: 100k keyed messages delivered exactly as sent
// (partitioned like Java producers, headers set), oversized messages rejected, a
// dead or vanished broker turning into RETRYABLE within the timeout. Broker-side
// errors are injected with librdkafka's in-process mock cluster.
#include "service_env.hpp"

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <map>
#include <set>

using namespace svc;

namespace {

class KafkaSinkTest : public ::testing::Test {
  protected:
    void SetUp() override {
        bootstrap_ = env("KAFKA_BOOTSTRAP");
        ASSERT_FALSE(bootstrap_.empty())
            << "KAFKA_BOOTSTRAP is not set: start the Kafka dev broker and export its bootstrap";
        name_ = unique("ktest");
    }
    void TearDown() override {
        for (bk_sink *s : sinks_)
            bk_sink_close(s);
    }
    bk_sink *open(std::vector<std::pair<std::string, std::string>> kv) {
        kv.push_back({"name", name_});
        bool has = false;
        for (auto &p : kv)
            has |= p.first == "bootstrap.servers";
        if (!has)
            kv.push_back({"bootstrap.servers", bootstrap_});
        bk_status st{};
        bk_sink *s = open_sink("kafka", kv, &st);
        EXPECT_NE(s, nullptr) << st.message;
        if (s)
            sinks_.push_back(s);
        return s;
    }
    std::string bootstrap_, name_;
    std::vector<bk_sink *> sinks_;
};

struct Consumed {
    int32_t partition;
    int64_t offset;
    std::string key, value;
    std::map<std::string, std::string> headers;
};

// Read `want` messages of every partition of `topic` from the beginning.
std::vector<Consumed> consume_all(const std::string &bootstrap, const std::string &topic,
                                  size_t want, int32_t *partitions, int timeout_s = 60) {
    std::vector<Consumed> out;
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap.c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "group.id", unique("verify").c_str(), err, sizeof err);
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err);
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (!rk) {
        ADD_FAILURE() << "consumer: " << err;
        return out;
    }
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
    const struct rd_kafka_metadata *md = nullptr;
    *partitions = 0;
    if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->topic_cnt == 1)
            *partitions = md->topics[0].partition_cnt;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(*partitions);
    for (int32_t p = 0; p < *partitions; p++)
        rd_kafka_topic_partition_list_add(tp, topic.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, tp);
    rd_kafka_topic_partition_list_destroy(tp);
    auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
    while (out.size() < want && Clock::now() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
        if (!m)
            continue;
        if (!m->err) {
            Consumed c;
            c.partition = m->partition;
            c.offset = m->offset;
            if (m->key)
                c.key.assign(static_cast<const char *>(m->key), m->key_len);
            if (m->payload)
                c.value.assign(static_cast<const char *>(m->payload), m->len);
            rd_kafka_headers_t *h = nullptr;
            if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
                const char *name;
                const void *val;
                size_t len;
                for (size_t i = 0; !rd_kafka_header_get_all(h, i, &name, &val, &len); i++)
                    c.headers[name] = std::string(static_cast<const char *>(val), len);
            }
            out.push_back(std::move(c));
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return out;
}

} // namespace

TEST(KafkaPartitioner, JavaMurmur2Vectors) {
    // From Apache Kafka's UtilsTest.testMurmur2: the helper the tests check placement with.
    EXPECT_EQ(java_murmur2("21"), -973932308);
    EXPECT_EQ(java_murmur2("foobar"), -790332482);
    EXPECT_EQ(java_murmur2("a-little-bit-long-string"), -985981536);
    EXPECT_EQ(java_murmur2("a-little-bit-longer-string"), -1486304829);
    EXPECT_EQ(java_murmur2("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
    EXPECT_EQ(java_murmur2(std::string("abc")), 479470107);
}

TEST_F(KafkaSinkTest, Delivers100kKeyedMessagesPartitionedLikeJava) {
    bk_sink *s = open({});
    ASSERT_NE(s, nullptr);
    const std::string topic = unique("bk-keys");
    const size_t n = 100000, batch = 10000;
    std::vector<std::string> keys(n), vals(n);
    std::vector<bk_message> m(n);
    for (size_t i = 0; i < n; i++) {
        keys[i] = "k" + std::to_string(i % 997);
        vals[i] = "{\"i\":" + std::to_string(i) + "}";
        m[i] =
            message(topic, vals[i], static_cast<int64_t>(i), i % 3 ? BK_OP_UPDATE : BK_OP_INSERT);
        m[i].key = keys[i].data();
        m[i].key_len = keys[i].size();
        m[i].table = "public.kt";
        m[i].table_len = 9;
    }
    std::vector<bk_send_result> r(n);
    for (size_t off = 0; off < n; off += batch) {
        bk_status st{};
        bk_send_summary sum;
        ASSERT_EQ(bk_sink_send_batch(s, &m[off], batch, static_cast<int64_t>(off / batch + 1),
                                     &r[off], 30000, &sum, &st),
                  BK_OK)
            << st.message;
        EXPECT_EQ(sum.ok, batch);
    }
    std::map<std::string, int32_t> key_partition;
    for (size_t i = 0; i < n; i++) {
        ASSERT_EQ(r[i].code, BK_SEND_OK);
        ASSERT_GE(r[i].partition, 0);
        ASSERT_GE(r[i].offset, 0);
        auto it = key_partition.emplace(keys[i], r[i].partition).first;
        ASSERT_EQ(it->second, r[i].partition) << "one key, two partitions: " << keys[i];
    }

    int32_t partitions = 0;
    std::vector<Consumed> got = consume_all(bootstrap_, topic, n, &partitions);
    ASSERT_GT(partitions, 1);
    ASSERT_EQ(got.size(), n);
    std::vector<int> seen(n, 0);
    std::map<std::string, int64_t> last_seq_of_key;
    for (const Consumed &c : got) {
        EXPECT_EQ(c.partition, java_partition(c.key, partitions)) << c.key;
        auto idk = c.headers.at("idempotency_key");
        ASSERT_EQ(idk.rfind(name_ + ":", 0), 0u) << idk;
        int64_t seq = std::stoll(idk.substr(name_.size() + 1));
        ASSERT_GE(seq, 0);
        ASSERT_LT(seq, static_cast<int64_t>(n));
        seen[seq]++;
        EXPECT_EQ(c.key, keys[seq]);
        EXPECT_EQ(c.value, vals[seq]);
        EXPECT_EQ(c.headers.at("op"), seq % 3 ? "update" : "insert");
        EXPECT_EQ(c.headers.at("table"), "public.kt");
        // Per-key order: within a partition (consumed in offset order) seqs of a key grow.
        auto it = last_seq_of_key.find(c.key);
        if (it != last_seq_of_key.end()) {
            EXPECT_GT(seq, it->second) << "key " << c.key << " out of order";
        }
        last_seq_of_key[c.key] = seq;
        EXPECT_EQ(c.offset, r[seq].offset);
    }
    for (size_t i = 0; i < n; i++)
        ASSERT_EQ(seen[i], 1) << "seq " << i;
}

// "headers": false drops batchkit's op/table/idempotency_key headers (the envelope
// carries them); a message's own headers still travel.
TEST_F(KafkaSinkTest, HeadersFalseSendsOnlyTheMessagesOwnHeaders) {
    const std::string topic = unique("bk-nohdr");
    bk_sink *s = open({{"topic", topic}, {"headers", "false"}});
    ASSERT_NE(s, nullptr);
    std::string v0 = "{\"op\":\"insert\"}", v1 = "{\"op\":\"message\"}";
    bk_field own{"trace", 5, "abc", 3};
    std::vector<bk_message> m(2);
    for (int i = 0; i < 2; i++) {
        m[i] = bk_message{};
        m[i].value = i ? v1.data() : v0.data();
        m[i].value_len = i ? v1.size() : v0.size();
        m[i].seq = 40 + i;
        m[i].op = i ? BK_OP_MESSAGE : BK_OP_INSERT;
        m[i].table = i ? nullptr : "public.t";
        m[i].table_len = i ? 0 : 8;
    }
    m[1].headers = &own;
    m[1].nheaders = 1;
    std::vector<bk_send_result> r(2);
    bk_status st{};
    bk_send_summary sum;
    ASSERT_EQ(bk_sink_send_batch(s, m.data(), 2, 1, r.data(), 30000, &sum, &st), BK_OK)
        << st.message;
    int32_t partitions = 0;
    std::vector<Consumed> got = consume_all(bootstrap_, topic, 2, &partitions);
    ASSERT_EQ(got.size(), 2u);
    for (const Consumed &c : got) {
        if (c.value == v0) {
            EXPECT_TRUE(c.headers.empty()) << c.headers.size() << " header(s)";
        } else {
            ASSERT_EQ(c.value, v1);
            EXPECT_EQ(c.headers.size(), 1u);
            EXPECT_EQ(c.headers.at("trace"), "abc");
        }
    }
}

TEST_F(KafkaSinkTest, OversizedMessageIsRejectedOthersDelivered) {
    bk_sink *s = open({{"topic", unique("bk-big")}});
    ASSERT_NE(s, nullptr);
    std::string small = "{\"ok\":1}", big(2 << 20, 'x');
    std::vector<bk_message> m(3);
    for (int i = 0; i < 3; i++) {
        m[i] = bk_message{};
        m[i].value = i == 1 ? big.data() : small.data();
        m[i].value_len = i == 1 ? big.size() : small.size();
        m[i].seq = i;
        m[i].op = BK_OP_MESSAGE; // target NULL: the sink's "topic"
    }
    std::vector<bk_send_result> r(3);
    bk_status st{};
    bk_send_summary sum;
    EXPECT_EQ(bk_sink_send_batch(s, m.data(), 3, 1, r.data(), 10000, &sum, &st), BK_REJECTED);
    EXPECT_EQ(r[0].code, BK_SEND_OK);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_EQ(r[1].error, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    EXPECT_EQ(r[2].code, BK_SEND_OK);
    EXPECT_EQ(sum.rejected, 1u);
}

// Two batches in flight: each finish reports its own batch's deliveries (the
// reports are routed by generation), and everything arrives once.
TEST_F(KafkaSinkTest, TwoBatchesInFlightReportTheirOwnDeliveries) {
    bk_sink *s = open({});
    ASSERT_NE(s, nullptr);
    const std::string topic = unique("bk-pipe");
    const size_t n = 20000, half = n / 2;
    std::vector<std::string> vals(n);
    std::vector<bk_message> m(n);
    for (size_t i = 0; i < n; i++) {
        vals[i] = "{\"i\":" + std::to_string(i) + "}";
        m[i] = message(topic, vals[i], static_cast<int64_t>(i), BK_OP_INSERT);
    }
    std::vector<bk_send_result> r(n);
    bk_status st{};
    bk_send_summary sum;
    ASSERT_EQ(bk_sink_start_batch(s, &m[0], half, 1, &r[0], 30000, &st), BK_OK) << st.message;
    ASSERT_EQ(bk_sink_start_batch(s, &m[half], half, 2, &r[half], 30000, &st), BK_OK) << st.message;
    EXPECT_EQ(bk_sink_in_flight(s), 2);
    ASSERT_EQ(bk_sink_finish_batch(s, 1, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(sum.ok, half);
    for (size_t i = 0; i < half; i++)
        ASSERT_EQ(r[i].code, BK_SEND_OK) << i;
    ASSERT_EQ(bk_sink_finish_batch(s, 2, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(sum.ok, half);
    for (size_t i = half; i < n; i++)
        ASSERT_EQ(r[i].code, BK_SEND_OK) << i;
    int32_t partitions = 0;
    std::vector<Consumed> got = consume_all(bootstrap_, topic, n, &partitions);
    EXPECT_EQ(got.size(), n);
}

TEST_F(KafkaSinkTest, UnreachableBrokerIsRetryableWithinTheTimeout) {
    bk_sink *s =
        open({{"bootstrap.servers", "127.0.0.1:" + std::to_string(free_port())}, {"topic", "t"}});
    ASSERT_NE(s, nullptr);
    std::string v = "x", t = "t";
    std::vector<bk_message> m = {message(t, v, 1), message(t, v, 2)};
    std::vector<bk_send_result> r(2);
    bk_status st{};
    auto t0 = Clock::now();
    EXPECT_EQ(bk_sink_send_batch(s, m.data(), 2, 1, r.data(), 2000, nullptr, &st), BK_UNAVAILABLE);
    auto took = Clock::now() - t0;
    EXPECT_LT(took, std::chrono::milliseconds(3500));
    EXPECT_EQ(r[0].code, BK_SEND_RETRYABLE);
    EXPECT_EQ(r[1].code, BK_SEND_RETRYABLE);
}

// librdkafka's in-process mock cluster: brokers we can take down and errors we inject.
class MockClusterTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char err[256];
        rd_kafka_conf_t *conf = rd_kafka_conf_new();
        rd_kafka_conf_set(conf, "log_level", "0", err, sizeof err);
        host_ = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
        ASSERT_NE(host_, nullptr) << err;
        mc_ = rd_kafka_mock_cluster_new(host_, 3);
        ASSERT_NE(mc_, nullptr);
        topic_ = unique("mock");
        ASSERT_EQ(rd_kafka_mock_topic_create(mc_, topic_.c_str(), 1, 3),
                  RD_KAFKA_RESP_ERR_NO_ERROR);
        bk_status st{};
        sink_ = open_sink("kafka",
                          {{"name", "mock"},
                           {"bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mc_)},
                           {"topic", topic_},
                           {"retry.backoff.ms", "50"},
                           // a topic marked unauthorized clears on the next metadata refresh
                           {"topic.metadata.refresh.interval.ms", "500"}},
                          &st);
        ASSERT_NE(sink_, nullptr) << st.message;
    }
    void TearDown() override {
        bk_sink_close(sink_);
        if (mc_)
            rd_kafka_mock_cluster_destroy(mc_);
        if (host_)
            rd_kafka_destroy(host_);
    }
    bk_code send1(int64_t seq, bk_send_result *r, int timeout_ms = 5000) {
        bk_message m = message(topic_, value_, seq);
        bk_status st{};
        return bk_sink_send_batch(sink_, &m, 1, seq, r, timeout_ms, nullptr, &st);
    }
    rd_kafka_t *host_ = nullptr;
    rd_kafka_mock_cluster_t *mc_ = nullptr;
    bk_sink *sink_ = nullptr;
    std::string topic_, value_ = "{\"v\":1}";
};

TEST_F(MockClusterTest, BrokerSideErrorsAreClassified) {
    bk_send_result r;
    ASSERT_EQ(send1(1, &r), BK_OK) << r.message;
    // The broker refuses the record itself: REJECTED.
    rd_kafka_mock_push_request_errors(mc_, 0 /* Produce */, 1,
                                      RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    EXPECT_EQ(send1(2, &r), BK_REJECTED);
    EXPECT_EQ(r.error, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    rd_kafka_mock_push_request_errors(mc_, 0, 1, RD_KAFKA_RESP_ERR_INVALID_RECORD);
    EXPECT_EQ(send1(3, &r), BK_REJECTED);
    // A missing grant is the sink's problem, not the message's: RETRYABLE.
    rd_kafka_mock_push_request_errors(mc_, 0, 1, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    EXPECT_EQ(send1(4, &r, 3000), BK_UNAVAILABLE);
    EXPECT_EQ(r.code, BK_SEND_RETRYABLE);
    EXPECT_EQ(r.error, RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED);
    // Transient broker errors are retried inside librdkafka and end up delivered.
    rd_kafka_mock_push_request_errors(mc_, 0, 2, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                                      RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT);
    // (The unauthorized topic fails fast until the next metadata refresh.)
    bk_code rc = BK_UNAVAILABLE;
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (rc != BK_OK && Clock::now() < deadline) {
        rc = send1(5, &r);
        if (rc != BK_OK)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    EXPECT_EQ(rc, BK_OK) << r.message;
}

TEST_F(MockClusterTest, BrokersDownGiveRetryableInBoundedTimeThenRecover) {
    bk_send_result r;
    ASSERT_EQ(send1(1, &r), BK_OK) << r.message;
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_down(mc_, id);
    auto t0 = Clock::now();
    EXPECT_EQ(send1(2, &r, 2000), BK_UNAVAILABLE);
    EXPECT_LT(Clock::now() - t0, std::chrono::milliseconds(3500));
    EXPECT_EQ(r.code, BK_SEND_RETRYABLE);
    for (int id = 1; id <= 3; id++)
        rd_kafka_mock_broker_set_up(mc_, id);
    // The idempotent producer recovers (epoch bump after the purge) and delivers.
    bk_code rc = BK_UNAVAILABLE;
    auto deadline = Clock::now() + std::chrono::seconds(20);
    while (rc != BK_OK && Clock::now() < deadline)
        rc = send1(2, &r, 3000);
    EXPECT_EQ(rc, BK_OK) << r.message;
    bool logged = false;
    for (auto &line : drain_log(sink_))
        logged |= !line.empty();
    EXPECT_TRUE(logged);
}
