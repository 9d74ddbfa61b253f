// Cross-entropy of a linear head over a wide vocabulary, computed in chunks
// of rows so that no [rows, vocab] tensor outlives its chunk.
//
// defines: mftk::core::LogitsFn, mftk::core::linear_cross_entropy_sum
#pragma once

#include <cstdint>
#include <functional>

#include "mftk/tensor.h"

namespace mftk::core {

// hidden rows [n, H] -> logits [n, V] (the model's head).
using LogitsFn = std::function<at::Tensor(const at::Tensor&)>;

// sum_i cross_entropy(head(hidden[i]), targets[i]), as a 0-dim fp32 tensor;
// logits are taken in fp32 whatever the head's dtype.
//
// With gradients on, hidden requiring grad and a frozen head (head_trainable
// false: no tensor of the head requires grad, as with LoRA and QLoRA), each
// chunk's gradient with respect to hidden, (softmax - onehot) . dHead, is
// computed right after its logits and the logits are dropped: the graph keeps
// one [n, H] tensor, not [n, V] logits and their log-softmax. Backward only
// scales that tensor. A trainable head (full fine-tuning, modules_to_save)
// takes the plain autograd path, chunk by chunk. Passing false for a head
// that does train would leave its tensors without gradient.
at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& targets, const LogitsFn& head,
                                    int64_t chunk_rows, bool head_trainable);

}  // namespace mftk::core
