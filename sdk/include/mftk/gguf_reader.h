// Reads a GGUF file (v2 or v3; layout in mftk/gguf_format.h): the metadata, the
// tensor table and zero-copy views of the tensor bytes (the file is
// memory-mapped). Every count, length and offset is checked against the file
// size before it is used, so a truncated or hostile file is an mftk::Error
// naming the file, the byte position and what is wrong, never a crash or a
// huge allocation. Also checked, as ggml's own reader does: alignment a power
// of two, no duplicate keys or tensor names, n_dims <= 4, ne[0] a whole
// number of blocks, offsets aligned and inside the data section.
//
// Part of the SDK, implemented in libmftk_core (`mftk inspect` reads with it
// too), so exporters can read back what they wrote.
//
// defines: mftk::GgufTensorInfo, mftk::GgufFile
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mftk/gguf_format.h"

namespace mftk {

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::f32;
  std::vector<uint64_t> ne;  // ne[0] fastest-varying (reverse of the torch shape)
  uint64_t offset = 0;       // relative to the data section
  uint64_t nbytes = 0;       // without the padding
  uint64_t elements() const;
};

class GgufFile {
 public:
  using Metadata = std::vector<std::pair<std::string, GgufValue>>;

  // Throws mftk::Error "<path>: <what> (at byte N)" for anything malformed.
  static GgufFile open(const std::string& path);
  // The same checks on a file image held in memory (the fuzz target and its
  // regression tests); `name` stands in for the path in messages.
  static GgufFile parse(const std::string& name, std::string bytes);
  GgufFile(GgufFile&&) noexcept;
  GgufFile& operator=(GgufFile&&) noexcept;
  ~GgufFile();

  const std::string& path() const;
  uint32_t version() const;
  uint32_t alignment() const;    // general.alignment, or 32
  uint64_t data_offset() const;  // absolute start of the tensor data
  uint64_t file_size() const;

  const Metadata& metadata() const;  // in file order
  const GgufValue* find(const std::string& key) const;
  // The value of a key that must be there with this type; throws otherwise.
  const GgufValue& get(const std::string& key, GgufValueType type) const;

  const std::vector<GgufTensorInfo>& tensors() const;  // in file order
  const GgufTensorInfo* find_tensor(const std::string& name) const;
  // The tensor's bytes inside the mapping (valid while this object lives).
  std::string_view data(const GgufTensorInfo& tensor) const;

 private:
  struct Impl;
  explicit GgufFile(std::unique_ptr<Impl> impl);
  static void parse_into(Impl& impl);  // open() and parse(): the checks on impl's bytes
  std::unique_ptr<Impl> impl_;
};

}  // namespace mftk
