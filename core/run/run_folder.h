// A run's output_dir read back, for `mftk compare`; and the resolved recipe
// every `mftk run` records there so that runs can be compared key by key.
//
// recipe.resolved.json holds the recipe after --set overrides and defaults:
// every core table with all its keys, and each component table the recipe
// names with its plugin and all of that plugin's keys. A component the
// recipe leaves out (the run then uses a built-in fallback, e.g. the packer)
// is absent, as it is from the recipe.
//
// defines: mftk::core::kResolvedRecipeFile, mftk::core::resolved_recipe_json,
//          mftk::core::write_resolved_recipe, mftk::core::RunFolder, mftk::core::load_run_folder
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "run_log.h"

namespace mftk::core {

class Recipe;

inline constexpr const char* kResolvedRecipeFile = "recipe.resolved.json";

// {"written_by": "mftk", "source": <recipe path>, "recipe": {<table>: {<key>: value}, "datasets": [...],
//  "export": [...]}}; a component table holds "plugin" beside its keys.
nlohmann::json resolved_recipe_json(const Recipe& recipe);
// Writes <output_dir>/recipe.resolved.json (atomically).
void write_resolved_recipe(const std::string& output_dir, const Recipe& recipe);

struct RunFolder {
  std::string name;        // as the user named the folder (the comparison's column heading)
  std::string path;
  nlohmann::json summary;  // summary.json; null while the run has not finished
  MetricPoints metrics;    // metrics.jsonl
  nlohmann::json recipe;   // recipe.resolved.json's "recipe"; null for runs that did not record it
};

// Reads a run folder. Throws UsageError (exit 2) naming the folder and what
// it lacks when it is not one: a run folder holds metrics.jsonl from its
// first logged step on. A summary.json or recipe.resolved.json that does not
// parse is refused the same way.
RunFolder load_run_folder(const std::string& path);

}  // namespace mftk::core
