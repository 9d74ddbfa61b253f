// Optimizer plugins: update trainable tensors from their .grad().
//
// defines: mftk::OptimizerStatePlan, mftk::Optimizer
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "mftk/tensor.h"

namespace mftk {

// What an optimizer tells `mftk plan` about the state it will hold.
struct OptimizerStatePlan {
  int64_t bytes = 0;     // for all the trainable parameters together
  std::string detail;    // how it was counted, in words
  bool on_host = false;  // kept in host memory (paged) even when training on a GPU
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Called once with every trainable tensor (requires_grad set).
  virtual void attach(const NamedTensors& params) = 0;
  // One update with learning rate `lr`; parameters without a grad are skipped.
  virtual void step(double lr) = 0;
  // Everything needed to continue exactly after a restart, as named tensors
  // ("<param>.exp_avg", "step" ...), saved in checkpoints.
  virtual NamedTensors state() const = 0;
  virtual void load_state(const NamedTensors& state) = 0;
  // Bytes held for optimizer state (for reports and plans).
  virtual int64_t state_bytes() const = 0;
  // Planning hook (`mftk plan`, before any tensor exists): the state this
  // optimizer, with its recipe keys, will hold for `trainable_parameters`
  // fp32 parameters. nullopt (the default): no figure; the plan then
  // assumes two fp32 moments per parameter and says the plugin gave none.
  virtual std::optional<OptimizerStatePlan> plan_state(int64_t trainable_parameters) const {
    (void)trainable_parameters;
    return std::nullopt;
  }
};

}  // namespace mftk
