// pipeline.cpp — a sink's flush pipeline (batchkit/flush_pipeline.h).
//
// State machine. The pipeline holds a list of batches in batch_seq order, each
//   CLAIMED   claimed and decoded, not handed to the sink yet
//   STARTED   handed to the sink (bk_sink_start_batch), outcome not collected
//   DELIVERED outcome collected: every message OK or (final) REJECTED; awaits
//             its acknowledgement, which dead-letters the REJECTED ones
// always in the shape DELIVERED* STARTED* CLAIMED?. Between steps at most
// depth-1 batches are STARTED, so a step can start one more while the sink still
// works on the others. Sink state: ok | failing (backoff until retry_at, probe
// before the next send) | fence_unknown (fenced sinks: nothing is claimed until
// the sink's fence was read and recorded with a claim).
//
// One step:
//   1. may it claim? not when paused; not while backing off (wait: retry_at);
//      not when the queue counter says nothing waits beyond the rows held, unless
//      forced or naptime passed since the last claim; not while lingering (empty
//      pipeline, fewer than batch_size rows waiting, the oldest younger than
//      max_wait_ms: bk_flush_decide gives the wait). A failing sink is probed
//      first (nothing started), an unknown fence is read first; either failing
//      backs off again.
//   2. nothing to claim and nothing delivered: finish the oldest STARTED batch
//      (so that it is acknowledged now: pause, alter and flush() wait for it);
//      if there is none either, the sink is idle.
//   3. the queue round (one transaction): acknowledge every DELIVERED batch in
//      order, then claim (or replay, after_seq = the highest batch held) the
//      next one. A failed round changes nothing in the queue: the STARTED
//      batches are dropped, DELIVERED ones kept, the sink backs off. A stale
//      sink (paused/altered) claims nothing and asks for a reload. A batch that
//      cannot be decoded drops the pipeline and backs off.
//   4. start the claimed batch (messages over max_message_bytes are REJECTED
//      without being sent), then finish the oldest STARTED batches until at
//      most depth-1 are STARTED (nothing claimed: finish all). Exception: when
//      a STARTED batch was already refused in part at its start (Kafka: message
//      too large), it will be retried, so it is finished first and the new batch
//      is started only after it (started before, the new batch would be
//      delivered now and again after the retry).
//   5. finishing a batch: RETRYABLE results -> it failed (or gave way to an
//      interrupt, which is not the sink's fault: no backoff); REJECTED on an
//      unfenced sink -> the whole batch is retried until max_attempts, then the
//      rejects are dead-lettered; else DELIVERED (sink ok again). A failed
//      batch drops the pipeline: every later STARTED batch is finished but not
//      acknowledged (Redis refuses to apply them; Kafka may have delivered them),
//      the CLAIMED one is released; all stay in the queue's in-flight record and
//      are replayed in batch_seq order. Hence acknowledgements follow batch_seq.
// Destroying the pipeline (a crash, a reconfiguration) loses nothing: what was
// not acknowledged is replayed from the queue's in-flight record, lowest first.
#include "batchkit/flush_pipeline.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "batchkit/core.h"
#include "util/abi_guard.hpp"

namespace {

enum class State { Claimed, Started, Delivered };

struct Flight {
    bk_flush_batch batch{};
    State state = State::Claimed;
    bool finished = false;            // the sink's outcome was collected (do not finish it again)
    std::vector<bk_message> tosend;   // what went to the sink: oversized messages left out
    std::vector<size_t> map;          // tosend index -> batch.msgs index
    std::vector<bk_send_result> sent; // written by the sink until its finish
    std::vector<bk_send_result> results; // per batch.msgs
    std::vector<std::string> texts;      // result messages, copied from the sink
    uint64_t bytes = 0;
    int64_t t0_us = 0;
    double seconds = 0;
    uint32_t attempts = 1;
};

constexpr int64_t kMaxRows = 2147483647;
constexpr int64_t kMaxBytes = INT64_MAX;

} // namespace

struct bk_flush_pipeline {
    bk_flush_config cfg{};
    bk_queue_port q{};
    bk_sink_port sink{};
    bk_flush_env env{};
    std::deque<std::unique_ptr<Flight>> flights;
    bool failing = false;
    uint32_t failures = 0;
    int64_t retry_at_us = 0;
    int64_t last_claim_us = INT64_MIN / 2;
    int64_t reject_batch = 0;
    uint32_t reject_attempts = 0;
    bool fence_unknown = false;

    int64_t now() { return env.now_us(env.ctx); }
    void note(bk_flush_note_kind k, int64_t seq, uint64_t rows, const char *msg) {
        if (q.note)
            q.note(q.ctx, k, seq, rows, msg ? msg : "");
    }
    size_t count(State s) const {
        size_t n = 0;
        for (auto &f : flights)
            n += f->state == s;
        return n;
    }
    uint64_t rows() const {
        uint64_t n = 0;
        for (auto &f : flights)
            n += f->batch.nmsgs;
        return n;
    }

    void fail(const char *msg, uint64_t rows_failed) {
        failing = true;
        failures++;
        uint32_t delay = bk_backoff_delay_ms(
            failures, cfg.retry.backoff_base_ms ? cfg.retry.backoff_base_ms : 1,
            cfg.retry.backoff_cap_ms ? cfg.retry.backoff_cap_ms : 1, env.random01(env.ctx));
        retry_at_us = now() + static_cast<int64_t>(delay) * 1000;
        note(BK_FLUSH_NOTE_FAILED, 0, rows_failed, msg);
    }

    void release(std::unique_ptr<Flight> &f) { q.release(q.ctx, &f->batch); }

    // Forget every batch not delivered; finish: collect the STARTED ones' outcome first.
    void drop(bool finish) {
        std::deque<std::unique_ptr<Flight>> keep;
        for (auto &f : flights) {
            if (f->state == State::Delivered) {
                keep.push_back(std::move(f));
                continue;
            }
            if (finish && f->state == State::Started && !f->finished && !f->tosend.empty()) {
                bk_send_summary sum{};
                bk_status st{};
                (void)sink.finish(sink.ctx, f->batch.batch_seq, &sum, &st);
            }
            release(f);
        }
        flights.swap(keep);
    }

    bk_code start(Flight &f, bk_status *st);
    bool finish(Flight &f, bool *interrupted);
    bool decide_claim(bk_flush_step *io, int64_t *fence_read, bk_status *st, bk_code *rc);
    bk_code finish_oldest(bk_flush_step *io);
    bk_code step(bk_flush_step *io, bk_status *st);
};

// Hand a claimed batch to the sink. A message larger than max_message_bytes is
// refused before sending: a server that drops the connection on it (Redis past
// proto-max-bulk-len) would otherwise look like an outage and block the sink.
bk_code bk_flush_pipeline::start(Flight &f, bk_status *st) {
    size_t n = f.batch.nmsgs;
    f.results.assign(n, bk_send_result{});
    f.texts.assign(n, std::string());
    f.tosend.reserve(n);
    f.map.reserve(n);
    for (size_t i = 0; i < n; i++) {
        const bk_message &m = f.batch.msgs[i];
        f.bytes += m.value_len + m.key_len;
        if (cfg.max_message_bytes > 0 &&
            static_cast<int64_t>(m.value_len + m.key_len) > cfg.max_message_bytes) {
            char buf[160];
            std::snprintf(buf, sizeof buf, "message of %zu bytes exceeds max_message_bytes (%lld)",
                          m.value_len + m.key_len, static_cast<long long>(cfg.max_message_bytes));
            f.texts[i] = buf;
            f.results[i].code = BK_SEND_REJECTED;
            f.results[i].message = f.texts[i].c_str();
            f.results[i].partition = -1;
            f.results[i].offset = -1;
            continue;
        }
        f.map.push_back(i);
        f.tosend.push_back(m);
    }
    f.sent.assign(f.tosend.size(), bk_send_result{});
    f.state = State::Started;
    f.t0_us = now();
    if (!f.tosend.empty()) {
        note(BK_FLUSH_NOTE_SENDING, f.batch.batch_seq, f.tosend.size(), nullptr);
        bk_status sst{};
        if (sink.start(sink.ctx, f.tosend.data(), f.tosend.size(), f.batch.batch_seq, f.sent.data(),
                       cfg.send_timeout_ms, &sst) != BK_OK) {
            // a misuse of the sink (not expected): nothing started
            f.tosend.clear();
            std::string msg =
                "starting batch " + std::to_string(f.batch.batch_seq) + " failed: " + sst.message;
            bk::set_status(st, BK_INTERNAL, msg.c_str());
            return BK_INTERNAL;
        }
    }
    return BK_OK;
}

// Collect the sink's outcome of a STARTED batch: true when DELIVERED, false when it
// stays in flight to be replayed (the sink then backs off, unless interrupted).
bool bk_flush_pipeline::finish(Flight &f, bool *interrupted) {
    bk_send_summary sum{};
    bk_status st{};
    *interrupted = false;
    f.finished = true;
    if (!f.tosend.empty()) {
        note(BK_FLUSH_NOTE_SENDING, f.batch.batch_seq, f.tosend.size(), nullptr);
        (void)sink.finish(sink.ctx, f.batch.batch_seq, &sum, &st);
    }
    for (size_t k = 0; k < f.tosend.size(); k++) {
        size_t i = f.map[k];
        f.results[i] = f.sent[k];
        // the sink's text lives in its memory until its next call: copy it
        if (f.sent[k].message && f.sent[k].message[0] != '\0') {
            f.texts[i] = f.sent[k].message;
            f.results[i].message = f.texts[i].c_str();
        } else if (f.sent[k].message)
            f.results[i].message = "";
    }
    f.seconds = static_cast<double>(now() - f.t0_us) / 1e6;
    if (sum.retryable > 0 && env.interrupted && env.interrupted(env.ctx)) {
        *interrupted = true; // not the sink's fault: replayed later, no backoff
        return false;
    }
    if (sum.retryable > 0) {
        fail(st.message, sum.retryable);
        note(BK_FLUSH_NOTE_RETRY, f.batch.batch_seq, sum.retryable, st.message);
        return false;
    }
    if (sum.rejected > 0 && !cfg.fenced) {
        // Kafka: retry the whole batch (duplicates keep their idempotency key) until max_attempts
        if (reject_batch != f.batch.batch_seq) {
            reject_batch = f.batch.batch_seq;
            reject_attempts = 0;
        }
        reject_attempts++;
        if (reject_attempts < (cfg.retry.max_attempts ? cfg.retry.max_attempts : 1)) {
            fail(st.message, sum.rejected);
            return false;
        }
    }
    f.attempts = cfg.fenced ? 1 : (reject_attempts ? reject_attempts : 1);
    f.state = State::Delivered;
    failing = false;
    failures = 0;
    reject_batch = 0;
    return true;
}

// Step 1: may the step claim? Sets io->wait_ms when not; probes / reads the fence.
bool bk_flush_pipeline::decide_claim(bk_flush_step *io, int64_t *fence_read, bk_status *st,
                                     bk_code *rc) {
    int64_t t = now();
    uint64_t depth = 1;
    int known = 0;
    q.waiting(q.ctx, &depth, &known);
    *rc = BK_OK;
    if (io->paused)
        return false;
    if (failing && t < retry_at_us) {
        io->wait_ms = (retry_at_us - t) / 1000 + 1;
        return false;
    }
    if (count(State::Started) + count(State::Claimed) >= cfg.depth)
        return false; // not reached between steps; a guard for the sink's limit
    // Nothing committed waits (held rows count in depth); still looked at once per
    // naptime, in case the counter is short.
    if (known && static_cast<int64_t>(depth) - static_cast<int64_t>(rows()) <= 0 && !io->force &&
        t - last_claim_us < static_cast<int64_t>(io->naptime_ms) * 1000)
        return false;
    if (!io->force && flights.empty() && cfg.limits.max_wait_ms > 0 && known &&
        depth < cfg.limits.batch_size) {
        // linger: a partial batch waits until its oldest row is max_wait_ms old
        int64_t age = 0;
        int found = 0;
        *rc = q.oldest_age_ms(q.ctx, &age, &found, st);
        if (*rc != BK_OK)
            return false;
        if (found) {
            bk_flush_decision d = bk_flush_decide(&cfg.limits, depth, 0, age, 0);
            if (!d.flush_now) {
                io->wait_ms = d.wait_ms;
                return false;
            }
        }
    }
    bk_status pst{};
    if (failing && count(State::Started) == 0 &&
        sink.probe(sink.ctx, cfg.probe_timeout_ms, &pst) != BK_OK) {
        fail(pst.message, 0);
        io->wait_ms = 1;
        return false;
    }
    if (fence_unknown) {
        // nothing is numbered before the fence the sink's data carries is recorded
        int64_t fence = 0;
        if (sink.read_fence(sink.ctx, &fence, cfg.probe_timeout_ms, &pst) != BK_OK) {
            fail(pst.message, 0);
            io->wait_ms = 1;
            return false;
        }
        *fence_read = fence;
    }
    return true;
}

// Step 2: nothing to claim, nothing delivered: collect the oldest started batch.
bk_code bk_flush_pipeline::finish_oldest(bk_flush_step *io) {
    for (auto &f : flights) {
        if (f->state != State::Started)
            continue;
        bool interrupted = false;
        if (!finish(*f, &interrupted)) {
            drop(true);
            io->interrupted = interrupted;
        }
        return BK_OK;
    }
    return BK_OK;
}

bk_code bk_flush_pipeline::step(bk_flush_step *io, bk_status *st) {
    io->busy = 0;
    io->wait_ms = -1;
    io->interrupted = 0;
    io->reload = 0;
    int64_t fence_read = -1;
    bk_code rc = BK_OK;
    bool can_claim = decide_claim(io, &fence_read, st, &rc);
    if (rc != BK_OK) {
        drop(true);
        fail(st->message, 0);
        io->wait_ms = 1;
        return rc;
    }
    if (!can_claim && count(State::Delivered) == 0) {
        finish_oldest(io);
        if (io->interrupted || count(State::Delivered) == 0)
            return BK_OK;
    }

    // Step 3: one round with the queue.
    std::vector<bk_flush_ack> acks;
    for (auto &f : flights) {
        if (f->state != State::Delivered)
            break;
        acks.push_back(
            bk_flush_ack{&f->batch, f->results.data(), f->attempts, f->bytes, f->seconds});
    }
    bk_queue_round r{};
    r.acks = acks.data();
    r.nacks = acks.size();
    r.claim = can_claim;
    r.after_seq = 0;
    for (auto &f : flights)
        if (f->state != State::Delivered)
            r.after_seq = f->batch.batch_seq;
    r.max_rows = cfg.limits.batch_size ? cfg.limits.batch_size : kMaxRows;
    r.max_bytes =
        cfg.limits.max_batch_bytes ? static_cast<int64_t>(cfg.limits.max_batch_bytes) : kMaxBytes;
    r.fence = fence_read;
    int64_t t = now();
    rc = q.round(q.ctx, &r, st);
    if (rc != BK_OK) {
        // nothing of the round happened: delivered batches are acknowledged later
        drop(true);
        fail(st->message, 0);
        io->wait_ms = 1;
        return rc;
    }
    for (size_t i = 0; i < acks.size(); i++) {
        release(flights.front());
        flights.pop_front();
    }
    bool acked = !acks.empty();
    if (can_claim && !r.stale) {
        last_claim_us = t;
        if (fence_read >= 0)
            fence_unknown = false; // recorded with the claim
    }
    if (r.stale)
        io->reload = 1; // paused or altered: reload before sending anything
    Flight *cur = nullptr;
    if (r.claimed) {
        auto f = std::make_unique<Flight>();
        f->batch = r.batch;
        if (f->batch.decode_error) {
            // a configuration error (bad template): nothing can be sent until it is fixed
            std::string msg = f->batch.decode_error;
            uint64_t n = f->batch.nmsgs;
            drop(true);
            release(f);
            fail(msg.c_str(), n);
            return BK_OK;
        }
        cur = f.get();
        flights.push_back(std::move(f));
    }

    // Step 4: start the new batch, then collect the outcome of those before it.
    bool finish_first = false;
    for (auto &f : flights)
        if (f->state == State::Started)
            for (auto &s : f->sent)
                finish_first = finish_first || s.code == BK_SEND_REJECTED;
    // a batch that cannot be started drops the pipeline and puts the sink in backoff
    auto start_or_fail = [&]() {
        bk_code c = start(*cur, st);
        if (c != BK_OK) {
            drop(true);
            fail(st->message, 0);
            io->wait_ms = 1;
        }
        return c;
    };
    if (cur && !finish_first && (rc = start_or_fail()) != BK_OK)
        return rc;
    size_t keep = (cur && !finish_first) ? cfg.depth - 1 : 0;
    for (auto &f : flights) {
        if (f->state != State::Started || count(State::Started) <= keep)
            continue;
        bool interrupted = false;
        if (!finish(*f, &interrupted)) {
            drop(true); // the batches after it must not be acknowledged before it
            io->interrupted = interrupted;
            return BK_OK;
        }
    }
    if (cur && finish_first && (rc = start_or_fail()) != BK_OK)
        return rc;
    if (!cur && !acked && count(State::Delivered) == 0) {
        note(BK_FLUSH_NOTE_IDLE, 0, 0, nullptr);
        return BK_OK;
    }
    io->busy = 1;
    return BK_OK;
}

namespace {

bool valid(const bk_flush_config *cfg, bk_status *st) {
    if (cfg == nullptr || cfg->depth == 0) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "flush pipeline: depth must be at least 1");
        return false;
    }
    return true;
}

} // namespace

extern "C" {

bk_flush_pipeline *bk_flush_pipeline_create(const bk_flush_config *cfg, const bk_queue_port *queue,
                                            const bk_sink_port *sink, const bk_flush_env *env,
                                            bk_status *st) {
    if (!valid(cfg, st))
        return nullptr;
    if (!queue || !sink || !env || !queue->round || !queue->oldest_age_ms || !queue->waiting ||
        !queue->release || !sink->start || !sink->finish || !sink->probe || !sink->read_fence ||
        !env->now_us || !env->random01) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "flush pipeline: a port function is missing");
        return nullptr;
    }
    bk_flush_pipeline *p = new (std::nothrow) bk_flush_pipeline();
    if (p == nullptr) {
        bk::set_status(st, BK_OUT_OF_MEMORY, "out of memory in batchkit core");
        return nullptr;
    }
    p->cfg = *cfg;
    p->q = *queue;
    p->sink = *sink;
    p->env = *env;
    p->fence_unknown = cfg->fenced && cfg->fence_unknown;
    if (st)
        bk_status_clear(st);
    return p;
}

void bk_flush_pipeline_destroy(bk_flush_pipeline *p) {
    if (p == nullptr)
        return;
    for (auto &f : p->flights)
        p->release(f);
    delete p;
}

bk_code bk_flush_pipeline_configure(bk_flush_pipeline *p, const bk_flush_config *cfg,
                                    bk_status *st) {
    if (p == nullptr || !valid(cfg, st))
        return BK_INVALID_ARGUMENT;
    p->cfg = *cfg;
    p->failing = false;
    p->failures = 0;
    p->retry_at_us = 0;
    p->reject_batch = 0;
    p->fence_unknown = cfg->fenced && cfg->fence_unknown;
    if (st)
        bk_status_clear(st);
    return BK_OK;
}

bk_code bk_flush_pipeline_step(bk_flush_pipeline *p, bk_flush_step *io, bk_status *st) {
    if (p == nullptr || io == nullptr) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "flush pipeline: NULL argument");
        return BK_INVALID_ARGUMENT;
    }
    bk_status local{};
    bk_status *s = st ? st : &local;
    bk_status_clear(s);
    bk_code rc = BK_OK;
    bk_status guard{};
    bk_code g = bk::guarded(&guard, [&] { rc = p->step(io, s); });
    if (g != BK_OK) {
        *s = guard;
        // out of memory or a bug inside the step: nothing is acknowledged, replay later
        p->drop(true);
        io->wait_ms = 1;
        io->busy = 0;
        return g;
    }
    return rc;
}

void bk_flush_pipeline_drop(bk_flush_pipeline *p, int finish) {
    if (p)
        p->drop(finish != 0);
}

void bk_flush_pipeline_backoff(bk_flush_pipeline *p, const char *msg, uint64_t rows_failed) {
    if (p)
        p->fail(msg ? msg : "", rows_failed);
}

int bk_flush_pipeline_failing(const bk_flush_pipeline *p) {
    return p && p->failing;
}

uint64_t bk_flush_pipeline_rows(const bk_flush_pipeline *p) {
    return p ? p->rows() : 0;
}

size_t bk_flush_pipeline_batches(const bk_flush_pipeline *p) {
    return p ? p->flights.size() : 0;
}

} // extern "C"
