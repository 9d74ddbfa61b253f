// The "lora" adapter: PEFT-compatible LoRA on a model's linear slots.
//
// defines: mftk::lora::LoRAOptions, mftk::lora::lora_keys,
//          mftk::lora::lora_options_from_config, mftk::lora::LoRAAdapter
//
// inject() wraps every slot that target_modules names in a LoRALinear and
// makes the modules_to_save tensors trainable; save()/load() read and write
// the PEFT adapter folder (adapter_config.json + adapter_model.safetensors,
// docs/formats.md §8, PEFT adapters) so that transformers + PEFT load what mftk saves and mftk
// loads what PEFT saves; merge() folds the update into dense weights.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lora_linear.h"
#include "mftk/adapter.h"
#include "mftk/config.h"

namespace mftk::lora {

// The recipe's [adapter] table, after validation.
struct LoRAOptions {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;
  // Module-name suffixes ("q_proj" matches "model.layers.0.self_attn.q_proj"),
  // or the single value "all-linear": every slot except lm_head.
  std::vector<std::string> target_modules = {"q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"};
  bool use_rslora = false;
  LoRAInit init = LoRAInit::peft_default;
  // Modules trained in full and saved whole ("lm_head", "embed_tokens").
  std::vector<std::string> modules_to_save;
};

// The keys the plugin declares (type, default, doc) for `mftk validate`.
std::vector<KeySpec> lora_keys();
// Reads and checks a validated [adapter] table.
LoRAOptions lora_options_from_config(const Config& config);

class LoRAAdapter final : public Adapter {
 public:
  explicit LoRAAdapter(LoRAOptions options = {});
  ~LoRAAdapter() override;

  void inject(Model& model) override;
  NamedTensors trainable_parameters() override;
  void set_enabled(bool on) override;
  void save(const std::string& dir, const std::string& base_model) const override;
  void load(const std::string& dir, Model& model) override;
  void merge(Model& model) override;
  // What inject() would train on `model` (`mftk plan`): r * (in + out) per
  // targeted slot, modules_to_save whole.
  std::optional<AdapterPlan> plan(const ModelArchitecture& model) const override;

  const LoRAOptions& options() const { return options_; }
  // What the last inject() reported (for tests and the run summary).
  int64_t trainable_count() const { return trainable_count_; }
  int64_t total_count() const { return total_count_; }

 private:
  struct Wrapped;        // one LoRA-wrapped slot
  struct SavedSlot;      // one slot trained in full (modules_to_save)
  struct SavedTensor;    // one non-slot tensor trained in full

  // inject()'s steps after the targets are chosen; each returns the
  // parameters it made trainable.
  int64_t wrap_lora_slots(const std::vector<LinearSlot*>& slots, at::Device fallback_device);
  int64_t copy_saved_slots(const std::vector<LinearSlot*>& slots, const NamedTensors& named);
  int64_t train_saved_tensors(std::vector<std::pair<std::string, at::Tensor>>& tensors);
  void log_injection(size_t slot_count) const;

  LoRAOptions options_;
  bool injected_ = false;
  bool merged_ = false;
  std::vector<std::string> matched_targets_;  // as written to adapter_config.json
  std::vector<Wrapped> wrapped_;
  std::vector<SavedSlot> saved_slots_;
  std::vector<SavedTensor> saved_tensors_;
  int64_t trainable_count_ = 0;
  int64_t total_count_ = 0;
};

}  // namespace mftk::lora
