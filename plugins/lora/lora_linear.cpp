// LoRALinear (see lora_linear.h).
#include "lora_linear.h"

#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk::lora {

LoRALinear::LoRALinear(std::shared_ptr<LinearOp> inner, int64_t in_features, int64_t out_features,
                       const LoRALinearOptions& options)
    : inner_(std::move(inner)),
      in_features_(in_features),
      out_features_(out_features),
      r_(options.r),
      scaling_(lora_scaling(options.alpha, options.r, options.use_rslora)),
      dropout_(options.dropout) {
  MFTK_CHECK(inner_ != nullptr, "lora: cannot wrap an empty linear op");
  MFTK_CHECK(in_features_ > 0 && out_features_ > 0, "lora: bad slot shape [{}, {}]", out_features_,
             in_features_);
  const auto fp32 = at::TensorOptions().dtype(at::kFloat).device(options.device);
  // Both inits draw from the global generator, so the trainer's seed fixes them.
  at::NoGradGuard no_grad;
  lora_A_ = at::empty({r_, in_features_}, fp32);
  if (options.init == LoRAInit::gaussian) {
    lora_A_.normal_(0.0, 1.0 / static_cast<double>(r_));
  } else {
    // kaiming_uniform_(a = sqrt(5)) on [r, in]: gain sqrt(2 / (1 + 5)) times
    // sqrt(3 / fan_in) = 1 / sqrt(in).
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
    lora_A_.uniform_(-bound, bound);
  }
  lora_B_ = at::zeros({out_features_, r_}, fp32);
  lora_A_.requires_grad_(true);
  lora_B_.requires_grad_(true);
}

at::Tensor LoRALinear::forward(const at::Tensor& x) {
  at::Tensor y = inner_->forward(x);
  if (!enabled_) return y;
  const at::ScalarType dt = x.scalar_type();
  const at::Tensor a = lora_A_.scalar_type() == dt ? lora_A_ : lora_A_.to(dt);
  const at::Tensor b = lora_B_.scalar_type() == dt ? lora_B_ : lora_B_.to(dt);
  const at::Tensor xd = training_ && dropout_ > 0 ? at::dropout(x, dropout_, /*train=*/true) : x;
  // Scale the [.., r] intermediate: the cheapest place for the multiply.
  const at::Tensor h = at::linear(xd, a).mul_(scaling_);
  // y + h B^T as one GEMM accumulating into y's values (addmm, beta = 1):
  // no separate [.., out] product and no extra pass to add it.
  const int64_t out = y.size(-1);
  return at::addmm(y.reshape({-1, out}), h.reshape({-1, r_}), b.t()).view(y.sizes());
}

at::Tensor LoRALinear::dense_weight(at::ScalarType dtype) const {
  at::NoGradGuard no_grad;
  at::Tensor w = inner_->dense_weight(at::kFloat);
  at::Tensor delta = at::mm(lora_B_.detach().to(at::kFloat), lora_A_.detach().to(at::kFloat));
  at::Tensor merged = at::add(w.to(delta.device()), delta, scaling_);
  return merged.to(dtype);
}

NamedTensors LoRALinear::parameters() { return {{"lora_A.weight", lora_A_}, {"lora_B.weight", lora_B_}}; }

int64_t LoRALinear::storage_bytes() const {
  return inner_->storage_bytes() +
         (lora_A_.numel() + lora_B_.numel()) * static_cast<int64_t>(lora_A_.element_size());
}

std::string LoRALinear::describe() const {
  return fmt::format("lora(r={}) over {}", r_, inner_->describe());
}

}  // namespace mftk::lora
