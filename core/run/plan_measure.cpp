// `mftk plan --measure N`: N real optimizer steps of the recipe, timed on
// this machine (plan.h). The steps change nothing that is kept: the update
// runs at a learning rate of 1e-12 and the weights are never saved.
#include <algorithm>
#include <chrono>
#include <memory>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "batching.h"
#include "dataset.h"
#include "device.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "pipeline.h"
#include "plan.h"
#include "preference_rows.h"
#include "recipe.h"
#include "registry.h"
#include "run_log.h"
#include "trainer.h"

namespace mftk::core {

void measure_steps(const Recipe& recipe, Registry& registry, int64_t steps, Plan& plan) {
  if (steps <= 0) return;
  if (!plan.data.available)
    throw UsageError(fmt::format("--measure needs the training data: {}", plan.data.why_not),
                     "create the dataset files, or leave --measure out for the memory and step estimate only");
  const auto& training = recipe.section("training");
  // Timed where the plan says the run computes: a cuda plan measured on a
  // machine without a usable GPU stops with the reason (exit 2).
  const c10::Device device =
      plan.device == PlanDevice::cuda
          ? resolve_device(DeviceSetting{DeviceSetting::Kind::cuda, std::nullopt, "cuda (mftk plan --measure)"},
                           cuda_support())
          : c10::Device(c10::kCPU);
  auto lm = load_model(recipe, registry, training.get_bool("bf16"), device);
  Model& model = *lm.model;
  model.set_gradient_checkpointing(training.get_bool("gradient_checkpointing"));
  std::unique_ptr<Adapter> adapter;
  NamedTensors trainable;
  if (const auto* a = recipe.component("adapter")) {
    adapter = registry.create<Adapter>(Kind::adapter, a->plugin, a->config);
    adapter->inject(model);
    trainable = adapter->trainable_parameters();
  } else {
    trainable = make_all_trainable(model);
  }
  const std::string opt_name = plan.training.optimizer;
  auto optimizer = recipe.component("optimizer")
                       ? registry.create<Optimizer>(Kind::optimizer, opt_name, recipe.component("optimizer")->config)
                       : registry.create<Optimizer>(Kind::optimizer, opt_name,
                                                    component_config(registry, Kind::optimizer, opt_name, "optimizer"));
  optimizer->attach(trainable);
  auto tokenizer = Tokenizer::load(plan.model.path);
  auto data = prepare_data(recipe, *tokenizer);
  PackOptions po = pack_options_from_recipe(recipe);
  po.sliding_window = model.shape().sliding_window;
  PackStats stats;
  // A recipe's [objective] is timed as it trains (dpo's reference pass included).
  std::unique_ptr<Objective> objective;
  if (const auto* o = recipe.component("objective"))
    objective = registry.create<Objective>(Kind::objective, o->plugin, o->config);
  const auto rows = plan.training.preference_pairs ? pack_preference_pairs(data.train, po, stats)
                                                   : make_recipe_packer(recipe, registry)->pack(data.train, po, stats);
  if (objective) prepare_objective(model, *objective, adapter.get(), rows, plan.training.micro_batch_size);
  model.set_training(true);
  const size_t B = size_t(plan.training.micro_batch_size);
  const int64_t accumulation = plan.training.gradient_accumulation_steps;
  std::vector<double> seconds;
  int64_t tokens = 0;
  size_t next = 0;
  for (int64_t step = 0; step < steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t micro = 0; micro < accumulation; ++micro) {
      const size_t count = std::min(B, rows.size() - next);
      Batch batch = make_batch(rows.data() + next, count);
      next = (next + count) % rows.size();
      int64_t supervised = 0;
      at::Tensor loss;
      if (objective) {
        ObjectiveResult r = objective->compute(model, adapter.get(), batch);
        loss = r.loss_sum, supervised = r.units;
      } else {
        loss = supervised_loss_sum(model, batch, &supervised);
      }
      if (supervised > 0) (loss / double(supervised)).backward();
      tokens += (batch.doc_ids >= 0).sum().item<int64_t>();
    }
    optimizer->step(1e-12);  // timed like a real update, changes nothing that is kept
    for (auto& [name, t] : trainable)
      if (t.grad().defined()) t.mutable_grad() = at::Tensor();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  auto sorted = seconds;
  std::sort(sorted.begin(), sorted.end());
  TimeEstimate& te = plan.time;
  te.measured_steps = steps;
  te.seconds_per_step = sorted[sorted.size() / 2];
  te.total_seconds = te.seconds_per_step * double(plan.steps.total_steps);
  double sum = 0;
  for (double s : seconds) sum += s;
  te.tokens_per_s = sum > 0 ? double(tokens) / sum : 0;
  te.measured_peak_rss = peak_rss_bytes();
}

}  // namespace mftk::core
