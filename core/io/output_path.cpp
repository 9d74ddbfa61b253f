// OutputGuard and the ownership rule (see <mftk/output_path.h>).
#include "mftk/output_path.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fs_util.h"
#include "mftk/error.h"

namespace mftk {

namespace fs = std::filesystem;

namespace {

// An absolute path without "." / ".." / a trailing slash ("--out ." is the
// current folder itself), the parent's symbolic links resolved.
fs::path normalized(const std::string& target) {
  if (target.empty()) throw UsageError("no output path given", "name a new file or folder to write");
  fs::path p = fs::absolute(target).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  if (!p.has_filename() || p == p.root_path())
    throw UsageError(fmt::format("{}: mftk does not write over a file-system root", target),
                     "name a new folder to write");
  std::error_code ec;
  const fs::path parent = fs::weakly_canonical(p.parent_path(), ec);
  return ec ? p : parent / p.filename();
}

std::string shown(const std::string& given, const fs::path& path) {
  return given == path.string() ? given : fmt::format("{} ({})", given, path.string());
}

// Every entry below `dir` that is not a folder, relative to it, sorted.
std::vector<std::string> files_below(const fs::path& dir, std::vector<std::string>* folders = nullptr) {
  std::vector<std::string> out;
  for (auto it = fs::recursive_directory_iterator(dir); it != fs::recursive_directory_iterator(); ++it) {
    const auto rel = fs::relative(it->path(), dir).string();
    if (it->is_directory() && !it->is_symlink()) {
      if (folders) folders->push_back(rel);
      continue;
    }
    out.push_back(rel);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct Record {
  std::string kind;
  bool has_files = false;
  std::set<std::string> files;
};

// The folder's .mftk-written, when there is one that parses.
std::optional<Record> read_record(const fs::path& dir) {
  const fs::path file = dir / kOutputRecordFile;
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(file, ec))) return std::nullopt;
  try {
    const auto j = nlohmann::json::parse(core::read_file(file.string()));
    if (!j.is_object() || j.value("written_by", std::string()) != "mftk" || !j.contains("kind") ||
        !j["kind"].is_string())
      return std::nullopt;
    Record r;
    r.kind = j["kind"].get<std::string>();
    if (j.contains("files")) {
      r.has_files = true;
      for (const auto& f : j.at("files")) r.files.insert(f.get<std::string>());
    }
    return r;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

enum class State { missing, empty_folder, own, foreign };

struct Verdict {
  State state;
  std::string why;  // for foreign: what makes it foreign
};

Verdict inspect(const fs::path& path, const std::string& kind, OutputShape shape, const OwnFileTest& is_own) {
  std::error_code ec;
  const auto st = fs::symlink_status(path, ec);
  if (st.type() == fs::file_type::not_found) return {State::missing, ""};
  if (ec) return {State::foreign, fmt::format("cannot be examined ({})", ec.message())};
  if (fs::is_symlink(st)) return {State::foreign, "is a symbolic link"};
  if (shape == OutputShape::file) {
    if (fs::is_directory(st)) return {State::foreign, "is a folder, and a file is to be written there"};
    if (!fs::is_regular_file(st)) return {State::foreign, "is not a regular file"};
    if (is_own && is_own(path.string())) return {State::own, ""};
    return {State::foreign, "is a file mftk did not write"};
  }
  if (!fs::is_directory(st)) return {State::foreign, "is a file, and a folder is to be written there"};
  // The top level first: a folder without mftk's record (--out ~) is
  // refused without walking everything below it.
  std::string first;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    first = e.path().filename().string();
    if (first != kOutputRecordFile) break;
  }
  if (ec) return {State::foreign, fmt::format("cannot be listed ({})", ec.message())};
  if (first.empty()) return {State::empty_folder, ""};
  const auto record = read_record(path);
  if (!record) return {State::foreign, fmt::format("holds files mftk did not write (e.g. '{}')", first)};
  if (record->kind != kind || !record->has_files)
    return {State::foreign, fmt::format("holds an mftk output of another kind ({}, not {})", record->kind, kind)};
  std::vector<std::string> folders;
  std::vector<std::string> files;
  try {
    files = files_below(path, &folders);
  } catch (const fs::filesystem_error& e) {
    return {State::foreign, fmt::format("cannot be listed ({})", e.code().message())};
  }
  std::set<std::string> implied_folders;
  for (const auto& f : record->files)
    for (fs::path p = fs::path(f).parent_path(); !p.empty(); p = p.parent_path()) implied_folders.insert(p.string());
  for (const auto& f : files)
    if (f != kOutputRecordFile && !record->files.count(f))
      return {State::foreign, fmt::format("holds '{}', which mftk did not write there", f)};
  for (const auto& d : folders)
    if (!implied_folders.count(d))
      return {State::foreign, fmt::format("holds the folder '{}', which mftk did not write there", d)};
  return {State::own, ""};
}

[[noreturn]] void refuse(const std::string& given, const fs::path& path, const std::string& why,
                         const std::string& extra = {}) {
  throw UsageError(fmt::format("{} {}: mftk never deletes, truncates or replaces what it did not write{}",
                               shown(given, path), why, extra),
                   fmt::format("choose a new output path (or an empty folder), or move or remove {} yourself",
                               path.string()));
}

void write_record(const fs::path& dir, const std::string& kind, const std::vector<std::string>* files) {
  nlohmann::json j = {{"written_by", "mftk"}, {"kind", kind}};
  if (files) j["files"] = *files;
  write_file_atomic((dir / kOutputRecordFile).string(), j.dump(2) + "\n");
}

void rename_or_throw(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec) throw Error(fmt::format("cannot move {} to {}: {}", from.string(), to.string(), ec.message()));
}

}  // namespace

void check_output_path(const std::string& target, const std::string& kind, OutputShape shape,
                       const OwnFileTest& is_own) {
  const fs::path path = normalized(target);
  const Verdict v = inspect(path, kind, shape, is_own);
  if (v.state == State::foreign) refuse(target, path, v.why);
  if (v.state == State::empty_folder && shape == OutputShape::file)
    refuse(target, path, "is a folder, and a file is to be written there");
}

void claim_work_folder(const std::string& dir, const std::string& kind) {
  const fs::path path = normalized(dir);
  std::error_code ec;
  // A work folder is written into, never replaced: a symbolic link to a
  // folder (runs -> /scratch/runs) is followed.
  const auto st = fs::status(path, ec);
  if (st.type() == fs::file_type::not_found) {
    fs::create_directories(path, ec);
    if (ec) throw Error(fmt::format("cannot create {}: {}", shown(dir, path), ec.message()),
                        "check the path and its permissions");
    write_record(path, kind, nullptr);
    return;
  }
  if (!fs::is_directory(st)) refuse(dir, path, "is a file, and a folder is to be written there");
  if (fs::is_empty(path, ec) && !ec) {
    write_record(path, kind, nullptr);
    return;
  }
  const auto record = read_record(path);
  if (record && record->kind == kind) return;
  if (record) refuse(dir, path, fmt::format("holds an mftk output of another kind ({}, not {})", record->kind, kind));
  std::string example;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    example = e.path().filename().string();
    break;
  }
  refuse(dir, path, fmt::format("holds files mftk did not write (e.g. '{}')", example));
}

OutputGuard::OutputGuard(std::string target, std::string kind, OutputShape shape, OwnFileTest is_own)
    : target_(std::move(target)), kind_(std::move(kind)), shape_(shape), is_own_(std::move(is_own)) {
  check_output_path(target_, kind_, shape_, is_own_);
  const fs::path path = normalized(target_);
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) throw Error(fmt::format("cannot create {}: {}", path.parent_path().string(), ec.message()),
                      "check the path and its permissions");
  staging_dir_ = core::create_fresh((path.parent_path() / ("." + path.filename().string() + ".mftk-tmp")).string(),
                                    /*folder=*/true);
  staging_path_ = shape_ == OutputShape::folder ? staging_dir_ : (fs::path(staging_dir_) / path.filename()).string();
}

OutputGuard::~OutputGuard() {
  if (done_ || staging_dir_.empty()) return;
  std::error_code ec;
  fs::remove_all(staging_dir_, ec);
}

void OutputGuard::commit() {
  const fs::path path = normalized(target_);
  const fs::path staged(staging_path_);
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(staged, ec)))
    throw Error(fmt::format("{}: the writer left nothing at {} to put in place", target_, staging_path_));
  if (shape_ == OutputShape::folder) {
    const auto files = files_below(staged);
    std::vector<std::string> listed;
    for (const auto& f : files)
      if (f != kOutputRecordFile) listed.push_back(f);
    write_record(staged, kind_, &listed);
  }
  const Verdict v = inspect(path, kind_, shape_, is_own_);
  if (v.state == State::foreign) {
    done_ = true;  // keep the finished output: it may have taken hours
    refuse(target_, path, v.why + " (it changed while the output was written)",
           fmt::format("; the finished output was left in {}", staging_path_));
  }
  if (shape_ == OutputShape::file) {
    if (v.state == State::empty_folder) {
      done_ = true;
      refuse(target_, path, "is a folder, and a file is to be written there",
             fmt::format("; the finished output was left in {}", staging_path_));
    }
    rename_or_throw(staged, path);  // atomic, over mftk's own file when there is one
    core::fsync_parent_dir(path.string());
    fs::remove_all(staging_dir_, ec);
    done_ = true;
    return;
  }
  if (v.state == State::missing) {
    rename_or_throw(staged, path);
  } else if (v.state == State::empty_folder) {
    // Filled in place: the folder (its permissions, a shell inside it) stays.
    // The record goes first, so an interrupted move is still recognised as mftk's.
    rename_or_throw(staged / kOutputRecordFile, path / kOutputRecordFile);
    std::vector<fs::path> entries;  // listed first: the folder is not changed while it is read
    for (const auto& e : fs::directory_iterator(staged)) entries.push_back(e.path());
    for (const auto& e : entries) rename_or_throw(e, path / e.filename());
    fs::remove(staged, ec);
  } else {
    // mftk's own earlier output: set aside under a fresh name, swap, delete.
    core::ScratchFolder old(path.string(), "mftk-old");
    rename_or_throw(path, fs::path(old.path()) / "old");
    try {
      rename_or_throw(staged, path);
    } catch (...) {
      fs::rename(fs::path(old.path()) / "old", path, ec);
      throw;
    }
  }
  core::fsync_parent_dir(path.string());
  done_ = true;
}

}  // namespace mftk
