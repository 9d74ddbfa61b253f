// Preference objectives on rows of pairs (mftk/objective.h: document 2k of a
// row is a pair's chosen side, 2k+1 its rejected side). A side's log-
// probability is the sum of log p over its supervised tokens (the assistant
// reply and its </s>).
//
// defines: mftk::preference::DpoOptions, mftk::preference::DpoObjective,
//          mftk::preference::OrpoOptions, mftk::preference::OrpoObjective,
//          mftk::preference::dpo_keys, mftk::preference::orpo_keys
#pragma once

#include <map>
#include <string>
#include <vector>

#include "mftk/config.h"
#include "mftk/objective.h"

namespace mftk::preference {

// DPO (Rafailov et al. 2023) as TRL's DPOTrainer computes it. With
// h = (log pi(c) - log pi(r)) - (log ref(c) - log ref(r)):
//   sigmoid  -(1 - ls) log sigma(beta h) - ls log sigma(-beta h)   (ls = label_smoothing: conservative DPO)
//   ipo      (h - 1 / (2 beta))^2, on length-averaged log-probabilities (TRL averages them for ipo)
// The reference is the model with the adapter switched off (no gradient),
// or, with full fine-tuning (no adapter), the log-probabilities the model
// gave each row before training, recorded in prepare() (keyed by the row's
// tokens) and handed to the core to cache beside the prepared data.
struct DpoOptions {
  double beta = 0.1;
  double label_smoothing = 0.0;
  std::string loss_type = "sigmoid";  // sigmoid | ipo
};

class DpoObjective final : public Objective {
 public:
  explicit DpoObjective(DpoOptions options) : o_(std::move(options)) {}
  ObjectiveData data() const override { return ObjectiveData::preference_pairs; }
  std::vector<std::string> metric_names() const override;
  int64_t units(const PackedRow& row) const override;
  bool needs_preparation(const Adapter* adapter) const override { return adapter == nullptr; }
  // The reference model's passes: the base with the adapter switched off.
  std::string plan_note(bool with_adapter) const override {
    return with_adapter ? "reference: one more forward pass without gradients per micro-batch (the adapter "
                          "switched off), about a third more compute per step; no second copy of the weights"
                        : "reference: one forward pass without gradients over every row before training, "
                          "cached beside the prepared data (4 bytes per sequence in memory)";
  }
  void prepare(Model& model, Adapter* adapter, const Batch& batch) override;
  ObjectiveResult compute(Model& model, Adapter* adapter, const Batch& batch) override;
  // The recorded reference as four tensors: each row's (token id, document)
  // pairs and its per-document log-probabilities, flattened, with counts.
  NamedTensors prepared_state() const override;
  bool restore_prepared(const NamedTensors& state) override;

 private:
  at::Tensor reference_logp(Model& model, Adapter* adapter, const Batch& batch, int64_t docs);
  DpoOptions o_;
  std::map<std::string, std::vector<float>> reference_;  // full fine-tuning: row key -> per-document log p
};

// ORPO (Hong et al. 2024) as TRL's ORPOTrainer computes it, per pair, with
// the length-averaged log-probabilities a = log pi / tokens of each side:
//   log_odds = (a_c - a_r) - (log(1 - e^a_c) - log(1 - e^a_r))
//   loss     = -a_c - beta log sigma(log_odds)
// (beta is TRL's name for the paper's lambda.) The NLL term is the chosen
// side's mean token NLL per pair, so a step's loss is a mean over pairs and
// accumulation stays exact; TRL averages it over the batch's chosen tokens.
struct OrpoOptions {
  double beta = 0.1;
};

class OrpoObjective final : public Objective {
 public:
  explicit OrpoObjective(OrpoOptions options) : o_(options) {}
  ObjectiveData data() const override { return ObjectiveData::preference_pairs; }
  std::vector<std::string> metric_names() const override;
  int64_t units(const PackedRow& row) const override;
  bool needs_preparation(const Adapter*) const override { return false; }
  void prepare(Model&, Adapter*, const Batch&) override {}
  ObjectiveResult compute(Model& model, Adapter* adapter, const Batch& batch) override;

 private:
  OrpoOptions o_;
};

std::vector<KeySpec> dpo_keys();
DpoOptions dpo_options_from_config(const Config& config);
std::vector<KeySpec> orpo_keys();
OrpoOptions orpo_options_from_config(const Config& config);

}  // namespace mftk::preference
