// DoraLinear: the linear op the example.dora adapter puts into each slot it
// adapts. DoRA (weight-decomposed low-rank adaptation, Liu et al. 2024,
// arXiv:2402.09353) splits the adapted weight into a direction and a
// per-output-row magnitude:
//
//   V  = W + s * B A                     W [out, in] the frozen base weight
//   W' = m * V / ||V||                   ||V|| the L2 norm of each row of V (over the input dim)
//   y  = x W'^T + bias
//
// A [r, in] and B [out, r] are LoRA's factors, s = alpha / r (alpha / sqrt(r)
// with rsLoRA), and m [out] starts as ||W|| so that, with B = 0, W' = W:
// a fresh adapter is the identity. ||V|| is treated as a constant in
// backward (it is computed without a graph), as the DoRA paper suggests
// (section 4.3) and PEFT does, so gradients reach A, B and m only through
// the numerator.
//
// forward() never builds W' as a matmul operand: it computes
//   y = bias + g * (x W^T) + g * s * (x A^T) B^T,    g = m / ||V||
// reusing the base op's own output for x W^T (the base op may be packed or
// quantised; only its dense_weight() is read, for the norm). The norm needs
// W + s B A itself: materialised once per call (out x in floats), which is
// what PEFT does too; a large model would cache ||W||^2 and expand the norm,
// but for an example this is the clearest form.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <mftk/linear_slot.h>

namespace example_dora {

struct DoraLinearOptions {
  int64_t r = 8;
  double alpha = 16.0;
  double dropout = 0.0;   // on the adapter's input while training
  bool use_rslora = false;
  at::Device device = at::kCPU;  // where A, B and m live: the base weight's device
};

// alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's LoRA scaling).
double dora_scaling(double alpha, int64_t r, bool use_rslora);

class DoraLinear final : public mftk::LinearOp {
 public:
  // A from the global torch generator (kaiming-uniform, as PEFT's default
  // LoRA init), B = 0, m = ||W|| row by row.
  DoraLinear(std::shared_ptr<mftk::LinearOp> base, at::Tensor base_bias, int64_t in_features,
             int64_t out_features, const DoraLinearOptions& options);

  at::Tensor forward(const at::Tensor& x) override;
  // m * V / ||V|| in fp32, then cast: the weight merge() writes.
  at::Tensor dense_weight(at::ScalarType dtype) const override;
  // {"lora_A.weight", A}, {"lora_B.weight", B}, {"lora_magnitude_vector", m}
  mftk::NamedTensors parameters() override;
  int64_t storage_bytes() const override;
  std::string describe() const override;  // "dora(r=8) over dense Float"

  // Dropout in training mode (the model's set_training reaches every slot).
  void set_training(bool on) override {
    training_ = on;
    base_->set_training(on);
  }
  // Off: forward() is the base op alone.
  void set_enabled(bool on) { enabled_ = on; }

  const at::Tensor& lora_A() const { return lora_A_; }
  const at::Tensor& lora_B() const { return lora_B_; }
  const at::Tensor& magnitude() const { return magnitude_; }
  const at::Tensor& base_bias() const { return base_bias_; }
  const std::shared_ptr<mftk::LinearOp>& base() const { return base_; }

 private:
  // ||W + s B A|| of each output row, fp32 [out], outside the autograd graph.
  at::Tensor direction_norm() const;
  // W + s B A, fp32 [out, in], outside the autograd graph.
  at::Tensor direction() const;

  std::shared_ptr<mftk::LinearOp> base_;
  at::Tensor base_bias_;  // undefined when the base op has no bias
  int64_t r_;
  double scaling_;
  double dropout_;
  bool training_ = false;
  bool enabled_ = true;
  at::Tensor lora_A_;     // [r, in] fp32, requires grad
  at::Tensor lora_B_;     // [out, r] fp32, requires grad
  at::Tensor magnitude_;  // [out] fp32, requires grad
};

}  // namespace example_dora
