// Small file-system helpers shared by the core: the one atomic file writer
// (mftk::write_file_atomic of <mftk/output_path.h> is built on AtomicFile)
// and private scratch folders.
//
// defines: mftk::core::AtomicFile, mftk::core::ScratchFolder, mftk::core::read_file,
//          mftk::core::fsync_parent_dir (and brings mftk::write_file_atomic into mftk::core)
#pragma once

#include <string>

#include "mftk/output_path.h"

namespace mftk::core {

using ::mftk::write_file_atomic;

// A file written under a fresh name beside `path` (created with O_EXCL, so
// the temporary is never someone else's file) and renamed over `path` by
// commit(). Write to temp_path() with any stream; commit() fsyncs it.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& temp_path() const { return temp_; }
  // fsync, rename over the target, fsync its folder.
  void commit();

 private:
  std::string path_, temp_;
  bool committed_ = false;
};

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

// Makes a completed rename durable (some filesystems cannot fsync a folder: ignored).
void fsync_parent_dir(const std::string& path);

// The whole file; throws mftk::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace mftk::core
