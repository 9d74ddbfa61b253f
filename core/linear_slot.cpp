// The dense op every linear slot starts with (see linear_slot.h).
#include "mftk/linear_slot.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

namespace mftk {
namespace {

// y = x W^T with a bf16 W widened to fp32 for this matmul only; backward
// widens again for dL/dx. W is frozen: no weight gradient.
struct WidenedMatmul : torch::autograd::Function<WidenedMatmul> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight) {
    ctx->saved_data["weight"] = weight;  // the bf16 tensor (a view of the checkpoint), not a copy
    at::NoGradGuard no_grad;
    return at::linear(x, weight.to(at::kFloat));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0) && grad_outputs[0].defined())
      grad_x = at::matmul(grad_outputs[0], ctx->saved_data["weight"].toTensor().to(at::kFloat));
    return {grad_x, at::Tensor()};
  }
};

class DenseLinear final : public LinearOp {
 public:
  DenseLinear(at::Tensor weight, at::Tensor bias) : weight_(std::move(weight)), bias_(std::move(bias)) {}

  at::Tensor forward(const at::Tensor& x) override {
    // The matmul runs in the weight's dtype where that is fast: a bf16
    // frozen base takes oneDNN's bf16 path (about 2x fp32 with avx512_bf16).
    // Without native bf16, fp32 activations meet a widened weight instead.
    if (x.scalar_type() == at::kFloat && weight_.scalar_type() == at::kBFloat16 && weight_.is_cpu() &&
        !cpu_has_native_bf16()) {
      const at::Tensor bias = bias_.defined() ? bias_.to(at::kFloat) : bias_;
      // A frozen weight: the autograd node keeps the bf16 tensor, not the
      // fp32 copy, and widens again in backward (otherwise every layer's
      // fp32 copy would stay alive until backward: 2x the base in memory).
      if (!weight_.requires_grad() && at::GradMode::is_enabled() && x.requires_grad()) {
        const at::Tensor y = WidenedMatmul::apply(x, weight_);
        return bias.defined() ? y + bias : y;
      }
      return at::linear(x, weight_.to(at::kFloat), bias);
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
