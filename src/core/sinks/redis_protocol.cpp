// redis_protocol.cpp — the Redis sink's pure parts: URL, command names, RESP
// encoding and the classification of error replies (unit-tested without a server).
#include "sinks/redis_sink.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "util/abi_guard.hpp"

namespace bk {

namespace {

std::string percent_decode(const std::string &s) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '%' && i + 2 < s.size()) {
            int v = 0;
            auto r = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
            if (r.ec == std::errc() && r.ptr == s.data() + i + 3) {
                out += static_cast<char>(v);
                i += 2;
                continue;
            }
        }
        out += s[i];
    }
    return out;
}

int parse_int(const std::string &s, int lo, int hi, const std::string &what) {
    int v = 0;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || v < lo || v > hi)
        throw Error(BK_INVALID_ARGUMENT, "redis url: bad " + what + " \"" + s + "\"");
    return v;
}

} // namespace

RedisEndpoint parse_redis_url(const std::string &url) {
    RedisEndpoint ep;
    const std::string tcp = "redis://", unix_ = "unix://";
    if (url.compare(0, unix_.size(), unix_) == 0) {
        ep.unix_socket = true;
        std::string rest = url.substr(unix_.size());
        size_t q = rest.find('?');
        ep.path = rest.substr(0, q);
        if (ep.path.empty() || ep.path[0] != '/')
            throw Error(BK_INVALID_ARGUMENT, "redis url: unix:// needs an absolute socket path");
        if (q != std::string::npos) {
            std::string query = rest.substr(q + 1);
            if (query.compare(0, 3, "db=") != 0)
                throw Error(BK_INVALID_ARGUMENT, "redis url: only ?db=N is understood after a socket path");
            ep.db = parse_int(query.substr(3), 0, 1 << 20, "database number");
        }
        return ep;
    }
    if (url.compare(0, 9, "rediss://") == 0)
        throw Error(BK_INVALID_ARGUMENT, "redis url: TLS (rediss://) is not supported by this build's hiredis");
    if (url.compare(0, tcp.size(), tcp) != 0)
        throw Error(BK_INVALID_ARGUMENT, "redis url must start with redis:// or unix://, not \"" + url + "\"");
    std::string rest = url.substr(tcp.size());
    size_t slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    if (slash != std::string::npos) {
        std::string db = rest.substr(slash + 1);
        if (!db.empty())
            ep.db = parse_int(db, 0, 1 << 20, "database number");
    }
    size_t at = authority.rfind('@');
    if (at != std::string::npos) {
        std::string cred = authority.substr(0, at);
        authority = authority.substr(at + 1);
        size_t colon = cred.find(':');
        if (colon == std::string::npos) {
            ep.password = percent_decode(cred); // redis://secret@host: a password only
        } else {
            ep.user = percent_decode(cred.substr(0, colon));
            ep.password = percent_decode(cred.substr(colon + 1));
        }
    }
    std::string host = authority;
    if (!host.empty() && host[0] == '[') { // [::1]:6379
        size_t close = host.find(']');
        if (close == std::string::npos)
            throw Error(BK_INVALID_ARGUMENT, "redis url: unclosed '[' in host");
        ep.host = host.substr(1, close - 1);
        if (close + 1 < host.size()) {
            if (host[close + 1] != ':')
                throw Error(BK_INVALID_ARGUMENT, "redis url: bad host \"" + host + "\"");
            ep.port = parse_int(host.substr(close + 2), 1, 65535, "port");
        }
    } else {
        size_t colon = host.rfind(':');
        if (colon != std::string::npos) {
            ep.port = parse_int(host.substr(colon + 1), 1, 65535, "port");
            host = host.substr(0, colon);
        }
        if (!host.empty())
            ep.host = host;
    }
    return ep;
}

bk_send_code redis_classify_error(std::string_view reply) {
    std::string_view word = reply.substr(0, reply.find(' '));
    // The command or its key is at fault: the same command fails the same way again.
    if (word == "WRONGTYPE")
        return BK_SEND_REJECTED;
    if (word == "ERR") {
        // Generic errors are about the command (arity, syntax, bad integer, ...),
        // except the few that describe the server's state.
        static const char *const transient[] = {"max number of clients",
                                                "MULTI calls can not be nested",
                                                "EXEC without MULTI"};
        for (const char *t : transient)
            if (reply.find(t) != std::string_view::npos)
                return BK_SEND_RETRYABLE;
        return BK_SEND_REJECTED;
    }
    // OOM, LOADING, BUSY, MISCONF, READONLY, MASTERDOWN, NOREPLICAS, NOAUTH,
    // NOPERM (an ACL fixes every message at once), EXECABORT, CLUSTERDOWN, MOVED,
    // TRYAGAIN and anything unknown: the server, not the message.
    return BK_SEND_RETRYABLE;
}

RedisCommand parse_redis_command(const std::string &s) {
    std::string c = s;
    std::transform(c.begin(), c.end(), c.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (c == "xadd")
        return RedisCommand::Xadd;
    if (c == "lpush")
        return RedisCommand::Lpush;
    if (c == "rpush")
        return RedisCommand::Rpush;
    if (c == "publish")
        return RedisCommand::Publish;
    if (c == "set")
        return RedisCommand::Set;
    if (c == "hset")
        return RedisCommand::Hset;
    throw Error(BK_INVALID_ARGUMENT,
                "redis option \"command\" must be xadd, lpush, rpush, publish, set or hset, not \"" +
                    s + "\"");
}

void RespWriter::header(char kind, uint64_t n) {
    char tmp[24];
    tmp[0] = kind;
    char *e = std::to_chars(tmp + 1, tmp + 22, n).ptr;
    *e++ = '\r';
    *e++ = '\n';
    buf_.append(tmp, static_cast<size_t>(e - tmp));
}

void RespWriter::array(size_t n) { header('*', n); }

void RespWriter::bulk(const char *p, size_t n) {
    header('$', n);
    buf_.append(p, n);
    buf_.append("\r\n", 2);
}

void RespWriter::bulk_int(int64_t v) {
    char tmp[24];
    char *e = std::to_chars(tmp, tmp + sizeof tmp, v).ptr;
    bulk(tmp, static_cast<size_t>(e - tmp));
}

} // namespace bk
