// Recipe lint: every rule fires on a recipe that has its problem and stays
// silent on one that does not; lint_facts reads the recipe's own keys; and
// `mftk validate --strict` turns a warning into exit 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <string>

#include "lint.h"
#include "plan_test_support.h"
#include "recipe.h"
#include "registry.h"

namespace {

using mftk::core::LintFacts;

// A recipe with no problem at all: every rule is silent on it.
LintFacts clean() {
  LintFacts f;
  f.recipe_path = "clean.toml";
  f.sequence_len = 2048;
  f.save_steps = 50;
  f.learning_rate = 1e-4;
  f.warmup_steps = 10;
  f.train_on_inputs = false;
  f.chat_template = "auto";
  f.val_set_size = 0.02;
  f.instruction_data = true;
  f.packer = "swa_packer";
  f.packer_window_aware = true;  // what swa_packer declares
  f.adapter = "lora";
  f.lora_r = 16;
  f.lora_alpha = 32;
  f.model_parameters = 7'248'023'552;
  f.sliding_window = 4096;
  f.model_known = true;
  f.tokenizer_chat_format = "v3";
  f.longest_example = 1500;
  f.eval_examples = 20;
  f.total_steps = 400;
  return f;
}

std::vector<std::string> fired(const LintFacts& f) {
  std::vector<std::string> ids;
  for (const auto& w : mftk::core::lint(f)) ids.push_back(w.rule);
  return ids;
}

// Exactly `rule` fires on the changed facts, and its line names a fix.
void expect_only(const std::string& rule, const std::function<void(LintFacts&)>& change) {
  LintFacts f = clean();
  change(f);
  const auto warnings = mftk::core::lint(f);
  ASSERT_EQ(warnings.size(), 1u) << rule;
  EXPECT_EQ(warnings[0].rule, rule);
  EXPECT_NE(warnings[0].line().find("; fix: "), std::string::npos);
  EXPECT_FALSE(warnings[0].fix.empty());
}

TEST(LintRules, CleanRecipeHasNoWarnings) { EXPECT_TRUE(fired(clean()).empty()); }

TEST(LintRules, EveryRuleHasATest) {
  // The rules tested below; a new rule must be added here and get its tests.
  const std::vector<std::string> tested = {"sliding-window", "chat-template",    "train-on-inputs", "lora-lr",
                                           "no-warmup",      "lora-rank",        "lora-alpha",      "context-collapse",
                                           "save-steps",     "eval-empty"};
  for (const auto& r : mftk::core::lint_rules())
    EXPECT_NE(std::find(tested.begin(), tested.end(), r.id), tested.end()) << r.id;
  EXPECT_EQ(mftk::core::lint_rules().size(), tested.size());
}

TEST(LintRules, SlidingWindowWithoutWindowAwarePacking) {
  expect_only("sliding-window", [](LintFacts& f) {
    f.sequence_len = 8192, f.packer = "padding", f.packer_window_aware = false;
  });
  // Same length with the window-aware packer, or within the window: silent.
  LintFacts f = clean();
  f.sequence_len = 8192;
  EXPECT_TRUE(fired(f).empty());
  f.packer = "padding", f.packer_window_aware = false, f.sequence_len = 4096;
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, ChatTemplateThatDoesNotFitTheTokenizer) {
  expect_only("chat-template", [](LintFacts& f) { f.chat_template = "mistral_v1"; });  // v3 tokenizer
  expect_only("chat-template", [](LintFacts& f) {
    f.chat_template = "mistral_v3";
    f.tokenizer_chat_format = "v1";
  });
  LintFacts f = clean();
  f.chat_template = "mistral_v3";
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, TrainOnInputsOnInstructionData) {
  expect_only("train-on-inputs", [](LintFacts& f) { f.train_on_inputs = true; });
  LintFacts f = clean();
  f.train_on_inputs = true, f.instruction_data = false;  // completion rows have no inputs
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, LoraLearningRateAboveTheUsualRange) {
  expect_only("lora-lr", [](LintFacts& f) { f.learning_rate = 5e-4; });
  LintFacts f = clean();
  f.learning_rate = 2e-4;
  EXPECT_TRUE(fired(f).empty());
  f.learning_rate = 5e-4, f.adapter.clear();  // full fine-tuning is not LoRA's range
  f.lora_r = 0, f.lora_alpha = 0;
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, NoWarmup) {
  expect_only("no-warmup", [](LintFacts& f) { f.warmup_steps = 0, f.warmup_ratio = 0; });
  LintFacts f = clean();
  f.warmup_steps = 0, f.warmup_ratio = 0.03;
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, LoraRankAbove128OnA7BModel) {
  expect_only("lora-rank", [](LintFacts& f) { f.lora_r = 256, f.lora_alpha = 512; });
  LintFacts f = clean();
  f.lora_r = 256, f.lora_alpha = 512, f.model_parameters = 3'500'000;  // a tiny model may use any rank
  EXPECT_TRUE(fired(f).empty());
  f = clean();
  f.lora_r = 128, f.lora_alpha = 256;
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, AlphaOverRankFarFromUsual) {
  expect_only("lora-alpha", [](LintFacts& f) { f.lora_alpha = 512; });  // 32x
  expect_only("lora-alpha", [](LintFacts& f) { f.lora_alpha = 2; });    // 1/8
  LintFacts f = clean();
  f.lora_alpha = 16;  // alpha = r
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, ContextWindowCollapse) {
  expect_only("context-collapse", [](LintFacts& f) { f.longest_example = 90; });
  const auto line = [] {
    LintFacts f = clean();
    f.longest_example = 90;
    return mftk::core::lint(f)[0].fix;
  }();
  EXPECT_NE(line.find("sequence_len = 128"), std::string::npos) << line;
  LintFacts f = clean();
  f.longest_example = 300;  // over sequence_len / 8
  EXPECT_TRUE(fired(f).empty());
  f.longest_example.reset();  // data not read (validate): silent
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, SaveStepsLargerThanTheRun) {
  expect_only("save-steps", [](LintFacts& f) { f.save_steps = 500; });
  LintFacts f = clean();
  f.save_steps = 400;
  EXPECT_TRUE(fired(f).empty());
  f.save_steps = 0;  // only at the end
  EXPECT_TRUE(fired(f).empty());
}

TEST(LintRules, EvalSplitEmpty) {
  expect_only("eval-empty", [](LintFacts& f) { f.eval_examples = 0; });
  expect_only("eval-empty", [](LintFacts& f) {
    f.eval_examples.reset();  // no data read: decided from the recipe
    f.val_set_size = 0, f.eval_dataset = false;
  });
  LintFacts f = clean();
  f.eval_examples.reset(), f.val_set_size = 0, f.eval_dataset = true;
  EXPECT_TRUE(fired(f).empty());
}

// lint_facts reads the keys from a resolved recipe.
TEST(LintFactsFromRecipe, ReadsTrainingScheduleDataAndAdapterKeys) {
  auto recipe = mftk::core::Recipe::parse(R"(
[model]
plugin = "mistral"
path = "nowhere"
[adapter]
plugin = "lora"
r = 256
alpha = 8
[[datasets]]
path = "train.jsonl"
type = "instruction"
[data]
train_on_inputs = true
chat_template = "mistral_v1"
[schedule]
learning_rate = 1e-3
[training]
sequence_len = 1024
save_steps = 7
max_steps = 5
sample_packing = false
)",
                                          "lint.toml");
  mftk::core::Registry registry;
  recipe.resolve(registry);
  const auto f = mftk::core::lint_facts(recipe, nullptr);
  EXPECT_EQ(f.sequence_len, 1024);
  EXPECT_EQ(f.lora_r, 256);
  EXPECT_DOUBLE_EQ(f.lora_alpha, 8);
  EXPECT_DOUBLE_EQ(f.learning_rate, 1e-3);
  EXPECT_EQ(f.packer, "padding");
  EXPECT_EQ(f.chat_template, "mistral_v1");
  ASSERT_TRUE(f.total_steps.has_value());
  EXPECT_EQ(*f.total_steps, 5);
  const auto ids = fired(f);
  for (const char* rule : {"train-on-inputs", "lora-lr", "no-warmup", "lora-alpha", "save-steps", "eval-empty"})
    EXPECT_NE(std::find(ids.begin(), ids.end(), rule), ids.end()) << rule;
  // Without a model or tokenizer, the rules that need them stay silent.
  for (const char* rule : {"lora-rank", "chat-template", "sliding-window", "context-collapse"})
    EXPECT_EQ(std::find(ids.begin(), ids.end(), rule), ids.end()) << rule;
}

TEST(LintCli, ValidatePrintsWarningsAndStrictFails) {
  using namespace mftk::plan_test;
  const auto dir = scratch() / "lint-cli";
  fs::create_directories(dir);
  const std::string recipe = "[model]\nplugin = \"mistral\"\npath = \"" + tiny_checkpoint() +
                             "\"\n[[datasets]]\npath = \"x.jsonl\"\n[data]\nval_set_size = 0.1\n"
                             "[schedule]\nwarmup_steps = 5\n";
  write_text(dir / "ok.toml", recipe);
  write_text(dir / "bad.toml", recipe + "[training]\nsequence_len = 512\nsample_packing = false\n");
  const auto ok = run_in(dir, mftk_binary() + " validate --strict ok.toml");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_EQ(ok.output.find("warning ["), std::string::npos) << ok.output;
  // tiny's sliding window is 64; the padding packer is not window-aware.
  const auto warn = run_in(dir, mftk_binary() + " validate bad.toml");
  EXPECT_EQ(warn.exit_code, 0) << warn.output;
  EXPECT_NE(warn.output.find("warning [sliding-window]"), std::string::npos) << warn.output;
  const auto strict = run_in(dir, mftk_binary() + " validate --strict bad.toml");
  EXPECT_EQ(strict.exit_code, 2) << strict.output;
}

}  // namespace
