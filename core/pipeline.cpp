// `mftk run`: the whole flow of a fine-tuning run, top to bottom.
#include "pipeline.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mftk/model.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::core {

void run_pipeline(const Recipe& recipe, Registry& registry) {
  const auto& training = recipe.section("training");
  if (int64_t t = training.get_int("threads"); t > 0) at::set_num_threads(int(t));
  const auto* model_ref = recipe.component("model");
  if (!model_ref)
    throw UsageError(fmt::format("{}: the recipe has no [model] table", recipe.path()),
                     "add [model] with plugin = \"mistral\" and path = \"<checkpoint folder>\"");
  auto model = registry.create<Model>(Kind::model, model_ref->plugin, model_ref->config);
  spdlog::info("model: {} from {}", model_ref->plugin, model_ref->config.get_string("path"));
  throw Error("mftk run: the training engine is not built yet (tracked in the training-engine issue); "
              "`mftk validate` checks this recipe fully");
}

}  // namespace mftk::core
