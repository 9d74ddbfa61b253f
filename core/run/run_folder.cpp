// Run folders read back, and the resolved-recipe record (run_folder.h).
#include "run_folder.h"

#include <filesystem>
#include <variant>

#include <fmt/format.h>

#include "fs_util.h"
#include "mftk/error.h"
#include "recipe.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

nlohmann::json value_json(const Value& v) {
  return std::visit([](const auto& x) { return nlohmann::json(x); }, v);
}

nlohmann::json config_json(const Config& config) {
  nlohmann::json table = nlohmann::json::object();
  for (const auto& [key, entry] : config.entries()) table[key] = value_json(entry.value);
  return table;
}

nlohmann::json component_json(const ComponentRef& ref) {
  nlohmann::json table = config_json(ref.config);
  table["plugin"] = ref.plugin;
  return table;
}

// A JSON file of the run, or null when it is not there.
nlohmann::json read_json_file(const fs::path& path, const std::string& run) {
  if (!fs::exists(path)) return nullptr;
  auto j = nlohmann::json::parse(read_file(path.string()), nullptr, false);
  if (j.is_discarded() || !j.is_object())
    throw UsageError(fmt::format("{}: {} is not a JSON object", run, path.string()),
                     "the run may have been cut off while writing it; run it again, or leave it out of the comparison");
  return j;
}

}  // namespace

nlohmann::json resolved_recipe_json(const Recipe& recipe) {
  nlohmann::json tables = nlohmann::json::object();
  for (const auto& [table, keys] : core_tables())
    if (table != "datasets") tables[table] = config_json(recipe.section(table));
  tables["datasets"] = nlohmann::json::array();
  for (const auto& d : recipe.datasets()) tables["datasets"].push_back(config_json(d));
  for (const auto& [table, kind] : component_tables())
    if (const auto* ref = recipe.component(table)) tables[table] = component_json(*ref);
  if (!recipe.exports().empty()) {
    tables["export"] = nlohmann::json::array();
    for (const auto& e : recipe.exports()) tables["export"].push_back(component_json(e));
  }
  return {{"written_by", "mftk"}, {"source", recipe.path()}, {"recipe", tables}};
}

void write_resolved_recipe(const std::string& output_dir, const Recipe& recipe) {
  write_file_atomic((fs::path(output_dir) / kResolvedRecipeFile).string(), resolved_recipe_json(recipe).dump(2) + "\n");
}

RunFolder load_run_folder(const std::string& path) {
  const std::string hint = "mftk compare reads the output_dir of `mftk run` (metrics.jsonl, summary.json, "
                           "recipe.resolved.json)";
  std::error_code ec;
  if (!fs::is_directory(path, ec))
    throw UsageError(fmt::format("{}: {}", path, fs::exists(path, ec) ? "is not a folder" : "no such folder"), hint);
  const fs::path dir(path);
  if (!fs::is_regular_file(dir / "metrics.jsonl", ec))
    throw UsageError(fmt::format("{}: not an mftk run folder: it has no metrics.jsonl", path), hint);
  RunFolder run;
  run.path = path;
  // The name as given, less a trailing slash: what the user calls the run.
  run.name = path;
  while (run.name.size() > 1 && run.name.back() == '/') run.name.pop_back();
  run.metrics = read_metrics((dir / "metrics.jsonl").string());
  run.summary = read_json_file(dir / "summary.json", path);
  const auto record = read_json_file(dir / kResolvedRecipeFile, path);
  if (record.is_object() && record.contains("recipe")) run.recipe = record["recipe"];
  return run;
}

}  // namespace mftk::core
