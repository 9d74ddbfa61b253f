// The recipe read once into a RunSpec (run_spec.h): typed values, every
// path the run writes, the component chosen for each role.
#include "run_spec.h"

#include <filesystem>

#include "batching.h"
#include "defaults.h"
#include "model_tools.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::core {

namespace fs = std::filesystem;

RunPaths::RunPaths(const std::string& dir) : output_dir(dir) {
  auto in = [&](const char* name) { return (fs::path(dir) / name).string(); };
  log = in("mftk.log");
  metrics = in(kMetricsFile);
  summary = in("summary.json");
  loss_curve = in("loss_curve.svg");
  report = in("report.html");
  adapter = in("adapter");
  model = in("model");
  merged = in("merged");
}

std::string RunPaths::export_target(const std::string& out) const {
  const fs::path p = out;
  return p.is_absolute() ? p.string() : (fs::path(output_dir) / p).string();
}

bool RunSpec::wants_merge() const { return merge_adapter || (recipe && !recipe->exports().empty()); }

namespace {

// The recipe's table for a role, or `fallback` with its plugin's defaults
// (no table and no fallback: nullopt).
std::optional<ComponentChoice> choose(const Recipe& recipe, Registry& registry, const std::string& table, Kind kind,
                                      const std::string& fallback) {
  ComponentChoice c;
  c.table = table;
  c.kind = kind;
  if (const auto* ref = recipe.component(table)) {
    c.plugin = ref->plugin;
    c.config = ref->config;
    c.from_recipe = true;
    return c;
  }
  if (fallback.empty()) return std::nullopt;
  c.plugin = fallback;
  c.config = component_config(registry, kind, fallback, table);
  return c;
}

}  // namespace

RunSpec make_run_spec(const Recipe& recipe, Registry& registry) {
  const Config& training = recipe.section("training");
  const Config& validate = recipe.section("validate");
  RunSpec s;
  s.recipe = &recipe;
  s.paths = RunPaths(training.get_string("output_dir"));

  const auto* model = recipe.component("model");
  if (!model)
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     fmt::format("add [model] with plugin = \"{}\" and path = \"<checkpoint folder>\"",
                                 kDefaultModelPlugin));
  s.model = *choose(recipe, registry, "model", Kind::model, "");
  s.model_path = model->config.get_string("path");
  s.quantize = choose(recipe, registry, "quantize", Kind::quantizer, "");
  s.adapter = choose(recipe, registry, "adapter", Kind::adapter, "");
  // An adapter table's `path` (when its plugin declares one) names a saved
  // adapter to continue from, e.g. an SFT adapter under a DPO run.
  if (s.adapter && s.adapter->config.has("path")) {
    const std::string start = s.adapter->config.get_string("path");
    if (!start.empty()) s.adapter_start = recipe.resolve_path(start);
  }
  s.objective = *choose(recipe, registry, "objective", Kind::objective, kDefaultObjectivePlugin);
  s.packer = *choose(recipe, registry, "packer", Kind::packer, default_packer(training.get_bool("sample_packing")));
  s.optimizer = *choose(recipe, registry, "optimizer", Kind::optimizer, kDefaultOptimizerPlugin);

  s.sequence_len = training.get_int("sequence_len");
  s.micro_batch_size = training.get_int("micro_batch_size");
  s.gradient_accumulation_steps = training.get_int("gradient_accumulation_steps");
  s.max_grad_norm = training.get_number("max_grad_norm");
  s.bf16 = training.get_bool("bf16");
  s.gradient_checkpointing = training.get_bool("gradient_checkpointing");
  s.merge_adapter = training.get_bool("merge_adapter");
  s.seed = uint64_t(training.get_int("seed"));
  s.threads = training.get_int("threads");
  const auto device = parse_device_setting(training.get_string("device"));
  if (!device) training.fail("device", "not one of auto, cpu, cuda, cuda:N");
  s.device = *device;
  s.distributed_timeout_s = training.get_number("distributed_timeout_s");

  s.data = data_options_from_recipe(recipe);
  s.chat_template = recipe.section("data").get_string("chat_template");
  s.preference_data = is_preference_data(s.data);
  s.pack = pack_options_from_recipe(recipe);
  s.train = TrainOptions::from_recipe(recipe);

  s.validate.exact_match = validate.get_int("exact_match");
  s.validate.prompts = validate.get_strings("prompts");
  s.validate.max_new_tokens = validate.get_int("max_new_tokens");
  s.validate.temperature = validate.get_number("temperature");
  return s;
}

}  // namespace mftk::core
