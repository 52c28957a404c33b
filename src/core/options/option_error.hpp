// option_error.hpp — a sink-option error with Postgres-style detail and hint lines.
//
// Thrown by the option validators; bk_sink_config_validate copies detail and
// hint into the caller's bk_sink_diag and the message into its bk_status. A
// message never contains a secret value (validators describe, not echo, them).
#pragma once

#include <string>

#include "util/abi_guard.hpp"

namespace bk::options {

class OptionError : public bk::Error {
  public:
    explicit OptionError(const std::string &message, std::string detail = {}, std::string hint = {})
        : bk::Error(BK_INVALID_ARGUMENT, message), detail_(std::move(detail)),
          hint_(std::move(hint)) {}
    const std::string &detail() const noexcept { return detail_; }
    const std::string &hint() const noexcept { return hint_; }

  private:
    std::string detail_;
    std::string hint_;
};

} // namespace bk::options
