// Objective checks, on the default model (full fine-tuning: every weight
// trains, so an objective's reference, if any, comes from prepare()) and
// synthetic rows of the kind the objective trains on (documents, or one
// preference pair per row: documents 0 and 1):
//   units counted up front  the sum of units(row) over a batch's rows equals
//                           the units compute() reports: the trainer divides
//                           by the former, so a mismatch mis-weights steps
//   sums, not means         the loss and metrics of two batches together equal
//                           the sums of each alone (what keeps gradient
//                           accumulation and data parallelism exact), and the
//                           loss is finite with finite gradients that reach
//                           the trained weights
//   token cross-entropy     the default objective only: its loss is
//                           -sum log softmax(logits)[target] over the
//                           supervised targets, from the full logits
#include <cmath>
#include <random>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "batching.h"
#include "defaults.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "pipeline.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace mftk::core::check {
namespace {

// Rows of the objective's kind: documents of 6..14 tokens with a two-token
// prompt (not supervised); pairs are two such documents per row.
std::vector<PackedRow> synthetic_rows(ObjectiveData data, int64_t vocab, size_t count, uint64_t seed) {
  std::mt19937_64 gen(seed);
  auto document = [&] {
    Example e;
    const int len = 6 + int(gen() % 9);
    for (int t = 0; t < len; ++t) {
      e.ids.push_back(int32_t(3 + gen() % uint64_t(vocab - 3)));
      e.loss_mask.push_back(t >= 2);
    }
    return e;
  };
  std::vector<PackedRow> rows(count);
  for (auto& row : rows) {
    const int docs = data == ObjectiveData::preference_pairs ? 2 : 1 + int(gen() % 2);
    for (int d = 0; d < docs; ++d) {
      const Example e = document();
      append_document(row, e, e.ids.size());
    }
  }
  return rows;
}

}  // namespace

void check_objective(Registry& registry, const ComponentInfo& component, TinyModelSource& source, Checker& checker) {
  auto objective = registry.create<Objective>(Kind::objective, component.spec.name, default_config(registry, component));
  auto model = source.load_default();
  const NamedTensors trainable = make_all_trainable(*model);
  const int64_t vocab = model->shape().vocab_size;
  const auto rows = synthetic_rows(objective->data(), vocab, 6, 5);
  const std::vector<PackedRow> first(rows.begin(), rows.begin() + 3), second(rows.begin() + 3, rows.end());
  if (objective->needs_preparation(nullptr)) {
    at::NoGradGuard no_grad;
    for (const auto* part : {&first, &second}) objective->prepare(*model, nullptr, make_batch(*part));
  }

  checker.run("units counted up front", [&] {
    int64_t counted = 0;
    for (const auto& r : first) counted += objective->units(r);
    at::NoGradGuard no_grad;
    const ObjectiveResult result = objective->compute(*model, nullptr, make_batch(first));
    if (counted <= 0) throw CheckFailed("units(row) is 0 for every row: the trainer would divide by 0");
    if (result.units != counted)
      throw CheckFailed(fmt::format("compute() reports {} units, units(row) over the same rows {}", result.units, counted));
    if (result.metrics.size() != objective->metric_names().size())
      throw CheckFailed(fmt::format("compute() returns {} metrics, metric_names() names {}", result.metrics.size(),
                                    objective->metric_names().size()));
    checker.note(fmt::format("{} units in 3 rows", counted));
  });

  checker.run("sums, not means", [&] {
    const ObjectiveResult a = objective->compute(*model, nullptr, make_batch(first));
    const ObjectiveResult b = objective->compute(*model, nullptr, make_batch(second));
    const ObjectiveResult both = [&] {
      at::NoGradGuard no_grad;
      return objective->compute(*model, nullptr, make_batch(rows));
    }();
    const double sum = a.loss_sum.item<double>() + b.loss_sum.item<double>(), whole = both.loss_sum.item<double>();
    if (!std::isfinite(whole)) throw CheckFailed(fmt::format("the loss is {}", whole));
    const double diff = std::abs(sum - whole) / std::max(std::abs(whole), 1e-6);
    if (diff > 1e-4)
      throw CheckFailed(fmt::format("loss of 6 rows {} but the two halves sum to {}: compute() must return sums", whole, sum));
    for (size_t k = 0; k < both.metrics.size() && k < a.metrics.size() && k < b.metrics.size(); ++k)
      if (std::abs(a.metrics[k] + b.metrics[k] - both.metrics[k]) > 1e-4 * std::max(1.0, std::abs(both.metrics[k])))
        throw CheckFailed(fmt::format("metric {} is not a sum: {} for 6 rows, {} + {} for the halves",
                                      objective->metric_names()[k], both.metrics[k], a.metrics[k], b.metrics[k]));
    (a.loss_sum + b.loss_sum).backward();
    double norm = 0;
    for (const auto& [name, t] : trainable)
      if (t.grad().defined()) norm += t.grad().to(at::kDouble).pow(2).sum().item<double>();
    if (!std::isfinite(norm)) throw CheckFailed("the gradient is not finite");
    if (norm == 0) throw CheckFailed("no gradient reaches the trained weights");
    checker.note(fmt::format("relative difference {:.1e}, gradient norm {:.3g}", diff, std::sqrt(norm)));
  });

  checker.run("token cross-entropy", [&] {
    if (component.spec.name != kDefaultObjectivePlugin)
      throw CheckSkipped("only the default objective is known to be the token cross-entropy");
    at::NoGradGuard no_grad;
    const Batch batch = make_batch(rows);
    const ObjectiveResult result = objective->compute(*model, nullptr, batch);
    const at::Tensor lsm = at::log_softmax(model->logits(model->forward(batch)).to(at::kDouble), -1);
    const at::Tensor targets = batch.targets.reshape({-1});
    const at::Tensor keep = (targets != kIgnoreIndex).nonzero().squeeze(1);
    const double want =
        -lsm.reshape({-1, vocab}).index_select(0, keep).gather(1, targets.index_select(0, keep).unsqueeze(1)).sum().item<double>();
    const double diff = std::abs(result.loss_sum.item<double>() - want) / std::abs(want);
    if (diff > 1e-5) throw CheckFailed(fmt::format("loss {} but the formula gives {}", result.loss_sum.item<double>(), want));
    checker.note(fmt::format("relative difference {:.1e}", diff));
  });
}

}  // namespace mftk::core::check
