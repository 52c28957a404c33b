// redis_protocol.cpp — the Redis sink's pure parts (URL, command names, error
// classes) and its wire layer (RESP writer, in-place reply reader, socket I/O
// bounded by the batch's deadline). Unit-tested over socketpairs, no server.
#include "sinks/redis_protocol.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "encoding/buf_internal.hpp"
#include "sinks/sink_base.hpp"
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

size_t digits(uint64_t v) {
    size_t d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

char *put_header(char *p, char kind, uint64_t n) {
    *p++ = kind;
    p = std::to_chars(p, p + 20, n).ptr;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

int ms_until(std::chrono::steady_clock::time_point deadline) {
    auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                   std::chrono::steady_clock::now())
                 .count();
    if (d <= 0)
        return 0;
    return static_cast<int>(std::min<int64_t>(d, 1 << 30));
}

[[noreturn]] void io_error(const char *what, int err) {
    throw Error(BK_UNAVAILABLE, std::string("redis: ") + what + ": " + std::strerror(err));
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
                throw Error(BK_INVALID_ARGUMENT,
                            "redis url: only ?db=N is understood after a socket path");
            ep.db = parse_int(query.substr(3), 0, 1 << 20, "database number");
        }
        return ep;
    }
    if (url.compare(0, 9, "rediss://") == 0)
        throw Error(BK_INVALID_ARGUMENT,
                    "redis url: TLS (rediss://) is not supported by this build's hiredis");
    if (url.compare(0, tcp.size(), tcp) != 0)
        throw Error(BK_INVALID_ARGUMENT,
                    "redis url must start with redis:// or unix://, not \"" + url + "\"");
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
        // except the few that describe the server's or the connection's state.
        static const char *const transient[] = {
            "max number of clients", "MULTI calls can not be nested", "EXEC without MULTI"};
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
    std::transform(c.begin(), c.end(), c.begin(),
                   [](unsigned char ch) { return std::tolower(ch); });
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
    throw Error(
        BK_INVALID_ARGUMENT,
        "redis option \"command\" must be xadd, lpush, rpush, publish, set or hset, not \"" + s +
            "\"");
}

void RespWriter::command(const std::string_view *args, size_t n) {
    size_t size = 3 + digits(n);
    for (size_t i = 0; i < n; i++)
        size += 5 + digits(args[i].size()) + args[i].size();
    if (!buf_grow(&buf_, size))
        throw std::bad_alloc();
    char *p = buf_.data + buf_.len;
    p = put_header(p, '*', n);
    for (size_t i = 0; i < n; i++) {
        p = put_header(p, '$', args[i].size());
        p = put(p, args[i].data(), args[i].size());
        *p++ = '\r';
        *p++ = '\n';
    }
    buf_.len = static_cast<size_t>(p - buf_.data);
}

IntArg::IntArg(int64_t v) {
    len = static_cast<size_t>(std::to_chars(buf, buf + sizeof buf, v).ptr - buf);
}

void RespReader::fill(std::chrono::steady_clock::time_point deadline) {
    if (start_ > 0 && (start_ == end_ || start_ > buf_.size() / 2)) {
        std::memmove(buf_.data(), buf_.data() + start_, end_ - start_);
        end_ -= start_;
        start_ = 0;
    }
    if (buf_.size() - end_ < 16384)
        buf_.resize(std::max<size_t>(65536, buf_.size() * 2));
    for (;;) {
        ssize_t r = recv(fd_, buf_.data() + end_, buf_.size() - end_, MSG_DONTWAIT);
        if (r > 0) {
            end_ += static_cast<size_t>(r);
            return;
        }
        if (r == 0)
            throw Error(BK_UNAVAILABLE, "redis: connection closed by the server");
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            io_error("read failed", errno);
        int wait = ms_until(deadline);
        if (wait == 0)
            throw Error(BK_UNAVAILABLE, "redis: timed out waiting for a reply");
        if (sink_interrupted())
            throw Error(BK_UNAVAILABLE, "redis: interrupted while waiting for a reply");
        pollfd pfd{fd_, POLLIN, 0};
        int pr = poll(&pfd, 1, std::min(wait, kInterruptSliceMs));
        if (pr < 0 && errno != EINTR)
            io_error("poll failed", errno);
    }
}

void RespReader::drain_available() {
    if (buf_.size() - end_ < 16384)
        buf_.resize(std::max<size_t>(65536, buf_.size() * 2));
    ssize_t r = recv(fd_, buf_.data() + end_, buf_.size() - end_, MSG_DONTWAIT);
    if (r > 0)
        end_ += static_cast<size_t>(r);
}

RespItem RespReader::next(std::chrono::steady_clock::time_point deadline) {
    for (;;) {
        if (start_ == end_) { // nothing buffered (buf_ may not even be allocated yet)
            fill(deadline);
            continue;
        }
        // A line: type byte, text, CRLF.
        const char *b = buf_.data() + start_;
        const char *e = buf_.data() + end_;
        const char *lf =
            static_cast<const char *>(std::memchr(b, '\n', static_cast<size_t>(e - b)));
        if (lf == nullptr || lf == b || lf[-1] != '\r') {
            if (lf != nullptr)
                throw Error(BK_UNAVAILABLE, "redis: protocol error (line without CR)");
            fill(deadline);
            continue;
        }
        RespItem it;
        it.type = *b;
        std::string_view line(b + 1, static_cast<size_t>(lf - 1 - (b + 1)));
        size_t consumed = static_cast<size_t>(lf + 1 - b);
        switch (it.type) {
        case '+':
        case '-':
            it.str = line;
            start_ += consumed;
            return it;
        case ':':
        case '*':
        case '$': {
            auto r = std::from_chars(line.data(), line.data() + line.size(), it.n);
            if (r.ec != std::errc() || r.ptr != line.data() + line.size())
                throw Error(BK_UNAVAILABLE, "redis: protocol error (bad length)");
            if (it.type != '$' || it.n < 0) {
                start_ += consumed;
                return it;
            }
            size_t need = consumed + static_cast<size_t>(it.n) + 2;
            if (static_cast<size_t>(e - b) < need) {
                if (buf_.size() - start_ < need)
                    buf_.resize(std::max(buf_.size() * 2, need + 65536));
                fill(deadline);
                continue;
            }
            it.str = std::string_view(b + consumed, static_cast<size_t>(it.n));
            start_ += need;
            return it;
        }
        default:
            throw Error(BK_UNAVAILABLE,
                        std::string("redis: protocol error (reply type '") + it.type + "')");
        }
    }
}

void send_all(int fd, std::string_view data, RespReader &reader,
              std::chrono::steady_clock::time_point deadline) {
    const char *p = data.data();
    size_t left = data.size();
    while (left > 0) {
        ssize_t w = send(fd, p, left, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            left -= static_cast<size_t>(w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            io_error("write failed", errno);
        int wait = ms_until(deadline);
        if (wait == 0)
            throw Error(BK_UNAVAILABLE, "redis: timed out writing the batch");
        if (sink_interrupted())
            throw Error(BK_UNAVAILABLE, "redis: interrupted while writing the batch");
        pollfd pfd{fd, POLLOUT | POLLIN, 0};
        int pr = poll(&pfd, 1, std::min(wait, kInterruptSliceMs));
        if (pr < 0 && errno != EINTR)
            io_error("poll failed", errno);
        if (pr == 0)
            continue;
        if (pfd.revents & POLLIN)
            reader.drain_available(); // replies (+QUEUED) arriving while we write
    }
}

} // namespace bk
