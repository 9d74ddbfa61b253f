// What optimizer plugins share: trainable-tensor checks, the state reader and
// the Adam hyperparameter checks (see mftk/optimizer_state.h).
#include "mftk/optimizer_state.h"

#include <cmath>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"

namespace mftk {

void check_trainable(const NamedTensors& params, const std::string& optimizer) {
  if (params.empty())
    throw Error(fmt::format("{}: attach() got no trainable tensors", optimizer),
                "the adapter or model marked nothing trainable; check the [adapter] table");
  std::set<std::string> seen;
  for (const auto& [name, t] : params) {
    if (name.empty() || name == "step")
      throw Error(fmt::format("{}: a trainable tensor has the reserved name '{}'", optimizer, name));
    if (!seen.insert(name).second)
      throw Error(fmt::format("{}: trainable tensor '{}' is listed twice", optimizer, name));
    if (!t.defined()) throw Error(fmt::format("{}: trainable tensor '{}' is undefined", optimizer, name));
    if (!at::isFloatingType(t.scalar_type()))
      throw Error(fmt::format("{}: trainable tensor '{}' has dtype {}; only floating-point tensors can be "
                              "optimised",
                              optimizer, name, c10::toString(t.scalar_type())));
  }
}

OptimizerStateReader::OptimizerStateReader(const NamedTensors& state, std::string optimizer,
                                           std::string mismatch_hint)
    : optimizer_(std::move(optimizer)), mismatch_hint_(std::move(mismatch_hint)) {
  if (mismatch_hint_.empty())
    mismatch_hint_ =
        "the checkpoint was saved for other trainable tensors or by another optimizer; resume with the recipe "
        "that wrote it";
  for (const auto& [name, t] : state)
    if (!tensors_.emplace(name, t).second)
      throw Error(fmt::format("{} state: tensor '{}' appears twice", optimizer_, name),
                  "the checkpoint is damaged; resume from an earlier one");
}

int64_t OptimizerStateReader::step() {
  auto it = tensors_.find("step");
  if (it == tensors_.end()) throw Error(fmt::format("{} state: 'step' is missing", optimizer_), mismatch_hint_);
  used_.insert("step");
  const at::Tensor& t = it->second;
  if (t.numel() != 1 || at::isFloatingType(t.scalar_type()))
    throw Error(fmt::format("{} state: 'step' must be one integer, got {} values of dtype {}", optimizer_,
                            t.numel(), c10::toString(t.scalar_type())));
  const int64_t step = t.item<int64_t>();
  if (step < 0) throw Error(fmt::format("{} state: 'step' is negative ({})", optimizer_, step));
  return step;
}

at::Tensor OptimizerStateReader::take(const std::string& name, at::ScalarType dtype, at::IntArrayRef shape) {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(fmt::format("{} state: '{}' is missing", optimizer_, name), mismatch_hint_);
  used_.insert(name);
  const at::Tensor& t = it->second;
  if (t.scalar_type() != dtype)
    throw Error(fmt::format("{} state: '{}' has dtype {}, expected {}", optimizer_, name,
                            c10::toString(t.scalar_type()), c10::toString(dtype)),
                mismatch_hint_);
  if (!t.sizes().equals(shape))
    throw Error(fmt::format("{} state: '{}' has shape {}, expected {}", optimizer_, name, t.sizes(), shape),
                "the checkpoint was saved for a different adapter shape (rank?); resume with its recipe");
  return t.contiguous();
}

void OptimizerStateReader::finish() const {
  std::vector<std::string> unused;
  for (const auto& [name, t] : tensors_)
    if (!used_.count(name)) unused.push_back(name);
  if (unused.empty()) return;
  const size_t count = unused.size();
  if (unused.size() > 5) unused.resize(5);
  throw Error(fmt::format("{} state: {} saved tensor(s) belong to no trainable tensor, e.g. {}", optimizer_,
                          count, fmt::join(unused, ", ")),
              "the checkpoint was saved for other trainable tensors; resume with the recipe that wrote it");
}

AdamHyperparameters adam_hyperparameters_from_config(const Config& config) {
  AdamHyperparameters h;
  h.weight_decay = config.get_number("weight_decay");
  h.beta1 = config.get_number("beta1");
  h.beta2 = config.get_number("beta2");
  h.eps = config.get_number("eps");
  if (!(h.weight_decay >= 0.0) || !std::isfinite(h.weight_decay))
    config.fail("weight_decay", fmt::format("must be a finite number >= 0, got {}", h.weight_decay),
                "0.0 (no decay) or 0.01 are usual");
  if (!(h.beta1 >= 0.0 && h.beta1 < 1.0))
    config.fail("beta1", fmt::format("must be in [0, 1), got {}", h.beta1), "0.9 is the usual value");
  if (!(h.beta2 >= 0.0 && h.beta2 < 1.0))
    config.fail("beta2", fmt::format("must be in [0, 1), got {}", h.beta2), "0.999 is the usual value");
  if (!(h.eps >= 0.0) || !std::isfinite(h.eps))
    config.fail("eps", fmt::format("must be a finite number >= 0, got {}", h.eps), "1e-8 is the usual value");
  return h;
}

}  // namespace mftk
