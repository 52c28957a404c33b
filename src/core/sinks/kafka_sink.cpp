// kafka_sink.cpp — one librdkafka producer per sink; a batch in, a result per message out.
//
// Contract (see kafka_sink.hpp for threads and lifetime):
//   - start_batch produces every message (headers op, table, idempotency_key =
//     "<sink>:<seq>") and returns; finish_batch serves delivery reports on the
//     caller's thread until each message of the OLDEST batch has its report or the
//     deadline passes, while the next batch (if any) is being delivered: the
//     worker claims and encodes batch N+1 while librdkafka delivers batch N;
//   - at the deadline, purge what is still queued or in flight (librdkafka reports
//     it as _PURGE_QUEUE/_PURGE_INFLIGHT, i.e. RETRYABLE) and collect those reports,
//     so nothing of the batch survives the call;
//   - a report that arrives after its batch ended (a stale one) is recognised by
//     its generation number and ignored.
#include "sinks/kafka_sink.hpp"

#include <cstring>
#include <random>
#include <set>
#include <thread>

#include "util/abi_guard.hpp"

namespace bk {

static_assert(sizeof(uintptr_t) >= 8, "message opaque packs generation and index in 64 bits");

namespace {

int ms_until(Clock::time_point deadline) {
    auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    return d < 0 ? 0 : static_cast<int>(std::min<int64_t>(d, INT32_MAX));
}

} // namespace

KafkaSink::KafkaSink(const Options &opts)
    : Sink(opts), conf_(kafka_effective_config(opts)), default_topic_(opts.get_or("topic", "")),
      copy_payloads_(opts.get_or("copy_payloads", "true") != "false"),
      headers_(opts.get_or("headers", "true") != "false") {
    if (name_.empty())
        name_ = "kafka";
    create_producer();
}

KafkaSink::~KafkaSink() {
    destroy_producer();
}

void KafkaSink::create_producer() {
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    for (const auto &kv : conf_) {
        rd_kafka_conf_res_t r =
            rd_kafka_conf_set(conf, kv.first.c_str(), kv.second.c_str(), errstr, sizeof errstr);
        if (r == RD_KAFKA_CONF_UNKNOWN && kv.first.find('.') == std::string::npos)
            continue; // an undotted batchkit option the core does not use
        if (r != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            throw Error(BK_INVALID_ARGUMENT, "kafka option \"" + kv.first + "\": " + errstr);
        }
    }
    rd_kafka_conf_set_opaque(conf, this);
    rd_kafka_conf_set_dr_msg_cb(conf, &KafkaSink::dr_cb);
    rd_kafka_conf_set_log_cb(conf, &KafkaSink::log_cb);
    rd_kafka_conf_set_error_cb(conf, &KafkaSink::error_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == nullptr) {
        rd_kafka_conf_destroy(conf); // not taken over on failure
        throw Error(BK_INVALID_ARGUMENT, std::string("kafka producer: ") + errstr);
    }
    rk_ = rk;
    fatal_ = false;
}

void KafkaSink::destroy_producer() noexcept {
    if (rk_ == nullptr)
        return;
    batches_.clear(); // any report served from here on is stale
    outstanding_ = 0;
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(rk_, 0);
    for (auto &t : topics_)
        rd_kafka_topic_destroy(t.second);
    topics_.clear();
    last_topic_ = nullptr;
    last_topic_name_.clear();
    rd_kafka_destroy(rk_);
    rk_ = nullptr;
}

rd_kafka_topic_t *KafkaSink::topic(const char *name, size_t len) {
    if (last_topic_ && last_topic_name_.size() == len &&
        std::memcmp(last_topic_name_.data(), name, len) == 0)
        return last_topic_;
    std::string key(name, len);
    auto it = topics_.find(key);
    rd_kafka_topic_t *t;
    if (it != topics_.end()) {
        t = it->second;
    } else {
        if (topics_.size() >= 4096) { // templated per-row topics: keep the cache bounded
            for (auto &kv : topics_)
                rd_kafka_topic_destroy(kv.second);
            topics_.clear();
        }
        t = rd_kafka_topic_new(rk_, key.c_str(), nullptr);
        if (t == nullptr)
            return nullptr;
        topics_.emplace(key, t);
    }
    last_topic_name_ = std::move(key);
    last_topic_ = t;
    return t;
}

void KafkaSink::dr_cb(rd_kafka_t *, const rd_kafka_message_t *m, void *opaque) {
    static_cast<KafkaSink *>(opaque)->on_delivery(m);
}

void KafkaSink::on_delivery(const rd_kafka_message_t *m) noexcept {
    auto tag = reinterpret_cast<uintptr_t>(m->_private);
    uint32_t gen = static_cast<uint32_t>(tag >> 32);
    size_t idx = static_cast<size_t>(tag & 0xffffffffu);
    Batch *b = nullptr;
    for (Batch &x : batches_)
        if (x.gen == gen)
            b = &x;
    if (b == nullptr || idx >= b->n)
        return; // a report of an earlier batch, already counted as failed
    bk_send_result &r = b->results[idx];
    r.partition = m->partition;
    r.offset = m->offset;
    r.error = m->err;
    if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        r.code = BK_SEND_OK;
        r.message = "";
    } else {
        r.code = static_cast<uint8_t>(kafka_classify_error(m->err));
        r.message = rd_kafka_err2str(m->err); // static storage
    }
    if (b->outstanding > 0) {
        b->outstanding--;
        outstanding_--;
    }
}

void KafkaSink::log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    // Runs on librdkafka threads: only the thread-safe log queue is touched.
    auto *self = static_cast<KafkaSink *>(rd_kafka_opaque(rk));
    if (self)
        self->log_.push(level, fac ? fac : "", buf ? buf : "");
}

void KafkaSink::error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
    auto *self = static_cast<KafkaSink *>(opaque);
    if (self == nullptr)
        return;
    auto e = static_cast<rd_kafka_resp_err_t>(err);
    std::string msg = std::string(rd_kafka_err2name(e)) + ": " + (reason ? reason : "");
    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        msg = std::string("fatal producer error, the producer will be rebuilt: ") +
              rd_kafka_err2name(orig) + ": " + why;
        self->fatal_ = true;
        self->log_.push(3, "FATAL", msg);
        return;
    }
    self->log_.push(4, "ERROR", msg);
}

void KafkaSink::start_batch(const bk_message *msgs, size_t n, int64_t, bk_send_result *results,
                            Clock::time_point deadline) {
    if (n > 0xffffffffu)
        throw Error(BK_INVALID_ARGUMENT, "a Kafka batch holds at most 2^32-1 messages");
    if ((fatal_ || rk_ == nullptr) && batches_.empty()) {
        log_.push(5, "REBUILD", "rebuilding the Kafka producer after a fatal error");
        destroy_producer();
        create_producer();
    }
    rd_kafka_poll(rk_, 0); // serve anything stale before this batch starts
    Batch nb;
    nb.gen = ++gen_;
    nb.msgs = msgs;
    nb.n = n;
    nb.results = results;
    nb.deadline = deadline;
    batches_.push_back(nb);
    try {
        produce(batches_.back());
    } catch (const std::exception &e) {
        // Recorded: finish_batch collects what was produced; the rest stays RETRYABLE.
        log_.push(3, "PRODUCE", std::string("producing the batch failed: ") + e.what());
    }
}

void KafkaSink::produce(Batch &b) {
    const bk_message *msgs = b.msgs;
    const size_t n = b.n;
    bk_send_result *results = b.results;
    const Clock::time_point deadline = b.deadline;
    const int flags = copy_payloads_ ? RD_KAFKA_MSG_F_COPY : 0;
    // Behind a batch in flight (the worker's pipeline) the window covers a whole
    // batch: the worker's next claim overlaps this batch's delivery anyway, and
    // fewer, larger produce requests cost less (see kMaxOutstandingPipelined).
    const size_t window = batches_.size() > 1 ? kMaxOutstandingPipelined : kMaxOutstanding;
    std::vector<char> idkey(name_.size() + 32);
    for (size_t i = 0; i < n; i++) {
        const bk_message &m = msgs[i];
        bk_send_result &r = results[i];
        const char *tname = m.target;
        size_t tlen = m.target_len;
        if (tname == nullptr) {
            tname = default_topic_.data();
            tlen = default_topic_.size();
        }
        if (tlen == 0) {
            r = {BK_SEND_REJECTED, RD_KAFKA_RESP_ERR__INVALID_ARG,
                 "no topic: the message has no target and the sink no \"topic\" option", -1, -1};
            continue;
        }
        rd_kafka_topic_t *rkt = topic(tname, tlen);
        if (rkt == nullptr) {
            rd_kafka_resp_err_t e = rd_kafka_last_error();
            r = {static_cast<uint8_t>(e == RD_KAFKA_RESP_ERR__INVALID_ARG
                                          ? BK_SEND_REJECTED
                                          : kafka_classify_error(e)),
                 e,
                 keep_message(std::string("topic \"") + std::string(tname, tlen) +
                              "\": " + rd_kafka_err2str(e)),
                 -1, -1};
            continue;
        }
        // Headers cost: five allocations a message in the producing thread, and
        // their serialization in librdkafka's (~1/3 of a drain's CPU, docs/sinks.md).
        rd_kafka_headers_t *hdrs =
            headers_ || m.nheaders > 0 ? rd_kafka_headers_new(3 + m.nheaders) : nullptr;
        if (headers_) {
            if (m.op != BK_OP_MESSAGE) {
                const char *op = op_name(m.op);
                rd_kafka_header_add(hdrs, "op", 2, op, static_cast<ssize_t>(std::strlen(op)));
            }
            if (m.table)
                rd_kafka_header_add(hdrs, "table", 5, m.table, static_cast<ssize_t>(m.table_len));
            size_t klen = format_idempotency_key(idkey.data(), name_, m.seq);
            rd_kafka_header_add(hdrs, "idempotency_key", 15, idkey.data(),
                                static_cast<ssize_t>(klen));
        }
        for (size_t h = 0; h < m.nheaders; h++) {
            const bk_field &f = m.headers[h];
            rd_kafka_header_add(hdrs, f.name, static_cast<ssize_t>(f.name_len), f.value,
                                f.value ? static_cast<ssize_t>(f.value_len) : 0);
        }
        auto tag = reinterpret_cast<void *>((static_cast<uintptr_t>(b.gen) << 32) | i);
        rd_kafka_resp_err_t err;
        for (;;) {
            err = rd_kafka_producev(
                rk_, RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_MSGFLAGS(flags),
                RD_KAFKA_V_VALUE(const_cast<char *>(m.value), m.value ? m.value_len : 0),
                RD_KAFKA_V_KEY(m.key, m.key ? m.key_len : 0), RD_KAFKA_V_HEADERS(hdrs),
                RD_KAFKA_V_OPAQUE(tag), RD_KAFKA_V_END);
            if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || Clock::now() >= deadline)
                break;
            // librdkafka's queue is full: serve reports so it drains, then try again.
            rd_kafka_poll(rk_, 10);
        }
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (hdrs)
                rd_kafka_headers_destroy(hdrs); // not taken over on failure
            r = {static_cast<uint8_t>(kafka_classify_error(err)), err, rd_kafka_err2str(err), -1,
                 -1};
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                // Deadline reached with a full queue: the rest stays "not sent".
                for (size_t j = i + 1; j < n; j++)
                    results[j] = {BK_SEND_RETRYABLE, RD_KAFKA_RESP_ERR__QUEUE_FULL,
                                  "timed out waiting for room in the producer queue", -1, -1};
                break;
            }
            continue;
        }
        r = {BK_SEND_RETRYABLE, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
             "no delivery report before the timeout", -1, -1};
        b.outstanding++;
        outstanding_++;
        if ((i & 1023) == 1023)
            rd_kafka_poll(rk_, 0); // keep reports flowing during a large batch
        if (outstanding_ >= window && !drain_window(window, deadline)) {
            for (size_t j = i + 1; j < n; j++)
                results[j] = {BK_SEND_RETRYABLE, RD_KAFKA_RESP_ERR__TIMED_OUT,
                              "timed out before this message could be sent", -1, -1};
            break;
        }
    }
}

void KafkaSink::finish_batch(bk_send_summary *) {
    if (batches_.empty())
        throw Error(BK_INTERNAL, "kafka: no batch in flight");
    const Batch b = batches_.front(); // a copy: wait_for_reports may forget the batch
    struct Pop {                      // the batch is over whatever happens: later reports are stale
        KafkaSink *s;
        uint32_t gen;
        ~Pop() {
            if (!s->batches_.empty() && s->batches_.front().gen == gen) {
                s->outstanding_ -= std::min(s->outstanding_, s->batches_.front().outstanding);
                s->batches_.pop_front();
            }
        }
    } pop{this, b.gen};
    wait_for_reports(batches_.front());
    kafka_keep_key_order(b.msgs, b.n, b.results, default_topic_);
}

bool KafkaSink::drain_window(size_t window, Clock::time_point deadline) {
    // A large batch goes out in windows: send what is queued now (flush ignores
    // linger.ms) and keep producing once half of it is acknowledged. Letting 10k
    // messages pile up instead makes librdkafka's broker threads wake on linger
    // mid-batch, fight the producing thread for the partition queues and send many
    // small requests; measured on this 2-core machine, windows of 3000 deliver
    // batches of 10k about 1.5x faster with ~30% less CPU per message.
    while (outstanding_ > window / 2) {
        if (Clock::now() >= deadline || sink_interrupted())
            return false;
        // flush() marks the producer as flushing only while it runs (a broker
        // thread that wakes after it returned would still linger): keep it
        // running in 1 ms slices instead of one non-blocking call.
        rd_kafka_flush(rk_, 1);
    }
    return true;
}

void KafkaSink::wait_for_reports(Batch &b) {
    while (b.outstanding > 0) {
        int left = ms_until(b.deadline);
        if (left <= 0 || sink_interrupted())
            break;
        if (batches_.size() == 1) {
            // flush() sends at once, ignoring linger.ms, and serves reports (dr_cb).
            rd_kafka_flush(rk_, std::min(left, kInterruptSliceMs));
        } else {
            // flush() would also wait for the next batch: serve reports only (the
            // next batch's messages behind this one's keep the queues moving).
            rd_kafka_poll(rk_, std::min(left, kInterruptSliceMs));
        }
    }
    if (b.outstanding == 0)
        return;
    // Timed out: take the rest back so that nothing of this batch stays inside
    // librdkafka. Purged messages come back as _PURGE_QUEUE / _PURGE_INFLIGHT (the
    // purge takes a later batch in flight too: its finish reports them).
    log_.push(4, "TIMEOUT",
              std::to_string(b.outstanding) +
                  " message(s) not acknowledged before the timeout: purged, reported retryable");
    rd_kafka_purge(rk_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    auto hard = Clock::now() + std::chrono::seconds(5);
    while (b.outstanding > 0 && Clock::now() < hard)
        rd_kafka_poll(rk_, 10);
    if (b.outstanding > 0) {
        // Not expected: librdkafka still holds messages. With copied payloads they
        // are its own memory; without, rebuild the producer to get them back.
        log_.push(3, "PURGE",
                  std::to_string(b.outstanding) +
                      " message(s) still in the producer after purging");
        if (!copy_payloads_) {
            destroy_producer(); // forgets every batch in flight (b too): all RETRYABLE
            create_producer();
        }
    }
}

void kafka_keep_key_order(const bk_message *msgs, size_t n, bk_send_result *results,
                          const std::string &default_topic) {
    // Once a message fails retryably, a later message of the same partition that
    // was acknowledged must be re-sent too, or the retry would put an older
    // version of a key after a newer one.
    size_t first = 0;
    while (first < n && results[first].code != BK_SEND_RETRYABLE)
        first++;
    if (first == n)
        return; // the common case: nothing failed retryably
    std::set<std::pair<std::string, int32_t>> tainted;
    bool any = false;
    for (size_t i = first; i < n; i++) {
        const bk_message &m = msgs[i];
        std::string t = m.target ? std::string(m.target, m.target_len) : default_topic;
        bk_send_result &r = results[i];
        if (r.code == BK_SEND_RETRYABLE) {
            tainted.emplace(t, r.partition); // -1 (unknown partition) taints the topic
            any = true;
        } else if (any && r.code == BK_SEND_OK &&
                   (tainted.count({t, r.partition}) || tainted.count({t, -1}))) {
            r.code = BK_SEND_RETRYABLE;
            r.message = "re-send to keep per-key order: an earlier message of this partition "
                        "failed (this one was delivered; a duplicate will follow)";
        }
    }
}

void KafkaSink::probe(Clock::time_point deadline) {
    if (fatal_ || rk_ == nullptr) {
        destroy_producer();
        create_producer();
    }
    const struct rd_kafka_metadata *md = nullptr;
    rd_kafka_resp_err_t err =
        rd_kafka_metadata(rk_, 0, nullptr, &md, std::max(1, ms_until(deadline)));
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        throw Error(BK_UNAVAILABLE,
                    std::string("kafka: no broker answered: ") + rd_kafka_err2str(err));
    int brokers = md->broker_cnt;
    rd_kafka_metadata_destroy(md);
    if (brokers == 0)
        throw Error(BK_UNAVAILABLE, "kafka: the cluster reported no brokers");
}

} // namespace bk
