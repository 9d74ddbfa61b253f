// Adapter checks, on a tiny model of the default model plugin:
//   identity at init        inject() leaves the logits as they were
//   gradients own tensors   backward reaches trainable_parameters() and nothing else
//   disabled equals base    with its tensors perturbed, set_enabled(false) gives the
//                           base model's logits and set_enabled(true) brings the
//                           adapter's back (a preference objective's reference model)
//   merged equals unmerged  after its tensors are perturbed (so the check is not
//                           vacuous), merge() changes no logit
//   save/load round trip    a fresh model + adapter loading save()'s folder gives
//                           the perturbed adapter's logits
#include <filesystem>
#include <set>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "mftk/adapter.h"
#include "mftk/model.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::core::check {
namespace {

constexpr double kSameLogits = 1e-4;
constexpr double kIdentical = 1e-6;  // identity at init, reload: the same arithmetic

// Every tensor the model holds: its own and each slot op's (the adapter's wrappers included).
NamedTensors all_model_tensors(Model& model) {
  NamedTensors all = model.named_parameters();
  for (LinearSlot* slot : model.linear_slots())
    for (auto& [name, t] : slot->op->parameters()) all.emplace_back(slot->name + "." + name, t);
  return all;
}

}  // namespace

void check_adapter(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                   const std::string& scratch_dir, Checker& checker) {
  std::unique_ptr<Model> model;
  std::unique_ptr<Adapter> adapter;
  at::Tensor base, unmerged;
  bool injected = false, saved_ok = false;  // how far the steps got, whatever the checks said
  const auto batch = [&] { return single_document_batch(random_ids(2, 8, model->shape().vocab_size, 5)); };
  checker.run("identity at init", [&] {
    model = source.load_default();
    base = logits_of(*model, batch());
    adapter = registry.create<Adapter>(Kind::adapter, component.spec.name, default_config(registry, component));
    adapter->inject(*model);
    model->set_training(false);  // reaches the adapter's ops: no dropout
    injected = true;
    if (adapter->trainable_parameters().empty()) throw CheckFailed("trainable_parameters() is empty after inject()");
    const double d = max_relative_difference(logits_of(*model, batch()), base, "logits after inject");
    checker.note(fmt::format("max relative change {:.2g}", d));
    if (d > kIdentical)
      throw CheckFailed(fmt::format("inject() moved the logits by {:.3g} (relative); a fresh adapter must start "
                                    "as the identity so training starts from the base model",
                                    d));
  });
  if (!injected) {
    for (const char* c :
         {"gradients own tensors", "disabled equals base", "merged equals unmerged", "save/load round trip"})
      checker.report(c, CheckOutcome::skip, "inject() did not complete");
    return;
  }
  const NamedTensors own = adapter->trainable_parameters();
  checker.run("gradients own tensors", [&] {
    std::set<const void*> own_impls;
    for (const auto& [name, t] : own) {
      if (!t.requires_grad()) throw CheckFailed(fmt::format("trainable tensor '{}' does not require grad", name));
      own_impls.insert(t.unsafeGetTensorImpl());
    }
    const auto b = batch();
    const auto loss = model->logits(model->forward(b)).to(at::kFloat).pow(2).mean();
    loss.backward();
    bool any = false;
    checker.note(fmt::format("{} trainable tensors", own.size()));
    for (const auto& [name, t] : own)
      if (t.grad().defined() && t.grad().abs().sum().item<double>() > 0) any = true;
    if (!any) throw CheckFailed("backward left every trainable tensor without a gradient");
    for (const auto& [name, t] : all_model_tensors(*model)) {
      if (own_impls.count(t.unsafeGetTensorImpl())) continue;
      if (t.requires_grad() || (t.grad().defined() && t.grad().abs().sum().item<double>() > 0))
        throw CheckFailed(fmt::format("'{}' is not among trainable_parameters() but {}", name,
                                      t.requires_grad() ? "requires grad" : "received a gradient"));
    }
    for (const auto& [name, t] : own) t.mutable_grad() = at::Tensor();
  });
  // Trained-like weights for the checks below (once, whichever runs first):
  // an adapter at its identity init would pass them without doing anything.
  bool perturbed = false;
  double moved = 0;  // how far the perturbation moved the logits (relative)
  const auto perturb = [&] {
    if (!perturbed) {
      at::NoGradGuard no_grad;
      auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
      for (const auto& [name, t] : own)
        t.add_(at::randn(t.sizes(), gen, at::TensorOptions().dtype(at::kFloat)).to(t.dtype()) * 0.05);
      perturbed = true;
    }
    unmerged = logits_of(*model, batch());
    moved = max_relative_difference(unmerged, base, "perturbed logits");
    if (moved < 1e-3)
      throw CheckFailed("perturbing every trainable tensor did not change the logits: the adapter has no effect");
  };
  checker.run("disabled equals base", [&] {
    perturb();
    // Switched back on whatever happens, so the checks after this one see the adapter.
    struct Reenable {
      Adapter& adapter;
      ~Reenable() {
        try {
          adapter.set_enabled(true);
        } catch (...) {
        }
      }
    } reenable{*adapter};
    adapter->set_enabled(false);
    const at::Tensor off = logits_of(*model, batch());
    adapter->set_enabled(true);
    const at::Tensor on = logits_of(*model, batch());
    const double d_off = max_relative_difference(off, base, "logits with the adapter disabled");
    const double d_on = max_relative_difference(on, unmerged, "logits with the adapter enabled again");
    checker.note(fmt::format("relative: disabled vs base {:.2g}{}, re-enabled vs adapter {:.2g}", d_off,
                             at::equal(off, base) ? " (bitwise equal)" : "", d_on));
    if (d_off > kIdentical)
      throw CheckFailed(fmt::format("with set_enabled(false) the logits differ from the base model's by {:.3g} "
                                    "(relative; the adapter moved them {:.3g}); a disabled adapter must leave every "
                                    "slot computing its base op alone",
                                    d_off, moved));
    if (d_on > kIdentical)
      throw CheckFailed(fmt::format("set_enabled(true) after set_enabled(false) left the logits {:.3g} (relative) "
                                    "away from the adapter's", d_on));
  });
  const std::string saved = (fs::path(scratch_dir) / "adapter-saved").string();
  checker.run("merged equals unmerged", [&] {
    perturb();
    adapter->save(saved, source.checkpoint_dir());
    saved_ok = true;
    adapter->merge(*model);
    const double d = max_relative_difference(logits_of(*model, batch()), unmerged, "merged logits");
    checker.note(fmt::format("perturbation moved logits {:.2g}, merge {:.2g} (relative)", moved, d));
    if (d > kSameLogits)
      throw CheckFailed(fmt::format("merge() moved the logits by {:.3g} (relative)", d));
  });
  if (!saved_ok) {
    checker.report("save/load round trip", CheckOutcome::skip, "the perturbed adapter could not be saved");
    return;
  }
  checker.run("save/load round trip", [&] {
    if (!fs::exists(saved)) throw CheckFailed(fmt::format("save() wrote nothing at {}", saved));
    auto fresh_model = source.load_default();
    auto fresh = registry.create<Adapter>(Kind::adapter, component.spec.name, default_config(registry, component));
    fresh->load(saved, *fresh_model);
    fresh_model->set_training(false);
    const double d = max_relative_difference(logits_of(*fresh_model, batch()), unmerged, "reloaded logits");
    checker.note(fmt::format("max relative difference {:.2g}", d));
    if (d > kIdentical)
      throw CheckFailed(fmt::format("a fresh model loading the saved adapter differs from the adapter saved by "
                                    "{:.3g} (relative)",
                                    d));
  });
}

}  // namespace mftk::core::check
