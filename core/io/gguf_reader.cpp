// The GGUF reader (see mftk/gguf_reader.h). A Cursor walks the mapped bytes; it
// refuses every read past the end, and every count is checked against the
// bytes left before anything is reserved, so a corrupt count cannot make us
// allocate gigabytes.
#include "mftk/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk {

uint64_t GgufTensorInfo::elements() const {
  uint64_t n = 1;
  for (uint64_t d : ne) n *= d;
  return n;
}

namespace {

constexpr uint32_t kMaxDims = 4;          // GGML_MAX_DIMS
constexpr int kMaxArrayNesting = 8;       // real files nest at most once
constexpr uint64_t kMaxTensorName = 63;   // ggml keeps names in a 64-byte buffer with a NUL

// A read-only mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int e = errno;
      ::close(fd);
      throw Error(fmt::format("{}: cannot stat: {}", path, std::strerror(e)));
    }
    size_ = uint64_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int e = errno;
        ::close(fd);
        throw Error(fmt::format("{}: cannot map {} bytes: {}", path, size_, std::strerror(e)));
      }
      data_ = static_cast<const char*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<char*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  uint64_t size_ = 0;
};

class Cursor {
 public:
  Cursor(const std::string& path, const char* data, uint64_t size) : path_(path), data_(data), size_(size) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  [[noreturn]] void fail(const std::string& what) const {
    // Keys and names quoted in `what` are the file's bytes: a NUL would cut
    // the message short and other control bytes garble the terminal.
    std::string printable;
    for (const char ch : what) {
      const auto b = static_cast<unsigned char>(ch);
      if (b < 0x20 || b == 0x7f) printable += fmt::format("\\x{:02x}", b);
      else printable += ch;
    }
    throw Error(fmt::format("{}: {} (at byte {} of {})", path_, printable, pos_, size_),
                "the file is truncated or not a GGUF file; re-export it");
  }

  void need(uint64_t n, const char* what) const {
    if (n > left()) fail(fmt::format("{} needs {} bytes but only {} are left", what, n, left()));
  }

  template <class T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // little-endian host (x86-64, aarch64)
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* what) {
    const uint64_t n = read<uint64_t>(what);
    need(n, what);
    std::string s(data_ + pos_, n);
    pos_ += n;
    return s;
  }

  // A count of items that each take at least min_item_bytes.
  uint64_t read_count(const char* what, uint64_t min_item_bytes) {
    const uint64_t n = read<uint64_t>(what);
    if (min_item_bytes > 0 && n > left() / min_item_bytes)
      fail(fmt::format("{} is {}, but {} items of at least {} bytes cannot fit in the {} bytes left", what, n, n,
                       min_item_bytes, left()));
    return n;
  }

 private:
  const std::string& path_;
  const char* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// The fewest bytes one value of the type takes in the file.
uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8:
    case GgufValueType::int8:
    case GgufValueType::boolean: return 1;
    case GgufValueType::uint16:
    case GgufValueType::int16: return 2;
    case GgufValueType::uint32:
    case GgufValueType::int32:
    case GgufValueType::float32: return 4;
    case GgufValueType::string: return 8;  // the length
    case GgufValueType::array: return 12;  // element type + count
    default: return 8;
  }
}

GgufValue read_value(Cursor& c, GgufValueType type, const std::string& key, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufValueType::uint8: v.integer = c.read<uint8_t>("a uint8 value"); break;
    case GgufValueType::int8: v.integer = uint64_t(int64_t(c.read<int8_t>("an int8 value"))); break;
    case GgufValueType::uint16: v.integer = c.read<uint16_t>("a uint16 value"); break;
    case GgufValueType::int16: v.integer = uint64_t(int64_t(c.read<int16_t>("an int16 value"))); break;
    case GgufValueType::uint32: v.integer = c.read<uint32_t>("a uint32 value"); break;
    case GgufValueType::int32: v.integer = uint64_t(int64_t(c.read<int32_t>("an int32 value"))); break;
    case GgufValueType::uint64: v.integer = c.read<uint64_t>("a uint64 value"); break;
    case GgufValueType::int64: v.integer = uint64_t(c.read<int64_t>("an int64 value")); break;
    case GgufValueType::float32: v.real = c.read<float>("a float32 value"); break;
    case GgufValueType::float64: v.real = c.read<double>("a float64 value"); break;
    case GgufValueType::boolean: {
      const uint8_t b = c.read<uint8_t>("a bool value");
      if (b > 1) c.fail(fmt::format("metadata '{}': bool value {} is neither 0 nor 1", key, b));
      v.integer = b;
      break;
    }
    case GgufValueType::string: v.text = c.read_string("a string value"); break;
    case GgufValueType::array: {
      if (depth >= kMaxArrayNesting) c.fail(fmt::format("metadata '{}': arrays nested deeper than {}", key, depth));
      const auto element = GgufValueType(c.read<uint32_t>("an array element type"));
      if (!is_known(element)) c.fail(fmt::format("metadata '{}': unknown array element type {}", key, uint32_t(element)));
      const uint64_t n = c.read_count("an array length", min_value_bytes(element));
      v.element_type = element;
      v.items.reserve(n);
      for (uint64_t i = 0; i < n; ++i) v.items.push_back(read_value(c, element, key, depth + 1));
      break;
    }
    default: c.fail(fmt::format("metadata '{}': unknown value type {}", key, uint32_t(type)));
  }
  return v;
}

}  // namespace

struct GgufFile::Impl {
  std::string path;
  std::unique_ptr<MappedFile> file;  // open(): the mapped file
  std::string owned;                 // parse(): the bytes handed in
  const char* bytes = nullptr;       // whichever of the two holds the file
  uint64_t size = 0;
  uint32_t version = 0;
  uint32_t alignment = kGgufDefaultAlignment;
  uint64_t data_offset = 0;
  Metadata metadata;
  std::map<std::string, size_t> key_index;
  std::vector<GgufTensorInfo> tensors;
  std::map<std::string, size_t> tensor_index;
};

GgufFile::GgufFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GgufFile::GgufFile(GgufFile&&) noexcept = default;
GgufFile& GgufFile::operator=(GgufFile&&) noexcept = default;
GgufFile::~GgufFile() = default;

GgufFile GgufFile::open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->file = std::make_unique<MappedFile>(path);
  impl->bytes = impl->file->data();
  impl->size = impl->file->size();
  parse_into(*impl);
  return GgufFile(std::move(impl));
}

GgufFile GgufFile::parse(const std::string& name, std::string bytes) {
  auto impl = std::make_unique<Impl>();
  impl->path = name;
  impl->owned = std::move(bytes);
  impl->bytes = impl->owned.data();
  impl->size = impl->owned.size();
  parse_into(*impl);
  return GgufFile(std::move(impl));
}

// Fills impl's header, metadata and tensor table from impl.bytes; every
// read is bounds-checked by the Cursor.
void GgufFile::parse_into(Impl& impl_ref) {
  GgufFile::Impl* impl = &impl_ref;
  const std::string& path = impl->path;
  Cursor c(impl->path, impl->bytes, impl->size);

  // --- header
  const uint32_t magic = c.read<uint32_t>("the magic");
  if (magic != kGgufMagic) c.fail(fmt::format("not a GGUF file: magic is 0x{:08x}, expected 0x{:08x} (\"GGUF\")", magic, kGgufMagic));
  impl->version = c.read<uint32_t>("the version");
  // v1 had 32-bit counts; v2 and v3 share this layout (v3 only added big-endian files).
  if (impl->version != 2 && impl->version != 3)
    c.fail(fmt::format("GGUF version {} is not supported (2 and 3 are)", impl->version));
  const uint64_t tensor_count = c.read<uint64_t>("the tensor count");
  const uint64_t kv_count = c.read<uint64_t>("the metadata count");
  // A KV takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info 8 + 4 + 4 + 8.
  if (kv_count > c.left() / 13)
    c.fail(fmt::format("metadata count {} cannot fit in the {} bytes left", kv_count, c.left()));
  if (tensor_count > c.left() / 24)
    c.fail(fmt::format("tensor count {} cannot fit in the {} bytes left", tensor_count, c.left()));

  // --- metadata
  impl->metadata.reserve(kv_count);
  for (uint64_t i = 0; i < kv_count; ++i) {
    std::string key = c.read_string("a metadata key");
    if (key.empty()) c.fail(fmt::format("metadata entry {} has an empty key", i));
    const auto type = GgufValueType(c.read<uint32_t>("a metadata value type"));
    if (!is_known(type)) c.fail(fmt::format("metadata '{}': unknown value type {}", key, uint32_t(type)));
    GgufValue value = read_value(c, type, key, 0);
    if (!impl->key_index.emplace(key, impl->metadata.size()).second)
      c.fail(fmt::format("metadata key '{}' appears twice", key));
    impl->metadata.emplace_back(std::move(key), std::move(value));
  }
  if (auto it = impl->key_index.find("general.alignment"); it != impl->key_index.end()) {
    const GgufValue& a = impl->metadata[it->second].second;
    if (a.type != GgufValueType::uint32)
      c.fail(fmt::format("general.alignment is a {}, expected uint32", to_string(a.type)));
    if (a.integer == 0 || (a.integer & (a.integer - 1)) != 0)
      c.fail(fmt::format("general.alignment {} is not a power of two", a.integer));
    impl->alignment = uint32_t(a.integer);
  }

  // --- tensor infos
  impl->tensors.reserve(tensor_count);
  for (uint64_t i = 0; i < tensor_count; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string("a tensor name");
    if (t.name.empty() || t.name.size() > kMaxTensorName)
      c.fail(fmt::format("tensor {} has a name of {} bytes (1 to {} allowed)", i, t.name.size(), kMaxTensorName));
    const uint32_t n_dims = c.read<uint32_t>("a tensor's dimension count");
    if (n_dims == 0 || n_dims > kMaxDims)
      c.fail(fmt::format("tensor '{}' has {} dimensions (1 to {} allowed)", t.name, n_dims, kMaxDims));
    uint64_t elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t n = c.read<uint64_t>("a tensor dimension");
      // ggml holds ne as int64; a product past 2^62 cannot be a real tensor.
      if (n > (uint64_t(1) << 62) || (n != 0 && elements > (uint64_t(1) << 62) / n))
        c.fail(fmt::format("tensor '{}': dimension {} = {} makes the element count overflow", t.name, d, n));
      elements *= n;
      t.ne.push_back(n);
    }
    const uint32_t type_id = c.read<uint32_t>("a tensor type");
    const auto traits = ggml_type_traits(type_id);
    if (!traits) c.fail(fmt::format("tensor '{}' has unknown ggml type {}", t.name, type_id));
    t.type = traits->type;
    if (t.ne[0] % traits->block_size != 0)
      c.fail(fmt::format("tensor '{}': ne[0] = {} is not a multiple of the {} block size {}", t.name, t.ne[0],
                         traits->name, traits->block_size));
    // elements stays below 2^62, but times the type size (up to 8 bytes an
    // element for f64/i64) the byte count can wrap, and a wrapped count
    // would pass the bounds check below.
    if (__builtin_mul_overflow(elements / traits->block_size, uint64_t(traits->type_size), &t.nbytes))
      c.fail(fmt::format("tensor '{}': {} elements of {} need more than 2^64 bytes", t.name, elements,
                         traits->name));
    t.offset = c.read<uint64_t>("a tensor offset");
    if (t.offset % impl->alignment != 0)
      c.fail(fmt::format("tensor '{}': offset {} is not a multiple of the alignment {}", t.name, t.offset,
                         impl->alignment));
    if (!impl->tensor_index.emplace(t.name, impl->tensors.size()).second)
      c.fail(fmt::format("tensor name '{}' appears twice", t.name));
    impl->tensors.push_back(std::move(t));
  }

  // --- data section: starts at the next multiple of the alignment
  const uint64_t end_of_infos = c.pos();
  impl->data_offset = end_of_infos + (impl->alignment - end_of_infos % impl->alignment) % impl->alignment;
  const uint64_t size = impl->size;
  if (!impl->tensors.empty() && impl->data_offset > size)
    throw Error(fmt::format("{}: the tensor data should start at byte {} but the file has {} bytes", path,
                            impl->data_offset, size),
                "the file is truncated; re-export it");
  const uint64_t data_size = size >= impl->data_offset ? size - impl->data_offset : 0;
  for (const auto& t : impl->tensors)
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      throw Error(fmt::format("{}: tensor '{}' ({} bytes at data offset {}) ends past the end of the file "
                              "(the data section has {} bytes)",
                              path, t.name, t.nbytes, t.offset, data_size),
                  "the file is truncated; re-export it");
}

const std::string& GgufFile::path() const { return impl_->path; }
uint32_t GgufFile::version() const { return impl_->version; }
uint32_t GgufFile::alignment() const { return impl_->alignment; }
uint64_t GgufFile::data_offset() const { return impl_->data_offset; }
uint64_t GgufFile::file_size() const { return impl_->size; }
const GgufFile::Metadata& GgufFile::metadata() const { return impl_->metadata; }

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = impl_->key_index.find(key);
  return it == impl_->key_index.end() ? nullptr : &impl_->metadata[it->second].second;
}

const GgufValue& GgufFile::get(const std::string& key, GgufValueType type) const {
  const GgufValue* v = find(key);
  if (!v) throw Error(fmt::format("{}: metadata key '{}' is missing", impl_->path, key));
  if (v->type != type)
    throw Error(fmt::format("{}: metadata key '{}' is a {}, expected {}", impl_->path, key, to_string(v->type),
                            to_string(type)));
  return *v;
}

const std::vector<GgufTensorInfo>& GgufFile::tensors() const { return impl_->tensors; }

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = impl_->tensor_index.find(name);
  return it == impl_->tensor_index.end() ? nullptr : &impl_->tensors[it->second];
}

std::string_view GgufFile::data(const GgufTensorInfo& tensor) const {
  // Bounds were checked in open(); tensor must be one of ours.
  return {impl_->bytes + impl_->data_offset + tensor.offset, size_t(tensor.nbytes)};
}

}  // namespace mftk
