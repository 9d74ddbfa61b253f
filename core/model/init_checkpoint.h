// `mftk init`: a random checkpoint in real Hugging Face layout, in the shape
// of a preset the model plugin offers (Model::presets), with the weights the
// plugin writes (Model::write_random_weights).
//
// defines: mftk::core::InitOptions, mftk::core::write_random_checkpoint
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace mftk::core {

struct InitOptions {
  std::string model_plugin;  // empty: kDefaultModelPlugin (core/recipe/defaults.h)
  std::string preset = "tiny";
  std::map<std::string, int64_t> overrides;  // config.json key -> value (num_hidden_layers, ...)
  bool sliding_window_null = false;          // --sliding-window 0
  bool tie_word_embeddings = false;          // lm_head shares the embedding matrix
  std::string dtype;                         // "", "f32", "bf16", "f16" ("" = the preset's)
  uint64_t seed = 0;
  std::string out;
  std::string tokenizer;     // an existing tokenizer.model; empty: train one
  std::string corpus;        // text to train on (data/tokenizer/corpus.txt)
  int tokenizer_vocab = 1024;
  bool v3_controls = true;   // trained tokenizers get [INST]/[/INST] control pieces
  bool tool_controls = false;  // ...and the five function-calling ones after them (ids 5-9, as in v0.3)
  uint64_t max_shard_bytes = 5'000'000'000ULL;
};

// Writes config.json, generation_config.json, tokenizer.model,
// tokenizer_config.json, special_tokens_map.json and the weights
// (model.safetensors, or shards + index). Weights are drawn N(0, 0.02)
// (norms 1) from `seed` and streamed tensor by tensor, so a 7B-shape
// checkpoint never sits in memory whole. Returns the parameter count.
int64_t write_random_checkpoint(const InitOptions& options);

}  // namespace mftk::core
