// Unit tests of sink option validation (batchkit/sink_options.h), the topic/key
// templates, the Redis URL parser and the reachability probe (batchkit/net_probe.h).
// Everything goes through the C ABI the shim uses, except the C++ helpers the flush
// worker will use (templates, URL).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "batchkit/net_probe.h"
#include "batchkit/sink.h"
#include "batchkit/sink_options.h"
#include "options/name_template.hpp"
#include "options/option_error.hpp"
#include "options/redis_url.hpp"
#include "options/sink_config.hpp"

namespace {

struct In {
    std::string key;
    std::string value;
    bk_json_type type;
};

In S(const std::string &k, const std::string &v) {
    return {k, v, BK_JSON_STRING};
}
In N(const std::string &k, const std::string &v) {
    return {k, v, BK_JSON_NUMBER};
}
In B(const std::string &k, bool v) {
    return {k, v ? "true" : "false", BK_JSON_BOOLEAN};
}
In Null(const std::string &k) {
    return {k, "", BK_JSON_NULL};
}

struct Opt {
    std::string value, shown;
    bk_json_type type;
    bool secret, is_default;
    bk_option_origin origin;
    bk_option_privilege privilege;
};

struct Result {
    bk_code code = BK_INTERNAL;
    std::string message, detail, hint;
    std::map<std::string, Opt> opts;
    std::vector<std::string> order;
    bool has_endpoint = false;
    std::string ep_what, ep_host, ep_unix, ep_display;
    int ep_port = -1;

    bool ok() const { return code == BK_OK; }
    const Opt &at(const std::string &k) const {
        auto it = opts.find(k);
        if (it == opts.end())
            throw std::runtime_error("no option " + k);
        return it->second;
    }
    bool has(const std::string &k) const { return opts.count(k) > 0; }
};

Result validate(const char *kind, const std::vector<In> &in) {
    std::vector<bk_sink_option_in> c;
    for (const auto &i : in)
        c.push_back({i.key.c_str(), i.type == BK_JSON_NULL ? nullptr : i.value.c_str(), i.type});
    bk_sink_config *cfg = reinterpret_cast<bk_sink_config *>(0x1);
    bk_status st;
    bk_sink_diag diag;
    Result r;
    r.code = bk_sink_config_validate(kind, c.data(), c.size(), &cfg, &st, &diag);
    if (r.code != BK_OK) {
        EXPECT_EQ(cfg, nullptr);
        r.message = st.message;
        r.detail = diag.detail;
        r.hint = diag.hint;
        return r;
    }
    for (size_t i = 0; i < bk_sink_config_count(cfg); i++) {
        bk_sink_option_out o;
        EXPECT_EQ(bk_sink_config_get(cfg, i, &o), 1);
        r.opts[o.key] = {o.value,           o.shown,  o.type,     o.secret != 0,
                         o.is_default != 0, o.origin, o.privilege};
        r.order.push_back(o.key);
    }
    bk_sink_option_out past;
    EXPECT_EQ(bk_sink_config_get(cfg, bk_sink_config_count(cfg), &past), 0);
    bk_sink_endpoint ep;
    if (bk_sink_config_endpoint(cfg, &ep)) {
        r.has_endpoint = true;
        r.ep_what = ep.what;
        r.ep_host = ep.host ? ep.host : "";
        r.ep_port = ep.port;
        r.ep_unix = ep.unix_path ? ep.unix_path : "";
        r.ep_display = ep.display;
    }
    bk_sink_config_free(cfg);
    return r;
}

const In kBroker = S("bootstrap.servers", "127.0.0.1:9092");
const In kRedis = S("url", "redis://127.0.0.1:6379/0");

std::vector<In> kafka(std::vector<In> more) {
    more.insert(more.begin(), kBroker);
    return more;
}
// A valid Redis sink (url, command xadd unless `more` names one) plus `more`.
std::vector<In> redis(std::vector<In> more) {
    bool has_command = false;
    for (const auto &m : more)
        has_command = has_command || m.key == "command";
    if (!has_command)
        more.insert(more.begin(), S("command", "xadd"));
    more.insert(more.begin(), kRedis);
    return more;
}

bool contains(const std::string &s, const std::string &sub) {
    return s.find(sub) != std::string::npos;
}

} // namespace

// ---------------------------------------------------------------- sink names

TEST(SinkName, AcceptsLettersDigitsUnderscoreDashDot) {
    bk_status st;
    EXPECT_EQ(bk_sink_name_check("orders-v2.eu_1", &st), BK_OK);
    EXPECT_EQ(bk_sink_name_check(std::string(63, 'a').c_str(), &st), BK_OK);
}

TEST(SinkName, RefusesEmptyLongAndOddCharacters) {
    bk_status st;
    EXPECT_EQ(bk_sink_name_check("", &st), BK_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(st.message, "must not be empty"));
    EXPECT_EQ(bk_sink_name_check(nullptr, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_sink_name_check(std::string(64, 'a').c_str(), &st), BK_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(st.message, "longer than 63 bytes"));
    for (const char *bad : {"a b", "a/b", "a:b", "a{b}", "é", "a\"b", "a\nb"}) {
        EXPECT_EQ(bk_sink_name_check(bad, &st), BK_INVALID_ARGUMENT) << bad;
        EXPECT_TRUE(contains(st.message, "only ASCII letters, digits")) << st.message;
    }
}

// ---------------------------------------------------------------- kinds, nulls, duplicates

TEST(SinkOptions, UnknownKindIsRefused) {
    Result r = validate("rabbitmq", {});
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(r.message, "unknown sink kind \"rabbitmq\"");
    EXPECT_TRUE(contains(r.hint, "\"kafka\" or \"redis\""));
}

TEST(SinkOptions, NullMeansNotSetAndDuplicatesAreRefused) {
    Result r = validate("redis", redis({Null("batch_size"), Null("no_such_option")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_TRUE(r.at("batch_size").is_default);
    r = validate("redis", redis({N("batch_size", "5"), N("batch_size", "6")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(r.message, "option \"batch_size\" is given twice");
    r = validate("redis", redis({N("", "5")}));
    EXPECT_EQ(r.message, "an option name must not be empty");
}

TEST(SinkOptions, ResultIsSortedByKey) {
    Result r = validate("kafka", kafka({N("batch_size", "7"), S("compression.type", "lz4")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_TRUE(std::is_sorted(r.order.begin(), r.order.end()));
}

// ---------------------------------------------------------------- common options

TEST(CommonOptions, DefaultsAreDocumented) {
    Result r = validate("redis", redis({}));
    ASSERT_TRUE(r.ok()) << r.message;
    const std::map<std::string, std::string> defaults = {
        {"batch_size", "10000"}, {"max_wait_ms", "10"},       {"max_batch_bytes", "16777216"},
        {"max_queue", "0"},      {"on_full", "error"},        {"on_full_timeout_ms", "10000"},
        {"max_attempts", "5"},   {"retry_backoff_ms", "100"}, {"retry_backoff_max_ms", "30000"},
        {"format", "envelope"},  {"send_timeout_ms", "30000"}};
    for (const auto &[k, v] : defaults) {
        EXPECT_EQ(r.at(k).value, v) << k;
        EXPECT_TRUE(r.at(k).is_default) << k;
        EXPECT_FALSE(r.at(k).secret) << k;
        EXPECT_EQ(r.at(k).origin, BK_OPT_BATCHKIT) << k;
    }
    EXPECT_EQ(r.at("batch_size").type, BK_JSON_NUMBER);
    EXPECT_EQ(r.at("format").type, BK_JSON_STRING);
}

TEST(CommonOptions, RangesAreEnforcedAtTheirBounds) {
    struct Case {
        const char *key;
        const char *lo, *hi, *below, *above;
    };
    const Case cases[] = {
        {"batch_size", "1", "1000000", "0", "1000001"},
        {"max_wait_ms", "0", "3600000", "-1", "3600001"},
        {"max_batch_bytes", "1024", "1073741824", "1023", "1073741825"},
        {"max_queue", "0", "1000000000000", "-1", "1000000000001"},
        {"on_full_timeout_ms", "0", "3600000", "-1", "3600001"},
        {"max_attempts", "1", "1000", "0", "1001"},
        {"retry_backoff_ms", "1", "3600000", "0", "3600001"},
        {"retry_backoff_max_ms", "1", "3600000", "0", "3600001"},
    };
    for (const auto &c : cases) {
        std::vector<In> extra;
        if (std::string(c.key) == "on_full_timeout_ms")
            extra.push_back(S("on_full", "wait"));
        if (std::string(c.key) == "retry_backoff_ms")
            extra.push_back(N("retry_backoff_max_ms", "3600000"));
        for (const char *ok : {c.lo, c.hi}) {
            auto in = redis(extra);
            in.push_back(N(c.key, ok));
            if (std::string(c.key) == "retry_backoff_max_ms")
                in.push_back(N("retry_backoff_ms", "1"));
            Result r = validate("redis", in);
            ASSERT_TRUE(r.ok()) << c.key << "=" << ok << ": " << r.message;
            EXPECT_EQ(r.at(c.key).value, ok);
            EXPECT_FALSE(r.at(c.key).is_default);
        }
        for (const char *bad : {c.below, c.above}) {
            auto in = redis(extra);
            in.push_back(N(c.key, bad));
            Result r = validate("redis", in);
            EXPECT_EQ(r.code, BK_INVALID_ARGUMENT) << c.key << "=" << bad;
            EXPECT_EQ(r.message.rfind(std::string("option \"") + c.key +
                                          "\" must be an integer from " + c.lo + " to " + c.hi,
                                      0),
                      0u)
                << r.message;
            EXPECT_TRUE(contains(r.message, std::string(", not ") + bad)) << r.message;
        }
    }
}

TEST(CommonOptions, MessagesNameOptionRangeAndUnit) {
    Result r = validate("redis", redis({N("batch_size", "0")}));
    EXPECT_EQ(r.message,
              "option \"batch_size\" must be an integer from 1 to 1000000 (rows), not 0");
    r = validate("redis", redis({N("max_batch_bytes", "5")}));
    EXPECT_EQ(r.message, "option \"max_batch_bytes\" must be an integer from 1024 to 1073741824 "
                         "(bytes, 1 KiB to 1 GiB), not 5");
}

TEST(CommonOptions, WrongJsonTypesAreRefused) {
    Result r = validate("redis", redis({S("batch_size", "500")}));
    EXPECT_EQ(r.message, "option \"batch_size\" must be an integer from 1 to 1000000 (rows), not "
                         "the string \"500\"");
    EXPECT_EQ(r.hint, "Write it as a JSON number: {\"batch_size\": 500}.");
    r = validate("redis", redis({N("batch_size", "2.5")}));
    EXPECT_TRUE(contains(r.message, "not 2.5")) << r.message;
    r = validate("redis", redis({B("max_attempts", true)}));
    EXPECT_TRUE(contains(r.message, "not true")) << r.message;
    r = validate("redis", redis({{"max_queue", "[1]", BK_JSON_ARRAY}}));
    EXPECT_TRUE(contains(r.message, "not an array")) << r.message;
    r = validate("redis", redis({N("format", "1")}));
    EXPECT_EQ(r.message, "option \"format\" must be \"envelope\" or \"row\", not the number 1");
    r = validate("redis", redis({N("batch_size", "99999999999999999999999")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
}

TEST(CommonOptions, ChoicesAreCaseInsensitiveAndNormalized) {
    Result r = validate("redis", redis({S("on_full", "WAIT"), S("format", "Row")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("on_full").value, "wait");
    EXPECT_EQ(r.at("format").value, "row");
    r = validate("redis", redis({S("on_full", "block")}));
    EXPECT_EQ(r.message, "option \"on_full\" must be \"error\" or \"wait\", not \"block\"");
}

TEST(CommonOptions, CrossChecks) {
    Result r = validate("redis",
                        redis({N("retry_backoff_ms", "5000"), N("retry_backoff_max_ms", "1000")}));
    EXPECT_EQ(r.message, "option \"retry_backoff_max_ms\" (1000) must not be less than "
                         "\"retry_backoff_ms\" (5000)");
    // the default cap (30000) applies when only the base is given
    r = validate("redis", redis({N("retry_backoff_ms", "40000")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    r = validate("redis", redis({N("on_full_timeout_ms", "100")}));
    EXPECT_EQ(r.message, "option \"on_full_timeout_ms\" applies only when \"on_full\" is \"wait\"");
    r = validate("redis", redis({N("on_full_timeout_ms", "100"), S("on_full", "wait")}));
    EXPECT_TRUE(r.ok()) << r.message;
}

// ---------------------------------------------------------------- kafka

TEST(KafkaOptions, DefaultsIncludeIdempotenceAcksPartitionerTopic) {
    Result r = validate("kafka", kafka({}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("enable.idempotence").value, "true");
    EXPECT_EQ(r.at("enable.idempotence").type, BK_JSON_BOOLEAN);
    EXPECT_EQ(r.at("acks").value, "all");
    EXPECT_EQ(r.at("partitioner").value, "murmur2_random");
    EXPECT_EQ(r.at("topic").value, "{schema}.{table}");
    for (const char *k : {"enable.idempotence", "acks", "partitioner"}) {
        EXPECT_TRUE(r.at(k).is_default) << k;
        EXPECT_EQ(r.at(k).origin, BK_OPT_LIBRDKAFKA) << k;
    }
    EXPECT_EQ(r.at("topic").origin, BK_OPT_BATCHKIT);
    EXPECT_EQ(r.at("bootstrap.servers").origin, BK_OPT_LIBRDKAFKA);
    EXPECT_FALSE(r.at("bootstrap.servers").is_default);
}

TEST(KafkaOptions, BootstrapServersIsRequired) {
    Result r = validate("kafka", {S("topic", "t")});
    EXPECT_EQ(r.message, "a kafka sink needs option \"bootstrap.servers\"");
    EXPECT_TRUE(contains(r.hint, "broker1:9092"));
    r = validate("kafka", {S("metadata.broker.list", "b:1")}); // librdkafka's old name
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("kafka", {S("bootstrap.servers", " , ")});
    EXPECT_EQ(r.message, "option \"bootstrap.servers\" must name at least one broker");
}

TEST(KafkaOptions, PropertiesGoThroughLibrdkafka) {
    Result r = validate(
        "kafka", kafka({S("compression.type", "zstd"), N("linger.ms", "20"),
                        B("enable.idempotence", false), S("acks", "1"), S("client.id", "orders")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("linger.ms").value, "20");
    EXPECT_EQ(r.at("linger.ms").type, BK_JSON_NUMBER);
    EXPECT_EQ(r.at("enable.idempotence").value, "false");
    EXPECT_FALSE(r.at("enable.idempotence").is_default);
    EXPECT_EQ(r.at("acks").value, "1");
}

TEST(KafkaOptions, UnknownDottedPropertyCarriesLibrdkafkaMessage) {
    Result r = validate("kafka", kafka({S("compresion.type", "lz4")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(r.message, "unknown librdkafka property \"compresion.type\"");
    EXPECT_TRUE(contains(r.detail, "No such configuration property: \"compresion.type\""))
        << r.detail;
    EXPECT_TRUE(contains(r.detail, "librdkafka 2.")) << r.detail;
}

TEST(KafkaOptions, InvalidValueCarriesLibrdkafkaMessage) {
    Result r = validate("kafka", kafka({N("linger.ms", "-5")}));
    EXPECT_EQ(r.message, "invalid value for librdkafka property \"linger.ms\"");
    EXPECT_TRUE(contains(r.detail, "outside allowed range 0..900000")) << r.detail;
    EXPECT_TRUE(r.detail.back() != '\n');
    r = validate("kafka", kafka({S("partitioner", "bogus")}));
    EXPECT_EQ(r.message, "invalid value for librdkafka property \"partitioner\"");
    r = validate("kafka", kafka({S("dr_cb", "x")}));
    EXPECT_TRUE(contains(r.detail, "dedicated")) << r.detail;
    r = validate("kafka", kafka({{"compression.type", "{}", BK_JSON_OBJECT}}));
    EXPECT_EQ(r.message, "librdkafka property \"compression.type\" must be a string, number or "
                         "boolean, not an object");
}

TEST(KafkaOptions, UnknownPlainKeyListsBatchkitOptionsAndSuggests) {
    Result r = validate("kafka", kafka({N("batch_sise", "5")}));
    EXPECT_EQ(r.message, "unknown option \"batch_sise\" for a kafka sink");
    EXPECT_TRUE(contains(r.hint, "Did you mean \"batch_size\"?")) << r.hint;
    EXPECT_TRUE(contains(r.hint, "topic")) << r.hint;
    EXPECT_TRUE(contains(r.hint, "partitioner")) << r.hint;
    EXPECT_TRUE(contains(r.detail, "No such configuration property")) << r.detail;
    // a non-dotted librdkafka property is fine
    r = validate("kafka", kafka({S("debug", "msg"), N("retries", "5")}));
    EXPECT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("debug").origin, BK_OPT_LIBRDKAFKA);
}

TEST(KafkaOptions, IdempotenceConflictsAreCaughtAtCreateTime) {
    Result r = validate("kafka", kafka({S("acks", "1")}));
    EXPECT_EQ(r.message, "option \"acks\" = 1 conflicts with enable.idempotence = true");
    EXPECT_TRUE(contains(r.hint, "enable.idempotence")) << r.hint;
    r = validate("kafka", kafka({N("request.required.acks", "0")}));
    EXPECT_EQ(r.message,
              "option \"request.required.acks\" = 0 conflicts with enable.idempotence = true");
    r = validate("kafka", kafka({N("request.required.acks", "-1")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_FALSE(r.has("acks")); // no default under the other name
    r = validate("kafka", kafka({N("retries", "0")}));
    EXPECT_EQ(r.message, "option \"retries\" = 0 conflicts with enable.idempotence = true");
    r = validate("kafka", kafka({N("max.in.flight.requests.per.connection", "10")}));
    EXPECT_EQ(r.message, "option \"max.in.flight.requests.per.connection\" = 10 conflicts with "
                         "enable.idempotence = true");
    r = validate("kafka", kafka({N("max.in.flight", "5")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("kafka", kafka({N("retries", "0"), B("enable.idempotence", false)}));
    EXPECT_TRUE(r.ok()) << r.message;
}

// create_sink must refuse what would keep the worker from building its producer:
// for each set of options, validation and librdkafka's own rd_kafka_new() (through
// the worker's code path, bk_sink_open) must agree.
TEST(KafkaOptions, CreateTimeCheckAgreesWithTheWorkersProducer) {
    const std::vector<std::vector<In>> cases = {
        {},
        {S("acks", "1")},
        {N("retries", "0")},
        {N("max.in.flight", "10")},
        {N("queue.buffering.backpressure.threshold", "2")},
        {N("queue.buffering.backpressure.threshold", "1")},
        {N("queue.buffering.backpressure.threshold", "100"), B("enable.idempotence", false)},
        {S("queuing.strategy", "lifo")},
        {S("queuing.strategy", "lifo"), B("enable.idempotence", false)},
        {B("enable.gapless.guarantee", true)},
        {B("enable.gapless.guarantee", true), B("enable.idempotence", false)},
        {N("reconnect.backoff.ms", "5000"), N("reconnect.backoff.max.ms", "1000")},
        {N("reconnect.backoff.ms", "20000")},
        {N("reconnect.backoff.ms", "20000"), N("reconnect.backoff.max.ms", "20000")},
        {N("linger.ms", "40000")},
        {N("queue.buffering.max.ms", "40000")},
        {N("linger.ms", "40000"), N("message.timeout.ms", "60000")},
        {N("message.timeout.ms", "5")},
        {N("delivery.timeout.ms", "3"), N("linger.ms", "2")},
        {N("delivery.timeout.ms", "3"), N("linger.ms", "3")},
        {N("message.timeout.ms", "0"), N("linger.ms", "100")},
    };
    for (const auto &c : cases) {
        std::string what;
        const std::vector<In> opts = kafka(c); // raw points into it
        std::vector<bk_sink_option> raw = {{"name", "diff"}};
        for (const auto &i : opts) {
            raw.push_back({i.key.c_str(), i.value.c_str()});
            what += i.key + "=" + i.value + " ";
        }
        Result r = validate("kafka", opts);
        bk_status st{};
        bk_sink *sink = bk_sink_open("kafka", raw.data(), raw.size(), &st);
        EXPECT_EQ(r.ok(), sink != nullptr)
            << what << "\n  create_sink: " << (r.ok() ? "accepted" : r.message)
            << "\n  the worker:  " << (sink ? "opened" : st.message);
        if (sink)
            bk_sink_close(sink);
    }
}

TEST(KafkaOptions, ConflictsRdKafkaNewWouldRefuseAreExplained) {
    Result r = validate("kafka", kafka({N("queue.buffering.backpressure.threshold", "2")}));
    EXPECT_EQ(r.message, "option \"queue.buffering.backpressure.threshold\" = 2 conflicts with "
                         "enable.idempotence = true");
    r = validate("kafka", kafka({N("linger.ms", "40000")}));
    EXPECT_EQ(r.message, "option \"message.timeout.ms\" (30000, batchkit's default) must be "
                         "greater than \"linger.ms\" (40000)");
    r = validate("kafka", kafka({N("reconnect.backoff.ms", "20000")}));
    EXPECT_EQ(r.message, "option \"reconnect.backoff.max.ms\" (10000) must be >= "
                         "\"reconnect.backoff.ms\" (20000)");
    r = validate("kafka",
                 kafka({B("enable.gapless.guarantee", true), B("enable.idempotence", false)}));
    EXPECT_EQ(r.message, "option \"enable.gapless.guarantee\" needs enable.idempotence = true");
}

TEST(KafkaOptions, WorkerOptions) {
    Result r =
        validate("kafka", kafka({S("outbox_target", "app.outbox"), B("copy_payloads", false)}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("outbox_target").value, "app.outbox");
    EXPECT_EQ(r.at("copy_payloads").value, "false");
    EXPECT_EQ(r.at("copy_payloads").origin, BK_OPT_BATCHKIT);
    r = validate("kafka", kafka({}));
    EXPECT_EQ(r.at("copy_payloads").value, "true");
    EXPECT_TRUE(r.at("copy_payloads").is_default);
    r = validate("kafka", kafka({S("outbox_target", "{schema}.outbox")}));
    EXPECT_EQ(r.message, "option \"outbox_target\" is a topic name, not a template");
    r = validate("kafka", kafka({S("outbox_target", "a b")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    r = validate("kafka", kafka({S("copy_payloads", "no")}));
    EXPECT_EQ(r.message, "option \"copy_payloads\" must be true or false, not the string \"no\"");
}

TEST(KafkaOptions, HeadersCanBeDroppedOnlyWithTheEnvelope) {
    Result r = validate("kafka", kafka({}));
    EXPECT_EQ(r.at("headers").value, "true");
    EXPECT_TRUE(r.at("headers").is_default);
    r = validate("kafka", kafka({B("headers", false)}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("headers").value, "false");
    r = validate("kafka", kafka({B("headers", false), S("format", "row")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(r.message, "option \"headers\" = false needs \"format\" = \"envelope\"");
    r = validate("kafka", kafka({B("headers", true), S("format", "row")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("kafka", kafka({S("headers", "off")}));
    EXPECT_EQ(r.message, "option \"headers\" must be true or false, not the string \"off\"");
}

TEST(KafkaOptions, SaslMechanismIsCheckedWhenSaslIsOn) {
    Result r = validate("kafka", kafka({S("security.protocol", "SASL_PLAINTEXT"),
                                        S("sasl.mechanisms", "SCRAM-SHA-512")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("kafka",
                 kafka({S("security.protocol", "sasl_ssl"), S("sasl.mechanism", "PLAIN")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("kafka", kafka({S("security.protocol", "SASL_PLAINTEXT"),
                                 S("sasl.mechanisms", "scram-sha-512")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_EQ(r.message, "option \"sasl.mechanisms\" = \"scram-sha-512\" is not a SASL "
                         "mechanism librdkafka knows");
    r = validate("kafka", kafka({S("security.protocol", "SASL_SSL"), S("sasl.mechanism", "MD5")}));
    EXPECT_EQ(r.message, "option \"sasl.mechanism\" = \"MD5\" is not a SASL mechanism "
                         "librdkafka knows");
    // without SASL librdkafka ignores the mechanism, and so does the check
    r = validate("kafka", kafka({S("sasl.mechanisms", "MD5")}));
    EXPECT_TRUE(r.ok()) << r.message;
}

TEST(KafkaOptions, TransactionalIdIsRefused) {
    Result r = validate("kafka", kafka({S("transactional.id", "x")}));
    EXPECT_EQ(r.message, "option \"transactional.id\" is not supported");
}

TEST(KafkaOptions, SecretsAreClassifiedAndMasked) {
    Result r = validate(
        "kafka",
        kafka({S("sasl.username", "alice"), S("sasl.password", "pw1"), S("ssl.key.password", "pw2"),
               S("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"), S("ssl.keystore.password", "pw4"),
               S("sasl.oauthbearer.config", "principal=x"),
               S("ssl.certificate.pem", "public cert")}));
    ASSERT_TRUE(r.ok()) << r.message;
    for (const char *k : {"sasl.password", "ssl.key.password", "ssl.key.pem",
                          "ssl.keystore.password", "sasl.oauthbearer.config"}) {
        EXPECT_TRUE(r.at(k).secret) << k;
        EXPECT_EQ(r.at(k).shown, "***") << k;
        EXPECT_NE(r.at(k).value, "***") << k;
    }
    EXPECT_EQ(r.at("sasl.password").value, "pw1");
    for (const char *k : {"sasl.username", "ssl.certificate.pem", "bootstrap.servers"}) {
        EXPECT_FALSE(r.at(k).secret) << k;
        EXPECT_EQ(r.at(k).shown, r.at(k).value) << k;
    }
}

TEST(SecretKeys, TheRuleCoversPasswordsSecretsTokensAndKeyMaterial) {
    for (const char *k :
         {"sasl.password", "ssl.key.password", "ssl.keystore.password",
          "sasl.oauthbearer.client.secret", "ssl.key.pem", "ssl_key", "sasl.oauthbearer.config",
          "some.api.token", "Client.Credentials", "private.thing", "db.passwd"})
        EXPECT_TRUE(bk::options::is_secret_key(k)) << k;
    for (const char *k : {"sasl.username", "ssl.certificate.pem", "ssl.ca.pem", "ssl.key.location",
                          "bootstrap.servers", "key", "url", "topic", "partitioner"})
        EXPECT_FALSE(bk::options::is_secret_key(k)) << k;
}

TEST(KafkaOptions, PropertiesTheBuildLacksAreRefusedWithLibrdkafkaMessage) {
    // Debian's librdkafka is built without OIDC; whichever build, librdkafka decides.
    Result r = validate("kafka", kafka({S("sasl.oauthbearer.client.secret", "s3cret")}));
    if (r.ok()) {
        EXPECT_TRUE(r.at("sasl.oauthbearer.client.secret").secret);
    } else {
        EXPECT_EQ(r.message,
                  "invalid value for librdkafka property \"sasl.oauthbearer.client.secret\"");
        EXPECT_TRUE(contains(r.detail, "not supported in this build")) << r.detail;
        EXPECT_FALSE(contains(r.detail, "s3cret"));
    }
}

TEST(KafkaOptions, PrivilegedPropertiesAreClassified) {
    Result r =
        validate("kafka", kafka({S("ssl.ca.location", "/etc/ssl/ca.pem"),
                                 S("sasl.kerberos.kinit.cmd", "kinit"),
                                 S("plugin.library.paths", ""), S("sasl.kerberos.keytab", "/k")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("ssl.ca.location").privilege, BK_PRIV_READ_SERVER_FILES);
    EXPECT_EQ(r.at("sasl.kerberos.keytab").privilege, BK_PRIV_READ_SERVER_FILES);
    EXPECT_EQ(r.at("sasl.kerberos.kinit.cmd").privilege, BK_PRIV_EXECUTE_SERVER_PROGRAM);
    EXPECT_EQ(r.at("plugin.library.paths").privilege, BK_PRIV_SUPERUSER);
    EXPECT_EQ(r.at("acks").privilege, BK_PRIV_NONE);
    EXPECT_EQ(bk_sink_option_privilege("kafka", "ssl.engine.location"), BK_PRIV_SUPERUSER);
    EXPECT_EQ(bk_sink_option_privilege("kafka", "ssl.key.location"), BK_PRIV_READ_SERVER_FILES);
    EXPECT_EQ(bk_sink_option_privilege("kafka", "linger.ms"), BK_PRIV_NONE);
    EXPECT_EQ(bk_sink_option_privilege("redis", "ssl.key.location"), BK_PRIV_NONE);
    EXPECT_EQ(bk_sink_option_privilege(nullptr, "x"), BK_PRIV_NONE);
}

TEST(KafkaOptions, PluginPathsAreNotLoadedWhileValidating) {
    // librdkafka's own setter would dlopen() this path (and fail here).
    Result r = validate("kafka", kafka({S("plugin.library.paths", "/nonexistent/libplugin.so")}));
    ASSERT_TRUE(r.ok()) << r.message << " / " << r.detail;
    EXPECT_EQ(r.at("plugin.library.paths").privilege, BK_PRIV_SUPERUSER);
    r = validate("kafka", kafka({N("plugin.library.paths", "1")}));
    EXPECT_EQ(r.message, "invalid value for librdkafka property \"plugin.library.paths\"");
}

TEST(KafkaOptions, SecretsGivenAsNumbersAreStillMasked) {
    Result r = validate("kafka", kafka({N("ssl.keystore.password", "12345")}));
    ASSERT_TRUE(r.ok()) << r.message; // a string property takes a number's text
    EXPECT_EQ(r.at("ssl.keystore.password").shown, "***");
}

TEST(KafkaOptions, EndpointIsTheFirstBootstrapServer) {
    struct Case {
        const char *list, *host;
        int port;
        const char *display;
    };
    const Case cases[] = {
        {"b1:9093,b2:9094", "b1", 9093, "b1:9093"},
        {" b1 , b2", "b1", 9092, "b1:9092"},
        {"SASL_SSL://kafka.example.com:9096", "kafka.example.com", 9096, "kafka.example.com:9096"},
        {"[::1]:19092", "::1", 19092, "[::1]:19092"},
        {"[fe80::1]", "fe80::1", 9092, "[fe80::1]:9092"},
    };
    for (const auto &c : cases) {
        Result r = validate("kafka", {S("bootstrap.servers", c.list)});
        ASSERT_TRUE(r.ok()) << c.list << ": " << r.message;
        ASSERT_TRUE(r.has_endpoint);
        EXPECT_EQ(r.ep_what, "Kafka bootstrap server");
        EXPECT_EQ(r.ep_host, c.host) << c.list;
        EXPECT_EQ(r.ep_port, c.port) << c.list;
        EXPECT_EQ(r.ep_display, c.display) << c.list;
    }
    for (const char *bad : {"b1:0", "b1:65536", "b1:x", ":9092", "[::1"}) {
        Result r = validate("kafka", {S("bootstrap.servers", bad)});
        EXPECT_EQ(r.code, BK_INVALID_ARGUMENT) << bad;
        EXPECT_TRUE(contains(r.message, "bootstrap.servers")) << r.message;
    }
}

TEST(KafkaOptions, TopicTemplateIsValidated) {
    Result r = validate("kafka", kafka({S("topic", "cdc.{schema}.{table}-{sink}")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("topic").value, "cdc.{schema}.{table}-{sink}");
    r = validate("kafka", kafka({S("topic", "cdc.{tabel}")}));
    EXPECT_EQ(r.message, "option \"topic\": unknown placeholder {tabel} at position 5");
    EXPECT_TRUE(contains(r.hint, "{schema}, {table} and {sink}"));
    r = validate("kafka", kafka({S("topic", "orders/v1")}));
    EXPECT_EQ(r.message,
              "option \"topic\": '/' is not allowed in a Kafka topic name at position 7");
    r = validate("kafka", kafka({S("topic", "{id}")}));
    EXPECT_EQ(r.message, "option \"topic\": unknown placeholder {id} at position 1");
    r = validate("kafka", kafka({N("topic", "5")}));
    EXPECT_EQ(r.message,
              "option \"topic\" must be a string (a topic name template), not the number 5");
}

// ---------------------------------------------------------------- redis

TEST(RedisOptions, DefaultsAndEndpoint) {
    Result r = validate("redis", {S("url", "redis://cache.internal"), S("command", "XADD")});
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("url").value, "redis://cache.internal:6379/0");
    EXPECT_FALSE(r.at("url").secret);
    EXPECT_EQ(r.at("command").value, "xadd");
    EXPECT_EQ(r.at("key").value, "batchkit:{sink}");
    EXPECT_TRUE(r.at("key").is_default);
    EXPECT_EQ(r.at("connect_timeout_ms").value, "2000");
    EXPECT_FALSE(r.has("outbox_target")); // the worker's default is the sink's name
    EXPECT_FALSE(r.has("maxlen"));
    EXPECT_FALSE(r.has("ttl_ms"));
    EXPECT_EQ(r.ep_what, "Redis server");
    EXPECT_EQ(r.ep_host, "cache.internal");
    EXPECT_EQ(r.ep_port, 6379);
    EXPECT_EQ(r.ep_display, "cache.internal:6379");
}

TEST(RedisOptions, UrlAndCommandAreRequired) {
    Result r = validate("redis", {S("command", "xadd")});
    EXPECT_EQ(r.message, "a redis sink needs option \"url\"");
    r = validate("redis", {kRedis});
    EXPECT_EQ(r.message, "a redis sink needs option \"command\"");
    EXPECT_TRUE(contains(r.detail, "hset")) << r.detail;
}

TEST(RedisOptions, WorkerOptions) {
    Result r = validate("redis",
                        redis({N("connect_timeout_ms", "500"), S("outbox_target", "app:outbox")}));
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("connect_timeout_ms").value, "500");
    EXPECT_EQ(r.at("outbox_target").value, "app:outbox");
    r = validate("redis", redis({N("connect_timeout_ms", "0")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    r = validate("redis", redis({S("outbox_target", "")}));
    EXPECT_EQ(r.message, "option \"outbox_target\" must not be empty");
}

TEST(RedisOptions, PasswordInUrlIsASecretShownMasked) {
    Result r =
        validate("redis", {S("url", "redis://app:s3cr%40t@10.0.0.5:6380/2"), S("command", "xadd")});
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_TRUE(r.at("url").secret);
    EXPECT_EQ(r.at("url").shown, "redis://app:***@10.0.0.5:6380/2");
    EXPECT_EQ(r.at("url").value, "redis://app:s3cr%40t@10.0.0.5:6380/2");
    r = validate("redis", {S("url", "redis://:pw@h"), S("command", "xadd")});
    EXPECT_EQ(r.at("url").shown, "redis://:***@h:6379/0");
    r = validate("redis", {S("url", "redis://bob@h/3"), S("command", "xadd")});
    EXPECT_FALSE(r.at("url").secret);
    EXPECT_EQ(r.at("url").shown, "redis://bob@h:6379/3");
}

TEST(RedisOptions, UnixSocketUrls) {
    Result r =
        validate("redis", {S("url", "unix:///run/redis/redis.sock?db=3"), S("command", "xadd")});
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("url").value, "unix:///run/redis/redis.sock?db=3");
    EXPECT_EQ(r.ep_unix, "/run/redis/redis.sock");
    EXPECT_EQ(r.ep_host, "");
    EXPECT_EQ(r.ep_port, 0);
    r = validate("redis", {S("url", "unix://:pw@/tmp/r.sock"), S("command", "xadd")});
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.at("url").shown, "unix://:***@/tmp/r.sock");
    EXPECT_TRUE(r.at("url").secret);
}

TEST(RedisOptions, TlsIsRefusedClearly) {
    Result r = validate("redis", {S("url", "rediss://h:6380/0")});
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    EXPECT_TRUE(contains(r.message, "TLS not supported")) << r.message;
}

TEST(RedisOptions, BadUrlsNeverEchoThePassword) {
    const char *bad[] = {"redis://u:hunter2@h:99999/0",
                         "redis://u:hunter2@h:6379/x",
                         "redis://u:hunter2@h:6379/0?timeout=1",
                         "redis://u:hunter2%zz@h",
                         "redis://u:hunter2@",
                         "redis://u:hunter2@h/us/er",
                         "redis://u:hunter2@[::1/0",
                         "http://u:hunter2@h",
                         "redis://u:hunter2@ho st",
                         "unix://u:hunter2@/p?x=1",
                         "hunter2",
                         "unix://u:hunter2@host/p"};
    for (const char *u : bad) {
        Result r = validate("redis", {S("url", u)});
        EXPECT_EQ(r.code, BK_INVALID_ARGUMENT) << u;
        EXPECT_FALSE(contains(r.message + r.detail + r.hint, "hunter2")) << r.message;
        EXPECT_TRUE(contains(r.message, "\"url\"")) << r.message;
    }
}

TEST(RedisOptions, CommandsAndTheOptionsThatApplyToThem) {
    for (const char *c : {"xadd", "lpush", "rpush", "publish", "set", "hset"}) {
        Result r = validate("redis", redis({S("command", c), S("key", "t:{id}")}));
        EXPECT_TRUE(r.ok()) << c << ": " << r.message;
    }
    Result r = validate("redis", redis({S("command", "zadd")}));
    EXPECT_EQ(r.message, "option \"command\" must be \"xadd\", \"lpush\", \"rpush\", \"publish\", "
                         "\"set\" or \"hset\", not \"zadd\"");
    r = validate("redis", redis({N("maxlen", "1000")}));
    EXPECT_TRUE(r.ok()) << r.message; // with xadd
    r = validate("redis", redis({S("command", "lpush"), N("maxlen", "1000")}));
    EXPECT_EQ(r.message, "option \"maxlen\" applies only to command \"xadd\", not \"lpush\"");
    r = validate("redis", redis({S("command", "set"), S("key", "t:{id}"), N("ttl_ms", "60000")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("redis", redis({S("command", "hset"), S("key", "t:{id}"), N("ttl_ms", "60000")}));
    EXPECT_EQ(r.message, "option \"ttl_ms\" applies only to command \"set\", not \"hset\"");
    r = validate("redis", redis({N("maxlen", "0")}));
    EXPECT_EQ(r.message, "option \"maxlen\" must be an integer from 1 to 1000000000000 (stream "
                         "entries), not 0");
    r = validate("redis", redis({B("idempotency_field", false)}));
    EXPECT_TRUE(r.ok()) << r.message; // with xadd
    r = validate("redis", redis({S("command", "lpush"), B("idempotency_field", false)}));
    EXPECT_EQ(r.message,
              "option \"idempotency_field\" applies only to command \"xadd\", not \"lpush\"");
    r = validate("redis", redis({S("idempotency_field", "no")}));
    EXPECT_EQ(r.message.rfind("option \"idempotency_field\" must be true or false", 0), 0u)
        << r.message;
}

TEST(RedisOptions, KeyTemplates) {
    Result r = validate("redis", redis({S("command", "set")}));
    EXPECT_EQ(r.message,
              "a redis sink with command \"set\" needs option \"key\" with a column placeholder");
    r = validate("redis", redis({S("command", "set"), S("key", "users:{id}")}));
    EXPECT_TRUE(r.ok()) << r.message;
    r = validate("redis", redis({S("command", "hset"), S("key", "users")}));
    EXPECT_EQ(r.message, "option \"key\" must contain a column placeholder for command \"hset\"");
    r = validate("redis", redis({S("command", "hset"), S("key", "{schema}.{table}")}));
    EXPECT_EQ(r.code, BK_INVALID_ARGUMENT);
    r = validate("redis", redis({S("key", "orders:{region")}));
    EXPECT_EQ(r.message, "option \"key\": unclosed '{' at position 8");
    r = validate("redis", redis({S("key", "a}b")}));
    EXPECT_EQ(r.message, "option \"key\": unmatched '}' at position 2");
    r = validate("redis", redis({S("key", "{{orders}}:{id}")}));
    EXPECT_TRUE(r.ok()) << r.message;
}

TEST(RedisOptions, UnknownOptionsAreNamedWithTheValidOnes) {
    Result r = validate("redis", redis({N("ttl", "5")}));
    EXPECT_EQ(r.message, "unknown option \"ttl\" for a redis sink");
    EXPECT_TRUE(contains(r.hint,
                         "Did you mean \"ttl_ms\"? Valid options for a redis sink: "
                         "batch_size, command, connect_timeout_ms, format, idempotency_field, key, "
                         "max_attempts"))
        << r.hint;
    EXPECT_TRUE(contains(r.hint, "ttl_ms")) << r.hint;
    r = validate("redis", redis({S("compression.type", "lz4")}));
    EXPECT_TRUE(contains(r.hint, "only kafka sinks")) << r.hint;
    r = validate("redis", redis({S("topic", "t")}));
    EXPECT_EQ(r.message, "unknown option \"topic\" for a redis sink");
}

// ---------------------------------------------------------------- templates (C++ API)

namespace o = bk::options;

TEST(NameTemplate, ParsesAndRenders) {
    auto parts = o::parse_name_template("{{app}}:{schema}.{table}:{id}:{sink}:{gone}",
                                        o::TemplateFlavor::RedisKey, "key");
    o::TemplateValues v;
    v.schema = "public";
    v.table = "users";
    v.sink = "cache";
    v.column = [](std::string_view c) -> std::optional<std::string> {
        if (c == "id")
            return std::string("42");
        return std::nullopt;
    };
    EXPECT_EQ(o::render_template(parts, v), "{app}:public.users:42:cache:");
    EXPECT_TRUE(o::template_is_per_row(parts));
    auto topic = o::parse_name_template("{schema}.{table}", o::TemplateFlavor::KafkaTopic, "topic");
    EXPECT_FALSE(o::template_is_per_row(topic));
    EXPECT_EQ(o::render_template(topic, v), "public.users");
}

TEST(NameTemplate, RejectsBadSyntax) {
    auto fails = [](const char *t, o::TemplateFlavor f) {
        try {
            o::parse_name_template(t, f, "x");
        } catch (const o::OptionError &) {
            return true;
        }
        return false;
    };
    EXPECT_TRUE(fails("", o::TemplateFlavor::RedisKey));
    EXPECT_TRUE(fails("{}", o::TemplateFlavor::RedisKey));
    EXPECT_TRUE(fails("{a{b}}", o::TemplateFlavor::RedisKey));
    EXPECT_TRUE(fails(("{" + std::string(64, 'c') + "}").c_str(), o::TemplateFlavor::RedisKey));
    EXPECT_FALSE(fails(("{" + std::string(63, 'c') + "}").c_str(), o::TemplateFlavor::RedisKey));
    EXPECT_TRUE(fails(std::string(250, 't').c_str(), o::TemplateFlavor::KafkaTopic));
    EXPECT_FALSE(fails(std::string(249, 't').c_str(), o::TemplateFlavor::KafkaTopic));
    EXPECT_TRUE(fails("..", o::TemplateFlavor::KafkaTopic));
    EXPECT_TRUE(fails("{{x}}", o::TemplateFlavor::KafkaTopic));
    EXPECT_TRUE(fails("caf\xc3\xa9", o::TemplateFlavor::KafkaTopic));
}

TEST(RedisUrl, ParsesEveryForm) {
    auto u = o::parse_redis_url("redis://[::1]:7000/5");
    EXPECT_EQ(u.host, "::1");
    EXPECT_EQ(u.port, 7000);
    EXPECT_EQ(u.db, 5);
    EXPECT_EQ(u.normalized(true), "redis://[::1]:7000/5");
    u = o::parse_redis_url("REDIS://user:p%3Aw@h");
    EXPECT_EQ(u.user, "user");
    EXPECT_EQ(u.password, "p:w");
    EXPECT_EQ(u.normalized(false), "redis://user:p%3Aw@h:6379/0");
    u = o::parse_redis_url("redis://h:1/");
    EXPECT_EQ(u.db, 0);
    u = o::parse_redis_url("redis://u:p@ss@h"); // last '@' ends the user information
    EXPECT_EQ(u.password, "p@ss");
    EXPECT_EQ(u.host, "h");
    u = o::parse_redis_url("unix:///tmp/r.sock");
    EXPECT_TRUE(u.is_unix);
    EXPECT_EQ(u.db, 0);
    EXPECT_EQ(u.normalized(true), "unix:///tmp/r.sock");
    EXPECT_THROW(o::parse_redis_url("redis://h/2147483648"), o::OptionError);
    EXPECT_EQ(o::parse_redis_url("redis://h/2147483647").db, 2147483647);
    EXPECT_THROW(o::parse_redis_url("unix://"), o::OptionError);
    EXPECT_THROW(o::parse_redis_url("unix:///" + std::string(120, 'p')), o::OptionError);
}

// ---------------------------------------------------------------- reachability probe

namespace {

struct Listener {
    int fd = -1;
    int port = 0;
    explicit Listener(int backlog = 16) {
        fd = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
        EXPECT_EQ(::listen(fd, backlog), 0);
        socklen_t len = sizeof a;
        ::getsockname(fd, reinterpret_cast<sockaddr *>(&a), &len);
        port = ntohs(a.sin_port);
    }
    ~Listener() { ::close(fd); }
};

int closed_port() {
    Listener l;
    return l.port; // closed when l goes out of scope
}

} // namespace

TEST(NetProbe, ConnectsToAListeningPort) {
    Listener l;
    bk_status st;
    EXPECT_EQ(bk_net_probe("127.0.0.1", l.port, nullptr, 1000, &st), BK_OK) << st.message;
    EXPECT_EQ(bk_net_probe("localhost", l.port, nullptr, 1000, &st), BK_OK) << st.message;
}

TEST(NetProbe, ReportsRefusedConnections) {
    int port = closed_port();
    bk_status st;
    EXPECT_EQ(bk_net_probe("127.0.0.1", port, nullptr, 1000, &st), BK_UNAVAILABLE);
    EXPECT_STREQ(st.message, "connection refused");
}

TEST(NetProbe, ReportsUnresolvableHosts) {
    bk_status st;
    // a generous deadline: the resolver, not the probe, should give the answer
    EXPECT_EQ(bk_net_probe("no-such-host.invalid", 6379, nullptr, 5000, &st), BK_UNAVAILABLE);
    EXPECT_TRUE(contains(st.message, "could not resolve host \"no-such-host.invalid\""))
        << st.message;
}

TEST(NetProbe, UnixSockets) {
    std::string path = "/tmp/bk-probe-" + std::to_string(::getpid()) + ".sock";
    ::unlink(path.c_str());
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::snprintf(a.sun_path, sizeof a.sun_path, "%s", path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(fd, 4), 0);
    bk_status st;
    EXPECT_EQ(bk_net_probe(nullptr, 0, path.c_str(), 1000, &st), BK_OK) << st.message;
    ::close(fd);
    ::unlink(path.c_str());
    EXPECT_EQ(bk_net_probe(nullptr, 0, path.c_str(), 1000, &st), BK_UNAVAILABLE);
    EXPECT_STREQ(st.message, "no such file or directory");
}

TEST(NetProbe, GivesUpAtTheDeadline) {
    // A listener whose accept queue is full drops further SYNs: connect hangs.
    Listener l(0);
    std::vector<int> fill;
    for (int i = 0; i < 4; i++) {
        int c = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<uint16_t>(l.port));
        ::connect(c, reinterpret_cast<sockaddr *>(&a), sizeof a);
        fill.push_back(c);
    }
    ::usleep(100 * 1000);
    bk_status st;
    auto t0 = std::chrono::steady_clock::now();
    bk_code rc = bk_net_probe("127.0.0.1", l.port, nullptr, 300, &st);
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    for (int c : fill)
        ::close(c);
    EXPECT_EQ(rc, BK_UNAVAILABLE);
    EXPECT_TRUE(contains(st.message, "timed out") ||
                contains(st.message, "no answer within 300 ms"))
        << st.message;
    EXPECT_GE(ms, 250);
    EXPECT_LT(ms, 1000);
}

TEST(NetProbe, RefusesBadArguments) {
    bk_status st;
    EXPECT_EQ(bk_net_probe(nullptr, 80, nullptr, 1000, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_net_probe("h", 0, nullptr, 1000, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_net_probe("h", 70000, nullptr, 1000, &st), BK_INVALID_ARGUMENT);
    EXPECT_EQ(bk_net_probe("h", 80, nullptr, 0, &st), BK_INVALID_ARGUMENT);
}
