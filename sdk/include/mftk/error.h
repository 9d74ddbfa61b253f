// Errors: exceptions with context, caught once at the CLI boundary.
//
// defines: mftk::Error (runtime failure, exit 1), mftk::UsageError (bad
//          recipe / command line, exit 2), mftk::SourceLocation, MFTK_CHECK
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include <fmt/format.h>

namespace mftk {

// Where in a file a value came from; empty file means "command line".
struct SourceLocation {
  std::string file;
  int line = 0;
  int column = 0;
  std::string str() const {
    if (file.empty()) return "--set";
    if (line <= 0) return file;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column);
  }
};

// A failure while doing the work (bad checkpoint, I/O error, NaN...).
class Error : public std::runtime_error {
 public:
  explicit Error(std::string message, std::string hint = {})
      : std::runtime_error(std::move(message)), hint_(std::move(hint)) {}
  // One line telling the user what to do about it; may be empty.
  const std::string& hint() const { return hint_; }

 private:
  std::string hint_;
};

// The user asked for something that cannot be done as written: a recipe
// error, an unknown plugin, a wrong flag. The CLI exits with code 2.
class UsageError : public Error {
 public:
  using Error::Error;
};

}  // namespace mftk

// Checks an invariant and throws mftk::Error with a formatted message.
#define MFTK_CHECK(cond, ...)                                  \
  do {                                                         \
    if (!(cond)) throw ::mftk::Error(::fmt::format(__VA_ARGS__)); \
  } while (0)
