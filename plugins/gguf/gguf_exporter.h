// The "gguf" exporter: a Mistral checkpoint folder as one GGUF v3 file that
// llama.cpp loads as its `llama` architecture.
//
//   mftk export --plugin gguf --model DIR --out model.gguf [--set type=q8_0] [--set name=...]
//
// Streams: each tensor is read from the memory-mapped safetensors,
// converted, reordered and encoded on its own, then written; the file is
// reopened with mftk's GGUF reader afterwards and its metadata and tensor
// table compared with what was meant to be written.
//
// defines: mftk::gguf::GgufExportOptions, mftk::gguf::gguf_keys,
//          mftk::gguf::gguf_options_from_config, mftk::gguf::export_gguf,
//          mftk::gguf::GgufExporter, mftk::gguf::kWrittenByKey, mftk::gguf::is_gguf_written_by_mftk
#pragma once

#include <string>
#include <vector>

#include "llama_export_plan.h"
#include "mftk/config.h"
#include "mftk/exporter.h"

namespace mftk::gguf {

struct GgufExportOptions {
  Encoding encoding = Encoding::f16;  // type: how 2-D weights are stored
  std::string name;                   // general.name; empty: the model folder's name
};

std::vector<KeySpec> gguf_keys();
// Refuses encodings that are not built (q4_k, q6_k, q4_k_m ...) with the list of those that are.
GgufExportOptions gguf_options_from_config(const Config& config);

// The metadata key every GGUF mftk writes carries, with the value "mftk":
// how a later export proves an existing `out` is its own to replace
// (mftk/output_path.h). A file without it is never overwritten.
inline constexpr const char* kWrittenByKey = "mftk.written_by";
bool is_gguf_written_by_mftk(const std::string& path);

// Writes model_dir as `out`; the report's summary counts tensors and fallbacks.
ExportReport export_gguf(const std::string& model_dir, const std::string& out, const GgufExportOptions& options);

class GgufExporter final : public Exporter {
 public:
  explicit GgufExporter(GgufExportOptions options) : options_(std::move(options)) {}
  ExportReport run(const ExportJob& job) override { return export_gguf(job.model_dir, job.out, options_); }
  // The file decoded back into a checkpoint folder (gguf_readback.h), for the parity gate.
  std::optional<std::string> read_back(const ExportJob& job, const ExportReport& report,
                                       const std::string& scratch_dir) override;

 private:
  GgufExportOptions options_;
};

}  // namespace mftk::gguf
