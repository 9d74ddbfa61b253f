// Named model shapes for `mftk init`: the config.json a fresh checkpoint gets.
//
// defines: mftk::mistral_preset_names, mftk::mistral_presets, mftk::mistral_preset_config
//
// The one table of Mistral presets. `mftk init` reaches it through the model
// plugin (Model::presets / preset_config); MistralConfig::preset parses it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mftk/model.h"

namespace mftk {

// "tiny", "small", "mistral-7b-v0.1", "mistral-7b-v0.3".
std::vector<std::string> mistral_preset_names();
// The same, with each preset's fixed vocabulary (0: the tokenizer's) and the
// tokenizer that goes with it.
std::vector<ModelPreset> mistral_presets();

// The Hugging Face config.json object for `preset`. vocab_size: the
// tokenizer's size; required (> 0) for tiny and small; for the 7B presets
// <= 0 means the shipped size and any other value must equal it.
// Throws mftk::UsageError listing the presets for an unknown name.
nlohmann::json mistral_preset_config(const std::string& preset, int64_t vocab_size);

}  // namespace mftk
