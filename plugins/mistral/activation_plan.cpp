// The Mistral model's planning hook (mftk/model.h: Model::plan_activations):
// what one training step's forward keeps for backward, counted from this
// plugin's own code, so `mftk plan` needs no knowledge of the architecture.
// docs/plan.md derives each term and compares the totals with measured peaks.
#include <algorithm>

#include <fmt/format.h>

#include "attention.h"
#include "mistral_model.h"
#include "mftk/error.h"

namespace mftk::mistral {

namespace {

// Sum over the attention's query blocks of (queries x keys the block sees):
// blocks of `chunk` queries see keys [q0 - W + 1, q1) with a window W, else
// [0, q1) (attention.cpp: AttentionPlan finds the same key range per block).
// `widest`: the largest block's pairs.
int64_t attention_pairs(int64_t T, int64_t chunk, std::optional<int64_t> window, int64_t& widest) {
  int64_t pairs = 0;
  widest = 0;
  for (int64_t q0 = 0; q0 < T; q0 += chunk) {
    const int64_t q1 = std::min(T, q0 + chunk);
    const int64_t k0 = window ? std::max<int64_t>(0, q0 - *window + 1) : 0;
    pairs += (q1 - q0) * (q1 - k0);
    widest = std::max(widest, (q1 - q0) * (q1 - k0));
  }
  return pairs;
}

}  // namespace

std::optional<ActivationPlan> MistralModel::plan_activations(const ActivationQuery& query) const {
  if (!config_loaded_) throw Error("mistral: plan_activations() called before load_config()");
  const int64_t H = config_.hidden_size, I = config_.intermediate_size;
  const int64_t Hq = config_.q_dim(), Hkv = config_.kv_dim(), heads = config_.num_attention_heads;
  const int64_t B = query.rows, T = query.row_len, N = B * T, c = query.compute_bytes;
  const bool blocked = !query.fused_attention;  // this plugin's own query-block attention

  // Per token and layer (elements): the layer input, each RMSNorm's
  // normalised value and output (2 x 2H), q, k, v and the rotated q, k
  // (2 Hq + 3 Hkv), the attention output and its contiguous copy for o_proj
  // (2 Hq), the residual (H), and the MLP's gate, up, silu(gate) and their
  // product (4 I).
  const int64_t per_token = 6 * H + 4 * Hq + 3 * Hkv + 4 * I;
  int64_t widest_block = 0;
  const int64_t pairs = attention_pairs(T, options_.attention_chunk, config_.sliding_window, widest_block);
  // Blocked attention keeps each block's softmax output in fp32, plus its
  // copy in a narrower compute dtype; fused GPU attention keeps only a
  // logsumexp per query and head.
  const int64_t probability_bytes = 4 + (c < 4 ? c : 0);
  const int64_t probabilities = blocked ? B * heads * pairs * probability_bytes : B * heads * T * 4;

  ActivationPlan p;
  p.layer_bytes = N * per_token * c + probabilities;
  p.layer_input_bytes = N * H * c;
  // The block masks of one pass, shared by every layer, up to the cache's cap.
  p.shared_bytes = blocked ? std::min(B * pairs, kMaskCacheBytes) : 0;
  // One layer's backward: activation gradients of the widest width, and the
  // largest attention block's probability gradients (blocked path).
  p.backward_bytes = 3 * N * std::max(H, I) * c + (blocked ? 2 * B * heads * widest_block * 4 : 0);
  p.detail = blocked ? fmt::format("attention in blocks of {} queries{}, their probabilities kept",
                                   options_.attention_chunk,
                                   config_.sliding_window ? fmt::format(" (window {})", *config_.sliding_window) : "")
                     : "fused attention: a logsumexp per query kept";
  return p;
}

}  // namespace mftk::mistral
