// safetensors files and Hugging Face checkpoint folders.
//
// Reading: the header is read with pread and checked exactly like the
// reference Rust reader (docs/formats.md §1.1, safetensors layout), then the file is memory-mapped
// read-only and get() hands out zero-copy views. Writing: byte-identical to
// safetensors.torch.save_file (docs/formats.md §1.3, safetensors writer), streamed through a
// temporary file that is renamed into place only when complete. Sharded
// checkpoints follow huggingface_hub's splitter (docs/formats.md §1.4, sharded checkpoints).
//
// Assumes a little-endian host (safetensors data are little-endian and are
// mapped as-is).

#include "mftk/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fs_util.h"
#include "mftk/error.h"
#include "mftk/log.h"
#include "safetensors_parse.h"
#include "utf8.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mftk's safetensors I/O maps little-endian data as-is; big-endian hosts are not supported"
#endif

namespace mftk {
namespace {

namespace fs = std::filesystem;

// The reference reader refuses headers above this size ("header too large").
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// serde_json's default recursion limit; deeper headers fail to parse there.
constexpr int kMaxJsonDepth = 128;

constexpr const char* kBadFileHint =
    "the file is damaged or is not a safetensors file: re-download it or export it again";

// ---------------------------------------------------------------------------
// dtypes

struct DtypeSpec {
  const char* name;
  int bits;
  at::ScalarType torch;  // Undefined: libtorch 1.13 has no such type
};

// In the reference library's enum order (ascending); the writer puts larger
// ranks first. Index in this table == rank.
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", 8, at::kBool},
    {"F4", 4, at::ScalarType::Undefined},
    {"F6_E2M3", 6, at::ScalarType::Undefined},
    {"F6_E3M2", 6, at::ScalarType::Undefined},
    {"U8", 8, at::kByte},
    {"I8", 8, at::kChar},
    {"F8_E5M2", 8, at::ScalarType::Undefined},
    {"F8_E4M3", 8, at::ScalarType::Undefined},
    {"F8_E8M0", 8, at::ScalarType::Undefined},
    {"F8_E4M3FNUZ", 8, at::ScalarType::Undefined},
    {"F8_E5M2FNUZ", 8, at::ScalarType::Undefined},
    {"I16", 16, at::kShort},
    {"U16", 16, at::ScalarType::Undefined},
    {"F16", 16, at::kHalf},
    {"BF16", 16, at::kBFloat16},
    {"I32", 32, at::kInt},
    {"U32", 32, at::ScalarType::Undefined},
    {"F32", 32, at::kFloat},
    {"C64", 64, at::kComplexFloat},
    {"F64", 64, at::kDouble},
    {"I64", 64, at::kLong},
    {"U64", 64, at::ScalarType::Undefined},
};
constexpr int kDtypeCount = static_cast<int>(sizeof(kDtypes) / sizeof(kDtypes[0]));

// Rank of a safetensors dtype name in kDtypes, or -1.
int dtype_rank(const std::string& name) {
  for (int i = 0; i < kDtypeCount; ++i) {
    if (name == kDtypes[i].name) return i;
  }
  return -1;
}

std::string known_dtype_names() {
  std::string out;
  for (int i = 0; i < kDtypeCount; ++i) {
    if (i) out += ' ';
    out += kDtypes[i].name;
  }
  return out;
}

std::string torch_dtype_names() {
  std::string out;
  for (const auto& spec : kDtypes) {
    if (spec.torch == at::ScalarType::Undefined) continue;
    if (!out.empty()) out += ' ';
    out += spec.name;
  }
  return out;
}

// ---------------------------------------------------------------------------
// small helpers

std::string errno_text(int err) { return std::strerror(err); }

std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

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

// Makes a completed rename durable. Some filesystems cannot fsync a
// directory (EINVAL); the data are already in place, so only warn.
void fsync_parent_dir(const std::string& path) {
  fs::path dir = fs::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    log::warn("cannot open directory {} to fsync it: {}", dir.string(), errno_text(errno));
    return;
  }
  if (::fsync(fd) != 0 && errno != EINVAL) {
    log::warn("fsync of directory {} failed: {}", dir.string(), errno_text(errno));
  }
  ::close(fd);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// ---------------------------------------------------------------------------
// Header parsing: a SAX handler that checks the schema as it goes, so a
// hostile header never builds a large DOM and every problem gets a message
// naming the tensor. Accepts what serde_json accepts for the reference
// reader's types: unknown keys inside a tensor entry are ignored, a null
// __metadata__ means "no metadata", everything else must have the right type.

class HeaderParser final : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  std::string error;  // the first problem found; empty when the header is fine

  bool null() override {
    // serde reads a null __metadata__ as "no metadata".
    if (state_ == State::kMetadataValue) {
      state_ = State::kTopKey;
      return true;
    }
    return other_value();
  }
  bool boolean(bool) override { return other_value(); }
  bool number_integer(number_integer_t v) override {
    return number(v < 0, v < 0 ? 0 : static_cast<uint64_t>(v), false);
  }
  bool number_unsigned(number_unsigned_t v) override { return number(false, v, false); }
  bool number_float(number_float_t, const string_t&) override { return number(false, 0, true); }
  bool binary(binary_t&) override { return other_value(); }

  bool string(string_t& s) override {
    switch (state_) {
      case State::kMetadataString:
        metadata.emplace(metadata_key_, s);
        state_ = State::kMetadataKey;
        return true;
      case State::kDtype:
        if (dtype_rank(s) < 0) {
          return fail(fmt::format("tensor '{}': unknown dtype '{}' (known: {})", current_.name, s,
                                  known_dtype_names()));
        }
        current_.dtype = s;
        have_dtype_ = true;
        state_ = State::kEntryKey;
        return true;
      default:
        return other_value();
    }
  }

  bool start_object(std::size_t) override {
    if (!enter()) return false;
    switch (state_) {
      case State::kRoot: state_ = State::kTopKey; return true;
      case State::kMetadataValue: state_ = State::kMetadataKey; return true;
      case State::kEntryValue:
        state_ = State::kEntryKey;
        have_dtype_ = have_shape_ = have_offsets_ = false;
        return true;
      case State::kSkipValue: state_ = State::kSkipping; skip_depth_ = 1; return true;
      case State::kSkipping: ++skip_depth_; return true;
      default: return wrong_type();
    }
  }

  bool start_array(std::size_t) override {
    if (!enter()) return false;
    switch (state_) {
      case State::kShapeOpen: state_ = State::kShapeItem; return true;
      case State::kOffsetsOpen: state_ = State::kOffsetsItem; offset_count_ = 0; return true;
      case State::kSkipValue: state_ = State::kSkipping; skip_depth_ = 1; return true;
      case State::kSkipping: ++skip_depth_; return true;
      default: return wrong_type();
    }
  }

  bool key(string_t& k) override {
    switch (state_) {
      case State::kTopKey:
        if (k == "__metadata__") {
          if (seen_metadata_) return fail("'__metadata__' appears twice");
          seen_metadata_ = true;
          state_ = State::kMetadataValue;
          return true;
        }
        if (!names_.insert(k).second) return fail(fmt::format("tensor '{}' appears twice", k));
        current_ = TensorInfo{};
        current_.name = k;
        state_ = State::kEntryValue;
        return true;
      case State::kMetadataKey:
        if (metadata.count(k)) return fail(fmt::format("__metadata__ key '{}' appears twice", k));
        metadata_key_ = k;
        state_ = State::kMetadataString;
        return true;
      case State::kEntryKey: {
        bool* seen = nullptr;
        if (k == "dtype") {
          seen = &have_dtype_;
          state_ = State::kDtype;
        } else if (k == "shape") {
          seen = &have_shape_;
          state_ = State::kShapeOpen;
        } else if (k == "data_offsets") {
          seen = &have_offsets_;
          state_ = State::kOffsetsOpen;
        } else {
          state_ = State::kSkipValue;
          return true;
        }
        if (*seen) return fail(fmt::format("tensor '{}': field '{}' appears twice", current_.name, k));
        return true;
      }
      case State::kSkipping:
        return true;
      default:
        return fail("unexpected key");  // the JSON grammar makes this unreachable
    }
  }

  bool end_object() override {
    --depth_;
    switch (state_) {
      case State::kTopKey: state_ = State::kDone; return true;
      case State::kMetadataKey: state_ = State::kTopKey; return true;
      case State::kEntryKey: {
        const char* missing = !have_dtype_ ? "dtype" : !have_shape_ ? "shape"
                              : !have_offsets_ ? "data_offsets" : nullptr;
        if (missing) {
          return fail(fmt::format("tensor '{}': entry has no '{}' (needs dtype, shape, data_offsets)",
                                  current_.name, missing));
        }
        tensors.push_back(std::move(current_));
        state_ = State::kTopKey;
        return true;
      }
      case State::kSkipping: return leave_skipped();
      default: return fail("unexpected end of object");
    }
  }

  bool end_array() override {
    --depth_;
    switch (state_) {
      case State::kShapeItem:
        have_shape_ = true;
        state_ = State::kEntryKey;
        return true;
      case State::kOffsetsItem:
        if (offset_count_ != 2) {
          return fail(fmt::format("tensor '{}': data_offsets has {} entries, needs exactly 2 [begin, end]",
                                  current_.name, offset_count_));
        }
        have_offsets_ = true;
        state_ = State::kEntryKey;
        return true;
      case State::kSkipping: return leave_skipped();
      default: return fail("unexpected end of array");
    }
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& ex) override {
    if (error.empty()) {
      std::string near = last_token.substr(0, 40);
      error = fmt::format("header is not valid JSON (at header byte {}, near '{}'): {}", position, near,
                          ex.what());
    }
    return false;
  }

 private:
  enum class State {
    kRoot,            // before the top-level value
    kTopKey,          // in the top-level object: a key or '}'
    kMetadataValue,   // after "__metadata__":
    kMetadataKey,     // in __metadata__: a key or '}'
    kMetadataString,  // after a key in __metadata__
    kEntryValue,      // after "<tensor name>":
    kEntryKey,        // in a tensor entry: a key or '}'
    kDtype,
    kShapeOpen,
    kShapeItem,
    kOffsetsOpen,
    kOffsetsItem,
    kSkipValue,       // value of an unknown key in a tensor entry (ignored)
    kSkipping,        // inside an ignored object or array
    kDone,
  };

  bool fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }

  bool enter() {
    if (++depth_ > kMaxJsonDepth) {
      return fail(fmt::format("header JSON is nested deeper than {} levels", kMaxJsonDepth));
    }
    return true;
  }

  bool leave_skipped() {
    if (--skip_depth_ == 0) state_ = State::kEntryKey;
    return true;
  }

  // A value whose JSON type does not fit where it appears.
  bool wrong_type() {
    switch (state_) {
      case State::kRoot: return fail("header is not a JSON object");
      case State::kMetadataValue: return fail("__metadata__ is not an object of strings");
      case State::kMetadataString:
        return fail(fmt::format("__metadata__ value for key '{}' is not a string (only string -> string "
                                "metadata is allowed)", metadata_key_));
      case State::kEntryValue:
        return fail(fmt::format("entry for tensor '{}' is not an object", current_.name));
      case State::kDtype: return fail(fmt::format("tensor '{}': dtype is not a string", current_.name));
      case State::kShapeOpen:
      case State::kShapeItem:
        return fail(fmt::format("tensor '{}': shape must be an array of non-negative integers",
                                current_.name));
      case State::kOffsetsOpen:
      case State::kOffsetsItem:
        return fail(fmt::format("tensor '{}': data_offsets must be an array of two non-negative integers",
                                current_.name));
      default: return fail("unexpected JSON value");
    }
  }

  bool other_value() {
    switch (state_) {
      case State::kSkipValue: state_ = State::kEntryKey; return true;
      case State::kSkipping: return true;
      default: break;
    }
    return wrong_type();
  }

  bool number(bool negative, uint64_t value, bool is_float) {
    switch (state_) {
      case State::kShapeItem:
        if (is_float || negative) {
          return fail(fmt::format("tensor '{}': shape must be an array of non-negative integers{}",
                                  current_.name, negative ? " (negative dimension)" : ""));
        }
        // TensorInfo and libtorch hold dimensions as int64 (extra check: the
        // reference allows up to 2^64-1 when another dimension is 0).
        if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return fail(fmt::format("tensor '{}': dimension {} is larger than 2^63-1", current_.name, value));
        }
        current_.shape.push_back(static_cast<int64_t>(value));
        return true;
      case State::kOffsetsItem:
        if (is_float || negative) {
          return fail(fmt::format("tensor '{}': data_offsets must be two non-negative integers",
                                  current_.name));
        }
        if (offset_count_ >= 2) {
          return fail(fmt::format("tensor '{}': data_offsets has more than 2 entries", current_.name));
        }
        (offset_count_ == 0 ? current_.begin : current_.end) = value;
        ++offset_count_;
        return true;
      case State::kSkipValue: state_ = State::kEntryKey; return true;
      case State::kSkipping: return true;
      default: return wrong_type();
    }
  }

  State state_ = State::kRoot;
  int depth_ = 0;
  int skip_depth_ = 0;
  int offset_count_ = 0;
  bool seen_metadata_ = false;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  TensorInfo current_;
  std::string metadata_key_;
  std::unordered_set<std::string> names_;
};

// ---------------------------------------------------------------------------
// Reading

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

// Checks the offsets and sizes like the reference reader's validate():
// sorted by offsets, contiguous from 0, byte count == dtype x shape, and the
// last end == data section size.
void validate_layout(const std::string& path, std::vector<TensorInfo>& tensors, uint64_t data_size) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.end < t.begin) {
      throw Error(fmt::format("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, t.name,
                              t.begin, t.end), kBadFileHint);
    }
    if (t.begin > expected_begin) {
      throw Error(fmt::format("{}: hole of {} bytes in the data section before tensor '{}' (data_offsets "
                              "[{}, {}]; {})", path, t.begin - expected_begin, t.name, t.begin, t.end,
                              previous ? fmt::format("previous tensor '{}' ends at {}", previous->name,
                                                     expected_begin)
                                       : std::string("the first tensor must start at 0")),
                  kBadFileHint);
    }
    if (t.begin < expected_begin) {
      throw Error(fmt::format("{}: tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}' which ends at {}",
                              path, t.name, t.begin, t.end, previous->name, expected_begin), kBadFileHint);
    }
    expected_begin = t.end;

    const int bits = kDtypes[dtype_rank(t.dtype)].bits;
    uint64_t elements = 1;
    uint64_t total_bits = 0;
    bool overflow = false;
    for (const int64_t d : t.shape) {
      overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
    }
    overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(bits), &total_bits);
    if (overflow) {
      throw Error(fmt::format("{}: tensor '{}': shape {} x {} overflows 64-bit arithmetic", path, t.name,
                              shape_text(t.shape), t.dtype), kBadFileHint);
    }
    if (total_bits % 8 != 0) {
      throw Error(fmt::format("{}: tensor '{}': {} elements of {} ({} bits each) is not a whole number of "
                              "bytes", path, t.name, elements, t.dtype, bits), kBadFileHint);
    }
    if (total_bits / 8 != t.nbytes()) {
      throw Error(fmt::format("{}: tensor '{}': dtype {} x shape {} needs {} bytes, but data_offsets [{}, {}] "
                              "hold {} bytes", path, t.name, t.dtype, shape_text(t.shape), total_bits / 8,
                              t.begin, t.end, t.nbytes()), kBadFileHint);
    }
    previous = &t;
  }
  if (expected_begin < data_size) {
    throw Error(fmt::format("{}: {} trailing bytes after the last tensor (data section is {} bytes, the "
                            "tensors cover {})", path, data_size - expected_begin, data_size, expected_begin),
                kBadFileHint);
  }
  if (expected_begin > data_size) {
    throw Error(fmt::format("{}: the tensors need {} bytes of data but only {} follow the header "
                            "(file truncated?)", path, expected_begin, data_size), kBadFileHint);
  }
}

// ---------------------------------------------------------------------------
// Writing

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

// ---------------------------------------------------------------------------
// dtype mapping

at::ScalarType dtype_from_safetensors(const std::string& dtype) {
  const int rank = dtype_rank(dtype);
  if (rank < 0) {
    throw Error(fmt::format("unknown safetensors dtype '{}' (known: {})", dtype, known_dtype_names()));
  }
  if (kDtypes[rank].torch == at::ScalarType::Undefined) {
    throw Error(fmt::format("safetensors dtype {} has no libtorch 1.13 equivalent (supported: {})", dtype,
                            torch_dtype_names()),
                "convert the tensor to bf16/f16/f32 before loading it");
  }
  return kDtypes[rank].torch;
}

std::string dtype_to_safetensors(at::ScalarType t) {
  for (const auto& spec : kDtypes) {
    if (spec.torch == t) return spec.name;
  }
  throw Error(fmt::format("libtorch dtype {} has no safetensors equivalent (supported: {})", c10::toString(t),
                          torch_dtype_names()),
              "convert the tensor (e.g. .to(at::kFloat)) before saving it");
}

// ---------------------------------------------------------------------------
// The byte-level parse (safetensors_parse.h)

namespace detail {

uint64_t safetensors_header_length(const std::string& path, uint64_t file_size,
                                   const unsigned char* length_bytes) {
  if (file_size < 8) {
    throw Error(fmt::format("{}: file is {} bytes, shorter than the 8-byte header length field (header too "
                            "small)", path, file_size), kBadFileHint);
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxHeaderBytes) {
    throw Error(fmt::format("{}: header length {} is larger than the {}-byte limit (header too large)", path,
                            header_size, kMaxHeaderBytes), kBadFileHint);
  }
  if (8 + header_size > file_size) {
    throw Error(fmt::format("{}: header length {} reaches past the end of the {}-byte file (invalid header "
                            "length; truncated file?)", path, header_size, file_size), kBadFileHint);
  }
  return header_size;
}

SafetensorsHeader parse_safetensors_header(const std::string& path, const std::string& header,
                                           uint64_t data_size) {
  if (const auto bad = core::find_invalid_utf8(header)) {
    throw Error(fmt::format("{}: header is not valid UTF-8 (bad byte at header offset {})", path, *bad),
                kBadFileHint);
  }
  // nlohmann skips a leading byte-order mark; serde_json (the reference) does not.
  if (header.size() >= 3 && header.compare(0, 3, "\xEF\xBB\xBF") == 0) {
    throw Error(fmt::format("{}: header starts with a UTF-8 byte-order mark, which is not JSON", path),
                kBadFileHint);
  }
  HeaderParser sax;
  const bool parsed = nlohmann::json::sax_parse(header.data(), header.data() + header.size(), &sax);
  if (!parsed || !sax.error.empty()) {
    throw Error(fmt::format("{}: {}", path, sax.error.empty() ? "header is not valid JSON"
                                                                   : sax.error),
                kBadFileHint);
  }

  detail::SafetensorsHeader out{std::move(sax.tensors), std::move(sax.metadata)};
  validate_layout(path, out.tensors, data_size);
  return out;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// SafetensorsFile

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

// ---------------------------------------------------------------------------
// CheckpointReader

namespace {

bool is_pickle_file_name(const std::string& name) {
  return ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth");
}

[[noreturn]] void refuse_pickle(const std::string& where, const std::vector<std::string>& files) {
  throw Error(
      fmt::format("{}: only pickle checkpoints found ({}); mftk does not load pickle files because "
                  "unpickling can execute arbitrary code", where, fmt::join(files, ", ")),
      fmt::format("convert them to safetensors with Python, e.g. for a model folder: python3 -c \"from "
                  "transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{0}')"
                  ".save_pretrained('OUT_DIR', safe_serialization=True)\"; for a single state-dict file: "
                  "python3 -c \"import torch; from safetensors.torch import save_file; "
                  "save_file(torch.load('FILE.bin', weights_only=True), 'FILE.safetensors', "
                  "metadata={{'format': 'pt'}})\"", where));
}

// A shard name from an index must stay inside the checkpoint folder.
void check_shard_name(const std::string& index_path, const std::string& name) {
  const fs::path p(name);
  bool escapes = name.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  if (escapes) {
    throw Error(fmt::format("{}: shard file name '{}' is not a plain relative path inside the folder",
                            index_path, name), kBadFileHint);
  }
}

}  // namespace

detail::CheckpointIndex detail::parse_checkpoint_index(const std::string& index_name, const std::string& text) {
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", index_name, e.what()), kBadFileHint);
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw Error(fmt::format("{}: no \"weight_map\" object (expected {{\"metadata\": {{...}}, \"weight_map\": "
                            "{{\"tensor name\": \"shard file\", ...}}}})", index_name), kBadFileHint);
  }
  CheckpointIndex out;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      throw Error(fmt::format("{}: weight_map entry '{}' is not a file name string", index_name, name),
                  kBadFileHint);
    }
    const std::string shard_name = shard.get<std::string>();
    check_shard_name(index_name, shard_name);
    out.tensors_by_shard[shard_name].push_back(name);
    out.shard_of[name] = shard_name;
  }
  const auto metadata = index.find("metadata");
  if (metadata != index.end() && metadata->is_object()) {
    const auto total = metadata->find("total_size");
    if (total != metadata->end() && total->is_number_unsigned()) out.total_size = total->get<uint64_t>();
  }
  return out;
}

CheckpointReader CheckpointReader::open(const std::string& dir, const std::string& stem) {
  CheckpointReader reader;
  std::error_code ec;
  const fs::path root(dir);

  auto load_single = [&](const fs::path& file) {
    auto st = SafetensorsFile::open(file.string());
    for (const TensorInfo& t : st->tensors()) reader.by_name_.emplace(t.name, st);
  };

  auto load_index = [&](const fs::path& index_path) {
    const std::string index_name = index_path.string();
    std::ifstream in(index_path, std::ios::binary);
    if (!in) throw Error(fmt::format("cannot open checkpoint index {}", index_name));
    std::stringstream buffer;
    buffer << in.rdbuf();
    const detail::CheckpointIndex index = detail::parse_checkpoint_index(index_name, buffer.str());
    const auto& tensors_by_shard = index.tensors_by_shard;
    const auto& shard_of = index.shard_of;
    const fs::path folder = index_path.parent_path();
    std::vector<std::string> missing;
    for (const auto& [shard_name, names] : tensors_by_shard) {
      if (!fs::is_regular_file(folder / shard_name, ec)) missing.push_back(shard_name);
    }
    if (!missing.empty()) {
      throw Error(fmt::format("{}: shard files listed in the index are missing: {}", index_name,
                              fmt::join(missing, ", ")),
                  "the download or copy of this checkpoint is incomplete; fetch the missing shards");
    }
    uint64_t total = 0;
    for (const auto& [shard_name, names] : tensors_by_shard) {
      auto st = SafetensorsFile::open((folder / shard_name).string());
      for (const std::string& name : names) {
        if (!st->find(name)) {
          throw Error(fmt::format("{}: the index puts tensor '{}' in {}, but that shard does not contain it",
                                  index_name, name, shard_name), kBadFileHint);
        }
      }
      for (const TensorInfo& t : st->tensors()) {
        const auto it = shard_of.find(t.name);
        if (it == shard_of.end() || it->second != shard_name) {
          throw Error(fmt::format("{}: shard {} contains tensor '{}', which the index {}", index_name,
                                  shard_name, t.name,
                                  it == shard_of.end() ? std::string("does not list")
                                                       : fmt::format("puts in {}", it->second)),
                      "the index and the shards come from different saves; re-download the checkpoint");
        }
        reader.by_name_.emplace(t.name, st);
        total += t.nbytes();
      }
    }
    if (index.total_size && *index.total_size != total) {
      // huggingface_hub counts storage sizes, which can differ for views;
      // not an error.
      log::warn("{}: metadata.total_size is {} but the shards hold {} bytes of tensors", index_name,
                *index.total_size, total);
    }
  };

  if (fs::is_regular_file(root, ec)) {
    const std::string name = root.filename().string();
    if (ends_with(name, ".safetensors")) {
      load_single(root);
    } else if (ends_with(name, ".safetensors.index.json")) {
      load_index(root);
    } else if (is_pickle_file_name(name)) {
      refuse_pickle(dir, {name});
    } else {
      throw Error(fmt::format("{}: not a .safetensors file, a .safetensors.index.json index or a checkpoint "
                              "folder", dir), "pass a checkpoint folder or a .safetensors file");
    }
    return reader;
  }
  if (!fs::is_directory(root, ec)) {
    throw Error(fmt::format("checkpoint {} does not exist", dir), "check the path");
  }

  const fs::path single = root / (stem + ".safetensors");
  const fs::path index = root / (stem + ".safetensors.index.json");
  const bool have_single = fs::is_regular_file(single, ec);
  const bool have_index = fs::is_regular_file(index, ec);
  if (have_single) {
    // transformers prefers the single file too.
    if (have_index) log::warn("{} has both {} and {}; using the single file", dir, single.filename().string(),
                              index.filename().string());
    load_single(single);
    return reader;
  }
  if (have_index) {
    load_index(index);
    return reader;
  }

  std::vector<std::string> pickles, other_safetensors;
  try {
    for (const auto& entry : fs::directory_iterator(root)) {
      if (!entry.is_regular_file(ec)) continue;
      const std::string name = entry.path().filename().string();
      if (is_pickle_file_name(name)) pickles.push_back(name);
      if (ends_with(name, ".safetensors")) other_safetensors.push_back(name);
    }
  } catch (const fs::filesystem_error& e) {
    throw Error(fmt::format("cannot list checkpoint folder {}: {}", dir, e.what()), "check its permissions");
  }
  std::sort(pickles.begin(), pickles.end());
  std::sort(other_safetensors.begin(), other_safetensors.end());
  if (!pickles.empty() && other_safetensors.empty()) refuse_pickle(dir, pickles);
  throw Error(fmt::format("no checkpoint in {}: looked for {} and {}{}", dir, single.string(), index.string(),
                          other_safetensors.empty()
                              ? std::string()
                              : fmt::format(" (the folder has {})", fmt::join(other_safetensors, ", "))),
              other_safetensors.empty() ? "check the path"
                                        : "pass the path of the .safetensors file you mean directly");
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, file] : by_name_) out.push_back(name);
  return out;
}

bool CheckpointReader::contains(const std::string& name) const { return by_name_.count(name) > 0; }

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    throw Error(fmt::format("checkpoint has no tensor named '{}' ({} tensors)", name, by_name_.size()),
                "check the tensor name (names are case-sensitive)");
  }
  return *it->second->find(name);
}

at::Tensor CheckpointReader::get(const std::string& name) const {
  info(name);  // throws with the checkpoint-level message
  return by_name_.at(name)->get(name);
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : by_name_) total += file->find(name)->nbytes();
  return total;
}

// ---------------------------------------------------------------------------
// SafetensorsWriter

struct SafetensorsWriter::Impl {
  std::string path;
  std::string tmp_path;
  int fd = -1;
  bool finished = false;
  uint64_t data_start = 0;
  std::vector<WriteSlot> slots;  // in data order
  std::unordered_map<std::string, size_t> index;

  ~Impl() {
    if (fd >= 0) ::close(fd);
    if (!finished && !tmp_path.empty()) ::unlink(tmp_path.c_str());
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
  w.tmp_path = core::create_fresh(w.path + ".tmp", /*folder=*/false);
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
  if (::fsync(w.fd) != 0) throw Error(fmt::format("{}: fsync failed: {}", w.tmp_path, errno_text(errno)));
  const int fd = w.fd;
  w.fd = -1;
  if (::close(fd) != 0) throw Error(fmt::format("{}: close failed: {}", w.tmp_path, errno_text(errno)));
  if (::rename(w.tmp_path.c_str(), w.path.c_str()) != 0) {
    throw Error(fmt::format("cannot rename {} to {}: {}", w.tmp_path, w.path, errno_text(errno)));
  }
  w.finished = true;
  fsync_parent_dir(w.path);
}

// ---------------------------------------------------------------------------
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

namespace {

// "model-00002-of-00005.safetensors" and the like.
bool is_shard_file_name(const std::string& name) {
  const std::string prefix = "model-", suffix = ".safetensors";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      !ends_with(name, suffix)) {
    return false;
  }
  const std::string middle = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  const size_t of = middle.find("-of-");
  if (of == std::string::npos || of == 0 || of + 4 >= middle.size()) return false;
  auto all_digits = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return all_digits(middle.substr(0, of)) && all_digits(middle.substr(of + 4));
}

}  // namespace

void save_checkpoint(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    throw Error(fmt::format("cannot create checkpoint folder {}: {}", dir, ec.message()),
                "check the path and permissions");
  }
  std::unordered_set<std::string> seen;
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t total_size = 0;
  for (const auto& [name, tensor] : tensors) {
    if (!seen.insert(name).second) throw UsageError(fmt::format("{}: tensor '{}' given twice", dir, name));
    if (!tensor.defined()) throw UsageError(fmt::format("{}: tensor '{}' is undefined", dir, name));
    sizes.push_back(static_cast<uint64_t>(tensor.numel()) * tensor.element_size());
    total_size += sizes.back();
  }

  // huggingface_hub's splitter: insertion order; a tensor above the limit
  // becomes a shard of its own at once (ahead of the shard being filled);
  // otherwise a new shard starts when the next tensor would exceed it.
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i] > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_size + sizes[i] > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += sizes[i];
  }
  if (!current.empty()) shards.push_back(std::move(current));

  const fs::path root(dir);
  const std::map<std::string, std::string> shard_metadata{{"format", "pt"}};
  std::set<std::string> keep;
  if (shards.size() <= 1) {
    save_safetensors((root / "model.safetensors").string(), tensors, shard_metadata);
    keep.insert("model.safetensors");
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    const size_t n = shards.size();
    for (size_t s = 0; s < n; ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n);
      NamedTensors part;
      part.reserve(shards[s].size());
      for (const size_t i : shards[s]) {
        part.push_back(tensors[i]);
        weight_map[tensors[i].first] = file;
      }
      save_safetensors((root / file).string(), part, shard_metadata);
      keep.insert(file);
    }
    // transformers' layout: sorted keys, 2-space indent, trailing newline.
    nlohmann::json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
    write_file_atomic((root / "model.safetensors.index.json").string(),
                           index.dump(2, ' ', true) + "\n");
    keep.insert("model.safetensors.index.json");
  }

  // Only now remove what an earlier save left, so a crash above leaves the
  // old checkpoint readable and a finished save never mixes old shards in.
  std::vector<fs::path> stale;
  try {
    for (const auto& entry : fs::directory_iterator(root)) {
      const std::string name = entry.path().filename().string();
      const bool ours = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                        is_shard_file_name(name);
      if (ours && !keep.count(name)) stale.push_back(entry.path());
    }
  } catch (const fs::filesystem_error& e) {
    throw Error(fmt::format("cannot list {} to remove files of an earlier save: {}", dir, e.what()));
  }
  for (const fs::path& file : stale) {
    std::error_code remove_ec;
    fs::remove(file, remove_ec);
    if (remove_ec) {
      throw Error(fmt::format("cannot remove stale checkpoint file {}: {}", file.string(), remove_ec.message()),
                  "remove it by hand; it belongs to an earlier save and would be mixed with this one");
    }
  }
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
