// Scoped stage descriptions for error messages (see stage.h).
#include "stage.h"

#include <exception>
#include <sstream>
#include <utility>

namespace mftk::core {
namespace {

// Per thread: an exception is unwound, and caught, on the thread that threw
// it (libtorch rethrows a worker's error on the calling thread).
thread_local std::string failed;

}  // namespace

Stage::Stage(std::string what) : what_(std::move(what)), exceptions_in_flight_(std::uncaught_exceptions()) {
  if (exceptions_in_flight_ == 0) failed.clear();
}

Stage::~Stage() {
  if (std::uncaught_exceptions() <= exceptions_in_flight_) return;
  // Inner stages are destroyed first, so each outer one goes in front.
  failed = failed.empty() ? what_ : what_ + ", " + failed;
}

std::string failed_stages() { return failed; }

std::string without_backtrace(const std::string& text) {
  std::istringstream in(text);
  std::string out;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Exception raised from ", 0) == 0 || line.rfind("frame #", 0) == 0) continue;
    out += out.empty() ? line : "\n" + line;
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

}  // namespace mftk::core
