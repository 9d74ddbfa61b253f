// Block-wise masked attention. Each query block is matched only against the
// key range some of its queries can see, so causal attention does about half
// the work of the full square and a sliding window W does O(T * W).
#include "attention.h"

#include <limits>

#include <ATen/ATen.h>
#include <torch/version.h>

#include "mftk/error.h"
#include "mftk/kernels.h"

namespace mftk::mistral {

at::Tensor AttentionMaskRule::visible(int64_t q0, int64_t q1, int64_t k0, int64_t k1) const {
  const int64_t qn = q1 - q0, kn = k1 - k0;
  const at::Tensor qdoc = query_doc.narrow(1, q0, qn).unsqueeze(2);  // [B, qn, 1]
  const at::Tensor kdoc = key_doc.narrow(1, k0, kn).unsqueeze(1);    // [B, 1, kn]
  at::Tensor mask = at::eq(qdoc, kdoc).logical_and_(at::ge(qdoc, 0));
  const at::Tensor qord = query_order.narrow(0, q0, qn).view({1, qn, 1});
  const at::Tensor kord = key_order.narrow(0, k0, kn).view({1, 1, kn});
  mask.logical_and_(at::le(kord, qord));
  if (window) {
    const at::Tensor distance =
        query_pos.narrow(1, q0, qn).unsqueeze(2) - key_pos.narrow(1, k0, kn).unsqueeze(1);
    mask.logical_and_(at::lt(distance, *window));
  }
  return mask;
}

AttentionPlan::AttentionPlan(AttentionMaskRule rule, int64_t query_block, int64_t cache_bytes)
    : rule_(std::move(rule)) {
  num_queries_ = rule_.query_order.size(0);
  num_keys_ = rule_.key_order.size(0);
  if (query_block <= 0) query_block = std::max<int64_t>(num_queries_, 1);
  // The block bounds are host decisions (how to slice the work), read with
  // several .item() per block. Off the CPU (and under MFTK_GENERIC_KERNELS=1)
  // each would be a round trip to the device, so the rule's small index
  // tensors ([B, T] int64) come to the host once, the blocks are found
  // there, and the cached masks go back to the rule's device; masks not
  // cached are rebuilt per layer from the device rule by visible().
  const bool host_plan = use_generic_path(rule_.query_order);
  const at::Device device = rule_.query_order.device();
  AttentionMaskRule host_rule;
  if (host_plan) {
    host_rule = AttentionMaskRule{rule_.query_order.to(at::kCPU), rule_.key_order.to(at::kCPU),
                                  rule_.query_pos.to(at::kCPU),   rule_.key_pos.to(at::kCPU),
                                  rule_.query_doc.to(at::kCPU),   rule_.key_doc.to(at::kCPU),
                                  rule_.window};
  }
  const AttentionMaskRule& planning = host_plan ? host_rule : rule_;
  const at::Tensor query_order_cpu = rule_.query_order.to(at::kCPU);
  int64_t cached = 0;
  for (int64_t q0 = 0; q0 < num_queries_; q0 += query_block) {
    AttentionBlock block;
    block.q0 = q0;
    block.q1 = std::min(q0 + query_block, num_queries_);
    // Orders ascend, so the keys at or before the block's last query form a prefix.
    const int64_t last_order = query_order_cpu[block.q1 - 1].item<int64_t>();
    const int64_t key_end = at::le(planning.key_order, last_order).sum().item<int64_t>();
    at::Tensor visible;
    at::Tensor seen_columns;
    if (key_end > 0) {
      visible = planning.visible(block.q0, block.q1, 0, key_end);
      seen_columns = visible.any(0).any(0).nonzero();
    }
    if (key_end == 0 || seen_columns.numel() == 0) {
      block.has_empty_rows = true;  // k0 == k1: the whole block sees nothing
      blocks_.push_back(block);
      continue;
    }
    block.k0 = seen_columns.min().item<int64_t>();
    block.k1 = seen_columns.max().item<int64_t>() + 1;
    visible = visible.narrow(2, block.k0, block.k1 - block.k0);
    block.all_visible = visible.all().item<bool>();
    block.has_empty_rows = !visible.any(2).all().item<bool>();
    if (!block.all_visible && cached + visible.numel() <= cache_bytes) {
      block.visible = visible.contiguous().to(device);
      cached += visible.numel();
    }
    blocks_.push_back(std::move(block));
  }
}

at::Tensor AttentionPlan::visible(const AttentionBlock& block) const {
  if (block.visible.defined()) return block.visible;
  return rule_.visible(block.q0, block.q1, block.k0, block.k1);
}

namespace {

// Attention of one query block over its key range.
at::Tensor attend_block(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const AttentionPlan& plan, const AttentionBlock& block, double scale) {
  const int64_t B = q.size(0), nkv = q.size(1), G = q.size(3), D = q.size(4);
  const int64_t qn = block.q1 - block.q0, kn = block.k1 - block.k0;
  if (kn == 0) return at::zeros({B, nkv, qn, G, D}, q.options());

  // Rows ordered (query, group): a view, since q is contiguous.
  const at::Tensor qb = q.narrow(2, block.q0, qn).reshape({B, nkv, qn * G, D});
  const at::Tensor kb = k.narrow(2, block.k0, kn);
  const at::Tensor vb = v.narrow(2, block.k0, kn);

  at::Tensor visible, row_has_key;
  if (!block.all_visible) {
    visible = plan.visible(block);  // [B, qn, kn]
    if (block.has_empty_rows) {
      // A padded query sees nothing: let it see everything (finite softmax)
      // and zero its output afterwards, so neither value nor gradient is NaN.
      row_has_key = visible.any(2, /*keepdim=*/true);
      visible = visible.logical_or(row_has_key.logical_not());
    }
  }

#if TORCH_VERSION_MAJOR >= 2
  c10::optional<at::Tensor> mask;
  if (visible.defined())
    mask = visible.view({B, 1, qn, 1, kn}).expand({B, 1, qn, G, kn}).reshape({B, 1, qn * G, kn});
#if TORCH_VERSION_MAJOR > 2 || TORCH_VERSION_MINOR >= 1
  at::Tensor out = at::scaled_dot_product_attention(qb, kb, vb, mask, 0.0, false, scale);
#else
  (void)scale;  // 2.0 has no scale argument; its default 1/sqrt(D) is ours
  at::Tensor out = at::scaled_dot_product_attention(qb, kb, vb, mask, 0.0, false);
#endif
  out = out.reshape({B, nkv, qn, G, D});
#else
  // mask + scale * q k^T in one pass (and one in backward), rather than a
  // scaling pass and a masked_fill pass each way.
  // The mask is [B, qn, kn], nkv * G times smaller than the scores, so it is
  // built per call from the (cached) bool mask rather than kept.
  const at::Tensor raw = at::matmul(qb, kb.transpose(-1, -2)).view({B, nkv, qn, G, kn});
  at::Tensor scores;
  if (visible.defined()) {
    const at::Tensor additive = at::zeros({B, 1, qn, 1, kn}, raw.options())
                                    .masked_fill_(visible.logical_not().view({B, 1, qn, 1, kn}),
                                                  -std::numeric_limits<double>::infinity());
    scores = at::add(additive, raw, scale);
  } else {
    scores = raw * scale;
  }
  const at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  at::Tensor out = at::matmul(probs.view({B, nkv, qn * G, kn}), vb).view({B, nkv, qn, G, D});
#endif
  if (row_has_key.defined()) out = out * row_has_key.view({B, 1, qn, 1, 1}).to(out.scalar_type());
  return out;
}

}  // namespace

at::Tensor grouped_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const AttentionPlan& plan, double scale) {
  MFTK_CHECK(q.dim() == 5 && k.dim() == 4 && v.dim() == 4,
             "grouped_query_attention: expected q [B, nkv, T, G, D] and k, v [B, nkv, Tk, D]");
  MFTK_CHECK(q.size(2) == plan.num_queries() && k.size(2) == plan.num_keys(),
             "grouped_query_attention: plan is for {} queries x {} keys, got {} x {}",
             plan.num_queries(), plan.num_keys(), q.size(2), k.size(2));
  const at::Tensor qc = q.contiguous();
  std::vector<at::Tensor> outs;
  outs.reserve(plan.blocks().size());
  for (const auto& block : plan.blocks()) outs.push_back(attend_block(qc, k, v, plan, block, scale));
  return outs.size() == 1 ? outs[0] : at::cat(outs, 2);
}

}  // namespace mftk::mistral
