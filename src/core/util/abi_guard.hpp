// abi_guard.hpp — the one way a core entry point turns C++ failures into a bk_status.
//
// Every extern "C" function of the core that can fail runs its body inside
// bk::guarded(): exceptions are caught here, their message copied into the
// caller's bk_status, and a code returned. Nothing throws past this point, so the
// shim never sees an exception and never ereports while C++ objects are alive.
#pragma once

#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

#include "batchkit/status.h"

namespace bk {

// A failure that knows its bk_code; plain std::exception maps to BK_INTERNAL.
class Error : public std::runtime_error {
  public:
    Error(bk_code code, const std::string &what) : std::runtime_error(what), code_(code) {}
    bk_code code() const noexcept { return code_; }

  private:
    bk_code code_;
};

inline void set_status(bk_status *st, bk_code code, const char *msg) noexcept {
    if (st == nullptr)
        return;
    st->code = code;
    std::snprintf(st->message, sizeof st->message, "%s", msg ? msg : "");
}

template <typename F> bk_code guarded(bk_status *st, F &&body) noexcept {
    try {
        body();
        if (st)
            bk_status_clear(st);
        return BK_OK;
    } catch (const Error &e) {
        set_status(st, e.code(), e.what());
        return e.code();
    } catch (const std::bad_alloc &) {
        set_status(st, BK_OUT_OF_MEMORY, "out of memory in batchkit core");
        return BK_OUT_OF_MEMORY;
    } catch (const std::exception &e) {
        set_status(st, BK_INTERNAL, e.what());
        return BK_INTERNAL;
    } catch (...) {
        set_status(st, BK_INTERNAL, "unknown exception in batchkit core");
        return BK_INTERNAL;
    }
}

} // namespace bk
