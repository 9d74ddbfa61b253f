#include "sgd_optimizer.h"

#include <cmath>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"
#include "mftk/optimizer_state.h"

namespace mftk::adamw {

namespace {
const char* const kName = "sgd";
}

std::vector<KeySpec> sgd_keys() {
  const SgdOptions d;
  return {
      KeySpec::number("momentum", d.momentum, "momentum factor in [0, 1); 0 is plain gradient descent")
          .range(0.0, 1.0),
      KeySpec::number("weight_decay", d.weight_decay, "L2 penalty added to the gradient: g + weight_decay*p")
          .range(0.0, 1e6),
  };
}

SgdOptions sgd_options_from_config(const Config& config) {
  SgdOptions o;
  o.momentum = config.get_number("momentum");
  o.weight_decay = config.get_number("weight_decay");
  if (!(o.momentum >= 0.0 && o.momentum < 1.0))
    config.fail("momentum", fmt::format("must be in [0, 1), got {}", o.momentum), "0.9 is a common value");
  if (!(o.weight_decay >= 0.0) || !std::isfinite(o.weight_decay))
    config.fail("weight_decay", fmt::format("must be a finite number >= 0, got {}", o.weight_decay));
  return o;
}

Sgd::Sgd(SgdOptions options) : options_(options) {}

void Sgd::attach(const NamedTensors& params) {
  if (attached_) throw Error("sgd: attach() was called twice; create a new optimizer instead");
  check_trainable(params, kName);
  for (const auto& [name, param] : params) slots_.push_back({name, param, at::Tensor()});
  attached_ = true;
}

void Sgd::step(double lr) {
  if (!attached_) throw Error("sgd: step() before attach()");
  if (!std::isfinite(lr) || lr < 0)
    throw Error(fmt::format("sgd: learning rate must be a finite number >= 0, got {}", lr),
                "check the [schedule] table");
  at::NoGradGuard no_grad;
  ++step_;
  for (auto& slot : slots_) {
    const at::Tensor& grad = slot.param.grad();
    if (!grad.defined()) continue;
    if (!grad.sizes().equals(slot.param.sizes()))
      throw Error(fmt::format("sgd: gradient of '{}' has shape {}, the parameter {}", slot.name, grad.sizes(),
                              slot.param.sizes()));
    const bool is_f32 = slot.param.scalar_type() == at::kFloat;
    at::Tensor param = is_f32 ? slot.param : slot.param.to(at::kFloat);
    at::Tensor d = grad.scalar_type() == at::kFloat ? grad : grad.to(at::kFloat);
    if (options_.weight_decay != 0.0) d = d.add(param, options_.weight_decay);
    if (options_.momentum != 0.0) {
      if (!slot.momentum_buffer.defined()) {
        slot.momentum_buffer = d.clone().detach();
      } else {
        slot.momentum_buffer.mul_(options_.momentum).add_(d);
      }
      d = slot.momentum_buffer;
    }
    param.add_(d, -lr);
    if (!is_f32) slot.param.copy_(param);
  }
}

NamedTensors Sgd::state() const {
  NamedTensors out;
  for (const auto& slot : slots_)
    if (slot.momentum_buffer.defined()) out.emplace_back(slot.name + ".momentum_buffer", slot.momentum_buffer.clone());
  out.emplace_back("step", at::scalar_tensor(step_, at::kLong));
  return out;
}

void Sgd::load_state(const NamedTensors& state) {
  if (!attached_) throw Error("sgd: load_state() before attach(); attach the trainable tensors first");
  OptimizerStateReader reader(state, kName);
  const int64_t step = reader.step();
  std::vector<at::Tensor> buffers;
  for (const auto& slot : slots_) {
    const std::string key = slot.name + ".momentum_buffer";
    buffers.push_back(reader.has(key) ? reader.take(key, at::kFloat, slot.param.sizes()) : at::Tensor());
  }
  reader.finish();
  for (size_t i = 0; i < slots_.size(); ++i)
    slots_[i].momentum_buffer = buffers[i].defined() ? buffers[i].clone().contiguous() : at::Tensor();
  step_ = step;
}

int64_t Sgd::state_bytes() const {
  int64_t bytes = 0;
  for (const auto& slot : slots_)
    if (options_.momentum != 0.0) bytes += slot.param.numel() * 4;  // allocated at the first update
  return bytes;
}

}  // namespace mftk::adamw
