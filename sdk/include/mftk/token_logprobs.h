// What objective plugins compute losses from: the model's log-probabilities
// of its supervised targets, computed by libmftk_core with the fused head
// the trainer uses (logits only for supervised positions, in chunks).
//
// defines: mftk::token_cross_entropy_sum, mftk::supervised_token_logprobs,
//          mftk::sum_by_document, mftk::DocumentLogprobs, mftk::document_logprobs
#pragma once

#include <cstdint>

#include "mftk/batch.h"
#include "mftk/tensor.h"

namespace mftk {

class Model;

// Sum of cross-entropy over the batch's supervised targets (targets !=
// kIgnoreIndex), 0-dim fp32, differentiable; *token_count gets their number.
// This is the token loss the trainer always used (the sft objective).
at::Tensor token_cross_entropy_sum(Model& model, const Batch& batch, int64_t* token_count);

// log p(targets[b, t]) under the model at every supervised position, 0
// elsewhere: [B, T] fp32, differentiable with respect to everything that
// trains. Memory: logits exist for one chunk of 1024 supervised positions at
// a time. With a frozen head (LoRA, QLoRA) each chunk's gradient with
// respect to the hidden states is taken at once and its logits dropped, so
// backward keeps [supervised tokens, hidden]; a head that trains (full
// fine-tuning) takes plain autograd, which keeps each chunk's [1024, vocab]
// logits until backward.
at::Tensor supervised_token_logprobs(Model& model, const Batch& batch);

// values [B, T] summed per document: [B, num_docs], column d holding the sum
// over positions with doc_ids == d (padding, doc -1, is left out).
// Differentiable in values.
at::Tensor sum_by_document(const at::Tensor& values, const at::Tensor& doc_ids, int64_t num_docs);

struct DocumentLogprobs {
  at::Tensor logp;    // [B, D] fp32: sum of log p over each document's supervised targets
  at::Tensor tokens;  // [B, D] int64: how many supervised targets each document has
};

// Both of the above, D = the batch's highest doc id + 1.
DocumentLogprobs document_logprobs(Model& model, const Batch& batch);

}  // namespace mftk
