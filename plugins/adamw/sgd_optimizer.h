// The "sgd" optimizer: torch.optim.SGD (no dampening, no Nesterov), mainly
// for tests and for checking a pipeline with the simplest possible update.
//
// defines: mftk::adamw::SgdOptions, mftk::adamw::sgd_keys,
//          mftk::adamw::sgd_options_from_config, mftk::adamw::Sgd
//
// Per parameter, with the same ATen ops as torch's single-tensor SGD:
//   d = g + wd*p
//   buf = d (first update) or buf*momentum + d;  d = buf   (momentum != 0)
//   p -= lr*d
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mftk/config.h"
#include "mftk/optimizer.h"

namespace mftk::adamw {

struct SgdOptions {
  double momentum = 0.0;
  double weight_decay = 0.0;  // L2 added to the gradient (coupled), as torch SGD
};

std::vector<KeySpec> sgd_keys();
SgdOptions sgd_options_from_config(const Config& config);

class Sgd final : public Optimizer {
 public:
  explicit Sgd(SgdOptions options);

  void attach(const NamedTensors& params) override;
  void step(double lr) override;
  // "<param>.momentum_buffer" (float32; only once a parameter has been
  // updated with momentum != 0) and "step" (int64 scalar).
  NamedTensors state() const override;
  void load_state(const NamedTensors& state) override;
  int64_t state_bytes() const override;
  // One float32 momentum buffer per parameter, none without momentum.
  std::optional<OptimizerStatePlan> plan_state(int64_t trainable_parameters) const override {
    if (options_.momentum == 0.0) return OptimizerStatePlan{0, "no state (momentum = 0)", false};
    return OptimizerStatePlan{trainable_parameters * 4, "one fp32 momentum buffer per parameter", false};
  }

 private:
  struct Slot {
    std::string name;
    at::Tensor param;
    at::Tensor momentum_buffer;  // undefined until the first update
  };
  SgdOptions options_;
  std::vector<Slot> slots_;
  bool attached_ = false;
  int64_t step_ = 0;
};

}  // namespace mftk::adamw
