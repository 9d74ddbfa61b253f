// mftk run | validate | plugins
#include <cstdio>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "mftk/adapter.h"
#include "mftk/exporter.h"
#include "mftk/model.h"
#include "mftk/objective.h"
#include "mftk/optimizer.h"
#include "mftk/output_path.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "device.h"
#include "distributed.h"
#include "lint.h"
#include "pipeline.h"
#include "plan.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::cli {

void add_recipe_options(CLI::App* cmd, RecipeArgs& args) {
  cmd->add_option("recipe", args.path, "recipe TOML file")->required();
  cmd->add_option("--set", args.overrides, "override a recipe key: table.key=value (repeatable)")
      ->take_all()
      ->allow_extra_args(false);
}

namespace {

// Loads, resolves and builds every component once, so a plugin's own
// checks run too; nothing heavy happens (no weights, no data).
void validate_recipe(core::Recipe& recipe, core::Registry& registry) {
  recipe.resolve(registry);
  std::vector<std::string> lines;
  auto build = [&](const core::ComponentRef& c) {
    switch (c.kind) {
      case Kind::model: registry.create<Model>(c.kind, c.plugin, c.config); break;
      case Kind::adapter: registry.create<Adapter>(c.kind, c.plugin, c.config); break;
      case Kind::quantizer: registry.create<Quantizer>(c.kind, c.plugin, c.config); break;
      case Kind::packer: registry.create<Packer>(c.kind, c.plugin, c.config); break;
      case Kind::optimizer: registry.create<Optimizer>(c.kind, c.plugin, c.config); break;
      case Kind::exporter: registry.create<Exporter>(c.kind, c.plugin, c.config); break;
      case Kind::objective: registry.create<Objective>(c.kind, c.plugin, c.config); break;
    }
    lines.push_back(fmt::format("  [{}] {} ({})", c.table, c.plugin, registry.find(c.kind, c.plugin).library_path));
  };
  for (const auto& [table, kind] : core::component_tables())
    if (const auto* c = recipe.component(table)) build(*c);
  for (const auto& e : recipe.exports()) build(e);
  if (!recipe.component("model"))
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                 core::kDefaultModelPlugin));
  std::printf("recipe %s is valid\n", recipe.path().c_str());
  for (const auto& l : lines) std::printf("%s\n", l.c_str());
  std::printf("  %zu dataset(s)\n", recipe.datasets().size());
}

// Rank 0's work before training: claims output_dir, makes the plan and
// lints the recipe with it. The plan's predictions go beside the measured
// values in report.html; its data pass fills the prepared-data cache the run
// then reads. A plan that cannot be made (a component it has no model of,
// say) must not stop a run that would work: the report then has no predictions.
std::shared_ptr<core::Plan> plan_and_lint(core::Recipe& recipe, core::Registry& registry, const std::string& device,
                                          bool strict) {
  std::shared_ptr<core::Plan> plan;
  // output_dir first: a folder of the user's is refused before any work.
  claim_work_folder(recipe.section("training").get_string("output_dir"), core::kRunOutputKind);
  try {
    core::PlanOptions plan_options;
    plan_options.device = core::plan_device_for(device);  // the report's predictions are for this device
    plan = std::make_shared<core::Plan>(core::make_plan(recipe, registry, plan_options));
  } catch (const UsageError&) {
    throw;  // bad data or recipe: the run would fail the same way
  } catch (const std::exception& e) {
    spdlog::warn("plan: no estimate for this recipe ({}); training goes on without predictions", e.what());
  }
  const auto warnings = core::lint(core::lint_facts(recipe, plan.get()));
  if (plan)
    for (const auto& w : warnings) plan->lint.push_back(w.line());
  core::report_lint(warnings, strict, recipe.path());
  return plan;
}

// mftk run: loads the recipe, checks the device, plans (rank 0) and runs the pipeline.
void run_recipe(const RecipeArgs& args, const std::string& output_dir, bool strict) {
  auto overrides = args.overrides;
  if (!output_dir.empty()) overrides.push_back("training.output_dir=\"" + output_dir + "\"");
  auto recipe = core::Recipe::load(args.path, overrides);
  core::Registry registry(recipe.section("plugins").get_strings("search_paths"));
  recipe.resolve(registry);
  // The device before any work: a GPU this libtorch or machine cannot
  // give stops here (exit 2), not after the plan's data pass.
  const auto env = core::DistributedEnv::from_env();
  const std::string device = recipe.section("training").get_string("device");
  if (const auto setting = core::parse_device_setting(device))
    core::resolve_device(*setting, core::cuda_support(), env.world_size, env.local_rank);
  // Only rank 0 writes the report: other ranks of a data-parallel run
  // skip the plan's data pass and leave the lint to rank 0.
  std::shared_ptr<core::Plan> plan;
  if (env.rank == 0) plan = plan_and_lint(recipe, registry, device, strict);
  const int code = core::run_pipeline(recipe, registry, plan.get());
  if (code != 0) std::exit(code);
}

void add_run_command(CLI::App& app) {
  auto args = std::make_shared<RecipeArgs>();
  auto out = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("run", "train (and merge/export) as the recipe says");
  add_recipe_options(cmd, *args);
  cmd->add_option("--output-dir", *out, "override training.output_dir");
  auto strict = std::make_shared<bool>(false);
  cmd->add_flag("--strict", *strict, "lint warnings are errors (exit 2) before anything runs");
  cmd->callback([args, out, strict] { run_recipe(*args, *out, *strict); });
}

// mftk validate: every component built from the recipe, then the lint without data.
void add_validate_command(CLI::App& app) {
  auto args = std::make_shared<RecipeArgs>();
  auto* cmd = app.add_subcommand("validate", "resolve every plugin and check every key; trains nothing");
  add_recipe_options(cmd, *args);
  auto strict = std::make_shared<bool>(false);
  cmd->add_flag("--strict", *strict, "lint warnings are errors (exit 2)");
  cmd->callback([args, strict] {
    auto recipe = core::Recipe::load(args->path, args->overrides);
    core::Registry registry(recipe.section("plugins").get_strings("search_paths"));
    validate_recipe(recipe, registry);
    std::fflush(stdout);
    core::report_lint(core::lint(core::lint_facts_without_data(recipe, registry)), *strict, recipe.path());
  });
}

// `mftk plugins --keys NAME`: the recipe keys of every component named NAME,
// with type, default and doc; a UsageError listing the names when none is.
void print_component_keys(core::Registry& registry, const std::string& name) {
  bool found = false;
  for (Kind k : {Kind::model, Kind::adapter, Kind::quantizer, Kind::packer, Kind::optimizer, Kind::exporter,
                 Kind::objective})
    for (const auto* c : registry.components(k)) {
      if (c->spec.name != name) continue;
      found = true;
      std::printf("%s (%s) from %s\n  %s\n\n", c->spec.name.c_str(), to_string(k), c->library_path.c_str(),
                  c->spec.summary.c_str());
      if (!c->spec.traits.empty())
        std::printf("  traits: %s\n\n", fmt::format("{}", fmt::join(c->spec.traits, ", ")).c_str());
      std::printf("  %-24s %-16s %-14s %s\n", "key", "type", "default", "doc");
      std::printf("  %-24s %-16s %-14s %s\n", "plugin", "string", "(required)",
                  ("\"" + c->spec.name + "\"").c_str());
      for (const auto& key : c->spec.keys) {
        std::string doc = key.doc;
        if (!key.choices.empty()) doc += fmt::format(" ({})", fmt::join(key.choices, "|"));
        if (key.min || key.max) doc += fmt::format(" [{}, {}]", key.min ? *key.min : -INFINITY,
                                                   key.max ? *key.max : INFINITY);
        std::printf("  %-24s %-16s %-14s %s\n", key.name.c_str(), to_string(key.type),
                    key.default_value ? to_toml(*key.default_value).c_str() : "(required)", doc.c_str());
      }
    }
  if (!found) {
    std::vector<std::string> names;
    for (Kind k : {Kind::model, Kind::adapter, Kind::quantizer, Kind::packer, Kind::optimizer, Kind::exporter,
                 Kind::objective})
      for (const auto* c : registry.components(k)) names.push_back(c->spec.name);
    throw UsageError(fmt::format("no plugin component named '{}'. Found: {}", name, fmt::join(names, ", ")));
  }
}

// mftk plugins: every plugin library found (name, version, load status,
// components, path), or with --keys one component's recipe keys.
void add_plugins_command(CLI::App& app) {
  auto keys_of = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("plugins", "list every plugin found: name, kind, version, path");
  cmd->add_option("--keys", *keys_of, "print the recipe keys of one component, with docs");
  cmd->callback([keys_of] {
    core::Registry registry;
    auto libs = registry.scan();
    if (!keys_of->empty()) {
      print_component_keys(registry, *keys_of);
      return;
    }
    std::printf("plugin search path:\n");
    for (const auto& p : registry.search_paths()) std::printf("  %s\n", p.c_str());
    std::printf("\n%-18s %-10s %-22s %-34s %s\n", "library", "version", "status", "components", "path");
    for (const auto& l : libs) {
      std::printf("%-18s %-10s %-22s %-34s %s\n", l.name.empty() ? "?" : l.name.c_str(),
                  l.version.empty() ? "-" : l.version.c_str(), core::to_string(l.status),
                  fmt::format("{}", fmt::join(l.components, " ")).c_str(), l.path.c_str());
      if (!l.detail.empty()) std::printf("  -> %s\n", l.detail.c_str());
    }
    if (libs.empty()) std::printf("(no plugin libraries found; set MFTK_PLUGIN_PATH)\n");
  });
}

}  // namespace

void add_recipe_commands(CLI::App& app) {
  add_run_command(app);
  add_validate_command(app);
  add_plugins_command(app);
}

}  // namespace mftk::cli
