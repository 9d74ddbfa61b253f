// An independent, deliberately plain Mistral forward pass, written from the
// Hugging Face formulas (docs/formats.md §2.3-§2.5, Mistral block, RoPE, window) to check the plugin against.
//
// defines: mftk::reference::HfMistralReferenceConfig,
//          mftk::reference::hf_mistral_reference_logits
//
// It shares no code with plugins/mistral: its own RMSNorm, RoPE written as
// the pairwise rotation (i, i + D/2), GQA by repeat_interleave of K/V, an
// explicit [T, T] additive mask, softmax, SwiGLU. One sequence, positions
// 0..T-1, everything in fp32. Slow and simple on purpose.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace mftk::reference {

struct HfMistralReferenceConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  std::optional<int64_t> sliding_window;
  bool tie_word_embeddings = false;
};

namespace detail {

inline at::Tensor weight(const std::map<std::string, at::Tensor>& w, const std::string& name) {
  auto it = w.find(name);
  if (it == w.end()) throw std::runtime_error("reference: no tensor " + name);
  return it->second.to(at::kFloat);
}

inline at::Tensor reference_rms_norm(const at::Tensor& x, const at::Tensor& gain, double eps) {
  const at::Tensor mean_square = (x * x).mean({-1}, /*keepdim=*/true);
  return x / at::sqrt(mean_square + eps) * gain;
}

// x: [heads, T, D]; rotates the pair (i, i + D/2) of position p by
// p / theta^(2i/D), with angles and their cos/sin in fp32 as HF does.
inline at::Tensor reference_rope(const at::Tensor& x, double theta) {
  const int64_t T = x.size(1), D = x.size(2), half = D / 2;
  const at::Tensor i = at::arange(half, at::kLong).to(at::kFloat);
  const at::Tensor inv_freq = 1.0 / at::pow(theta, (2.0 * i) / static_cast<double>(D));
  const at::Tensor p = at::arange(T, at::kLong).to(at::kFloat);
  const at::Tensor angle = at::outer(p, inv_freq);  // [T, D/2]
  const at::Tensor c = at::cos(angle), s = at::sin(angle);
  const at::Tensor first = x.slice(2, 0, half), second = x.slice(2, half, D);
  return at::cat({first * c - second * s, second * c + first * s}, 2);
}

// [T, T]: 0 where key j is visible to query i (i - W < j <= i), -inf elsewhere.
inline at::Tensor reference_mask(int64_t T, std::optional<int64_t> window) {
  at::Tensor mask = at::full({T, T}, -std::numeric_limits<float>::infinity());
  auto m = mask.accessor<float, 2>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j)
      if (j <= i && (!window || j > i - *window)) m[i][j] = 0.0f;
  return mask;
}

}  // namespace detail

// ids: one sequence -> logits [T, vocab] (fp32). `w` holds HF-named tensors.
inline at::Tensor hf_mistral_reference_logits(const std::map<std::string, at::Tensor>& w,
                                              const HfMistralReferenceConfig& c,
                                              const std::vector<int64_t>& ids) {
  using detail::weight;
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t D = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const at::Tensor embed = weight(w, "model.embed_tokens.weight");
  const at::Tensor id_tensor = at::tensor(ids, at::kLong);
  at::Tensor x = embed.index_select(0, id_tensor);  // [T, H]
  const at::Tensor mask = detail::reference_mask(T, c.sliding_window);

  for (int64_t n = 0; n < c.num_layers; ++n) {
    const std::string p = "model.layers." + std::to_string(n) + ".";
    const at::Tensor h = detail::reference_rms_norm(x, weight(w, p + "input_layernorm.weight"), c.rms_norm_eps);
    at::Tensor q = at::matmul(h, weight(w, p + "self_attn.q_proj.weight").t());
    at::Tensor k = at::matmul(h, weight(w, p + "self_attn.k_proj.weight").t());
    at::Tensor v = at::matmul(h, weight(w, p + "self_attn.v_proj.weight").t());
    q = q.view({T, nh, D}).transpose(0, 1);   // [nh, T, D]
    k = k.view({T, nkv, D}).transpose(0, 1);  // [nkv, T, D]
    v = v.view({T, nkv, D}).transpose(0, 1);
    q = detail::reference_rope(q, c.rope_theta);
    k = detail::reference_rope(k, c.rope_theta);
    // Query head h uses KV head h / (nh / nkv): each KV head repeated in place.
    k = at::repeat_interleave(k, nh / nkv, 0);
    v = at::repeat_interleave(v, nh / nkv, 0);
    const at::Tensor scores = at::matmul(q, k.transpose(1, 2)) / std::sqrt(static_cast<double>(D)) + mask;
    const at::Tensor attn = at::matmul(at::softmax(scores, -1), v);  // [nh, T, D]
    const at::Tensor merged = attn.transpose(0, 1).reshape({T, nh * D});
    x = x + at::matmul(merged, weight(w, p + "self_attn.o_proj.weight").t());

    const at::Tensor h2 = detail::reference_rms_norm(x, weight(w, p + "post_attention_layernorm.weight"), c.rms_norm_eps);
    const at::Tensor gate = at::matmul(h2, weight(w, p + "mlp.gate_proj.weight").t());
    const at::Tensor up = at::matmul(h2, weight(w, p + "mlp.up_proj.weight").t());
    const at::Tensor swiglu = gate * at::sigmoid(gate) * up;
    x = x + at::matmul(swiglu, weight(w, p + "mlp.down_proj.weight").t());
  }
  x = detail::reference_rms_norm(x, weight(w, "model.norm.weight"), c.rms_norm_eps);
  const at::Tensor head = c.tie_word_embeddings ? embed : weight(w, "lm_head.weight");
  return at::matmul(x, head.t());
}

}  // namespace mftk::reference
