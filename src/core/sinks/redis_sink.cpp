// redis_sink.cpp — one connection per sink; each batch is one fenced MULTI/EXEC.
//
// Per batch, one write and one read:
//     WATCH batchkit:fence:<sink>; GET it; MULTI; <the batch's commands>;
//     SET fence <batch_seq>
// then, once GET's reply is in, EXEC — or DISCARD when the fence is already
// >= batch_seq: the batch was applied before (a replay after a crash), so every
// message is reported ok and nothing is written again (effectively-once), except
// one whose command failed inside that transaction (replay_types). The
// queued commands cost Redis some parsing on a replay, which is rare; in exchange
// the batch travels with the fence check instead of one round trip later.
// WATCH makes EXEC fail (nil) if anyone else moved the fence in between (a second
// worker for the same sink), so a batch is never applied twice.
//
// Why not a Lua script doing the same atomically: it would run every command
// through the interpreter (several times slower than a pipelined MULTI), could not
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
#include <unordered_map>

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

std::string item_text(const RespItem &r) {
    switch (r.type) {
    case '+':
    case '-':
        return std::string(r.str);
    case '$':
        return r.n < 0 ? "(nil)" : std::string(r.str);
    case ':':
        return std::to_string(r.n);
    default:
        return r.n < 0 ? "(nil)" : "(array of " + std::to_string(r.n) + ")";
    }
}

// A reply from hiredis (used only while connecting) as text.
std::string hiredis_text(const redisReply *r) {
    if (r == nullptr)
        return "(no reply)";
    if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS ||
        r->type == REDIS_REPLY_ERROR)
        return std::string(r->str, r->len);
    return "(reply type " + std::to_string(r->type) + ")";
}

} // namespace

RedisSink::RedisSink(const Options &opts)
    : Sink(opts), ep_(parse_redis_url(opts.get_or("url", "redis://127.0.0.1:6379/0"))),
      command_(parse_redis_command(opts.get_or("command", ""))),
      row_format_(opts.get_or("format", "envelope") == "row"),
      idempotency_field_(opts.get_or("idempotency_field", "true") != "false"),
      default_key_(opts.get_or("key", "")), maxlen_(opts.get_int("maxlen", 0, 0, INT64_MAX)),
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
    reader_.reset(-1);
    last_error_ = why;
    next_connect_ = Clock::now(); // the first reconnect may happen at once
    log_.push(4, "redis", "connection dropped: " + why);
}

void RedisSink::connect(Clock::time_point deadline, bool ignore_backoff) {
    if (ctx_ != nullptr)
        return;
    auto now = Clock::now();
    if (!ignore_backoff && now < next_connect_) {
        auto wait =
            std::chrono::duration_cast<std::chrono::milliseconds>(next_connect_ - now).count();
        throw Error(BK_UNAVAILABLE, "redis: not connected (" + last_error_ + "); next attempt in " +
                                        std::to_string(wait) + " ms");
    }
    timeval tv = to_timeval(std::min<int64_t>(connect_timeout_ms_, ms_until(deadline)));
    redisContext *c = ep_.unix_socket ? redisConnectUnixWithTimeout(ep_.path.c_str(), tv)
                                      : redisConnectWithTimeout(ep_.host.c_str(), ep_.port, tv);
    std::string where = ep_.unix_socket ? ep_.path : ep_.host + ":" + std::to_string(ep_.port);
    std::string err;
    auto handshake = [&](std::vector<std::string> args, const char *what) {
        std::vector<const char *> argv;
        std::vector<size_t> lens;
        for (auto &a : args) {
            argv.push_back(a.c_str());
            lens.push_back(a.size());
        }
        auto *r = static_cast<redisReply *>(
            redisCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()));
        if (r == nullptr)
            err = std::string(what) + " failed: " + c->errstr;
        else if (r->type == REDIS_REPLY_ERROR)
            err = std::string(what) + " failed: " + hiredis_text(r);
        if (r)
            freeReplyObject(r);
    };
    if (c == nullptr) {
        err = "out of memory";
    } else if (c->err) {
        err = c->errstr;
    } else {
        redisEnableKeepAlive(c);
        redisSetTimeout(c, tv); // bounds the handshake below
        if (!ep_.password.empty()) {
            if (ep_.user.empty())
                handshake({"AUTH", ep_.password}, "AUTH");
            else
                handshake({"AUTH", ep_.user, ep_.password}, "AUTH");
        }
        if (err.empty() && ep_.db != 0)
            handshake({"SELECT", std::to_string(ep_.db)}, "SELECT");
        if (err.empty()) {
            ctx_ = c;
            conn_id_++;
            reader_.reset(c->fd);
            if (connect_failures_ > 0 || !last_error_.empty())
                log_.push(6, "redis", "connected to " + where);
            connect_failures_ = 0;
            last_error_.clear();
            return;
        }
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

RespItem RedisSink::next(Clock::time_point deadline) {
    try {
        return reader_.next(deadline);
    } catch (const Error &e) {
        disconnect(e.what());
        throw;
    }
}

void RedisSink::send(std::string_view bytes, Clock::time_point deadline) {
    if (ctx_ == nullptr)
        throw Error(BK_UNAVAILABLE, "redis: not connected");
    try {
        send_all(ctx_->fd, bytes, reader_, deadline);
    } catch (const Error &e) {
        disconnect(e.what());
        throw;
    }
}

void RedisSink::skip_item(const RespItem &r, Clock::time_point deadline) {
    if (r.type == '*')
        for (int64_t i = 0; i < r.n; i++)
            skip_item(next(deadline), deadline);
}

int64_t RedisSink::parse_fence(const RespItem &r) const {
    if (r.is_nil())
        return 0;
    if (r.type != '$')
        throw Error(BK_UNAVAILABLE,
                    "redis: reading fence key " + fence_key_ + " failed: " + item_text(r));
    std::string s(r.str);
    char *end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (errno != 0 || end == s.c_str() || *end != '\0')
        throw Error(BK_UNAVAILABLE, "redis: fence key " + fence_key_ + " holds \"" + s +
                                        "\", not a batch sequence number");
    return v;
}

size_t RedisSink::append_commands(const bk_message &m, const char **why) {
    std::string_view key = key_of(m);
    if (key.empty()) {
        *why = "no key: the message has no target and the sink no \"key\" option";
        return 0;
    }
    std::string_view value = m.value ? std::string_view(m.value, m.value_len) : std::string_view();
    const bool del = m.op == BK_OP_DELETE;
    switch (command_) {
    case RedisCommand::Xadd: {
        // Fields: data, idempotency_key (unless idempotency_field=false), and for
        // format=row (no envelope around the row) op and table. The envelope already
        // holds op, table and seq; every extra field pair costs Redis ~0.5 us per entry
        // to parse, queue in the MULTI and store (redis-benchmark and bench_sinks).
        char idbuf[256];
        std::string idlong;
        std::string_view idkey;
        if (name_.size() + 24 <= sizeof idbuf) {
            idkey = std::string_view(idbuf, format_idempotency_key(idbuf, name_, m.seq));
        } else {
            idlong = name_ + ":" + std::to_string(m.seq);
            idkey = idlong;
        }
        IntArg maxlen(maxlen_);
        args_.clear();
        for (std::string_view a : {std::string_view("XADD"), key})
            args_.push_back(a);
        if (maxlen_)
            for (std::string_view a :
                 {std::string_view("MAXLEN"), std::string_view("~"), maxlen.view()})
                args_.push_back(a);
        for (std::string_view a : {std::string_view("*"), std::string_view("data"), value})
            args_.push_back(a);
        if (idempotency_field_) { // ~0.5 us of Redis CPU per entry (docs/sinks.md)
            args_.push_back("idempotency_key");
            args_.push_back(idkey);
        }
        if (row_format_ && m.op != BK_OP_MESSAGE) {
            args_.push_back("op");
            args_.push_back(op_name(m.op));
        }
        if (row_format_ && m.table) {
            args_.push_back("table");
            args_.push_back(std::string_view(m.table, m.table_len));
        }
        out_.command(args_.data(), args_.size());
        return 1;
    }
    case RedisCommand::Lpush:
        out_.command({"LPUSH", key, value});
        return 1;
    case RedisCommand::Rpush:
        out_.command({"RPUSH", key, value});
        return 1;
    case RedisCommand::Publish:
        out_.command({"PUBLISH", key, value});
        return 1;
    case RedisCommand::Set:
        if (del) {
            out_.command({"DEL", key});
        } else if (ttl_ms_) {
            IntArg ttl(ttl_ms_);
            out_.command({"SET", key, value, "PX", ttl.view()});
        } else {
            out_.command({"SET", key, value});
        }
        return 1;
    case RedisCommand::Hset: {
        if (del) {
            out_.command({"DEL", key});
            return 1;
        }
        if (m.nfields == 0 || m.fields == nullptr) {
            *why = "hset: the message carries no fields (one per column)";
            return 0;
        }
        size_t cmds = 0;
        args_.clear();
        args_.push_back("HSET");
        args_.push_back(key);
        for (size_t i = 0; i < m.nfields; i++)
            if (m.fields[i].value) {
                args_.push_back(std::string_view(m.fields[i].name, m.fields[i].name_len));
                args_.push_back(std::string_view(m.fields[i].value, m.fields[i].value_len));
            }
        if (args_.size() > 2) {
            out_.command(args_.data(), args_.size());
            cmds++;
        }
        args_.clear();
        args_.push_back("HDEL");
        args_.push_back(key);
        for (size_t i = 0; i < m.nfields; i++)
            if (!m.fields[i].value) // SQL NULL: the field disappears from the hash
                args_.push_back(std::string_view(m.fields[i].name, m.fields[i].name_len));
        if (args_.size() > 2) {
            out_.command(args_.data(), args_.size());
            cmds++;
        }
        return cmds;
    }
    }
    return 0;
}

void RedisSink::fail(InFlight &b, const std::string &why) noexcept {
    const char *msg = "redis: the batch failed";
    try {
        msg = keep_message(why);
    } catch (...) {
    }
    for (size_t i = 0; i < b.n; i++)
        if (b.results[i].code != BK_SEND_REJECTED)
            b.results[i] = {BK_SEND_RETRYABLE, -1, msg, -1, -1};
    b.awaiting = false;
    b.clean = false;
    poisoned_ = true;
}

void RedisSink::start_batch(const bk_message *msgs, size_t n, int64_t batch_seq,
                            bk_send_result *results, Clock::time_point deadline) {
    in_flight_.emplace_back();
    InFlight &b = in_flight_.back();
    b.seq = batch_seq;
    b.n = n;
    b.results = results;
    b.deadline = deadline;
    try {
        start(b, msgs);
    } catch (const std::exception &e) {
        // Out of memory half-way: the server may hold part of a MULTI; start afresh.
        disconnect(std::string("sending the batch failed: ") + e.what());
        fail(b, std::string("redis: ") + e.what());
    }
}

void RedisSink::start(InFlight &b, const bk_message *msgs) {
    const size_t n = b.n;
    bk_send_result *results = b.results;
    const Clock::time_point deadline = b.deadline;
    InFlight *prev = in_flight_.size() > 1 ? &in_flight_[in_flight_.size() - 2] : nullptr;
    if (poisoned_) {
        // An earlier batch of the pipeline failed: this one must wait for its replay.
        for (size_t i = 0; i < n; i++)
            if (results[i].code != BK_SEND_REJECTED)
                results[i] = {BK_SEND_RETRYABLE, -1,
                              "redis: not sent: an earlier batch in flight failed", -1, -1};
        return;
    }
    std::string unavailable; // why the batch cannot go out (it is still encoded to
                             // the end, so that invalid messages are reported REJECTED)
    bool tried_connect = false;
    size_t sent = 0;               // bytes of out_ already on the socket
    auto stream = [&](bool last) { // send what is encoded so far
        if (!unavailable.empty())
            return;
        try {
            if (!tried_connect) {
                tried_connect = true;
                connect(deadline, false);
                b.conn = conn_id_;
            }
            if (!last)
                send(out_.data().substr(sent), deadline);
        } catch (const Error &e) {
            if (e.code() != BK_UNAVAILABLE)
                throw;
            unavailable = e.what();
        }
    };
    // Encode, sending every kChunk bytes as they are ready so that Redis parses and
    // queues the start of the batch while the rest is being encoded (and while it
    // still executes the previous batch). Nothing touches the network before the
    // first valid message.
    static constexpr size_t kChunk = 256 * 1024;
    out_.clear();
    out_.command({"WATCH", fence_key_});
    out_.command({"GET", fence_key_});
    out_.command({"MULTI"});
    size_t valid = 0;
    for (size_t i = 0; i < n; i++) {
        const char *why = nullptr;
        size_t k = append_commands(msgs[i], &why);
        if (k == 0) {
            results[i] = {BK_SEND_REJECTED, -1, why ? why : "invalid message", -1, -1};
            continue;
        }
        valid++;
        b.cmd_owner.insert(b.cmd_owner.end(), k, static_cast<uint32_t>(i));
        if (out_.data().size() - sent >= kChunk) {
            stream(false);
            if (unavailable.empty())
                sent = out_.data().size();
        }
    }
    if (valid == 0) {
        b.clean = true; // nothing was sent: the first chunk needs a valid message
        return;
    }
    stream(true); // connects if no chunk went out yet
    if (!unavailable.empty()) {
        fail(b, unavailable);
        return;
    }
    IntArg seq(b.seq);
    out_.command({"SET", fence_key_, seq.view()});

    try {
        send(out_.data().substr(sent), deadline);
        // The previous batch's replies come first on the connection: read them, so
        // that its outcome decides this batch's EXEC.
        if (prev != nullptr && prev->awaiting)
            complete(*prev);
        if (poisoned_) {
            // The previous batch failed, so this one must not be applied: its EXEC
            // would set the fence past the failed batch, whose replay would then be
            // skipped. Its queued commands are DISCARDed (the WATCH/GET replies
            // are read with the rest, in complete()).
            b.problem = "not applied: an earlier batch in flight failed";
            RespWriter tail;
            tail.command({"DISCARD"});
            send(tail.data(), deadline);
            b.awaiting = true;
            b.exec = false;
            b.watch_read = false;
            return;
        }
        RespItem watch = next(deadline);
        if (watch.is_error())
            b.problem = "WATCH failed: " + item_text(watch);
        RespItem get = next(deadline);
        if (get.is_error()) {
            b.problem = "reading the fence failed: " + item_text(get);
        } else {
            try {
                b.fence_before = parse_fence(get);
            } catch (const Error &e) {
                if (b.problem.empty())
                    b.problem = e.what();
            }
        }
        b.replay = b.problem.empty() && b.fence_before >= b.seq;
        b.exec = b.problem.empty() && !b.replay;
        b.watch_read = true;
        // Decide before Redis runs anything queued: EXEC, or DISCARD the queue.
        RespWriter tail;
        tail.command({b.exec ? "EXEC" : "DISCARD"});
        if (b.replay)
            replay_types(b, msgs, tail);
        send(tail.data(), deadline);
        b.awaiting = true;
    } catch (const Error &e) {
        if (e.code() != BK_UNAVAILABLE)
            throw;
        fail(b, e.what());
    }
}

// The type a key must have (or not exist) for the command to succeed; nullptr
// when the command accepts any key.
static const char *required_type(RedisCommand c) {
    switch (c) {
    case RedisCommand::Xadd:
        return "stream";
    case RedisCommand::Lpush:
    case RedisCommand::Rpush:
        return "list";
    case RedisCommand::Hset:
        return "hash";
    case RedisCommand::Set:
    case RedisCommand::Publish:
        break;
    }
    return nullptr;
}

// Why a replay asks for key types: a command that failed inside an applied
// EXEC (WRONGTYPE: the key holds another type) was reported REJECTED and is
// dead-lettered when the batch is acknowledged. If the worker died before that,
// the replay finds the fence moved and skips the batch; without a check, every
// message would then count as delivered, the failed one included, and it would
// be in neither Redis nor dead_letters. WRONGTYPE is the failure that can occur
// inside an applied transaction (syntax, size and OOM errors abort the whole
// EXEC), and the key's type still says whether it did, unless the key was
// changed between the crash and the replay. SET, DEL and PUBLISH accept any key.
void RedisSink::replay_types(InFlight &b, const bk_message *msgs, RespWriter &w) {
    if (required_type(command_) == nullptr)
        return;
    std::unordered_map<std::string_view, uint32_t> index;
    for (size_t i = 0; i < b.n; i++) {
        const bk_message &m = msgs[i];
        if (b.results[i].code == BK_SEND_REJECTED)
            continue; // refused before sending
        if (command_ == RedisCommand::Hset && m.op == BK_OP_DELETE)
            continue; // DEL
        std::string_view key = key_of(m);
        auto it = index.find(key);
        if (it == index.end()) {
            it = index.emplace(key, static_cast<uint32_t>(b.ntypes++)).first;
            w.command({"TYPE", key});
        }
        b.type_checks.emplace_back(static_cast<uint32_t>(i), it->second);
    }
}

void RedisSink::complete(InFlight &b) {
    const size_t n = b.n;
    bk_send_result *results = b.results;
    const Clock::time_point deadline = b.deadline;
    b.awaiting = false;
    if (ctx_ == nullptr || b.conn != conn_id_) {
        fail(b, "redis: the connection was lost before the batch's replies were read" +
                    (last_error_.empty() ? std::string() : ": " + last_error_));
        return;
    }
    try {
        if (!b.watch_read) {
            next(deadline); // WATCH
            next(deadline); // GET
        }
        RespItem multi = next(deadline);
        const size_t ncmds = b.cmd_owner.size();
        std::vector<std::string> queue_errors; // refused at queueing time
        std::vector<uint32_t> queue_error_cmd;
        for (size_t c = 0; c <= ncmds; c++) { // + the fence SET
            RespItem q = next(deadline);
            if (q.is_error()) {
                queue_errors.emplace_back(q.str);
                queue_error_cmd.push_back(static_cast<uint32_t>(c));
            }
        }
        RespItem exec = next(deadline);
        std::vector<std::string> types; // replay_types' replies, read before anything returns
        for (size_t t = 0; t < b.ntypes; t++) {
            RespItem r = next(deadline);
            types.push_back(r.is_error() ? std::string("-") + std::string(r.str)
                                         : std::string(r.str));
        }
        if (!b.problem.empty()) {
            fail(b, "redis: " + b.problem);
            return;
        }
        if (multi.is_error()) {
            fail(b, "redis: MULTI failed: " + item_text(multi));
            return;
        }
        if (b.replay) {
            for (size_t i = 0; i < n; i++)
                if (results[i].code != BK_SEND_REJECTED)
                    results[i] = {BK_SEND_OK, 0, "", -1, -1};
            const char *expect = required_type(command_);
            bool warned = false;
            for (const auto &[i, t] : b.type_checks) {
                const std::string &type = types[t];
                if (!type.empty() && type[0] == '-') {
                    // TYPE refused (an ACL without it, ...): the replay cannot tell a
                    // failed command from an applied one; as before the check, the
                    // message counts as delivered, and the log says so once.
                    if (!warned)
                        log_.push(4, "redis",
                                  "replayed batch " + std::to_string(b.seq) + ": TYPE failed (" +
                                      type.substr(1) +
                                      "): a message that failed inside the applied "
                                      "transaction cannot be found and counts as delivered");
                    warned = true;
                    continue;
                }
                if (type != expect && type != "none")
                    results[i] = {BK_SEND_REJECTED, -1,
                                  keep_message("WRONGTYPE: the key holds a " + type + ", not a " +
                                               expect +
                                               " (found when this batch was replayed: Redis had "
                                               "applied it, this message's command had failed)"),
                                  -1, -1};
            }
            b.clean = true;
            return;
        }
        if (exec.is_nil()) {
            fail(b,
                 "redis: the fence key " + fence_key_ +
                     " changed during the batch (another writer for this sink?); nothing applied");
            return;
        }
        if (exec.is_error()) {
            // EXECABORT: nothing was applied. Commands refused at queueing time say why.
            std::string why = "redis: transaction aborted, nothing applied: " + item_text(exec);
            if (!queue_errors.empty())
                why += " (first: " + queue_errors.front() + ")";
            fail(b, why);
            for (size_t e = 0; e < queue_errors.size(); e++) {
                uint32_t c = queue_error_cmd[e];
                if (c < ncmds && redis_classify_error(queue_errors[e]) == BK_SEND_REJECTED)
                    results[b.cmd_owner[c]] = {BK_SEND_REJECTED, -1, keep_message(queue_errors[e]),
                                               -1, -1};
            }
            return;
        }
        if (exec.type != '*' || exec.n != static_cast<int64_t>(ncmds + 1)) {
            std::string why = "redis: unexpected EXEC reply " + item_text(exec);
            disconnect(why);
            fail(b, why);
            return;
        }
        // The transaction ran. Each message is ok unless one of its commands failed.
        for (size_t c = 0; c < ncmds; c++) {
            RespItem e = next(deadline);
            bk_send_result &r = results[b.cmd_owner[c]];
            if (c == 0 || b.cmd_owner[c - 1] != b.cmd_owner[c])
                r = {BK_SEND_OK, 0, "", -1, -1}; // a message's commands are contiguous
            if (e.is_error() && r.code == BK_SEND_OK) {
                // The transaction ran and moved the fence: a replay of this batch would be
                // skipped, so even a "retryable" error of one command cannot be retried by
                // replaying. The message is refused for good (dead letters keep it, with
                // the error, for replay_dead_letters) instead of being silently lost.
                const char *why =
                    redis_classify_error(e.str) == BK_SEND_RETRYABLE
                        ? keep_message("failed inside an applied transaction (the fence moved): " +
                                       std::string(e.str))
                        : keep_message(e.str);
                r = {BK_SEND_REJECTED, -1, why, -1, -1};
            }
            skip_item(e, deadline);
        }
        RespItem fence_set = next(deadline);
        if (fence_set.is_error())
            log_.push(3, "redis", "setting the fence failed: " + item_text(fence_set));
        b.clean = true; // refused messages are settled: the next batch may apply
    } catch (const Error &e) {
        if (e.code() != BK_UNAVAILABLE)
            throw;
        fail(b, e.what());
    }
}

void RedisSink::finish_batch(bk_send_summary *summary) {
    if (in_flight_.empty())
        throw Error(BK_INTERNAL, "redis: no batch in flight");
    struct Pop { // the batch is forgotten whatever happens
        RedisSink *s;
        ~Pop() {
            s->in_flight_.pop_front();
            if (s->in_flight_.empty())
                s->poisoned_ = false; // the caller saw every failure: it replays in order
        }
    } pop{this};
    InFlight &b = in_flight_.front();
    try {
        if (b.awaiting)
            complete(b);
    } catch (...) {
        disconnect("reading the batch's replies failed");
        poisoned_ = true;
        throw;
    }
    summary->fence_before = b.fence_before;
    summary->skipped_by_fence = b.replay ? 1 : 0;
}

void RedisSink::probe(Clock::time_point deadline) {
    connect(deadline, true);
    RespWriter w;
    w.command({"PING"});
    send(w.data(), deadline);
    RespItem r = next(deadline);
    if (r.is_error())
        throw Error(BK_UNAVAILABLE, "redis: PING failed: " + item_text(r));
}

int64_t RedisSink::read_fence(Clock::time_point deadline) {
    connect(deadline, true);
    RespWriter w;
    w.command({"GET", fence_key_});
    send(w.data(), deadline);
    RespItem r = next(deadline);
    if (r.is_error())
        throw Error(BK_UNAVAILABLE, "redis: GET " + fence_key_ + " failed: " + item_text(r));
    return parse_fence(r);
}

} // namespace bk
