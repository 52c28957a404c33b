// kafka_defaults.hpp — librdkafka settings batchkit changes from librdkafka's
// defaults: the worker applies them (sinks/kafka_config.cpp) and create/alter-time
// validation checks the user's options against them (options/kafka_options.cpp).
#pragma once

namespace bk {

constexpr const char *kKafkaDefaultMessageTimeoutMs = "30000"; // librdkafka: 300000
constexpr const char *kKafkaDefaultLingerMs = "5";

} // namespace bk
