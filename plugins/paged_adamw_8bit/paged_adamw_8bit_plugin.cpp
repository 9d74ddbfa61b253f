// libmftk-paged_adamw_8bit: registers "paged_adamw_8bit" and its unpaged
// twin "adamw_8bit" (bitsandbytes' blockwise 8-bit AdamW).
#include <memory>

#include "adamw_8bit.h"
#include "mftk/plugin.h"

namespace {

namespace p8 = mftk::paged_adamw_8bit;

void register_components(mftk::Registrar& registrar) {
  registrar.add_optimizer(
      {mftk::Kind::optimizer, "paged_adamw_8bit",
       "8-bit blockwise AdamW (bitsandbytes PagedAdamW8bit): ~2 bytes of state per parameter, in host pages",
       p8::adamw_8bit_keys(true)},
      [](const mftk::Config& config) {
        return std::make_unique<p8::AdamW8bit>(p8::adamw_8bit_options_from_config(config, true));
      });
  registrar.add_optimizer(
      {mftk::Kind::optimizer, "adamw_8bit",
       "8-bit blockwise AdamW (bitsandbytes AdamW8bit): paged_adamw_8bit without pages",
       p8::adamw_8bit_keys(false)},
      [](const mftk::Config& config) {
        return std::make_unique<p8::AdamW8bit>(p8::adamw_8bit_options_from_config(config, false));
      });
}

}  // namespace

MFTK_PLUGIN("paged_adamw_8bit", "0.1.0", register_components)
