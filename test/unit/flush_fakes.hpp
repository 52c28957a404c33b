// flush_fakes.hpp — a fake queue, a fake sink and a fake clock for the flush pipeline's
// unit tests (test_flush_pipeline.cpp). The fakes check the protocol's rules as they
// are used and record every violation in `violations`:
//   queue: acknowledgements in batch_seq order (always the lowest batch in flight),
//          nothing acknowledged that the sink did not apply (or refuse for good), no
//          message acknowledged twice, a batch never handed out while the pipeline
//          still holds it, every batch released exactly once;
//   sink:  batches finished in the order started, batch_seq strictly increasing among
//          the started ones, a batch_seq always carries the same messages, per-key
//          order of what it applied (fenced mode), at most `max_in_flight` started.
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "batchkit/flush_pipeline.h"

namespace fake {

struct Record {
    int64_t seq; // message seq (unique)
    int key;
    std::string keytext, value;
};

struct Batch {
    int64_t batch_seq = 0;
    std::vector<size_t> recs; // indices into Queue::records
    std::vector<bk_message> msgs;
    bool held = false;
};

enum class Outcome { Ok, Fail, AppliedButTimeout, Reject };

struct Sink;

struct Queue {
    std::vector<Record> records;
    std::set<size_t> acked_recs;
    std::map<int64_t, std::vector<size_t>> inflight;  // batch_seq -> records
    std::map<int64_t, std::shared_ptr<Batch>> handed; // batches held by the pipeline
    std::vector<std::string> violations;
    std::vector<std::string> notes;                    // the pipeline's FAILED / RETRY notes
    std::vector<std::pair<int64_t, std::string>> dead; // (message seq, error)
    std::vector<uint32_t> dead_attempts;
    std::vector<int64_t> ack_log, claim_log;
    std::vector<int64_t> fences;
    Sink *sink = nullptr;
    int64_t next_seq = 1;
    int64_t next_rec_seq = 1000;
    int64_t now_ms = 0; // for captured_at (ages)
    std::vector<int64_t> captured;
    bool stale = false;
    bool fail_next_round = false;
    const char *decode_error = nullptr;
    int64_t handed_out = 0, released = 0;
    std::function<bool()> fail_round; // random failures

    void add(int key, size_t value_bytes = 8) {
        Record r;
        r.seq = next_rec_seq++;
        r.key = key;
        r.keytext = "k" + std::to_string(key);
        r.value = std::string(value_bytes, 'v');
        records.push_back(r);
        captured.push_back(now_ms);
    }
    size_t acked_rows() const { return acked_recs.size(); }
    uint64_t waiting() const { return records.size() - acked_recs.size(); }
    // Claims take records in order: everything before claimed_upto is acknowledged or
    // held by a batch in flight (which only an acknowledgement removes).
    size_t claimed_upto = 0;
    size_t unclaimed_first() const { return claimed_upto; }

    bk_code round(bk_queue_round *r, bk_status *st);
    bk_queue_port port();
};

struct Started {
    int64_t seq;
    std::vector<int64_t> msg_seqs;
    std::vector<int> keys;
    bk_send_result *results;
    size_t n;
};

struct Sink {
    bool fenced = true;
    size_t max_in_flight = 2;
    std::deque<Started> started;
    int64_t fence = 0;
    bool poisoned = false;                           // fenced: an earlier started batch failed
    std::map<int64_t, std::vector<int64_t>> content; // batch_seq -> message seqs
    std::map<int, int64_t> last_per_key;
    std::set<int64_t> applied; // message seqs applied (delivered)
    // message seqs the server refused when it applied their batch: a replay skipped by
    // the fence then reports them OK (Redis cannot tell them apart any more)
    std::set<int64_t> refused;
    std::vector<std::string> violations;
    std::vector<std::string> calls; // "start 1", "finish 1", "probe", "fence"
    std::function<Outcome(int64_t)> outcome = [](int64_t) { return Outcome::Ok; };
    std::set<int64_t> reject_at_start_seqs; // message seqs refused at start (Kafka: too large)
    std::set<int64_t> reject_seqs;          // message seqs refused at finish
    bool probe_ok = true, fence_ok = true;
    int64_t fence_value = 0;

    bk_code start(const bk_message *msgs, size_t n, int64_t seq, bk_send_result *res,
                  bk_status *st);
    bk_code finish(int64_t seq, bk_send_summary *sum, bk_status *st);
    void apply(const Started &s, bk_send_result *res, bool reject);
    // A crash of the worker: the connection drops; a prefix of the started batches
    // may have been applied by the server (fenced) or delivered (Kafka).
    void crash(size_t applied_prefix);
    bk_sink_port port();
};

struct Env {
    int64_t now_us = 1000000000000LL;
    double rnd = 0.5;
    bool interrupt = false;
    std::function<double()> random;
    bk_flush_env port();
};

} // namespace fake
