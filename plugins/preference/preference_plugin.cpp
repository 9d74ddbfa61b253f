// libmftk-preference: registers the preference objectives "dpo" and "orpo".
#include <memory>

#include "mftk/plugin.h"
#include "preference_objectives.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  using namespace mftk::preference;
  registrar.add_objective(
      {mftk::Kind::objective, "dpo",
       "direct preference optimisation on chosen/rejected pairs (TRL's sigmoid and ipo losses)", dpo_keys()},
      [](const mftk::Config& config) { return std::make_unique<DpoObjective>(dpo_options_from_config(config)); });
  registrar.add_objective(
      {mftk::Kind::objective, "orpo", "odds-ratio preference optimisation: chosen NLL plus an odds-ratio term, no reference",
       orpo_keys()},
      [](const mftk::Config& config) { return std::make_unique<OrpoObjective>(orpo_options_from_config(config)); });
}

}  // namespace

MFTK_PLUGIN("preference", "0.1.0", register_components)
