// LoRALinear: a linear op that adds a trainable low-rank update to the op it
// wraps (PEFT's LoRA Linear layer, docs/formats.md §8.4, LoRA arithmetic).
//
// defines: mftk::lora::LoRAInit, mftk::lora::LoRALinearOptions,
//          mftk::lora::LoRALinear, mftk::lora::lora_scaling
//
//   y = inner(x) + scaling * B(A(dropout(x)))
//
// A [r, in] and B [out, r] are fp32 leaves that require grad; they are cast
// to x's dtype for the matmuls, so a bf16 run gets bf16 GEMMs while the
// optimizer keeps fp32 values. The inner op stays frozen and untouched.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <c10/core/Device.h>

#include "mftk/linear_slot.h"
#include "mftk/peft_config.h"

namespace mftk::lora {

enum class LoRAInit {
  peft_default,  // A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform, a = sqrt(5)), B = 0
  gaussian,      // A ~ N(0, (1/r)^2), B = 0
};

struct LoRALinearOptions {
  int64_t r = 8;              // rank
  double alpha = 16.0;        // lora_alpha
  double dropout = 0.0;       // on the adapter's input only, in training mode
  bool use_rslora = false;    // scaling alpha/sqrt(r) instead of alpha/r
  LoRAInit init = LoRAInit::peft_default;
  at::Device device = at::kCPU;  // where A and B live: the inner weight's device
};

// alpha / r, or alpha / sqrt(r) with rsLoRA: the SDK's rule (mftk/peft_config.h).
using ::mftk::lora_scaling;

class LoRALinear final : public LinearOp {
 public:
  // Draws A from the global torch generator (the trainer's seed fixes it).
  LoRALinear(std::shared_ptr<LinearOp> inner, int64_t in_features, int64_t out_features,
             const LoRALinearOptions& options);

  at::Tensor forward(const at::Tensor& x) override;
  // inner.dense_weight(fp32) + scaling * B @ A, in fp32, then cast.
  at::Tensor dense_weight(at::ScalarType dtype) const override;
  // {"lora_A.weight", A}, {"lora_B.weight", B}
  NamedTensors parameters() override;
  int64_t storage_bytes() const override;
  std::string describe() const override;  // "lora(r=8) over dense BFloat16"

  // Dropout on the adapter's input in training mode; the inner op hears it too.
  void set_training(bool on) override {
    training_ = on;
    inner_->set_training(on);
  }
  bool training() const { return training_; }
  // Off: forward() is the inner op alone (the adapter's tensors take no part).
  void set_enabled(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }

  const std::shared_ptr<LinearOp>& inner() const { return inner_; }
  const at::Tensor& lora_A() const { return lora_A_; }
  const at::Tensor& lora_B() const { return lora_B_; }
  double scaling() const { return scaling_; }
  int64_t rank() const { return r_; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

 private:
  std::shared_ptr<LinearOp> inner_;
  int64_t in_features_;
  int64_t out_features_;
  int64_t r_;
  double scaling_;
  double dropout_;
  bool training_ = false;
  bool enabled_ = true;
  at::Tensor lora_A_;  // [r, in] fp32, requires grad
  at::Tensor lora_B_;  // [out, r] fp32, requires grad
};

}  // namespace mftk::lora
