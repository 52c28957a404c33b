// redis_url.cpp — parsing the Redis sink's `url` option (see redis_url.hpp).
#include "options/redis_url.hpp"

#include <cctype>
#include <string>

#include "options/option_error.hpp"

namespace bk::options {

namespace {

constexpr int64_t kMaxDb = 2147483647; // Redis' `databases` is an int
constexpr size_t kUnixPathMax = 107;   // sizeof(sockaddr_un.sun_path) - 1 on Linux

const char *kForms = "Use redis://[user:password@]host[:port][/db] or "
                     "unix://[user:password@]/path/to/socket[?db=N].";

[[noreturn]] void bad(const std::string &what, const std::string &hint = kForms) {
    throw OptionError("invalid Redis URL in option \"url\": " + what, "", hint);
}

int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

std::string percent_decode(std::string_view s, const char *part) {
    std::string out;
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] != '%') {
            out.push_back(s[i]);
            continue;
        }
        if (i + 2 >= s.size() || hexval(s[i + 1]) < 0 || hexval(s[i + 2]) < 0)
            bad(std::string("bad percent-encoding in the ") + part);
        out.push_back(static_cast<char>(hexval(s[i + 1]) * 16 + hexval(s[i + 2])));
        i += 2;
    }
    return out;
}

bool all_digits(std::string_view s) {
    if (s.empty())
        return false;
    for (char c : s)
        if (c < '0' || c > '9')
            return false;
    return true;
}

int64_t parse_db(std::string_view s) {
    if (!all_digits(s) || s.size() > 10)
        bad("the database is not a number from 0 to 2147483647");
    int64_t v = std::stoll(std::string(s));
    if (v > kMaxDb)
        bad("the database is not a number from 0 to 2147483647");
    return v;
}

bool host_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

void parse_userinfo(std::string_view ui, RedisUrl &u) {
    u.has_user = true;
    size_t colon = ui.find(':');
    if (colon == std::string_view::npos) {
        u.raw_user = std::string(ui);
    } else {
        u.raw_user = std::string(ui.substr(0, colon));
        u.raw_password = std::string(ui.substr(colon + 1));
        u.has_password = true;
        u.password = percent_decode(u.raw_password, "password");
    }
    u.user = percent_decode(u.raw_user, "user name");
}

} // namespace

RedisUrl parse_redis_url(std::string_view url) {
    RedisUrl u;
    size_t sep = url.find("://");
    if (sep == std::string_view::npos)
        bad("it has no scheme");
    std::string scheme(url.substr(0, sep));
    for (char &c : scheme)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view rest = url.substr(sep + 3);

    if (scheme == "rediss")
        throw OptionError("TLS not supported: option \"url\" uses rediss://, but batchkit's Redis "
                          "client is built without TLS",
                          "",
                          "Use redis:// (on a trusted network, or through a TLS tunnel such as "
                          "stunnel or spiped).");
    if (scheme != "redis" && scheme != "unix")
        bad("unknown scheme \"" + scheme.substr(0, 16) + "\"");

    if (scheme == "unix") {
        u.is_unix = true;
        u.port = 0;
        size_t slash = rest.find('/');
        if (slash == std::string_view::npos)
            bad("a unix:// URL needs an absolute socket path, e.g. unix:///run/redis/redis.sock");
        std::string_view authority = rest.substr(0, slash);
        if (!authority.empty()) {
            size_t at = authority.rfind('@');
            if (at == std::string_view::npos || at + 1 != authority.size())
                bad("a unix:// URL has no host: write unix:///path or unix://user:password@/path");
            parse_userinfo(authority.substr(0, at), u);
        }
        std::string_view path = rest.substr(slash);
        size_t q = path.find('?');
        if (q != std::string_view::npos) {
            std::string_view query = path.substr(q + 1);
            path = path.substr(0, q);
            if (query.substr(0, 3) != "db=")
                bad("the only query parameter of a unix:// URL is db=N");
            u.db = parse_db(query.substr(3));
        }
        if (path.size() < 2)
            bad("a unix:// URL needs an absolute socket path, e.g. unix:///run/redis/redis.sock");
        if (path.size() > kUnixPathMax)
            bad("the socket path is longer than " + std::to_string(kUnixPathMax) + " bytes");
        u.path = std::string(path);
        return u;
    }

    // redis://authority[/db]
    size_t end = rest.find_first_of("/?#");
    std::string_view authority = rest.substr(0, end);
    std::string_view tail = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    size_t at = authority.rfind('@');
    std::string_view hostport = authority;
    if (at != std::string_view::npos) {
        parse_userinfo(authority.substr(0, at), u);
        hostport = authority.substr(at + 1);
    }
    if (hostport.empty())
        bad("it has no host");
    std::string_view portpart;
    if (hostport[0] == '[') {
        size_t close = hostport.find(']');
        if (close == std::string_view::npos)
            bad("unclosed '[' in the host");
        u.host = std::string(hostport.substr(1, close - 1));
        if (u.host.empty())
            bad("empty IPv6 address");
        for (char c : u.host)
            if (!std::isxdigit(static_cast<unsigned char>(c)) && c != ':' && c != '.')
                bad("invalid IPv6 address in brackets");
        std::string_view after = hostport.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':')
                bad("unexpected text after the IPv6 address");
            portpart = after.substr(1);
            if (portpart.empty())
                bad("empty port");
        }
    } else {
        size_t colon = hostport.rfind(':');
        std::string_view h = hostport.substr(0, colon);
        if (colon != std::string_view::npos) {
            portpart = hostport.substr(colon + 1);
            if (portpart.empty())
                bad("empty port");
        }
        if (h.empty())
            bad("it has no host");
        for (char c : h)
            if (!host_char(c))
                bad("invalid character in the host name");
        u.host = std::string(h);
    }
    if (!portpart.empty()) {
        if (!all_digits(portpart) || portpart.size() > 5 || std::stoi(std::string(portpart)) < 1 ||
            std::stoi(std::string(portpart)) > 65535)
            bad("the port is not a number from 1 to 65535");
        u.port = std::stoi(std::string(portpart));
    }
    if (!tail.empty()) {
        if (tail[0] != '/')
            bad("query parameters and fragments are not supported in a redis:// URL; "
                "put the database in the path (redis://host:6379/2)");
        std::string_view db = tail.substr(1);
        if (db.find_first_of("?#") != std::string_view::npos)
            bad("query parameters and fragments are not supported in a redis:// URL; "
                "put the database in the path (redis://host:6379/2)");
        if (!db.empty())
            u.db = parse_db(db);
    }
    return u;
}

std::string RedisUrl::normalized(bool mask) const {
    std::string out = is_unix ? "unix://" : "redis://";
    if (has_user) {
        out += raw_user;
        if (has_password)
            out += ":" + (mask ? std::string("***") : raw_password);
        out += "@";
    }
    if (is_unix) {
        out += path;
        if (db != 0)
            out += "?db=" + std::to_string(db);
        return out;
    }
    out += host.find(':') != std::string::npos ? "[" + host + "]" : host;
    out += ":" + std::to_string(port) + "/" + std::to_string(db);
    return out;
}

} // namespace bk::options
