// A run assembled from its RunSpec, once, for every command that trains:
// `mftk run` (pipeline.cpp), `mftk plan --measure` (plan_measure.cpp) and
// the bench. build_run is its parts called in order; a caller that trains
// on rows of its own (the bench's synthetic batches) calls the parts it needs.
//
// defines: mftk::core::LoadedModel, mftk::core::load_model, mftk::core::Trainables, mftk::core::make_trainables,
//          mftk::core::make_objective, mftk::core::RunRows, mftk::core::prepare_rows, mftk::core::attach_optimizer,
//          mftk::core::BuildRunOptions, mftk::core::BuiltRun, mftk::core::build_run
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "dataset.h"
#include "mftk/batch.h"
#include "mftk/packer.h"
#include "mftk/tensor.h"
#include "run_spec.h"

namespace mftk {
class Adapter;
class Model;
class Objective;
class Optimizer;
class Quantizer;
class Tokenizer;
}  // namespace mftk

namespace mftk::core {

class Recipe;
class Registry;

// A model component with its weights loaded (quantised while they stream
// in, when a quantizer is asked for or the checkpoint is stored quantised).
struct LoadedModel {
  std::unique_ptr<Quantizer> quantizer;  // declared first: the model's slots may use it
  std::unique_ptr<Model> model;
  std::string path;
};
// `device`: where the weights go, tensor by tensor as they are read.
LoadedModel load_model(const ComponentChoice& model, const std::string& path,
                       const std::optional<ComponentChoice>& quantize, Registry& registry, bool bf16,
                       c10::Device device = c10::kCPU);
LoadedModel load_model(const RunSpec& spec, Registry& registry, c10::Device device = c10::kCPU);
// From a recipe's [model] (and [quantize]) table, for commands that load a
// model without training it.
LoadedModel load_model(const Recipe& recipe, Registry& registry, bool bf16, c10::Device device = c10::kCPU);

// What trains: an adapter injected into the model (or loaded from the
// adapter table's `path`), or, without an [adapter], every weight.
struct Trainables {
  std::unique_ptr<Adapter> adapter;  // null: full fine-tuning
  NamedTensors tensors;
};
Trainables make_trainables(const RunSpec& spec, Registry& registry, Model& model, bool log = true);

// The [objective] (sft by default), checked against the data's type.
std::unique_ptr<Objective> make_objective(const RunSpec& spec, Registry& registry);

// The data tokenized (or read from its cache) and packed into rows:
// preference pairs one per row by the core, documents by the packer.
struct RunRows {
  PreparedData data;
  std::vector<PackedRow> train, eval;
  PackStats train_stats, eval_stats;
};
RunRows prepare_rows(const RunSpec& spec, Registry& registry, const Tokenizer& tokenizer, const Model& model,
                     bool preference_pairs, bool pack_eval = true, bool log = true);

// The optimizer plugin, attached to the trainable tensors.
std::unique_ptr<Optimizer> attach_optimizer(const RunSpec& spec, Registry& registry, NamedTensors& trainable);

struct BuildRunOptions {
  c10::Device device = c10::kCPU;  // where the weights go (resolved already)
  bool pack_eval = true;           // also pack the eval split
  bool log = true;                 // the info lines `mftk run` prints while it builds
};

// Everything a run trains with, owned; members in the order they are made
// (and destroyed in reverse: the optimizer before the tensors it holds,
// the adapter's ops before the model whose slots hold them).
struct BuiltRun {
  LoadedModel lm;
  int64_t total_parameters = 0;
  std::unique_ptr<Adapter> adapter;  // null: full fine-tuning
  NamedTensors trainable;
  std::unique_ptr<Objective> objective;
  bool preference_pairs = false;  // the objective trains on pairs (rows hold one each)
  std::shared_ptr<Tokenizer> tokenizer;
  RunRows rows;
  std::unique_ptr<Optimizer> optimizer;

  Model& model() { return *lm.model; }
  // Out of line (run_build.cpp), where every component's type is complete.
  BuiltRun();
  BuiltRun(BuiltRun&&) noexcept;
  BuiltRun& operator=(BuiltRun&&) noexcept;
  ~BuiltRun();
};

// Seeds libtorch's generator with [training] seed, then: model, trainables,
// objective, tokenizer, data, rows, optimizer, in that order (the adapter's
// initial weights draw from the generator, so the order is part of the result).
BuiltRun build_run(const RunSpec& spec, Registry& registry, const BuildRunOptions& options = {});

}  // namespace mftk::core
