// name_template.hpp — templates for Kafka topic names and Redis keys.
//
// A template is literal text with placeholders in braces: {schema}, {table},
// {sink}, and (Redis keys only) the name of any column, e.g. {id}. "{{" and
// "}}" stand for literal braces (Redis Cluster hash tags are written
// "{{user}}:{id}"). Column names are checked for syntax only: the table is not
// known when a sink is created. The same syntax as the flush worker's renderer
// (bk_template_compile in batchkit/encoding.h).
//
// The flush worker renders a parsed template once per row with render_template.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace bk::options {

enum class TemplatePartKind { Literal, Schema, Table, Sink, Column };

struct TemplatePart {
    TemplatePartKind kind;
    std::string text; // the literal text, or the column name; empty otherwise
};

enum class TemplateFlavor {
    KafkaTopic, // literals from [A-Za-z0-9._-], at most 249 bytes; {schema} {table} {sink}
    RedisKey    // any literal bytes; also {column}
};

// Parses `tpl` (the value of option `option`); throws OptionError naming the
// option, the position and what is allowed.
std::vector<TemplatePart> parse_name_template(std::string_view tpl, TemplateFlavor flavor,
                                              const char *option);

// True when the template depends on the row (has a column placeholder).
bool template_is_per_row(const std::vector<TemplatePart> &parts);

struct TemplateValues {
    std::string_view schema;
    std::string_view table;
    std::string_view sink;
    // Value of a column by name; nullopt when the row has no such column.
    std::function<std::optional<std::string>(std::string_view)> column;
};

// Renders a parsed template; a missing column renders as an empty string.
std::string render_template(const std::vector<TemplatePart> &parts, const TemplateValues &v);

} // namespace bk::options
