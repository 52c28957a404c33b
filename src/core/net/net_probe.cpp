// net_probe.cpp — one connection attempt with a deadline (see batchkit/net_probe.h).
//
// Lifetime: the work runs on a detached helper thread that owns a shared_ptr
// to the result. The caller waits on a condition variable up to the deadline;
// if it gives up first it just drops its reference, and the helper (whose own
// connect attempts are bounded by the same deadline; only getaddrinfo can
// outlive it) frees the state when it ends. The helper starts with every
// signal blocked: a Postgres backend's signal handlers must run on its own
// thread.
#include "batchkit/net_probe.h"

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "util/abi_guard.hpp"

namespace {

using Clock = std::chrono::steady_clock;

struct ProbeState {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bk_code code = BK_INTERNAL;
    std::string message;
};

class Fd {
  public:
    explicit Fd(int fd) : fd_(fd) {}
    ~Fd() {
        if (fd_ >= 0)
            ::close(fd_);
    }
    Fd(const Fd &) = delete;
    Fd &operator=(const Fd &) = delete;
    int get() const { return fd_; }

  private:
    int fd_;
};

std::string errno_text(int err) {
    std::string s = std::strerror(err);
    // "Connection refused" -> "connection refused": it ends up mid-sentence.
    if (!s.empty() && s[0] >= 'A' && s[0] <= 'Z' && !(s.size() > 1 && s[1] >= 'A' && s[1] <= 'Z'))
        s[0] = static_cast<char>(s[0] - 'A' + 'a');
    return s;
}

// Non-blocking connect, then poll until writable or the deadline. Returns 0 or an errno.
int connect_until(int family, const sockaddr *addr, socklen_t len, Clock::time_point deadline) {
    Fd fd(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0)
        return errno;
    if (::connect(fd.get(), addr, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return errno;
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0)
            return ETIMEDOUT;
        pollfd p{fd.get(), POLLOUT, 0};
        int n = ::poll(&p, 1, static_cast<int>(left.count()));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno;
        if (n == 0)
            return ETIMEDOUT;
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
            return errno;
        return soerr;
    }
}

void probe_unix(const std::string &path, Clock::time_point deadline, bk_code &code,
                std::string &msg) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (path.size() >= sizeof sa.sun_path) {
        code = BK_INVALID_ARGUMENT;
        msg = "socket path is too long";
        return;
    }
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    int err = connect_until(AF_UNIX, reinterpret_cast<sockaddr *>(&sa), sizeof sa, deadline);
    code = err == 0 ? BK_OK : BK_UNAVAILABLE;
    msg = err == 0 ? "" : errno_text(err);
}

void probe_tcp(const std::string &host, int port, Clock::time_point deadline, bk_code &code,
               std::string &msg) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    addrinfo *res = nullptr;
    std::string service = std::to_string(port);
    int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
        // AI_ADDRCONFIG hides ::1 on hosts with only loopback IPv6; retry without it.
        hints.ai_flags = 0;
        rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    }
    if (rc != 0) {
        code = BK_UNAVAILABLE;
        msg = "could not resolve host \"" + host +
              "\": " + (rc == EAI_SYSTEM ? errno_text(errno) : std::string(::gai_strerror(rc)));
        return;
    }
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
    int last = ECONNREFUSED;
    for (addrinfo *ai = res; ai != nullptr; ai = ai->ai_next) {
        last = connect_until(ai->ai_family, ai->ai_addr, ai->ai_addrlen, deadline);
        if (last == 0) {
            code = BK_OK;
            msg.clear();
            return;
        }
        if (last == ETIMEDOUT)
            break;
    }
    code = BK_UNAVAILABLE;
    msg = errno_text(last);
}

} // namespace

extern "C" bk_code bk_net_probe(const char *host, int port, const char *unix_path, int timeout_ms,
                                bk_status *st) {
    if (unix_path == nullptr && (host == nullptr || host[0] == '\0' || port <= 0 || port > 65535)) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "a probe needs a host and a port from 1 to 65535");
        return BK_INVALID_ARGUMENT;
    }
    if (timeout_ms <= 0) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "a probe needs a positive timeout");
        return BK_INVALID_ARGUMENT;
    }
    bk_code result = BK_INTERNAL;
    std::string message;
    bk_code rc = bk::guarded(st, [&] {
        auto state = std::make_shared<ProbeState>();
        auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
        std::string h = host ? host : "";
        std::string path = unix_path ? unix_path : "";
        bool is_unix = unix_path != nullptr;

        // The helper inherits the signal mask of the thread that creates it.
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        try {
            std::thread([state, h, port, path, is_unix, deadline] {
                bk_code c = BK_INTERNAL;
                std::string m;
                try {
                    if (is_unix)
                        probe_unix(path, deadline, c, m);
                    else
                        probe_tcp(h, port, deadline, c, m);
                } catch (...) {
                    c = BK_INTERNAL;
                    m = "probe failed unexpectedly";
                }
                std::lock_guard<std::mutex> lk(state->mu);
                state->code = c;
                state->message = std::move(m);
                state->done = true;
                state->cv.notify_all();
            }).detach();
        } catch (...) {
            pthread_sigmask(SIG_SETMASK, &old, nullptr);
            throw;
        }
        pthread_sigmask(SIG_SETMASK, &old, nullptr);

        std::unique_lock<std::mutex> lk(state->mu);
        if (!state->cv.wait_until(lk, deadline, [&] { return state->done; })) {
            result = BK_UNAVAILABLE;
            message = "no answer within " + std::to_string(timeout_ms) + " ms";
        } else {
            result = state->code;
            message = state->message;
        }
    });
    if (rc != BK_OK)
        return rc;
    if (result != BK_OK)
        bk::set_status(st, result, message.c_str());
    return result;
}
