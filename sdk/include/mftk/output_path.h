// Writing outputs without ever destroying what mftk did not write.
//
// The rule, for the core and for every plugin: mftk deletes, truncates or
// replaces a path only when it can prove it wrote that path itself.
//   - A folder mftk writes whole (a checkpoint, an AWQ or NF4 folder) holds
//     `.mftk-written`, a small JSON record of its kind and of every file in
//     it. It may be replaced by a later output of the same kind as long as
//     it holds nothing the record does not list.
//   - A single file (a .gguf) cannot carry that record, so the writer proves
//     ownership from the file's own content (OwnFileTest: the GGUF exporter
//     looks for the `mftk.written_by` key it writes). Without such a test an
//     existing file is never replaced.
//   - An empty folder may always be written into; a missing one is created.
//   - Anything else is refused with mftk::UsageError (exit 2) naming the path.
// Temporary files and folders are created under fresh names (O_EXCL /
// mkdir), so the only temporaries mftk removes are its own.
//
//   mftk::OutputGuard out(job.out, "acme.stats", mftk::OutputShape::file, is_my_file);
//   write_everything_to(out.path());   // a path beside job.out, private to this writer
//   out.commit();                      // put in place (atomically for files)
//
// defines: mftk::OutputShape, mftk::OwnFileTest, mftk::OutputGuard,
//          mftk::check_output_path, mftk::claim_work_folder,
//          mftk::write_file_atomic, mftk::kOutputRecordFile
#pragma once

#include <functional>
#include <string>

namespace mftk {

// The record in every folder mftk writes: {"written_by": "mftk", "kind", "files"}.
inline constexpr const char* kOutputRecordFile = ".mftk-written";

enum class OutputShape { file, folder };

// True when the existing file at `path` is one this writer produced (its
// content says so). Must not throw for foreign or unreadable files.
using OwnFileTest = std::function<bool(const std::string& path)>;

// Claims `target` for one output of `kind` (a short name: "gguf",
// "hf-checkpoint", "awq-checkpoint", ...), writes it privately, then puts
// it in place.
class OutputGuard {
 public:
  // Refuses (mftk::UsageError naming the path and what to do) unless
  // check_output_path accepts `target`; then creates a private staging
  // folder beside it. The parent folder is created when missing.
  OutputGuard(std::string target, std::string kind, OutputShape shape, OwnFileTest is_own = {});
  // Removes the staging folder (everything in it is this guard's) unless
  // commit() ran or failed with the output kept.
  ~OutputGuard();
  OutputGuard(const OutputGuard&) = delete;
  OutputGuard& operator=(const OutputGuard&) = delete;

  // Where to write: for a folder an empty folder, for a file a path with
  // the target's file name (in the staging folder, nothing there yet).
  const std::string& path() const { return staging_path_; }
  const std::string& target() const { return target_; }

  // Records the files (folders), checks `target` again (it may have changed
  // while the output was written) and moves the output into place: onto a
  // missing path, into an empty folder, or in place of mftk's own earlier
  // output, which is then deleted. If the target became foreign meanwhile,
  // throws UsageError and leaves the finished output where path() says.
  void commit();

 private:
  std::string target_, kind_;
  OutputShape shape_;
  OwnFileTest is_own_;
  std::string staging_dir_;   // made by this guard
  std::string staging_path_;  // staging_dir_ (folders) or staging_dir_/<name> (files)
  bool done_ = false;
};

// The check OutputGuard makes, alone: returns when `target` is missing, an
// empty folder (folders only), a folder holding mftk's record of `kind` and
// nothing it does not list, or a file `is_own` accepts; throws UsageError
// otherwise. For commands that want to refuse before hours of work.
void check_output_path(const std::string& target, const std::string& kind, OutputShape shape,
                       const OwnFileTest& is_own = {});

// A folder mftk fills over time (a run's output_dir): created when missing,
// adopted when empty, reused when it already holds mftk's record of `kind`
// (re-runs, resume); anything else is refused with UsageError. Files are
// then written into it by name; what else it holds is never touched.
void claim_work_folder(const std::string& dir, const std::string& kind);

// Writes `path` through a temporary file created beside it under a fresh
// name (never another's file), fsync and rename, so readers see the old
// file or the new one. Replaces `path`: the caller owns it.
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace mftk
