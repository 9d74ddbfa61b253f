// The run assembled once (core/run/run_spec.h, run_build.h) and the series
// the trainer hands back, against facts found another way:
//  - build_run gives the rows and the trainable tensors a hand assembly of
//    the same recipe gives (model loaded, seed set, LoRA injected, data
//    prepared and packed by the plugins, each called here directly), bit for
//    bit: the order of the steps draws the same adapter weights;
//  - RunSpec's paths lie in output_dir under their documented names, and its
//    default components are the defaults table's;
//  - TrainResult::metrics holds exactly the records metrics.jsonl holds, read
//    back by read_metrics; a resumed run's series equals the uninterrupted
//    run's, even when metrics.jsonl holds lines logged after the checkpoint;
//  - TrainStep: two micro-batches give the update of one batch of both,
//    weights compared after one SGD step.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "adamw/sgd_optimizer.h"
#include "batching.h"
#include "dataset.h"
#include "defaults.h"
#include "lora/lora_adapter.h"
#include "mftk/adapter.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/packer.h"
#include "mftk/tokenizer.h"
#include "model_tools.h"
#include "recipe.h"
#include "registry.h"
#include "run_build.h"
#include "run_log.h"
#include "run_spec.h"
#include "train_step.h"
#include "train_test_support.h"
#include "trainer.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using mftk::NamedTensors;
using mftk::PackedRow;
using mftk::core::MetricPoints;

std::string small_recipe(const std::string& model_dir, const std::string& work) {
  return fmt::format(R"([model]
plugin = "mistral"
path = "{}"

[adapter]
plugin = "lora"
r = 4
alpha = 8
dropout = 0.0
target_modules = ["q_proj", "v_proj"]

[[datasets]]
path = "{}"
type = "instruction"

[data]
dataset_prepared_path = "{}/prepared"
val_set_size = 0.1

[training]
sequence_len = 96
micro_batch_size = 2
seed = 11
output_dir = "{}/run"
)",
                     model_dir, MFTK_SOURCE_DIR "/data/quickstart/train.jsonl", work, work);
}

void expect_same_rows(const std::vector<PackedRow>& got, const std::vector<PackedRow>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].ids, want[i].ids) << "row " << i;
    EXPECT_EQ(got[i].targets, want[i].targets) << "row " << i;
    EXPECT_EQ(got[i].position_ids, want[i].position_ids) << "row " << i;
    EXPECT_EQ(got[i].doc_ids, want[i].doc_ids) << "row " << i;
  }
}

TEST(RunBuild, RowsAndTrainablesEqualAHandAssemblyOfTheRecipe) {
  tt::QuietLog quiet;
  tt::ScratchDir work("run_build");
  const std::string model_dir = tt::tiny_checkpoint(2);
  auto recipe = mftk::core::Recipe::parse(small_recipe(model_dir, work.str()), work.sub("recipe.toml"));
  mftk::core::Registry registry;
  recipe.resolve(registry);
  const mftk::core::RunSpec spec = mftk::core::make_run_spec(recipe, registry);

  mftk::core::BuildRunOptions options;
  options.log = false;
  mftk::core::BuiltRun run = mftk::core::build_run(spec, registry, options);

  // The same run by hand, each piece from its own plugin or core function.
  at::manual_seed(11);
  auto model = tt::load_tiny_model(2);
  mftk::lora::LoRAOptions lora;
  lora.r = 4, lora.alpha = 8, lora.dropout = 0.0, lora.target_modules = {"q_proj", "v_proj"};
  mftk::lora::LoRAAdapter adapter(lora);
  adapter.inject(*model);
  const NamedTensors want_trainable = adapter.trainable_parameters();
  auto tokenizer = mftk::Tokenizer::load(model_dir);
  mftk::core::DataOptions data;
  data.datasets.push_back(mftk::core::DatasetSpec{});
  data.datasets.back().path = MFTK_SOURCE_DIR "/data/quickstart/train.jsonl";
  data.datasets.back().type = mftk::core::DatasetType::instruction;
  data.val_set_size = 0.1;
  data.seed = 11;
  data.prepared_path = work.sub("prepared");
  const auto prepared = mftk::core::prepare_data(data, *tokenizer, mftk::core::CacheMode::off);
  mftk::PackOptions po;
  po.sequence_len = 96;
  po.seed = 11;
  po.sliding_window = model->shape().sliding_window;
  auto packer = registry.create<mftk::Packer>(
      mftk::Kind::packer, mftk::core::kDefaultPackingPacker,
      mftk::core::component_config(registry, mftk::Kind::packer, mftk::core::kDefaultPackingPacker, "packer"));
  mftk::PackStats stats;
  const auto want_train = packer->pack(prepared.train, po, stats);
  const auto want_eval = packer->pack(prepared.eval, po, stats);

  ASSERT_FALSE(want_train.empty());
  ASSERT_FALSE(want_eval.empty());
  expect_same_rows(run.rows.train, want_train);
  expect_same_rows(run.rows.eval, want_eval);
  ASSERT_EQ(run.trainable.size(), want_trainable.size());
  for (size_t i = 0; i < want_trainable.size(); ++i) {
    EXPECT_EQ(run.trainable[i].first, want_trainable[i].first);
    EXPECT_TRUE(at::equal(run.trainable[i].second, want_trainable[i].second)) << want_trainable[i].first;
  }
  EXPECT_NE(run.adapter, nullptr);
  EXPECT_FALSE(run.preference_pairs);
  EXPECT_EQ(run.objective->data(), mftk::ObjectiveData::token_rows);
}

TEST(RunSpec, PathsLieInOutputDirAndDefaultsComeFromTheDefaultsTable) {
  tt::QuietLog quiet;
  tt::ScratchDir work("run_spec");
  auto recipe =
      mftk::core::Recipe::parse(small_recipe(tt::tiny_checkpoint(2), work.str()), work.sub("recipe.toml"));
  mftk::core::Registry registry;
  recipe.resolve(registry);
  const mftk::core::RunSpec spec = mftk::core::make_run_spec(recipe, registry);
  const fs::path out = work.sub("run");
  EXPECT_EQ(spec.paths.output_dir, out.string());
  EXPECT_EQ(spec.paths.log, (out / "mftk.log").string());
  EXPECT_EQ(spec.paths.metrics, (out / "metrics.jsonl").string());
  EXPECT_EQ(spec.paths.summary, (out / "summary.json").string());
  EXPECT_EQ(spec.paths.loss_curve, (out / "loss_curve.svg").string());
  EXPECT_EQ(spec.paths.report, (out / "report.html").string());
  EXPECT_EQ(spec.paths.adapter, (out / "adapter").string());
  EXPECT_EQ(spec.paths.merged, (out / "merged").string());
  EXPECT_EQ(spec.paths.export_target("m.gguf"), (out / "m.gguf").string());
  EXPECT_EQ(spec.paths.export_target("/abs/m.gguf"), "/abs/m.gguf");
  EXPECT_EQ(spec.objective.plugin, mftk::core::kDefaultObjectivePlugin);
  EXPECT_FALSE(spec.objective.from_recipe);
  EXPECT_EQ(spec.optimizer.plugin, mftk::core::kDefaultOptimizerPlugin);
  EXPECT_EQ(spec.packer.plugin, mftk::core::default_packer(true));  // sample_packing defaults to true
  ASSERT_TRUE(spec.adapter.has_value());
  EXPECT_TRUE(spec.adapter->from_recipe);
  EXPECT_FALSE(spec.quantize.has_value());
  EXPECT_EQ(spec.sequence_len, 96);
  EXPECT_EQ(spec.pack.sequence_len, 96);
  EXPECT_EQ(spec.micro_batch_size, 2);
  EXPECT_EQ(spec.train.output_dir, out.string());
  EXPECT_EQ(spec.seed, 11u);
}

// ---------------------------------------------------------- metric series ----

// Equal series: same keys, same steps, same values (NaN equal to NaN: a
// window of skipped steps is a gap in both).
void expect_same_series(const MetricPoints& got, const MetricPoints& want, const std::vector<std::string>& keys = {}) {
  std::vector<std::string> names = keys;
  if (names.empty()) {
    for (const auto& [k, v] : want) names.push_back(k);
    ASSERT_EQ(got.size(), want.size());
  }
  for (const auto& name : names) {
    ASSERT_TRUE(got.count(name)) << name;
    ASSERT_TRUE(want.count(name)) << name;
    const auto& g = got.at(name);
    const auto& w = want.at(name);
    ASSERT_EQ(g.size(), w.size()) << name;
    for (size_t i = 0; i < g.size(); ++i) {
      EXPECT_EQ(g[i].first, w[i].first) << name << " point " << i;
      if (std::isnan(w[i].second)) EXPECT_TRUE(std::isnan(g[i].second)) << name << " point " << i;
      else EXPECT_EQ(g[i].second, w[i].second) << name << " point " << i;
    }
  }
}

struct SmallTraining {
  std::unique_ptr<mftk::mistral::MistralModel> model;
  std::unique_ptr<mftk::lora::LoRAAdapter> adapter;
  NamedTensors trainable;
  mftk::adamw::Sgd sgd{mftk::adamw::SgdOptions{}};
  std::vector<PackedRow> rows, eval_rows;

  SmallTraining() {
    model = tt::load_tiny_model(1);
    at::manual_seed(3);
    mftk::lora::LoRAOptions lora;
    lora.r = 4, lora.alpha = 8, lora.dropout = 0.0;
    adapter = std::make_unique<mftk::lora::LoRAAdapter>(lora);
    adapter->inject(*model);
    trainable = adapter->trainable_parameters();
    sgd.attach(trainable);
    rows = tt::synthetic_rows(21, 12, model->shape().vocab_size);
    eval_rows = tt::synthetic_rows(22, 3, model->shape().vocab_size);
  }

  mftk::core::TrainResult train(const std::string& dir, int64_t max_steps, const std::string& resume = "") {
    mftk::core::TrainOptions o;
    o.micro_batch_size = 2;
    o.max_steps = max_steps;
    o.logging_steps = 1;
    o.eval_steps = 2;
    o.save_steps = 3;
    o.progress_bar = false;
    o.output_dir = dir;
    o.resume_from_checkpoint = resume;
    o.schedule.kind = "linear";
    o.schedule.peak_lr = 0.05;
    o.schedule.warmup_steps = 1;
    mftk::core::Trainer trainer(*model, sgd, trainable, rows, eval_rows, o);
    return trainer.train();
  }
};

TEST(TrainerMetricSeries, EqualsMetricsJsonlReadBack) {
  tt::QuietLog quiet;
  tt::ScratchDir dir("series");
  SmallTraining t;
  const auto result = t.train(dir.str(), 5);
  ASSERT_EQ(result.metrics.at("loss").size(), 5u);      // logging_steps = 1
  ASSERT_EQ(result.metrics.at("eval_loss").size(), 3u);  // steps 2, 4 and the last
  expect_same_series(result.metrics, mftk::core::read_metrics(dir.sub("metrics.jsonl")));
}

TEST(TrainerMetricSeries, AResumedRunHandsBackTheWholeRun) {
  tt::QuietLog quiet;
  tt::ScratchDir whole("series_whole"), parts("series_parts");
  MetricPoints uninterrupted;
  {
    SmallTraining t;
    uninterrupted = t.train(whole.str(), 6).metrics;
  }
  {
    SmallTraining t;
    t.train(parts.str(), 6);  // writes checkpoint-3 on its way; checkpoint-6 removed below
  }
  fs::remove_all(fs::path(parts.str()) / "checkpoint-6");
  // metrics.jsonl now holds steps 4-6 after checkpoint-3, as after a kill:
  // the resumed run logs them again, and its series must hold them once.
  SmallTraining t;
  const auto resumed = t.train(parts.str(), 6, "latest");
  expect_same_series(resumed.metrics, uninterrupted, {"loss", "lr", "grad_norm", "tokens", "eval_loss"});
}

// ------------------------------------------------------------- train step ----

TEST(TrainStep, TwoMicroBatchesGiveTheUpdateOfOneBatchOfBoth) {
  tt::QuietLog quiet;
  const auto rows = tt::synthetic_rows(31, 4, 512);
  auto after = [&](bool split) {
    SmallTraining t;  // the same seeded adapter each time
    {
      at::NoGradGuard no_grad;
      for (auto& [name, p] : t.trainable)  // B = 0 gives A no gradient: make both move
        if (name.find("lora_B") != std::string::npos) p.copy_(at::full(p.sizes(), 0.01));
    }
    mftk::core::TrainStep step(*t.model, t.sgd, t.trainable);
    int64_t units = 0;
    for (const auto& r : rows) units += step.units(r);
    EXPECT_EQ(units, tt::supervised_tokens(rows));
    std::vector<mftk::core::MicroBatch> micro;
    if (split) {
      micro.push_back({mftk::core::make_batch(rows.data(), 2), std::nullopt});
      micro.push_back({mftk::core::make_batch(rows.data() + 2, 2), std::nullopt});
    } else {
      micro.push_back({mftk::core::make_batch(rows), std::nullopt});
    }
    const auto outcome = step.run(micro, units, 0.1, 0.0);
    EXPECT_TRUE(outcome.updated);
    NamedTensors out;
    for (const auto& [n, p] : t.trainable) out.emplace_back(n, p.detach().clone());
    return std::make_pair(outcome.loss(), out);
  };
  const auto [split_loss, split_weights] = after(true);
  const auto [whole_loss, whole_weights] = after(false);
  EXPECT_NEAR(split_loss, whole_loss, 1e-5 * std::abs(whole_loss));
  ASSERT_EQ(split_weights.size(), whole_weights.size());
  for (size_t i = 0; i < split_weights.size(); ++i)
    EXPECT_TRUE(at::allclose(split_weights[i].second, whole_weights[i].second, 1e-5, 1e-7)) << split_weights[i].first;
}

}  // namespace
