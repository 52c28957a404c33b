// sink_options.cpp — the C ABI of sink option validation (batchkit/sink_options.h),
// the options common to every kind of sink, and the helpers both kinds share.
//
// Defaults and ranges here are the documented ones (docs/sinks.md); the unit
// tests pin them.
#include "batchkit/sink_options.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "options/option_error.hpp"
#include "options/sink_config.hpp"
#include "util/abi_guard.hpp"

namespace bk::options {

namespace {

enum class CommonType { Integer, Choice };

struct CommonSpec {
    const char *name;
    CommonType type;
    int64_t min;
    int64_t max;
    std::vector<const char *> choices;
    const char *def;
    const char *what; // unit, for messages
};

const std::vector<CommonSpec> &common_specs() {
    static const std::vector<CommonSpec> specs = {
        {"batch_size", CommonType::Integer, 1, 1000000, {}, "10000", "rows"},
        {"max_wait_ms", CommonType::Integer, 0, 3600000, {}, "10", "milliseconds"},
        {"max_batch_bytes",
         CommonType::Integer,
         1024,
         1073741824,
         {},
         "16777216",
         "bytes, 1 KiB to 1 GiB"},
        {"max_queue", CommonType::Integer, 0, 1000000000000, {}, "0", "rows, 0 = unlimited"},
        {"on_full", CommonType::Choice, 0, 0, {"error", "wait"}, "error", nullptr},
        {"on_full_timeout_ms", CommonType::Integer, 0, 3600000, {}, "10000", "milliseconds"},
        {"max_attempts", CommonType::Integer, 1, 1000, {}, "5", "attempts"},
        {"retry_backoff_ms", CommonType::Integer, 1, 3600000, {}, "100", "milliseconds"},
        {"retry_backoff_max_ms", CommonType::Integer, 1, 3600000, {}, "30000", "milliseconds"},
        {"format", CommonType::Choice, 0, 0, {"envelope", "row"}, "envelope", nullptr},
        {"send_timeout_ms", CommonType::Integer, 1, 3600000, {}, "30000", "milliseconds"},
        {"max_message_bytes",
         CommonType::Integer,
         1,
         1073741824,
         {},
         "536870912",
         "bytes, 1 B to 1 GiB"},
    };
    return specs;
}

const CommonSpec *find_common(std::string_view key) {
    for (const auto &s : common_specs())
        if (key == s.name)
            return &s;
    return nullptr;
}

bool parse_int64(const std::string &s, int64_t &out) {
    size_t i = 0;
    bool neg = false;
    if (i < s.size() && s[i] == '-') {
        neg = true;
        i++;
    }
    if (i == s.size())
        return false;
    unsigned long long v = 0;
    for (; i < s.size(); i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (v > 100000000000000000ULL) // beyond any range we accept; keep it from overflowing
            return false;
        v = v * 10 + static_cast<unsigned>(s[i] - '0');
    }
    out = neg ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
    return true;
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); j++)
        prev[j] = j;
    for (size_t i = 1; i <= a.size(); i++) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); j++)
            cur[j] = std::min(
                {prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::string join_quoted(const std::vector<const char *> &v, const char *last_sep) {
    std::string out;
    for (size_t i = 0; i < v.size(); i++) {
        if (i > 0)
            out += i + 1 == v.size() ? last_sep : ", ";
        out += std::string("\"") + v[i] + "\"";
    }
    return out;
}

} // namespace

const char *const kCommonOptionNames[] = {
    "batch_size",   "max_wait_ms",      "max_batch_bytes",
    "max_queue",    "on_full",          "on_full_timeout_ms",
    "max_attempts", "retry_backoff_ms", "retry_backoff_max_ms",
    "format",       "send_timeout_ms",  "outbox_target", "max_message_bytes"};
const size_t kCommonOptionCount = sizeof kCommonOptionNames / sizeof kCommonOptionNames[0];

const Option *SinkConfig::find(std::string_view key) const {
    for (const auto &o : options)
        if (o.key == key)
            return &o;
    return nullptr;
}

void SinkConfig::add_default(const char *key, const char *value, bk_json_type type) {
    if (find(key) != nullptr)
        return;
    Option o;
    o.key = key;
    o.value = o.shown = value;
    o.type = type;
    o.is_default = true;
    options.push_back(std::move(o));
}

std::string describe_value(const RawOption &raw) {
    switch (raw.type) {
    case BK_JSON_STRING: {
        std::string v = raw.value.size() > 60 ? raw.value.substr(0, 57) + "..." : raw.value;
        return "the string \"" + v + "\"";
    }
    case BK_JSON_NUMBER:
        return "the number " + raw.value;
    case BK_JSON_BOOLEAN:
        return raw.value;
    case BK_JSON_OBJECT:
        return "an object";
    case BK_JSON_ARRAY:
        return "an array";
    case BK_JSON_NULL:
        return "null";
    }
    return "an unknown JSON value";
}

Option check_integer(const RawOption &raw, int64_t min, int64_t max, const char *what) {
    std::string allowed = "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    if (what != nullptr)
        allowed += std::string(" (") + what + ")";
    const std::string msg = "option \"" + raw.key + "\" must be " + allowed + ", not ";
    if (raw.type != BK_JSON_NUMBER) {
        int64_t ignored;
        std::string hint =
            raw.type == BK_JSON_STRING && parse_int64(raw.value, ignored)
                ? "Write it as a JSON number: {\"" + raw.key + "\": " + raw.value + "}."
                : "";
        throw OptionError(msg + describe_value(raw), "", hint);
    }
    int64_t v = 0;
    if (!parse_int64(raw.value, v) || v < min || v > max)
        throw OptionError(msg + raw.value);
    Option o;
    o.key = raw.key;
    o.value = o.shown = std::to_string(v);
    o.type = BK_JSON_NUMBER;
    return o;
}

Option check_boolean(const RawOption &raw) {
    if (raw.type != BK_JSON_BOOLEAN)
        throw OptionError("option \"" + raw.key + "\" must be true or false, not " +
                          describe_value(raw));
    Option o;
    o.key = raw.key;
    o.value = o.shown = raw.value;
    o.type = BK_JSON_BOOLEAN;
    return o;
}

Option check_choice(const RawOption &raw, const std::vector<const char *> &choices) {
    std::string lowered = raw.value;
    std::transform(lowered.begin(), lowered.end(), lowered.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (raw.type == BK_JSON_STRING) {
        for (const char *c : choices) {
            if (lowered == c) {
                Option o;
                o.key = raw.key;
                o.value = o.shown = c;
                o.type = BK_JSON_STRING;
                return o;
            }
        }
    }
    throw OptionError("option \"" + raw.key + "\" must be " + join_quoted(choices, " or ") +
                      ", not " +
                      (raw.type == BK_JSON_STRING ? "\"" + raw.value + "\"" : describe_value(raw)));
}

const std::string &require_string(const RawOption &raw, const char *what) {
    if (raw.type != BK_JSON_STRING)
        throw OptionError("option \"" + raw.key + "\" must be a string (" + what + "), not " +
                          describe_value(raw));
    return raw.value;
}

[[noreturn]] void unknown_option(const std::string &kind, const std::string &key,
                                 const std::vector<std::string> &valid,
                                 const std::string &extra_detail, const std::string &extra_hint) {
    std::string best;
    size_t best_d = 3; // suggest only close matches
    for (const auto &v : valid) {
        size_t d = edit_distance(key, v);
        if (v.rfind(key, 0) == 0 || key.rfind(v, 0) == 0) // a prefix: "ttl" means "ttl_ms"
            d = std::min<size_t>(d, 1);
        if (d < best_d) {
            best_d = d;
            best = v;
        }
    }
    std::string hint;
    if (!best.empty())
        hint = "Did you mean \"" + best + "\"? ";
    hint += "Valid options for a " + kind + " sink: ";
    for (size_t i = 0; i < valid.size(); i++)
        hint += (i ? ", " : "") + valid[i];
    hint += ".";
    if (!extra_hint.empty())
        hint += " " + extra_hint;
    throw OptionError("unknown option \"" + key + "\" for a " + kind + " sink", extra_detail, hint);
}

bool is_common_option(std::string_view key) {
    return find_common(key) != nullptr;
}

Option check_common_option(const RawOption &raw) {
    const CommonSpec *s = find_common(raw.key);
    if (s == nullptr)
        throw bk::Error(BK_INTERNAL, "not a common option: " + raw.key);
    if (s->type == CommonType::Integer)
        return check_integer(raw, s->min, s->max, s->what);
    return check_choice(raw, s->choices);
}

void finish_common_options(SinkConfig &cfg) {
    auto effective = [&](const char *key) -> std::string {
        if (const Option *o = cfg.find(key))
            return o->value;
        return find_common(key)->def;
    };
    int64_t base = 0, cap = 0;
    parse_int64(effective("retry_backoff_ms"), base);
    parse_int64(effective("retry_backoff_max_ms"), cap);
    if (cap < base)
        throw OptionError("option \"retry_backoff_max_ms\" (" + std::to_string(cap) +
                              ") must not be less than \"retry_backoff_ms\" (" +
                              std::to_string(base) + ")",
                          "Retries wait retry_backoff_ms, doubling after each failure up to "
                          "retry_backoff_max_ms.");
    if (cfg.find("on_full_timeout_ms") != nullptr && effective("on_full") != "wait")
        throw OptionError("option \"on_full_timeout_ms\" applies only when \"on_full\" is \"wait\"",
                          "With on_full = \"error\" (the default) a writer that finds the queue "
                          "full fails at once.",
                          "Set \"on_full\": \"wait\" as well, or remove on_full_timeout_ms with "
                          "{\"on_full_timeout_ms\": null}.");
    for (const auto &s : common_specs())
        cfg.add_default(s.name, s.def,
                        s.type == CommonType::Integer ? BK_JSON_NUMBER : BK_JSON_STRING);
}

SinkConfig validate_sink_options(std::string_view kind, const std::vector<RawOption> &raw_in) {
    if (kind != "kafka" && kind != "redis")
        throw OptionError("unknown sink kind \"" + std::string(kind.substr(0, 64)) + "\"", "",
                          "A sink's kind is \"kafka\" or \"redis\".");
    std::vector<RawOption> raw;
    std::set<std::string> seen;
    for (const auto &r : raw_in) {
        if (r.key.empty())
            throw OptionError("an option name must not be empty");
        if (!seen.insert(r.key).second)
            throw OptionError("option \"" + r.key + "\" is given twice");
        if (r.type != BK_JSON_NULL) // null: not set
            raw.push_back(r);
    }
    SinkConfig cfg;
    cfg.kind = std::string(kind);
    if (kind == "kafka")
        validate_kafka_options(cfg, raw);
    else
        validate_redis_options(cfg, raw);
    finish_common_options(cfg);
    std::sort(cfg.options.begin(), cfg.options.end(),
              [](const Option &a, const Option &b) { return a.key < b.key; });
    return cfg;
}

} // namespace bk::options

struct bk_sink_config {
    bk::options::SinkConfig cfg;
};

namespace {

void copy_text(char *dst, size_t size, const std::string &src) {
    std::snprintf(dst, size, "%s", src.c_str());
}

} // namespace

extern "C" {

bk_code bk_sink_name_check(const char *name, bk_status *st) {
    return bk::guarded(st, [&] {
        if (name == nullptr || name[0] == '\0')
            throw bk::Error(BK_INVALID_ARGUMENT, "a sink name must not be empty");
        std::string_view n(name);
        if (n.size() > BK_SINK_NAME_MAX)
            throw bk::Error(BK_INVALID_ARGUMENT, "sink name \"" + std::string(n.substr(0, 70)) +
                                                     "...\" is longer than 63 bytes");
        for (char c : n) {
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '-' || c == '.';
            if (!ok)
                throw bk::Error(BK_INVALID_ARGUMENT,
                                "sink name \"" + std::string(n) +
                                    "\" may contain only ASCII letters, digits, '_', '-' and '.'");
        }
    });
}

bk_code bk_sink_config_validate(const char *kind, const bk_sink_option_in *opts, size_t nopts,
                                bk_sink_config **out, bk_status *st, bk_sink_diag *diag) {
    if (out)
        *out = nullptr;
    if (diag) {
        diag->detail[0] = '\0';
        diag->hint[0] = '\0';
    }
    return bk::guarded(st, [&] {
        if (kind == nullptr || out == nullptr || (opts == nullptr && nopts > 0))
            throw bk::Error(BK_INVALID_ARGUMENT, "bk_sink_config_validate: missing argument");
        std::vector<bk::options::RawOption> raw;
        raw.reserve(nopts);
        for (size_t i = 0; i < nopts; i++) {
            if (opts[i].key == nullptr)
                throw bk::Error(BK_INVALID_ARGUMENT, "an option name must not be empty");
            if (opts[i].value == nullptr && opts[i].type != BK_JSON_NULL)
                throw bk::Error(BK_INVALID_ARGUMENT,
                                std::string("option \"") + opts[i].key + "\" has no value");
            raw.push_back({opts[i].key, opts[i].value ? opts[i].value : "", opts[i].type});
        }
        try {
            auto cfg = std::make_unique<bk_sink_config>();
            cfg->cfg = bk::options::validate_sink_options(kind, raw);
            *out = cfg.release();
        } catch (const bk::options::OptionError &e) {
            if (diag) {
                copy_text(diag->detail, sizeof diag->detail, e.detail());
                copy_text(diag->hint, sizeof diag->hint, e.hint());
            }
            throw;
        }
    });
}

size_t bk_sink_config_count(const bk_sink_config *cfg) {
    return cfg ? cfg->cfg.options.size() : 0;
}

int bk_sink_config_get(const bk_sink_config *cfg, size_t i, bk_sink_option_out *out) {
    if (cfg == nullptr || out == nullptr || i >= cfg->cfg.options.size())
        return 0;
    const auto &o = cfg->cfg.options[i];
    out->key = o.key.c_str();
    out->value = o.value.c_str();
    out->type = o.type;
    out->shown = o.shown.c_str();
    out->secret = o.secret ? 1 : 0;
    out->is_default = o.is_default ? 1 : 0;
    out->origin = o.origin;
    out->privilege = o.privilege;
    return 1;
}

int bk_sink_config_endpoint(const bk_sink_config *cfg, bk_sink_endpoint *out) {
    if (cfg == nullptr || out == nullptr || !cfg->cfg.endpoint)
        return 0;
    const auto &e = *cfg->cfg.endpoint;
    out->what = e.what.c_str();
    out->host = e.is_unix ? nullptr : e.host.c_str();
    out->port = e.is_unix ? 0 : e.port;
    out->unix_path = e.is_unix ? e.unix_path.c_str() : nullptr;
    out->display = e.display.c_str();
    return 1;
}

void bk_sink_config_free(bk_sink_config *cfg) {
    delete cfg;
}

bk_option_privilege bk_sink_option_privilege(const char *kind, const char *key) {
    if (kind == nullptr || key == nullptr)
        return BK_PRIV_NONE;
    try {
        if (std::string_view(kind) == "kafka")
            return bk::options::librdkafka_privilege(key);
    } catch (...) {
    }
    return BK_PRIV_NONE;
}

} // extern "C"
