// sink_config.hpp — a validated sink option set, and the pieces the per-kind
// validators (kafka_options.cpp, redis_options.cpp) share.
//
// validate_sink_options() is the whole pipeline: it takes the complete option
// set of a sink (create_sink's options, or the stored options with an
// alter_sink patch merged in) and returns every option normalized, classified
// (secret or not, batchkit's or librdkafka's, which privilege it needs) and
// completed with defaults. It throws OptionError on the first bad option.
// Nothing here is shared between calls, so it is thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "batchkit/sink_options.h"

namespace bk::options {

struct RawOption {
    std::string key;
    std::string value; // text form, as in bk_sink_option_in
    bk_json_type type;
};

struct Option {
    std::string key;
    std::string value;
    std::string shown;
    bk_json_type type = BK_JSON_STRING;
    bool secret = false;
    bool is_default = false;
    bk_option_origin origin = BK_OPT_BATCHKIT;
    bk_option_privilege privilege = BK_PRIV_NONE;
};

struct Endpoint {
    std::string what;
    std::string host;
    int port = 0;
    bool is_unix = false;
    std::string unix_path;
    std::string display;
};

struct SinkConfig {
    std::string kind;
    std::vector<Option> options; // sorted by key once validated
    std::optional<Endpoint> endpoint;

    const Option *find(std::string_view key) const;
    void add(Option o) { options.push_back(std::move(o)); }
    // Adds a batchkit default unless the option is already set.
    void add_default(const char *key, const char *value, bk_json_type type);
};

SinkConfig validate_sink_options(std::string_view kind, const std::vector<RawOption> &raw);

// --- shared by the per-kind validators ---------------------------------------------

// The options both kinds understand (batch_size, max_wait_ms, ...).
bool is_common_option(std::string_view key);
Option check_common_option(const RawOption &raw);
void finish_common_options(SinkConfig &cfg); // cross-checks, then defaults
extern const char *const kCommonOptionNames[];
extern const size_t kCommonOptionCount;

// Integer option in [min, max]; `what` says what it counts ("rows", "ms", ...).
Option check_integer(const RawOption &raw, int64_t min, int64_t max, const char *what);
// Boolean option (a JSON true or false).
Option check_boolean(const RawOption &raw);
// String option, one of `choices` (case-insensitive; normalized to lower case).
Option check_choice(const RawOption &raw, const std::vector<const char *> &choices);
// Any string option (templates, URLs); non-strings are an error.
const std::string &require_string(const RawOption &raw, const char *what);

// How a value is named in messages: the string "x", the number 5, an object...
std::string describe_value(const RawOption &raw);

// "unknown option" with the valid names and a "did you mean" when one is close.
[[noreturn]] void unknown_option(const std::string &kind, const std::string &key,
                                 const std::vector<std::string> &valid,
                                 const std::string &extra_detail = {},
                                 const std::string &extra_hint = {});

// --- per kind --------------------------------------------------------------------
void validate_kafka_options(SinkConfig &cfg, const std::vector<RawOption> &raw);
void validate_redis_options(SinkConfig &cfg, const std::vector<RawOption> &raw);

// --- secrets and privileges (secret_keys.cpp) --------------------------------------
// Whether an option's value is a secret, by its key alone (see docs/sinks.md).
bool is_secret_key(std::string_view key);
bk_option_privilege librdkafka_privilege(std::string_view key);

} // namespace bk::options
