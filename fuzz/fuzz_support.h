// Shared by the fuzz targets: what counts as a finding.
//
// defines: mftk::fuzz::run_parser
//
// A parser may refuse any input, but only with mftk::Error (which carries
// the file, the key and a hint). Any other exception escaping it
// (std::out_of_range, nlohmann::json::exception, std::bad_alloc, ...) is a
// bug: the user would see a message without context, so it is left to
// escape and libFuzzer reports it as a crash. Sanitizer reports and
// signals are crashes anyway.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mftk/error.h"

namespace mftk::fuzz {

template <class Fn>
void run_parser(Fn&& parse) {
  try {
    parse();
  } catch (const mftk::Error& e) {
    // A refusal must say something: an empty message is a bug too.
    if (std::string(e.what()).empty()) __builtin_trap();
  }
}

inline std::string bytes(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

}  // namespace mftk::fuzz
