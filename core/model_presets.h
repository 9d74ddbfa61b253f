// Named model shapes for `mftk init`: the config.json a fresh checkpoint gets.
//
// defines: mftk::mistral_preset_names, mftk::mistral_preset_config
//
// The core writes config.json from these tables; the mistral plugin parses
// it (plugins/mistral/mistral_config.cpp). The core never links a plugin, so
// the table lives here and the plugin reads its presets from it too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mftk {

// "tiny", "small", "mistral-7b-v0.1", "mistral-7b-v0.3".
std::vector<std::string> mistral_preset_names();

// The Hugging Face config.json object for `preset`. vocab_size: the
// tokenizer's size; required (> 0) for tiny and small; for the 7B presets
// <= 0 means the shipped size and any other value must equal it.
// Throws mftk::UsageError listing the presets for an unknown name.
nlohmann::json mistral_preset_config(const std::string& preset, int64_t vocab_size);

}  // namespace mftk
