// Grouped-query attention under the attention rule of batch.h, computed in
// query blocks so no [T, T] score matrix per head is ever held.
//
// defines: mftk::mistral::AttentionMaskRule, mftk::mistral::AttentionBlock,
//          mftk::mistral::AttentionPlan, mftk::mistral::grouped_query_attention
//
// Layout: q is [B, nkv, T, G, D] (G = query heads per KV head; query head
// h = kv * G + g), k and v are [B, nkv, Tk, D]. Folding G into the row
// dimension lets one plain matmul serve all G query heads of a KV head, so
// the repeated K/V is never materialised (a broadcasting at::matmul would
// copy the expanded K internally).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "mftk/tensor.h"

namespace mftk::mistral {

// Query i sees key j iff
//   query_doc[i] == key_doc[j] >= 0,  key_order[j] <= query_order[i],
//   and (with a window W) query_pos[i] - key_pos[j] < W.
// Training rows use order = row index (batch.h); a KV cache uses order =
// absolute position. Orders must be ascending.
struct AttentionMaskRule {
  at::Tensor query_order;  // [Tq] int64
  at::Tensor key_order;    // [Tk] int64
  at::Tensor query_pos;    // [B, Tq] int64 (position_ids)
  at::Tensor key_pos;      // [B, Tk] int64
  at::Tensor query_doc;    // [B, Tq] int64, -1 = padding
  at::Tensor key_doc;      // [B, Tk] int64
  std::optional<int64_t> window;

  // [B, q1 - q0, k1 - k0] bool: which keys each query may see.
  at::Tensor visible(int64_t q0, int64_t q1, int64_t k0, int64_t k1) const;
};

// One query block and the key range any of its queries can see.
struct AttentionBlock {
  int64_t q0 = 0, q1 = 0;  // query rows [q0, q1)
  int64_t k0 = 0, k1 = 0;  // keys [k0, k1); empty: no query of the block sees a key
  bool all_visible = false;    // every query sees every key of the range
  bool has_empty_rows = false; // some query (padding) sees no key at all
  at::Tensor visible;          // [B, q1-q0, k1-k0] bool, or undefined: rebuild from the rule
};

// The blocks of one forward pass, shared by every layer (the mask does not
// depend on the layer).
// Bytes of block masks an AttentionPlan keeps for every layer of a pass
// (plan_activations counts them once per step).
constexpr int64_t kMaskCacheBytes = int64_t{64} << 20;

class AttentionPlan {
 public:
  // query_block: rows per block (<= 0: one block). Masks of all blocks are
  // kept while they total at most cache_bytes, else rebuilt per layer.
  AttentionPlan(AttentionMaskRule rule, int64_t query_block, int64_t cache_bytes = kMaskCacheBytes);

  const AttentionMaskRule& rule() const { return rule_; }
  const std::vector<AttentionBlock>& blocks() const { return blocks_; }
  int64_t num_queries() const { return num_queries_; }
  int64_t num_keys() const { return num_keys_; }
  // The block's mask, cached or rebuilt.
  at::Tensor visible(const AttentionBlock& block) const;

 private:
  AttentionMaskRule rule_;
  int64_t num_queries_ = 0, num_keys_ = 0;
  std::vector<AttentionBlock> blocks_;
};

// q [B, nkv, Tq, G, D], k/v [B, nkv, Tk, D] -> [B, nkv, Tq, G, D].
// softmax(q k^T * scale) v with masked keys left out; the softmax runs in
// fp32 and its result is cast to q's dtype (as transformers' eager path).
// A query that sees no key (padding) gets 0, not NaN. Differentiable.
at::Tensor grouped_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const AttentionPlan& plan, double scale);

}  // namespace mftk::mistral
