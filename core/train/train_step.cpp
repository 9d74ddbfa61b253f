// One optimizer step (train_step.h). The order of work is the trainer's,
// and it is written only here: a change to how a step is taken reaches the
// run, the plan's measured steps and the bench's timed steps alike.
#include "train_step.h"

#include <cmath>

#include <ATen/ATen.h>

#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "trainer.h"

namespace mftk::core {

int64_t supervised_units(const Batch& batch) {
  return batch.targets.defined() ? (batch.targets != kIgnoreIndex).sum().item<int64_t>() : 0;
}

TrainStep::TrainStep(Model& model, Optimizer& optimizer, NamedTensors& trainable, Objective* objective,
                     Adapter* adapter)
    : model_(model), optimizer_(optimizer), trainable_(trainable), objective_(objective), adapter_(adapter) {
  if (objective_) metric_names_ = objective_->metric_names();
}

int64_t TrainStep::units(const PackedRow& row) const {
  if (objective_) return objective_->units(row);
  int64_t n = 0;
  for (int32_t t : row.targets) n += t != kIgnoreIndex;
  return n;
}

void TrainStep::accumulate(const MicroBatch& micro, int64_t step_units, StepOutcome& outcome) {
  if (micro.seed) at::manual_seed(*micro.seed);
  outcome.metric_sums.resize(metric_names_.size(), 0.0);
  at::Tensor loss;
  if (objective_) {
    ObjectiveResult part = objective_->compute(model_, adapter_, micro.batch);
    loss = part.loss_sum;
    for (size_t k = 0; k < outcome.metric_sums.size() && k < part.metrics.size(); ++k)
      outcome.metric_sums[k] += part.metrics[k];
  } else {
    loss = supervised_loss_sum(model_, micro.batch, nullptr);
  }
  outcome.loss_sum += loss.item<double>();
  // Each micro-batch weighted by its share of the step's units.
  if (step_units > 0) (loss / double(step_units)).backward();
}

double TrainStep::clip_gradients(double max_grad_norm) {
  // Summed where the gradients are and read back once: on a GPU a read per
  // tensor would stall the step hundreds of times. The same double additions
  // in the same order as a host sum, so the CPU's norm is bit for bit a host sum's.
  at::Tensor sq;
  for (auto& [name, p] : trainable_)
    if (p.grad().defined()) {
      const at::Tensor s = p.grad().to(at::kDouble).pow(2).sum();
      sq = sq.defined() ? sq + s.to(sq.device()) : s;
    }
  const double norm = sq.defined() ? std::sqrt(sq.item<double>()) : 0.0;
  if (max_grad_norm > 0 && norm > max_grad_norm && std::isfinite(norm)) {
    const double scale = max_grad_norm / (norm + 1e-6);
    for (auto& [name, p] : trainable_)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return norm;
}

void TrainStep::clear_gradients() {
  for (auto& [name, p] : trainable_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

StepOutcome TrainStep::run(const std::vector<MicroBatch>& micro_batches, int64_t units, double lr,
                           double max_grad_norm, const std::function<void(StepOutcome&)>& reduce) {
  StepOutcome outcome;
  outcome.units = units;
  outcome.metric_sums.assign(metric_names_.size(), 0.0);
  for (const MicroBatch& micro : micro_batches) accumulate(micro, units, outcome);
  if (reduce) reduce(outcome);
  // Clipping sees the summed gradients, so every rank computes the same norm.
  outcome.grad_norm = clip_gradients(max_grad_norm);
  outcome.updated = std::isfinite(outcome.loss()) && std::isfinite(outcome.grad_norm);
  if (outcome.updated) optimizer_.step(lr);
  clear_gradients();
  return outcome;
}

}  // namespace mftk::core
