// libmftk-lora: registers the "lora" adapter component.
#include <memory>

#include "lora_adapter.h"
#include "mftk/plugin.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_adapter(
      {mftk::Kind::adapter,
       "lora",
       "LoRA on the model's linear layers; reads and writes PEFT adapter folders",
       mftk::lora::lora_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Adapter> {
        return std::make_unique<mftk::lora::LoRAAdapter>(mftk::lora::lora_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("lora", "0.1.0", register_components)
