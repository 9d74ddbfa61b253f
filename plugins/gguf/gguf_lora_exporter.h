// The "gguf_lora" exporter: a PEFT LoRA adapter, unmerged, as the LoRA
// adapter GGUF llama.cpp applies on top of its base model's GGUF
// (docs/formats.md §4.8):
//
//   mftk export --plugin gguf_lora --model BASE --adapter DIR --out adapter.gguf
//   llama-cli -m base.gguf --lora adapter.gguf
//
// What the file holds, as llama.cpp's convert_lora_to_gguf.py writes it:
//   general.architecture "llama", general.type "adapter", adapter.type
//   "lora", adapter.lora.alpha (f32); for every adapted weight W of GGUF name
//   N two tensors N.lora_a = A (torch [r, in], ne [in, r]) and N.lora_b = B
//   (torch [out, r], ne [r, out]), f32 by default; for attn_q / attn_k the
//   rows of B are put in llama.cpp's RoPE order (llama_rope_row_order), as
//   the base's rows are; A is unchanged (its rows index the rank).
// llama.cpp adds scale * B (A x) with scale = alpha / r (r read from B).
// PEFT scales by alpha / r, or alpha / sqrt(r) with use_rslora; the file
// carries the alpha that gives PEFT's scaling under llama.cpp's rule
// (alpha * sqrt(r) for rsLoRA), so both compute the same update.
//
// Refused, with the reason: modules_to_save (weights trained in full have no
// place in an adapter file: export the merged model with "gguf"), LoRA on
// weights the base GGUF has no tensor for (lm_head of a model with tied
// embeddings) or on the embeddings, tensors that are not LoRA pairs, a rank
// other than the config's r, and lora_alpha = 0 (llama.cpp reads alpha 0
// as "no scaling").
//
// defines: mftk::gguf::GgufLoraExportOptions, mftk::gguf::gguf_lora_keys,
//          mftk::gguf::gguf_lora_options_from_config, mftk::gguf::PlannedLoraPair,
//          mftk::gguf::LoraExportPlan, mftk::gguf::plan_lora_tensors,
//          mftk::gguf::lora_metadata, mftk::gguf::export_gguf_lora,
//          mftk::gguf::read_back_gguf_lora, mftk::gguf::GgufLoraExporter
#pragma once

#include <string>
#include <vector>

#include "llama_export_plan.h"
#include "mftk/config.h"
#include "mftk/exporter.h"

namespace mftk {
class CheckpointReader;
}

namespace mftk::gguf {

struct GgufLoraExportOptions {
  Encoding encoding = Encoding::f32;  // type: f32 (the converter's default), f16 or bf16
  std::string name;                   // general.name; empty: "<base folder>+<adapter folder>"
  std::string base_gguf;              // the base model's GGUF, for the Modelfile's FROM line
};

std::vector<KeySpec> gguf_lora_keys();
GgufLoraExportOptions gguf_lora_options_from_config(const Config& config);

struct PlannedLoraPair {
  std::string hf_name;                 // the base weight ("model.layers.0.self_attn.q_proj.weight")
  std::string a_source, b_source;      // the tensors' names in adapter_model.safetensors
  std::vector<int64_t> a_shape, b_shape;  // torch order: [r, in], [out, r]
  GgufTensorDecl a, b;                 // "<GGUF name>.lora_a" / ".lora_b"
  int64_t rope_heads = 0;              // > 0: B's rows reordered with llama_rope_row_order
};

struct LoraExportPlan {
  std::vector<PlannedLoraPair> pairs;  // in the base checkpoint's tensor order
  int64_t r = 0;
  double peft_scaling = 0;  // what PEFT multiplies B A by
  float alpha = 0;          // adapter.lora.alpha: llama.cpp's alpha / r equals peft_scaling
};

// Reads adapter_dir/adapter_config.json (the lora plugin's reader) and the
// tensor table of adapter_dir/adapter_model.safetensors, and plans the file
// for the base `config`. Throws UsageError for what llama.cpp cannot apply.
LoraExportPlan plan_lora_tensors(const DescribedCheckpoint& model, const std::string& adapter_dir,
                                 Encoding encoding);

GgufWriter::Metadata lora_metadata(const LoraExportPlan& plan, Encoding encoding, const std::string& name);

// job.adapter_dir as `out`, with the Modelfile beside it. base_model_dir
// supplies config.json and the tokenizer (the chat format).
ExportReport export_gguf_lora(const std::string& base_model_dir, const std::string& adapter_dir,
                              const std::string& out, const GgufLoraExportOptions& options);

// The parity gate's read-back: the adapter file decoded as llama.cpp reads
// it (alpha from the metadata, r from lora_b, B's rows back in HF order) and
// applied to the base checkpoint's weights, W + alpha / r * B A, written as
// an fp32 checkpoint folder in out_dir. nullopt when the base checkpoint is
// not plain dense weights (a quantised folder).
std::optional<std::string> read_back_gguf_lora(const std::string& gguf_path, const std::string& base_model_dir,
                                               const std::string& out_dir);

class GgufLoraExporter final : public Exporter {
 public:
  explicit GgufLoraExporter(GgufLoraExportOptions options) : options_(std::move(options)) {}
  ExportReport run(const ExportJob& job) override;
  std::optional<std::string> read_back(const ExportJob& job, const ExportReport& report,
                                       const std::string& scratch_dir) override;

 private:
  GgufLoraExportOptions options_;
};

}  // namespace mftk::gguf
