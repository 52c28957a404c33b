// kafka_config.cpp — from sink options to a librdkafka configuration.
//
// Every librdkafka property passes through as given; batchkit only fills in the
// defaults its guarantees rest on when the user did not say otherwise:
// idempotence + acks=all (no loss, no duplicates from producer retries), at most
// 5 requests in flight (what keeps idempotent ordering across retries),
// murmur2_random (Java's partitioner: keyed messages land where Java producers
// put them) and a bounded message.timeout.ms (a dead broker turns into
// retryable failures instead of messages parked for librdkafka's 5 minutes).
#include "sinks/kafka_sink.hpp"

#include "options/kafka_defaults.hpp"

#include <algorithm>
#include <set>

namespace bk {

namespace {

// Options the core or the worker use; never librdkafka properties.
const std::set<std::string> kBatchkitOptions = {"name",
                                                "topic",
                                                "key",
                                                "format",
                                                "batch_size",
                                                "max_batch_bytes",
                                                "max_wait_ms",
                                                "max_queue",
                                                "on_full",
                                                "max_attempts",
                                                "retry_backoff_ms",
                                                "retry_backoff_max_ms",
                                                "send_timeout_ms",
                                                "copy_payloads",
                                                "headers",
                                                "key_columns",
                                                "url",
                                                "command",
                                                "maxlen",
                                                "ttl_ms",
                                                "connect_timeout_ms"};

bool has_any(const Options &o, std::initializer_list<const char *> keys) {
    for (const char *k : keys)
        if (o.get(k))
            return true;
    return false;
}

bool is_false(const std::string &v) {
    std::string s = v;
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s == "false" || s == "0" || s == "off" || s == "no";
}

} // namespace

bool kafka_is_batchkit_option(const std::string &key) {
    return kBatchkitOptions.count(key) != 0;
}

std::vector<std::pair<std::string, std::string>> kafka_effective_config(const Options &opts) {
    std::vector<std::pair<std::string, std::string>> conf;
    auto dflt = [&](std::initializer_list<const char *> aliases, const std::string &value) {
        if (!has_any(opts, aliases))
            conf.emplace_back(*aliases.begin(), value);
    };
    bool idempotent = !is_false(opts.get_or("enable.idempotence", "true"));
    dflt({"enable.idempotence"}, "true");
    dflt({"acks", "request.required.acks"}, "all");
    dflt({"partitioner"}, "murmur2_random");
    // Idempotence keeps order with up to 5 in flight; without it only 1 does.
    dflt({"max.in.flight.requests.per.connection", "max.in.flight"}, idempotent ? "5" : "1");
    dflt({"message.timeout.ms", "delivery.timeout.ms"}, kKafkaDefaultMessageTimeoutMs);
    dflt({"linger.ms", "queue.buffering.max.ms"}, kKafkaDefaultLingerMs);
    dflt({"batch.num.messages"}, "10000");
    dflt({"queue.buffering.max.messages"}, "500000");
    dflt({"client.id"}, "batchkit-" + opts.get_or("name", "sink"));
    // Idle connections closed by brokers are normal; do not log them as errors.
    dflt({"log.connection.close"}, "false");
    for (const auto &kv : opts.ordered())
        if (!kafka_is_batchkit_option(kv.first))
            conf.push_back(kv);
    return conf;
}

bk_send_code kafka_classify_error(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
        return BK_SEND_OK;
    // The message itself is at fault: sending it again cannot succeed.
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: // local check or broker
    case RD_KAFKA_RESP_ERR_INVALID_MSG:        // CRC / corrupt record
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD: // broker-side record validation
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION: // topic rendered from the row is illegal
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR__BAD_MSG:
        return BK_SEND_REJECTED;
    // Everything else is about the sink, not the message: broker or network down,
    // timeouts, purges, a missing topic (UNKNOWN_TOPIC_OR_PART, _UNKNOWN_TOPIC: an
    // operator creates it, the rows wait in order instead of being dead-lettered)
    // and missing ACLs (TOPIC/CLUSTER_AUTHORIZATION_FAILED: a grant fixes every
    // message at once). Retrying never loses data; the stats show the sink failing.
    default:
        return BK_SEND_RETRYABLE;
    }
}

} // namespace bk
