// Small file-system helpers shared by the core.
//
// defines: mftk::core::write_file_atomic, mftk::core::read_file
#pragma once

#include <string>

namespace mftk::core {

// Writes `path` through a temporary file in the same folder, fsync and
// rename, so readers see the old file or the new one, never a torn one.
void write_file_atomic(const std::string& path, const std::string& contents);

// The whole file; throws mftk::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace mftk::core
