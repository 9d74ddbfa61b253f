// example.dora: a DoRA adapter plugin built out of tree against the installed
// mftk SDK, reading and writing PEFT's files for DoRA (a LoRA config with
// "use_dora": true), so transformers + PEFT load what it saves and it loads
// what PEFT saves.
//
// defines: example_dora::DoraOptions, example_dora::dora_keys,
//          example_dora::dora_options_from_config,
//          example_dora::parse_dora_config, example_dora::DoraAdapter
//
// The folder save() writes (PEFT's save_pretrained layout):
//   adapter_config.json        peft_type "LORA", use_dora true, r, lora_alpha, target_modules, ...
//   adapter_model.safetensors  per adapted module M, fp32:
//     base_model.model.M.lora_A.weight          [r, in]
//     base_model.model.M.lora_B.weight          [out, r]
//     base_model.model.M.lora_magnitude_vector  [out]
// PEFT keeps the magnitude in a submodule's "weight" since its DoRA refactor
// but strips that ".weight" when it saves (so files keep one name across PEFT
// versions) and adds it back when it loads; load() accepts both spellings.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/ScalarType.h>

#include <mftk/adapter.h>
#include <mftk/config.h>

#include "dora_linear.h"

namespace example_dora {

// The recipe's [adapter] table, or what an adapter_config.json says.
struct DoraOptions {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  // Module-name suffixes ("q_proj" matches "model.layers.0.self_attn.q_proj"),
  // or the single entry "all-linear": every slot except lm_head.
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  bool use_rslora = false;
};

std::vector<mftk::KeySpec> dora_keys();
DoraOptions dora_options_from_config(const mftk::Config& config);
// adapter_config.json text -> options; `where` names the file in errors.
DoraOptions parse_dora_config(const std::string& text, const std::string& where);

class DoraAdapter final : public mftk::Adapter {
 public:
  explicit DoraAdapter(DoraOptions options) : options_(std::move(options)) {}

  void inject(mftk::Model& model) override;
  mftk::NamedTensors trainable_parameters() override;
  void set_enabled(bool on) override;
  void save(const std::string& dir, const std::string& base_model) const override;
  void load(const std::string& dir, mftk::Model& model) override;
  void merge(mftk::Model& model) override;
  // What inject() would train on `model` (`mftk plan`): per targeted slot
  // r * (in + out) plus one magnitude per output row.
  std::optional<mftk::AdapterPlan> plan(const mftk::ModelArchitecture& model) const override;

 private:
  struct Wrapped {
    std::string slot_name;
    std::shared_ptr<DoraLinear> op;
    std::optional<at::ScalarType> base_dtype;  // none: a packed base; merge writes the checkpoint's dtype
  };

  DoraOptions options_;
  bool injected_ = false;
  bool merged_ = false;
  std::vector<std::string> matched_targets_;  // what adapter_config.json lists
  std::vector<Wrapped> wrapped_;
};

}  // namespace example_dora
