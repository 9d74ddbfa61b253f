// Optimizer checks, on f(p) = sum_i w_i (p_i - c_i)^2 over two tensors:
//   step decreases quadratic  one step(lr) lowers f
//   state resumes exactly     3 steps, state() written to a .safetensors file and
//                             read into a fresh optimizer over copies of the
//                             parameters, then 3 more steps on both: the copies
//                             equal the uninterrupted run's parameters bit for bit
#include <filesystem>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "mftk/optimizer.h"
#include "mftk/safetensors.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::core::check {
namespace {

constexpr double kLr = 1e-2;

struct Quadratic {
  NamedTensors params, centres, weights;

  explicit Quadratic(uint64_t seed) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const auto f32 = at::TensorOptions().dtype(at::kFloat);
    for (const auto& [name, shape] : std::vector<std::pair<std::string, std::vector<int64_t>>>{
             {"layer.weight", {16, 8}}, {"layer.bias", {16}}}) {
      params.emplace_back(name, at::randn(shape, gen, f32).requires_grad_(true));
      centres.emplace_back(name, at::randn(shape, gen, f32));
      weights.emplace_back(name, at::rand(shape, gen, f32) + 0.5);
    }
  }
  at::Tensor value(const NamedTensors& p) const {
    at::Tensor f = at::zeros({}, at::kFloat);
    for (size_t i = 0; i < p.size(); ++i)
      f = f + (weights[i].second * (p[i].second - centres[i].second).pow(2)).sum();
    return f;
  }
  // Fills the .grad() of `p` with f's gradient.
  void gradient(const NamedTensors& p) const {
    for (const auto& [name, t] : p) t.mutable_grad() = at::Tensor();
    value(p).backward();
  }
};

NamedTensors copies(const NamedTensors& p) {
  NamedTensors out;
  for (const auto& [name, t] : p) out.emplace_back(name, t.detach().clone().requires_grad_(true));
  return out;
}

}  // namespace

void check_optimizer(Registry& registry, const ComponentInfo& component, const std::string& scratch_dir,
                     Checker& checker) {
  const auto make = [&] {
    return registry.create<Optimizer>(Kind::optimizer, component.spec.name, default_config(registry, component));
  };
  checker.run("step decreases quadratic", [&] {
    Quadratic q(41);
    auto opt = make();
    opt->attach(q.params);
    const double before = q.value(q.params).item<double>();
    q.gradient(q.params);
    opt->step(kLr);
    const double after = q.value(q.params).item<double>();
    checker.note(fmt::format("f {:.6g} -> {:.6g}", before, after));
    if (!(after < before))
      throw CheckFailed(fmt::format("f went from {:.6g} to {:.6g} after one step at lr {}", before, after, kLr));
  });
  checker.run("state resumes exactly", [&] {
    Quadratic q(43);
    auto opt = make();
    opt->attach(q.params);
    for (int s = 0; s < 3; ++s) {
      q.gradient(q.params);
      opt->step(kLr);
    }
    // Through a file, as a checkpoint carries it.
    const std::string file = (fs::path(scratch_dir) / "optimizer-state.safetensors").string();
    NamedTensors state;
    for (const auto& [name, t] : opt->state()) state.emplace_back(name, t.detach().contiguous());
    save_safetensors(file, state);
    const auto stored = SafetensorsFile::open(file);
    NamedTensors read;
    for (const auto& info : stored->tensors()) read.emplace_back(info.name, stored->get(info.name).clone());
    const NamedTensors resumed_params = copies(q.params);
    auto resumed = make();
    resumed->attach(resumed_params);
    resumed->load_state(read);
    for (int s = 0; s < 3; ++s) {
      q.gradient(q.params);
      opt->step(kLr);
      q.gradient(resumed_params);
      resumed->step(kLr);
    }
    checker.note(fmt::format("{} state tensors", read.size()));
    for (size_t i = 0; i < q.params.size(); ++i)
      if (!at::equal(q.params[i].second, resumed_params[i].second)) {
        const double d = (q.params[i].second - resumed_params[i].second).abs().max().item<double>();
        throw CheckFailed(fmt::format("'{}' after 3 steps, a save/load of state() and 3 more steps differs from the "
                                      "uninterrupted run by up to {:.3g}",
                                      q.params[i].first, d));
      }
  });
}

}  // namespace mftk::core::check
