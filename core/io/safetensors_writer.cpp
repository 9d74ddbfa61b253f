// SafetensorsWriter and save_safetensors: files byte-identical to
// safetensors.torch.save_file (docs/formats.md §1.3, safetensors writer),
// streamed through a temporary file that is renamed into place only when
// complete.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <map>
#include <memory>
#include <unordered_map>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/atomic_file.h"
#include "mftk/error.h"
#include "mftk/log.h"
#include "mftk/safetensors.h"
#include "safetensors_internal.h"
#include "utf8.h"

namespace mftk {
namespace {

namespace fs = std::filesystem;
using namespace safetensors_impl;

// JSON string literal exactly as serde_json writes it: '"' and '\\'
// escaped, \b \t \n \f \r short escapes, other control bytes as \u00xx
// (lowercase hex), everything else (DEL, non-ASCII UTF-8) verbatim.
void append_json_string(std::string& out, const std::string& s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\f': out += "\\f"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += kHex[c >> 4];
          out += kHex[c & 0xF];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

void pwrite_all(int fd, const void* buf, size_t n, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    const ssize_t put = ::pwrite(fd, p, chunk, static_cast<off_t>(offset));
    if (put < 0) {
      if (errno == EINTR) continue;
      throw Error(fmt::format("{}: write failed: {}", path, errno_text(errno)),
                  "check free disk space and write permission");
    }
    p += put;
    n -= static_cast<size_t>(put);
    offset += static_cast<uint64_t>(put);
  }
}

struct WriteSlot {
  SafetensorsWriter::Decl decl;
  std::string dtype;  // safetensors spelling
  int rank = 0;
  uint64_t begin = 0, end = 0;
  bool written = false;
};

void check_utf8_text(const std::string& what, const std::string& s) {
  if (core::find_invalid_utf8(s)) {
    throw UsageError(fmt::format("{} is not valid UTF-8; safetensors headers are UTF-8 JSON", what));
  }
}

}  // namespace

struct SafetensorsWriter::Impl {
  std::string path;
  std::unique_ptr<AtomicFile> file;  // the temporary beside `path` (mftk/atomic_file.h)
  std::string tmp_path;              // file->temp_path(), for messages
  int fd = -1;
  bool finished = false;
  uint64_t data_start = 0;
  std::vector<WriteSlot> slots;  // in data order
  std::unordered_map<std::string, size_t> index;

  ~Impl() {
    if (fd >= 0) ::close(fd);  // then `file` removes the temporary unless it was committed
  }
};

SafetensorsWriter::SafetensorsWriter(std::string path, std::vector<Decl> tensors,
                                     std::map<std::string, std::string> metadata)
    : impl_(std::make_unique<Impl>()) {
  Impl& w = *impl_;
  w.path = std::move(path);

  w.slots.reserve(tensors.size());
  for (auto& decl : tensors) {
    if (decl.name == "__metadata__") {
      throw UsageError(fmt::format("{}: '__metadata__' is reserved and cannot name a tensor", w.path));
    }
    check_utf8_text(fmt::format("{}: tensor name '{}'", w.path, decl.name), decl.name);
    if (!w.index.emplace(decl.name, w.slots.size()).second) {
      throw UsageError(fmt::format("{}: tensor '{}' declared twice", w.path, decl.name));
    }
    WriteSlot slot;
    slot.dtype = dtype_to_safetensors(decl.dtype);
    slot.rank = dtype_rank(slot.dtype);
    uint64_t bytes = static_cast<uint64_t>(c10::elementSize(decl.dtype));
    for (const int64_t d : decl.shape) {
      if (d < 0) {
        throw UsageError(fmt::format("{}: tensor '{}' has a negative dimension in shape {}", w.path, decl.name,
                                     shape_text(decl.shape)));
      }
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
        throw UsageError(fmt::format("{}: tensor '{}' shape {} overflows 64-bit sizes", w.path, decl.name,
                                     shape_text(decl.shape)));
      }
    }
    slot.end = bytes;  // size for now; turned into offsets below
    slot.decl = std::move(decl);
    w.slots.push_back(std::move(slot));
  }
  for (const auto& [key, value] : metadata) {
    check_utf8_text(fmt::format("{}: metadata key '{}'", w.path, key), key);
    check_utf8_text(fmt::format("{}: metadata value for '{}'", w.path, key), value);
  }

  // Data order of the reference writer: dtype rank descending, then name
  // (byte-wise; std::string compares as unsigned char).
  std::sort(w.slots.begin(), w.slots.end(), [](const WriteSlot& a, const WriteSlot& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.decl.name < b.decl.name;
  });
  uint64_t offset = 0;
  for (size_t i = 0; i < w.slots.size(); ++i) {
    WriteSlot& slot = w.slots[i];
    const uint64_t size = slot.end;
    slot.begin = offset;
    if (__builtin_add_overflow(offset, size, &offset)) {
      throw UsageError(fmt::format("{}: total tensor size overflows 64 bits", w.path));
    }
    slot.end = offset;
    w.index[slot.decl.name] = i;
  }

  // Compact JSON in the reference writer's key order (not nlohmann's
  // alphabetical one): __metadata__, then tensors in data order, each with
  // dtype, shape, data_offsets. __metadata__ is omitted when empty.
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first_entry = true;
    for (const auto& [key, value] : metadata) {
      if (!first_entry) header += ',';
      first_entry = false;
      append_json_string(header, key);
      header += ':';
      append_json_string(header, value);
    }
    header += '}';
    first = false;
  }
  for (const WriteSlot& slot : w.slots) {
    if (!first) header += ',';
    first = false;
    append_json_string(header, slot.decl.name);
    header += fmt::format(":{{\"dtype\":\"{}\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", slot.dtype,
                          fmt::join(slot.decl.shape, ","), slot.begin, slot.end);
  }
  header += '}';
  header.append((8 - header.size() % 8) % 8, ' ');
  if (header.size() > kMaxHeaderBytes) {
    throw UsageError(fmt::format("{}: header would be {} bytes, above the {}-byte limit readers enforce",
                                 w.path, header.size(), kMaxHeaderBytes),
                     "split the tensors over several files");
  }
  w.data_start = 8 + header.size();

  // A fresh temporary name, created with O_EXCL: never someone else's file
  // (mftk/output_path.h); removed by the destructor unless finish() renames it.
  w.file = std::make_unique<AtomicFile>(w.path);
  w.tmp_path = w.file->temp_path();
  w.fd = ::open(w.tmp_path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (w.fd < 0) {
    const int err = errno;
    throw Error(fmt::format("cannot create {}: {}", w.tmp_path, errno_text(err)),
                "check that the folder exists and is writable");
  }
  unsigned char length_bytes[8];
  uint64_t n = header.size();
  for (auto& b : length_bytes) {
    b = static_cast<unsigned char>(n & 0xFF);
    n >>= 8;
  }
  pwrite_all(w.fd, length_bytes, 8, 0, w.tmp_path);
  pwrite_all(w.fd, header.data(), header.size(), 8, w.tmp_path);
  // Full size up front, so unwritten (zero-byte) tensors need no write.
  if (::ftruncate(w.fd, static_cast<off_t>(w.data_start + offset)) != 0) {
    throw Error(fmt::format("{}: cannot size the file to {} bytes: {}", w.tmp_path, w.data_start + offset,
                            errno_text(errno)), "check free disk space");
  }
}

SafetensorsWriter::~SafetensorsWriter() = default;

void SafetensorsWriter::write(const std::string& name, const at::Tensor& tensor) {
  Impl& w = *impl_;
  if (w.finished) throw Error(fmt::format("{}: write('{}') after finish()", w.path, name));
  const auto it = w.index.find(name);
  if (it == w.index.end()) {
    throw UsageError(fmt::format("{}: tensor '{}' was not declared when the writer was created", w.path, name));
  }
  WriteSlot& slot = w.slots[it->second];
  if (slot.written) throw UsageError(fmt::format("{}: tensor '{}' written twice", w.path, name));
  if (!tensor.defined()) throw UsageError(fmt::format("{}: tensor '{}' is undefined", w.path, name));
  if (tensor.layout() != at::kStrided) {
    throw UsageError(fmt::format("{}: tensor '{}' is not a dense tensor", w.path, name));
  }
  if (tensor.scalar_type() != slot.decl.dtype) {
    throw UsageError(fmt::format("{}: tensor '{}' is {} but was declared {}", w.path, name,
                                 c10::toString(tensor.scalar_type()), c10::toString(slot.decl.dtype)));
  }
  if (tensor.sizes() != at::IntArrayRef(slot.decl.shape)) {
    throw UsageError(fmt::format("{}: tensor '{}' has shape {} but was declared {}", w.path, name,
                                 shape_text(tensor.sizes().vec()), shape_text(slot.decl.shape)));
  }
  at::Tensor cpu = tensor.device().is_cpu() ? tensor : tensor.to(at::kCPU);
  cpu = cpu.resolve_conj().resolve_neg().contiguous();
  const uint64_t bytes = static_cast<uint64_t>(cpu.numel()) * cpu.element_size();
  MFTK_CHECK(bytes == slot.end - slot.begin, "{}: tensor '{}' has {} bytes, expected {}", w.path, name, bytes,
             slot.end - slot.begin);
  if (bytes > 0) pwrite_all(w.fd, cpu.data_ptr(), bytes, w.data_start + slot.begin, w.tmp_path);
  slot.written = true;
}

void SafetensorsWriter::finish() {
  Impl& w = *impl_;
  if (w.finished) return;
  std::vector<std::string> missing;
  for (const WriteSlot& slot : w.slots) {
    if (!slot.written) missing.push_back(slot.decl.name);
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 5);
    throw Error(fmt::format("{}: finish() before every declared tensor was written; missing {}: {}{}", w.path,
                            missing.size(),
                            fmt::join(missing.begin(), missing.begin() + static_cast<long>(shown), ", "),
                            missing.size() > shown ? ", ..." : ""));
  }
  const int fd = w.fd;
  w.fd = -1;
  if (::close(fd) != 0) throw Error(fmt::format("{}: close failed: {}", w.tmp_path, errno_text(errno)));
  w.file->commit();  // the one policy: fsync the file, rename, fsync the folder
  w.finished = true;
}

// One-shot saving

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsWriter::Decl> decls;
  decls.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw UsageError(fmt::format("{}: tensor '{}' is undefined", path, name));
    decls.push_back({name, tensor.scalar_type(), tensor.sizes().vec()});
  }
  SafetensorsWriter writer(path, std::move(decls), metadata);
  for (const auto& [name, tensor] : tensors) writer.write(name, tensor);
  writer.finish();
}

}  // namespace mftk
