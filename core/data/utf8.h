// Strict UTF-8 checking, shared by every reader of outside text (JSONL
// rows, safetensors headers).
//
// defines: mftk::core::find_invalid_utf8
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace mftk::core {

// Byte offset of the first byte that is not well-formed UTF-8 (RFC 3629:
// overlong forms, surrogates and code points above U+10FFFF are rejected,
// the set Rust's str::from_utf8 and Python's strict decoder accept), or
// nullopt.
std::optional<size_t> find_invalid_utf8(std::string_view text);

}  // namespace mftk::core
