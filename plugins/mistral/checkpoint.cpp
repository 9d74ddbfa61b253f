#include "checkpoint.h"

#include <mutex>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "mftk/error.h"

namespace mftk::mistral {
namespace {

// What backward needs besides tensors: the function and the RNG state it
// first ran with. Held in the autograd node through an IValue capsule, so it
// lives exactly as long as the graph.
struct Recompute : torch::CustomClassHolder {
  std::function<at::Tensor(const at::Tensor&)> fn;
  std::vector<at::Tensor> params;  // the tensors gradients are asked for
  at::Generator generator;
  at::Tensor rng_state;
};

at::Tensor get_rng_state(at::Generator& gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(at::Generator& gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            at::TensorList params, c10::intrusive_ptr<Recompute> recompute) {
    // params are inputs so that autograd routes their gradients; backward
    // uses the same tensors, kept in `recompute`.
    recompute->params.assign(params.begin(), params.end());
    ctx->save_for_backward({x});
    ctx->saved_data["recompute"] = c10::IValue::make_capsule(recompute);
    at::NoGradGuard no_grad;
    return recompute->fn(x);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto recompute = c10::static_intrusive_pointer_cast<Recompute>(
        ctx->saved_data["recompute"].toCapsule());
    const at::Tensor x_saved = ctx->get_saved_variables()[0];
    const std::vector<at::Tensor>& params = recompute->params;

    at::Tensor x = x_saved.detach();
    x.requires_grad_(x_saved.requires_grad());
    at::Tensor y;
    {
      at::AutoGradMode grad_on(true);
      const at::Tensor current_state = get_rng_state(recompute->generator);
      set_rng_state(recompute->generator, recompute->rng_state);
      try {
        y = recompute->fn(x);
      } catch (...) {
        set_rng_state(recompute->generator, current_state);
        throw;
      }
      set_rng_state(recompute->generator, current_state);
    }

    // Gradients for x (if it needs one) and every param that needs one.
    std::vector<at::Tensor> wrt;
    if (x.requires_grad()) wrt.push_back(x);
    for (const at::Tensor& p : params)
      if (p.requires_grad()) wrt.push_back(p);
    std::vector<at::Tensor> grads;
    at::Tensor grad_y = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(y);
    if (!wrt.empty() && y.requires_grad())
      grads = torch::autograd::grad({y}, wrt, {grad_y}, /*retain_graph=*/false,
                                    /*create_graph=*/false, /*allow_unused=*/true);

    // One gradient per forward input: x, each param, then the recompute arg.
    torch::autograd::variable_list result;
    size_t next = 0;
    auto take = [&](bool wanted) {
      result.push_back(wanted && next < grads.size() ? grads[next] : at::Tensor());
      if (wanted) ++next;
    };
    take(x.requires_grad());
    for (const at::Tensor& p : params) take(p.requires_grad());
    result.emplace_back();
    return result;
  }
};

}  // namespace

at::Tensor checkpointed(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x,
                        at::TensorList params) {
  bool needs_grad = x.requires_grad();
  for (const auto& p : params) needs_grad = needs_grad || p.requires_grad();
  if (!at::GradMode::is_enabled() || !needs_grad) return fn(x);

  auto recompute = c10::make_intrusive<Recompute>();
  recompute->fn = std::move(fn);
  recompute->generator = at::globalContext().defaultGenerator(x.device());
  recompute->rng_state = get_rng_state(recompute->generator);
  return CheckpointFunction::apply(x, params, recompute);
}

}  // namespace mftk::mistral
