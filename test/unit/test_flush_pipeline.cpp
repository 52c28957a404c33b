// Unit tests of the flush pipeline (batchkit/flush_pipeline.h, src/core/flush/pipeline.cpp)
// with the fake queue, sink and clock of flush_fakes.hpp: scripted cases for each
// transition, then a randomized model test.
//
// The model test's seed is printed on failure; replay one with
//   BK_PIPELINE_SEED=<seed> ./batchkit_unit_tests --gtest_filter='FlushPipelineModel*'
// (BK_PIPELINE_STEPS=<n> changes the number of steps per run).
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <sstream>

#include "batchkit/flush_pipeline.h"
#include "flush_fakes.hpp"

namespace {

std::string join(const std::vector<std::string> &v) {
    std::ostringstream o;
    for (auto &s : v)
        o << s << "; ";
    return o.str();
}

struct Rig {
    fake::Queue q;
    fake::Sink sink;
    fake::Env env;
    bk_flush_config cfg{};
    bk_queue_port qp{};
    bk_sink_port sp{};
    bk_flush_env ep{};
    bk_flush_pipeline *p = nullptr;
    bk_status last{};
    std::vector<std::string> &notes = q.notes;

    explicit Rig(uint32_t depth = 2, bool fenced = true, uint32_t batch_size = 10) {
        cfg.depth = depth;
        cfg.limits = bk_flush_limits{batch_size, 0, 0};
        cfg.retry = bk_retry_policy{5, 100, 1000};
        cfg.send_timeout_ms = 1000;
        cfg.probe_timeout_ms = 1000;
        cfg.max_message_bytes = 1 << 20;
        cfg.fenced = fenced;
        sink.fenced = fenced;
        sink.max_in_flight = depth;
        q.sink = &sink;
        qp = q.port();
        qp.note = [](void *c, bk_flush_note_kind k, int64_t seq, uint64_t rows, const char *msg) {
            if (k == BK_FLUSH_NOTE_FAILED || k == BK_FLUSH_NOTE_RETRY)
                static_cast<fake::Queue *>(c)->notes.push_back(std::to_string(k) + ":" +
                                                               std::to_string(seq) + ":" +
                                                               std::to_string(rows) + ":" + msg);
        };
        sp = sink.port();
        ep = env.port();
        build();
    }
    Rig(const Rig &) = delete;
    ~Rig() { bk_flush_pipeline_destroy(p); }

    void build() {
        bk_status st{};
        p = bk_flush_pipeline_create(&cfg, &qp, &sp, &ep, &st);
        ASSERT_NE(p, nullptr) << st.message;
    }
    void crash(size_t applied_prefix) {
        bk_flush_pipeline_destroy(p);
        sink.crash(applied_prefix);
        build();
    }
    bk_flush_step step(bool force = false, bool paused = false, bk_code expect = BK_OK) {
        bk_flush_step io{};
        io.force = force;
        io.paused = paused;
        io.naptime_ms = 1000;
        bk_code rc = bk_flush_pipeline_step(p, &io, &last);
        EXPECT_EQ(rc, expect) << last.message;
        check();
        return io;
    }
    void advance_ms(int64_t ms) {
        env.now_us += ms * 1000;
        q.now_ms += ms;
    }
    void add(size_t n, int key0 = 0) {
        for (size_t i = 0; i < n; i++)
            q.add(key0 + static_cast<int>(i % 7));
    }
    void check() {
        EXPECT_TRUE(q.violations.empty()) << join(q.violations);
        EXPECT_TRUE(sink.violations.empty()) << join(sink.violations);
        EXPECT_EQ(static_cast<size_t>(q.handed_out - q.released), bk_flush_pipeline_batches(p));
    }
    // step until nothing is left to do
    void drain(int max_steps = 200) {
        for (int i = 0; i < max_steps; i++) {
            bk_flush_step io = step();
            if (!io.busy && io.wait_ms < 0 && bk_flush_pipeline_batches(p) == 0 && q.waiting() == 0)
                return;
            advance_ms(io.wait_ms > 0 ? io.wait_ms : 1);
        }
        ADD_FAILURE() << "the pipeline did not drain";
    }
};

std::vector<std::string> V(std::initializer_list<const char *> l) {
    return {l.begin(), l.end()};
}

} // namespace

TEST(FlushPipeline, DepthTwoOverlapsTheNextBatchWithTheSinksWorkOnThePrevious) {
    Rig r(2);
    r.add(25);
    EXPECT_TRUE(r.step().busy); // claim 1, start 1
    EXPECT_EQ(r.sink.calls, V({"start 1"}));
    EXPECT_TRUE(r.step().busy); // claim 2, start 2, finish 1
    EXPECT_EQ(r.sink.calls, V({"start 1", "start 2", "finish 1"}));
    EXPECT_TRUE(r.q.ack_log.empty()); // 1 is acknowledged with the next claim
    EXPECT_TRUE(r.step().busy);       // ack 1 + claim 3 (the 5 left), start 3, finish 2
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1}));
    EXPECT_EQ(r.sink.calls, V({"start 1", "start 2", "finish 1", "start 3", "finish 2"}));
    EXPECT_EQ(r.q.claim_log, std::vector<int64_t>({1, 2, 3}));
    EXPECT_TRUE(r.step().busy); // nothing new waits: ack 2
    EXPECT_TRUE(r.step().busy); // finish 3, ack 3
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2, 3}));
    bk_flush_step io = r.step();
    EXPECT_FALSE(io.busy);
    EXPECT_EQ(io.wait_ms, -1);
    EXPECT_EQ(r.q.acked_rows(), 25u);
}

TEST(FlushPipeline, DepthOneFinishesEachBatchInItsOwnStep) {
    Rig r(1);
    r.add(15);
    r.step();
    EXPECT_EQ(r.sink.calls, V({"start 1", "finish 1"}));
    r.step();
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1}));
    EXPECT_EQ(r.sink.calls, V({"start 1", "finish 1", "start 2", "finish 2"}));
    r.drain();
    EXPECT_EQ(r.q.acked_rows(), 15u);
}

TEST(FlushPipeline, DepthFourKeepsThreeBatchesStartedBetweenSteps) {
    Rig r(4);
    r.add(100);
    for (int i = 0; i < 3; i++)
        r.step();
    EXPECT_EQ(r.sink.calls, V({"start 1", "start 2", "start 3"}));
    r.step();
    EXPECT_EQ(r.sink.calls, V({"start 1", "start 2", "start 3", "start 4", "finish 1"}));
    r.drain();
    EXPECT_EQ(r.q.acked_rows(), 100u);
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
}

TEST(FlushPipeline, LingersUntilTheOldestRowIsMaxWaitOld) {
    Rig r(2);
    r.cfg.limits.max_wait_ms = 50;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.add(3);
    r.advance_ms(20);
    bk_flush_step io = r.step();
    EXPECT_FALSE(io.busy);
    EXPECT_EQ(io.wait_ms, 30);
    EXPECT_TRUE(r.sink.calls.empty());
    r.advance_ms(30); // linger expired: a partial batch of 3
    EXPECT_TRUE(r.step().busy);
    EXPECT_EQ(r.sink.calls, V({"start 1"}));
    EXPECT_EQ(r.sink.content[1].size(), 3u);
    r.drain();
    EXPECT_EQ(r.q.acked_rows(), 3u);
}

TEST(FlushPipeline, FlushForcedOrFullBatchSkipsTheLinger) {
    Rig r(2);
    r.cfg.limits.max_wait_ms = 50;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.add(3);
    EXPECT_TRUE(r.step(true).busy);
    EXPECT_EQ(r.sink.calls, V({"start 1"}));
    Rig full(2);
    full.cfg.limits.max_wait_ms = 50;
    ASSERT_EQ(bk_flush_pipeline_configure(full.p, &full.cfg, &st), BK_OK);
    full.add(10); // batch_size rows wait
    EXPECT_TRUE(full.step().busy);
    EXPECT_EQ(full.sink.content[1].size(), 10u);
}

TEST(FlushPipeline, NothingWaitingIsLookedAtOncePerNaptime) {
    Rig r(2);
    r.add(5);
    r.drain();
    size_t rounds = r.q.claim_log.size();
    r.step();
    r.advance_ms(1000);
    r.step(); // a naptime passed: claims (finds nothing), whatever the counter says
    EXPECT_EQ(r.q.claim_log.size(), rounds);
    EXPECT_EQ(r.q.acked_rows(), 5u);
}

TEST(FlushPipeline, KafkaRefusalAtStartIsFinishedBeforeTheNextBatchStarts) {
    // Batch 1 was refused in part when started (message too large): it is retried, so
    // batch 2 must not be started before it (it would be delivered now and again later).
    Rig r(2, /*fenced=*/false);
    r.cfg.retry.max_attempts = 2;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.add(20);
    r.sink.reject_at_start_seqs = {1003};
    r.step(); // start 1
    r.step(); // claim 2, finish 1 first: rejected (attempt 1 of 2): backoff, 2 not started
    EXPECT_EQ(r.sink.calls, V({"start 1", "finish 1"}));
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 0u);
    r.advance_ms(200);
    r.step(); // probe, replay 1
    r.step(); // replay 2: finish 1 (attempt 2: its reject is final), then start 2
    EXPECT_EQ(r.sink.calls, V({"start 1", "finish 1", "probe", "start 1", "finish 1", "start 2"}));
    r.drain();
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2}));
    ASSERT_EQ(r.q.dead.size(), 1u);
    EXPECT_EQ(r.q.dead[0].first, 1003);
    EXPECT_EQ(r.q.dead_attempts[0], 2u);
    EXPECT_EQ(r.q.acked_rows(), 20u);
}

TEST(FlushPipeline, RejectedMessageInTheBatchBeforeTheCurrentIsDeadLetteredWithItsAck) {
    Rig r(2, /*fenced=*/true);
    r.add(20);
    r.sink.reject_seqs = {1002};
    r.sink.outcome = [](int64_t seq) {
        return seq == 1 ? fake::Outcome::Reject : fake::Outcome::Ok;
    };
    r.step(); // start 1
    r.step(); // start 2, finish 1: one message refused for good (Redis: at once)
    EXPECT_TRUE(r.q.dead.empty());
    r.step(); // ack 1 with its dead letter
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1}));
    ASSERT_EQ(r.q.dead.size(), 1u);
    EXPECT_EQ(r.q.dead[0], std::make_pair(int64_t{1002}, std::string("WRONGTYPE")));
    EXPECT_EQ(r.q.dead_attempts[0], 1u);
    EXPECT_FALSE(bk_flush_pipeline_failing(r.p));
    r.drain();
    EXPECT_EQ(r.q.acked_rows(), 20u);
    EXPECT_FALSE(r.sink.applied.count(1002));
}

TEST(FlushPipeline, KafkaRejectIsRetriedUntilMaxAttempts) {
    Rig r(2, /*fenced=*/false);
    r.cfg.retry.max_attempts = 3;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.add(5);
    r.sink.reject_seqs = {1001};
    r.sink.outcome = [](int64_t) { return fake::Outcome::Reject; };
    for (int i = 0; i < 100 && r.q.ack_log.empty(); i++) {
        bk_flush_step io = r.step();
        r.advance_ms(io.wait_ms > 0 ? io.wait_ms : 1);
    }
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1}));
    ASSERT_EQ(r.q.dead.size(), 1u);
    EXPECT_EQ(r.q.dead_attempts[0], 3u);
    int starts = 0;
    for (auto &c : r.sink.calls)
        starts += c == "start 1";
    EXPECT_EQ(starts, 3);
}

TEST(FlushPipeline, AFailureWithNBatchesInFlightDropsThemAllAndReplaysInOrder) {
    Rig r(3, /*fenced=*/true);
    r.add(40);
    int attempts1 = 0;
    r.sink.outcome = [&](int64_t seq) {
        return seq == 1 && attempts1++ == 0 ? fake::Outcome::Fail : fake::Outcome::Ok;
    };
    r.step();
    r.step();
    r.step(); // start 3, finish 1: fails; 2 and 3 finished (refused), none acknowledged
    EXPECT_EQ(r.sink.calls,
              V({"start 1", "start 2", "start 3", "finish 1", "finish 2", "finish 3"}));
    EXPECT_TRUE(r.q.ack_log.empty());
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 0u);
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    ASSERT_FALSE(r.notes.empty());
    EXPECT_EQ(r.notes[0], "1:0:10:connection lost");
    EXPECT_EQ(r.notes[1], "2:1:10:connection lost");
    bk_flush_step io = r.step(); // backing off
    EXPECT_FALSE(io.busy);
    EXPECT_GT(io.wait_ms, 0);
    r.drain();
    EXPECT_EQ(r.q.claim_log, std::vector<int64_t>({1, 2, 3, 1, 2, 3, 4}));
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2, 3, 4}));
    EXPECT_EQ(r.q.acked_rows(), 40u);
    EXPECT_EQ(r.sink.applied.size(), 40u);
}

TEST(FlushPipeline, PauseMidFlightAcknowledgesWhatIsInFlightAndClaimsNothing) {
    Rig r(2);
    r.add(40);
    r.step();
    r.step();                              // 1 delivered, 2 started
    EXPECT_TRUE(r.step(false, true).busy); // paused: ack 1
    EXPECT_TRUE(r.step(false, true).busy); // finish 2, ack 2
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2}));
    bk_flush_step io = r.step(false, true);
    EXPECT_FALSE(io.busy);
    EXPECT_EQ(r.q.claim_log, std::vector<int64_t>({1, 2}));
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 0u);
    r.drain(); // resumed
    EXPECT_EQ(r.q.acked_rows(), 40u);
}

TEST(FlushPipeline, AlterMidFlightAsksForAReloadAndKeepsTheDeliveredBatch) {
    Rig r(2);
    r.add(40);
    r.step();
    r.step();
    r.q.stale = true;            // altered: the claim sees other options
    bk_flush_step io = r.step(); // ack 1, no claim, finish 2
    EXPECT_TRUE(io.reload);
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1}));
    EXPECT_EQ(r.sink.calls.back(), "finish 2");
    // the worker reloads: the sink is reopened, the pipeline reconfigured
    r.q.stale = false;
    bk_status st{};
    bk_flush_pipeline_drop(r.p, 0);
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 1u); // 2, delivered, awaits its ack
    r.step();
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2}));
    r.drain();
    EXPECT_EQ(r.q.acked_rows(), 40u);
}

TEST(FlushPipeline, ReopeningTheSinkAbandonsStartedBatchesForAReplay) {
    Rig r(2);
    r.add(40);
    r.step();
    r.step();                       // 1 delivered, 2 started
    bk_flush_pipeline_drop(r.p, 0); // the sink is closed: 2 is abandoned
    r.sink.crash(0);
    r.drain();
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2, 3, 4}));
    EXPECT_EQ(r.q.claim_log, std::vector<int64_t>({1, 2, 2, 3, 4}));
}

TEST(FlushPipeline, AnInterruptedSendIsReplayedWithoutBackoff) {
    Rig r(2);
    r.add(20);
    r.sink.outcome = [&](int64_t seq) {
        if (seq == 1 && r.env.interrupt)
            return fake::Outcome::Fail;
        return fake::Outcome::Ok;
    };
    r.step();
    r.env.interrupt = true;
    bk_flush_step io = r.step(); // start 2, finish 1: gave way to the interrupt
    EXPECT_TRUE(io.interrupted);
    EXPECT_FALSE(io.busy);
    EXPECT_FALSE(bk_flush_pipeline_failing(r.p));
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 0u);
    r.env.interrupt = false;
    r.drain();
    for (auto &c : r.sink.calls)
        EXPECT_NE(c, "probe");
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2}));
}

TEST(FlushPipeline, BackoffThenProbeBeforeSendingAgain) {
    Rig r(2);
    r.add(10);
    int n = 0;
    r.sink.outcome = [&](int64_t) { return n++ == 0 ? fake::Outcome::Fail : fake::Outcome::Ok; };
    r.step();
    r.step(); // finish 1: fails (failures 1: delay 50..100 ms; jitter 0.5: 75)
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    bk_flush_step io = r.step();
    EXPECT_EQ(io.wait_ms, 76);
    r.sink.probe_ok = false;
    r.advance_ms(76);
    io = r.step(); // the probe fails: backoff again (failures 2: 150 ms)
    EXPECT_EQ(io.wait_ms, 1);
    EXPECT_EQ(r.sink.calls.back(), "probe");
    r.advance_ms(1);
    EXPECT_EQ(r.step().wait_ms, 150);
    r.sink.probe_ok = true;
    r.advance_ms(150);
    EXPECT_TRUE(r.step().busy); // probe, replay 1
    EXPECT_EQ(r.sink.calls.back(), "start 1");
    r.drain();
    EXPECT_FALSE(bk_flush_pipeline_failing(r.p));
    EXPECT_EQ(r.q.acked_rows(), 10u);
}

TEST(FlushPipeline, AnUnknownFenceIsReadAndRecordedBeforeTheFirstClaim) {
    Rig r(2, true);
    r.cfg.fence_unknown = 1;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.add(10);
    r.sink.fence_ok = false;
    r.step();
    EXPECT_TRUE(r.q.claim_log.empty());
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    r.sink.fence_ok = true;
    r.sink.fence_value = 41;
    r.sink.fence = 41;
    r.advance_ms(1000);
    r.step();
    EXPECT_EQ(r.q.fences, std::vector<int64_t>({41}));
    EXPECT_EQ(r.q.claim_log, std::vector<int64_t>({42}));
    r.drain();
    EXPECT_EQ(r.q.fences.size(), 1u); // read once
    EXPECT_EQ(r.q.acked_rows(), 10u);
}

TEST(FlushPipeline, AFailedQueueRoundKeepsTheDeliveredBatchForTheNextOne) {
    Rig r(2);
    r.add(30);
    r.step();
    r.step(); // 1 delivered, 2 started
    r.q.fail_next_round = true;
    r.step(false, false, BK_UNAVAILABLE);
    EXPECT_STREQ(r.last.message, "queue round failed");
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 1u); // 1, still to acknowledge
    EXPECT_TRUE(r.q.ack_log.empty());
    r.drain();
    EXPECT_EQ(r.q.ack_log, std::vector<int64_t>({1, 2, 3}));
    EXPECT_EQ(r.q.acked_rows(), 30u);
}

TEST(FlushPipeline, AnOversizedMessageIsRefusedWithoutBeingSent) {
    Rig r(2);
    r.cfg.max_message_bytes = 100;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.q.add(1);
    r.q.add(2, 200);
    r.q.add(3);
    r.drain();
    EXPECT_EQ(r.sink.content[1], std::vector<int64_t>({1000, 1002}));
    ASSERT_EQ(r.q.dead.size(), 1u);
    EXPECT_EQ(r.q.dead[0].first, 1001);
    EXPECT_NE(r.q.dead[0].second.find("exceeds max_message_bytes (100)"), std::string::npos);
}

TEST(FlushPipeline, ABatchThatCannotBeDecodedBacksOff) {
    Rig r(2);
    r.add(4);
    r.q.decode_error = "bad key template";
    bk_flush_step io = r.step();
    EXPECT_FALSE(io.busy);
    EXPECT_TRUE(bk_flush_pipeline_failing(r.p));
    EXPECT_EQ(r.notes, V({"1:0:4:bad key template"}));
    EXPECT_TRUE(r.sink.calls.empty());
    EXPECT_EQ(bk_flush_pipeline_batches(r.p), 0u);
}

TEST(FlushPipeline, RejectsAnInvalidConfiguration) {
    Rig r(2);
    bk_flush_config bad = r.cfg;
    bad.depth = 0;
    bk_status st{};
    EXPECT_EQ(bk_flush_pipeline_create(&bad, &r.qp, &r.sp, &r.ep, &st), nullptr);
    EXPECT_EQ(st.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_flush_pipeline_configure(r.p, &bad, &st), BK_INVALID_ARGUMENT);
}

// ---- the randomized model test ---------------------------------------------------------

namespace {

uint64_t seed_from_env(uint64_t dflt) {
    const char *s = std::getenv("BK_PIPELINE_SEED");
    return s ? std::strtoull(s, nullptr, 10) : dflt;
}

int steps_from_env() {
    const char *s = std::getenv("BK_PIPELINE_STEPS");
    return s ? std::atoi(s) : 3000;
}

struct ModelTotals {
    size_t batches = 0, crashes = 0, replays = 0;
} totals;

void model_run(uint64_t seed, uint32_t depth, bool fenced) {
    SCOPED_TRACE("replay with BK_PIPELINE_SEED=" + std::to_string(seed) + " (depth " +
                 std::to_string(depth) + (fenced ? ", fenced)" : ", unfenced)"));
    std::mt19937_64 rng(seed);
    auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };
    Rig r(depth, fenced, 1 + rng() % 12);
    r.cfg.limits.max_wait_ms = rng() % 3 == 0 ? 20 : 0;
    r.cfg.retry.max_attempts = 1 + rng() % 3;
    bk_status st{};
    ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
    r.env.random = [&] { return std::uniform_real_distribution<double>(0, 1)(rng); };
    r.sink.outcome = [&](int64_t) {
        double x = std::uniform_real_distribution<double>(0, 1)(rng);
        if (x < 0.06)
            return fake::Outcome::Fail;
        if (x < 0.09)
            return fenced ? fake::Outcome::AppliedButTimeout : fake::Outcome::Fail;
        if (x < 0.12)
            return fake::Outcome::Reject;
        return fake::Outcome::Ok;
    };
    r.q.fail_round = [&] { return chance(0.02); };
    bool paused = false;
    int steps = steps_from_env();
    for (int i = 0; i < steps && !::testing::Test::HasFailure(); i++) {
        if (chance(0.3))
            for (int k = rng() % 8; k > 0; k--) {
                r.q.add(static_cast<int>(rng() % 16));
                if (chance(0.03))
                    r.sink.reject_seqs.insert(r.q.records.back().seq);
            }
        if (chance(0.02))
            paused = !paused;
        r.sink.probe_ok = !chance(0.1);
        r.env.interrupt = chance(0.01);
        if (chance(0.01)) {
            r.crash(rng() % (depth + 1));
            totals.crashes++;
        } else if (chance(0.01)) {
            // the sink is reopened (alter_sink): started batches are abandoned
            bk_flush_pipeline_drop(r.p, 0);
            r.sink.crash(rng() % (depth + 1));
            ASSERT_EQ(bk_flush_pipeline_configure(r.p, &r.cfg, &st), BK_OK);
        }
        bk_flush_step io{};
        io.force = chance(0.1);
        io.paused = paused;
        io.naptime_ms = 1000;
        (void)bk_flush_pipeline_step(r.p, &io, &st);
        r.check();
        if (::testing::Test::HasFailure()) {
            size_t from = r.sink.calls.size() > 30 ? r.sink.calls.size() - 30 : 0;
            std::vector<std::string> tail(r.sink.calls.begin() + from, r.sink.calls.end());
            ADD_FAILURE() << "at step " << i << ", the sink's last calls: " << join(tail);
        }
        r.advance_ms(io.wait_ms > 0 ? 1 + rng() % (io.wait_ms + 1) : rng() % 3);
    }
    // then everything is delivered or dead-lettered, exactly once
    r.q.fail_round = nullptr;
    r.env.interrupt = false;
    r.sink.probe_ok = true;
    r.sink.outcome = [](int64_t) { return fake::Outcome::Ok; };
    r.drain(100000);
    EXPECT_EQ(r.q.acked_rows(), r.q.records.size());
    EXPECT_TRUE(r.q.inflight.empty());
    size_t dead = r.q.dead.size();
    for (auto &rec : r.q.records)
        if (!r.sink.applied.count(rec.seq) && !r.sink.reject_seqs.count(rec.seq))
            ADD_FAILURE() << "message " << rec.seq << " neither delivered nor dead-lettered";
    EXPECT_LE(dead, r.sink.reject_seqs.size());
    EXPECT_GT(r.q.ack_log.size(), 100u) << "the run acknowledged too few batches to mean much";
    totals.batches += r.q.ack_log.size();
    totals.replays += r.q.claim_log.size() - r.q.ack_log.size();
}

} // namespace

TEST(FlushPipelineModel, RandomOutcomesRejectsTimeoutsAndCrashes) {
    uint64_t base = seed_from_env(std::random_device{}());
    int runs = std::getenv("BK_PIPELINE_SEED") ? 1 : 4;
    for (int i = 0; i < runs && !HasFailure(); i++)
        for (uint32_t depth : {1u, 2u, 3u, 5u})
            for (bool fenced : {true, false})
                if (!HasFailure())
                    model_run(base + i, depth, fenced);
    std::printf("model test: seed %llu, %zu batches acknowledged, %zu replayed, %zu crashes\n",
                static_cast<unsigned long long>(base), totals.batches, totals.replays,
                totals.crashes);
}
