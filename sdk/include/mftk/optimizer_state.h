// What optimizer plugins share (implemented in libmftk_core): the checks on
// the tensors attach() receives, a reader for the state load_state() gets
// back (every tensor asked for by name, dtype and shape; a missing, mismatched
// or left-over tensor is an mftk::Error naming it, so a resume with another
// recipe stops before any value changes), and the Adam hyperparameter checks
// every AdamW variant makes on its recipe table.
//
//   void load_state(const NamedTensors& state) override {
//     mftk::OptimizerStateReader reader(state, "acme_adam");
//     const int64_t step = reader.step();
//     at::Tensor m = reader.take(name + ".exp_avg", at::kFloat, param.sizes());
//     reader.finish();            // before changing anything: nothing left over
//     ...
//   }
//
// defines: mftk::check_trainable, mftk::OptimizerStateReader,
//          mftk::AdamHyperparameters, mftk::adam_hyperparameters_from_config
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "mftk/config.h"
#include "mftk/tensor.h"

namespace mftk {

// Throws mftk::Error unless there is at least one tensor and every one is
// defined, floating point and named once (and not "step", the name state
// readers reserve).
void check_trainable(const NamedTensors& params, const std::string& optimizer);

class OptimizerStateReader {
 public:
  // `mismatch_hint` is the hint of the errors for a missing tensor or one of
  // another dtype (the default: saved for other tensors or by another optimizer).
  OptimizerStateReader(const NamedTensors& state, std::string optimizer, std::string mismatch_hint = {});
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // The scalar integer "step", >= 0.
  int64_t step();
  // The tensor `name`, required to have this dtype and shape; contiguous.
  at::Tensor take(const std::string& name, at::ScalarType dtype, at::IntArrayRef shape);
  // Throws if some saved tensor was never taken (state saved for other parameters).
  void finish() const;

 private:
  std::map<std::string, at::Tensor> tensors_;
  std::set<std::string> used_;
  std::string optimizer_, mismatch_hint_;
};

// AdamW's four hyperparameters, as torch.optim.AdamW and bitsandbytes name them.
struct AdamHyperparameters {
  double weight_decay = 0.0;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
};

// Reads weight_decay, beta1, beta2 and eps from a validated table and
// refuses (Config::fail, a UsageError naming the key) a weight decay or eps
// that is negative or not finite, or a beta outside [0, 1).
AdamHyperparameters adam_hyperparameters_from_config(const Config& config);

}  // namespace mftk
