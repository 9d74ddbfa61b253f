// Logging: plugins log through spdlog's default logger, which the core
// points at the console and at output_dir/mftk.log.
//
// defines: (re-exports spdlog::info, warn, error, debug)
#pragma once

#include <spdlog/spdlog.h>

namespace mftk::log {
using spdlog::debug;
using spdlog::error;
using spdlog::info;
using spdlog::warn;
}  // namespace mftk::log
