// DoraLinear (see dora_linear.h).
#include "dora_linear.h"

#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <mftk/error.h>

namespace example_dora {

double dora_scaling(double alpha, int64_t r, bool use_rslora) {
  MFTK_CHECK(r >= 1, "example.dora: rank r must be at least 1, got {}", r);
  return use_rslora ? alpha / std::sqrt(double(r)) : alpha / double(r);
}

DoraLinear::DoraLinear(std::shared_ptr<mftk::LinearOp> base, at::Tensor base_bias, int64_t in_features,
                       int64_t out_features, const DoraLinearOptions& options)
    : base_(std::move(base)),
      base_bias_(std::move(base_bias)),
      r_(options.r),
      scaling_(dora_scaling(options.alpha, options.r, options.use_rslora)),
      dropout_(options.dropout) {
  MFTK_CHECK(base_ != nullptr, "example.dora: cannot wrap an empty linear op");
  const auto fp32 = at::TensorOptions().dtype(at::kFloat).device(options.device);
  at::NoGradGuard no_grad;
  // kaiming_uniform_(a = sqrt(5)) on [r, in] is U(-1/sqrt(in), 1/sqrt(in)):
  // PEFT's default init for lora_A, drawn from the global generator so the
  // run's seed fixes it.
  const double bound = 1.0 / std::sqrt(double(in_features));
  lora_A_ = at::empty({r_, in_features}, fp32).uniform_(-bound, bound);
  lora_B_ = at::zeros({out_features, r_}, fp32);
  // With B = 0 the direction is W itself: m = ||W|| makes W' = W.
  magnitude_ = direction_norm().clone();
  lora_A_.requires_grad_(true);
  lora_B_.requires_grad_(true);
  magnitude_.requires_grad_(true);
}

at::Tensor DoraLinear::direction() const {
  at::NoGradGuard no_grad;
  const at::Tensor w = base_->dense_weight(at::kFloat).to(lora_A_.device());
  return at::addmm(w, lora_B_.detach(), lora_A_.detach(), /*beta=*/1.0, /*alpha=*/scaling_);
}

at::Tensor DoraLinear::direction_norm() const {
  at::NoGradGuard no_grad;
  return at::linalg_vector_norm(direction(), 2, at::IntArrayRef{1});  // over the input dim: one norm per output row
}

at::Tensor DoraLinear::forward(const at::Tensor& x) {
  at::Tensor y = base_->forward(x);  // x W^T + bias
  if (!enabled_) return y;
  const at::ScalarType dt = x.scalar_type();
  // PEFT applies dropout to the adapter's input and uses the dropped input
  // for both DoRA terms; the base output keeps the clean input.
  const bool drop = training_ && dropout_ > 0;
  const at::Tensor xd = drop ? at::dropout(x, dropout_, /*train=*/true) : x;
  at::Tensor xw = drop ? base_->forward(xd) : y;  // x_d W^T (+ bias, removed next)
  if (base_bias_.defined()) xw = xw - base_bias_.to(dt);
  // g = m / ||W + s B A||, the norm a constant in backward: m gets its
  // gradient here, A and B through the low-rank term below.
  const at::Tensor g = (magnitude_ / direction_norm()).to(dt);
  const at::Tensor low_rank = at::linear(at::linear(xd, lora_A_.to(dt)), lora_B_.to(dt)).mul_(scaling_);
  // y + (g - 1) x_d W^T + g s B A x_d: without dropout this is
  // bias + g * (x W^T + s x A^T B^T) = x W'^T + bias.
  return y + (g - 1) * xw + g * low_rank;
}

at::Tensor DoraLinear::dense_weight(at::ScalarType dtype) const {
  at::NoGradGuard no_grad;
  const at::Tensor v = direction();
  const at::Tensor norm = at::linalg_vector_norm(v, 2, at::IntArrayRef{1});
  return (magnitude_.detach().div(norm).unsqueeze(1) * v).to(dtype);
}

mftk::NamedTensors DoraLinear::parameters() {
  return {{"lora_A.weight", lora_A_}, {"lora_B.weight", lora_B_}, {"lora_magnitude_vector", magnitude_}};
}

int64_t DoraLinear::storage_bytes() const {
  return base_->storage_bytes() +
         (lora_A_.numel() + lora_B_.numel() + magnitude_.numel()) * int64_t(lora_A_.element_size());
}

std::string DoraLinear::describe() const { return fmt::format("dora(r={}) over {}", r_, base_->describe()); }

}  // namespace example_dora
