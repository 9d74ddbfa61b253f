// Preset shapes. The 7B values are the shipped Hugging Face config.json
// files (docs/formats.md §2.2, Mistral-7B configs); tiny and small are ours, sized for CPU tests and
// quick experiments, with grouped-query attention and a sliding window that
// binds at their training lengths so both code paths get exercised.
#include "model_presets.h"

#include <nlohmann/json.hpp>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "mftk/error.h"

namespace mftk {
namespace {

struct MistralPreset {
  const char* name;
  int64_t vocab_size;  // 0: taken from the tokenizer
  int64_t hidden_size;
  int64_t intermediate_size;
  int64_t num_hidden_layers;
  int64_t num_attention_heads;
  int64_t num_key_value_heads;
  int64_t max_position_embeddings;
  double rope_theta;
  int64_t sliding_window;  // 0: null (plain causal attention)
  const char* torch_dtype;
  const char* transformers_version;  // "" : key left out
  bool write_attention_dropout;      // v0.1's file has no such key
};

constexpr MistralPreset kPresets[] = {
    {"tiny", 0, 256, 768, 4, 8, 2, 2048, 10000.0, 64, "float32", "", true},
    {"small", 0, 512, 1536, 8, 8, 4, 4096, 10000.0, 256, "float32", "", true},
    {"mistral-7b-v0.1", 32000, 4096, 14336, 32, 32, 8, 32768, 10000.0, 4096, "bfloat16",
     "4.34.0.dev0", false},
    {"mistral-7b-v0.3", 32768, 4096, 14336, 32, 32, 8, 32768, 1000000.0, 0, "bfloat16",
     "4.42.0.dev0", true},
};

}  // namespace

std::vector<ModelPreset> mistral_presets() {
  std::vector<ModelPreset> out;
  for (const auto& p : kPresets) {
    ModelPreset preset;
    preset.name = p.name;
    preset.vocab_size = p.vocab_size;
    if (p.vocab_size > 0)
      preset.tokenizer_hint =
          "pass --tokenizer PATH/tokenizer.model (mistral-7b-v0.1 goes with ../shared/data/mistral-tokenizers/"
          "tokenizer.model.v1, mistral-7b-v0.3 with tokenizer.model.v3)";
    out.push_back(std::move(preset));
  }
  return out;
}

std::vector<std::string> mistral_preset_names() {
  std::vector<std::string> names;
  for (const auto& p : kPresets) names.emplace_back(p.name);
  return names;
}

nlohmann::json mistral_preset_config(const std::string& preset, int64_t vocab_size) {
  const MistralPreset* found = nullptr;
  for (const auto& p : kPresets)
    if (preset == p.name) found = &p;
  if (!found)
    throw UsageError(fmt::format("unknown model preset '{}'. Known presets: {}", preset,
                                 fmt::join(mistral_preset_names(), ", ")),
                     "pick one of the listed presets, or start from an existing checkpoint");
  const MistralPreset& p = *found;

  int64_t vocab = p.vocab_size;
  if (p.vocab_size == 0) {
    if (vocab_size <= 0)
      throw UsageError(fmt::format("model preset '{}' takes its vocab_size from the tokenizer, "
                                   "but none was given (got {})", p.name, vocab_size),
                       "pass the tokenizer so its vocabulary size can be used");
    vocab = vocab_size;
  } else if (vocab_size > 0 && vocab_size != p.vocab_size) {
    throw UsageError(fmt::format("model preset '{}' has vocab_size {}, but the tokenizer has {}",
                                 p.name, p.vocab_size, vocab_size),
                     "use the tokenizer that ships with this model (v0.1: 32000, v0.3: 32768)");
  }

  // nlohmann::json keeps keys sorted, as transformers writes them
  // (json.dumps(..., sort_keys=True)).
  nlohmann::json c;
  c["architectures"] = {"MistralForCausalLM"};
  if (p.write_attention_dropout) c["attention_dropout"] = 0.0;
  c["bos_token_id"] = 1;
  c["eos_token_id"] = 2;
  c["hidden_act"] = "silu";
  c["hidden_size"] = p.hidden_size;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = p.intermediate_size;
  c["max_position_embeddings"] = p.max_position_embeddings;
  c["model_type"] = "mistral";
  c["num_attention_heads"] = p.num_attention_heads;
  c["num_hidden_layers"] = p.num_hidden_layers;
  c["num_key_value_heads"] = p.num_key_value_heads;
  c["rms_norm_eps"] = 1e-05;
  c["rope_theta"] = p.rope_theta;
  if (p.sliding_window > 0)
    c["sliding_window"] = p.sliding_window;
  else
    c["sliding_window"] = nullptr;
  c["tie_word_embeddings"] = false;
  c["torch_dtype"] = p.torch_dtype;
  if (*p.transformers_version) c["transformers_version"] = p.transformers_version;
  c["use_cache"] = true;
  c["vocab_size"] = vocab;
  return c;
}

}  // namespace mftk
