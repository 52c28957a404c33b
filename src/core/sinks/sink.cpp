// sink.cpp — the C ABI of batchkit/sink.h over the Sink classes.
//
// Every entry point is noexcept via bk::guarded(); results are always fully
// written, also when a sink throws (they then say RETRYABLE with the reason).
#include "batchkit/sink.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>

#include "sinks/kafka_sink.hpp"
#include "sinks/redis_sink.hpp"
#include "sinks/sink_base.hpp"
#include "util/abi_guard.hpp"

// A batch between bk_sink_start_batch and bk_sink_finish_batch.
struct BkInFlight {
    int64_t seq;
    size_t n;
    bk_send_result *results;
    uint64_t mark; // message_mark() when it started: its result strings come later
    bool failed;   // start threw: results say RETRYABLE, the sink does not know it
    int64_t fence_before;
};

struct bk_sink {
    std::unique_ptr<bk::Sink> impl;
    std::deque<BkInFlight> in_flight;
};

namespace bk {

void LogQueue::push(int level, std::string_view facility, std::string_view message) noexcept {
    try {
        std::lock_guard<std::mutex> g(mu_);
        if (entries_.size() >= kCapacity) {
            // The oldest line goes; the next one to be read reports it as dropped.
            uint64_t lost = 1 + entries_.front().dropped_before;
            entries_.pop_front();
            if (entries_.empty())
                dropped_ += lost;
            else
                entries_.front().dropped_before += lost;
        }
        entries_.push_back(Entry{level, std::string(facility), std::string(message), dropped_});
        dropped_ = 0;
    } catch (...) {
        // Out of memory while logging: the line is lost, nothing else is.
    }
}

bool LogQueue::pop(bk_log_entry *out) noexcept {
    std::lock_guard<std::mutex> g(mu_);
    if (entries_.empty())
        return false;
    const Entry &e = entries_.front();
    out->level = e.level;
    std::snprintf(out->facility, sizeof out->facility, "%s", e.facility.c_str());
    std::snprintf(out->message, sizeof out->message, "%s", e.message.c_str());
    out->dropped = e.dropped_before;
    entries_.pop_front();
    return true;
}

Options::Options(const bk_sink_option *opts, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (opts[i].key == nullptr)
            throw Error(BK_INVALID_ARGUMENT, "sink option with a NULL key");
        std::string v = opts[i].value ? opts[i].value : "";
        kv_[opts[i].key] = v;
        ordered_.emplace_back(opts[i].key, v);
    }
}

std::optional<std::string> Options::get(const std::string &key) const {
    auto it = kv_.find(key);
    if (it == kv_.end())
        return std::nullopt;
    return it->second;
}

std::string Options::get_or(const std::string &key, const std::string &dflt) const {
    auto v = get(key);
    return v ? *v : dflt;
}

int64_t Options::get_int(const std::string &key, int64_t dflt, int64_t lo, int64_t hi) const {
    auto v = get(key);
    if (!v)
        return dflt;
    int64_t x = 0;
    const char *b = v->data(), *e = v->data() + v->size();
    auto r = std::from_chars(b, e, x);
    if (r.ec != std::errc() || r.ptr != e || x < lo || x > hi)
        throw Error(BK_INVALID_ARGUMENT, "option \"" + key + "\" must be an integer between " +
                                             std::to_string(lo) + " and " + std::to_string(hi) +
                                             ", not \"" + *v + "\"");
    return x;
}

Sink::Sink(const Options &opts)
    : name_(opts.get_or("name", "")),
      send_timeout_ms_(static_cast<int>(opts.get_int("send_timeout_ms", 30000, 1, 3600000))) {}

int64_t Sink::read_fence(Clock::time_point) {
    throw Error(BK_INVALID_ARGUMENT, "this kind of sink has no fence");
}

void Sink::drop_messages_before(uint64_t mark) noexcept {
    while (!messages_.empty() && msg_first_ < mark) {
        messages_.pop_front();
        msg_first_++;
    }
}

const char *Sink::keep_message(std::string_view msg) {
    if (msg.empty())
        return "";
    if (!messages_.empty() && messages_.back() == msg)
        return messages_.back().c_str();
    messages_.emplace_back(msg);
    return messages_.back().c_str();
}

const char *op_name(uint8_t op) noexcept {
    switch (op) {
    case BK_OP_INSERT:
        return "insert";
    case BK_OP_UPDATE:
        return "update";
    case BK_OP_DELETE:
        return "delete";
    default:
        return "message";
    }
}

size_t format_idempotency_key(char *buf, std::string_view name, int64_t seq) noexcept {
    std::memcpy(buf, name.data(), name.size());
    char *p = buf + name.size();
    *p++ = ':';
    p = std::to_chars(p, p + 21, seq).ptr;
    return static_cast<size_t>(p - buf);
}

} // namespace bk

namespace {

void fill_all(bk_send_result *results, size_t n, uint8_t code, const char *msg) noexcept {
    for (size_t i = 0; i < n; i++)
        results[i] = bk_send_result{code, -1, msg, -1, -1};
}

} // namespace

namespace bk {
const volatile int *g_interrupt_flag = nullptr;
bool sink_interrupted() noexcept { return g_interrupt_flag != nullptr && *g_interrupt_flag != 0; }
} // namespace bk

extern "C" {

bk_sink *bk_sink_open(const char *kind, const bk_sink_option *opts, size_t nopts, bk_status *st) {
    bk_sink *out = nullptr;
    bk::guarded(st, [&] {
        if (kind == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "sink kind is NULL");
        if (nopts != 0 && opts == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "sink options are NULL");
        bk::Options o(opts, nopts);
        auto s = std::make_unique<bk_sink>();
        if (std::strcmp(kind, "kafka") == 0)
            s->impl = std::make_unique<bk::KafkaSink>(o);
        else if (std::strcmp(kind, "redis") == 0)
            s->impl = std::make_unique<bk::RedisSink>(o);
        else
            throw bk::Error(BK_INVALID_ARGUMENT,
                            std::string("unknown sink kind \"") + kind + "\" (kafka or redis)");
        out = s.release();
    });
    return out;
}

void bk_sink_close(bk_sink *sink) {
    if (sink == nullptr)
        return;
    try {
        delete sink;
    } catch (...) {
        // Destructors do not throw; this is belt and braces for the ABI promise.
    }
}

} // extern "C"

namespace {

// Counts the results into *sum and turns them into the call's code and status.
bk_code summarize(bk_send_result *results, size_t n, bk_send_summary *sum, bk_status *st) noexcept {
    sum->ok = sum->retryable = sum->rejected = 0;
    const char *first_retryable = nullptr, *first_rejected = nullptr;
    for (size_t i = 0; i < n; i++) {
        switch (results[i].code) {
        case BK_SEND_OK:
            sum->ok++;
            break;
        case BK_SEND_REJECTED:
            sum->rejected++;
            if (!first_rejected)
                first_rejected = results[i].message;
            break;
        default:
            results[i].code = BK_SEND_RETRYABLE;
            sum->retryable++;
            if (!first_retryable)
                first_retryable = results[i].message;
        }
    }
    if (sum->retryable) {
        bk::set_status(st, BK_UNAVAILABLE, first_retryable);
        return BK_UNAVAILABLE;
    }
    if (sum->rejected) {
        bk::set_status(st, BK_REJECTED, first_rejected);
        return BK_REJECTED;
    }
    bk_status_clear(st);
    return BK_OK;
}

const char *kept_or(bk::Sink &s, const char *msg, const char *fallback) noexcept {
    try {
        return s.keep_message(msg ? msg : fallback);
    } catch (...) {
        return fallback;
    }
}

} // namespace

extern "C" {

bk_code bk_sink_start_batch(bk_sink *sink, const bk_message *msgs, size_t n, int64_t batch_seq,
                            bk_send_result *results, int timeout_ms, bk_status *st) {
    if (sink == nullptr || sink->impl == nullptr || (msgs == nullptr && n != 0) ||
        (results == nullptr && n != 0)) {
        if (results != nullptr)
            fill_all(results, n, BK_SEND_RETRYABLE, "invalid call: NULL sink or messages");
        bk::set_status(st, BK_INVALID_ARGUMENT,
                       "bk_sink_start_batch: NULL sink, messages or results");
        return BK_INVALID_ARGUMENT;
    }
    if (sink->in_flight.size() >= BK_SINK_MAX_IN_FLIGHT ||
        (!sink->in_flight.empty() && batch_seq <= sink->in_flight.back().seq)) {
        fill_all(results, n, BK_SEND_RETRYABLE, "invalid call: not started");
        bk::set_status(st, BK_INVALID_ARGUMENT,
                       "bk_sink_start_batch: too many in flight, or batch_seq not increasing");
        return BK_INVALID_ARGUMENT;
    }
    bk::Sink &s = *sink->impl;
    s.drop_messages_before(sink->in_flight.empty() ? s.message_mark()
                                                   : sink->in_flight.front().mark);
    BkInFlight f{batch_seq, n, results, s.message_mark(), false, -1};
    return bk::guarded(st, [&] {
        sink->in_flight.push_back(f); // may throw bad_alloc: then nothing started
        int t = timeout_ms > 0 ? timeout_ms : s.send_timeout_ms();
        auto deadline = bk::Clock::now() + std::chrono::milliseconds(t);
        fill_all(results, n, BK_SEND_RETRYABLE, "not sent");
        try {
            s.start_batch(msgs, n, batch_seq, results, deadline);
        } catch (const std::exception &e) {
            // The sink does not know this batch: it fails, and so does what follows it.
            sink->in_flight.back().failed = true;
            fill_all(results, n, BK_SEND_RETRYABLE, kept_or(s, e.what(), "internal error"));
            s.poison();
        } catch (...) {
            sink->in_flight.back().failed = true;
            fill_all(results, n, BK_SEND_RETRYABLE, "internal error");
            s.poison();
        }
    });
}

bk_code bk_sink_finish_batch(bk_sink *sink, int64_t batch_seq, bk_send_summary *summary,
                             bk_status *st) {
    if (summary)
        *summary = bk_send_summary{0, 0, 0, 0, -1};
    if (sink == nullptr || sink->impl == nullptr || sink->in_flight.empty() ||
        sink->in_flight.front().seq != batch_seq) {
        bk::set_status(st, BK_INVALID_ARGUMENT,
                       "bk_sink_finish_batch: batch_seq is not the oldest batch in flight");
        return BK_INVALID_ARGUMENT;
    }
    bk::Sink &s = *sink->impl;
    BkInFlight f = sink->in_flight.front();
    sink->in_flight.pop_front();
    s.drop_messages_before(f.mark);
    bk_send_summary sum{0, 0, 0, 0, -1};
    if (!f.failed) {
        bk_code rc = bk::guarded(st, [&] { s.finish_batch(&sum); });
        if (rc != BK_OK) {
            // The sink threw: nothing is known to be delivered.
            fill_all(f.results, f.n, BK_SEND_RETRYABLE,
                     f.n ? kept_or(s, st ? st->message : nullptr, "internal error") : "");
            sum = bk_send_summary{0, f.n, 0, 0, sum.fence_before};
            s.poison();
            if (summary)
                *summary = sum;
            if (rc == BK_REJECTED || rc == BK_INVALID_ARGUMENT)
                rc = BK_UNAVAILABLE; // results say RETRYABLE: keep the return code consistent
            if (st)
                st->code = rc;
            return rc;
        }
    }
    bk_code rc = summarize(f.results, f.n, &sum, st);
    if (summary)
        *summary = sum;
    return rc;
}

int bk_sink_in_flight(const bk_sink *sink) {
    return sink ? static_cast<int>(sink->in_flight.size()) : 0;
}

bk_code bk_sink_send_batch(bk_sink *sink, const bk_message *msgs, size_t n, int64_t batch_seq,
                           bk_send_result *results, int timeout_ms, bk_send_summary *summary,
                           bk_status *st) {
    if (summary)
        *summary = bk_send_summary{0, 0, 0, 0, -1};
    if (results == nullptr && n != 0) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "bk_sink_send_batch: results is NULL");
        return BK_INVALID_ARGUMENT;
    }
    if (sink == nullptr || sink->impl == nullptr || (msgs == nullptr && n != 0)) {
        fill_all(results, n, BK_SEND_RETRYABLE, "invalid call: NULL sink or messages");
        bk::set_status(st, BK_INVALID_ARGUMENT, "bk_sink_send_batch: NULL sink or messages");
        return BK_INVALID_ARGUMENT;
    }
    bk_code rc = bk_sink_start_batch(sink, msgs, n, batch_seq, results, timeout_ms, st);
    if (rc != BK_OK)
        return rc;
    return bk_sink_finish_batch(sink, batch_seq, summary, st);
}

bk_code bk_sink_probe(bk_sink *sink, int timeout_ms, bk_status *st) {
    return bk::guarded(st, [&] {
        if (sink == nullptr || sink->impl == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_sink_probe: NULL sink");
        if (!sink->in_flight.empty())
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_sink_probe: a batch is in flight");
        int t = timeout_ms > 0 ? timeout_ms : sink->impl->send_timeout_ms();
        sink->impl->probe(bk::Clock::now() + std::chrono::milliseconds(t));
    });
}

bk_code bk_sink_read_fence(bk_sink *sink, int64_t *fence, int timeout_ms, bk_status *st) {
    return bk::guarded(st, [&] {
        if (sink == nullptr || sink->impl == nullptr || fence == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_sink_read_fence: NULL argument");
        if (!sink->in_flight.empty())
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_sink_read_fence: a batch is in flight");
        int t = timeout_ms > 0 ? timeout_ms : sink->impl->send_timeout_ms();
        *fence = sink->impl->read_fence(bk::Clock::now() + std::chrono::milliseconds(t));
    });
}

int bk_sink_next_log(bk_sink *sink, bk_log_entry *out) {
    if (sink == nullptr || sink->impl == nullptr || out == nullptr)
        return 0;
    return sink->impl->log().pop(out) ? 1 : 0;
}

void bk_sink_set_interrupt_flag(const volatile int *flag) { bk::g_interrupt_flag = flag; }

const char *bk_send_code_name(uint8_t code) {
    switch (code) {
    case BK_SEND_OK:
        return "ok";
    case BK_SEND_REJECTED:
        return "rejected";
    default:
        return "retryable";
    }
}
}
