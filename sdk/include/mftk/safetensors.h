// safetensors and Hugging Face checkpoint folders: read (memory-mapped,
// validated) and write (atomic, byte-identical layout to the reference writer).
//
// defines: mftk::TensorInfo, mftk::SafetensorsFile, mftk::CheckpointReader,
//          mftk::SafetensorsWriter, mftk::save_safetensors,
//          mftk::save_checkpoint, mftk::dtype_from_safetensors,
//          mftk::dtype_to_safetensors
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include "mftk/tensor.h"

namespace mftk {

struct TensorInfo {
  std::string name;
  std::string dtype;           // safetensors spelling: "BF16", "F32", "U8" ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;          // data_offsets, relative to the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

// "BF16" -> at::kBFloat16; throws for dtypes libtorch cannot hold.
at::ScalarType dtype_from_safetensors(const std::string& dtype);
std::string dtype_to_safetensors(at::ScalarType t);

// One .safetensors file, mapped read-only and checked like the reference
// reader: header size, JSON, contiguous non-overlapping offsets, byte counts
// equal to dtype x shape, no trailing bytes.
class SafetensorsFile {
 public:
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  virtual ~SafetensorsFile() = default;
  virtual const std::string& path() const = 0;
  virtual const std::vector<TensorInfo>& tensors() const = 0;  // in offset order
  virtual const TensorInfo* find(const std::string& name) const = 0;
  virtual const std::map<std::string, std::string>& metadata() const = 0;
  // Zero-copy view of the mapped bytes (read-only; keeps the file mapped).
  virtual at::Tensor get(const std::string& name) const = 0;
};

// A checkpoint folder: model.safetensors, or model.safetensors.index.json
// with shards. Pickle files (pytorch_model.bin) are refused, never executed.
class CheckpointReader {
 public:
  // stem: "model" for HF checkpoints, "adapter_model" for PEFT adapters.
  static CheckpointReader open(const std::string& dir, const std::string& stem = "model");
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  at::Tensor get(const std::string& name) const;
  uint64_t total_bytes() const;

 private:
  std::map<std::string, std::shared_ptr<SafetensorsFile>> by_name_;
};

// Streaming writer: declare every tensor first (so the header can be
// written), then write each tensor's data; finish() renames the temporary
// file into place, so a crash never leaves a half-written file at `path`.
class SafetensorsWriter {
 public:
  struct Decl {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(std::string path, std::vector<Decl> tensors,
                    std::map<std::string, std::string> metadata = {{"format", "pt"}});
  ~SafetensorsWriter();
  // Tensors may be written in any order; each exactly once.
  void write(const std::string& name, const at::Tensor& tensor);
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A tensor read from a checkpoint (a view of the read-only file mapping)
// whose pages are no longer needed, e.g. after it was quantised: the whole
// pages inside it leave the resident set (madvise MADV_DONTNEED) and would
// be read from the file again if touched. No effect on other tensors.
void release_mapped_pages(const at::Tensor& mapped_view);

// Writes one file at once (atomic).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes `tensors` as a HF checkpoint into dir: model.safetensors, or shards
// model-0000i-of-0000n.safetensors plus model.safetensors.index.json when
// the data exceed max_shard_bytes.
void save_checkpoint(const std::string& dir, const NamedTensors& tensors,
                     uint64_t max_shard_bytes = 5'000'000'000ULL);

}  // namespace mftk
