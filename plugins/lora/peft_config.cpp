// adapter_config.json (PEFT) -> LoRAOptions: what LoRAAdapter::load takes
// from the file (see peft_config.h). The parse itself is the SDK's
// (mftk/peft_config.h), shared with the gguf_lora exporter.
#include "peft_config.h"

namespace mftk::lora {

namespace {

LoRAOptions lora_options(const PeftLoraConfig& c) {
  LoRAOptions o;
  o.r = c.r;
  o.alpha = c.alpha;
  o.dropout = c.dropout;
  o.use_rslora = c.use_rslora;
  o.target_modules = c.target_modules;
  o.modules_to_save = c.modules_to_save;
  return o;
}

}  // namespace

LoRAOptions parse_peft_config(const std::string& text, const std::string& where) {
  return lora_options(parse_peft_lora_config(text, where));
}

LoRAOptions read_peft_config(const std::string& path) { return lora_options(read_peft_lora_config(path)); }

}  // namespace mftk::lora
