// redis_sink.cpp — one connection per sink; each batch is one fenced MULTI/EXEC.
//
// Per batch (two round trips):
//   1. WATCH batchkit:fence:<sink>; GET it. A fence >= batch_seq means this batch
//      was applied before (a replay after a crash): UNWATCH and report every
//      message ok without writing anything — effectively-once.
//   2. MULTI; the batch's commands; SET fence batch_seq; EXEC, in one write.
//      WATCH makes EXEC fail (nil) if anyone else moved the fence in between (a
//      second worker for the same sink), so a batch is never applied twice.
// Why not a Lua script doing the same atomically: it would run every command
// through the interpreter (several times slower than a pipelined MULTI), cannot
// be killed once it has written (a long batch would block Redis past
// lua-time-limit with no way out but SHUTDOWN NOSAVE), and needs EVAL rights that
// ACL setups often withhold. WATCH gives the same no-double-apply guarantee.
//
// Errors: an error reply to one command inside EXEC (WRONGTYPE, ...) affects that
// message only — Redis applies the rest of the transaction. Any I/O error or
// timeout drops the connection and makes the whole batch RETRYABLE: whether EXEC
// ran is unknown, and replaying under the same batch_seq is safe thanks to the fence.
#include "sinks/redis_sink.hpp"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>

#include "batchkit/core.h"
#include "util/abi_guard.hpp"

namespace bk {

namespace {

int64_t ms_until(Clock::time_point deadline) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
}

timeval to_timeval(int64_t ms) {
    if (ms < 1)
        ms = 1;
    timeval tv;
    tv.tv_sec = static_cast<time_t>(ms / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
    return tv;
}

double random01() {
    static thread_local std::minstd_rand rng(std::random_device{}());
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
}

std::string reply_text(const redisReply *r) {
    if (r == nullptr)
        return "(no reply)";
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        return std::string(r->str, r->len);
    case REDIS_REPLY_INTEGER:
        return std::to_string(r->integer);
    case REDIS_REPLY_NIL:
        return "(nil)";
    default:
        return "(array)";
    }
}

// Any reply that is not an error, for commands whose value we do not need.
bool is_error(const redisReply *r) { return r == nullptr || r->type == REDIS_REPLY_ERROR; }

} // namespace

void RedisSink::ReplyDeleter::operator()(void *r) const noexcept {
    if (r)
        freeReplyObject(r);
}

RedisSink::RedisSink(const Options &opts)
    : Sink(opts), ep_(parse_redis_url(opts.get_or("url", "redis://127.0.0.1:6379/0"))),
      command_(parse_redis_command(opts.get_or("command", ""))),
      default_key_(opts.get_or("key", "")),
      maxlen_(opts.get_int("maxlen", 0, 0, INT64_MAX)),
      ttl_ms_(opts.get_int("ttl_ms", 0, 0, INT64_MAX)),
      connect_timeout_ms_(static_cast<int>(opts.get_int("connect_timeout_ms", 2000, 1, 600000))) {
    if (name_.empty())
        throw Error(BK_INVALID_ARGUMENT, "a redis sink needs its \"name\" (the fence key uses it)");
    fence_key_ = "batchkit:fence:" + name_;
}

RedisSink::~RedisSink() {
    if (ctx_)
        redisFree(ctx_);
}

void RedisSink::disconnect(const std::string &why) noexcept {
    if (ctx_ == nullptr)
        return;
    redisFree(ctx_);
    ctx_ = nullptr;
    last_error_ = why;
    next_connect_ = Clock::now(); // the first reconnect may happen at once
    log_.push(4, "redis", "connection dropped: " + why);
}

void RedisSink::connect(Clock::time_point deadline, bool ignore_backoff) {
    if (ctx_ != nullptr)
        return;
    auto now = Clock::now();
    if (!ignore_backoff && now < next_connect_) {
        auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_connect_ - now).count();
        throw Error(BK_UNAVAILABLE, "redis: not connected (" + last_error_ + "); next attempt in " +
                                        std::to_string(wait) + " ms");
    }
    int64_t left = ms_until(deadline);
    timeval tv = to_timeval(std::min<int64_t>(connect_timeout_ms_, left));
    redisContext *c = ep_.unix_socket ? redisConnectUnixWithTimeout(ep_.path.c_str(), tv)
                                      : redisConnectWithTimeout(ep_.host.c_str(), ep_.port, tv);
    std::string where = ep_.unix_socket ? ep_.path : ep_.host + ":" + std::to_string(ep_.port);
    std::string err;
    if (c == nullptr) {
        err = "out of memory";
    } else if (c->err) {
        err = c->errstr;
    } else {
        redisEnableKeepAlive(c);
        redisSetTimeout(c, tv);
        ctx_ = c;
        try {
            if (!ep_.password.empty()) {
                std::vector<const char *> argv{"AUTH"};
                std::vector<size_t> lens{4};
                if (!ep_.user.empty()) {
                    argv.push_back(ep_.user.c_str());
                    lens.push_back(ep_.user.size());
                }
                argv.push_back(ep_.password.c_str());
                lens.push_back(ep_.password.size());
                redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data());
                Reply r = read_reply();
                if (is_error(r.get()))
                    err = "AUTH failed: " + reply_text(r.get());
            }
            if (err.empty() && ep_.db != 0) {
                std::string db = std::to_string(ep_.db);
                const char *argv[] = {"SELECT", db.c_str()};
                size_t lens[] = {6, db.size()};
                redisAppendCommandArgv(c, 2, argv, lens);
                Reply r = read_reply();
                if (is_error(r.get()))
                    err = "SELECT " + db + " failed: " + reply_text(r.get());
            }
        } catch (const Error &e) {
            err = e.what();
            c = ctx_; // read_reply may have dropped it already
        }
        if (err.empty()) {
            if (connect_failures_ > 0 || !last_error_.empty())
                log_.push(6, "redis", "connected to " + where);
            connect_failures_ = 0;
            last_error_.clear();
            return;
        }
        ctx_ = nullptr;
    }
    if (c)
        redisFree(c);
    connect_failures_++;
    uint32_t delay = bk_backoff_delay_ms(connect_failures_, 100, 5000, random01());
    next_connect_ = Clock::now() + std::chrono::milliseconds(delay);
    last_error_ = "cannot connect to " + where + ": " + err;
    log_.push(4, "redis", last_error_ + "; next attempt in " + std::to_string(delay) + " ms");
    throw Error(BK_UNAVAILABLE, "redis: " + last_error_);
}

void RedisSink::set_io_timeout(Clock::time_point deadline) {
    if (ctx_ && redisSetTimeout(ctx_, to_timeval(ms_until(deadline))) != REDIS_OK) {
        disconnect("cannot set the socket timeout");
        throw Error(BK_UNAVAILABLE, "redis: cannot set the socket timeout");
    }
}

RedisSink::Reply RedisSink::read_reply() {
    void *r = nullptr;
    if (ctx_ == nullptr)
        throw Error(BK_UNAVAILABLE, "redis: not connected");
    if (redisGetReply(ctx_, &r) != REDIS_OK || r == nullptr) {
        std::string why = ctx_->err ? ctx_->errstr : "no reply";
        if (ctx_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
            why = "timed out waiting for redis";
        else if (ctx_->err == REDIS_ERR_EOF)
            why = "connection closed by redis";
        disconnect(why);
        throw Error(BK_UNAVAILABLE, "redis: " + why);
    }
    return Reply(static_cast<redisReply *>(r));
}

void RedisSink::send_raw(const std::string &bytes) {
    if (ctx_ == nullptr)
        throw Error(BK_UNAVAILABLE, "redis: not connected");
    if (redisAppendFormattedCommand(ctx_, bytes.data(), bytes.size()) != REDIS_OK)
        throw std::bad_alloc();
}

int64_t RedisSink::parse_fence(const redisReply *r) {
    if (r->type == REDIS_REPLY_NIL)
        return 0;
    if (r->type != REDIS_REPLY_STRING)
        throw Error(BK_UNAVAILABLE, "redis: fence key " + fence_key_ + " holds " + reply_text(r));
    std::string s(r->str, r->len);
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (errno != 0 || end == s.c_str() || *end != '\0')
        throw Error(BK_UNAVAILABLE, "redis: fence key " + fence_key_ + " holds \"" + s +
                                        "\", not a batch sequence number");
    return v;
}

size_t RedisSink::append_commands(const bk_message &m, const char **why) {
    std::string_view key = m.target ? std::string_view(m.target, m.target_len)
                                    : std::string_view(default_key_);
    if (key.empty()) {
        *why = "no key: the message has no target and the sink no \"key\" option";
        return 0;
    }
    std::string_view value = m.value ? std::string_view(m.value, m.value_len) : std::string_view();
    const bool del = m.op == BK_OP_DELETE;
    switch (command_) {
    case RedisCommand::Xadd: {
        char idkey[256];
        bool fits = name_.size() + 24 <= sizeof idkey;
        size_t argc = 3 + (maxlen_ ? 3 : 0) + 2 + (m.op != BK_OP_MESSAGE ? 2 : 0) +
                      (m.table ? 2 : 0) + 2;
        out_.array(argc);
        out_.bulk("XADD", 4);
        out_.bulk(key);
        if (maxlen_) {
            out_.bulk("MAXLEN", 6);
            out_.bulk("~", 1);
            out_.bulk_int(maxlen_);
        }
        out_.bulk("*", 1);
        out_.bulk("data", 4);
        out_.bulk(value);
        if (m.op != BK_OP_MESSAGE) {
            out_.bulk("op", 2);
            out_.bulk(op_name(m.op));
        }
        if (m.table) {
            out_.bulk("table", 5);
            out_.bulk(m.table, m.table_len);
        }
        out_.bulk("idempotency_key", 15);
        if (fits) {
            out_.bulk(idkey, format_idempotency_key(idkey, name_, m.seq));
        } else {
            std::string k = name_ + ":" + std::to_string(m.seq);
            out_.bulk(k);
        }
        return 1;
    }
    case RedisCommand::Lpush:
    case RedisCommand::Rpush:
    case RedisCommand::Publish:
        out_.array(3);
        out_.bulk(command_ == RedisCommand::Lpush   ? "LPUSH"
                  : command_ == RedisCommand::Rpush ? "RPUSH"
                                                    : "PUBLISH");
        out_.bulk(key);
        out_.bulk(value);
        return 1;
    case RedisCommand::Set:
        if (del) {
            out_.array(2);
            out_.bulk("DEL", 3);
            out_.bulk(key);
            return 1;
        }
        out_.array(ttl_ms_ ? 5 : 3);
        out_.bulk("SET", 3);
        out_.bulk(key);
        out_.bulk(value);
        if (ttl_ms_) {
            out_.bulk("PX", 2);
            out_.bulk_int(ttl_ms_);
        }
        return 1;
    case RedisCommand::Hset: {
        if (del) {
            out_.array(2);
            out_.bulk("DEL", 3);
            out_.bulk(key);
            return 1;
        }
        if (m.nfields == 0 || m.fields == nullptr) {
            *why = "hset: the message carries no fields (one per column)";
            return 0;
        }
        size_t present = 0;
        for (size_t i = 0; i < m.nfields; i++)
            present += m.fields[i].value != nullptr;
        size_t cmds = 0;
        if (present) {
            out_.array(2 + 2 * present);
            out_.bulk("HSET", 4);
            out_.bulk(key);
            for (size_t i = 0; i < m.nfields; i++)
                if (m.fields[i].value) {
                    out_.bulk(m.fields[i].name, m.fields[i].name_len);
                    out_.bulk(m.fields[i].value, m.fields[i].value_len);
                }
            cmds++;
        }
        if (present < m.nfields) { // SQL NULL: the field disappears from the hash
            out_.array(2 + (m.nfields - present));
            out_.bulk("HDEL", 4);
            out_.bulk(key);
            for (size_t i = 0; i < m.nfields; i++)
                if (!m.fields[i].value)
                    out_.bulk(m.fields[i].name, m.fields[i].name_len);
            cmds++;
        }
        return cmds;
    }
    }
    return 0;
}

void RedisSink::send_batch(const bk_message *msgs, size_t n, int64_t batch_seq,
                           bk_send_result *results, Clock::time_point deadline,
                           bk_send_summary *summary) {
    summary->fence_before = -1;
    // Encode first: invalid messages are rejected without touching the network.
    out_.clear();
    cmd_owner_.clear();
    out_.array(1);
    out_.bulk("MULTI", 5);
    size_t valid = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = nullptr;
        size_t k = append_commands(msgs[i], &why);
        if (k == 0) {
            results[i] = {BK_SEND_REJECTED, -1, why ? why : "invalid message", -1, -1};
            continue;
        }
        valid++;
        cmd_owner_.insert(cmd_owner_.end(), k, static_cast<uint32_t>(i));
    }
    if (valid == 0)
        return;
    out_.array(3);
    out_.bulk("SET", 3);
    out_.bulk(fence_key_);
    out_.bulk_int(batch_seq);
    out_.array(1);
    out_.bulk("EXEC", 4);

    auto fail_all = [&](const std::string &why) {
        const char *msg = keep_message(why);
        for (size_t i = 0; i < n; i++)
            if (results[i].code != BK_SEND_REJECTED)
                results[i] = {BK_SEND_RETRYABLE, -1, msg, -1, -1};
    };
    try {
        connect(deadline, false);
        set_io_timeout(deadline);

        // Round trip 1: read the fence under WATCH.
        RespWriter head;
        head.array(2);
        head.bulk("WATCH", 5);
        head.bulk(fence_key_);
        head.array(2);
        head.bulk("GET", 3);
        head.bulk(fence_key_);
        send_raw(head.data());
        Reply watch = read_reply();
        Reply get = read_reply();
        if (is_error(watch.get()) || is_error(get.get())) {
            std::string why = "redis: reading the fence failed: " +
                              reply_text(is_error(watch.get()) ? watch.get() : get.get());
            disconnect(why);
            throw Error(BK_UNAVAILABLE, why);
        }
        int64_t fence = parse_fence(get.get());
        summary->fence_before = fence;
        if (fence >= batch_seq) {
            head.clear();
            head.array(1);
            head.bulk("UNWATCH", 7);
            send_raw(head.data());
            read_reply();
            for (size_t i = 0; i < n; i++)
                if (results[i].code != BK_SEND_REJECTED)
                    results[i] = {BK_SEND_OK, 0, "", -1, -1};
            summary->skipped_by_fence = 1;
            return;
        }

        // Round trip 2: the whole transaction in one write.
        send_raw(out_.data());
        Reply multi = read_reply();
        if (is_error(multi.get())) {
            std::string why = "redis: MULTI failed: " + reply_text(multi.get());
            disconnect(why);
            throw Error(BK_UNAVAILABLE, why);
        }
        const size_t ncmds = cmd_owner_.size();
        std::vector<std::string> queue_errors; // errors at queueing time, by command
        std::vector<uint32_t> queue_error_cmd;
        for (size_t c = 0; c <= ncmds; c++) { // + the fence SET
            Reply q = read_reply();
            if (is_error(q.get())) {
                queue_errors.push_back(reply_text(q.get()));
                queue_error_cmd.push_back(static_cast<uint32_t>(c));
            }
            if ((c & 1023) == 1023 && Clock::now() > deadline) {
                disconnect("timed out reading the transaction's replies");
                throw Error(BK_UNAVAILABLE, "redis: timed out during the batch");
            }
        }
        Reply exec = read_reply();
        if (exec->type == REDIS_REPLY_NIL) {
            fail_all("redis: the fence key " + fence_key_ +
                     " changed during the batch (another writer for this sink?); nothing applied");
            return;
        }
        if (exec->type == REDIS_REPLY_ERROR) {
            // EXECABORT: nothing was applied. Commands refused at queueing time say why.
            std::string why = "redis: transaction aborted, nothing applied: " + reply_text(exec.get());
            if (!queue_errors.empty())
                why += " (first: " + queue_errors.front() + ")";
            fail_all(why);
            for (size_t e = 0; e < queue_errors.size(); e++) {
                uint32_t c = queue_error_cmd[e];
                if (c >= ncmds)
                    continue;
                bk_send_code code = redis_classify_error(queue_errors[e]);
                if (code == BK_SEND_REJECTED)
                    results[cmd_owner_[c]] = {BK_SEND_REJECTED, -1, keep_message(queue_errors[e]),
                                              -1, -1};
            }
            return;
        }
        if (exec->type != REDIS_REPLY_ARRAY || exec->elements != ncmds + 1) {
            std::string why = "redis: unexpected EXEC reply " + reply_text(exec.get());
            disconnect(why);
            throw Error(BK_UNAVAILABLE, why);
        }
        // The transaction ran. Each message is ok unless one of its commands failed.
        for (size_t c = 0; c < ncmds; c++) {
            bk_send_result &r = results[cmd_owner_[c]];
            if (c == 0 || cmd_owner_[c - 1] != cmd_owner_[c])
                r = {BK_SEND_OK, 0, "", -1, -1}; // a message's commands are contiguous
            const redisReply *e = exec->element[c];
            if (e->type == REDIS_REPLY_ERROR && r.code == BK_SEND_OK) {
                std::string text = reply_text(e);
                r = {static_cast<uint8_t>(redis_classify_error(text)), -1, keep_message(text), -1,
                     -1};
            }
        }
        if (is_error(exec->element[ncmds]))
            log_.push(3, "redis", "setting the fence failed: " + reply_text(exec->element[ncmds]));
    } catch (const Error &e) {
        if (e.code() != BK_UNAVAILABLE)
            throw;
        fail_all(e.what());
    }
}

void RedisSink::probe(Clock::time_point deadline) {
    connect(deadline, true);
    set_io_timeout(deadline);
    RespWriter w;
    w.array(1);
    w.bulk("PING", 4);
    send_raw(w.data());
    Reply r = read_reply();
    if (is_error(r.get()))
        throw Error(BK_UNAVAILABLE, "redis: PING failed: " + reply_text(r.get()));
}

int64_t RedisSink::read_fence(Clock::time_point deadline) {
    connect(deadline, true);
    set_io_timeout(deadline);
    RespWriter w;
    w.array(2);
    w.bulk("GET", 3);
    w.bulk(fence_key_);
    send_raw(w.data());
    Reply r = read_reply();
    if (is_error(r.get()))
        throw Error(BK_UNAVAILABLE, "redis: GET " + fence_key_ + " failed: " + reply_text(r.get()));
    return parse_fence(r.get());
}

} // namespace bk
