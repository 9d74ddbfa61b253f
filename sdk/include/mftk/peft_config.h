// PEFT's LoRA adapter_config.json, as every plugin that reads an adapter
// folder understands it (implemented in libmftk_core): the lora adapter
// loads one, the gguf_lora exporter converts one, and both must agree on
// what it means. Also the LoRA scaling rule, so a plugin that folds or
// converts an adapter computes the factor PEFT applies, exactly.
//
//   const mftk::PeftLoraConfig c = mftk::read_peft_lora_config(dir + "/adapter_config.json");
//   const double s = mftk::lora_scaling(c.alpha, c.r, c.use_rslora);   // y += s * B(A(x))
//
// defines: mftk::kPeftAllLinear, mftk::PeftLoraConfig, mftk::parse_peft_lora_config,
//          mftk::read_peft_lora_config, mftk::lora_scaling
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mftk {

// target_modules = "all-linear": every linear slot except lm_head (PEFT's spelling).
inline constexpr const char* kPeftAllLinear = "all-linear";

// What a plain LoRA adapter_config.json says, with PEFT's defaults for
// absent keys (lora_alpha 8, lora_dropout 0, use_rslora false).
struct PeftLoraConfig {
  int64_t r = 8;
  double alpha = 8.0;
  double dropout = 0.0;
  bool use_rslora = false;
  // Module-name suffixes, or the single value kPeftAllLinear.
  std::vector<std::string> target_modules;
  // Modules trained in full and saved whole ("lm_head", "embed_tokens").
  std::vector<std::string> modules_to_save;
};

// Parses the text of an adapter_config.json; `where` names the file in
// messages. Throws mftk::Error for text that is not a JSON object and
// mftk::UsageError, naming the key, for a config that is not plain LoRA
// (peft_type other than "LORA", DoRA, per-module ranks, regex
// target_modules, base-rewriting inits, ...) or has an invalid value.
PeftLoraConfig parse_peft_lora_config(const std::string& text, const std::string& where);

// Reads `path` and parses it (mftk::Error "lora: <path> not found" when it is missing).
PeftLoraConfig read_peft_lora_config(const std::string& path);

// PEFT's scaling of the update B A: alpha / r, or alpha / sqrt(r) with
// rsLoRA. Throws mftk::Error for r < 1.
double lora_scaling(double alpha, int64_t r, bool use_rslora);

}  // namespace mftk
