// PEFT's adapter_config.json, read for LoRAAdapter::load: the SDK's reader
// (mftk/peft_config.h) with its result as the lora plugin's options.
//
// defines: mftk::lora::kAllLinear, mftk::lora::parse_peft_config,
//          mftk::lora::read_peft_config
#pragma once

#include <string>

#include "lora_adapter.h"
#include "mftk/peft_config.h"

namespace mftk::lora {

// target_modules = "all-linear": every linear slot except lm_head (PEFT's spelling).
inline constexpr const char* kAllLinear = kPeftAllLinear;

// The options an adapter_config.json's text gives; `where` names the file in
// messages. Throws mftk::Error for text that is not a JSON object and
// mftk::UsageError, naming the key, for values the lora plugin cannot load.
LoRAOptions parse_peft_config(const std::string& text, const std::string& where);

// Reads `path` and parses it (mftk::Error "lora: <path> not found" when it is missing).
LoRAOptions read_peft_config(const std::string& path);

}  // namespace mftk::lora
