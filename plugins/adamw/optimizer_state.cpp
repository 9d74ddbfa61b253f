#include "optimizer_state.h"

#include <set>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"

namespace mftk::adamw {

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

StateReader::StateReader(const NamedTensors& state, std::string optimizer) : optimizer_(std::move(optimizer)) {
  for (const auto& [name, t] : state) {
    if (!tensors_.emplace(name, t).second)
      throw Error(fmt::format("{} state: tensor '{}' appears twice", optimizer_, name),
                  "the checkpoint is damaged; resume from an earlier one");
    used_[name] = false;
  }
}

at::Tensor StateReader::take(const std::string& name) {
  auto it = tensors_.find(name);
  if (it == tensors_.end())
    throw Error(fmt::format("{} state: '{}' is missing", optimizer_, name),
                "the checkpoint was saved for other trainable tensors or by another optimizer; resume "
                "with the recipe that wrote it");
  used_[name] = true;
  return it->second;
}

int64_t StateReader::step() {
  at::Tensor t = take("step");
  if (t.numel() != 1 || at::isFloatingType(t.scalar_type()))
    throw Error(fmt::format("{} state: 'step' must be one integer, got {} values of dtype {}", optimizer_,
                            t.numel(), c10::toString(t.scalar_type())));
  const int64_t step = t.item<int64_t>();
  if (step < 0) throw Error(fmt::format("{} state: 'step' is negative ({})", optimizer_, step));
  return step;
}

at::Tensor StateReader::float_like(const std::string& name, const at::Tensor& like) {
  at::Tensor t = take(name);
  if (t.scalar_type() != at::kFloat)
    throw Error(fmt::format("{} state: '{}' has dtype {}, expected float32", optimizer_, name,
                            c10::toString(t.scalar_type())));
  if (!t.sizes().equals(like.sizes()))
    throw Error(fmt::format("{} state: '{}' has shape {}, the parameter has shape {}", optimizer_, name,
                            t.sizes(), like.sizes()),
                "the checkpoint was saved for a different adapter shape (rank?); resume with its recipe");
  return t;
}

void StateReader::finish() const {
  std::vector<std::string> unused;
  for (const auto& [name, used] : used_)
    if (!used) unused.push_back(name);
  if (unused.empty()) return;
  const size_t count = unused.size();
  if (unused.size() > 5) unused.resize(5);
  throw Error(fmt::format("{} state: {} saved tensor(s) belong to no trainable tensor, e.g. {}", optimizer_,
                          count, fmt::join(unused, ", ")),
              "the checkpoint was saved for other trainable tensors; resume with the recipe that wrote it");
}

}  // namespace mftk::adamw
