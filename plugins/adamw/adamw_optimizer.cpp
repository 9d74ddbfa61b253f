#include "adamw_optimizer.h"

#include <cmath>
#include <utility>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"
#include "mftk/optimizer_state.h"

namespace mftk::adamw {

namespace {
const char* const kName = "adamw";
}

std::vector<KeySpec> adamw_keys() {
  const AdamWOptions d;
  return {
      KeySpec::number("weight_decay", d.weight_decay,
                      "decoupled weight decay: p *= 1 - lr*weight_decay before each update (torch AdamW)")
          .range(0.0, 1e6),
      KeySpec::number("beta1", d.beta1, "decay of the gradient average (first moment), in [0, 1)").range(0.0, 1.0),
      KeySpec::number("beta2", d.beta2, "decay of the squared-gradient average (second moment), in [0, 1)")
          .range(0.0, 1.0),
      KeySpec::number("eps", d.eps, "added to sqrt of the second moment; guards the division").range(0.0, 1.0),
  };
}

AdamWOptions adamw_options_from_config(const Config& config) {
  const AdamHyperparameters h = adam_hyperparameters_from_config(config);  // the SDK's checks
  AdamWOptions o;
  o.weight_decay = h.weight_decay;
  o.beta1 = h.beta1;
  o.beta2 = h.beta2;
  o.eps = h.eps;
  return o;
}

AdamW::AdamW(AdamWOptions options) : options_(options) {}

void AdamW::attach(const NamedTensors& params) {
  if (attached_) throw Error("adamw: attach() was called twice; create a new optimizer instead");
  check_trainable(params, kName);
  for (const auto& [name, param] : params) {
    // Moments stay float32 whatever the parameter dtype (master moments).
    auto opts = param.options().dtype(at::kFloat);
    slots_.push_back({name, param, at::zeros(param.sizes(), opts), at::zeros(param.sizes(), opts)});
    if (!scratch_.defined() || param.numel() > scratch_.numel()) scratch_ = at::empty({param.numel()}, opts);
  }
  attached_ = true;
}

void AdamW::step(double lr) {
  if (!attached_) throw Error("adamw: step() before attach()");
  if (!std::isfinite(lr) || lr < 0)
    throw Error(fmt::format("adamw: learning rate must be a finite number >= 0, got {}", lr),
                "check the [schedule] table");
  at::NoGradGuard no_grad;
  ++step_;
  const double beta1 = options_.beta1, beta2 = options_.beta2;
  // Python computes these in double (floats), then each ATen op casts them.
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step_));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step_));
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);

  for (auto& slot : slots_) {
    const at::Tensor& grad = slot.param.grad();
    if (!grad.defined()) continue;
    if (!grad.sizes().equals(slot.param.sizes()))
      throw Error(fmt::format("adamw: gradient of '{}' has shape {}, the parameter {}", slot.name, grad.sizes(),
                              slot.param.sizes()));
    // Non-float32 parameters are updated through a float32 copy (the update
    // is rounded to the parameter dtype when written back).
    const bool is_f32 = slot.param.scalar_type() == at::kFloat;
    at::Tensor param = is_f32 ? slot.param : slot.param.to(at::kFloat);
    at::Tensor g = grad.scalar_type() == at::kFloat ? grad : grad.to(at::kFloat);

    if (options_.weight_decay != 0.0) param.mul_(1.0 - lr * options_.weight_decay);
    slot.exp_avg.mul_(beta1).add_(g, 1.0 - beta1);
    slot.exp_avg_sq.mul_(beta2).addcmul_(g, g, 1.0 - beta2);
    // torch: denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps), the
    // same kernels written into a reused buffer (fresh large tensors every
    // step cost more in page faults than the arithmetic).
    at::Tensor denom = scratch_.narrow(0, 0, slot.param.numel()).view(slot.param.sizes());
    at::sqrt_out(denom, slot.exp_avg_sq);
    denom.div_(bias_correction2_sqrt).add_(options_.eps);
    param.addcdiv_(slot.exp_avg, denom, -step_size);

    if (!is_f32) slot.param.copy_(param);
  }
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  out.reserve(2 * slots_.size() + 1);
  for (const auto& slot : slots_) {
    out.emplace_back(slot.name + ".exp_avg", slot.exp_avg.clone());
    out.emplace_back(slot.name + ".exp_avg_sq", slot.exp_avg_sq.clone());
  }
  out.emplace_back("step", at::scalar_tensor(step_, at::kLong));
  return out;
}

void AdamW::load_state(const NamedTensors& state) {
  if (!attached_) throw Error("adamw: load_state() before attach(); attach the trainable tensors first");
  OptimizerStateReader reader(state, kName);
  const int64_t step = reader.step();
  // Read everything before changing anything: a bad state leaves us as we were.
  std::vector<std::pair<at::Tensor, at::Tensor>> moments;
  for (const auto& slot : slots_)
    moments.emplace_back(reader.take(slot.name + ".exp_avg", at::kFloat, slot.param.sizes()),
                         reader.take(slot.name + ".exp_avg_sq", at::kFloat, slot.param.sizes()));
  reader.finish();
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < slots_.size(); ++i) {
    slots_[i].exp_avg.copy_(moments[i].first);
    slots_[i].exp_avg_sq.copy_(moments[i].second);
  }
  step_ = step;
}

int64_t AdamW::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& slot : slots_) bytes += (slot.exp_avg.numel() + slot.exp_avg_sq.numel()) * 4;
  return bytes;
}

}  // namespace mftk::adamw
