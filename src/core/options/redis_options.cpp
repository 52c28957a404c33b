// redis_options.cpp — validation of a Redis sink's options.
//
// The URL is parsed here (redis_url.cpp); its password, if any, makes the
// whole `url` option a secret whose shown form masks just the password. Options
// that only make sense for one command (maxlen for xadd, ttl_ms for set) are
// refused with any other command, so a setting never silently does nothing.
// `command` has no default: how rows land in Redis is the user's decision.
#include <algorithm>
#include <string>

#include "options/name_template.hpp"
#include "options/option_error.hpp"
#include "options/redis_url.hpp"
#include "options/sink_config.hpp"

namespace bk::options {

namespace {

constexpr int64_t kMaxLenMax = 1000000000000; // entries
constexpr int64_t kTtlMsMax = 1000000000000;  // ~31 years

std::vector<std::string> redis_option_names() {
    std::vector<std::string> v(kCommonOptionNames, kCommonOptionNames + kCommonOptionCount);
    for (const char *k :
         {"url", "command", "key", "maxlen", "ttl_ms", "connect_timeout_ms", "idempotency_field"})
        v.push_back(k);
    std::sort(v.begin(), v.end());
    return v;
}

void only_for(const char *option, const char *command, const std::string &actual,
              const char *what) {
    throw OptionError(std::string("option \"") + option + "\" applies only to command \"" +
                          command + "\", not \"" + actual + "\"",
                      what,
                      std::string("Remove it (alter_sink(name, '{\"") + option +
                          "\": null}')) or use command \"" + command + "\".");
}

} // namespace

void validate_redis_options(SinkConfig &cfg, const std::vector<RawOption> &raw) {
    const RawOption *key_raw = nullptr;
    bool has_url = false, has_maxlen = false, has_ttl = false, has_idfield = false;
    std::string command;

    for (const auto &r : raw) {
        if (is_common_option(r.key)) {
            cfg.add(check_common_option(r));
        } else if (r.key == "url") {
            RedisUrl u = parse_redis_url(require_string(r, "a redis:// or unix:// URL"));
            Option o;
            o.key = r.key;
            o.value = u.normalized(false);
            o.shown = u.normalized(true);
            o.secret = u.has_password;
            cfg.add(std::move(o));
            Endpoint e;
            e.what = "Redis server";
            e.is_unix = u.is_unix;
            e.host = u.host;
            e.port = u.port;
            e.unix_path = u.path;
            e.display =
                u.is_unix ? u.path
                          : (u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host) +
                                ":" + std::to_string(u.port);
            cfg.endpoint = e;
            has_url = true;
        } else if (r.key == "command") {
            Option o = check_choice(r, {"xadd", "lpush", "rpush", "publish", "set", "hset"});
            command = o.value;
            cfg.add(std::move(o));
        } else if (r.key == "key") {
            require_string(r, "a key template");
            key_raw = &r;
        } else if (r.key == "maxlen") {
            cfg.add(check_integer(r, 1, kMaxLenMax, "stream entries"));
            has_maxlen = true;
        } else if (r.key == "connect_timeout_ms") {
            cfg.add(check_integer(r, 1, 600000, "milliseconds"));
        } else if (r.key == "outbox_target") {
            const std::string &v = require_string(r, "the Redis key of enqueue()d messages");
            if (v.empty())
                throw OptionError("option \"outbox_target\" must not be empty");
            Option o;
            o.key = r.key;
            o.value = o.shown = v;
            cfg.add(std::move(o));
        } else if (r.key == "idempotency_field") {
            cfg.add(check_boolean(r));
            has_idfield = true;
        } else if (r.key == "ttl_ms") {
            cfg.add(check_integer(r, 1, kTtlMsMax, "milliseconds"));
            has_ttl = true;
        } else {
            unknown_option(
                "redis", r.key, redis_option_names(), "",
                r.key.find('.') != std::string::npos
                    ? "Dotted keys are librdkafka properties: only kafka sinks take them."
                    : "");
        }
    }

    if (!has_url)
        throw OptionError("a redis sink needs option \"url\"", "",
                          "For example {\"url\": \"redis://127.0.0.1:6379/0\"}.");
    if (command.empty())
        throw OptionError("a redis sink needs option \"command\"",
                          "It says how rows are written: xadd (a stream entry), lpush or rpush (a "
                          "list), publish (a pub/sub message), set (a key per row) or hset (a "
                          "hash per row).",
                          "For example {\"command\": \"xadd\"}.");
    if (has_maxlen && command != "xadd")
        only_for("maxlen", "xadd", command, "maxlen caps a stream's length (XADD ... MAXLEN ~ n).");
    if (has_idfield && command != "xadd")
        only_for("idempotency_field", "xadd", command,
                 "idempotency_field says whether stream entries carry an idempotency_key field.");
    if (has_ttl && command != "set")
        only_for("ttl_ms", "set", command,
                 "ttl_ms sets an expiry on each key written (SET ... PX n).");

    const bool per_row_command = command == "set" || command == "hset";
    if (key_raw == nullptr && per_row_command)
        throw OptionError("a redis sink with command \"" + command +
                              "\" needs option \"key\" with a column placeholder",
                          "set and hset write one Redis key per row, named after the row.",
                          "For example {\"key\": \"users:{id}\"}.");
    if (key_raw != nullptr) {
        auto parts = parse_name_template(key_raw->value, TemplateFlavor::RedisKey, "key");
        if (per_row_command && !template_is_per_row(parts))
            throw OptionError("option \"key\" must contain a column placeholder for command \"" +
                                  command + "\"",
                              "set and hset write one Redis key per row: a key without a column "
                              "placeholder would make every row overwrite the same key.",
                              "For example \"users:{id}\" or \"{schema}.{table}:{id}\".");
        Option o;
        o.key = "key";
        o.value = o.shown = key_raw->value;
        cfg.add(std::move(o));
    }
    cfg.add_default("key", "batchkit:{sink}", BK_JSON_STRING);
    cfg.add_default("connect_timeout_ms", "2000", BK_JSON_NUMBER);
}

} // namespace bk::options
