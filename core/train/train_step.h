// One optimizer step, the one every caller takes: Trainer::train, `mftk
// plan --measure` and the bench. Each micro-batch's loss sum (the
// objective's, or token cross-entropy) is divided by the units of the whole
// step and back-propagated, so accumulation equals one large batch whatever
// the row lengths; then the gradients are clipped to a global norm and the
// optimizer plugin steps, unless the loss or the norm is not finite.
//
// defines: mftk::core::MicroBatch, mftk::core::StepOutcome, mftk::core::TrainStep,
//          mftk::core::supervised_units
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mftk/batch.h"
#include "mftk/tensor.h"

namespace mftk {
class Adapter;
class Model;
class Objective;
class Optimizer;
}  // namespace mftk

namespace mftk::core {

struct MicroBatch {
  Batch batch;
  // Seeds libtorch's generator before the forward pass (dropout): the
  // trainer derives it from the micro-batch's global index, so a mask does
  // not depend on which rank runs it. None: the generator is left as it is.
  std::optional<uint64_t> seed;
};

struct StepOutcome {
  double loss_sum = 0;              // Σ loss over the step's micro-batches
  std::vector<double> metric_sums;  // the objective's metric sums, metric_names() order
  int64_t units = 0;                // what the step divides by (supervised tokens, pairs)
  double grad_norm = 0;             // global L2 norm before clipping
  bool updated = false;             // false: loss or norm not finite, the optimizer did not step
  double loss() const { return units > 0 ? loss_sum / double(units) : 0.0; }
};

// Supervised tokens of a batch (targets other than kIgnoreIndex): the units
// of the token loss.
int64_t supervised_units(const Batch& batch);

class TrainStep {
 public:
  // objective null: token cross-entropy (supervised_loss_sum). adapter: the
  // one the objective may switch off for a reference (null: none).
  TrainStep(Model& model, Optimizer& optimizer, NamedTensors& trainable, Objective* objective = nullptr,
            Adapter* adapter = nullptr);

  // The units a row counts for in a step: the objective's, or its supervised tokens.
  int64_t units(const PackedRow& row) const;
  const std::vector<std::string>& metric_names() const { return metric_names_; }

  // The whole step: forward and backward of every micro-batch (loss /
  // `units`), then `reduce` (data parallelism: sum the gradients and the
  // outcome's sums over ranks; may be empty), then clip to `max_grad_norm`
  // (0: no clipping), optimizer step at `lr` when loss and norm are finite,
  // gradients cleared. `units` is the step's total over every rank.
  StepOutcome run(const std::vector<MicroBatch>& micro_batches, int64_t units, double lr, double max_grad_norm,
                  const std::function<void(StepOutcome&)>& reduce = {});

  // The parts run() is made of.
  void accumulate(const MicroBatch& micro, int64_t step_units, StepOutcome& outcome);
  double clip_gradients(double max_grad_norm);
  void clear_gradients();

 private:
  Model& model_;
  Optimizer& optimizer_;
  NamedTensors& trainable_;
  Objective* objective_;
  Adapter* adapter_;
  std::vector<std::string> metric_names_;
};

}  // namespace mftk::core
