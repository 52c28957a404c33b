// flush_fakes.cpp — see flush_fakes.hpp.
#include "flush_fakes.hpp"

#include <algorithm>
#include <cstring>

namespace fake {

namespace {

void set(bk_status *st, bk_code c, const char *m) {
    st->code = c;
    std::snprintf(st->message, sizeof st->message, "%s", m);
}

} // namespace

bk_code Queue::round(bk_queue_round *r, bk_status *st) {
    if (fail_next_round || (fail_round && fail_round())) {
        fail_next_round = false;
        set(st, BK_UNAVAILABLE, "queue round failed");
        return BK_UNAVAILABLE;
    }
    for (size_t a = 0; a < r->nacks; a++) {
        const bk_flush_ack &ack = r->acks[a];
        int64_t seq = ack.batch->batch_seq;
        if (inflight.empty() || inflight.begin()->first != seq) {
            violations.push_back("ack of batch " + std::to_string(seq) + " out of batch order");
            continue;
        }
        std::vector<size_t> &recs = inflight.begin()->second;
        if (recs.size() != ack.batch->nmsgs)
            violations.push_back("ack of batch " + std::to_string(seq) + " with other messages");
        for (size_t i = 0; i < recs.size() && i < ack.batch->nmsgs; i++) {
            const Record &rec = records[recs[i]];
            if (acked_recs.count(recs[i]))
                violations.push_back("message " + std::to_string(rec.seq) + " acknowledged twice");
            if (ack.results[i].code == BK_SEND_REJECTED) {
                dead.emplace_back(rec.seq, ack.results[i].message ? ack.results[i].message : "");
                dead_attempts.push_back(ack.attempts);
            } else if (ack.results[i].code != BK_SEND_OK) {
                violations.push_back("message " + std::to_string(rec.seq) +
                                     " acknowledged while RETRYABLE");
            } else if (sink && !sink->applied.count(rec.seq) && !sink->refused.count(rec.seq)) {
                violations.push_back("message " + std::to_string(rec.seq) +
                                     " acknowledged before it was delivered");
            }
            acked_recs.insert(recs[i]);
        }
        ack_log.push_back(seq);
        inflight.erase(inflight.begin());
    }
    r->stale = 0;
    r->claimed = 0;
    if (!r->claim)
        return BK_OK;
    if (stale) {
        r->stale = 1;
        return BK_OK;
    }
    if (r->fence >= 0) {
        fences.push_back(r->fence);
        next_seq = std::max(next_seq, r->fence + 1);
    }
    std::shared_ptr<Batch> b;
    auto it = inflight.upper_bound(r->after_seq);
    if (it != inflight.end()) {
        b = std::make_shared<Batch>();
        b->batch_seq = it->first;
        b->recs = it->second;
        r->batch.replay = 1;
    } else {
        size_t first = unclaimed_first();
        if (first == records.size())
            return BK_OK;
        b = std::make_shared<Batch>();
        b->batch_seq = next_seq++;
        for (size_t i = first;
             i < records.size() && static_cast<int64_t>(b->recs.size()) < r->max_rows; i++)
            b->recs.push_back(i);
        claimed_upto = first + b->recs.size();
        inflight[b->batch_seq] = b->recs;
        r->batch.replay = 0;
    }
    if (handed.count(b->batch_seq))
        violations.push_back("batch " + std::to_string(b->batch_seq) +
                             " handed out while the pipeline holds it");
    for (size_t i : b->recs) {
        const Record &rec = records[i];
        bk_message m{};
        m.seq = rec.seq;
        m.key = rec.keytext.data();
        m.key_len = rec.keytext.size();
        m.value = rec.value.data();
        m.value_len = rec.value.size();
        m.op = BK_OP_INSERT;
        b->msgs.push_back(m);
    }
    b->held = true;
    handed[b->batch_seq] = b;
    handed_out++;
    claim_log.push_back(b->batch_seq);
    r->claimed = 1;
    r->batch.batch_seq = b->batch_seq;
    r->batch.msgs = b->msgs.data();
    r->batch.nmsgs = b->msgs.size();
    r->batch.handle = b.get();
    r->batch.decode_error = decode_error;
    return BK_OK;
}

bk_queue_port Queue::port() {
    bk_queue_port p{};
    p.ctx = this;
    p.round = [](void *c, bk_queue_round *r, bk_status *st) {
        return static_cast<Queue *>(c)->round(r, st);
    };
    p.oldest_age_ms = [](void *c, int64_t *age, int *found, bk_status *) {
        Queue *q = static_cast<Queue *>(c);
        size_t i = q->unclaimed_first();
        *found = i < q->records.size();
        *age = *found ? q->now_ms - q->captured[i] : 0;
        return BK_OK;
    };
    p.waiting = [](void *c, uint64_t *rows, int *known) {
        *rows = static_cast<Queue *>(c)->waiting();
        *known = 1;
    };
    p.release = [](void *c, bk_flush_batch *b) {
        Queue *q = static_cast<Queue *>(c);
        auto it = q->handed.find(b->batch_seq);
        if (it == q->handed.end() || it->second.get() != b->handle)
            q->violations.push_back("batch " + std::to_string(b->batch_seq) +
                                    " released twice or never handed out");
        else
            q->handed.erase(it);
        q->released++;
    };
    p.note = nullptr;
    return p;
}

bk_code Sink::start(const bk_message *msgs, size_t n, int64_t seq, bk_send_result *res,
                    bk_status *st) {
    calls.push_back("start " + std::to_string(seq));
    if (started.size() >= max_in_flight) {
        violations.push_back("more than max_in_flight batches started");
        set(st, BK_INVALID_ARGUMENT, "too many batches in flight");
        return BK_INVALID_ARGUMENT;
    }
    if (!started.empty() && seq <= started.back().seq)
        violations.push_back("batch " + std::to_string(seq) + " started after batch " +
                             std::to_string(started.back().seq));
    Started s{seq, {}, {}, res, n};
    for (size_t i = 0; i < n; i++) {
        s.msg_seqs.push_back(msgs[i].seq);
        s.keys.push_back(std::atoi(std::string(msgs[i].key + 1, msgs[i].key_len - 1).c_str()));
        res[i] = bk_send_result{};
        if (reject_at_start_seqs.count(msgs[i].seq)) {
            res[i].code = BK_SEND_REJECTED;
            res[i].message = "too large (at start)";
        }
    }
    auto c = content.find(seq);
    if (c == content.end())
        content[seq] = s.msg_seqs;
    else if (c->second != s.msg_seqs)
        violations.push_back("batch " + std::to_string(seq) + " replayed with other messages");
    started.push_back(s);
    return BK_OK;
}

void Sink::apply(const Started &s, bk_send_result *res, bool reject) {
    for (size_t i = 0; i < s.n; i++) {
        bool rej = res[i].code == BK_SEND_REJECTED || (reject && reject_seqs.count(s.msg_seqs[i]));
        if (rej) {
            res[i].code = BK_SEND_REJECTED;
            res[i].message = "WRONGTYPE";
            refused.insert(s.msg_seqs[i]);
            continue;
        }
        res[i].code = BK_SEND_OK;
        res[i].message = "";
        if (fenced) {
            auto k = last_per_key.find(s.keys[i]);
            if (k != last_per_key.end() && k->second >= s.msg_seqs[i])
                violations.push_back("key " + std::to_string(s.keys[i]) + ": message " +
                                     std::to_string(s.msg_seqs[i]) + " applied after " +
                                     std::to_string(k->second));
            last_per_key[s.keys[i]] = s.msg_seqs[i];
        }
        applied.insert(s.msg_seqs[i]);
    }
    if (fenced)
        fence = s.seq;
}

bk_code Sink::finish(int64_t seq, bk_send_summary *sum, bk_status *st) {
    calls.push_back("finish " + std::to_string(seq));
    if (started.empty() || started.front().seq != seq) {
        violations.push_back("finish of batch " + std::to_string(seq) + " out of start order");
        set(st, BK_INVALID_ARGUMENT, "not the oldest batch");
        return BK_INVALID_ARGUMENT;
    }
    Started s = started.front();
    started.pop_front();
    *sum = bk_send_summary{};
    sum->fence_before = fenced ? fence : -1;
    Outcome o = outcome(seq);
    if (fenced && poisoned)
        o = Outcome::Fail; // DISCARDed: applying it would move the fence past the failed one
    if (fenced && o != Outcome::Fail && seq <= fence) {
        for (size_t i = 0; i < s.n; i++)
            s.results[i] = bk_send_result{BK_SEND_OK, 0, "", -1, -1};
        sum->ok = s.n;
        sum->skipped_by_fence = 1;
    } else if (o == Outcome::Ok || o == Outcome::Reject) {
        apply(s, s.results, o == Outcome::Reject);
    } else {
        if (o == Outcome::AppliedButTimeout)
            apply(s, s.results, false);
        for (size_t i = 0; i < s.n; i++)
            if (o == Outcome::Fail || s.results[i].code == BK_SEND_OK)
                s.results[i] = bk_send_result{BK_SEND_RETRYABLE, -1, "connection lost", -1, -1};
        if (fenced)
            poisoned = true;
        set(st, BK_UNAVAILABLE, "connection lost");
    }
    for (size_t i = 0; i < s.n; i++) {
        sum->ok += s.results[i].code == BK_SEND_OK && !sum->skipped_by_fence;
        sum->retryable += s.results[i].code == BK_SEND_RETRYABLE;
        sum->rejected += s.results[i].code == BK_SEND_REJECTED;
    }
    if (started.empty())
        poisoned = false;
    return sum->retryable ? BK_UNAVAILABLE : (sum->rejected ? BK_REJECTED : BK_OK);
}

void Sink::crash(size_t applied_prefix) {
    size_t i = 0;
    for (auto &s : started) {
        if (i++ >= applied_prefix || poisoned)
            break;
        if (!fenced || s.seq > fence) {
            std::vector<bk_send_result> res(s.n);
            apply(s, res.data(), false);
        }
    }
    started.clear();
    poisoned = false;
}

bk_sink_port Sink::port() {
    bk_sink_port p{};
    p.ctx = this;
    p.start = [](void *c, const bk_message *m, size_t n, int64_t seq, bk_send_result *r, int,
                 bk_status *st) { return static_cast<Sink *>(c)->start(m, n, seq, r, st); };
    p.finish = [](void *c, int64_t seq, bk_send_summary *sum, bk_status *st) {
        return static_cast<Sink *>(c)->finish(seq, sum, st);
    };
    p.probe = [](void *c, int, bk_status *st) {
        Sink *s = static_cast<Sink *>(c);
        s->calls.push_back("probe");
        if (!s->started.empty())
            s->violations.push_back("probe with a batch in flight");
        if (s->probe_ok)
            return BK_OK;
        set(st, BK_UNAVAILABLE, "probe failed");
        return BK_UNAVAILABLE;
    };
    p.read_fence = [](void *c, int64_t *fence, int, bk_status *st) {
        Sink *s = static_cast<Sink *>(c);
        s->calls.push_back("fence");
        if (!s->fence_ok) {
            set(st, BK_UNAVAILABLE, "fence unreadable");
            return BK_UNAVAILABLE;
        }
        *fence = s->fence_value;
        return BK_OK;
    };
    return p;
}

bk_flush_env Env::port() {
    bk_flush_env e{};
    e.ctx = this;
    e.now_us = [](void *c) { return static_cast<Env *>(c)->now_us; };
    e.random01 = [](void *c) {
        Env *e = static_cast<Env *>(c);
        return e->random ? e->random() : e->rnd;
    };
    e.interrupted = [](void *c) { return static_cast<Env *>(c)->interrupt ? 1 : 0; };
    return e;
}

} // namespace fake
