// Objectives (mftk/objective.h): the sft plugin's loss, preference data
// (TRL rows -> pairs of chat encodings), and DPO / ORPO checked against an
// independent computation from the full logits' log-softmax, with their
// gradients with respect to the LoRA parameters.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>
#include <map>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <nlohmann/json.hpp>

#include "chat_template.h"
#include "child_process.h"
#include "dataset.h"
#include "lora_adapter.h"
#include "objective_cache.h"
#include "mftk/objective.h"
#include "mftk/plugin.h"
#include "mftk/safetensors.h"
#include "mftk/token_logprobs.h"
#include "mftk/tokenizer.h"
#include "pipeline.h"
#include "preference_objectives.h"
#include "preference_rows.h"
#include "registry.h"
#include "train_test_support.h"
#include "trainer.h"

namespace mftk {
namespace {

using namespace train_test;
using core::ChatMessage;

constexpr double kTol = 1e-5;

std::string write_jsonl(const ScratchDir& dir, const std::string& name, const std::vector<std::string>& lines) {
  const std::string path = dir.sub(name);
  std::ofstream out(path);
  for (const auto& l : lines) out << l << "\n";
  return path;
}

core::DatasetSpec preference_spec(const std::string& path) {
  core::DatasetSpec spec;
  spec.path = path;
  spec.type = core::DatasetType::preference;
  spec.table = "datasets[0]";
  return spec;
}

std::vector<Example> load_pairs(const std::string& path, bool skip_bad_rows, core::DatasetFileStats& stats) {
  const std::string dir = tiny_checkpoint(2);
  auto tok = Tokenizer::load(dir);
  return core::load_dataset(preference_spec(path), *tok, core::detect_chat_format(*tok), false, skip_bad_rows, stats);
}

// Rows in both of TRL's forms, with and without a system prompt.
const std::vector<std::string> kRows = {
    R"({"prompt": "name a colour of the sky", "chosen": "blue, on a clear day", "rejected": "a horse"})",
    R"({"prompt": [{"role": "user", "content": "what is two plus two"}], "chosen": [{"role": "assistant", "content": "four"}], "rejected": [{"role": "assistant", "content": "the river is long and the sea is wide"}]})",
    R"({"system": "answer briefly", "prompt": "say hello", "chosen": "hello", "rejected": "goodbye for now, friend"})",
    R"({"prompt": [{"role": "system", "content": "you are terse"}, {"role": "user", "content": "first letter"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "and the last"}], "chosen": [{"role": "assistant", "content": "z"}], "rejected": [{"role": "assistant", "content": "the middle one is m"}]})",
};

// ---------------------------------------------------------------- data ----

TEST(PreferenceData, EachSideIsTheChatEncodingOfThePromptAndItsReply) {
  ScratchDir dir("pref");
  core::DatasetFileStats stats;
  const auto examples = load_pairs(write_jsonl(dir, "p.jsonl", kRows), false, stats);
  ASSERT_EQ(examples.size(), 2 * kRows.size());
  auto tok = Tokenizer::load(tiny_checkpoint(2));
  const auto format = core::detect_chat_format(*tok);
  // What `mftk tokenize --chat-json` gives for [prompt turns..., assistant: side].
  auto expect_side = [&](const Example& got, std::vector<ChatMessage> messages, size_t context_messages) {
    const auto full = core::encode_chat(*tok, format, messages, false);
    EXPECT_EQ(got.ids, full.ids);
    std::vector<ChatMessage> context(messages.begin(), messages.begin() + long(context_messages));
    const size_t context_tokens = core::encode_chat(*tok, format, context, false, true).ids.size();
    std::vector<uint8_t> mask = full.loss_mask;
    // Earlier assistant turns of a multi-turn prompt are context, not supervised.
    for (size_t t = 0; t < context_tokens; ++t) mask[t] = 0;
    EXPECT_EQ(got.loss_mask, mask);
    EXPECT_EQ(got.ids.back(), tok->eos_id());
    EXPECT_EQ(got.loss_mask.back(), 1);
  };
  expect_side(examples[0], {{"user", "name a colour of the sky"}, {"assistant", "blue, on a clear day"}}, 1);
  expect_side(examples[1], {{"user", "name a colour of the sky"}, {"assistant", "a horse"}}, 1);
  expect_side(examples[2], {{"user", "what is two plus two"}, {"assistant", "four"}}, 1);
  expect_side(examples[5], {{"system", "answer briefly"}, {"user", "say hello"}, {"assistant", "goodbye for now, friend"}}, 2);
  expect_side(examples[6],
              {{"system", "you are terse"}, {"user", "first letter"}, {"assistant", "a"}, {"user", "and the last"},
               {"assistant", "z"}},
              4);
  // The single-turn sides are exactly tokenize's label mask (nothing masked away).
  EXPECT_EQ(examples[0].loss_mask,
            core::encode_chat(*tok, format, {{"user", "name a colour of the sky"}, {"assistant", "blue, on a clear day"}}, false)
                .loss_mask);
}

TEST(PreferenceData, StringAndConversationalRowsEncodeAlike) {
  ScratchDir dir("pref");
  core::DatasetFileStats stats;
  const auto examples = load_pairs(
      write_jsonl(dir, "p.jsonl",
                  {R"({"system": "be kind", "prompt": "hi", "chosen": "hello there", "rejected": "go away"})",
                   R"({"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "hello there"}], "rejected": [{"role": "assistant", "content": "go away"}]})"}),
      false, stats);
  ASSERT_EQ(examples.size(), 4u);
  EXPECT_EQ(examples[0].ids, examples[2].ids);
  EXPECT_EQ(examples[0].loss_mask, examples[2].loss_mask);
  EXPECT_EQ(examples[1].ids, examples[3].ids);
}

TEST(PreferenceData, BadRowsAreRefusedWithTheirLineOrSkippedAndCounted) {
  ScratchDir dir("pref");
  const std::vector<std::string> rows = {
      kRows[0],
      R"({"prompt": "p", "chosen": "c"})",                                // missing side
      R"({"prompt": "p", "chosen": "same", "rejected": "same"})",         // identical sides
      R"({"prompt": "p", "chosen": "", "rejected": "r"})",                // empty side
      R"({"prompt": "p", "chosen": 3, "rejected": "r"})",                 // wrong type
      R"({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "c", "rejected": "r"})",  // prompt ends with the assistant
  };
  const std::string path = write_jsonl(dir, "bad.jsonl", rows);
  core::DatasetFileStats stats;
  try {
    load_pairs(path, false, stats);
    FAIL() << "a bad row was accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ":2:"), std::string::npos) << e.what();
  }
  const auto examples = load_pairs(path, true, stats);
  EXPECT_EQ(examples.size(), 2u);
  EXPECT_EQ(stats.skipped_total(), 5);
  EXPECT_EQ(stats.skipped["missing field"], 1);
  EXPECT_EQ(stats.skipped["identical sides"], 1);
  EXPECT_EQ(stats.skipped["empty response"], 1);
  EXPECT_EQ(stats.skipped["wrong field type"], 1);
  EXPECT_EQ(stats.skipped["bad conversation"], 1);
}

TEST(PreferenceData, PairsBecomeOneRowEachAndTooLongPairsAreDropped) {
  Example a{{1, 5, 6, 7}, {0, 0, 1, 1}}, b{{1, 5, 8, 9, 10}, {0, 0, 1, 1, 1}};
  PackOptions po;
  po.sequence_len = 9;
  PackStats stats;
  const auto rows = core::pack_preference_pairs({a, b, a, a, b, b}, po, stats);
  // Pair 3 (b, b) is 10 tokens: dropped.
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(stats.dropped, 1);
  EXPECT_EQ(rows[0].doc_ids, (std::vector<int32_t>{0, 0, 0, 0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(rows[0].targets, (std::vector<int32_t>{-100, 6, 7, -100, -100, 8, 9, 10, -100}));
  EXPECT_EQ(rows[0].position_ids, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 2, 3, 4}));
}

// --------------------------------------------------- the reference maths ----

// A batch of preference rows from kRows (one pair per row).
Batch preference_batch(std::vector<PackedRow>* rows_out = nullptr) {
  ScratchDir dir("pref");
  core::DatasetFileStats stats;
  const auto examples = load_pairs(write_jsonl(dir, "p.jsonl", kRows), false, stats);
  PackOptions po;
  po.sequence_len = 512;
  PackStats ps;
  auto rows = core::pack_preference_pairs(examples, po, ps);
  if (rows_out) *rows_out = rows;
  return core::make_batch(rows);
}

// Per-document sums of log p(target) from the full [B, T, V] logits, one
// term at a time: [B, D] (D = 2 here: one pair per row).
at::Tensor reference_doc_logps(Model& model, const Batch& batch) {
  const at::Tensor lsm = at::log_softmax(model.logits(model.forward(batch)).to(at::kFloat), -1);
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  std::vector<at::Tensor> out;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<at::Tensor> docs(2, at::zeros({}, at::kFloat));
    for (int64_t t = 0; t < T; ++t) {
      const int64_t target = batch.targets[b][t].item<int64_t>();
      const int64_t doc = batch.doc_ids[b][t].item<int64_t>();
      if (target == kIgnoreIndex) continue;
      docs[size_t(doc)] = docs[size_t(doc)] + lsm[b][t][target];
    }
    out.push_back(at::stack(docs));
  }
  return at::stack(out);
}

at::Tensor reference_tokens(const Batch& batch) {
  at::Tensor out = at::zeros({batch.input_ids.size(0), 2}, at::kFloat);
  for (int64_t b = 0; b < out.size(0); ++b)
    for (int64_t t = 0; t < batch.targets.size(1); ++t)
      if (batch.targets[b][t].item<int64_t>() != kIgnoreIndex) out[b][batch.doc_ids[b][t].item<int64_t>()] += 1;
  return out;
}

at::Tensor log_sigmoid_ref(const at::Tensor& x) { return -at::log1p(at::exp(-x)); }

struct LoraModel {
  std::unique_ptr<mistral::MistralModel> model;
  std::unique_ptr<lora::LoRAAdapter> adapter;
  std::vector<at::Tensor> params;
};

LoraModel lora_model(uint64_t seed) {
  LoraModel m;
  m.model = load_tiny_model(2);
  m.adapter = std::make_unique<lora::LoRAAdapter>();
  m.adapter->inject(*m.model);
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : m.adapter->trainable_parameters()) {
    at::Tensor p = t;
    p.copy_(at::randn(p.sizes()) * 0.2);
    m.params.push_back(t);
  }
  m.model->set_training(false);
  return m;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double diff = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  EXPECT_LE(diff, kTol * scale) << what << ": max difference " << diff << " (scale " << scale << ")";
}

void expect_same_gradients(const at::Tensor& loss, const at::Tensor& reference, const std::vector<at::Tensor>& params) {
  const auto g1 = torch::autograd::grad({loss}, params, {}, true, false, true);
  const auto g2 = torch::autograd::grad({reference}, params, {}, true, false, true);
  double norm = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_TRUE(g1[i].defined() && g2[i].defined()) << "parameter " << i;
    expect_close(g1[i], g2[i], "gradient of parameter " + std::to_string(i));
    norm += g2[i].pow(2).sum().item<double>();
  }
  EXPECT_GT(norm, 1e-10) << "the gradients are all zero: the check would be empty";
}

// The sums of a result's metrics, by name.
std::map<std::string, double> metrics_of(const Objective& o, const ObjectiveResult& r) {
  std::map<std::string, double> m;
  const auto names = o.metric_names();
  for (size_t i = 0; i < names.size(); ++i) m[names[i]] = r.metrics.at(i);
  return m;
}

struct DpoCase {
  std::string loss_type;
  double label_smoothing;
};

class DpoExact : public testing::TestWithParam<DpoCase> {};

TEST_P(DpoExact, LossAndLoraGradientsEqualTheFullLogitsComputation) {
  QuietLog quiet;
  auto m = lora_model(11);
  const Batch batch = preference_batch();
  preference::DpoOptions o;
  o.beta = 0.5;  // large enough that the loss is far from its value at zero
  o.loss_type = GetParam().loss_type;
  o.label_smoothing = GetParam().label_smoothing;
  preference::DpoObjective dpo(o);
  ObjectiveResult r = dpo.compute(*m.model, m.adapter.get(), batch);
  ASSERT_EQ(r.units, int64_t(kRows.size()));

  at::Tensor ref;
  {
    at::NoGradGuard no_grad;
    m.adapter->set_enabled(false);
    ref = reference_doc_logps(*m.model, batch);
    m.adapter->set_enabled(true);
  }
  const at::Tensor pi = reference_doc_logps(*m.model, batch);
  at::Tensor pc = pi.select(1, 0), pr = pi.select(1, 1), rc = ref.select(1, 0), rr = ref.select(1, 1);
  if (o.loss_type == "ipo") {
    const at::Tensor n = reference_tokens(batch);
    pc = pc / n.select(1, 0), pr = pr / n.select(1, 1), rc = rc / n.select(1, 0), rr = rr / n.select(1, 1);
  }
  const at::Tensor h = (pc - rc) - (pr - rr);
  const at::Tensor losses =
      o.loss_type == "ipo"
          ? (h - 1 / (2 * o.beta)) * (h - 1 / (2 * o.beta))
          : -(1 - o.label_smoothing) * log_sigmoid_ref(o.beta * h) - o.label_smoothing * log_sigmoid_ref(-o.beta * h);
  const at::Tensor want = losses.sum();
  expect_close(r.loss_sum, want, "dpo loss");
  EXPECT_GT(std::abs(want.item<double>() - double(kRows.size()) * std::log(2.0)), 1e-3)
      << "the policy equals the reference: the check would not see the adapter";
  auto metrics = metrics_of(dpo, r);
  const at::Tensor reward_c = o.beta * (pc - rc), reward_r = o.beta * (pr - rr);
  EXPECT_NEAR(metrics["rewards/chosen"], reward_c.sum().item<double>(), 1e-4);
  EXPECT_NEAR(metrics["rewards/rejected"], reward_r.sum().item<double>(), 1e-4);
  EXPECT_NEAR(metrics["rewards/margins"], (reward_c - reward_r).sum().item<double>(), 1e-4);
  EXPECT_EQ(metrics["rewards/accuracies"], (reward_c > reward_r).sum().item<double>());
  EXPECT_NEAR(metrics["logps/chosen"], pc.sum().item<double>(), 1e-3);
  EXPECT_NEAR(metrics["logps/rejected"], pr.sum().item<double>(), 1e-3);
  expect_same_gradients(r.loss_sum, want, m.params);
}

INSTANTIATE_TEST_SUITE_P(LossTypes, DpoExact,
                         testing::Values(DpoCase{"sigmoid", 0.0}, DpoCase{"sigmoid", 0.2}, DpoCase{"ipo", 0.0}),
                         [](const auto& info) {
                           return info.param.loss_type + (info.param.label_smoothing > 0 ? "_conservative" : "");
                         });

TEST(OrpoExact, LossAndLoraGradientsEqualTheFullLogitsComputation) {
  QuietLog quiet;
  auto m = lora_model(12);
  const Batch batch = preference_batch();
  preference::OrpoObjective orpo({0.3});
  ObjectiveResult r = orpo.compute(*m.model, m.adapter.get(), batch);
  ASSERT_EQ(r.units, int64_t(kRows.size()));
  const at::Tensor pi = reference_doc_logps(*m.model, batch), n = reference_tokens(batch);
  const at::Tensor ac = pi.select(1, 0) / n.select(1, 0), ar = pi.select(1, 1) / n.select(1, 1);
  // log odds(p) = log p - log(1 - p), p = exp(mean log p).
  const at::Tensor log_odds = (ac - at::log(1 - at::exp(ac))) - (ar - at::log(1 - at::exp(ar)));
  const at::Tensor want = (-ac - 0.3 * log_sigmoid_ref(log_odds)).sum();
  expect_close(r.loss_sum, want, "orpo loss");
  auto metrics = metrics_of(orpo, r);
  EXPECT_NEAR(metrics["nll_loss"], (-ac).sum().item<double>(), 1e-4);
  EXPECT_NEAR(metrics["log_odds_chosen"], log_odds.sum().item<double>(), 1e-4);
  EXPECT_EQ(metrics["rewards/accuracies"], (ac > ar).sum().item<double>());
  expect_same_gradients(r.loss_sum, want, m.params);
}

TEST(DpoReference, TheAdapterSwitchedOffIsTheBaseModelBitwise) {
  QuietLog quiet;
  const Batch batch = preference_batch();
  auto base = load_tiny_model(2);
  auto m = lora_model(13);
  at::NoGradGuard no_grad;
  base->set_training(false);
  const auto want = document_logprobs(*base, batch);
  m.adapter->set_enabled(false);
  const auto off = document_logprobs(*m.model, batch);
  m.adapter->set_enabled(true);
  const auto on = document_logprobs(*m.model, batch);
  EXPECT_TRUE(at::equal(off.logp, want.logp));
  EXPECT_TRUE(at::equal(off.tokens, want.tokens));
  EXPECT_FALSE(at::allclose(on.logp, want.logp)) << "the randomised adapter changes nothing: the check is empty";
}

// A head trained in full (modules_to_save) is part of the adapter too: off,
// the slot holds the base's own op again. An embedding trained in place
// cannot be switched off, and says so.
TEST(DpoReference, ModulesToSaveAreSwitchedOffWithTheAdapter) {
  QuietLog quiet;
  const Batch batch = preference_batch();
  auto base = load_tiny_model(2);
  base->set_training(false);
  auto model = load_tiny_model(2);
  model->set_training(false);
  lora::LoRAOptions o;
  o.modules_to_save = {"lm_head"};
  lora::LoRAAdapter adapter(o);
  adapter.inject(*model);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : adapter.trainable_parameters()) at::Tensor(t).add_(at::randn(t.sizes()) * 0.05);
  const auto want = document_logprobs(*base, batch);
  adapter.set_enabled(false);
  EXPECT_TRUE(at::equal(document_logprobs(*model, batch).logp, want.logp));
  adapter.set_enabled(true);
  EXPECT_FALSE(at::allclose(document_logprobs(*model, batch).logp, want.logp));

  auto other = load_tiny_model(2);
  lora::LoRAOptions e;
  e.modules_to_save = {"embed_tokens"};
  lora::LoRAAdapter embedding(e);
  embedding.inject(*other);
  EXPECT_THROW(embedding.set_enabled(false), UsageError);
}

TEST(DpoReference, ChosenAndRejectedNeverShareAttention) {
  QuietLog quiet;
  auto m = lora_model(14);
  std::vector<PackedRow> rows;
  preference_batch(&rows);
  PackedRow changed = rows[0];
  // Other tokens on the chosen side (document 0), same length.
  for (size_t t = 0; t < changed.ids.size(); ++t)
    if (changed.doc_ids[t] == 0 && t > 0) changed.ids[t] = 3 + (changed.ids[t] + 17) % 400;
  at::NoGradGuard no_grad;
  const auto a = document_logprobs(*m.model, core::make_batch({rows[0]}));
  const auto b = document_logprobs(*m.model, core::make_batch({changed}));
  EXPECT_NE(a.logp[0][0].item<float>(), b.logp[0][0].item<float>());
  EXPECT_EQ(a.logp[0][1].item<float>(), b.logp[0][1].item<float>());
}

TEST(DpoReference, FullFineTuningComparesWithTheLogprobsRecordedBeforeTraining) {
  QuietLog quiet;
  auto model = load_tiny_model(2);
  model->set_training(false);
  const NamedTensors trainable = core::make_all_trainable(*model);  // writable copies, as a full fine-tuning run has
  const Batch batch = preference_batch();
  preference::DpoObjective dpo({});
  ASSERT_TRUE(dpo.needs_preparation(nullptr));
  at::Tensor before;
  {
    at::NoGradGuard no_grad;
    dpo.prepare(*model, nullptr, batch);
    before = reference_doc_logps(*model, batch);
    // Training moves the weights; the reference must not move with them.
    for (const auto& [name, t] : trainable)
      if (name.find("norm") != std::string::npos) at::Tensor(t).mul_(1.3);
  }
  ObjectiveResult r = dpo.compute(*model, nullptr, batch);
  const at::Tensor now = reference_doc_logps(*model, batch);
  const at::Tensor h = (now.select(1, 0) - before.select(1, 0)) - (now.select(1, 1) - before.select(1, 1));
  expect_close(r.loss_sum, (-log_sigmoid_ref(0.1 * h)).sum(), "dpo loss against the recorded reference");
  EXPECT_GT(h.abs().max().item<double>(), 1e-3) << "the weights change did not move the log-probabilities";
}

// The recorded reference survives its trip through the cache: a fresh dpo
// handed the state scores exactly what the one that recorded it scores, and
// state of the wrong shape is declined (the core then prepares afresh).
TEST(DpoReference, RecordedStateRestoresBitForBitAndBadStateIsDeclined) {
  QuietLog quiet;
  auto model = load_tiny_model(2);
  model->set_training(false);
  const NamedTensors trainable = core::make_all_trainable(*model);
  const Batch batch = preference_batch();
  preference::DpoObjective recorded({}), restored({});
  {
    at::NoGradGuard no_grad;
    recorded.prepare(*model, nullptr, batch);
    for (const auto& [name, t] : trainable)
      if (name.find("norm") != std::string::npos) at::Tensor(t).mul_(1.3);
  }
  const NamedTensors state = recorded.prepared_state();
  ASSERT_EQ(state.size(), 4u);
  ASSERT_TRUE(restored.restore_prepared(state));
  const ObjectiveResult a = recorded.compute(*model, nullptr, batch), b = restored.compute(*model, nullptr, batch);
  EXPECT_TRUE(at::equal(a.loss_sum, b.loss_sum));
  EXPECT_EQ(a.metrics, b.metrics);

  NamedTensors missing(state.begin(), state.end() - 1);
  EXPECT_FALSE(preference::DpoObjective({}).restore_prepared(missing));
  NamedTensors short_counts = state;
  for (auto& [name, t] : short_counts)
    if (name == "dpo.reference.key_counts") t = t.narrow(0, 0, t.size(0) - 1);
  EXPECT_FALSE(preference::DpoObjective({}).restore_prepared(short_counts));
}

// An objective that counts its prepare() calls and caches how many rows it saw.
class CountingObjective final : public Objective {
 public:
  ObjectiveData data() const override { return ObjectiveData::preference_pairs; }
  std::vector<std::string> metric_names() const override { return {}; }
  int64_t units(const PackedRow&) const override { return 1; }
  bool needs_preparation(const Adapter*) const override { return true; }
  void prepare(Model&, Adapter*, const Batch& batch) override {
    ++prepare_calls;
    rows_seen += batch.input_ids.size(0);
  }
  ObjectiveResult compute(Model&, Adapter*, const Batch&) override { return {}; }
  NamedTensors prepared_state() const override { return {{"rows_seen", at::full({1}, rows_seen, at::kLong)}}; }
  bool restore_prepared(const NamedTensors& state) override {
    if (state.size() != 1 || state[0].first != "rows_seen" || !accept) return false;
    rows_seen = state[0].second.item<int64_t>();
    return true;
  }
  int prepare_calls = 0;
  int64_t rows_seen = 0;
  bool accept = true;
};

TEST(ObjectiveCache, PreparedStateIsWrittenOnceThenReadBackInsteadOfPreparing) {
  QuietLog quiet;
  ScratchDir dir("objcache");
  auto model = load_tiny_model(2);
  std::vector<PackedRow> rows;
  preference_batch(&rows);
  const std::vector<PackedRow> eval(rows.begin(), rows.begin() + 1);
  const std::string file = dir.sub("prepared/key/objective-test.safetensors");

  CountingObjective first;
  const std::string wrote = core::prepare_objective_cached(*model, first, nullptr, rows, eval, 3, file, true);
  EXPECT_EQ(first.prepare_calls, 2 + 1);  // 4 train rows in micro-batches of 3, 1 eval row
  EXPECT_EQ(first.rows_seen, int64_t(rows.size() + eval.size()));
  EXPECT_NE(wrote.find("cached in"), std::string::npos) << wrote;
  EXPECT_EQ(SafetensorsFile::open(file)->metadata().at("mftk"), "objective-prepared-state");

  CountingObjective second;
  const std::string read = core::prepare_objective_cached(*model, second, nullptr, rows, eval, 3, file, true);
  EXPECT_EQ(second.prepare_calls, 0) << read;
  EXPECT_EQ(second.rows_seen, first.rows_seen);
  EXPECT_NE(read.find("read from"), std::string::npos) << read;

  // State the objective declines is prepared again and replaced (mftk's own file).
  CountingObjective picky;
  picky.accept = false;
  core::prepare_objective_cached(*model, picky, nullptr, rows, eval, 3, file, true);
  EXPECT_EQ(picky.prepare_calls, 3);

  // Not rank 0: prepares, writes nothing.
  const std::string other = dir.sub("prepared/key/objective-other.safetensors");
  CountingObjective rank1;
  core::prepare_objective_cached(*model, rank1, nullptr, rows, eval, 3, other, false);
  EXPECT_FALSE(fs::exists(other));

  // A file mftk did not write is never read or replaced.
  {
    std::ofstream foreign(other);
    foreign << "my notes";
  }
  CountingObjective refused;
  EXPECT_THROW(core::prepare_objective_cached(*model, refused, nullptr, rows, eval, 3, other, true), UsageError);
  std::ifstream kept(other);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(kept), {}), "my notes");
}

TEST(ObjectiveCache, TheFileNameFollowsTheWeightsTheSettingsAndTheData) {
  ScratchDir dir("objcache_key");
  fs::create_directories(dir.sub("base"));
  {
    std::ofstream w(dir.sub("base/model.safetensors"));
    w << "0123456789";
  }
  core::ObjectiveCacheInputs in;
  in.data_cache_file = dir.sub("prepared/abc/examples.bin");
  in.objective = "dpo 0.1.0";
  in.settings_json = R"({"objective": {"beta": 0.1}})";
  in.weight_folders = {dir.sub("base")};
  in.device = "cpu";
  const std::string f = core::objective_cache_file(in);
  EXPECT_EQ(fs::path(f).parent_path(), fs::path(dir.sub("prepared/abc")));
  EXPECT_EQ(core::objective_cache_file(in), f);  // stable
  auto differs = [&](auto change) {
    core::ObjectiveCacheInputs other = in;
    change(other);
    return core::objective_cache_file(other) != f;
  };
  EXPECT_TRUE(differs([](auto& o) { o.settings_json = R"({"objective": {"beta": 0.2}})"; }));
  EXPECT_TRUE(differs([](auto& o) { o.device = "cuda:0"; }));
  EXPECT_TRUE(differs([](auto& o) { o.objective = "dpo 0.2.0"; }));
  EXPECT_TRUE(differs([&](auto& o) { o.data_cache_file = dir.sub("prepared/def/examples.bin"); }));
  {
    std::ofstream w(dir.sub("base/model.safetensors"), std::ios::app);
    w << "more";  // new weights: another size
  }
  EXPECT_NE(core::objective_cache_file(in), f);
  in.data_cache_file.clear();
  EXPECT_EQ(core::objective_cache_file(in), "");  // uncached data: nothing cached
}

// ----------------------------------------------------------------- sft ----

TEST(SftObjective, ThePluginLossIsTheTokenCrossEntropyOfTheTrainer) {
  QuietLog quiet;
  core::Registry registry;
  auto sft = registry.create<Objective>(Kind::objective, "sft", Config("objective", {"recipe.toml", 1, 1}, {}));
  ASSERT_EQ(sft->data(), ObjectiveData::token_rows);
  auto model = load_tiny_model(2);
  model->set_training(false);
  const auto rows = synthetic_rows(5, 4, model->shape().vocab_size);
  const Batch batch = core::make_batch(rows);
  int64_t units = 0;
  for (const auto& r : rows) units += sft->units(r);
  EXPECT_EQ(units, supervised_tokens(rows));
  ObjectiveResult r = sft->compute(*model, nullptr, batch);
  EXPECT_EQ(r.units, units);
  int64_t n = 0;
  const at::Tensor trainer_loss = core::supervised_loss_sum(*model, batch, &n);
  EXPECT_TRUE(at::equal(r.loss_sum, trainer_loss));  // the very loss the trainer always computed
  // Against the formula: -sum log softmax(logits)[target] over supervised positions.
  const at::Tensor lsm = at::log_softmax(model->logits(model->forward(batch)), -1);
  double want = 0;
  for (int64_t b = 0; b < batch.targets.size(0); ++b)
    for (int64_t t = 0; t < batch.targets.size(1); ++t)
      if (const int64_t y = batch.targets[b][t].item<int64_t>(); y != kIgnoreIndex) want -= lsm[b][t][y].item<double>();
  EXPECT_NEAR(r.loss_sum.item<double>(), want, 1e-4 * std::abs(want));
}

// ------------------------------------------------ the bundled preference task ----

namespace e2e {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
}

// Each eval line of metrics.jsonl: (step, eval_rewards/accuracies).
std::vector<std::pair<int64_t, double>> eval_accuracies(const std::string& metrics) {
  std::vector<std::pair<int64_t, double>> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("eval_rewards/accuracies"))
      out.emplace_back(j.at("step").get<int64_t>(), j.at("eval_rewards/accuracies").get<double>());
  }
  return out;
}

}  // namespace e2e

// `mftk ARGS...` with its output in `log`; the exit code.
int run(const std::vector<std::string>& args, const std::string& log) {
  using namespace child_process;
  return exit_code(wait_status(spawn(mftk_binary(), args, log), std::chrono::minutes(5)));
}

// configs/preference.toml on a tiny base `mftk init` writes into `dir`, its
// data read from the source tree and its outputs under `dir`, evaluating
// only before the first step and after the last.
std::string bundled_preference_recipe(const ScratchDir& dir) {
  const int init = run({"init", "--preset", "tiny", "--seed", "1", "--out", dir.sub("base")}, dir.sub("init.log"));
  EXPECT_EQ(init, 0) << e2e::read_text(dir.sub("init.log"));
  std::string recipe = e2e::read_text(MFTK_SOURCE_DIR "/configs/preference.toml");
  e2e::replace_all(recipe, "\"data/preference/", "\"" MFTK_SOURCE_DIR "/data/preference/");
  e2e::replace_all(recipe, "\"out/preference/", "\"" + dir.str() + "/");
  e2e::replace_all(recipe, "eval_steps = 20", "eval_steps = 1000");
  return recipe;
}

// configs/preference.toml as shipped (paths moved into a scratch folder,
// evaluations only before and after): DPO on a random base must learn to
// rank the held-out pairs by reading their prompts (1.0 after its 120
// steps; one epoch reaches only ~0.9).
TEST(PreferenceTask, DpoRaisesHeldOutRewardAccuracyAndEvalAgrees) {
  ScratchDir dir("pref_e2e");
  std::string recipe = bundled_preference_recipe(dir);
  const std::string recipe_path = write_jsonl(dir, "preference.toml", {recipe});
  ASSERT_EQ(run({"run", recipe_path}, dir.sub("run.log")), 0) << e2e::read_text(dir.sub("run.log"));

  const auto acc = e2e::eval_accuracies(dir.sub("run/metrics.jsonl"));
  ASSERT_EQ(acc.size(), 2u) << e2e::read_text(dir.sub("run/metrics.jsonl"));
  EXPECT_EQ(acc.front().first, 0);
  // At step 0 the policy is its reference: every reward is 0, and TRL counts a tie as not preferred.
  EXPECT_EQ(acc.front().second, 0.0);
  EXPECT_GE(acc.back().second, 0.9) << e2e::read_text(dir.sub("run.log"));
  const auto summary = nlohmann::json::parse(e2e::read_text(dir.sub("run/summary.json")));
  EXPECT_EQ(summary.at("objective"), "dpo");
  EXPECT_EQ(summary.at("eval_rewards/accuracies").get<double>(), acc.back().second);
  EXPECT_NE(e2e::read_text(dir.sub("run/report.html")).find("rewards/accuracies"), std::string::npos);

  // `mftk eval` with the saved adapter scores what the run's last evaluation did.
  ASSERT_EQ(run({"eval", recipe_path, "--adapter", dir.sub("run/adapter")}, dir.sub("eval.log")), 0)
      << e2e::read_text(dir.sub("eval.log"));
  const std::string eval_log = e2e::read_text(dir.sub("eval.log"));
  const auto j = nlohmann::json::parse(eval_log.substr(eval_log.rfind("{\"eval_loss\"")));
  EXPECT_NEAR(j.at("rewards/accuracies").get<double>(), acc.back().second, 1e-9);
  EXPECT_NEAR(j.at("eval_loss").get<double>(), summary.at("eval_loss").get<double>(), 1e-6);
  EXPECT_EQ(j.at("pairs").get<int64_t>(), 64);

  // [adapter] path continues from a saved adapter: before its first step the
  // new run scores exactly what the first run ended with.
  ASSERT_EQ(run({"run", recipe_path, "--set", "adapter.path=" + dir.sub("run/adapter"), "--set", "training.max_steps=1",
                 "--set", "training.output_dir=" + dir.sub("cont")},
                dir.sub("cont.log")),
            0)
      << e2e::read_text(dir.sub("cont.log"));
  const auto cont = e2e::eval_accuracies(dir.sub("cont/metrics.jsonl"));
  ASSERT_FALSE(cont.empty());
  EXPECT_EQ(cont.front().first, 0);
  EXPECT_EQ(cont.front().second, acc.back().second);
}

// Full fine-tuning DPO records its reference before training; a second run
// of the same data and base reads it from beside the prepared data and trains
// exactly as the first did. (A resume takes the same path: the trainer
// prepares before it loads the checkpoint.)
TEST(PreferenceTask, FullFineTuningReferenceIsCachedWithThePreparedData) {
  ScratchDir dir("pref_fullft");
  std::string recipe = bundled_preference_recipe(dir);
  const size_t a = recipe.find("[adapter]"), o = recipe.find("[objective]");
  ASSERT_TRUE(a != std::string::npos && o != std::string::npos);
  recipe.erase(a, o - a);  // no adapter: full fine-tuning
  const std::string recipe_path = write_jsonl(dir, "preference.toml", {recipe});
  const std::vector<std::string> steps = {"--set", "training.max_steps=2", "--set", "schedule.learning_rate=1e-4"};
  auto args = [&](std::vector<std::string> a) {
    a.insert(a.end(), steps.begin(), steps.end());
    return a;
  };
  ASSERT_EQ(run(args({"run", recipe_path, "--set", "training.output_dir=" + dir.sub("first")}), dir.sub("first.log")), 0)
      << e2e::read_text(dir.sub("first.log"));
  ASSERT_EQ(run(args({"run", recipe_path, "--set", "training.output_dir=" + dir.sub("second")}), dir.sub("second.log")), 0)
      << e2e::read_text(dir.sub("second.log"));
  const std::string first = e2e::read_text(dir.sub("first.log")), second = e2e::read_text(dir.sub("second.log"));
  EXPECT_NE(first.find("cached in"), std::string::npos) << first;
  EXPECT_EQ(first.find("prepared state read from"), std::string::npos) << first;
  EXPECT_NE(second.find("prepared state read from"), std::string::npos) << second;
  EXPECT_EQ(e2e::read_text(dir.sub("second/model/model.safetensors")),
            e2e::read_text(dir.sub("first/model/model.safetensors")));
}

// DPO's metrics window (rewards, logps) is saved with a checkpoint like the
// loss's: a run resumed inside a logging window logs what the uninterrupted
// run logs, and ends with the same adapter, bit for bit.
TEST(PreferenceTask, DpoResumesBitForBitInsideALoggingWindow) {
  ScratchDir dir("pref_resume");
  std::string recipe = bundled_preference_recipe(dir);
  e2e::replace_all(recipe, "logging_steps = 10", "logging_steps = 3");
  e2e::replace_all(recipe, "save_steps = 1000", "save_steps = 2");
  const std::string recipe_path = write_jsonl(dir, "preference.toml", {recipe});
  const std::vector<std::string> common = {"--set", "training.max_steps=6", "--set", "adapter.dropout=0.1"};
  auto args = [&](std::vector<std::string> a) {
    a.insert(a.end(), common.begin(), common.end());
    return a;
  };
  ASSERT_EQ(run(args({"run", recipe_path, "--set", "training.output_dir=" + dir.sub("full")}), dir.sub("full.log")), 0)
      << e2e::read_text(dir.sub("full.log"));
  ASSERT_EQ(run(args({"run", recipe_path, "--set", "training.output_dir=" + dir.sub("resumed"), "--set",
                      "training.resume_from_checkpoint=" + dir.sub("full/checkpoint-2")}),
                dir.sub("resumed.log")),
            0)
      << e2e::read_text(dir.sub("resumed.log"));
  auto lines = [](const std::string& path) {
    std::map<std::pair<int64_t, bool>, nlohmann::json> out;  // (step, eval line) -> line without timings
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      for (const char* timing : {"elapsed_s", "tokens_per_s", "tokens"}) j.erase(timing);
      out[{j.at("step").get<int64_t>(), j.contains("eval_loss")}] = j;
    }
    return out;
  };
  const auto full = lines(dir.sub("full/metrics.jsonl"));
  const auto resumed = lines(dir.sub("resumed/metrics.jsonl"));
  ASSERT_TRUE(resumed.count({3, false}) && resumed.count({6, false}) && resumed.count({6, true}));
  for (const auto& [key, line] : resumed) {
    ASSERT_TRUE(full.count(key)) << line.dump();
    EXPECT_EQ(line, full.at(key)) << "step " << key.first;
    EXPECT_TRUE(line.contains(key.second ? "eval_rewards/margins" : "rewards/margins")) << line.dump();
  }
  EXPECT_EQ(e2e::read_text(dir.sub("resumed/adapter/adapter_model.safetensors")),
            e2e::read_text(dir.sub("full/adapter/adapter_model.safetensors")));
}

}  // namespace
}  // namespace mftk
