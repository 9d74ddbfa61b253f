// The "adamw" optimizer: torch.optim.AdamW, step for step.
//
// defines: mftk::adamw::AdamWOptions, mftk::adamw::adamw_keys,
//          mftk::adamw::adamw_options_from_config, mftk::adamw::AdamW
//
// Each update runs the same ATen ops in the same order as PyTorch's
// single-tensor AdamW (torch/optim/adamw.py, foreach=False):
//   p *= 1 - lr*wd                       (decoupled decay, before Adam)
//   m  = m*beta1 + (1-beta1)*g
//   v  = v*beta2 + (1-beta2)*g*g
//   p -= lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
// so, with the libtorch it links, the result is bit-identical to Python's
// torch.optim.AdamW(foreach=False) of the same torch build.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mftk/config.h"
#include "mftk/optimizer.h"

namespace mftk::adamw {

struct AdamWOptions {
  double weight_decay = 0.0;  // decoupled, torch.optim.AdamW style
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

std::vector<KeySpec> adamw_keys();
AdamWOptions adamw_options_from_config(const Config& config);

class AdamW final : public Optimizer {
 public:
  explicit AdamW(AdamWOptions options);

  void attach(const NamedTensors& params) override;
  void step(double lr) override;
  // "<param>.exp_avg", "<param>.exp_avg_sq" (float32, the parameter's shape)
  // and "step" (int64 scalar): everything a bit-identical resume needs.
  NamedTensors state() const override;
  void load_state(const NamedTensors& state) override;
  int64_t state_bytes() const override;
  // Two float32 moments per parameter.
  std::optional<OptimizerStatePlan> plan_state(int64_t trainable_parameters) const override {
    return OptimizerStatePlan{trainable_parameters * 8, "fp32: 2 moments x 4 bytes per parameter", false};
  }

  int64_t steps_taken() const { return step_; }

 private:
  struct Slot {
    std::string name;
    at::Tensor param;
    at::Tensor exp_avg;     // float32, contiguous
    at::Tensor exp_avg_sq;  // float32, contiguous
  };
  AdamWOptions options_;
  std::vector<Slot> slots_;
  at::Tensor scratch_;  // float32 workspace for the denominator, as large as the largest parameter
  bool attached_ = false;
  // Optimizer steps taken; the bias corrections use it for every parameter
  // (torch counts per parameter; the two agree whenever every parameter has
  // a gradient at every step, as LoRA training does).
  int64_t step_ = 0;
};

}  // namespace mftk::adamw
