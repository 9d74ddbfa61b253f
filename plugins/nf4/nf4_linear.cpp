// Nf4Linear (see nf4_linear.h).
#include "nf4_linear.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

#include "mftk/error.h"

namespace mftk::nf4 {

namespace {

// What the autograd node keeps: the packed weight, never a dense copy.
struct WeightHolder : torch::CustomClassHolder {
  std::shared_ptr<const Nf4Tensor> weight;
  at::ScalarType dtype = at::kFloat;
};

// y = x W^T with W dequantised for this matmul only; backward dequantises
// again for dL/dx and returns no gradient for the weight.
struct Nf4MatmulFunction : torch::autograd::Function<Nf4MatmulFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            c10::intrusive_ptr<WeightHolder> holder) {
    at::NoGradGuard no_grad;
    const at::Tensor w = dequantize_nf4(*holder->weight, holder->dtype);
    ctx->saved_data["weight"] = c10::IValue::make_capsule(std::move(holder));
    return at::linear(x, w);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto holder = c10::static_intrusive_pointer_cast<WeightHolder>(ctx->saved_data["weight"].toCapsule());
    at::Tensor grad_x;
    if (ctx->needs_input_grad(0) && grad_outputs[0].defined()) {
      // [..., out] x [out, in] -> [..., in]
      const at::Tensor w = dequantize_nf4(*holder->weight, holder->dtype);
      grad_x = at::matmul(grad_outputs[0].to(holder->dtype), w);
    }
    return {grad_x, at::Tensor()};
  }
};

}  // namespace

Nf4Linear::Nf4Linear(std::shared_ptr<const Nf4Tensor> weight, at::ScalarType compute_dtype)
    : weight_(std::move(weight)), compute_dtype_(compute_dtype) {
  if (!weight_) throw Error("nf4: a linear op needs a quantised weight");
  if (weight_->shape.size() != 2)
    throw Error(fmt::format("nf4: a linear weight is 2-D [out, in], this one has {} dimensions",
                            weight_->shape.size()));
  if (compute_dtype_ != at::kFloat && compute_dtype_ != at::kBFloat16)
    throw UsageError(fmt::format("nf4: compute dtype {} is not supported", c10::toString(compute_dtype_)),
                     "use compute_dtype = \"f32\" or \"bf16\"");
}

at::Tensor Nf4Linear::forward(const at::Tensor& x) {
  if (x.size(-1) != weight_->shape[1])
    throw Error(fmt::format("nf4: input has {} features, the weight [{}, {}] expects {}", x.size(-1),
                            weight_->shape[0], weight_->shape[1], weight_->shape[1]));
  if (x.numel() == 0 && !(at::GradMode::is_enabled() && x.requires_grad())) {
    // Nothing to compute, so nothing to dequantise: a zero-row forward is
    // how a model checks the [out, in] of an op it did not build.
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = weight_->shape[0];
    return at::empty(sizes, x.options());
  }
  const bool cast = x.scalar_type() != compute_dtype_;
  const at::Tensor xc = cast ? x.to(compute_dtype_) : x;
  at::Tensor y;
  if (at::GradMode::is_enabled() && xc.requires_grad()) {
    auto holder = c10::make_intrusive<WeightHolder>();
    holder->weight = weight_;
    holder->dtype = compute_dtype_;
    y = Nf4MatmulFunction::apply(xc, holder);
  } else {
    y = at::linear(xc, dequantize_nf4(*weight_, compute_dtype_));
  }
  return cast ? y.to(x.scalar_type()) : y;
}

at::Tensor Nf4Linear::dense_weight(at::ScalarType dtype) const { return dequantize_nf4(*weight_, dtype); }

std::string Nf4Linear::describe() const {
  return weight_->double_quant() ? fmt::format("nf4({}, dq)", weight_->blocksize)
                                 : fmt::format("nf4({})", weight_->blocksize);
}

std::shared_ptr<LinearOp> make_nf4_linear(std::shared_ptr<const Nf4Tensor> weight, at::ScalarType compute_dtype) {
  return std::make_shared<Nf4Linear>(std::move(weight), compute_dtype);
}

}  // namespace mftk::nf4
