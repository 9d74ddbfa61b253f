// `mftk compare`: several runs side by side, so a user sees what changing
// one thing did. One self-contained HTML page (compare.html): every run's
// curves on shared axes, one colour per run; the summary.json figures in a
// table with a column per run; and the recipe keys whose values differ,
// plugin swaps first. A short text table of the same runs for the terminal.
//
// defines: mftk::core::RecipeDifference, mftk::core::recipe_differences, mftk::core::compare_html,
//          mftk::core::compare_text, mftk::core::kCompareGenerator, mftk::core::write_compare_html
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_folder.h"

namespace mftk::core {

// One recipe key whose value is not the same in every run.
struct RecipeDifference {
  std::string key;          // "adapter.r", "datasets[1].path", "export[0].plugin"
  bool plugin_swap = false; // a `plugin` key: another component in that table
  std::vector<std::optional<std::string>> values;  // per run, as TOML writes it; nullopt: the run has no such key
};

// The keys (tables flattened to "table.key", arrays of tables to
// "table[i].key", nested tables to "a.b.c"; any other array is one value)
// whose values differ between the recipes, `plugin` keys first, each group
// in key order. Keys in `ignored` never count (by default
// training.output_dir, which differs between any two runs).
std::vector<RecipeDifference> recipe_differences(const std::vector<nlohmann::json>& recipes,
                                                 const std::vector<std::string>& ignored = {"training.output_dir"});

// The <meta name="generator"> compare.html carries: how `mftk compare`
// knows a file it may replace is its own.
inline constexpr const char* kCompareGenerator = "mftk compare";

std::string compare_html(const std::vector<RunFolder>& runs);
// run, steps, final loss, eval loss, tokens/s; then the recipe differences.
std::string compare_text(const std::vector<RunFolder>& runs);

// Writes compare_html to `out` through OutputGuard: onto a missing path or
// a compare.html this command wrote before; anything else is refused.
void write_compare_html(const std::string& out, const std::vector<RunFolder>& runs);

}  // namespace mftk::core
