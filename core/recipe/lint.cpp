// The lint rules (lint.h). Thresholds are the usual ranges for fine-tuning
// Mistral-7B-size models; each message says what was found and the fix.
#include "lint.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "chat_template.h"
#include "model_tools.h"
#include "mftk/error.h"
#include "mftk/packer.h"
#include "mftk/tokenizer.h"
#include "plan.h"
#include "recipe.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

constexpr double kMaxLoraLearningRate = 2e-4;  // the top of the usual LoRA range for Mistral-7B (1e-4..2e-4)
constexpr int64_t kMaxLoraRank7B = 128;
constexpr int64_t kSevenBParameters = 5'000'000'000;  // "7B-size": above this
constexpr double kMinAlphaRatio = 0.5, kMaxAlphaRatio = 4.0;  // alpha = r or 2r are the common choices
constexpr int64_t kCollapseFactor = 8;  // longest example under sequence_len / 8

std::optional<LintWarning> warn(std::string rule, std::string message, std::string fix) {
  return LintWarning{std::move(rule), std::move(message), std::move(fix)};
}

std::optional<LintWarning> sliding_window_rule(const LintFacts& f) {
  // A packer declaring the trait keeps rows longer than the window correct:
  // documents never share attention and each token sees at most the window.
  if (!f.sliding_window || f.sequence_len <= *f.sliding_window || f.packer_window_aware) return std::nullopt;
  return warn("sliding-window",
              fmt::format("[training] sequence_len {} is above the model's sliding window {}, and packer '{}' is not "
                          "window-aware",
                          f.sequence_len, *f.sliding_window, f.packer),
              fmt::format("set [packer] plugin to a packer with the {} trait (`mftk plugins --keys NAME` shows a "
                          "packer's traits), or sequence_len <= {}",
                          kTraitRespectsSlidingWindow, *f.sliding_window));
}

std::optional<LintWarning> chat_template_rule(const LintFacts& f) {
  if (!f.tokenizer_chat_format || f.chat_template == "auto") return std::nullopt;
  const std::string wanted = f.chat_template == "mistral_v3" ? "v3" : "v1";
  if (wanted == *f.tokenizer_chat_format) return std::nullopt;
  const bool v1_on_v3 = wanted == "v1";
  return warn("chat-template",
              fmt::format("[data] chat_template = \"{}\" does not fit the tokenizer: {}", f.chat_template,
                          v1_on_v3 ? "it has [INST]/[/INST] control tokens (v3), so v1's plain-text markers are "
                                     "tokenized as ordinary text"
                                   : "it has no [INST] control tokens (v1), so v3's markers do not exist in it"),
              fmt::format("set chat_template = \"auto\" (or \"mistral_{}\")", *f.tokenizer_chat_format));
}

std::optional<LintWarning> train_on_inputs_rule(const LintFacts& f) {
  if (!f.train_on_inputs || !f.instruction_data) return std::nullopt;
  return warn("train-on-inputs",
              "[data] train_on_inputs = true on instruction/chat data: the loss also trains the model to write the "
              "prompts",
              "set train_on_inputs = false (loss on the assistant answers only)");
}

std::optional<LintWarning> lora_lr_rule(const LintFacts& f) {
  if (f.adapter.empty() || f.learning_rate <= kMaxLoraLearningRate) return std::nullopt;
  return warn("lora-lr",
              fmt::format("[schedule] learning_rate {:g} is far above the usual LoRA range for Mistral (1e-4 to {:g})",
                          f.learning_rate, kMaxLoraLearningRate),
              fmt::format("set learning_rate = 2e-4 or lower (a random base, as in the quickstart, is the exception)"));
}

std::optional<LintWarning> warmup_rule(const LintFacts& f) {
  if (f.warmup_steps > 0 || f.warmup_ratio > 0) return std::nullopt;
  return warn("no-warmup", "[schedule] has no warmup: the first updates at the full learning rate can diverge",
              "set warmup_steps = 10 (or warmup_ratio = 0.03)");
}

std::optional<LintWarning> lora_rank_rule(const LintFacts& f) {
  if (f.adapter.empty() || f.lora_r <= kMaxLoraRank7B || !f.model_parameters ||
      *f.model_parameters < kSevenBParameters)
    return std::nullopt;
  return warn("lora-rank",
              fmt::format("[adapter] r = {} on a {:.1f}B-parameter model: ranks above {} cost memory and rarely help",
                          f.lora_r, double(*f.model_parameters) / 1e9, kMaxLoraRank7B),
              "set r between 8 and 64 (alpha = 2 x r)");
}

std::optional<LintWarning> lora_alpha_rule(const LintFacts& f) {
  if (f.adapter.empty() || f.lora_r <= 0 || f.lora_alpha <= 0) return std::nullopt;
  const double ratio = f.lora_alpha / double(f.lora_r);
  if (ratio >= kMinAlphaRatio && ratio <= kMaxAlphaRatio) return std::nullopt;
  return warn("lora-alpha",
              fmt::format("[adapter] alpha / r = {:g} / {} = {:g} is far from the usual 1 to 2 (the update is scaled "
                          "by alpha / r)",
                          f.lora_alpha, f.lora_r, ratio),
              fmt::format("set alpha = {} (2 x r)", 2 * f.lora_r));
}

std::optional<LintWarning> context_collapse_rule(const LintFacts& f) {
  if (!f.longest_example || *f.longest_example <= 0 || *f.longest_example * kCollapseFactor > f.sequence_len)
    return std::nullopt;
  int64_t fit = 8;
  while (fit < *f.longest_example) fit <<= 1;
  return warn("context-collapse",
              fmt::format("every example is far shorter than sequence_len {} (the longest has {} tokens): rows are "
                          "mostly padding or many unrelated documents",
                          f.sequence_len, *f.longest_example),
              fmt::format("set [training] sequence_len = {}", fit));
}

std::optional<LintWarning> save_steps_rule(const LintFacts& f) {
  if (f.save_steps <= 0 || !f.total_steps || f.save_steps <= *f.total_steps) return std::nullopt;
  return warn("save-steps",
              fmt::format("[training] save_steps {} is larger than the run ({} steps): no intermediate checkpoint "
                          "is written",
                          f.save_steps, *f.total_steps),
              fmt::format("set save_steps <= {} (or 0: only at the end)", *f.total_steps));
}

std::optional<LintWarning> eval_split_rule(const LintFacts& f) {
  const bool empty = f.eval_examples ? *f.eval_examples == 0 : !f.eval_dataset && f.val_set_size <= 0;
  if (!empty) return std::nullopt;
  return warn("eval-empty",
              f.eval_examples && (f.eval_dataset || f.val_set_size > 0)
                  ? "the eval split is empty (val_set_size rounds to 0 examples): no eval loss is measured"
                  : "no eval split: no [[datasets]] with split = \"eval\" and [data] val_set_size = 0, so no eval loss "
                    "is measured",
              "set [data] val_set_size = 0.02, or add a [[datasets]] with split = \"eval\"");
}

}  // namespace

std::string LintWarning::line() const { return fmt::format("warning [{}]: {}; fix: {}", rule, message, fix); }

const std::vector<LintRule>& lint_rules() {
  static const std::vector<LintRule> rules = {
      {"sliding-window", sliding_window_rule}, {"chat-template", chat_template_rule},
      {"train-on-inputs", train_on_inputs_rule}, {"lora-lr", lora_lr_rule},
      {"no-warmup", warmup_rule},             {"lora-rank", lora_rank_rule},
      {"lora-alpha", lora_alpha_rule},         {"context-collapse", context_collapse_rule},
      {"save-steps", save_steps_rule},         {"eval-empty", eval_split_rule},
  };
  return rules;
}

std::vector<LintWarning> lint(const LintFacts& facts) {
  std::vector<LintWarning> out;
  for (const auto& rule : lint_rules())
    if (auto w = rule.check(facts)) out.push_back(std::move(*w));
  return out;
}

LintFacts lint_facts(const Recipe& recipe, const Plan* plan) {
  LintFacts f;
  f.recipe_path = recipe.path();
  const auto& training = recipe.section("training");
  const auto& schedule = recipe.section("schedule");
  const auto& data = recipe.section("data");
  f.sequence_len = training.get_int("sequence_len");
  f.save_steps = training.get_int("save_steps");
  f.learning_rate = schedule.get_number("learning_rate");
  f.warmup_steps = schedule.get_int("warmup_steps");
  f.warmup_ratio = schedule.get_number("warmup_ratio");
  f.train_on_inputs = data.get_bool("train_on_inputs");
  f.chat_template = data.get_string("chat_template");
  f.val_set_size = data.get_number("val_set_size");
  for (const auto& d : recipe.datasets()) {
    if (d.get_string("split") == "eval") f.eval_dataset = true;
    if (d.get_string("type") != "completion") f.instruction_data = true;
  }
  const TrainingFacts t = training_facts(recipe);
  f.packer = t.packer;
  f.adapter = t.adapter;
  // The rank rules read LoRA-style keys where an adapter declares them (the
  // plan's estimate itself asks the adapter's planning hook instead).
  if (const auto* a = recipe.component("adapter")) {
    if (a->config.has("r")) f.lora_r = a->config.get_int("r");
    if (a->config.has("alpha")) f.lora_alpha = a->config.get_number("alpha");
  }
  if (training.get_int("max_steps") > 0) f.total_steps = training.get_int("max_steps");
  if (plan) {
    f.packer = plan->training.packer;
    f.packer_window_aware = plan->training.packer_window_aware;
    f.model_known = true;
    f.model_parameters = plan->model.parameters();
    f.sliding_window = plan->model.sliding_window;
    if (plan->data.available) {
      f.longest_example = plan->data.longest_example;
      f.eval_examples = plan->data.eval_examples;
      f.total_steps = plan->steps.total_steps;
    }
    const auto tok = fs::path(plan->model.path) / "tokenizer.model";
    if (fs::exists(tok)) f.tokenizer_chat_format = chat_format_name(detect_chat_format(*Tokenizer::load(plan->model.path)));
  }
  return f;
}

LintFacts lint_facts_without_data(const Recipe& recipe, Registry& registry) {
  LintFacts f = lint_facts(recipe, nullptr);
  f.packer_window_aware = packer_respects_sliding_window(registry, f.packer);
  const auto* model = recipe.component("model");
  if (!model || !fs::exists(fs::path(model->config.get_string("path")) / "config.json")) return f;
  const ModelFacts m = read_model_facts(recipe, registry);
  f.model_known = true;
  f.model_parameters = m.parameters();
  f.sliding_window = m.sliding_window;
  if (fs::exists(fs::path(m.path) / "tokenizer.model"))
    f.tokenizer_chat_format = chat_format_name(detect_chat_format(*Tokenizer::load(m.path)));
  return f;
}

void report_lint(const std::vector<LintWarning>& warnings, bool strict, const std::string& recipe_path) {
  for (const auto& w : warnings) std::fprintf(stderr, "%s: %s\n", recipe_path.c_str(), w.line().c_str());
  if (strict && !warnings.empty())
    throw UsageError(fmt::format("{}: {} lint warning(s) with --strict", recipe_path, warnings.size()),
                     "fix each line above, or run without --strict to treat them as warnings");
}

}  // namespace mftk::core
