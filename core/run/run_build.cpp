// A run assembled from its RunSpec (run_build.h): the same objects, made in
// the same order, for `mftk run`, `mftk plan --measure` and the bench.
#include "run_build.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "batching.h"
#include "defaults.h"
#include "device.h"
#include "mftk/adapter.h"
#include "mftk/linear_slot.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "pipeline.h"
#include "preference_rows.h"
#include "recipe.h"
#include "registry.h"
#include "stage.h"

namespace mftk::core {

namespace {

int64_t count_parameters(Model& model) {
  int64_t n = 0;
  for (auto* s : model.linear_slots()) n += s->in_features * s->out_features;
  for (auto& [name, t] : model.named_parameters()) n += t.numel();
  if (model.shape().tie_word_embeddings) n -= model.shape().vocab_size * model.shape().hidden_size;
  return n;
}

template <class Interface>
std::unique_ptr<Interface> create(Registry& registry, const ComponentChoice& c) {
  return registry.create<Interface>(c.kind, c.plugin, c.config);
}

}  // namespace

LoadedModel load_model(const ComponentChoice& model, const std::string& path,
                       const std::optional<ComponentChoice>& quantize, Registry& registry, bool bf16,
                       c10::Device device) {
  // A GPU multiplies bf16 natively (DenseLinear takes that path off the CPU).
  if (bf16 && device.is_cpu() && !cpu_has_native_bf16())
    spdlog::warn("training.bf16: this CPU has no native bf16 matmul (avx512_bf16), so bf16 compute runs about "
                 "25x slower than fp32 here; set training.bf16 = false (bf16 weights are still kept in bf16 and "
                 "widened per matmul)");
  LoadedModel lm;
  lm.path = path;
  lm.quantizer = quantizer_for_checkpoint(registry, lm.path, quantize ? create<Quantizer>(registry, *quantize) : nullptr,
                                          quantize ? quantize->plugin : "");
  lm.model = create<Model>(registry, model);
  LoadOptions lo;
  lo.path = lm.path;
  lo.compute_dtype = bf16 ? at::kBFloat16 : at::kFloat;
  if (bf16) lo.weight_dtype = at::kBFloat16;
  lo.quantizer = lm.quantizer.get();
  lo.device = device;
  lm.model->load_config(lm.path);
  lm.model->load(lo);
  return lm;
}

LoadedModel load_model(const RunSpec& spec, Registry& registry, c10::Device device) {
  return load_model(spec.model, spec.model_path, spec.quantize, registry, spec.bf16, device);
}

LoadedModel load_model(const Recipe& recipe, Registry& registry, bool bf16, c10::Device device) {
  auto from_recipe = [&](const char* table) -> std::optional<ComponentChoice> {
    const auto* ref = recipe.component(table);
    if (!ref) return std::nullopt;
    return ComponentChoice{ref->table, ref->kind, ref->plugin, ref->config, true};
  };
  const auto model = from_recipe("model");
  if (!model)
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                 kDefaultModelPlugin));
  return load_model(*model, model->config.get_string("path"), from_recipe("quantize"), registry, bf16, device);
}

Trainables make_trainables(const RunSpec& spec, Registry& registry, Model& model, bool log) {
  Trainables t;
  if (spec.adapter) {
    t.adapter = create<Adapter>(registry, *spec.adapter);
    if (spec.adapter_start.empty()) {
      t.adapter->inject(model);
    } else {
      t.adapter->load(spec.adapter_start, model);
      if (log) spdlog::info("adapter: continuing from {}", spec.adapter_start);
    }
    t.tensors = t.adapter->trainable_parameters();
  } else {
    t.tensors = make_all_trainable(model);
  }
  return t;
}

std::unique_ptr<Objective> make_objective(const RunSpec& spec, Registry& registry) {
  auto objective = create<Objective>(registry, spec.objective);
  check_objective_data(spec.objective.plugin, objective->data() == ObjectiveData::preference_pairs,
                       spec.preference_data);
  return objective;
}

RunRows prepare_rows(const RunSpec& spec, Registry& registry, const Tokenizer& tokenizer, const Model& model,
                     bool preference_pairs, bool pack_eval, bool log) {
  RunRows r;
  r.data = prepare_data(spec.data, tokenizer);
  if (log)
    for (const auto& line : describe_data(r.data)) spdlog::info("data: {}", line);
  PackOptions po = spec.pack;
  po.sliding_window = model.shape().sliding_window;
  if (preference_pairs) {
    r.train = pack_preference_pairs(r.data.train, po, r.train_stats);
    if (pack_eval) r.eval = pack_preference_pairs(r.data.eval, po, r.eval_stats);
    if (log)
      spdlog::info("pairs: {} train rows, {} eval rows (one pair each); {} train and {} eval pairs longer than "
                   "sequence_len {} dropped",
                   r.train.size(), r.eval.size(), r.train_stats.dropped, r.eval_stats.dropped, po.sequence_len);
  } else {
    auto packer = create<Packer>(registry, spec.packer);
    r.train = packer->pack(r.data.train, po, r.train_stats);
    if (pack_eval) r.eval = packer->pack(r.data.eval, po, r.eval_stats);
    if (log)
      for (const auto& line : describe_packing(r.data.train, r.train, r.train_stats, po.sequence_len))
        spdlog::info("packing ({}): {}", spec.packer.plugin, line);
  }
  return r;
}

std::unique_ptr<Optimizer> attach_optimizer(const RunSpec& spec, Registry& registry, NamedTensors& trainable) {
  auto optimizer = create<Optimizer>(registry, spec.optimizer);
  optimizer->attach(trainable);
  return optimizer;
}

BuiltRun::BuiltRun() = default;
BuiltRun::BuiltRun(BuiltRun&&) noexcept = default;
BuiltRun& BuiltRun::operator=(BuiltRun&&) noexcept = default;
BuiltRun::~BuiltRun() = default;

BuiltRun build_run(const RunSpec& spec, Registry& registry, const BuildRunOptions& options) {
  at::manual_seed(spec.seed);
  BuiltRun run;
  {
    Stage stage("loading the model");
    run.lm = load_model(spec, registry, options.device);
  }
  Model& model = run.model();
  model.set_gradient_checkpointing(spec.gradient_checkpointing);
  run.total_parameters = count_parameters(model);
  if (options.log)
    spdlog::info("model: {} ({} layers, hidden {}, {} parameters) on {}", run.lm.path, model.shape().num_layers,
                 model.shape().hidden_size, run.total_parameters, options.device.str());
  Trainables trainables = make_trainables(spec, registry, model, options.log);
  run.adapter = std::move(trainables.adapter);
  run.trainable = std::move(trainables.tensors);
  if (!run.adapter && options.log)
    spdlog::info("no [adapter]: full fine-tuning of all {} parameters", run.total_parameters);
  run.objective = make_objective(spec, registry);
  run.preference_pairs = run.objective->data() == ObjectiveData::preference_pairs;
  run.tokenizer = Tokenizer::load(run.lm.path);
  run.rows = prepare_rows(spec, registry, *run.tokenizer, model, run.preference_pairs, options.pack_eval, options.log);
  run.optimizer = attach_optimizer(spec, registry, run.trainable);
  return run;
}

}  // namespace mftk::core
