// json_escape.cpp — escaping text (table names, timestamps) as JSON string content.
//
// Only '"', '\\' and control characters need escaping; everything else, UTF-8
// included, is copied as is. The common case (nothing to escape) is a scan plus
// one memcpy.
#include "encoding/buf_internal.hpp"

namespace bk {

namespace {
inline bool needs_escape(unsigned char c) noexcept {
    return c < 0x20 || c == '"' || c == '\\';
}
} // namespace

size_t json_escaped_len(const char *s, size_t n) noexcept {
    size_t extra = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (!needs_escape(c))
            continue;
        switch (c) {
        case '"':
        case '\\':
        case '\b':
        case '\f':
        case '\n':
        case '\r':
        case '\t':
            extra += 1;
            break;
        default:
            extra += 5; // \u00XX
        }
    }
    return n + extra;
}

char *put_json_escaped(char *p, const char *s, size_t n) noexcept {
    static const char hex[] = "0123456789abcdef";
    size_t run = 0; // start of the current run of plain bytes
    for (size_t i = 0; i < n; i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (!needs_escape(c))
            continue;
        p = put(p, s + run, i - run);
        run = i + 1;
        *p++ = '\\';
        switch (c) {
        case '"':
            *p++ = '"';
            break;
        case '\\':
            *p++ = '\\';
            break;
        case '\b':
            *p++ = 'b';
            break;
        case '\f':
            *p++ = 'f';
            break;
        case '\n':
            *p++ = 'n';
            break;
        case '\r':
            *p++ = 'r';
            break;
        case '\t':
            *p++ = 't';
            break;
        default:
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];
        }
    }
    return put(p, s + run, n - run);
}

} // namespace bk
