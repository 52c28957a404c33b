// buf.cpp — bk_buf, the core-owned growable byte buffer the shim encodes into.
//
// Lifetime: data is malloc'ed by the core and released only by bk_buf_free, so
// palloc'ed memory never reaches free() and the reverse. Growth doubles, so a
// batch of n appends costs O(n) copies amortised.
#include "batchkit/encoding.h"
#include "encoding/buf_internal.hpp"

#include <cstdlib>
#include <cstring>

#include "util/abi_guard.hpp"

namespace bk {

bool buf_grow(bk_buf *buf, size_t extra) noexcept {
    if (buf->cap - buf->len >= extra && buf->data != nullptr)
        return true;
    if (extra > SIZE_MAX / 2 - buf->len)
        return false;
    size_t need = buf->len + extra;
    size_t cap = buf->cap < 256 ? 256 : buf->cap;
    while (cap < need)
        cap *= 2;
    void *p = std::realloc(buf->data, cap);
    if (p == nullptr)
        return false;
    buf->data = static_cast<char *>(p);
    buf->cap = cap;
    return true;
}

} // namespace bk

extern "C" {

bk_code bk_buf_reserve(bk_buf *buf, size_t extra, bk_status *st) {
    if (buf == nullptr) {
        bk::set_status(st, BK_INVALID_ARGUMENT, "bk_buf_reserve: buf is NULL");
        return BK_INVALID_ARGUMENT;
    }
    if (!bk::buf_grow(buf, extra)) {
        bk::set_status(st, BK_OUT_OF_MEMORY, "out of memory growing an encoding buffer");
        return BK_OUT_OF_MEMORY;
    }
    bk_status_clear(st);
    return BK_OK;
}

bk_code bk_buf_append(bk_buf *buf, const void *bytes, size_t n, bk_status *st) {
    bk_code rc = bk_buf_reserve(buf, n, st);
    if (rc != BK_OK)
        return rc;
    if (n != 0)
        std::memcpy(buf->data + buf->len, bytes, n);
    buf->len += n;
    return BK_OK;
}

void bk_buf_free(bk_buf *buf) {
    if (buf == nullptr)
        return;
    std::free(buf->data);
    buf->data = nullptr;
    buf->len = 0;
    buf->cap = 0;
}
}
