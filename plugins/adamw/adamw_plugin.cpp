// libmftk-adamw: registers the fp32 optimizers "adamw" and "sgd".
#include <memory>

#include "adamw_optimizer.h"
#include "mftk/plugin.h"
#include "sgd_optimizer.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_optimizer(
      {mftk::Kind::optimizer, "adamw",
       "AdamW with float32 moments, identical to torch.optim.AdamW (decoupled weight decay)",
       mftk::adamw::adamw_keys()},
      [](const mftk::Config& config) {
        return std::make_unique<mftk::adamw::AdamW>(mftk::adamw::adamw_options_from_config(config));
      });
  registrar.add_optimizer(
      {mftk::Kind::optimizer, "sgd", "SGD with optional momentum and L2 weight decay (torch.optim.SGD)",
       mftk::adamw::sgd_keys()},
      [](const mftk::Config& config) {
        return std::make_unique<mftk::adamw::Sgd>(mftk::adamw::sgd_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("adamw", "0.1.0", register_components)
