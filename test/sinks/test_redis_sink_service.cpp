// The Redis sink against a real redis-server (REDIS_PORT), read back with plain
// hiredis commands: every command, the fence that makes replays effectively-once,
// a WRONGTYPE rejection that leaves the rest of the batch applied, reconnecting
// after a restart, and a large pipelined batch.
#include "service_env.hpp"

#include <map>
#include <set>

using namespace svc;

namespace {

class RedisSinkTest : public ::testing::Test {
  protected:
    void SetUp() override {
        std::string p = env("REDIS_PORT");
        ASSERT_FALSE(p.empty()) << "REDIS_PORT is not set: start redis-server and export its port";
        port_ = std::stoi(p);
        url_ = "redis://127.0.0.1:" + p + "/0";
        client_ = std::make_unique<RedisClient>(port_);
        ASSERT_TRUE(client_->ok()) << "cannot reach redis on " << p << ": " << client_->error();
        name_ = unique("rtest");
    }
    void TearDown() override {
        for (bk_sink *s : sinks_)
            bk_sink_close(s);
    }
    bk_sink *open(std::vector<std::pair<std::string, std::string>> kv) {
        kv.push_back({"name", name_});
        bool has_url = false;
        for (auto &p : kv)
            has_url |= p.first == "url";
        if (!has_url)
            kv.push_back({"url", url_});
        bk_status st{};
        bk_sink *s = open_sink("redis", kv, &st);
        EXPECT_NE(s, nullptr) << st.message;
        if (s)
            sinks_.push_back(s);
        return s;
    }
    bk_code send(bk_sink *s, std::vector<bk_message> &m, int64_t seq,
                 std::vector<bk_send_result> &r, bk_send_summary *sum = nullptr) {
        r.assign(m.size(), bk_send_result{});
        bk_status st{};
        return bk_sink_send_batch(s, m.data(), m.size(), seq, r.data(), 5000, sum, &st);
    }

    int port_ = 0;
    std::string url_, name_;
    std::unique_ptr<RedisClient> client_;
    std::vector<bk_sink *> sinks_;
};

} // namespace

namespace {

std::vector<std::map<std::string, std::string>> xrange(RedisClient &c, const std::string &key) {
    std::vector<std::map<std::string, std::string>> out;
    Reply x = c.cmd({"XRANGE", key, "-", "+"});
    if (!x || x->type != REDIS_REPLY_ARRAY)
        return out;
    for (size_t i = 0; i < x->elements; i++) {
        redisReply *fields = x->element[i]->element[1];
        std::map<std::string, std::string> f;
        for (size_t k = 0; k + 1 < fields->elements; k += 2)
            f[fields->element[k]->str] =
                std::string(fields->element[k + 1]->str, fields->element[k + 1]->len);
        out.push_back(f);
    }
    return out;
}

// Three messages, the second one's key of the wrong type.
void expect_only_the_middle_one_wrongtype(const std::vector<bk_send_result> &r,
                                          const bk_send_summary &sum) {
    ASSERT_EQ(r.size(), 3u);
    EXPECT_EQ(r[0].code, BK_SEND_OK);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_NE(std::string(r[1].message).find("WRONGTYPE"), std::string::npos) << r[1].message;
    EXPECT_EQ(r[2].code, BK_SEND_OK);
    EXPECT_EQ(sum.ok, 2u);
    EXPECT_EQ(sum.rejected, 1u);
}

} // namespace

TEST_F(RedisSinkTest, XaddWritesDataAndIdempotencyKeyInOrder) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string key = unique("stream");
    std::string v1 = "{\"id\":1}", v2 = "{\"id\":2}", v3 = "{\"id\":1,\"x\":true}";
    std::vector<bk_message> m = {message(key, v1, 100), message(key, v2, 101),
                                 message(key, v3, 102, BK_OP_DELETE)};
    m[0].table = m[1].table = m[2].table = "public.t";
    m[0].table_len = m[1].table_len = m[2].table_len = 8;
    std::vector<bk_send_result> r;
    bk_send_summary sum;
    ASSERT_EQ(send(s, m, 1, r, &sum), BK_OK);
    EXPECT_EQ(sum.ok, 3u);
    EXPECT_EQ(sum.fence_before, 0);
    auto entries = xrange(*client_, key);
    ASSERT_EQ(entries.size(), 3u);
    const char *values[] = {v1.c_str(), v2.c_str(), v3.c_str()};
    for (size_t i = 0; i < 3; i++) {
        // The envelope carries op and table; the entry adds only the idempotency key.
        EXPECT_EQ(entries[i].size(), 2u);
        EXPECT_EQ(entries[i]["data"], values[i]);
        EXPECT_EQ(entries[i]["idempotency_key"], name_ + ":" + std::to_string(100 + i));
    }
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "1");
}

TEST_F(RedisSinkTest, XaddInRowFormatAlsoCarriesOpAndTable) {
    bk_sink *s = open({{"command", "xadd"}, {"format", "row"}});
    ASSERT_NE(s, nullptr);
    std::string key = unique("rows");
    std::string v = "{\"id\":1}";
    std::vector<bk_message> m = {message(key, v, 7, BK_OP_DELETE),
                                 message(key, v, 8, BK_OP_MESSAGE)};
    m[0].table = "s.t";
    m[0].table_len = 3;
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    auto entries = xrange(*client_, key);
    ASSERT_EQ(entries.size(), 2u);
    EXPECT_EQ(entries[0]["op"], "delete");
    EXPECT_EQ(entries[0]["table"], "s.t");
    EXPECT_EQ(entries[0]["data"], v);
    EXPECT_EQ(entries[1].count("op"), 0u); // an enqueue()d message has no op or table
    EXPECT_EQ(entries[1].count("table"), 0u);
    EXPECT_EQ(entries[1]["idempotency_key"], name_ + ":8");
}

TEST_F(RedisSinkTest, XaddWithoutIdempotencyFieldWritesDataOnly) {
    bk_sink *s = open({{"command", "xadd"}, {"idempotency_field", "false"}});
    ASSERT_NE(s, nullptr);
    std::string key = unique("noid");
    std::string v = "{\"seq\":5}";
    std::vector<bk_message> m = {message(key, v, 5)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    auto entries = xrange(*client_, key);
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(entries[0].size(), 1u); // data only
    EXPECT_EQ(entries[0]["data"], v);
    // the fence still makes a replay a no-op
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    EXPECT_EQ(client_->integer({"XLEN", key}), 1);
}

TEST_F(RedisSinkTest, XaddMaxlenTrimsApproximately) {
    bk_sink *s = open({{"command", "xadd"}, {"maxlen", "10"}});
    ASSERT_NE(s, nullptr);
    std::string key = unique("capped");
    std::vector<std::string> vals(1000);
    std::vector<bk_message> m;
    for (int i = 0; i < 1000; i++) {
        vals[i] = "{\"i\":" + std::to_string(i) + "}";
        m.push_back(message(key, vals[i], i));
    }
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    long long len = client_->integer({"XLEN", key});
    EXPECT_GE(len, 10);
    EXPECT_LT(len, 1000); // "~": trimmed at node granularity, not exactly 10
}

TEST_F(RedisSinkTest, LpushAndRpushAppendValues) {
    bk_sink *l = open({{"command", "lpush"}});
    bk_sink *rp = open({{"command", "rpush"}});
    ASSERT_TRUE(l && rp);
    std::string lk = unique("l"), rk = unique("r");
    std::string a = "a", b = "b", c = "c";
    std::vector<bk_message> m = {message(lk, a, 1), message(lk, b, 2), message(lk, c, 3)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(l, m, 1, r), BK_OK);
    for (auto &x : m)
        x.target = rk.data(), x.target_len = rk.size();
    // A different sink name would have its own fence; here both sinks share the name,
    // so the second must use a higher batch_seq, as the worker would.
    ASSERT_EQ(send(rp, m, 2, r), BK_OK);
    Reply lr = client_->cmd({"LRANGE", lk, "0", "-1"});
    Reply rr = client_->cmd({"LRANGE", rk, "0", "-1"});
    ASSERT_EQ(lr->elements, 3u);
    ASSERT_EQ(rr->elements, 3u);
    EXPECT_STREQ(lr->element[0]->str, "c");
    EXPECT_STREQ(lr->element[2]->str, "a");
    EXPECT_STREQ(rr->element[0]->str, "a");
    EXPECT_STREQ(rr->element[2]->str, "c");
}

TEST_F(RedisSinkTest, PublishReachesASubscriber) {
    bk_sink *s = open({{"command", "publish"}});
    ASSERT_NE(s, nullptr);
    std::string ch = unique("chan");
    RedisClient sub(port_);
    ASSERT_TRUE(sub.ok());
    Reply ack = sub.cmd({"SUBSCRIBE", ch});
    ASSERT_TRUE(ack && ack->type == REDIS_REPLY_ARRAY);
    std::string v1 = "{\"n\":1}", v2 = "{\"n\":2}";
    std::vector<bk_message> m = {message(ch, v1, 1), message(ch, v2, 2)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    for (const std::string &want : {v1, v2}) {
        void *raw = nullptr;
        ASSERT_EQ(redisGetReply(sub.ctx(), &raw), REDIS_OK);
        Reply msg(static_cast<redisReply *>(raw));
        ASSERT_EQ(msg->elements, 3u);
        EXPECT_STREQ(msg->element[0]->str, "message");
        EXPECT_EQ(std::string(msg->element[2]->str), want);
    }
}

TEST_F(RedisSinkTest, SetWritesWithTtlAndDeletes) {
    bk_sink *s = open({{"command", "set"}, {"ttl_ms", "600000"}});
    ASSERT_NE(s, nullptr);
    std::string k1 = unique("s1"), k2 = unique("s2");
    std::string v1 = "{\"id\":1,\"v\":\"a\"}", v1b = "{\"id\":1,\"v\":\"b\"}", v2 = "{\"id\":2}";
    std::vector<bk_message> m = {message(k1, v1, 1), message(k2, v2, 2),
                                 message(k1, v1b, 3, BK_OP_UPDATE)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    EXPECT_EQ(client_->str({"GET", k1}), v1b); // the later update wins
    EXPECT_EQ(client_->str({"GET", k2}), v2);
    long long pttl = client_->integer({"PTTL", k1});
    EXPECT_GT(pttl, 500000);
    EXPECT_LE(pttl, 600000);
    std::vector<bk_message> d = {message(k2, v2, 4, BK_OP_DELETE)};
    ASSERT_EQ(send(s, d, 2, r), BK_OK);
    EXPECT_EQ(client_->integer({"EXISTS", k2}), 0);
    EXPECT_EQ(client_->integer({"EXISTS", k1}), 1);
}

TEST_F(RedisSinkTest, HsetWritesOneFieldPerColumnDropsNullsAndDeletes) {
    bk_sink *s = open({{"command", "hset"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("h");
    bk_field f1[] = {{"id", 2, "7", 1}, {"name", 4, "ann", 3}, {"note", 4, "x y", 3}};
    bk_field f2[] = {{"id", 2, "7", 1}, {"name", 4, "bob", 3}, {"note", 4, nullptr, 0}};
    const std::string none;
    std::vector<bk_message> m = {message(k, none, 1), message(k, none, 2, BK_OP_UPDATE)};
    m[0].fields = f1;
    m[0].nfields = 3;
    m[0].value = nullptr;
    m[1].fields = f2;
    m[1].nfields = 3;
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m, 1, r), BK_OK);
    EXPECT_EQ(client_->str({"HGET", k, "id"}), "7");
    EXPECT_EQ(client_->str({"HGET", k, "name"}), "bob");
    EXPECT_EQ(client_->integer({"HEXISTS", k, "note"}), 0); // NULL column: field removed
    EXPECT_EQ(client_->integer({"HLEN", k}), 2);
    std::vector<bk_message> d = {message(k, none, 3, BK_OP_DELETE)};
    ASSERT_EQ(send(s, d, 2, r), BK_OK);
    EXPECT_EQ(client_->integer({"EXISTS", k}), 0);
}

TEST_F(RedisSinkTest, FenceSkipsAReplayedBatch) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("fenced");
    std::string v = "{}";
    std::vector<bk_message> m = {message(k, v, 1), message(k, v, 2), message(k, v, 3)};
    std::vector<bk_send_result> r;
    bk_send_summary sum;
    ASSERT_EQ(send(s, m, 10, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 0);
    EXPECT_EQ(client_->integer({"XLEN", k}), 3);

    // The worker crashed before recording the ack: it replays batch 10.
    ASSERT_EQ(send(s, m, 10, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    EXPECT_EQ(sum.fence_before, 10);
    EXPECT_EQ(sum.ok, 3u);
    for (auto &x : r)
        EXPECT_EQ(x.code, BK_SEND_OK);
    EXPECT_EQ(client_->integer({"XLEN", k}), 3); // nothing written twice

    // An older batch is skipped too; a new one is applied.
    ASSERT_EQ(send(s, m, 9, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    ASSERT_EQ(send(s, m, 11, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 0);
    EXPECT_EQ(client_->integer({"XLEN", k}), 6);
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "11");

    // A fresh sink object (a restarted worker) sees the same fence.
    bk_sink *again = open({{"command", "xadd"}});
    int64_t fence = -1;
    bk_status st{};
    ASSERT_EQ(bk_sink_read_fence(again, &fence, 2000, &st), BK_OK) << st.message;
    EXPECT_EQ(fence, 11);
    ASSERT_EQ(send(again, m, 11, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    EXPECT_EQ(client_->integer({"XLEN", k}), 6);
}

TEST_F(RedisSinkTest, WrongTypeRejectsOneMessageAndAppliesTheRest) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string good1 = unique("g1"), bad = unique("bad"), good2 = unique("g2");
    ASSERT_EQ(client_->str({"SET", bad, "a plain string"}), "OK");
    std::string v = "{\"v\":1}";
    std::vector<bk_message> m = {message(good1, v, 1), message(bad, v, 2), message(good2, v, 3)};
    std::vector<bk_send_result> r;
    bk_send_summary sum;
    bk_status st{};
    r.assign(3, {});
    EXPECT_EQ(bk_sink_send_batch(s, m.data(), 3, 5, r.data(), 5000, &sum, &st), BK_REJECTED);
    expect_only_the_middle_one_wrongtype(r, sum);
    EXPECT_NE(std::string(st.message).find("WRONGTYPE"), std::string::npos);
    EXPECT_EQ(client_->integer({"XLEN", good1}), 1);
    EXPECT_EQ(client_->integer({"XLEN", good2}), 1);
    EXPECT_EQ(client_->str({"GET", bad}), "a plain string");
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "5");

    // The same with hset: one hash key holds a list.
    bk_sink *h = open({{"command", "hset"}});
    std::string hk1 = unique("hk1"), hk2 = unique("hk2");
    ASSERT_EQ(client_->integer({"RPUSH", hk2, "x"}), 1);
    bk_field f[] = {{"id", 2, "1", 1}};
    const std::string none;
    std::vector<bk_message> hm = {message(hk1, none, 1), message(hk2, none, 2)};
    for (auto &x : hm)
        x.fields = f, x.nfields = 1;
    r.assign(2, {});
    EXPECT_EQ(bk_sink_send_batch(h, hm.data(), 2, 6, r.data(), 5000, nullptr, &st), BK_REJECTED);
    EXPECT_EQ(r[0].code, BK_SEND_OK);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_EQ(client_->str({"HGET", hk1, "id"}), "1");
}

// The worker died after Redis applied a batch in which one command failed
// (WRONGTYPE), before the rejection was dead-lettered: the replay is skipped by
// the fence, but the failed message must still come back REJECTED (to be
// dead-lettered), not OK, and nothing is written twice.
TEST_F(RedisSinkTest, AReplayStillRejectsWhatFailedInsideTheAppliedTransaction) {
    std::string good = unique("g"), bad = unique("bad");
    ASSERT_EQ(client_->str({"SET", bad, "a plain string"}), "OK");
    std::string v = "{\"v\":1}";
    std::vector<bk_message> m = {message(good, v, 1), message(bad, v, 2), message(good, v, 3)};
    std::vector<bk_send_result> r;
    bk_send_summary sum;
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(send(s, m, 20, r, &sum), BK_REJECTED);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_EQ(client_->integer({"XLEN", good}), 2);

    // A restarted worker replays batch 20 (same sequence, fresh connection).
    bk_sink *again = open({{"command", "xadd"}});
    ASSERT_NE(again, nullptr);
    EXPECT_EQ(send(again, m, 20, r, &sum), BK_REJECTED);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    expect_only_the_middle_one_wrongtype(r, sum);
    EXPECT_EQ(client_->integer({"XLEN", good}), 2); // not applied again
    EXPECT_EQ(client_->str({"GET", bad}), "a plain string");

    // hset: a key that holds a list; a delete of a row (DEL) accepts any key.
    bk_sink *h = open({{"command", "hset"}});
    std::string hk = unique("hk"), hl = unique("hl"), hd = unique("hd");
    ASSERT_EQ(client_->integer({"RPUSH", hl, "x"}), 1);
    ASSERT_EQ(client_->integer({"RPUSH", hd, "x"}), 1);
    bk_field f[] = {{"id", 2, "1", 1}};
    const std::string none;
    std::vector<bk_message> hm = {message(hk, none, 1), message(hl, none, 2), message(hd, none, 3)};
    for (auto &x : hm)
        x.fields = f, x.nfields = 1;
    hm[2].op = BK_OP_DELETE;
    EXPECT_EQ(send(h, hm, 21, r), BK_REJECTED);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_EQ(r[2].code, BK_SEND_OK);
    ASSERT_EQ(client_->integer({"RPUSH", hd, "y"}), 1); // after the crash, hd is a list again
    bk_sink *h2 = open({{"command", "hset"}});
    EXPECT_EQ(send(h2, hm, 21, r, &sum), BK_REJECTED);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    EXPECT_EQ(r[0].code, BK_SEND_OK);
    EXPECT_EQ(r[1].code, BK_SEND_REJECTED);
    EXPECT_EQ(r[2].code, BK_SEND_OK); // DEL is not checked
    EXPECT_EQ(client_->str({"HGET", hk, "id"}), "1");

    // A Redis user whose ACL refuses TYPE: the replay cannot check, and does not get
    // stuck either: as before the check, every message counts as delivered.
    std::string user = unique("notype");
    ASSERT_EQ(client_->str({"ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-type"}), "OK");
    std::string acl_url = "redis://" + user + ":pw@127.0.0.1:" + std::to_string(port_) + "/0";
    bk_sink *noacl = open({{"command", "xadd"}, {"url", acl_url}});
    ASSERT_NE(noacl, nullptr);
    EXPECT_EQ(send(noacl, m, 20, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    for (auto &x : r)
        EXPECT_EQ(x.code, BK_SEND_OK);
    client_->cmd({"ACL", "DELUSER", user});

    // set accepts any key: a replay checks nothing and reports every message OK.
    bk_sink *st = open({{"command", "set"}});
    std::vector<bk_message> sm = {message(bad, v, 1)};
    ASSERT_EQ(send(st, sm, 22, r), BK_OK);
    ASSERT_EQ(send(st, sm, 22, r, &sum), BK_OK);
    EXPECT_EQ(sum.skipped_by_fence, 1);
    EXPECT_EQ(r[0].code, BK_SEND_OK);
}

TEST_F(RedisSinkTest, ReconnectsAfterARestart) {
    PrivateRedis own(free_port());
    ASSERT_TRUE(own.start()) << "could not start a private redis-server";
    bk_sink *s =
        open({{"command", "rpush"}, {"url", "redis://127.0.0.1:" + std::to_string(own.port())}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("restart");
    std::string v1 = "one", v2 = "two";
    std::vector<bk_message> m1 = {message(k, v1, 1)}, m2 = {message(k, v2, 2)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(send(s, m1, 1, r), BK_OK);

    own.stop(SIGKILL);
    auto t0 = Clock::now();
    EXPECT_EQ(send(s, m2, 2, r), BK_UNAVAILABLE);
    EXPECT_EQ(r[0].code, BK_SEND_RETRYABLE);
    EXPECT_LT(Clock::now() - t0, std::chrono::seconds(6));

    ASSERT_TRUE(own.start());
    // The worker retries the same batch under the same batch_seq until it lands.
    bk_code rc = BK_UNAVAILABLE;
    auto deadline = Clock::now() + std::chrono::seconds(15);
    int attempts = 0;
    while (rc != BK_OK && Clock::now() < deadline) {
        rc = send(s, m2, 2, r);
        attempts++;
        if (rc != BK_OK)
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_EQ(rc, BK_OK) << r[0].message;
    RedisClient c(own.port());
    EXPECT_EQ(c.integer({"LLEN", k}), 1); // the new server only has the new batch
    EXPECT_EQ(c.str({"LINDEX", k, "0"}), "two");
    EXPECT_EQ(c.str({"GET", "batchkit:fence:" + name_}), "2");
    bool dropped = false, connected = false;
    for (auto &line : drain_log(s)) {
        dropped |= line.find("connection dropped") != std::string::npos;
        connected |= line.find("connected to") != std::string::npos;
    }
    EXPECT_TRUE(dropped);
    EXPECT_TRUE(connected);
}

TEST_F(RedisSinkTest, LargePipelinedBatch) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("big");
    const int n = 20000;
    std::vector<std::string> vals(n);
    std::vector<bk_message> m;
    m.reserve(n);
    for (int i = 0; i < n; i++) {
        vals[i] = "{\"id\":" + std::to_string(i) + ",\"pad\":\"" + std::string(150, 'p') + "\"}";
        m.push_back(message(k, vals[i], i));
    }
    // One invalid message (no key) in the middle of a batch sent in several chunks.
    m[n / 2].target = nullptr;
    m[n / 2].target_len = 0;
    std::vector<bk_send_result> r;
    bk_send_summary sum;
    ASSERT_EQ(send(s, m, 1, r, &sum), BK_REJECTED);
    EXPECT_EQ(sum.ok, static_cast<size_t>(n - 1));
    EXPECT_EQ(r[n / 2].code, BK_SEND_REJECTED);
    EXPECT_EQ(client_->integer({"XLEN", k}), n - 1);
    Reply last = client_->cmd({"XREVRANGE", k, "+", "-", "COUNT", "1"});
    ASSERT_EQ(last->elements, 1u);
    redisReply *fields = last->element[0]->element[1];
    EXPECT_EQ(std::string(fields->element[1]->str), vals[n - 1]);
}

TEST_F(RedisSinkTest, ProbeAndAuthFailure) {
    bk_sink *s = open({{"command", "xadd"}});
    bk_status st{};
    EXPECT_EQ(bk_sink_probe(s, 2000, &st), BK_OK) << st.message;
    // A password the server does not expect: AUTH fails, the batch is retryable.
    bk_sink *bad =
        open({{"command", "xadd"}, {"url", "redis://:wrong@127.0.0.1:" + std::to_string(port_)}});
    EXPECT_EQ(bk_sink_probe(bad, 2000, &st), BK_UNAVAILABLE);
    EXPECT_NE(std::string(st.message).find("AUTH"), std::string::npos) << st.message;
}

TEST_F(RedisSinkTest, OutOfMemoryAbortsTheTransactionAsRetryable) {
    PrivateRedis own(free_port());
    ASSERT_TRUE(own.start()) << "could not start a private redis-server";
    RedisClient admin(own.port());
    bk_sink *s =
        open({{"command", "rpush"}, {"url", "redis://127.0.0.1:" + std::to_string(own.port())}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("oom");
    std::string v(1000, 'v');
    std::vector<bk_message> m = {message(k, v, 1), message(k, v, 2)};
    std::vector<bk_send_result> r;
    ASSERT_EQ(admin.str({"CONFIG", "SET", "maxmemory", "1"}), "OK");
    EXPECT_EQ(send(s, m, 3, r), BK_UNAVAILABLE);
    for (auto &x : r) {
        EXPECT_EQ(x.code, BK_SEND_RETRYABLE);
        EXPECT_NE(std::string(x.message).find("OOM"), std::string::npos) << x.message;
    }
    EXPECT_EQ(admin.integer({"EXISTS", k}), 0);
    ASSERT_EQ(admin.str({"CONFIG", "SET", "maxmemory", "0"}), "OK");
    EXPECT_EQ(admin.str({"GET", "batchkit:fence:" + name_}), "(nil)"); // fence not advanced
    ASSERT_EQ(send(s, m, 3, r), BK_OK) << r[0].message; // same batch, same seq: now applied
    EXPECT_EQ(admin.integer({"LLEN", k}), 2);
}

// Two batches in flight on one connection: the second is written while the first
// one's EXEC runs; both are applied in order and the fence ends at the second.
TEST_F(RedisSinkTest, TwoBatchesInFlightApplyInOrder) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("pipe");
    std::vector<std::string> vals;
    for (int i = 0; i < 4000; i++)
        vals.push_back("{\"i\":" + std::to_string(i) + "}");
    std::vector<bk_message> m;
    for (int i = 0; i < 4000; i++)
        m.push_back(message(k, vals[static_cast<size_t>(i)], i));
    std::vector<bk_send_result> r1(2000), r2(2000);
    bk_status st{};
    ASSERT_EQ(bk_sink_start_batch(s, m.data(), 2000, 20, r1.data(), 5000, &st), BK_OK);
    ASSERT_EQ(bk_sink_start_batch(s, m.data() + 2000, 2000, 21, r2.data(), 5000, &st), BK_OK);
    EXPECT_EQ(bk_sink_in_flight(s), 2);
    // a third batch, a probe or a finish out of order are refused, nothing changes
    std::vector<bk_send_result> r3(1);
    EXPECT_EQ(bk_sink_start_batch(s, m.data(), 1, 22, r3.data(), 5000, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_sink_probe(s, 1000, &st), BK_INVALID_ARGUMENT);
    bk_send_summary sum;
    EXPECT_EQ(bk_sink_finish_batch(s, 21, &sum, &st), BK_INVALID_ARGUMENT);
    ASSERT_EQ(bk_sink_finish_batch(s, 20, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(sum.ok, 2000u);
    EXPECT_EQ(sum.skipped_by_fence, 0);
    ASSERT_EQ(bk_sink_finish_batch(s, 21, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(sum.ok, 2000u);
    EXPECT_EQ(sum.fence_before, 20); // batch 21's fence check saw batch 20's fence
    EXPECT_EQ(bk_sink_in_flight(s), 0);
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "21");
    auto entries = xrange(*client_, k);
    ASSERT_EQ(entries.size(), 4000u);
    for (size_t i = 0; i < entries.size(); i++)
        ASSERT_EQ(entries[i]["data"], vals[i]) << "out of order at " << i;
}

// A replay of two in-flight batches after a crash: both skipped by the fence.
TEST_F(RedisSinkTest, ReplayOfTwoBatchesInFlightIsSkippedByTheFence) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("pipe-replay");
    std::string v = "{}";
    std::vector<bk_message> m = {message(k, v, 1), message(k, v, 2)};
    std::vector<bk_send_result> r1(1), r2(1);
    bk_status st{};
    bk_send_summary sum;
    for (int round = 0; round < 2; round++) {
        ASSERT_EQ(bk_sink_start_batch(s, &m[0], 1, 30, r1.data(), 5000, &st), BK_OK);
        ASSERT_EQ(bk_sink_start_batch(s, &m[1], 1, 31, r2.data(), 5000, &st), BK_OK);
        ASSERT_EQ(bk_sink_finish_batch(s, 30, &sum, &st), BK_OK) << st.message;
        EXPECT_EQ(sum.skipped_by_fence, round);
        ASSERT_EQ(bk_sink_finish_batch(s, 31, &sum, &st), BK_OK) << st.message;
        EXPECT_EQ(sum.skipped_by_fence, round);
        EXPECT_EQ(r1[0].code, BK_SEND_OK);
        EXPECT_EQ(r2[0].code, BK_SEND_OK);
    }
    EXPECT_EQ(client_->integer({"XLEN", k}), 2); // nothing written twice
}

// When the first batch in flight is not applied, the second must not be either:
// its EXEC would move the fence past the first, whose replay would be skipped.
TEST_F(RedisSinkTest, ABatchBehindAFailedOneIsNotApplied) {
    bk_sink *s = open({{"command", "xadd"}});
    ASSERT_NE(s, nullptr);
    std::string k = unique("pipe-fail");
    std::string v = "{}";
    // the fence holds garbage when batch 40 is checked (so 40 fails) and a valid
    // value when batch 41 is: without the pipeline rule 41 would be applied
    std::vector<bk_message> m = {message(k, v, 1), message(k, v, 2)};
    ASSERT_TRUE(client_->cmd({"SET", "batchkit:fence:" + name_, "not-a-number"}));
    std::vector<bk_send_result> r1(1), r2(1);
    bk_status st{};
    bk_send_summary sum;
    ASSERT_EQ(bk_sink_start_batch(s, &m[0], 1, 40, r1.data(), 5000, &st), BK_OK);
    // batch 40 failed its fence check; repair the fence before batch 41 is checked
    // (its WATCH/GET are only read after 40's replies: nothing of 41 is decided yet)
    ASSERT_TRUE(client_->cmd({"SET", "batchkit:fence:" + name_, "39"}));
    ASSERT_EQ(bk_sink_start_batch(s, &m[1], 1, 41, r2.data(), 5000, &st), BK_OK);
    EXPECT_EQ(bk_sink_finish_batch(s, 40, &sum, &st), BK_UNAVAILABLE);
    EXPECT_EQ(r1[0].code, BK_SEND_RETRYABLE);
    EXPECT_EQ(bk_sink_finish_batch(s, 41, &sum, &st), BK_UNAVAILABLE);
    EXPECT_EQ(r2[0].code, BK_SEND_RETRYABLE);
    EXPECT_NE(std::string(r2[0].message).find("earlier batch in flight failed"), std::string::npos)
        << r2[0].message;
    EXPECT_EQ(client_->integer({"EXISTS", k}), 0);
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "39");
    // the replay, in order, applies both
    ASSERT_EQ(bk_sink_start_batch(s, &m[0], 1, 40, r1.data(), 5000, &st), BK_OK);
    ASSERT_EQ(bk_sink_start_batch(s, &m[1], 1, 41, r2.data(), 5000, &st), BK_OK);
    EXPECT_EQ(bk_sink_finish_batch(s, 40, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(bk_sink_finish_batch(s, 41, &sum, &st), BK_OK) << st.message;
    EXPECT_EQ(client_->integer({"XLEN", k}), 2);
    EXPECT_EQ(client_->str({"GET", "batchkit:fence:" + name_}), "41");
}
