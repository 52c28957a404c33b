// redis_url.hpp — the Redis sink's `url` option.
//
//   redis://[[user]:password@]host[:port][/db]     TCP (port 6379, db 0 by default)
//   unix://[[user]:password@]/path/to/socket[?db=N] Unix socket
//   rediss://...                                    refused: this build has no TLS
//
// user and password may be percent-encoded (they must be when they contain
// '@', ':', '/', '?' or '#'); IPv6 hosts go in brackets. Error messages never
// repeat the user information, so a password never lands in a log.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace bk::options {

struct RedisUrl {
    bool is_unix = false;
    std::string host; // TCP: name or address (IPv6 without brackets)
    int port = 6379;  // TCP
    std::string path; // Unix socket path
    int64_t db = 0;
    bool has_user = false; // userinfo present (possibly with an empty user)
    std::string user;      // decoded
    bool has_password = false;
    std::string password; // decoded
    std::string raw_user; // as written (still percent-encoded)
    std::string raw_password;

    // Canonical form, with default port and db spelled out; the password is
    // replaced by "***" when mask is true.
    std::string normalized(bool mask) const;
};

// Throws OptionError (naming option "url") when the URL is not valid.
RedisUrl parse_redis_url(std::string_view url);

} // namespace bk::options
