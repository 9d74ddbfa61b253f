// The training engine against independent facts, on a tiny random Mistral
// (the real mistral, lora, adamw/sgd and paged_adamw_8bit implementations):
//  - LoRA at initialisation changes no logit; merging equals base + adapter;
//  - k micro-batches of m rows give the update of one batch of k*m rows,
//    checked against a gradient computed here row by row (and the rows are
//    chosen so that a mean of per-batch means would be visibly wrong);
//  - AdamW's first step is lr * g / (|g| + eps); clipping scales g to the norm;
//  - a resumed run is the uninterrupted one, bit for bit: the same weights,
//    optimizer state and per-step losses (dropout on, so the RNG restore
//    matters; adamw and paged_adamw_8bit);
//  - checkpoints: save_total_limit, damaged or half-written folders are never
//    picked, Ctrl-C writes one and stops;
//  - non-finite steps are skipped and counted, nan_patience stops the run;
//  - metrics.jsonl: one line per logging step, documented keys, lr from the
//    schedule, loss = mean over the step's supervised tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "adamw/adamw_optimizer.h"
#include "adamw/sgd_optimizer.h"
#include "batching.h"
#include "fs_util.h"
#include "lora/lora_adapter.h"
#include "mftk/error.h"
#include "paged_adamw_8bit/adamw_8bit.h"
#include "pipeline.h"
#include "train_test_support.h"
#include "trainer.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;
using mftk::NamedTensors;
using mftk::PackedRow;
using mftk::core::Trainer;
using mftk::core::TrainOptions;
using mftk::core::TrainResult;

// A model with LoRA injected; the adapter's random A comes from `seed`.
struct LoraRun {
  std::unique_ptr<mftk::mistral::MistralModel> model;
  std::unique_ptr<mftk::lora::LoRAAdapter> adapter;
  NamedTensors trainable;
};

mftk::lora::LoRAOptions small_lora(double dropout = 0.0) {
  mftk::lora::LoRAOptions o;
  o.r = 4;
  o.alpha = 8;
  o.dropout = dropout;
  return o;
}

LoraRun lora_run(int64_t layers, uint64_t seed, const mftk::lora::LoRAOptions& options = small_lora()) {
  LoraRun run;
  run.model = tt::load_tiny_model(layers);
  at::manual_seed(seed);
  run.adapter = std::make_unique<mftk::lora::LoRAAdapter>(options);
  run.adapter->inject(*run.model);
  run.trainable = run.adapter->trainable_parameters();
  return run;
}

// B starts at zero (so A gets no gradient); give every B a seeded random value.
void randomize_lora_b(NamedTensors& trainable, uint64_t seed) {
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : trainable)
    if (name.find("lora_B") != std::string::npos) t.copy_(at::randn(t.sizes()) * 0.05);
}

std::unique_ptr<mftk::Optimizer> make_optimizer(const std::string& kind) {
  if (kind == "sgd") return std::make_unique<mftk::adamw::Sgd>(mftk::adamw::SgdOptions{});
  if (kind == "adamw") return std::make_unique<mftk::adamw::AdamW>(mftk::adamw::AdamWOptions{});
  if (kind == "paged_adamw_8bit")
    return std::make_unique<mftk::paged_adamw_8bit::AdamW8bit>(mftk::paged_adamw_8bit::AdamW8bitOptions{});
  throw std::logic_error("unknown optimizer " + kind);
}

// Plain options: constant lr, no clipping, a step per optimizer call, quiet.
TrainOptions options(const std::string& output_dir, int64_t micro_batch, int64_t gas, int64_t max_steps,
                     double lr) {
  TrainOptions o;
  o.micro_batch_size = micro_batch;
  o.gradient_accumulation_steps = gas;
  o.max_steps = max_steps;
  o.max_grad_norm = 0.0;
  o.logging_steps = 1;
  o.progress_bar = false;
  o.output_dir = output_dir;
  o.schedule.kind = "constant";
  o.schedule.peak_lr = lr;
  o.schedule.warmup_steps = 0;
  return o;
}

TrainResult train(LoraRun& run, mftk::Optimizer& optimizer, const std::vector<PackedRow>& rows, TrainOptions o,
                  const std::vector<PackedRow>& eval_rows = {},
                  std::function<void(const std::string&)> on_checkpoint = nullptr) {
  tt::QuietLog quiet;
  optimizer.attach(run.trainable);
  Trainer trainer(*run.model, optimizer, run.trainable, rows, eval_rows, std::move(o));
  trainer.on_checkpoint = std::move(on_checkpoint);
  return trainer.train();
}

NamedTensors snapshot(const NamedTensors& tensors) {
  NamedTensors out;
  for (const auto& [n, t] : tensors) out.emplace_back(n, t.detach().clone());
  return out;
}

// Names of the tensors of `a` that are not bit for bit those of `b` (same
// order, names, dtypes and shapes expected); empty when all are.
std::vector<std::string> differing(const NamedTensors& a, const NamedTensors& b) {
  EXPECT_EQ(a.size(), b.size());
  std::vector<std::string> out;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    const at::Tensor &x = a[i].second, &y = b[i].second;
    if (x.scalar_type() != y.scalar_type() || !at::equal(x, y)) out.push_back(a[i].first);
  }
  return out;
}

// The per-step records of a metrics.jsonl ("loss" lines), by step.
std::map<int64_t, json> step_records(const std::string& path);

double max_abs_diff(const NamedTensors& a, const NamedTensors& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    worst = std::max(worst, (a[i].second.to(at::kDouble) - b[i].second.to(at::kDouble)).abs().max().item<double>());
  }
  return worst;
}

// Sum of cross-entropy over the supervised targets of one row, from the full
// logits of that row alone (no padding, no chunking): the reference.
at::Tensor row_loss_sum(mftk::Model& model, const PackedRow& row) {
  mftk::Batch b = mftk::core::make_batch(&row, 1);
  at::Tensor logits = model.logits(model.forward(b)).to(at::kFloat);
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}), b.targets.reshape({-1}), {},
                                at::Reduction::Sum, mftk::kIgnoreIndex);
}

// Mean loss over every supervised token of `rows`.
at::Tensor mean_token_loss(mftk::Model& model, const std::vector<PackedRow>& rows) {
  at::Tensor sum = at::zeros({}, at::kFloat);
  for (const auto& r : rows) sum = sum + row_loss_sum(model, r);
  return sum / double(tt::supervised_tokens(rows));
}

NamedTensors gradient_of(const at::Tensor& loss, const NamedTensors& params) {
  std::vector<at::Tensor> inputs;
  for (const auto& [n, t] : params) inputs.push_back(t);
  auto grads = torch::autograd::grad({loss}, inputs, {}, c10::nullopt, false, /*allow_unused=*/true);
  NamedTensors out;
  for (size_t i = 0; i < params.size(); ++i)
    out.emplace_back(params[i].first, grads[i].defined() ? grads[i].detach() : at::zeros_like(params[i].second));
  return out;
}

// w - lr * g, element-wise per tensor.
NamedTensors sgd_expected(const NamedTensors& w, const NamedTensors& g, double lr) {
  NamedTensors out;
  for (size_t i = 0; i < w.size(); ++i) out.emplace_back(w[i].first, w[i].second.to(at::kDouble) - lr * g[i].second.to(at::kDouble));
  return out;
}

at::Tensor logits_of(mftk::Model& model, const std::vector<PackedRow>& rows) {
  at::NoGradGuard no_grad;
  return model.logits(model.forward(mftk::core::make_batch(rows))).to(at::kFloat);
}

std::vector<json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  std::vector<json> out;
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

std::map<int64_t, json> step_records(const std::string& path) {
  std::map<int64_t, json> out;
  for (const json& line : read_jsonl(path))
    if (line.contains("loss")) out[line.at("step").get<int64_t>()] = line;
  return out;
}

// The steps a resumed run logged (its metrics.jsonl) against the
// uninterrupted run's: the same loss, gradient norm and lr, to the bit
// (JSON keeps every double exactly: 17 significant digits).
void expect_same_steps(const std::string& resumed_metrics, const std::string& full_metrics, int64_t first_step,
                       int64_t last_step) {
  const auto resumed = step_records(resumed_metrics), full = step_records(full_metrics);
  for (int64_t step = first_step; step <= last_step; ++step) {
    ASSERT_TRUE(resumed.count(step)) << "the resumed run logged no step " << step;
    ASSERT_TRUE(full.count(step)) << "the uninterrupted run logged no step " << step;
    for (const char* key : {"loss", "grad_norm", "lr"})
      EXPECT_EQ(resumed.at(step).at(key).get<double>(), full.at(step).at(key).get<double>())
          << key << " at step " << step;
  }
}

void (*current_sigint_handler())(int) {
  struct sigaction now {};
  sigaction(SIGINT, nullptr, &now);
  return now.sa_handler;
}

int64_t vocab() { return 512; }  // tokenizer_vocab of the tiny checkpoint

}  // namespace

// ---------------------------------------------------------------------------
// LoRA numerics inside the real model

TEST(Trainer, LoraAtInitialisationLeavesLogitsUnchanged) {
  auto model = tt::load_tiny_model(2);
  ASSERT_EQ(model->shape().vocab_size, vocab());
  const auto rows = tt::synthetic_rows(1, 3, vocab());
  const at::Tensor before = logits_of(*model, rows);
  at::manual_seed(3);
  mftk::lora::LoRAAdapter adapter(small_lora());
  adapter.inject(*model);
  const at::Tensor after = logits_of(*model, rows);
  EXPECT_TRUE(at::equal(before, after)) << (before - after).abs().max().item<double>();
}

TEST(Trainer, MergedLogitsEqualBasePlusAdapter) {
  auto run = lora_run(2, 3);
  const auto rows = tt::synthetic_rows(2, 3, vocab());
  const at::Tensor base = logits_of(*run.model, rows);
  randomize_lora_b(run.trainable, 4);
  const at::Tensor with_adapter = logits_of(*run.model, rows);
  ASSERT_GT((with_adapter - base).abs().max().item<double>(), 1e-3) << "B must change the output";
  run.adapter->merge(*run.model);
  const at::Tensor merged = logits_of(*run.model, rows);
  EXPECT_LT((merged - with_adapter).abs().max().item<double>(), 1e-5);
}

TEST(Trainer, MergedLogitsEqualAdapterLogitsAfterTraining) {
  // Dropout is on while training; after train() the adapter must be back in
  // eval mode, or the adapter's logits would carry dropout noise.
  auto run = lora_run(1, 3, small_lora(0.2));
  const auto rows = tt::synthetic_rows(3, 4, vocab());
  tt::ScratchDir dir;
  auto opt = make_optimizer("adamw");
  train(run, *opt, rows, options(dir.str(), 2, 1, 3, 1e-2));
  double b_norm = 0;
  for (const auto& [n, t] : run.trainable)
    if (n.find("lora_B") != std::string::npos) b_norm += t.abs().sum().item<double>();
  ASSERT_GT(b_norm, 0.0) << "training moved no B";
  const at::Tensor with_adapter = logits_of(*run.model, rows);
  EXPECT_TRUE(at::equal(with_adapter, logits_of(*run.model, rows))) << "dropout still on after train()";
  run.adapter->merge(*run.model);
  EXPECT_LT((logits_of(*run.model, rows) - with_adapter).abs().max().item<double>(), 1e-5);
}

TEST(Trainer, LoraDropoutActsWhileTrainingOnly) {
  const auto rows = tt::synthetic_rows(4, 4, vocab());
  tt::ScratchDir dir;
  NamedTensors updated[2];
  const double dropouts[2] = {0.0, 0.5};
  for (int i = 0; i < 2; ++i) {
    auto run = lora_run(1, 5, small_lora(dropouts[i]));
    randomize_lora_b(run.trainable, 6);
    auto opt = make_optimizer("sgd");
    auto eval_rows = tt::synthetic_rows(5, 2, vocab());
    auto result = train(run, *opt, rows, options(dir.sub(std::to_string(i)), 4, 1, 1, 0.5), eval_rows);
    updated[i] = snapshot(run.trainable);
    // The evaluation the trainer ran saw no dropout: it equals the reference loss of the final weights.
    at::NoGradGuard no_grad;
    ASSERT_TRUE(result.eval_loss.has_value());
    EXPECT_NEAR(*result.eval_loss, mean_token_loss(*run.model, eval_rows).item<double>(), 1e-5);
  }
  EXPECT_GT(max_abs_diff(updated[0], updated[1]), 1e-6) << "lora dropout had no effect on training";
}

// ---------------------------------------------------------------------------
// The update itself

TEST(Trainer, AccumulatedMicroBatchesEqualOneBatchWeightedByTokens) {
  const auto rows = tt::synthetic_rows(11, 6, vocab(), 4, 24);
  std::set<int64_t> counts;
  for (const auto& r : rows) counts.insert(tt::supervised_tokens({r}));
  ASSERT_GE(counts.size(), 3u) << "rows need different supervised-token counts";
  const double lr = 0.5;

  // The reference: one step of plain SGD on the mean over all supervised tokens.
  auto ref = lora_run(2, 21);
  randomize_lora_b(ref.trainable, 22);
  const NamedTensors w0 = snapshot(ref.trainable);
  const NamedTensors g = gradient_of(mean_token_loss(*ref.model, rows), ref.trainable);
  const NamedTensors expected = sgd_expected(w0, g, lr);
  // What a mean of per-row means would give instead: the test must tell them apart.
  at::Tensor mean_of_means = at::zeros({}, at::kFloat);
  for (const auto& r : rows) mean_of_means = mean_of_means + row_loss_sum(*ref.model, r) / double(tt::supervised_tokens({r}));
  const NamedTensors wrong = sgd_expected(w0, gradient_of(mean_of_means / double(rows.size()), ref.trainable), lr);
  ASSERT_GT(max_abs_diff(wrong, expected), 1e-3);

  tt::ScratchDir dir;
  const std::pair<int64_t, int64_t> shapes[] = {{6, 1}, {2, 3}, {3, 2}, {1, 6}};  // (micro_batch_size, gas)
  for (const auto& [m, k] : shapes) {
    auto run = lora_run(2, 21);
    randomize_lora_b(run.trainable, 22);
    ASSERT_EQ(max_abs_diff(snapshot(run.trainable), w0), 0.0);
    auto opt = make_optimizer("sgd");
    auto result = train(run, *opt, rows, options(dir.sub(fmt::format("m{}k{}", m, k)), m, k, 1, lr));
    EXPECT_EQ(result.steps, 1);
    EXPECT_LT(max_abs_diff(snapshot(run.trainable), expected), 1e-5) << "micro_batch_size " << m << ", gas " << k;
    EXPECT_NEAR(result.final_loss, mean_token_loss(*ref.model, rows).item<double>(), 1e-5);
  }
}

// supervised_loss_sum fuses the head with the cross-entropy when the head is
// frozen; a head that trains (modules_to_save, or every weight with full
// fine-tuning) must still get its gradient. Against the reference loss
// (full logits, one row at a time), for all three.
TEST(Trainer, SupervisedLossGradientsMatchTheFullLogitsWhetherTheHeadTrainsOrNot) {
  const auto rows = tt::synthetic_rows(71, 3, vocab());
  auto check = [&](mftk::Model& model, const NamedTensors& trainable, const std::string& label) -> bool {
    SCOPED_TRACE(label);
    const NamedTensors expected = gradient_of(mean_token_loss(model, rows), trainable);
    int64_t tokens = 0;
    const at::Tensor sum = mftk::core::supervised_loss_sum(model, mftk::core::make_batch(rows), &tokens);
    EXPECT_EQ(tokens, tt::supervised_tokens(rows));
    const NamedTensors got = gradient_of(sum / double(tokens), trainable);
    EXPECT_LE(max_abs_diff(got, expected), 1e-6);
    bool head_has_gradient = false;
    for (const auto& [name, g] : got)
      if (name.find("lm_head") != std::string::npos || name.find("embed_tokens") != std::string::npos)
        head_has_gradient |= g.abs().max().item<double>() > 0;
    return head_has_gradient;
  };
  {
    auto run = lora_run(1, 3);
    randomize_lora_b(run.trainable, 4);
    EXPECT_FALSE(check(*run.model, run.trainable, "LoRA, frozen head"));
  }
  {
    auto options = small_lora();
    options.modules_to_save = {"lm_head"};
    auto run = lora_run(1, 3, options);
    randomize_lora_b(run.trainable, 4);
    EXPECT_TRUE(check(*run.model, run.trainable, "LoRA + modules_to_save lm_head"));
  }
  {
    auto model = tt::load_tiny_model(1);
    const NamedTensors trainable = mftk::core::make_all_trainable(*model);
    EXPECT_TRUE(check(*model, trainable, "full fine-tuning"));
  }
}

TEST(Trainer, FirstAdamWStepIsLrTimesSignLikeRatio) {
  // Step 1, no weight decay: m/(1-b1) = g, sqrt(v/(1-b2)) = |g|, so the update is lr * g / (|g| + eps).
  const auto rows = tt::synthetic_rows(12, 4, vocab());
  const double lr = 1e-2, eps = 1e-8;
  auto run = lora_run(1, 31);
  randomize_lora_b(run.trainable, 32);
  const NamedTensors w0 = snapshot(run.trainable);
  const NamedTensors g = gradient_of(mean_token_loss(*run.model, rows), run.trainable);
  tt::ScratchDir dir;
  auto opt = make_optimizer("adamw");
  train(run, *opt, rows, options(dir.str(), 4, 1, 1, lr));
  int64_t checked = 0, total = 0;
  for (size_t i = 0; i < w0.size(); ++i) {
    const at::Tensor gi = g[i].second.to(at::kDouble);
    const at::Tensor expected = w0[i].second.to(at::kDouble) - lr * gi / (gi.abs() + eps);
    const at::Tensor got = run.trainable[i].second.detach().to(at::kDouble);
    // Where |g| is near eps the ratio depends on g's last bits; elsewhere it is exact.
    const at::Tensor clear = gi.abs() > 1e-6;
    checked += clear.sum().item<int64_t>();
    total += gi.numel();
    const double err = ((got - expected).abs() * clear).max().item<double>();
    EXPECT_LT(err, 1e-7) << w0[i].first;
    EXPECT_LE((got - w0[i].second.to(at::kDouble)).abs().max().item<double>(), lr * (1 + 1e-6)) << w0[i].first;
  }
  EXPECT_GT(checked, total * 9 / 10);
}

TEST(Trainer, ClippingScalesTheGradientToMaxGradNorm) {
  const auto rows = tt::synthetic_rows(13, 4, vocab());
  const double lr = 1.0, max_norm = 1e-3;
  auto run = lora_run(1, 41);
  randomize_lora_b(run.trainable, 42);
  const NamedTensors w0 = snapshot(run.trainable);
  const NamedTensors g = gradient_of(mean_token_loss(*run.model, rows), run.trainable);
  double sq = 0;
  for (const auto& [n, t] : g) sq += t.to(at::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(sq);
  ASSERT_GT(norm, 10 * max_norm);
  tt::ScratchDir dir;
  auto opt = make_optimizer("sgd");
  auto o = options(dir.str(), 4, 1, 1, lr);
  o.max_grad_norm = max_norm;
  train(run, *opt, rows, o);
  // Hugging Face's rule: g * max_norm / (norm + 1e-6).
  EXPECT_LT(max_abs_diff(snapshot(run.trainable), sgd_expected(w0, g, lr * max_norm / (norm + 1e-6))), 1e-7);
}

TEST(Trainer, EpochsDecideTheStepCountAndEveryRowIsSeenOncePerEpoch) {
  const auto rows = tt::synthetic_rows(14, 10, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 51);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.str(), 3, 3, -1, 1e-3);
  o.num_epochs = 2;
  // 10 rows in micro-batches of 3: 4 per epoch, 8 in two; 3 per step: 3 steps.
  auto result = train(run, *opt, rows, o);
  EXPECT_EQ(result.steps, 3);
  EXPECT_EQ(result.train_tokens, 2 * tt::real_tokens(rows));
}

// ---------------------------------------------------------------------------
// Resume

struct ResumeCase {
  std::string optimizer;
  mftk::lora::LoRAOptions lora;
};

void expect_exact_resume(const ResumeCase& c) {
  const auto rows = tt::synthetic_rows(61, 8, vocab());
  tt::ScratchDir dir;
  auto opts = [&](const std::string& out) {
    auto o = options(out, 2, 2, 6, 1e-2);  // 2 steps per epoch, 3 epochs: the data order reshuffles too
    o.schedule.kind = "cosine";
    o.schedule.warmup_steps = 1;
    o.save_steps = 2;
    o.max_grad_norm = 1.0;
    return o;
  };
  // Uninterrupted.
  auto full = lora_run(1, 71, c.lora);
  auto full_opt = make_optimizer(c.optimizer);
  auto full_result = train(full, *full_opt, rows, opts(dir.sub("full")));
  ASSERT_EQ(full_result.steps, 6);
  if (auto* p8 = dynamic_cast<mftk::paged_adamw_8bit::AdamW8bit*>(full_opt.get())) {
    bool any_8bit = false;
    for (const auto& [n, t] : full.trainable) any_8bit = any_8bit || p8->is_8bit(n);
    ASSERT_TRUE(any_8bit) << "the run must exercise 8-bit state";
  }
  const NamedTensors final_weights = snapshot(full.trainable);

  // From checkpoint-2 by folder; the fresh run is seeded differently, so its
  // LoRA init and RNG state are wrong until the checkpoint restores them.
  {
    auto resumed = lora_run(1, 999, c.lora);
    auto opt = make_optimizer(c.optimizer);
    auto o = opts(dir.sub("resumed"));
    o.resume_from_checkpoint = dir.sub("full/checkpoint-2");
    auto result = train(resumed, *opt, rows, o);
    EXPECT_EQ(result.steps, 6);
    EXPECT_EQ(differing(snapshot(resumed.trainable), final_weights), std::vector<std::string>{})
        << c.optimizer << " from checkpoint-2";
    EXPECT_EQ(differing(opt->state(), full_opt->state()), std::vector<std::string>{}) << "optimizer state";
    EXPECT_EQ(result.final_loss, full_result.final_loss);
    EXPECT_EQ(read_jsonl(dir.sub("resumed/metrics.jsonl")).front().at("step"), 3);
    expect_same_steps(dir.sub("resumed/metrics.jsonl"), dir.sub("full/metrics.jsonl"), 3, 6);
  }
  // From checkpoint-4 as "latest" of a folder that holds only it.
  {
    fs::create_directories(dir.sub("latest"));
    fs::copy(dir.sub("full/checkpoint-4"), dir.sub("latest/checkpoint-4"), fs::copy_options::recursive);
    auto resumed = lora_run(1, 1234, c.lora);
    auto opt = make_optimizer(c.optimizer);
    auto o = opts(dir.sub("latest"));
    o.resume_from_checkpoint = "latest";
    train(resumed, *opt, rows, o);
    EXPECT_EQ(differing(snapshot(resumed.trainable), final_weights), std::vector<std::string>{})
        << c.optimizer << " from latest";
    expect_same_steps(dir.sub("latest/metrics.jsonl"), dir.sub("full/metrics.jsonl"), 5, 6);
  }
}

TEST(Trainer, ResumeWithAdamWAndDropoutEndsWhereTheUninterruptedRunDoes) {
  expect_exact_resume({"adamw", small_lora(0.2)});
}

TEST(Trainer, ResumeWithPagedAdamW8bitEndsWhereTheUninterruptedRunDoes) {
  auto lora = small_lora(0.2);
  lora.modules_to_save = {"lm_head"};  // 512 x 64 elements: above the 4096 floor of 8-bit state
  expect_exact_resume({"paged_adamw_8bit", lora});
}

// Checkpoints every 2 steps, a metrics line every 3: resuming from
// checkpoint-2 or -4 starts inside a logging window, and the mean loss of
// that window must still be the uninterrupted run's (the window's sum is
// saved with the checkpoint).
TEST(Trainer, ResumeInsideALoggingWindowLogsTheSameMeanLoss) {
  const auto rows = tt::synthetic_rows(64, 8, vocab());
  tt::ScratchDir dir;
  auto opts = [&](const std::string& out) {
    auto o = options(out, 2, 2, 6, 1e-2);
    o.logging_steps = 3;
    o.save_steps = 2;
    return o;
  };
  auto full = lora_run(1, 5, small_lora(0.2));
  auto full_opt = make_optimizer("adamw");
  train(full, *full_opt, rows, opts(dir.sub("full")));
  const auto full_steps = step_records(dir.sub("full/metrics.jsonl"));
  ASSERT_EQ(full_steps.size(), 2u);  // steps 3 and 6
  for (const int from : {2, 4}) {
    const std::string out = dir.sub("from" + std::to_string(from));
    auto resumed = lora_run(1, 6, small_lora(0.2));
    auto opt = make_optimizer("adamw");
    auto o = opts(out);
    o.resume_from_checkpoint = dir.sub("full/checkpoint-" + std::to_string(from));
    train(resumed, *opt, rows, o);
    EXPECT_EQ(differing(snapshot(resumed.trainable), snapshot(full.trainable)), std::vector<std::string>{});
    const auto steps = step_records(out + "/metrics.jsonl");
    for (const auto& [step, line] : steps) {
      ASSERT_TRUE(full_steps.count(step)) << "step " << step;
      EXPECT_EQ(line.at("loss").get<double>(), full_steps.at(step).at("loss").get<double>())
          << "mean loss of the window ending at step " << step << ", resumed from checkpoint-" << from;
      EXPECT_EQ(line.at("tokens"), full_steps.at(step).at("tokens")) << "step " << step;
    }
    EXPECT_EQ(steps.size(), from == 2 ? 2u : 1u);
  }
}

TEST(Trainer, ResumeRefusesACheckpointOfAnotherBatchShape) {
  const auto rows = tt::synthetic_rows(62, 4, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 1);
  auto opt = make_optimizer("sgd");
  train(run, *opt, rows, options(dir.sub("a"), 2, 1, 1, 1e-3));
  auto again = lora_run(1, 1);
  auto opt2 = make_optimizer("sgd");
  auto o = options(dir.sub("b"), 1, 1, 2, 1e-3);
  o.resume_from_checkpoint = dir.sub("a/checkpoint-1");
  try {
    train(again, *opt2, rows, o);
    FAIL() << "expected a UsageError";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("micro_batch_size"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// The run record (run.json): what a checkpoint was made with, compared on resume

namespace {

// The trainer's log, with each line's level ("warning ...", "info ..."), at info level.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    auto logger = std::make_shared<spdlog::logger>("capture", sink);
    logger->set_pattern("%l %v");
    logger->set_level(spdlog::level::info);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return stream_.str(); }

 private:
  std::shared_ptr<spdlog::logger> previous_;
  std::ostringstream stream_;
};

// A record as the pipeline writes it, cut to the keys these tests change.
json run_record(double lr, int64_t r, int64_t max_steps, const std::string& lora_version = "0.1.0") {
  return {{"written_by", "mftk"},
          {"mftk_version", "0.1.0"},
          {"recipe",
           {{"adapter", {{"plugin", "lora"}, {"r", r}, {"alpha", 8}}},
            {"schedule", {{"learning_rate", lr}}},
            {"training", {{"max_steps", max_steps}, {"seed", 42}}}}},
          {"components", json::array({{{"kind", "adapter"},
                                       {"table", "adapter"},
                                       {"plugin", "lora"},
                                       {"library", "lora"},
                                       {"library_version", lora_version},
                                       {"library_file", "libmftk-lora.so"}}})}};
}

// train() without its QuietLog, so that the resume lines reach a LogCapture.
TrainResult train_logged(LoraRun& run, mftk::Optimizer& optimizer, const std::vector<PackedRow>& rows, TrainOptions o) {
  optimizer.attach(run.trainable);
  Trainer trainer(*run.model, optimizer, run.trainable, rows, {}, std::move(o));
  return trainer.train();
}

}  // namespace

TEST(TrainerRunRecord, EachCheckpointKeepsTheRecordAndItsManifestCoversIt) {
  const auto rows = tt::synthetic_rows(63, 4, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 3);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.sub("out"), 2, 1, 1, 1e-3);
  const json record = run_record(1e-3, 4, 1);
  o.run_record = record.dump(2) + "\n";
  train(run, *opt, rows, o);
  const fs::path ck = fs::path(dir.sub("out")) / "checkpoint-1";
  EXPECT_EQ(json::parse(mftk::core::read_file((ck / "run.json").string())), record);
  const json manifest = json::parse(mftk::core::read_file((ck / "manifest.json").string()));
  ASSERT_TRUE(manifest.at("files").contains("run.json")) << manifest.dump();
  EXPECT_EQ(manifest["files"]["run.json"]["bytes"].get<int64_t>(), int64_t(fs::file_size(ck / "run.json")));
  // Covered: an edited record makes the checkpoint fail its manifest, as an edited weight file would.
  ASSERT_EQ(mftk::core::find_latest_checkpoint(dir.sub("out")), ck.string());
  std::string text = mftk::core::read_file((ck / "run.json").string());
  text[text.find("0.001")] = '9';  // same size, another learning rate
  std::ofstream((ck / "run.json").string(), std::ios::binary | std::ios::trunc) << text;
  EXPECT_EQ(mftk::core::find_latest_checkpoint(dir.sub("out")), "");
}

TEST(TrainerRunRecord, ResumeWithAnotherLearningRateWarnsWithBothValuesAndResumes) {
  const auto rows = tt::synthetic_rows(64, 4, vocab());
  tt::ScratchDir dir;
  auto first = lora_run(1, 5);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.sub("a"), 2, 1, 1, 1e-2);
  o.run_record = run_record(1e-2, 4, 1).dump();
  train(first, *opt, rows, o);

  auto resumed = lora_run(1, 5);
  auto opt2 = make_optimizer("sgd");
  auto o2 = options(dir.sub("a"), 2, 1, 2, 5e-3);
  o2.resume_from_checkpoint = "latest";
  o2.run_record = run_record(5e-3, 4, 2, "0.2.0").dump();
  LogCapture log;
  const TrainResult result = train_logged(resumed, *opt2, rows, o2);
  EXPECT_EQ(result.steps, 2);
  const std::string text = log.text();
  EXPECT_NE(text.find("warning resume: [schedule] learning_rate was 0.01, now 0.005"), std::string::npos) << text;
  EXPECT_NE(text.find("warning resume: plugin lora 0.1.0 -> 0.2.0"), std::string::npos) << text;
  // Training longer is what a resume is for: info, not a warning.
  EXPECT_NE(text.find("info resume: [training] max_steps was 1, now 2"), std::string::npos) << text;
  EXPECT_EQ(text.find("seed"), std::string::npos) << "unchanged keys are not reported:\n" << text;
}

TEST(TrainerRunRecord, ResumeWithAnotherAdapterRankIsRefusedNamingTheKey) {
  const auto rows = tt::synthetic_rows(65, 4, vocab());
  tt::ScratchDir dir;
  auto first = lora_run(1, 5);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.sub("a"), 2, 1, 1, 1e-2);
  o.run_record = run_record(1e-2, 16, 1).dump();
  train(first, *opt, rows, o);

  auto resumed = lora_run(1, 5);
  auto opt2 = make_optimizer("sgd");
  auto o2 = options(dir.sub("a"), 2, 1, 2, 1e-2);
  o2.resume_from_checkpoint = "latest";
  o2.run_record = run_record(1e-2, 8, 2).dump();
  try {
    train(resumed, *opt2, rows, o2);
    FAIL() << "expected a UsageError (exit 2)";
  } catch (const mftk::UsageError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("adapter.r was 16, this run has 8"), std::string::npos) << what;
    EXPECT_EQ(what.find("learning_rate"), std::string::npos) << "only what changed: " << what;
  }
}

TEST(TrainerRunRecord, ACheckpointWithoutARecordResumesExactlyAndSaysThereIsNothingToCompare) {
  const auto rows = tt::synthetic_rows(66, 4, vocab());
  tt::ScratchDir dir;
  auto full = lora_run(1, 8);
  randomize_lora_b(full.trainable, 1);
  auto opt = make_optimizer("adamw");
  auto o = options(dir.sub("old"), 2, 1, 2, 1e-2);
  o.save_steps = 1;  // an mftk from before run.json: run_record left empty
  train(full, *opt, rows, o);
  ASSERT_FALSE(fs::exists(fs::path(dir.sub("old")) / "checkpoint-1" / "run.json"));

  auto resumed = lora_run(1, 99);
  auto opt2 = make_optimizer("adamw");
  auto o2 = options(dir.sub("new"), 2, 1, 2, 1e-2);
  o2.resume_from_checkpoint = dir.sub("old/checkpoint-1");
  o2.run_record = run_record(1e-2, 4, 2).dump();
  LogCapture log;
  train_logged(resumed, *opt2, rows, o2);
  EXPECT_NE(log.text().find("nothing to compare"), std::string::npos) << log.text();
  EXPECT_EQ(differing(snapshot(resumed.trainable), snapshot(full.trainable)), std::vector<std::string>{});
  EXPECT_TRUE(fs::exists(fs::path(dir.sub("new")) / "checkpoint-2" / "run.json"));
}

// ---------------------------------------------------------------------------
// Checkpoints

std::vector<std::string> checkpoint_folders(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(Trainer, SaveTotalLimitKeepsTheNewestCheckpoints) {
  const auto rows = tt::synthetic_rows(63, 4, vocab());
  tt::ScratchDir dir;
  for (int64_t limit : {2, 0}) {
    auto run = lora_run(1, 1);
    auto opt = make_optimizer("sgd");
    auto o = options(dir.sub(fmt::format("limit{}", limit)), 2, 1, 5, 1e-3);
    o.save_steps = 1;
    o.save_total_limit = limit;
    train(run, *opt, rows, o);
    const auto names = checkpoint_folders(o.output_dir);
    if (limit == 2)
      EXPECT_EQ(names, (std::vector<std::string>{"checkpoint-4", "checkpoint-5"}));
    else
      EXPECT_EQ(names, (std::vector<std::string>{"checkpoint-1", "checkpoint-2", "checkpoint-3", "checkpoint-4",
                                                 "checkpoint-5"}));
  }
}

TEST(Trainer, DamagedOrHalfWrittenCheckpointsAreNeverPicked) {
  const auto rows = tt::synthetic_rows(64, 4, vocab());
  tt::ScratchDir dir;
  const std::string out = dir.sub("run");
  auto opts = [&] {
    auto o = options(out, 2, 1, 4, 1e-2);
    o.save_steps = 1;
    return o;
  };
  auto run = lora_run(1, 2, small_lora(0.1));
  auto opt = make_optimizer("adamw");
  train(run, *opt, rows, opts());
  const NamedTensors final_weights = snapshot(run.trainable);
  const auto ck = [&](int k) { return fs::path(out) / fmt::format("checkpoint-{}", k); };
  EXPECT_EQ(mftk::core::find_latest_checkpoint(out), ck(4).string());

  // What a kill -9 can leave behind, newest first, all newer than the good checkpoint-3:
  // checkpoint-4 with a flipped byte (same size),
  {
    std::fstream f(ck(4) / "trainable.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c = char(c ^ 0x5a);
    f.seekp(-3, std::ios::end);
    f.write(&c, 1);
  }
  const auto copy_of_3 = [&](const fs::path& to) { fs::copy(ck(3), to, fs::copy_options::recursive); };
  // the temporary folder of a save in progress,
  copy_of_3(fs::path(out) / ".checkpoint-9.tmp");
  // a folder whose manifest was never written,
  copy_of_3(ck(5));
  fs::remove(ck(5) / "manifest.json");
  // one that lost a file the manifest lists,
  copy_of_3(ck(6));
  fs::remove(ck(6) / "optimizer.safetensors");
  // one with a truncated file,
  copy_of_3(ck(7));
  fs::resize_file(ck(7) / "rng.safetensors", fs::file_size(ck(7) / "rng.safetensors") / 2);
  // and one with a half-written manifest.
  copy_of_3(ck(8));
  {
    const std::string m = mftk::core::read_file((ck(8) / "manifest.json").string());
    std::ofstream(ck(8) / "manifest.json", std::ios::trunc) << m.substr(0, m.size() / 2);
  }
  EXPECT_EQ(mftk::core::find_latest_checkpoint(out), ck(3).string());

  // Asked for by name, a damaged checkpoint is refused with the reason.
  {
    auto again = lora_run(1, 2, small_lora(0.1));
    auto opt2 = make_optimizer("adamw");
    auto o = opts();
    o.resume_from_checkpoint = ck(4).string();
    try {
      train(again, *opt2, rows, o);
      FAIL() << "expected an error";
    } catch (const mftk::Error& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("damaged or incomplete"), std::string::npos) << what;
      EXPECT_NE(what.find("trainable.safetensors"), std::string::npos) << what;
    }
  }
  // "latest" loads checkpoint-3 and redoes step 4 exactly.
  auto resumed = lora_run(1, 77, small_lora(0.1));
  auto opt3 = make_optimizer("adamw");
  auto o = opts();
  o.resume_from_checkpoint = "latest";
  auto result = train(resumed, *opt3, rows, o);
  EXPECT_EQ(result.steps, 4);
  EXPECT_EQ(differing(snapshot(resumed.trainable), final_weights), std::vector<std::string>{});
  EXPECT_EQ(mftk::core::find_latest_checkpoint(out), ck(4).string());  // rewritten whole
}

TEST(Trainer, FindLatestCheckpointOfAnEmptyOrMissingFolderIsEmpty) {
  tt::ScratchDir dir;
  EXPECT_EQ(mftk::core::find_latest_checkpoint(dir.str()), "");
  EXPECT_EQ(mftk::core::find_latest_checkpoint(dir.sub("missing")), "");
}

TEST(Trainer, InterruptWritesACheckpointAndTheResumedRunMatches) {
  const auto rows = tt::synthetic_rows(65, 4, vocab());
  tt::ScratchDir dir;
  auto opts = [&](const std::string& out) {
    auto o = options(out, 2, 1, 5, 1e-2);
    o.save_steps = 1;
    return o;
  };
  auto full = lora_run(1, 8, small_lora(0.1));
  auto opt = make_optimizer("adamw");
  train(full, *opt, rows, opts(dir.sub("full")));
  const NamedTensors final_weights = snapshot(full.trainable);

  const auto handler_before = current_sigint_handler();
  auto run = lora_run(1, 8, small_lora(0.1));
  auto opt2 = make_optimizer("adamw");
  int saves = 0;
  // Ctrl-C arrives while checkpoint-2 is being written: step 3 still finishes.
  auto result = train(run, *opt2, rows, opts(dir.sub("cut")), {}, [&](const std::string&) {
    if (++saves == 2) std::raise(SIGINT);
  });
  EXPECT_EQ(current_sigint_handler(), handler_before);
  EXPECT_TRUE(result.interrupted);
  EXPECT_EQ(result.steps, 3);
  EXPECT_EQ(fs::path(result.last_checkpoint).filename(), "checkpoint-3");
  const auto state = json::parse(mftk::core::read_file(result.last_checkpoint + "/trainer_state.json"));
  EXPECT_EQ(state.at("reason"), "interrupted");
  EXPECT_EQ(state.at("step"), 3);

  auto resumed = lora_run(1, 9, small_lora(0.1));
  auto opt3 = make_optimizer("adamw");
  auto o = opts(dir.sub("cut"));
  o.resume_from_checkpoint = "latest";
  auto finished = train(resumed, *opt3, rows, o);
  EXPECT_FALSE(finished.interrupted);
  EXPECT_EQ(finished.steps, 5);
  EXPECT_EQ(differing(snapshot(resumed.trainable), final_weights), std::vector<std::string>{});
  expect_same_steps(dir.sub("cut/metrics.jsonl"), dir.sub("full/metrics.jsonl"), 1, 5);
}

// ---------------------------------------------------------------------------
// Non-finite losses

void poison(NamedTensors& trainable, float value) {
  at::NoGradGuard no_grad;
  for (auto& [n, t] : trainable)
    if (n.find("lora_B") != std::string::npos) {
      t.view({-1})[0].fill_(value);
      return;
    }
}

float first_b_value(const NamedTensors& trainable) {
  for (const auto& [n, t] : trainable)
    if (n.find("lora_B") != std::string::npos) return t.view({-1})[0].item<float>();
  throw std::logic_error("no lora_B tensor");
}

TEST(Trainer, NonFiniteStepsAreSkippedAndCounted) {
  const auto rows = tt::synthetic_rows(66, 4, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 10);
  randomize_lora_b(run.trainable, 11);
  const NamedTensors w0 = snapshot(run.trainable);
  poison(run.trainable, NAN);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.str(), 2, 1, 2, 1e-2);
  o.nan_patience = 3;
  auto result = train(run, *opt, rows, o);
  EXPECT_EQ(result.steps, 2);
  EXPECT_EQ(result.skipped_nonfinite, 2);
  // Nothing was updated: with the poisoned element put back, every tensor is as it was.
  poison(run.trainable, first_b_value(w0));
  EXPECT_EQ(max_abs_diff(snapshot(run.trainable), w0), 0.0);
  // The skipped steps are logged, their loss as null (JSON has no NaN).
  const auto lines = read_jsonl(dir.sub("metrics.jsonl"));
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_TRUE(lines[0].at("loss").is_null());
}

TEST(Trainer, NanPatienceStopsTheRunWithAdvice) {
  const auto rows = tt::synthetic_rows(67, 4, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 12);
  poison(run.trainable, INFINITY);
  auto opt = make_optimizer("adamw");
  auto o = options(dir.str(), 2, 1, 10, 1e-2);
  o.nan_patience = 3;
  const auto handler_before = current_sigint_handler();
  try {
    train(run, *opt, rows, o);
    FAIL() << "expected an error";
  } catch (const mftk::UsageError& e) {
    FAIL() << "non-finite losses are a runtime error, not a usage error: " << e.what();
  } catch (const mftk::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("3 non-finite losses in a row"), std::string::npos) << what;
    EXPECT_NE(what.find("step 3"), std::string::npos) << what;
    EXPECT_NE(e.hint().find("learning rate"), std::string::npos) << e.hint();
    EXPECT_NE(e.hint().find("max_grad_norm"), std::string::npos) << e.hint();
  }
  EXPECT_EQ(current_sigint_handler(), handler_before) << "train() left its SIGINT handler installed";
}

TEST(Trainer, AFiniteStepResetsTheNanCount) {
  // Steps 2 and 4 are poisoned (from the checkpoint hook), 1, 3 and 5 are clean:
  // with nan_patience 2 the run finishes, two steps skipped.
  const auto rows = tt::synthetic_rows(68, 4, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 13);
  randomize_lora_b(run.trainable, 14);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.str(), 2, 1, 5, 1e-2);
  o.nan_patience = 2;
  o.save_steps = 1;
  NamedTensors before_skip;
  float kept = 0;
  int saves = 0;
  double change_during_skip = -1;
  auto result = train(run, *opt, rows, o, {}, [&](const std::string&) {
    ++saves;
    if (saves == 1 || saves == 3) {
      before_skip = snapshot(run.trainable);
      kept = first_b_value(run.trainable);
      poison(run.trainable, NAN);
    } else if (saves == 2 || saves == 4) {
      poison(run.trainable, kept);
      change_during_skip = std::max(change_during_skip, max_abs_diff(snapshot(run.trainable), before_skip));
    }
  });
  EXPECT_EQ(result.steps, 5);
  EXPECT_EQ(result.skipped_nonfinite, 2);
  EXPECT_EQ(change_during_skip, 0.0) << "a skipped step changed the weights";
}

// ---------------------------------------------------------------------------
// metrics.jsonl

TEST(Trainer, MetricsHaveOneLinePerLoggingStepWithTheDocumentedKeys) {
  const auto rows = tt::synthetic_rows(69, 6, vocab());
  const auto eval_rows = tt::synthetic_rows(70, 3, vocab());
  tt::ScratchDir dir;
  auto run = lora_run(1, 15);
  auto opt = make_optimizer("sgd");
  auto o = options(dir.str(), 3, 1, 6, 0.0);
  o.logging_steps = 2;
  o.eval_steps = 3;
  o.schedule.kind = "cosine";
  o.schedule.peak_lr = 1e-2;
  o.warmup_ratio_ = 0.3;  // ceil(0.3 * 6) = 2 warmup steps
  auto result = train(run, *opt, rows, o, eval_rows);
  const auto lines = read_jsonl(dir.sub("metrics.jsonl"));
  std::vector<json> train_lines, eval_lines;
  for (const auto& l : lines) (l.contains("loss") ? train_lines : eval_lines).push_back(l);
  ASSERT_EQ(train_lines.size(), 3u);
  ASSERT_EQ(eval_lines.size(), 2u);
  const std::set<std::string> train_keys = {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"};
  const std::set<std::string> eval_keys = {"step", "eval_loss", "eval_ppl", "eval_tokens"};
  // lr of the update logged at step n (1-based) is the schedule at n-1:
  // warmup 1e-2 * s / 2, then 1e-2 * (1 + cos(pi * (s - 2) / 4)) / 2.
  const double expected_lr[3] = {5e-3, 1e-2 * 0.8535533905932737, 1e-2 * 0.14644660940672624};
  for (size_t i = 0; i < train_lines.size(); ++i) {
    const auto& l = train_lines[i];
    std::set<std::string> keys;
    for (const auto& [k, v] : l.items()) keys.insert(k);
    EXPECT_EQ(keys, train_keys);
    EXPECT_EQ(l.at("step").get<int64_t>(), int64_t(2 * (i + 1)));
    EXPECT_DOUBLE_EQ(l.at("epoch").get<double>(), double(i + 1));  // 2 steps of 3 rows = one pass over 6 rows
    EXPECT_NEAR(l.at("lr").get<double>(), expected_lr[i], 1e-15);
    EXPECT_EQ(l.at("tokens").get<int64_t>(), tt::real_tokens(rows));  // every row once per 2-step window
    EXPECT_TRUE(std::isfinite(l.at("loss").get<double>()));
    EXPECT_GT(l.at("grad_norm").get<double>(), 0.0);
    EXPECT_GE(l.at("elapsed_s").get<double>(), 0.0);
  }
  for (size_t i = 0; i < eval_lines.size(); ++i) {
    const auto& l = eval_lines[i];
    std::set<std::string> keys;
    for (const auto& [k, v] : l.items()) keys.insert(k);
    EXPECT_EQ(keys, eval_keys);
    EXPECT_EQ(l.at("step").get<int64_t>(), int64_t(3 * (i + 1)));
    EXPECT_EQ(l.at("eval_tokens").get<int64_t>(), tt::supervised_tokens(eval_rows));
    EXPECT_NEAR(l.at("eval_ppl").get<double>(), std::exp(l.at("eval_loss").get<double>()), 1e-9);
  }
  at::NoGradGuard no_grad;
  const double reference_eval = mean_token_loss(*run.model, eval_rows).item<double>();
  EXPECT_NEAR(eval_lines.back().at("eval_loss").get<double>(), reference_eval, 1e-5);
  ASSERT_TRUE(result.eval_loss.has_value());
  EXPECT_NEAR(*result.eval_loss, reference_eval, 1e-5);
}

TEST(Trainer, LoggedLossIsTheMeanOverTheStepsSupervisedTokens) {
  // lr 0: the model never changes, so every step's loss is the reference
  // loss of all four rows (two micro-batches of two, accumulated).
  const auto rows = tt::synthetic_rows(71, 4, vocab(), 4, 24);
  tt::ScratchDir dir;
  auto run = lora_run(1, 16);
  randomize_lora_b(run.trainable, 17);
  auto opt = make_optimizer("sgd");
  auto result = train(run, *opt, rows, options(dir.str(), 2, 2, 3, 0.0));
  at::NoGradGuard no_grad;
  const double reference = mean_token_loss(*run.model, rows).item<double>();
  const auto lines = read_jsonl(dir.sub("metrics.jsonl"));
  ASSERT_EQ(lines.size(), 3u);
  for (const auto& l : lines) EXPECT_NEAR(l.at("loss").get<double>(), reference, 1e-5) << l.dump();
  EXPECT_NEAR(result.final_loss, reference, 1e-5);
  EXPECT_EQ(result.train_tokens, 3 * tt::real_tokens(rows));
}
