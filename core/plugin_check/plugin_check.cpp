// `mftk plugin check`: dispatch by kind, the checks every kind shares (keys
// documented, defaults valid) and the helpers the per-kind files use.
#include "plugin_check/plugin_check.h"

#include <filesystem>
#include <fstream>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "defaults.h"
#include "init_checkpoint.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/exporter.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "model_tools.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::core {
namespace check {
namespace {

// libtorch messages carry a C++ backtrace after the first line; one line suffices here.
std::string without_first_backtrace(const std::string& message) { return message.substr(0, message.find('\n')); }

}  // namespace

bool Checker::run(const std::string& check, const std::function<void()>& body) {
  note_.clear();
  try {
    body();
  } catch (const CheckSkipped& e) {
    report(check, CheckOutcome::skip, e.what());
    return false;
  } catch (const CheckFailed& e) {
    report(check, CheckOutcome::fail, e.what());
    return false;
  } catch (const Error& e) {
    report(check, CheckOutcome::fail, fmt::format("threw: {}", without_first_backtrace(e.what())));
    return false;
  } catch (const std::exception& e) {
    report(check, CheckOutcome::fail, fmt::format("threw: {}", without_first_backtrace(e.what())));
    return false;
  } catch (...) {
    report(check, CheckOutcome::fail, "threw something that is not a std::exception (throw mftk::Error)");
    return false;
  }
  report(check, CheckOutcome::pass, note_);
  return true;
}

void Checker::report(const std::string& check, CheckOutcome outcome, const std::string& detail) {
  sink_(CheckResult{component_, check, outcome, detail});
}

TinyModelSource::TinyModelSource(Registry& registry, std::string scratch_dir)
    : registry_(registry), scratch_dir_(std::move(scratch_dir)) {}

const std::string& TinyModelSource::checkpoint_dir() {
  if (!checkpoint_dir_.empty()) return checkpoint_dir_;
  const fs::path out = fs::path(scratch_dir_) / "tiny-checkpoint";
  // Written once per run and shared by every component's checks (which only read it).
  if (fs::exists(out / "model.safetensors")) return checkpoint_dir_ = out.string();
  // The tokenizer is trained on generated text so the check needs no file
  // from mftk's source tree (a third party runs it on an installed mftk).
  const fs::path corpus = fs::path(scratch_dir_) / "tiny-corpus.txt";
  {
    static const char* const kWords[] = {"the",    "quick",  "brown", "fox",   "jumps",  "over",   "lazy",
                                         "dog",    "model",  "token", "layer", "cache",  "window", "weight",
                                         "adapter", "export", "pack",  "step",  "plugin", "check"};
    std::mt19937 gen(17);
    std::ofstream out(corpus);
    for (int line = 0; line < 200; ++line) {
      for (int w = 0; w < 12; ++w) out << (w ? " " : "") << kWords[gen() % std::size(kWords)];
      out << "\n";
    }
    if (!out) throw Error(fmt::format("could not write {}", corpus.string()));
  }
  InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 2},   {"hidden_size", 128},         {"intermediate_size", 256},
                 {"num_attention_heads", 4}, {"num_key_value_heads", 2},   {"sliding_window", 4}};
  o.dtype = "f32";
  o.seed = 11;
  o.corpus = corpus.string();
  o.tokenizer_vocab = 300;
  o.out = out.string();
  write_random_checkpoint(o);
  checkpoint_dir_ = o.out;
  return checkpoint_dir_;
}

std::unique_ptr<Model> TinyModelSource::load(const std::string& model_plugin) {
  const std::string& dir = checkpoint_dir();
  auto model = registry_.create<Model>(Kind::model, model_plugin,
                                       component_config(registry_, Kind::model, model_plugin, "model", {{"path", dir}}));
  LoadOptions lo;
  lo.path = dir;
  lo.compute_dtype = at::kFloat;
  model->load_config(dir);
  model->load(lo);
  model->set_training(false);
  return model;
}

std::unique_ptr<Model> TinyModelSource::load_default() { return load(kDefaultModelPlugin); }

Config default_config(Registry& registry, const ComponentInfo& component, const std::map<std::string, Value>& values) {
  for (const auto& key : component.spec.keys)
    if (!key.default_value && !values.count(key.name))
      throw CheckSkipped(fmt::format("key '{}' is required (no default), so the check cannot make one", key.name));
  return component_config(registry, component.spec.kind, component.spec.name, to_string(component.spec.kind), values);
}

std::string sizes_text(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

double max_relative_difference(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  if (a.sizes() != b.sizes())
    throw CheckFailed(fmt::format("{}: shapes differ ({} vs {})", what, sizes_text(a),
                                  sizes_text(b)));
  const auto x = a.to(at::kDouble), y = b.to(at::kDouble);
  if (!x.isfinite().all().item<bool>()) throw CheckFailed(fmt::format("{}: non-finite values", what));
  const double scale = std::max(y.abs().max().item<double>(), 1e-6);
  return (x - y).abs().max().item<double>() / scale;
}

Batch single_document_batch(const at::Tensor& ids) {
  Batch b;
  b.input_ids = ids.to(at::kLong);
  b.targets = at::full_like(b.input_ids, kIgnoreIndex);
  b.position_ids = at::arange(ids.size(1), at::kLong).unsqueeze(0).expand({ids.size(0), ids.size(1)}).contiguous();
  b.doc_ids = at::zeros({ids.size(0), ids.size(1)}, at::kInt);
  return b;
}

at::Tensor logits_of(Model& model, const Batch& batch) {
  at::NoGradGuard no_grad;
  return model.logits(model.forward(batch)).to(at::kFloat);
}

at::Tensor random_ids(int64_t rows, int64_t len, int64_t vocab, uint64_t seed) {
  std::mt19937_64 gen(seed);
  auto ids = at::empty({rows, len}, at::kLong);
  auto* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows * len; ++i) p[i] = 3 + int64_t(gen() % uint64_t(vocab - 3));
  return ids;
}

void check_keys(Registry& registry, const ComponentInfo& component, Checker& checker) {
  checker.run("keys documented", [&] {
    std::vector<std::string> bare;
    for (const auto& key : component.spec.keys)
      if (key.doc.find_first_not_of(" \t\n") == std::string::npos) bare.push_back(key.name);
    if (!bare.empty())
      throw CheckFailed(fmt::format("key(s) without a doc: {} (the doc is what `mftk plugins --keys` prints)",
                                    fmt::join(bare, ", ")));
  });
  if (component.spec.kind == Kind::model) return;  // the model check creates and loads it from defaults + path
  checker.run("defaults valid", [&] {
    const Config config = default_config(registry, component);
    const std::string& name = component.spec.name;
    switch (component.spec.kind) {
      case Kind::adapter: registry.create<Adapter>(Kind::adapter, name, config); break;
      case Kind::quantizer: registry.create<Quantizer>(Kind::quantizer, name, config); break;
      case Kind::packer: registry.create<Packer>(Kind::packer, name, config); break;
      case Kind::optimizer: registry.create<Optimizer>(Kind::optimizer, name, config); break;
      case Kind::exporter: registry.create<Exporter>(Kind::exporter, name, config); break;
      case Kind::objective: registry.create<Objective>(Kind::objective, name, config); break;
      case Kind::model: break;
    }
  });
}

}  // namespace check

void check_component(Registry& registry, const ComponentInfo& component, const std::string& scratch_dir,
                     const CheckSink& sink) {
  const std::string label = fmt::format("{}:{}", to_string(component.spec.kind), component.spec.name);
  check::Checker checker(label, sink);
  // Each component gets its own folder: one component's leftovers never meet another's checks.
  std::string safe = label;
  for (char& c : safe)
    if (c == ':') c = '-';
  const std::string dir = (fs::path(scratch_dir) / safe).string();
  fs::create_directories(dir);
  check::TinyModelSource source(registry, (fs::path(scratch_dir) / "shared").string());
  fs::create_directories(fs::path(scratch_dir) / "shared");
  check::check_keys(registry, component, checker);
  switch (component.spec.kind) {
    case Kind::model: check::check_model(registry, component, source, checker); break;
    case Kind::adapter: check::check_adapter(registry, component, source, dir, checker); break;
    case Kind::quantizer: check::check_quantizer(registry, component, source, dir, checker); break;
    case Kind::packer: check::check_packer(registry, component, checker); break;
    case Kind::optimizer: check::check_optimizer(registry, component, dir, checker); break;
    case Kind::exporter: check::check_exporter(registry, component, source, dir, checker); break;
    case Kind::objective: check::check_objective(registry, component, source, checker); break;
  }
}

}  // namespace mftk::core
