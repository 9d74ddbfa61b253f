// The peer: the plainest correct libtorch-eager Mistral (+ LoRA) training
// step, written from scratch on bare tensors the way a hand-written
// transformers-style model computes it:
//   embedding gather, RMSNorm (variance in fp32), rotate_half RoPE, GQA by
//   repeat_interleave of keys and values, additive causal mask [T, T] over
//   the full score square, softmax in fp32, SwiGLU MLP, untied lm_head,
//   logits for every position and a full log_softmax cross-entropy (or,
//   with score_supervised_only, for the supervised positions alone),
//   LoRA y = x W^T + (alpha/r) (x A^T) B^T on q,k,v,o,gate,up,down,
//   global grad-norm clipping and AdamW written out by hand.
// mftk's numbers are divided by this one's, measured in the same process on
// the same weights and tokens.
//
// defines: mftk::bench::PeerShape, mftk::bench::PeerLayer, mftk::bench::PeerWeights,
//          mftk::bench::PeerOptions, mftk::bench::PeerModel
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mftk::bench {

struct PeerShape {
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
  double rope_theta = 10000.0;
  double rms_norm_eps = 1e-5;
};

// The 7 projections in checkpoint order; LoRA wraps each.
enum Projection { q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, kProjections };
const char* projection_name(int p);  // "q_proj" ...

struct PeerLayer {
  at::Tensor input_norm, post_attention_norm;
  std::array<at::Tensor, kProjections> weight;  // [out, in]
  std::array<at::Tensor, kProjections> lora_A;  // [r, in]  (LoRA mode)
  std::array<at::Tensor, kProjections> lora_B;  // [out, r]
};

struct PeerWeights {
  at::Tensor embed_tokens;  // [V, H]
  std::vector<PeerLayer> layers;
  at::Tensor final_norm;
  at::Tensor lm_head;  // [V, H], untied
};

struct PeerOptions {
  bool lora = true;   // false: every weight is trained (full fine-tuning)
  bool train = true;  // false: forward only (nothing becomes trainable)
  int64_t rank = 8;
  double alpha = 16.0;
  at::ScalarType compute_dtype = at::kFloat;  // activations; weights keep their own dtype
  double lr = 1e-4;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0: no clipping
  // false: logits for every position, then the ignored ones (labels = -100)
  // are dropped by the loss, as a transformers model given labels does.
  // true: the hidden states of the supervised positions are gathered first
  // and only those rows go through lm_head and the cross-entropy, as Liger's
  // and Unsloth's loss paths do on instruction data.
  bool score_supervised_only = false;
};

class PeerModel {
 public:
  // LoRA mode: the frozen weights are used as given (they may be the very
  // tensors mftk holds); lora_A/lora_B must be set (fp32, trained here).
  // Full mode: every tensor in `weights` is made a trainable leaf as given.
  PeerModel(PeerShape shape, PeerWeights weights, PeerOptions options);

  // Logits [B, T, V] in fp32 for ids [B, T] (int64), no graph when called under NoGradGuard.
  at::Tensor logits(const at::Tensor& ids);
  // The final-norm output [B, T, H] in the compute dtype: what lm_head reads.
  at::Tensor hidden_states(const at::Tensor& ids);
  // Forward, mean next-token cross-entropy over the B x (T-1) targets,
  // backward, clipping, AdamW, gradients cleared. Returns the loss.
  // Targets for tokens before `prompt_tokens` in each row are ignored
  // (labels = -100, the way a transformers user masks the prompt): the
  // logits are still computed for every position unless
  // PeerOptions::score_supervised_only is set.
  double train_step(const at::Tensor& ids, int64_t prompt_tokens = 0);

  int64_t trainable_count() const;

 private:
  at::Tensor head_logits(const at::Tensor& hidden) const;  // [..., H] -> [..., V] fp32
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;
  at::Tensor project(const at::Tensor& x, const PeerLayer& layer, int p) const;
  at::Tensor layer_forward(const at::Tensor& x, const PeerLayer& layer, const at::Tensor& cos,
                           const at::Tensor& sin, const at::Tensor& mask) const;
  void adamw_step();

  PeerShape shape_;
  PeerWeights w_;
  PeerOptions o_;
  std::vector<at::Tensor> trainable_, exp_avg_, exp_avg_sq_;
  int64_t step_ = 0;
  at::Tensor inv_freq_;  // [D/2] fp32
};

}  // namespace mftk::bench
