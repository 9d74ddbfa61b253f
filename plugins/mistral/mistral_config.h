// Mistral hyperparameters, read from and written to Hugging Face config.json.
//
// defines: mftk::mistral::MistralConfig
//
// Plain data, queried per layer (llama.cpp's hparams style). Step one of the
// model's three steps: read hparams (here), load tensors, forward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

#include "mftk/model.h"

namespace mftk::mistral {

struct MistralConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  // < num_attention_heads means grouped-query attention: query head h reads
  // KV head h / (num_attention_heads / num_key_value_heads).
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;  // config.json may omit it: hidden_size / num_attention_heads
  int64_t max_position_embeddings = 131072;
  double rms_norm_eps = 1e-6;  // transformers' default; shipped files say 1e-5
  double rope_theta = 10000.0;
  // Query at position p sees keys at positions p-W+1 .. p. none: plain causal.
  std::optional<int64_t> sliding_window = 4096;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  double initializer_range = 0.02;
  double attention_dropout = 0.0;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  std::optional<int64_t> pad_token_id;
  bool use_cache = true;
  std::string transformers_version;  // empty: not written

  // Parses a config.json object. `source` names the file in error messages.
  // Keys a file leaves out take transformers' MistralConfig defaults, except
  // the five shape keys (vocab, hidden, intermediate, layers, heads), which
  // are required. Throws mftk::Error naming the file and the key.
  static MistralConfig from_json(const nlohmann::json& config, const std::string& source);
  // The text of a config.json (JSON, then from_json); `source` names the file.
  static MistralConfig parse(const std::string& text, const std::string& source);
  // Reads <dir>/config.json.
  static MistralConfig load(const std::string& dir);
  // A named shape (tiny, small, mistral-7b-v0.1, mistral-7b-v0.3), from the
  // preset table in model_presets.cpp.
  static MistralConfig preset(const std::string& name, int64_t vocab_size);

  // The Hugging Face config.json object (keys sorted, as transformers writes).
  nlohmann::json to_json() const;
  // Writes <dir>/config.json.
  void save(const std::string& dir) const;

  // Throws mftk::Error when the values cannot describe a model.
  void validate(const std::string& source) const;

  int64_t group_size() const { return num_attention_heads / num_key_value_heads; }
  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  // The dtype torch_dtype names ("bfloat16" -> kBFloat16).
  at::ScalarType dtype() const;
  ModelShape to_shape() const;
};

// "bfloat16" / "float16" / "float32" (also "bf16", "f16", "f32").
at::ScalarType dtype_from_torch_name(const std::string& name, const std::string& source);
std::string dtype_to_torch_name(at::ScalarType dtype);

}  // namespace mftk::mistral
