// One atomic file write, with one durability policy, for the core and every
// plugin (implemented in libmftk_core). Readers of the target see either the
// old file or the complete new one, never a torn mix, and after commit()
// returns the new file survives a power cut:
//   1. the bytes go to a temporary file created beside the target under a
//      fresh name (O_EXCL: never someone else's file, and on the same
//      filesystem, so the rename is atomic);
//   2. commit() fsyncs that file (a failure is an error: the bytes may not
//      be on disk), renames it over the target, then fsyncs the folder so the
//      rename itself is durable (a filesystem that cannot fsync a folder is
//      accepted; any other failure there is logged as a warning, since the
//      new file is already in place).
// AtomicFile replaces whatever is at the target: the caller must own that
// path (mftk/output_path.h's OutputGuard decides that; write_file_atomic
// there is this class for a string).
//
//   mftk::AtomicFile file(path);
//   write_with_any_stream(file.temp_path());
//   file.commit();                  // or let it go out of scope: the temporary is removed
//
// defines: mftk::AtomicFile
#pragma once

#include <string>

namespace mftk {

class AtomicFile {
 public:
  // Creates the temporary file "<path>.tmp-<pid>-<n>" (empty) beside `path`;
  // throws mftk::Error naming it when the folder cannot be written.
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file unless commit() ran
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  const std::string& path() const { return path_; }
  // Where to write; close every stream on it before commit().
  const std::string& temp_path() const { return temp_; }
  // fsync the temporary file, rename it over path(), fsync the folder.
  void commit();

 private:
  std::string path_, temp_;
  bool committed_ = false;
};

}  // namespace mftk
