// kafka_options.cpp — validation of a Kafka sink's options.
//
// batchkit's own options (the common ones and `topic`) are checked here; every
// other key is a librdkafka configuration property and goes through librdkafka's
// own parser, rd_kafka_conf_set, on a scratch rd_kafka_conf_t that lives only
// for this call — so an unknown or invalid property is refused with
// librdkafka's own message, for exactly the librdkafka the worker will use.
// rd_kafka_conf_new starts no thread and opens no socket; the one property
// whose setter has a side effect (plugin.library.paths loads libraries) is
// checked for type only.
//
// batchkit's defaults are set on the scratch conf first, so reading it back
// (rd_kafka_conf_get) gives the effective values the cross-checks need.
#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <memory>
#include <string>

#include "options/kafka_defaults.hpp"
#include "options/name_template.hpp"
#include "options/option_error.hpp"
#include "options/sink_config.hpp"

namespace bk::options {

namespace {

constexpr const char *kDefaultTopic = "{schema}.{table}";
constexpr const char *kDefaultPartitioner = "murmur2_random"; // what Java producers do
constexpr int kDefaultKafkaPort = 9092;

class ScratchConf {
  public:
    ScratchConf() : conf_(rd_kafka_conf_new()) {
        if (conf_ == nullptr)
            throw std::bad_alloc();
    }
    ~ScratchConf() { rd_kafka_conf_destroy(conf_); }
    ScratchConf(const ScratchConf &) = delete;
    ScratchConf &operator=(const ScratchConf &) = delete;

    rd_kafka_conf_res_t set(const std::string &key, const std::string &value, std::string &err) {
        char buf[512] = "";
        rd_kafka_conf_res_t res =
            rd_kafka_conf_set(conf_, key.c_str(), value.c_str(), buf, sizeof buf);
        err = buf;
        while (!err.empty() && (err.back() == '\n' || err.back() == ' '))
            err.pop_back();
        return res;
    }
    std::string get(const char *key) const {
        char buf[512];
        size_t size = sizeof buf;
        if (rd_kafka_conf_get(conf_, key, buf, &size) != RD_KAFKA_CONF_OK)
            return {};
        return buf;
    }

  private:
    rd_kafka_conf_t *conf_;
};

std::vector<std::string> kafka_option_names() {
    std::vector<std::string> v(kCommonOptionNames, kCommonOptionNames + kCommonOptionCount);
    v.push_back("topic");
    v.push_back("partitioner");
    v.push_back("copy_payloads");
    v.push_back("headers");
    std::sort(v.begin(), v.end());
    return v;
}

std::string librdkafka_says(const std::string &err) {
    return std::string("librdkafka ") + rd_kafka_version_str() + " says: " + err;
}

// Replace every occurrence of a secret value in librdkafka's message.
std::string scrub(std::string msg, const std::string &secret) {
    if (secret.empty())
        return msg;
    for (size_t p = msg.find(secret); p != std::string::npos; p = msg.find(secret, p + 3))
        msg.replace(p, secret.size(), "***");
    return msg;
}

// The first broker of a bootstrap list: "[proto://]host[:port]" or "[v6]:port".
Endpoint first_bootstrap_server(const std::string &key, const std::string &list) {
    size_t start = list.find_first_not_of(" \t,");
    if (start == std::string::npos)
        throw OptionError("option \"" + key + "\" must name at least one broker", "",
                          "For example {\"bootstrap.servers\": \"broker1:9092,broker2:9092\"}.");
    size_t end = list.find_first_of(" \t,", start);
    std::string server = list.substr(start, end == std::string::npos ? end : end - start);
    size_t scheme = server.find("://");
    if (scheme != std::string::npos)
        server = server.substr(scheme + 3);
    Endpoint e;
    e.what = "Kafka bootstrap server";
    e.port = kDefaultKafkaPort;
    std::string port;
    if (!server.empty() && server[0] == '[') {
        size_t close = server.find(']');
        if (close == std::string::npos)
            throw OptionError("option \"" + key + "\": unclosed '[' in \"" + server + "\"");
        e.host = server.substr(1, close - 1);
        if (close + 1 < server.size()) {
            if (server[close + 1] != ':')
                throw OptionError("option \"" + key + "\": unexpected text after \"" +
                                  server.substr(0, close + 1) + "\"");
            port = server.substr(close + 2);
        }
    } else if (std::count(server.begin(), server.end(), ':') == 1) {
        size_t colon = server.find(':');
        e.host = server.substr(0, colon);
        port = server.substr(colon + 1);
    } else {
        e.host = server; // a name, or a bare IPv6 address
    }
    if (e.host.empty())
        throw OptionError("option \"" + key + "\": broker \"" + server + "\" has no host");
    if (!port.empty() || (server.size() && server.back() == ':')) {
        bool digits = !port.empty() && port.size() <= 5 &&
                      port.find_first_not_of("0123456789") == std::string::npos;
        int p = digits ? std::stoi(port) : 0;
        if (p < 1 || p > 65535)
            throw OptionError("option \"" + key + "\": the port of broker \"" + server +
                              "\" must be a number from 1 to 65535");
        e.port = p;
    }
    e.display = (e.host.find(':') != std::string::npos ? "[" + e.host + "]" : e.host) + ":" +
                std::to_string(e.port);
    return e;
}

} // namespace

void validate_kafka_options(SinkConfig &cfg, const std::vector<RawOption> &raw) {
    ScratchConf conf;
    std::string err;
    conf.set("enable.idempotence", "true", err);
    conf.set("acks", "all", err);
    conf.set("partitioner", kDefaultPartitioner, err);

    for (const auto &r : raw) {
        if (is_common_option(r.key)) {
            cfg.add(check_common_option(r));
            continue;
        }
        if (r.key == "topic") {
            const std::string &v = require_string(r, "a topic name template");
            parse_name_template(v, TemplateFlavor::KafkaTopic, "topic");
            Option o;
            o.key = r.key;
            o.value = o.shown = v;
            cfg.add(std::move(o));
            continue;
        }
        if (r.key == "outbox_target") {
            const std::string &v = require_string(r, "the topic of enqueue()d messages");
            auto parts = parse_name_template(v, TemplateFlavor::KafkaTopic, "outbox_target");
            if (parts.size() != 1 || parts[0].kind != TemplatePartKind::Literal)
                throw OptionError("option \"outbox_target\" is a topic name, not a template",
                                  "enqueue()d messages have no schema or table.");
            Option o;
            o.key = r.key;
            o.value = o.shown = v;
            cfg.add(std::move(o));
            continue;
        }
        if (r.key == "copy_payloads" || r.key == "headers") {
            cfg.add(check_boolean(r));
            continue;
        }
        if (r.key == "transactional.id")
            throw OptionError(
                "option \"transactional.id\" is not supported",
                "batchkit's producer is idempotent, not transactional: a batch leaves the "
                "queue only after Kafka acknowledged every message in it, and each message "
                "carries an idempotency key header.",
                "Remove it; consumers can drop replayed duplicates by the idempotency key.");
        const bool secret = is_secret_key(r.key);
        if (r.type == BK_JSON_OBJECT || r.type == BK_JSON_ARRAY)
            throw OptionError("librdkafka property \"" + r.key +
                              "\" must be a string, number or boolean, not " + describe_value(r));
        // librdkafka loads plugins as soon as plugin.library.paths is set: never
        // do that here (it needs superuser, and takes effect in the worker).
        rd_kafka_conf_res_t res =
            r.key == "plugin.library.paths"
                ? (r.type == BK_JSON_STRING ? RD_KAFKA_CONF_OK : RD_KAFKA_CONF_INVALID)
                : conf.set(r.key, r.value, err);
        if (r.key == "plugin.library.paths" && res != RD_KAFKA_CONF_OK)
            err = "plugin.library.paths is a list of library paths (a string)";
        if (res == RD_KAFKA_CONF_UNKNOWN) {
            if (r.key.find('.') != std::string::npos)
                throw OptionError("unknown librdkafka property \"" + r.key + "\"",
                                  librdkafka_says(err),
                                  "Dotted keys of a kafka sink are librdkafka configuration "
                                  "properties, spelled as in librdkafka's CONFIGURATION.md.");
            unknown_option("kafka", r.key, kafka_option_names(), librdkafka_says(err),
                           "Any other key must be a librdkafka configuration property, e.g. "
                           "\"compression.type\" or \"acks\".");
        }
        if (res != RD_KAFKA_CONF_OK)
            throw OptionError("invalid value for librdkafka property \"" + r.key + "\"",
                              librdkafka_says(secret ? scrub(err, r.value) : err));
        Option o;
        o.key = r.key;
        o.value = r.value;
        o.type = r.type;
        o.secret = secret;
        o.shown = secret ? "***" : r.value;
        o.origin = BK_OPT_LIBRDKAFKA;
        o.privilege = librdkafka_privilege(r.key);
        cfg.add(std::move(o));
    }

    // bootstrap.servers (or its old name) is what makes a Kafka sink go somewhere.
    const Option *servers = cfg.find("bootstrap.servers");
    if (servers == nullptr)
        servers = cfg.find("metadata.broker.list");
    if (servers == nullptr)
        throw OptionError("a kafka sink needs option \"bootstrap.servers\"", "",
                          "For example {\"bootstrap.servers\": \"broker1:9092,broker2:9092\"}.");
    cfg.endpoint = first_bootstrap_server(servers->key, servers->value);

    // The idempotent producer (batchkit's default) only works with these; say so
    // now rather than when the worker's rd_kafka_new fails. Like librdkafka, only
    // values the user set are checked (librdkafka adjusts its own defaults).
    auto given = [&](const char *a, const char *b) -> const Option * {
        const Option *o = cfg.find(a);
        return o ? o : cfg.find(b);
    };
    // SASL: librdkafka takes any sasl.mechanisms string and refuses an unknown one
    // only when the worker builds the producer (rd_kafka_new); check it now.
    if (conf.get("security.protocol").rfind("sasl_", 0) == 0) {
        const Option *m = given("sasl.mechanisms", "sasl.mechanism");
        const std::string mech = conf.get("sasl.mechanisms");
        const std::string features = "," + conf.get("builtin.features") + ",";
        const char *feature = mech == "GSSAPI"                                     ? "sasl_gssapi"
                              : mech == "PLAIN"                                    ? "sasl_plain"
                              : mech == "SCRAM-SHA-256" || mech == "SCRAM-SHA-512" ? "sasl_scram"
                              : mech == "OAUTHBEARER" ? "sasl_oauthbearer"
                                                      : nullptr;
        const std::string key = m ? m->key : std::string("sasl.mechanisms");
        if (feature == nullptr)
            throw OptionError("option \"" + key + "\" = \"" + mech +
                                  "\" is not a SASL mechanism librdkafka knows",
                              "With security.protocol = " + conf.get("security.protocol") +
                                  " librdkafka accepts GSSAPI, PLAIN, SCRAM-SHA-256, "
                                  "SCRAM-SHA-512 and OAUTHBEARER (upper case, as written).",
                              "For example {\"sasl.mechanisms\": \"SCRAM-SHA-512\"}.");
        if (features.find(std::string(",") + feature + ",") == std::string::npos)
            throw OptionError("SASL mechanism \"" + mech + "\" is not built into librdkafka " +
                                  rd_kafka_version_str(),
                              "Its builtin.features are: " + conf.get("builtin.features") + ".");
    }

    if (conf.get("enable.idempotence") == "true") {
        // o's value (as shown) conflicts with idempotence: why, and what to use instead
        auto conflict = [](const Option *o, const std::string &shown, const char *why,
                           const std::string &use) {
            return OptionError("option \"" + o->key + "\" = " + shown +
                                   " conflicts with enable.idempotence = true",
                               why,
                               use + "Or set \"enable.idempotence\": false as well (a retried "
                                     "batch may then be duplicated or reordered within a "
                                     "partition).");
        };
        if (const Option *a = given("acks", "request.required.acks"); a && conf.get("acks") != "-1")
            throw conflict(a, a->value,
                           "batchkit enables librdkafka's idempotent producer by default; it "
                           "needs every in-sync replica to acknowledge (acks = all).",
                           "Use \"" + a->key + "\": \"all\". ");
        if (const Option *r = given("retries", "message.send.max.retries");
            r && conf.get("retries") == "0")
            throw conflict(r, "0", "The idempotent producer must be able to retry.", "");
        if (const Option *m = given("max.in.flight", "max.in.flight.requests.per.connection");
            m && std::stol(conf.get("max.in.flight")) > 5)
            throw conflict(m, m->value,
                           "The idempotent producer keeps order with at most 5 requests in "
                           "flight per broker connection.",
                           "Use at most 5. ");
        if (const Option *t = given("queue.buffering.backpressure.threshold", "");
            t && std::stol(conf.get("queue.buffering.backpressure.threshold")) > 1)
            throw conflict(t, t->value,
                           "librdkafka's idempotent producer needs a backpressure threshold of 1.",
                           "Remove it. ");
        if (const Option *q = given("queuing.strategy", "");
            q && conf.get("queuing.strategy") != "fifo")
            throw conflict(q, "\"" + q->value + "\"",
                           "The idempotent producer sends each partition's messages in the "
                           "order they were produced (fifo).",
                           "Remove it. ");
    } else if (const Option *g = given("enable.gapless.guarantee", "");
               g && conf.get("enable.gapless.guarantee") == "true") {
        throw OptionError("option \"enable.gapless.guarantee\" needs enable.idempotence = true",
                          "Gapless delivery is a guarantee of librdkafka's idempotent producer.",
                          "Remove \"enable.idempotence\": false, or this option.");
    }

    // More of what rd_kafka_new() refuses (librdkafka's conf finalize), checked
    // against the values the worker will use: batchkit's defaults where none is given.
    const double backoff = std::stod(conf.get("reconnect.backoff.ms"));
    const double backoff_max = std::stod(conf.get("reconnect.backoff.max.ms"));
    if (backoff_max < backoff)
        throw OptionError(
            "option \"reconnect.backoff.max.ms\" (" + conf.get("reconnect.backoff.max.ms") +
                ") must be >= \"reconnect.backoff.ms\" (" + conf.get("reconnect.backoff.ms") + ")",
            "librdkafka's defaults are 100 and 10000 ms.",
            "Raise reconnect.backoff.max.ms or lower reconnect.backoff.ms.");
    {
        // the value the worker uses, and how to name it: as given, or batchkit's default
        struct Used {
            double value;
            std::string shown;
        };
        auto used = [&](const char *key, const char *alias, const char *dflt) {
            const Option *o = given(key, alias);
            return o ? Used{std::stod(conf.get(key)), "\"" + o->key + "\" (" + o->value + ")"}
                     : Used{std::stod(dflt),
                            "\"" + std::string(key) + "\" (" + dflt + ", batchkit's default)"};
        };
        const Used timeout =
            used("message.timeout.ms", "delivery.timeout.ms", kKafkaDefaultMessageTimeoutMs);
        const Used linger = used("linger.ms", "queue.buffering.max.ms", kKafkaDefaultLingerMs);
        if (timeout.value != 0 && timeout.value <= linger.value)
            throw OptionError("option " + timeout.shown + " must be greater than " + linger.shown,
                              "A message may wait linger.ms before it is sent and must still be "
                              "deliverable before it times out.",
                              "Raise message.timeout.ms (0: no timeout) or lower linger.ms.");
    }

    cfg.add_default("topic", kDefaultTopic, BK_JSON_STRING);
    cfg.add_default("copy_payloads", "true", BK_JSON_BOOLEAN);
    if (const Option *h = cfg.find("headers"); h && h->value == "false") {
        const Option *f = cfg.find("format");
        if (f && f->value == "row")
            throw OptionError(
                "option \"headers\" = false needs \"format\" = \"envelope\"",
                "With format \"row\" the message body carries no op, table or seq: without the "
                "headers a consumer could neither tell a delete from an insert nor drop a "
                "replayed duplicate.",
                "Keep the headers, or use the envelope format (it carries op, table and seq).");
    }
    cfg.add_default("headers", "true", BK_JSON_BOOLEAN);
    auto add_rdkafka_default = [&](const char *key, const char *value, bk_json_type type) {
        if (cfg.find(key) != nullptr)
            return;
        cfg.add_default(key, value, type);
        for (auto &o : cfg.options)
            if (o.key == key)
                o.origin = BK_OPT_LIBRDKAFKA;
    };
    add_rdkafka_default("partitioner", kDefaultPartitioner, BK_JSON_STRING);
    add_rdkafka_default("enable.idempotence", "true", BK_JSON_BOOLEAN);
    if (cfg.find("request.required.acks") == nullptr)
        add_rdkafka_default("acks", "all", BK_JSON_STRING);
}

} // namespace bk::options
