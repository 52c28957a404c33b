// name_template.cpp — parsing and rendering of topic and key templates.
#include "options/name_template.hpp"

#include <string>

#include "options/option_error.hpp"

namespace bk::options {

namespace {

constexpr size_t kKafkaTopicMax = 249; // Kafka's own limit on topic names
constexpr size_t kColumnNameMax = 63;  // NAMEDATALEN - 1

bool kafka_topic_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

std::string at(size_t pos) {
    return " at position " + std::to_string(pos + 1);
}

const char *placeholders_hint(TemplateFlavor f) {
    return f == TemplateFlavor::KafkaTopic
               ? "Topic placeholders are {schema}, {table} and {sink}."
               : "Key placeholders are {schema}, {table}, {sink} and {<column>} for any column, "
                 "e.g. {id}; write {{ and }} for literal braces.";
}

} // namespace

std::vector<TemplatePart> parse_name_template(std::string_view tpl, TemplateFlavor flavor,
                                              const char *option) {
    const std::string opt = std::string("option \"") + option + "\"";
    if (tpl.empty())
        throw OptionError(opt + " must not be empty", "", placeholders_hint(flavor));

    std::vector<TemplatePart> parts;
    std::string literal;
    size_t literal_bytes = 0;
    auto flush_literal = [&] {
        if (!literal.empty()) {
            parts.push_back({TemplatePartKind::Literal, literal});
            literal.clear();
        }
    };

    for (size_t i = 0; i < tpl.size(); i++) {
        char c = tpl[i];
        if (c == '{' && i + 1 < tpl.size() && tpl[i + 1] == '{') {
            if (flavor == TemplateFlavor::KafkaTopic)
                throw OptionError(opt + ": a Kafka topic name cannot contain '{'" + at(i),
                                  "Topic names use only ASCII letters, digits, '.', '_' and '-'.");
            literal.push_back('{');
            literal_bytes++;
            i++;
            continue;
        }
        if (c == '}') {
            if (i + 1 < tpl.size() && tpl[i + 1] == '}' && flavor == TemplateFlavor::RedisKey) {
                literal.push_back('}');
                literal_bytes++;
                i++;
                continue;
            }
            throw OptionError(opt + ": unmatched '}'" + at(i), "", placeholders_hint(flavor));
        }
        if (c == '{') {
            size_t close = tpl.find_first_of("{}", i + 1);
            if (close == std::string_view::npos || tpl[close] == '{')
                throw OptionError(opt + ": unclosed '{'" + at(i), "", placeholders_hint(flavor));
            std::string_view name = tpl.substr(i + 1, close - i - 1);
            TemplatePart part{TemplatePartKind::Column, std::string(name)};
            if (name == "schema")
                part = {TemplatePartKind::Schema, {}};
            else if (name == "table")
                part = {TemplatePartKind::Table, {}};
            else if (name == "sink")
                part = {TemplatePartKind::Sink, {}};
            else if (name.empty())
                throw OptionError(opt + ": empty placeholder {}" + at(i), "",
                                  placeholders_hint(flavor));
            else if (flavor == TemplateFlavor::KafkaTopic)
                throw OptionError(opt + ": unknown placeholder {" + std::string(name) + "}" + at(i),
                                  "", placeholders_hint(flavor));
            else if (name.size() > kColumnNameMax)
                throw OptionError(opt + ": column placeholder" + at(i) + " is longer than " +
                                  std::to_string(kColumnNameMax) + " bytes");
            flush_literal();
            parts.push_back(std::move(part));
            i = close;
            continue;
        }
        if (flavor == TemplateFlavor::KafkaTopic && !kafka_topic_char(c)) {
            std::string shown = (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f)
                                    ? std::string("'") + c + "'"
                                    : "a control character";
            if (static_cast<unsigned char>(c) >= 0x80)
                shown = "a non-ASCII character";
            throw OptionError(opt + ": " + shown + " is not allowed in a Kafka topic name" + at(i),
                              "Topic names use only ASCII letters, digits, '.', '_' and '-'.",
                              placeholders_hint(flavor));
        }
        literal.push_back(c);
        literal_bytes++;
    }
    flush_literal();

    if (flavor == TemplateFlavor::KafkaTopic) {
        if (literal_bytes > kKafkaTopicMax)
            throw OptionError(opt + " is longer than Kafka's limit of 249 bytes for a topic name");
        if (parts.size() == 1 && parts[0].kind == TemplatePartKind::Literal &&
            (parts[0].text == "." || parts[0].text == ".."))
            throw OptionError(opt + ": \"" + parts[0].text + "\" is not a valid Kafka topic name");
    }
    return parts;
}

bool template_is_per_row(const std::vector<TemplatePart> &parts) {
    for (const auto &p : parts)
        if (p.kind == TemplatePartKind::Column)
            return true;
    return false;
}

std::string render_template(const std::vector<TemplatePart> &parts, const TemplateValues &v) {
    std::string out;
    for (const auto &p : parts) {
        switch (p.kind) {
        case TemplatePartKind::Literal:
            out += p.text;
            break;
        case TemplatePartKind::Schema:
            out += v.schema;
            break;
        case TemplatePartKind::Table:
            out += v.table;
            break;
        case TemplatePartKind::Sink:
            out += v.sink;
            break;
        case TemplatePartKind::Column:
            if (v.column) {
                if (auto val = v.column(p.text))
                    out += *val;
            }
            break;
        }
    }
    return out;
}

} // namespace bk::options
