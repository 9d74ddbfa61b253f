// SafetensorsFile: the header is read with pread and checked by the
// byte-level parse (safetensors_header.cpp), then the file is memory-mapped
// read-only and get() hands out zero-copy views. release_mapped_pages gives
// the pages of such a view back to the kernel.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "safetensors_internal.h"
#include "safetensors_parse.h"

namespace mftk {
namespace {

using namespace safetensors_impl;

// Reads exactly n bytes at offset; false on EOF, throws on I/O error.
bool pread_exact(int fd, void* buf, size_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt::format("{}: read failed: {}", path, errno_text(errno)));
    }
    if (got == 0) return false;
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

// The live read-only file mappings, so release_mapped_pages acts only on
// memory that can be read back from a file (never on a heap tensor).
std::mutex g_mappings_mutex;
std::map<uintptr_t, size_t> g_mappings;  // start -> size

struct Mapping {
  void* addr = nullptr;
  size_t size = 0;
  Mapping(void* a, size_t s) : addr(a), size(s) {
    std::lock_guard<std::mutex> lock(g_mappings_mutex);
    g_mappings[reinterpret_cast<uintptr_t>(a)] = s;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() {
    {
      std::lock_guard<std::mutex> lock(g_mappings_mutex);
      g_mappings.erase(reinterpret_cast<uintptr_t>(addr));
    }
    if (addr) ::munmap(addr, size);
  }
};

bool inside_a_mapping(uintptr_t begin, uintptr_t end) {
  std::lock_guard<std::mutex> lock(g_mappings_mutex);
  auto it = g_mappings.upper_bound(begin);
  if (it == g_mappings.begin()) return false;
  --it;
  return begin >= it->first && end <= it->first + it->second;
}

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

class MappedSafetensorsFile final : public SafetensorsFile {
 public:
  MappedSafetensorsFile(std::string path, std::vector<TensorInfo> tensors,
                        std::map<std::string, std::string> metadata, std::shared_ptr<Mapping> mapping,
                        uint64_t data_start)
      : path_(std::move(path)),
        tensors_(std::move(tensors)),
        metadata_(std::move(metadata)),
        mapping_(std::move(mapping)),
        data_start_(data_start) {
    index_.reserve(tensors_.size());
    for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  }

  const std::string& path() const override { return path_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::map<std::string, std::string>& metadata() const override { return metadata_; }

  const TensorInfo* find(const std::string& name) const override {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  // The pages are mapped PROT_READ (see open()): writing in place into a
  // returned tensor faults. Callers that modify weights must clone() first.
  at::Tensor get(const std::string& name) const override {
    const TensorInfo* info = find(name);
    if (!info) {
      throw Error(fmt::format("{}: no tensor named '{}' ({} tensors in the file)", path_, name,
                              tensors_.size()),
                  "check the tensor name against the checkpoint (names are case-sensitive)");
    }
    const int rank = dtype_rank(info->dtype);
    const at::ScalarType type = kDtypes[rank].torch;
    if (type == at::ScalarType::Undefined) {
      throw Error(fmt::format("{}: tensor '{}' has dtype {}, which libtorch 1.13 cannot hold "
                              "(supported: {})", path_, name, info->dtype, torch_dtype_names()),
                  "convert the checkpoint to bf16/f16/f32 before loading it");
    }
    // The reference accepts any dimensions when one of them is 0; libtorch
    // computes strides as products of the others, which must fit in int64.
    int64_t stride_product = 1;
    for (const int64_t d : info->shape) {
      if (__builtin_mul_overflow(stride_product, std::max<int64_t>(d, 1), &stride_product)) {
        throw Error(fmt::format("{}: tensor '{}' has shape {}, too large for libtorch's 64-bit strides", path_,
                                name, shape_text(info->shape)), kBadFileHint);
      }
    }
    auto* data = static_cast<char*>(mapping_->addr) + data_start_ + info->begin;
    const auto options = at::TensorOptions().dtype(type);
    const size_t item = static_cast<size_t>(c10::elementSize(type));
    if (reinterpret_cast<uintptr_t>(data) % item != 0) {
      // Only files from writers that do not pad the header land here (the
      // reference writer aligns everything). Kernels may assume aligned
      // elements, so hand out an aligned copy instead of a view.
      at::Tensor copy = at::empty(info->shape, options);
      std::memcpy(copy.data_ptr(), data, info->nbytes());
      return copy;
    }
    // The deleter owns a reference to the mapping: the view stays valid after
    // this SafetensorsFile is gone.
    std::shared_ptr<Mapping> keep_alive = mapping_;
    return at::from_blob(data, info->shape, [keep_alive](void*) {}, options);
  }

 private:
  std::string path_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  std::shared_ptr<Mapping> mapping_;
  uint64_t data_start_;
  std::unordered_map<std::string, size_t> index_;
};

}  // namespace

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    throw Error(fmt::format("cannot open safetensors file {}: {}", path, errno_text(err)),
                err == ENOENT ? "check the path" : "check the file's permissions");
  }
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw Error(fmt::format("{}: fstat failed: {}", path, errno_text(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw Error(fmt::format("{}: not a regular file", path), "pass the path of a .safetensors file");
  }
  const auto file_size = static_cast<uint64_t>(st.st_size);

  unsigned char length_bytes[8];
  if (file_size >= 8 && !pread_exact(fd, length_bytes, 8, 0, path)) {
    throw Error(fmt::format("{}: file shrank while being read", path));
  }
  const uint64_t header_size =
      detail::safetensors_header_length(path, file_size, file_size >= 8 ? length_bytes : nullptr);
  std::string header(header_size, '\0');
  if (!pread_exact(fd, header.data(), header.size(), 8, path)) {
    throw Error(fmt::format("{}: file shrank while being read", path));
  }
  const uint64_t data_start = 8 + header_size;
  detail::SafetensorsHeader parsed = detail::parse_safetensors_header(path, header, file_size - data_start);

  // PROT_READ + MAP_PRIVATE rather than a writable copy-on-write mapping:
  // every get() of a tensor returns a view of the same pages, so an in-place
  // write through one view would silently change the "independent" tensors
  // other code loaded, and would turn clean, reclaimable file pages into
  // anonymous memory. A read-only mapping makes such a write fail loudly;
  // code that needs to modify a weight clones it first.
  void* addr = ::mmap(nullptr, static_cast<size_t>(file_size), PROT_READ, MAP_PRIVATE, fd, 0);
  if (addr == MAP_FAILED) {
    throw Error(fmt::format("{}: mmap of {} bytes failed: {}", path, file_size, errno_text(errno)));
  }
  auto mapping = std::make_shared<Mapping>(addr, static_cast<size_t>(file_size));
  return std::make_shared<MappedSafetensorsFile>(path, std::move(parsed.tensors), std::move(parsed.metadata),
                                                 std::move(mapping), data_start);
}

void release_mapped_pages(const at::Tensor& mapped_view) {
  if (!mapped_view.defined() || !mapped_view.is_cpu() || !mapped_view.is_contiguous()) return;
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(mapped_view.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(mapped_view.nbytes());
  if (!inside_a_mapping(begin, end)) return;  // a copy (e.g. an unaligned tensor): nothing to release
  // Only whole pages inside the tensor: its neighbours may share the edges.
  const uintptr_t first = (begin + page - 1) / page * page, last = end / page * page;
  if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

}  // namespace mftk
