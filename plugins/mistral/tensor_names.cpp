// Names from transformers' modeling_mistral.py (HF) and llama.cpp's
// convert_hf_to_gguf.py / llama-arch (GGUF), as listed in docs/formats.md §2.3, §4.4 (tensor names).
#include "tensor_names.h"

#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk::mistral {
namespace {

std::string with_layer(const char* pattern, int64_t layer) {
  std::string s = pattern;
  const auto at = s.find("{n}");
  if (at != std::string::npos) s.replace(at, 3, std::to_string(layer));
  return s;
}

}  // namespace

const std::vector<TensorNameEntry>& tensor_name_table() {
  static const std::vector<TensorNameEntry> table = {
      {TensorRole::embed_tokens, "model.embed_tokens.weight", "token_embd.weight", false, false},
      {TensorRole::q_proj, "model.layers.{n}.self_attn.q_proj.weight", "blk.{n}.attn_q.weight", true, true},
      {TensorRole::k_proj, "model.layers.{n}.self_attn.k_proj.weight", "blk.{n}.attn_k.weight", true, true},
      {TensorRole::v_proj, "model.layers.{n}.self_attn.v_proj.weight", "blk.{n}.attn_v.weight", true, true},
      {TensorRole::o_proj, "model.layers.{n}.self_attn.o_proj.weight", "blk.{n}.attn_output.weight", true, true},
      {TensorRole::gate_proj, "model.layers.{n}.mlp.gate_proj.weight", "blk.{n}.ffn_gate.weight", true, true},
      {TensorRole::up_proj, "model.layers.{n}.mlp.up_proj.weight", "blk.{n}.ffn_up.weight", true, true},
      {TensorRole::down_proj, "model.layers.{n}.mlp.down_proj.weight", "blk.{n}.ffn_down.weight", true, true},
      {TensorRole::input_norm, "model.layers.{n}.input_layernorm.weight", "blk.{n}.attn_norm.weight", true, false},
      {TensorRole::post_attention_norm, "model.layers.{n}.post_attention_layernorm.weight",
       "blk.{n}.ffn_norm.weight", true, false},
      {TensorRole::final_norm, "model.norm.weight", "output_norm.weight", false, false},
      {TensorRole::lm_head, "lm_head.weight", "output.weight", false, true},
  };
  return table;
}

const TensorNameEntry& tensor_name_entry(TensorRole role) {
  for (const auto& e : tensor_name_table())
    if (e.role == role) return e;
  throw Error(fmt::format("tensor_names: no entry for role {}", static_cast<int>(role)));
}

std::string hf_tensor_name(TensorRole role, int64_t layer) {
  return with_layer(tensor_name_entry(role).hf, layer);
}

std::string hf_module_name(TensorRole role, int64_t layer) {
  std::string name = hf_tensor_name(role, layer);
  const std::string suffix = ".weight";
  return name.substr(0, name.size() - suffix.size());
}

std::string gguf_tensor_name(TensorRole role, int64_t layer) {
  return with_layer(tensor_name_entry(role).gguf, layer);
}

std::vector<int64_t> tensor_shape(TensorRole role, const MistralConfig& c) {
  switch (role) {
    case TensorRole::embed_tokens:
    case TensorRole::lm_head: return {c.vocab_size, c.hidden_size};
    case TensorRole::q_proj: return {c.q_dim(), c.hidden_size};
    case TensorRole::k_proj:
    case TensorRole::v_proj: return {c.kv_dim(), c.hidden_size};
    case TensorRole::o_proj: return {c.hidden_size, c.q_dim()};
    case TensorRole::gate_proj:
    case TensorRole::up_proj: return {c.intermediate_size, c.hidden_size};
    case TensorRole::down_proj: return {c.hidden_size, c.intermediate_size};
    case TensorRole::input_norm:
    case TensorRole::post_attention_norm:
    case TensorRole::final_norm: return {c.hidden_size};
  }
  throw Error("tensor_shape: unknown tensor role");
}

std::vector<CheckpointTensor> checkpoint_tensors(const MistralConfig& c) {
  std::vector<CheckpointTensor> out;
  const auto& table = tensor_name_table();
  auto add = [&](const TensorNameEntry& e, int64_t layer) {
    out.push_back({with_layer(e.hf, layer), e.role, layer, tensor_shape(e.role, c)});
  };
  for (const auto& e : table)
    if (e.role == TensorRole::embed_tokens) add(e, -1);
  for (int64_t n = 0; n < c.num_hidden_layers; ++n)
    for (const auto& e : table)
      if (e.per_layer) add(e, n);
  for (const auto& e : table) {
    if (e.per_layer || e.role == TensorRole::embed_tokens) continue;
    if (e.role == TensorRole::lm_head && c.tie_word_embeddings) continue;
    add(e, -1);
  }
  return out;
}

}  // namespace mftk::mistral
