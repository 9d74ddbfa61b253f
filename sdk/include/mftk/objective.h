// Objective plugins: the loss a run minimises ([objective] plugin = "sft",
// "dpo", "orpo", ...).
//
// defines: mftk::ObjectiveData, mftk::ObjectiveResult, mftk::Objective
//
// The trainer divides each step's loss sum by the step's *units*, counted
// from all of the step's rows before any forward pass (units(row)), so that
// gradient accumulation and data parallelism give exactly the mean of one
// large batch whatever the lengths: an objective's compute() returns sums,
// never means. Units are supervised tokens for token cross-entropy, pairs for
// preference objectives.
//
// Preference rows (ObjectiveData::preference_pairs) hold whole pairs: in a
// row, document 2k is the chosen side of a pair and document 2k+1 its
// rejected side (batch.h's attention rule keeps the two apart), each side
// the chat encoding of [prompt turns..., assistant: side] with the
// assistant's tokens and its </s> supervised. A pair never spans two rows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mftk/batch.h"
#include "mftk/tensor.h"

namespace mftk {

class Model;
class Adapter;

// The rows an objective trains on.
enum class ObjectiveData {
  token_rows,        // instruction/chat/completion documents, packed by the [packer]
  preference_pairs,  // type = "preference" datasets, one pair per row (see above)
};

struct ObjectiveResult {
  at::Tensor loss_sum;          // 0-dim fp32, differentiable: the sum of the batch's per-unit losses
  int64_t units = 0;            // the batch's units (equals the sum of units(row) over its rows)
  std::vector<double> metrics;  // sums over the batch's units, in metric_names() order
};

class Objective {
 public:
  virtual ~Objective() = default;
  virtual ObjectiveData data() const = 0;
  // The metrics compute() sums, by the names they are logged under
  // ("rewards/accuracies"); the trainer logs each as sum / units.
  virtual std::vector<std::string> metric_names() const = 0;
  // How many units one row holds (counted before its step runs).
  virtual int64_t units(const PackedRow& row) const = 0;
  // Whether prepare() must see the rows before training; `adapter` is the
  // run's adapter (null: full fine-tuning).
  virtual bool needs_preparation(const Adapter* adapter) const = 0;
  // Called with every micro-batch of the train and eval rows before the
  // first step, while the model is still the one training starts from (a
  // full fine-tuning DPO records its reference log-probabilities here).
  virtual void prepare(Model& model, Adapter* adapter, const Batch& batch) = 0;
  // What prepare() recorded, to be cached beside the prepared data: the core
  // stores these tensors after preparing and, when a later run (or a resume)
  // has the same data, base weights and objective settings, hands them to
  // restore_prepared() instead of calling prepare(). restore_prepared()
  // returns false for state it cannot use; the core then prepares afresh.
  // Empty (the default): nothing to cache.
  virtual NamedTensors prepared_state() const { return {}; }
  virtual bool restore_prepared(const NamedTensors& state) {
    (void)state;
    return false;
  }
  // One micro-batch. `adapter` is null for full fine-tuning. Gradients flow
  // from loss_sum; compute() must leave the adapter enabled.
  virtual ObjectiveResult compute(Model& model, Adapter* adapter, const Batch& batch) = 0;
  // Planning hook: one line for `mftk plan` on the work this objective adds
  // beyond one forward and backward pass per row (a reference model's
  // passes, say), given whether an adapter is trained; empty (the default):
  // nothing to add.
  virtual std::string plan_note(bool with_adapter) const {
    (void)with_adapter;
    return "";
  }
};

}  // namespace mftk
