// Streams a GGUF v3 file (layout in mftk/gguf_format.h): the header, every
// metadata value and the tensor table go out first, then each tensor's data
// in the declared order, one at a time, so a 7B export holds one tensor in
// memory, not the model. The file is written next to `path` and renamed
// into place by finish(), so a crash never leaves a half-written model.
//
// Written the way ggml's C reader wants it (docs/formats.md §4.2, GGUF layout): offsets are
// the running sum of each tensor's bytes rounded up to the alignment, the
// data section starts at the alignment, padding is zeros.
//
// defines: mftk::gguf::GgufTensorDecl, mftk::gguf::GgufWriter, mftk::gguf::check_gguf_reads_back
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mftk/gguf_format.h"

namespace mftk::gguf {

struct GgufTensorDecl {
  std::string name;              // <= 63 bytes
  GgmlType type;
  std::vector<uint64_t> ne;      // ne[0] fastest: the reverse of the torch shape
  uint64_t nbytes() const;       // the encoded size
};

class GgufWriter {
 public:
  using Metadata = std::vector<std::pair<std::string, GgufValue>>;

  // Validates everything (unique keys and names, name lengths, dims,
  // block-size multiples, general.alignment a uint32 power of two) and
  // writes the header. Throws mftk::Error naming `path`.
  GgufWriter(std::string path, const Metadata& metadata, std::vector<GgufTensorDecl> tensors);
  ~GgufWriter();  // removes the temporary file unless finish() ran
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  // The data of the next declared tensor, exactly nbytes() bytes, in
  // pieces if the caller likes (the tensor ends when its bytes are in).
  void write(const void* data, uint64_t bytes);
  // Name of the tensor write() expects next (empty when all are written).
  std::string next_tensor() const;
  // Flushes, checks every tensor was written, puts the file in place
  // (fsync, rename, fsync the folder: mftk/atomic_file.h); returns
  // the file size.
  uint64_t finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Reopens a written file with the reader and compares it with what was
// declared (every metadata value, each tensor's name, type and shape): a
// cheap proof the file parses and says what we meant; the writer counted
// the data bytes. Throws mftk::Error naming `path`.
void check_gguf_reads_back(const std::string& path, const GgufWriter::Metadata& metadata,
                           const std::vector<GgufTensorDecl>& tensors);

}  // namespace mftk::gguf
