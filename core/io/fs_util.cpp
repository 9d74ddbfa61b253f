#include "fs_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "mftk/error.h"
#include "mftk/log.h"

namespace mftk::core {

namespace fs = std::filesystem;

std::string create_fresh(const std::string& stem, bool folder) {
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const std::string path = fmt::format("{}-{}-{}", stem, long(::getpid()), counter++);
    int rc = 0;
    if (folder) {
      rc = ::mkdir(path.c_str(), 0777);  // the umask decides, as for any folder mftk makes
    } else {
      rc = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      if (rc >= 0) rc = ::close(rc);
    }
    if (rc == 0) return path;
    if (errno != EEXIST)
      throw Error(fmt::format("cannot create {}: {}", path, std::strerror(errno)),
                  "check that the folder exists and is writable");
  }
  throw Error(fmt::format("cannot find a free temporary name beside {}", stem));
}

void fsync_parent_dir(const std::string& path) {
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    log::warn("cannot open folder {} to fsync it: {}", dir.string(), std::strerror(errno));
    return;
  }
  if (::fsync(fd) != 0 && errno != EINVAL)  // EINVAL: this filesystem cannot; the rename is done either way
    log::warn("fsync of folder {} failed: {}", dir.string(), std::strerror(errno));
  ::close(fd);
}

ScratchFolder::ScratchFolder(const std::string& near, const std::string& label) {
  fs::path p = fs::absolute(near).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  path_ = create_fresh((p.parent_path() / fmt::format(".{}.{}", p.filename().string(), label)).string(),
                       /*folder=*/true);
}

ScratchFolder::~ScratchFolder() {
  if (kept_) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace mftk::core

namespace mftk {

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  temp_ = core::create_fresh(path_ + ".tmp", /*folder=*/false);
}

AtomicFile::~AtomicFile() {
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::commit() {
  const int fd = ::open(temp_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::fsync(fd) != 0) {
    const int err = errno;
    if (fd >= 0) ::close(fd);
    throw Error(fmt::format("cannot write {}: {}", path_, std::strerror(err)), "is the disk full?");
  }
  ::close(fd);
  if (::rename(temp_.c_str(), path_.c_str()) != 0)
    throw Error(fmt::format("cannot rename {} to {}: {}", temp_, path_, std::strerror(errno)));
  committed_ = true;
  core::fsync_parent_dir(path_);
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile file(path);
  const int fd = ::open(file.temp_path().c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("cannot write {}: {}", file.temp_path(), std::strerror(errno)));
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      throw Error(fmt::format("cannot write {}: {}", path, std::strerror(err)), "is the disk full?");
    }
    done += size_t(n);
  }
  if (::close(fd) != 0) throw Error(fmt::format("cannot write {}: {}", path, std::strerror(errno)), "is the disk full?");
  file.commit();
}

}  // namespace mftk
