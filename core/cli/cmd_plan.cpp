// mftk plan: the pre-flight estimate of a recipe (core/run/plan.h), with its lint.
#include <cstdio>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "fs_util.h"
#include "lint.h"
#include "plan.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::cli {

namespace {

// A plan file `mftk plan --json` wrote: a JSON object with the plan's sections.
bool is_plan_json(const std::string& path) {
  try {
    const auto j = nlohmann::json::parse(core::read_file(path));
    for (const char* key : {"device", "memory", "steps", "data", "time", "lint"})
      if (!j.is_object() || !j.contains(key)) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace

void add_plan_commands(CLI::App& app) {
  struct Args {
    RecipeArgs recipe;
    std::string device;  // empty: as the recipe's [training] device resolves here
    double gpu_memory_gb = 0;
    int64_t measure = 0;
    bool strict = false;
    std::string json_out;
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("plan", "estimate memory, steps, time and data fit of a recipe; trains nothing");
  add_recipe_options(cmd, a->recipe);
  cmd->add_option("--device", a->device,
                  "cpu (this machine) or cuda (a GPU run); default: where the recipe's [training] device puts the "
                  "run here (auto: cuda only with a CUDA libtorch and a visible GPU)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--gpu-memory", a->gpu_memory_gb, "device memory in GB to compare against (cuda default 24)");
  cmd->add_option("--measure", a->measure, "time N optimizer steps on this machine (loads the weights)");
  cmd->add_flag("--strict", a->strict, "lint warnings are errors (exit 2)");
  cmd->add_option("--json", a->json_out, "also write the plan as JSON to this file");
  cmd->callback([a] {
    // --json FILE: new, or a plan file this command wrote; checked before the work.
    if (!a->json_out.empty()) check_output_path(a->json_out, "plan-json", OutputShape::file, is_plan_json);
    auto recipe = core::Recipe::load(a->recipe.path, a->recipe.overrides);
    core::Registry registry(recipe.section("plugins").get_strings("search_paths"));
    recipe.resolve(registry);
    core::PlanOptions options;
    options.device = a->device.empty() ? core::plan_device_for(recipe.section("training").get_string("device"))
                     : a->device == "cuda" ? core::PlanDevice::cuda
                                           : core::PlanDevice::cpu;
    options.gpu_memory_gb = a->gpu_memory_gb;
    auto plan = core::make_plan(recipe, registry, options);
    const auto warnings = core::lint(core::lint_facts(recipe, &plan));
    for (const auto& w : warnings) plan.lint.push_back(w.line());
    core::measure_steps(recipe, registry, a->measure, plan);
    std::fputs(core::format_plan(plan).c_str(), stdout);
    std::fflush(stdout);
    if (!a->json_out.empty()) {
      OutputGuard out(a->json_out, "plan-json", OutputShape::file, is_plan_json);
      write_file_atomic(out.path(), core::plan_json(plan).dump(2) + "\n");
      out.commit();
    }
    core::report_lint(warnings, a->strict, recipe.path());
  });
}

}  // namespace mftk::cli
