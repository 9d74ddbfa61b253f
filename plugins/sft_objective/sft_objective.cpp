// libmftk-sft: the "sft" objective, the mean cross-entropy of the supervised
// tokens (targets != kIgnoreIndex) over a step: each micro-batch's sum,
// divided by the step's supervised tokens, which are its units.
#include <memory>

#include "mftk/batch.h"
#include "mftk/objective.h"
#include "mftk/plugin.h"
#include "mftk/token_logprobs.h"

namespace {

class SftObjective final : public mftk::Objective {
 public:
  mftk::ObjectiveData data() const override { return mftk::ObjectiveData::token_rows; }
  std::vector<std::string> metric_names() const override { return {}; }
  int64_t units(const mftk::PackedRow& row) const override {
    int64_t n = 0;
    for (int32_t t : row.targets) n += t != mftk::kIgnoreIndex;
    return n;
  }
  bool needs_preparation(const mftk::Adapter*) const override { return false; }
  void prepare(mftk::Model&, mftk::Adapter*, const mftk::Batch&) override {}
  mftk::ObjectiveResult compute(mftk::Model& model, mftk::Adapter*, const mftk::Batch& batch) override {
    mftk::ObjectiveResult r;
    r.loss_sum = mftk::token_cross_entropy_sum(model, batch, &r.units);
    return r;
  }
};

void register_components(mftk::Registrar& registrar) {
  registrar.add_objective({mftk::Kind::objective, "sft",
                           "supervised fine-tuning: mean cross-entropy of the supervised tokens (the default)",
                           {}},
                          [](const mftk::Config&) { return std::make_unique<SftObjective>(); });
}

}  // namespace

MFTK_PLUGIN("sft", "0.1.0", register_components)
