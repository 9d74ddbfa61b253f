// Cross-entropy of a linear head over a wide vocabulary, computed in chunks
// of rows so that no [rows, vocab] tensor outlives its chunk.
//
// defines: mftk::core::LogitsFn, mftk::core::linear_cross_entropy_sum,
//          mftk::core::chunked_cross_entropy_sum
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "mftk/tensor.h"

namespace mftk::core {

// hidden rows [n, H] -> logits [n, V] (the model's head).
using LogitsFn = std::function<at::Tensor(const at::Tensor&)>;

// sum_i cross_entropy(head(hidden[i]), targets[i]), as a 0-dim fp32 tensor;
// logits are taken in fp32 whatever the head's dtype.
//
// head_params are the head's tensors that train ({} for a frozen head, as
// with LoRA and QLoRA; the weight with full fine-tuning or modules_to_save).
// With gradients on, each chunk's gradients, (softmax - onehot) through the
// head for hidden and for head_params, are computed right after its logits
// and the logits are dropped: the graph keeps [n, H] (and one gradient per
// head tensor), never [n, V] logits and their log-softmax. Backward only
// scales what was kept. A head tensor that trains but is not listed gets no
// gradient, so callers that cannot list them use chunked_cross_entropy_sum.
at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& targets, const LogitsFn& head,
                                    int64_t chunk_rows, const std::vector<at::Tensor>& head_params);

// The same sum by plain autograd per chunk (each chunk's log-softmax is kept
// for backward): right for any head, trainable or not.
at::Tensor chunked_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& targets, const LogitsFn& head,
                                     int64_t chunk_rows);

}  // namespace mftk::core
