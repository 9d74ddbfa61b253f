// `mftk plan --measure N`: N real optimizer steps of the recipe, timed on
// this machine (plan.h). The steps change nothing that is kept: the update
// runs at a learning rate of 1e-12 and the weights are never saved.
#include <algorithm>
#include <chrono>
#include <memory>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "batching.h"
#include "device.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/quantizer.h"
#include "plan.h"
#include "run_build.h"
#include "run_log.h"
#include "run_spec.h"
#include "train_step.h"
#include "trainer.h"

namespace mftk::core {

void measure_steps(const Recipe& recipe, Registry& registry, int64_t steps, Plan& plan) {
  if (steps <= 0) return;
  if (!plan.data.available)
    throw UsageError(fmt::format("--measure needs the training data: {}", plan.data.why_not),
                     "create the dataset files, or leave --measure out for the memory and step estimate only");
  // Timed where the plan says the run computes: a cuda plan measured on a
  // machine without a usable GPU stops with the reason (exit 2).
  const c10::Device device =
      plan.device == PlanDevice::cuda
          ? resolve_device(DeviceSetting{DeviceSetting::Kind::cuda, std::nullopt, "cuda (mftk plan --measure)"},
                           cuda_support())
          : c10::Device(c10::kCPU);
  // The run as `mftk run` builds it (its objective, dpo's reference pass
  // included), without its log lines and without the eval rows.
  const RunSpec spec = make_run_spec(recipe, registry);
  BuildRunOptions options;
  options.device = device;
  options.pack_eval = false;
  options.log = false;
  BuiltRun run = build_run(spec, registry, options);
  Model& model = run.model();
  const std::vector<PackedRow>& rows = run.rows.train;
  prepare_objective(model, *run.objective, run.adapter.get(), rows, spec.micro_batch_size);
  model.set_training(true);
  TrainStep step(model, *run.optimizer, run.trainable, run.objective.get(), run.adapter.get());
  const size_t B = size_t(spec.micro_batch_size);
  std::vector<double> seconds;
  int64_t tokens = 0;
  size_t next = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<MicroBatch> micro;
    int64_t units = 0;
    for (int64_t m = 0; m < spec.gradient_accumulation_steps; ++m) {
      const size_t count = std::min(B, rows.size() - next);
      for (size_t i = 0; i < count; ++i) units += step.units(rows[next + i]);
      micro.push_back({make_batch(rows.data() + next, count), std::nullopt});
      tokens += (micro.back().batch.doc_ids >= 0).sum().item<int64_t>();
      next = (next + count) % rows.size();
    }
    step.run(micro, units, /*lr=*/1e-12, spec.max_grad_norm);  // timed like a real update, changes nothing that is kept
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
