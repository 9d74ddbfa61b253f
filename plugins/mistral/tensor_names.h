// The one table of Mistral tensor names: Hugging Face checkpoint names, the
// matching GGUF (llama architecture) names, and each tensor's shape.
//
// defines: mftk::mistral::TensorRole, mftk::mistral::TensorNameEntry,
//          mftk::mistral::tensor_name_table, mftk::mistral::hf_tensor_name,
//          mftk::mistral::hf_module_name, mftk::mistral::gguf_tensor_name,
//          mftk::mistral::tensor_shape, mftk::mistral::CheckpointTensor,
//          mftk::mistral::checkpoint_tensors
//
// Nothing else formats these strings: the loader, linear slot names and the
// exporters all go through here. The names are fixed by the files other
// tools write and read (transformers, llama.cpp's converter): never change
// them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mistral_config.h"

namespace mftk::mistral {

enum class TensorRole {
  embed_tokens,
  q_proj,
  k_proj,
  v_proj,
  o_proj,
  gate_proj,
  up_proj,
  down_proj,
  input_norm,
  post_attention_norm,
  final_norm,
  lm_head,
};

struct TensorNameEntry {
  TensorRole role;
  const char* hf;    // "{n}" stands for the layer index
  const char* gguf;  // llama.cpp's name for the same tensor
  bool per_layer;
  bool is_linear;    // held by a LinearSlot named hf without ".weight"
};

// In Hugging Face state-dict order (module registration order):
// embeddings; per layer q k v o gate up down, then the two norms; final
// norm; lm_head.
const std::vector<TensorNameEntry>& tensor_name_table();
const TensorNameEntry& tensor_name_entry(TensorRole role);

// "model.layers.3.self_attn.q_proj.weight"; layer is ignored for global tensors.
std::string hf_tensor_name(TensorRole role, int64_t layer = -1);
// The module path (slot name): hf_tensor_name without ".weight".
std::string hf_module_name(TensorRole role, int64_t layer = -1);
// "blk.3.attn_q.weight". q/k rows must also be permuted on export (FORMATS §4.6).
std::string gguf_tensor_name(TensorRole role, int64_t layer = -1);

// [out, in] for linears, [hidden] for norms, [vocab, hidden] for embeddings.
std::vector<int64_t> tensor_shape(TensorRole role, const MistralConfig& config);

struct CheckpointTensor {
  std::string name;  // HF name
  TensorRole role;
  int64_t layer;     // -1 for global tensors
  std::vector<int64_t> shape;
};

// Every tensor a checkpoint for `config` holds, in state-dict order;
// lm_head.weight is left out when tie_word_embeddings is set.
std::vector<CheckpointTensor> checkpoint_tensors(const MistralConfig& config);

}  // namespace mftk::mistral
