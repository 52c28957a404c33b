// buf_internal.hpp — helpers the encoders share to write into a bk_buf.
//
// Writers reserve the exact (or an upper-bound) size once, then copy with these
// unchecked put_* helpers: one capacity check per message, not per byte.
#pragma once

#include <charconv>
#include <cstdint>
#include <cstring>

#include "batchkit/encoding.h"

namespace bk {

// Make room for `extra` bytes after buf->len; false when out of memory.
bool buf_grow(bk_buf *buf, size_t extra) noexcept;

// Unchecked writers: the caller reserved enough room.
inline char *put(char *p, const char *s, size_t n) noexcept {
    std::memcpy(p, s, n);
    return p + n;
}
template <size_t N> inline char *put_lit(char *p, const char (&s)[N]) noexcept {
    std::memcpy(p, s, N - 1);
    return p + (N - 1);
}
template <typename Int> inline char *put_int(char *p, Int v) noexcept {
    // 20 digits + sign always fit: callers reserve kMaxIntChars.
    return std::to_chars(p, p + 24, v).ptr;
}
constexpr size_t kMaxIntChars = 24;

// JSON string escaping: how long `s` becomes between the quotes.
size_t json_escaped_len(const char *s, size_t n) noexcept;
// Write the escaped form of s (without quotes); returns the end.
char *put_json_escaped(char *p, const char *s, size_t n) noexcept;

} // namespace bk
