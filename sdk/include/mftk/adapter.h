// Adapter plugins: trainable modules wrapped around a model's linear slots.
//
// defines: mftk::Adapter
#pragma once

#include <cstdint>
#include <string>

#include "mftk/tensor.h"

namespace mftk {

class Model;

class Adapter {
 public:
  virtual ~Adapter() = default;
  // Wraps the target slots of `model`; everything else stays frozen.
  virtual void inject(Model& model) = 0;
  // The tensors to train, under the names they are saved with.
  virtual NamedTensors trainable_parameters() = 0;
  // Dropout on/off.
  virtual void set_training(bool on) = 0;
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
};

}  // namespace mftk
