// What the per-kind checks of `mftk plugin check` share: running one named
// check, the tiny random checkpoint and model, tensor comparisons.
//
// defines: mftk::core::check::CheckFailed, mftk::core::check::Checker,
//          mftk::core::check::TinyModelSource, mftk::core::check::max_relative_difference,
//          mftk::core::check::single_document_batch, mftk::core::check::logits_of,
//          mftk::core::check::check_model, check_adapter, check_quantizer, check_packer, check_objective,
//          check_optimizer, check_exporter
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "mftk/batch.h"
#include "mftk/config.h"
#include "mftk/plugin.h"
#include "plugin_check/plugin_check.h"

namespace mftk {
class Model;
}

namespace mftk::core {
class Registry;
struct ComponentInfo;
}

namespace mftk::core::check {

// Thrown by a check to say how the plugin broke the contract.
class CheckFailed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown by a check that cannot apply to this component (say why).
class CheckSkipped : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs checks of one component and reports each to the sink.
class Checker {
 public:
  Checker(std::string component, CheckSink sink) : component_(std::move(component)), sink_(std::move(sink)) {}
  // Runs `body`; a return is a pass, CheckFailed or any other exception a
  // failure (with its message), CheckSkipped a skip. Returns true on a pass.
  bool run(const std::string& check, const std::function<void()>& body);
  void report(const std::string& check, CheckOutcome outcome, const std::string& detail = {});
  // What the running check measured, printed with its PASS ("max diff 2e-7").
  void note(std::string text) { note_ = std::move(text); }

 private:
  std::string component_;
  std::string note_;
  CheckSink sink_;
};

// A tiny random checkpoint (2 layers, hidden 128, sliding window 4, a
// 300-piece tokenizer trained on generated text) for the default model
// plugin, written once per run, and models loaded from it.
class TinyModelSource {
 public:
  TinyModelSource(Registry& registry, std::string scratch_dir);
  const std::string& checkpoint_dir();  // writes it on first use
  // A fresh model of plugin `model_plugin` loaded from the checkpoint (fp32,
  // eval mode).
  std::unique_ptr<Model> load(const std::string& model_plugin);
  std::unique_ptr<Model> load_default();

 private:
  Registry& registry_;
  std::string scratch_dir_;
  std::string checkpoint_dir_;
};

// The Config a component gets from an all-defaults table, plus `values`.
Config default_config(Registry& registry, const ComponentInfo& component, const std::map<std::string, Value>& values = {});

// "[2, 12, 128]"
std::string sizes_text(const at::Tensor& t);

// max |a - b| / max(max |b|, 1e-6); a and b the same shape (else CheckFailed).
double max_relative_difference(const at::Tensor& a, const at::Tensor& b, const std::string& what);

// One document per row: position_ids 0..T-1, doc_ids 0, targets ignored.
Batch single_document_batch(const at::Tensor& ids);  // ids [B, T] int64
// logits [B, T, vocab] of one forward pass (no grad).
at::Tensor logits_of(Model& model, const Batch& batch);
// Deterministic token ids [B, T] in [3, vocab) from `seed`.
at::Tensor random_ids(int64_t rows, int64_t len, int64_t vocab, uint64_t seed);

void check_keys(Registry& registry, const ComponentInfo& component, Checker& checker);

void check_model(Registry& registry, const ComponentInfo& component, TinyModelSource& source, Checker& checker);
void check_adapter(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                   const std::string& scratch_dir, Checker& checker);
void check_quantizer(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                     const std::string& scratch_dir, Checker& checker);
void check_packer(Registry& registry, const ComponentInfo& component, Checker& checker);
void check_objective(Registry& registry, const ComponentInfo& component, TinyModelSource& source, Checker& checker);
void check_optimizer(Registry& registry, const ComponentInfo& component, const std::string& scratch_dir,
                     Checker& checker);
void check_exporter(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                    const std::string& scratch_dir, Checker& checker);

}  // namespace mftk::core::check
