// The "awq" exporter: a Mistral checkpoint folder as an AutoAWQ "GEMM"
// checkpoint (4-bit weights with zero points, groups along the input
// dimension) that transformers, vLLM and AutoAWQ read (docs/formats.md §5, AWQ).
//
//   mftk export --plugin awq --model DIR --out DIR_AWQ --set calibration_file=rows.jsonl
//               [--set group_size=128 --set calibration_rows=128 --set calibration_len=512]
//
// What it does, per decoder layer, on activations recorded in one
// calibration pass over the unquantised model:
//   1. scaling groups (AutoAWQ's for Mistral): input_layernorm -> q,k,v;
//      v_proj -> o_proj (only when their shapes match, i.e. no GQA; otherwise
//      o_proj keeps s = 1); post_attention_layernorm -> gate,up; up_proj -> down_proj
//   2. per group, the activation-aware scale search; 1/s folded into the
//      previous op (norm weight or previous linear's output rows), s into the
//      group's input columns: the fp model computes the same function
//   3. per linear (not q/k), the clipping search
//   4. round-to-nearest 4-bit with zero point, packed in AutoAWQ's order
// Written tensor by tensor into one model.safetensors; every tensor that is
// not a decoder linear is copied unchanged (norms with the folded scales).
//
// defines: mftk::awq::AwqOptions, mftk::awq::awq_keys, mftk::awq::awq_options_from_config,
//          mftk::awq::check_awq_shapes, mftk::awq::awq_quantization_config, mftk::awq::ScalingGroup,
//          mftk::awq::scaling_groups, mftk::awq::export_awq, mftk::awq::AwqExporter
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mftk/config.h"
#include "mftk/exporter.h"
#include "mftk/model.h"

namespace mftk::awq {

struct AwqOptions {
  int64_t group_size = 128;
  std::string calibration_file;  // when set, preferred to the job's calibration rows
  int64_t calibration_rows = 128;
  int64_t calibration_len = 512;
  int64_t sample_tokens = 512;   // recorded input rows per linear that the searches score on
  bool duo_scaling = true;
  bool clip = true;
};

std::vector<KeySpec> awq_keys();
AwqOptions awq_options_from_config(const Config& config);

// Every decoder linear must split into whole groups along its input and
// into whole int32 words along its output; a UsageError naming group_size otherwise.
void check_awq_shapes(const ModelShape& shape, int64_t group_size);

// {"quant_method": "awq", "zero_point": true, "group_size": G, "bits": 4,
//  "version": "gemm", "modules_to_not_convert": null} (docs/formats.md §5.4, AWQ config).
nlohmann::json awq_quantization_config(int64_t group_size);

// A set of linears that read the same input, and the op before them that
// absorbs 1/s. prev is a norm tensor name ("...input_layernorm.weight") or a
// linear module name whose output rows are divided; empty: nothing can
// absorb it, so the group is not scaled (clip and rounding only).
struct ScalingGroup {
  std::string prev;
  bool prev_is_norm = false;
  std::vector<std::string> linears;  // module names; linears[0]'s input is the one recorded
};
// The four groups of decoder layer `layer`, in the order they are applied,
// found by role in the model's own tensor table (Model::architecture).
std::vector<ScalingGroup> scaling_groups(const ModelArchitecture& architecture, const ModelShape& shape,
                                         int64_t layer);

// Writes job.out from job.model_dir. Runs job.model when given (the
// pipeline's merged model), else loads job.model_dir through the default
// model plugin (open_model); the tensor table is that plugin's. Calibration:
// options.calibration_file when set, else job.calibration_rows (documents,
// concatenated and cut into calibration_len rows), else a UsageError.
ExportReport export_awq(const ExportJob& job, const AwqOptions& options);

class AwqExporter final : public Exporter {
 public:
  explicit AwqExporter(AwqOptions options) : options_(std::move(options)) {}
  ExportReport run(const ExportJob& job) override { return export_awq(job, options_); }
  // The folder dequantised back into a dense checkpoint (awq_readback.h), for the parity gate.
  std::optional<std::string> read_back(const ExportJob& job, const ExportReport& report,
                                       const std::string& scratch_dir) override;

 private:
  AwqOptions options_;
};

}  // namespace mftk::awq
