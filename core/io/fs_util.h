// Small file-system helpers shared by the core: fresh temporary names,
// private scratch folders, folder fsync; the one atomic file writer is the
// SDK's (mftk/atomic_file.h; mftk::write_file_atomic of <mftk/output_path.h>
// is built on it).
//
// defines: mftk::core::ScratchFolder, mftk::core::read_file, mftk::core::create_fresh,
//          mftk::core::fsync_parent_dir (and brings mftk::write_file_atomic and
//          mftk::AtomicFile into mftk::core)
#pragma once

#include <string>

#include "mftk/atomic_file.h"
#include "mftk/output_path.h"

namespace mftk::core {

using ::mftk::write_file_atomic;

// The atomic file writer is the SDK's (mftk/atomic_file.h).
using ::mftk::AtomicFile;

// A folder created under a fresh name beside `near` (mkdir fails rather
// than reuse an existing one, so everything in it is ours); removed with
// its content on destruction unless keep() was called.
class ScratchFolder {
 public:
  ScratchFolder(const std::string& near, const std::string& label);
  ~ScratchFolder();
  ScratchFolder(const ScratchFolder&) = delete;
  ScratchFolder& operator=(const ScratchFolder&) = delete;

  const std::string& path() const { return path_; }
  void keep() { kept_ = true; }

 private:
  std::string path_;
  bool kept_ = false;
};

// Creates `stem` + "-<pid>-<n>" for the first n that does not exist yet:
// an empty folder (mkdir) or an empty file (open with O_EXCL), so the path
// returned is one this process made. Throws mftk::Error naming it when the
// folder cannot be written.
std::string create_fresh(const std::string& stem, bool folder);

// Makes a completed rename durable. Some filesystems cannot fsync a folder
// (EINVAL): accepted; any other failure is logged as a warning, not thrown,
// because the renamed file is already in place (mftk/atomic_file.h's policy).
void fsync_parent_dir(const std::string& path);

// The whole file; throws mftk::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace mftk::core
