// The dense op every linear slot starts with (see linear_slot.h).
#include "mftk/linear_slot.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

namespace mftk {
namespace {

// Rows of W widened to fp32 at a time: ~64 MiB of fp32 per chunk, so a
// 32000 x 4096 lm_head costs 64 MiB of scratch instead of a 512 MiB copy.
int64_t widen_chunk_rows(const at::Tensor& weight) {
  return std::max<int64_t>(1, (int64_t(64) << 20) / std::max<int64_t>(1, weight.size(1) * 4));
}

// y = x W^T in fp32 over a bf16 or f16 W, widened one block of output rows at a time.
at::Tensor widened_linear(const at::Tensor& x, const at::Tensor& weight) {
  const int64_t out = weight.size(0), chunk = widen_chunk_rows(weight);
  if (out <= chunk) return at::linear(x, weight.to(at::kFloat));
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  at::Tensor y = at::empty(shape, x.options());
  for (int64_t r = 0; r < out; r += chunk) {
    const int64_t n = std::min(chunk, out - r);
    y.narrow(-1, r, n).copy_(at::linear(x, weight.narrow(0, r, n).to(at::kFloat)));
  }
  return y;
}

// dL/dx = g W over the same row blocks.
at::Tensor widened_input_grad(const at::Tensor& grad_y, const at::Tensor& weight) {
  const int64_t out = weight.size(0), chunk = widen_chunk_rows(weight);
  if (out <= chunk) return at::matmul(grad_y, weight.to(at::kFloat));
  const at::Tensor g = grad_y.reshape({-1, out});
  at::Tensor grad_x = at::zeros({g.size(0), weight.size(1)}, grad_y.options());
  for (int64_t r = 0; r < out; r += chunk) {
    const int64_t n = std::min(chunk, out - r);
    grad_x.addmm_(g.narrow(1, r, n), weight.narrow(0, r, n).to(at::kFloat));
  }
  std::vector<int64_t> shape(grad_y.sizes().begin(), grad_y.sizes().end());
  shape.back() = weight.size(1);
  return grad_x.view(shape);
}

// y = x W^T with a frozen bf16 or f16 W widened to fp32 per matmul; the
// node keeps the narrow W (a view of the checkpoint), not a copy, and widens
// again in backward for dL/dx. No weight gradient.
struct WidenedMatmul : torch::autograd::Function<WidenedMatmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight) {
    ctx->saved_data["weight"] = weight;
    at::NoGradGuard no_grad;
    return widened_linear(x, weight);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0) && grad_outputs[0].defined())
      grad_x = widened_input_grad(grad_outputs[0], ctx->saved_data["weight"].toTensor());
    return {grad_x, at::Tensor()};
  }
};

class DenseLinear final : public LinearOp {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {}

  at::Tensor forward(const at::Tensor& x) override {
    // An f16 weight on the CPU is always widened: libtorch's CPU kernels
    // have no Half matmul at all ("addmm_impl_cpu_" not implemented for
    // 'Half'), so the product is taken in fp32 and returned in x's dtype.
    if (weight_.scalar_type() == at::kHalf && weight_.is_cpu() && x.scalar_type() != at::kFloat)
      return forward(x.to(at::kFloat)).to(x.scalar_type());
    // The matmul runs in the weight's dtype where that is fast: a bf16
    // frozen base takes oneDNN's bf16 path (about 2x fp32 with avx512_bf16).
    // Without native bf16, fp32 activations meet a widened weight instead.
    const bool half_width = weight_.scalar_type() == at::kHalf ||
                            (weight_.scalar_type() == at::kBFloat16 && !cpu_has_native_bf16());
    if (x.scalar_type() == at::kFloat && half_width && weight_.is_cpu()) {
      const at::Tensor bias = bias_.defined() ? bias_.to(at::kFloat) : bias_;
      // A frozen weight: the autograd node keeps the bf16 tensor, not the
      // fp32 copy, and widens again in backward (otherwise every layer's
      // fp32 copy would stay alive until backward: 2x the base in memory).
      if (!weight_.requires_grad() && at::GradMode::is_enabled() && x.requires_grad()) {
        const at::Tensor y = WidenedMatmul::apply(x, weight_);
        return bias.defined() ? y + bias : y;
      }
      if (weight_.requires_grad()) return at::linear(x, weight_.to(at::kFloat), bias);  // trained in bf16 / f16
      at::NoGradGuard no_grad;  // frozen, and x needs no gradient
      const at::Tensor y = widened_linear(x, weight_);
      return bias.defined() ? y + bias : y;
    }
    const bool cast = x.scalar_type() != weight_.scalar_type();
    at::Tensor y = at::linear(cast ? x.to(weight_.scalar_type()) : x, weight_,
                              bias_.defined() ? bias_.to(weight_.scalar_type()) : bias_);
    return cast ? y.to(x.scalar_type()) : y;
  }
  at::Tensor dense_weight(at::ScalarType dtype) const override { return weight_.detach().to(dtype); }
  NamedTensors parameters() override {
    NamedTensors out{{"weight", weight_}};
    if (bias_.defined()) out.emplace_back("bias", bias_);
    return out;
  }
  int64_t storage_bytes() const override {
    return weight_.numel() * int64_t(weight_.element_size()) +
           (bias_.defined() ? bias_.numel() * int64_t(bias_.element_size()) : 0);
  }
  std::string describe() const override {
    return fmt::format("dense {}", c10::toString(weight_.scalar_type()));
  }

 private:
  at::Tensor weight_;
  at::Tensor bias_;
};

}  // namespace

bool cpu_has_native_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool native = __builtin_cpu_supports("avx512bf16");
  return native;
#else
  return false;
#endif
}

std::shared_ptr<LinearOp> make_dense_linear(at::Tensor weight, at::Tensor bias) {
  return std::make_shared<DenseLinear>(std::move(weight), std::move(bias));
}

}  // namespace mftk
