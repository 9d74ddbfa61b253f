// Recipe lint: settings that are legal but usually a mistake, each reported
// as one line with its fix. `validate`, `plan` and `run` print them; with
// --strict they stop the command (UsageError, exit 2).
//
// defines: mftk::core::LintFacts, mftk::core::LintWarning, mftk::core::LintRule,
//          mftk::core::lint_rules, mftk::core::lint_facts, mftk::core::lint,
//          mftk::core::report_lint
//
// Every rule is a small function of LintFacts: what the recipe says plus
// what is known about the model, tokenizer and data at that point (validate
// knows no data; plan and run do). A rule whose facts are unknown stays silent.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace mftk::core {

class Recipe;
class Registry;
struct Plan;

struct LintFacts {
  std::string recipe_path;
  // [training] / [schedule] / [data]
  int64_t sequence_len = 2048;
  int64_t save_steps = 0;
  double learning_rate = 2e-4;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0;
  bool train_on_inputs = false;
  std::string chat_template = "auto";  // auto | mistral_v1 | mistral_v3
  double val_set_size = 0;
  bool eval_dataset = false;           // some [[datasets]] has split = "eval"
  bool instruction_data = false;       // some dataset is instruction or chat rows
  std::string packer;                  // the packer the run uses
  bool packer_window_aware = false;    // it declares the respects_sliding_window trait
  // [adapter] (LoRA-style keys; empty adapter: full fine-tuning)
  std::string adapter;
  int64_t lora_r = 0;
  double lora_alpha = 0;
  // model (config.json), when readable
  std::optional<int64_t> model_parameters;
  std::optional<int64_t> sliding_window;  // set only when the model has one
  bool model_known = false;
  // tokenizer, when readable: "v1" | "v3"
  std::optional<std::string> tokenizer_chat_format;
  // data, when tokenized
  std::optional<int64_t> longest_example;
  std::optional<int64_t> eval_examples;
  std::optional<int64_t> total_steps;
};

struct LintWarning {
  std::string rule;  // short id, e.g. "lora-lr"
  std::string message;
  std::string fix;
  std::string line() const;  // "warning [rule]: message; fix: ..."
};

struct LintRule {
  std::string id;
  std::function<std::optional<LintWarning>(const LintFacts&)> check;
};
const std::vector<LintRule>& lint_rules();

// The recipe's own facts; `plan` (may be null) adds model, tokenizer and data.
LintFacts lint_facts(const Recipe& recipe, const Plan* plan);
// Facts for `validate`: the recipe plus config.json and the tokenizer when
// model.path has them (nothing heavy: no weights, no data).
LintFacts lint_facts_without_data(const Recipe& recipe, Registry& registry);
std::vector<LintWarning> lint(const LintFacts& facts);

// Prints each warning (stderr, one line each) and, when strict and any
// fired, throws UsageError naming how many and where.
void report_lint(const std::vector<LintWarning>& warnings, bool strict, const std::string& recipe_path);

}  // namespace mftk::core
