// Optimizer plugins: update trainable tensors from their .grad().
//
// defines: mftk::Optimizer
#pragma once

#include <cstdint>

#include "mftk/tensor.h"

namespace mftk {

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
};

}  // namespace mftk
