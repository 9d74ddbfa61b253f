// The streaming GGUF writer (see gguf_writer.h).
#include "gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "mftk/atomic_file.h"
#include "mftk/error.h"
#include "mftk/gguf_reader.h"

namespace mftk::gguf {

uint64_t GgufTensorDecl::nbytes() const {
  uint64_t rows = 1;
  for (size_t d = 1; d < ne.size(); ++d) rows *= ne[d];
  return ggml_row_bytes(type, ne.at(0)) * rows;
}

namespace {

uint64_t round_up(uint64_t x, uint64_t a) { return x + (a - x % a) % a; }

// Bytes go through one buffered FILE; every write is checked.
class Output {
 public:
  explicit Output(const std::string& path) : path_(path) {
    f_ = std::fopen(path.c_str(), "wb");
    if (!f_) throw Error(fmt::format("{}: cannot create: {}", path, std::strerror(errno)));
    std::setvbuf(f_, nullptr, _IOFBF, 1 << 20);
  }
  ~Output() {
    if (f_) std::fclose(f_);
  }
  void bytes(const void* p, uint64_t n) {
    if (n && std::fwrite(p, 1, n, f_) != n)
      throw Error(fmt::format("{}: write failed after {} bytes: {}", path_, written_, std::strerror(errno)),
                  "check free disk space");
    written_ += n;
  }
  template <class T>
  void scalar(T v) { bytes(&v, sizeof v); }  // little-endian host
  void string(const std::string& s) {
    scalar<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  void zeros(uint64_t n) {
    static const char kZeros[256] = {};
    while (n) {
      const uint64_t k = n < sizeof kZeros ? n : sizeof kZeros;
      bytes(kZeros, k);
      n -= k;
    }
  }
  uint64_t written() const { return written_; }
  void close() {
    const bool ok = std::fflush(f_) == 0;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok || !closed) throw Error(fmt::format("{}: flush failed: {}", path_, std::strerror(errno)));
  }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  uint64_t written_ = 0;
};

void write_value(Output& out, const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::uint8:
    case GgufValueType::int8:
    case GgufValueType::boolean: out.scalar<uint8_t>(uint8_t(v.integer)); break;
    case GgufValueType::uint16:
    case GgufValueType::int16: out.scalar<uint16_t>(uint16_t(v.integer)); break;
    case GgufValueType::uint32:
    case GgufValueType::int32: out.scalar<uint32_t>(uint32_t(v.integer)); break;
    case GgufValueType::uint64:
    case GgufValueType::int64: out.scalar<uint64_t>(v.integer); break;
    case GgufValueType::float32: out.scalar<float>(float(v.real)); break;
    case GgufValueType::float64: out.scalar<double>(v.real); break;
    case GgufValueType::string: out.string(v.text); break;
    case GgufValueType::array:
      out.scalar<uint32_t>(uint32_t(v.element_type));
      out.scalar<uint64_t>(v.items.size());
      for (const auto& item : v.items) write_value(out, item);
      break;
    default: throw Error(fmt::format("gguf: cannot write a value of {}", mftk::to_string(v.type)));
  }
}

}  // namespace

struct GgufWriter::Impl {
  std::string path;
  std::unique_ptr<AtomicFile> file;  // the temporary beside `path`, removed unless committed
  std::unique_ptr<Output> out;       // on file->temp_path(); destroyed (closed) first
  std::vector<GgufTensorDecl> tensors;
  uint64_t alignment = kGgufDefaultAlignment;
  size_t next = 0;            // tensor being written
  uint64_t next_written = 0;  // of its bytes
  bool finished = false;
};

GgufWriter::GgufWriter(std::string path, const Metadata& metadata, std::vector<GgufTensorDecl> tensors)
    : impl_(std::make_unique<Impl>()) {
  auto& m = *impl_;
  m.path = std::move(path);
  m.tensors = std::move(tensors);
  auto fail = [&](const std::string& what) { throw Error(fmt::format("{}: gguf writer: {}", m.path, what)); };

  std::set<std::string> keys;
  for (const auto& [key, value] : metadata) {
    if (key.empty() || key.size() > 65535) fail(fmt::format("metadata key of {} bytes", key.size()));
    if (!keys.insert(key).second) fail(fmt::format("metadata key '{}' given twice", key));
    if (key == "general.alignment") {
      if (value.type != GgufValueType::uint32 || value.integer == 0 || (value.integer & (value.integer - 1)))
        fail("general.alignment must be a uint32 power of two");
      m.alignment = value.integer;
    }
  }
  std::set<std::string> names;
  for (const auto& t : m.tensors) {
    if (t.name.empty() || t.name.size() > 63) fail(fmt::format("tensor name '{}' is not 1 to 63 bytes", t.name));
    if (!names.insert(t.name).second) fail(fmt::format("tensor '{}' declared twice", t.name));
    if (t.ne.empty() || t.ne.size() > 4) fail(fmt::format("tensor '{}' has {} dimensions (1 to 4)", t.name, t.ne.size()));
    const auto& traits = ggml_type_traits(t.type);
    if (t.ne[0] % traits.block_size != 0)
      fail(fmt::format("tensor '{}': ne[0] = {} is not a multiple of the {} block size {}", t.name, t.ne[0],
                       traits.name, traits.block_size));
  }

  std::error_code ec;
  const auto parent = std::filesystem::path(m.path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  // A fresh temporary name created with O_EXCL (not path + ".tmp", which
  // may be someone's file): the only file opened for writing is our own.
  m.file = std::make_unique<AtomicFile>(m.path);
  m.out = std::make_unique<Output>(m.file->temp_path());
  Output& out = *m.out;
  out.scalar<uint32_t>(kGgufMagic);
  out.scalar<uint32_t>(kGgufVersion);
  out.scalar<uint64_t>(m.tensors.size());
  out.scalar<uint64_t>(metadata.size());
  for (const auto& [key, value] : metadata) {
    out.string(key);
    out.scalar<uint32_t>(uint32_t(value.type));
    write_value(out, value);
  }
  uint64_t offset = 0;
  for (const auto& t : m.tensors) {
    out.string(t.name);
    out.scalar<uint32_t>(uint32_t(t.ne.size()));
    for (uint64_t d : t.ne) out.scalar<uint64_t>(d);
    out.scalar<uint32_t>(uint32_t(t.type));
    out.scalar<uint64_t>(offset);
    offset += round_up(t.nbytes(), m.alignment);
  }
  out.zeros(round_up(out.written(), m.alignment) - out.written());
}

GgufWriter::~GgufWriter() = default;  // Impl: the stream closes, then an uncommitted temporary is removed

std::string GgufWriter::next_tensor() const {
  return impl_->next < impl_->tensors.size() ? impl_->tensors[impl_->next].name : std::string();
}

void GgufWriter::write(const void* data, uint64_t bytes) {
  auto& m = *impl_;
  if (m.next >= m.tensors.size())
    throw Error(fmt::format("{}: gguf writer: {} bytes written after the last tensor", m.path, bytes));
  const auto& t = m.tensors[m.next];
  const uint64_t total = t.nbytes();
  if (bytes > total - m.next_written)
    throw Error(fmt::format("{}: gguf writer: tensor '{}' takes {} bytes, got {} more after {}", m.path, t.name,
                            total, bytes, m.next_written));
  m.out->bytes(data, bytes);
  m.next_written += bytes;
  if (m.next_written == total) {
    m.out->zeros(round_up(total, m.alignment) - total);
    ++m.next;
    m.next_written = 0;
  }
}

uint64_t GgufWriter::finish() {
  auto& m = *impl_;
  if (m.next < m.tensors.size())
    throw Error(fmt::format("{}: gguf writer: finished before tensor '{}' ({} of {} written)", m.path,
                            m.tensors[m.next].name, m.next, m.tensors.size()));
  const uint64_t size = m.out->written();
  m.out->close();
  m.out.reset();
  m.file->commit();  // fsync, rename into place, fsync the folder (mftk/atomic_file.h)
  m.finished = true;
  return size;
}

void check_gguf_reads_back(const std::string& path, const GgufWriter::Metadata& metadata,
                           const std::vector<GgufTensorDecl>& tensors) {
  const auto file = GgufFile::open(path);
  MFTK_CHECK(file.metadata().size() == metadata.size(), "{}: reads back {} metadata keys, {} were written", path,
             file.metadata().size(), metadata.size());
  for (const auto& [key, value] : metadata) {
    const auto* got = file.find(key);
    MFTK_CHECK(got && *got == value, "{}: metadata '{}' does not read back as written", path, key);
  }
  MFTK_CHECK(file.tensors().size() == tensors.size(), "{}: reads back {} tensors, {} were written", path,
             file.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = file.tensors()[i];
    MFTK_CHECK(t.name == tensors[i].name && t.type == tensors[i].type && t.ne == tensors[i].ne,
               "{}: tensor {} reads back as '{}', '{}' was written", path, i, t.name, tensors[i].name);
  }
}

}  // namespace mftk::gguf
