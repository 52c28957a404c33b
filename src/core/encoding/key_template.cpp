// key_template.cpp — topic and key templates: "{schema}.{table}", "orders:{id}".
//
// Compiled once per (sink, table): {schema}, {table} and {sink} are substituted
// at compile time, so a template is a list of literal runs and column indexes and
// rendering a row is a few memcpys. Lifetime: a bk_template is owned by whoever
// compiled it and freed with bk_template_free; it keeps no pointer to its inputs.
#include "batchkit/encoding.h"
#include "encoding/buf_internal.hpp"

#include <memory>
#include <new>
#include <string>
#include <vector>

#include "util/abi_guard.hpp"

struct bk_template {
    // A segment is a literal run of `text` [begin, end) or, when column >= 0, a column.
    struct Segment {
        size_t begin = 0, end = 0;
        long column = -1;
    };
    std::string text;
    std::vector<Segment> segments;
    size_t ncolumns = 0;
    size_t literal_len = 0;
};

namespace {

void add_literal(bk_template &t, const std::string &s) {
    if (s.empty())
        return;
    size_t begin = t.text.size();
    t.text += s;
    if (!t.segments.empty() && t.segments.back().column < 0 && t.segments.back().end == begin)
        t.segments.back().end = t.text.size(); // merge adjacent literal runs
    else
        t.segments.push_back({begin, t.text.size(), -1});
    t.literal_len += s.size();
}

std::string column_list(const char *const *columns, size_t ncolumns) {
    std::string s;
    for (size_t i = 0; i < ncolumns; i++) {
        if (i)
            s += ", ";
        s += columns[i] ? columns[i] : "";
    }
    return s.empty() ? "(none)" : s;
}

bk_template *compile(const char *text, const char *sink, const char *schema, const char *table,
                     const char *const *columns, size_t ncolumns) {
    if (text == nullptr)
        throw bk::Error(BK_INVALID_ARGUMENT, "template is NULL");
    auto t = std::make_unique<bk_template>();
    t->ncolumns = ncolumns;
    std::string lit;
    const std::string src(text);
    for (size_t i = 0; i < src.size();) {
        char c = src[i];
        if (c == '}') {
            if (i + 1 < src.size() && src[i + 1] == '}') {
                lit += '}';
                i += 2;
                continue;
            }
            throw bk::Error(BK_INVALID_ARGUMENT,
                            "template \"" + src + "\": unmatched '}' at offset " +
                                std::to_string(i) + " (write }} for a literal brace)");
        }
        if (c != '{') {
            lit += c;
            i++;
            continue;
        }
        if (i + 1 < src.size() && src[i + 1] == '{') {
            lit += '{';
            i += 2;
            continue;
        }
        size_t close = src.find_first_of("{}", i + 1);
        if (close == std::string::npos || src[close] != '}')
            throw bk::Error(BK_INVALID_ARGUMENT, "template \"" + src +
                                                     "\": unclosed '{' at offset " +
                                                     std::to_string(i));
        std::string name = src.substr(i + 1, close - i - 1);
        i = close + 1;
        if (name.empty())
            throw bk::Error(BK_INVALID_ARGUMENT, "template \"" + src + "\": empty placeholder {}");
        long col = -1;
        for (size_t k = 0; k < ncolumns; k++)
            if (columns[k] && name == columns[k]) {
                col = static_cast<long>(k);
                break;
            }
        // Columns win over the fixed names, so a key column called "table" still works.
        if (col < 0 && (name == "schema" || name == "table" || name == "sink")) {
            const char *v = name == "schema" ? schema : name == "table" ? table : sink;
            if (v == nullptr)
                throw bk::Error(BK_INVALID_ARGUMENT,
                                "template \"" + src + "\": {" + name + "} is not known here");
            lit += v;
            continue;
        }
        if (col < 0)
            throw bk::Error(BK_INVALID_ARGUMENT,
                            "template \"" + src + "\": unknown placeholder {" + name +
                                "}; use {schema}, {table}, {sink} or a key column (" +
                                column_list(columns, ncolumns) + ")");
        add_literal(*t, lit);
        lit.clear();
        t->segments.push_back({0, 0, col});
    }
    add_literal(*t, lit);
    return t.release();
}

} // namespace

extern "C" {

bk_template *bk_template_compile(const char *text, const char *sink, const char *schema,
                                 const char *table, const char *const *columns, size_t ncolumns,
                                 bk_status *st) {
    bk_template *out = nullptr;
    bk::guarded(st, [&] {
        if (ncolumns != 0 && columns == nullptr)
            throw bk::Error(BK_INVALID_ARGUMENT, "template: columns is NULL");
        out = compile(text, sink, schema, table, columns, ncolumns);
    });
    return out;
}

void bk_template_free(bk_template *tpl) {
    delete tpl;
}

int bk_template_is_static(const bk_template *tpl) {
    if (tpl == nullptr)
        return 1;
    for (const auto &s : tpl->segments)
        if (s.column >= 0)
            return 0;
    return 1;
}

bk_code bk_template_render(const bk_template *tpl, const bk_slice *values, size_t nvalues,
                           bk_buf *out, size_t *offset, size_t *length, bk_status *st) {
    if (tpl == nullptr || out == nullptr || (nvalues != 0 && values == nullptr)) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "bk_template_render: NULL argument");
        return BK_INVALID_ARGUMENT;
    }
    if (nvalues != tpl->ncolumns) {
        bk::set_status(st, BK_INVALID_ARGUMENT,
                       "bk_template_render: number of values differs from the compiled columns");
        return BK_INVALID_ARGUMENT;
    }
    size_t size = tpl->literal_len;
    for (const auto &s : tpl->segments)
        if (s.column >= 0 && values[s.column].ptr)
            size += values[s.column].len;
    if (!bk::buf_grow(out, size)) {
        bk::set_status(st, BK_OUT_OF_MEMORY, "out of memory rendering a template");
        return BK_OUT_OF_MEMORY;
    }
    char *start = out->data + out->len;
    char *p = start;
    for (const auto &s : tpl->segments) {
        if (s.column < 0)
            p = bk::put(p, tpl->text.data() + s.begin, s.end - s.begin);
        else if (values[s.column].ptr)
            p = bk::put(p, values[s.column].ptr, values[s.column].len);
    }
    if (offset)
        *offset = out->len;
    if (length)
        *length = static_cast<size_t>(p - start);
    out->len += static_cast<size_t>(p - start);
    bk_status_clear(st);
    return BK_OK;
}
}
