// Adapter plugins: trainable modules wrapped around a model's linear slots.
//
// defines: mftk::AdapterPlan, mftk::Adapter
//
// Dropout follows the model's mode: Model::set_training reaches the slots'
// ops, so the wrapping ops an adapter installs hear it there.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "mftk/model.h"
#include "mftk/tensor.h"

namespace mftk {

// What an adapter will train on a model, for `mftk plan`.
struct AdapterPlan {
  int64_t trainable_parameters = 0;
  int64_t largest_tensor = 0;   // elements of the largest trainable tensor
  int64_t saved_per_token = 0;  // elements one decoder layer's wrapped slots keep per token for backward
  bool trains_head = false;     // the head slot (or the embedding a tied head shares) trains
  std::string detail;           // "r 16 on q_proj,v_proj"
};

class Adapter {
 public:
  virtual ~Adapter() = default;
  // Wraps the target slots of `model`; everything else stays frozen.
  virtual void inject(Model& model) = 0;
  // The tensors to train, under the names they are saved with.
  virtual NamedTensors trainable_parameters() = 0;
  // Off: every wrapped slot computes its base op alone, as if the adapter
  // were absent (a preference objective's reference model is the base with
  // its adapter switched off, not a second copy of the weights). On after
  // inject() and load().
  virtual void set_enabled(bool on) = 0;
  // Writes the adapter folder (e.g. PEFT's adapter_config.json +
  // adapter_model.safetensors) with the base checkpoint's name.
  virtual void save(const std::string& dir, const std::string& base_model) const = 0;
  // Injects into `model` and loads weights saved by save() (or by PEFT).
  virtual void load(const std::string& dir, Model& model) = 0;
  // Folds the adapter into the base weights; the slots become dense again.
  virtual void merge(Model& model) = 0;
  // Planning hook: what inject() would train on a model described by
  // `model` (shapes from config.json alone). None (the default): no figure.
  virtual std::optional<AdapterPlan> plan(const ModelArchitecture& model) const {
    (void)model;
    return std::nullopt;
  }
};

}  // namespace mftk
