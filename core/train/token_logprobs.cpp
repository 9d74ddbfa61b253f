// mftk/token_logprobs.h: per-token log-probabilities for objective plugins.
// The fused path follows linear_cross_entropy.cpp: d log p(target) / d
// logits = onehot(target) - softmax is known as soon as a chunk's logits
// are, so it is pushed through the (frozen) head at once and only the
// [rows, hidden] result is kept for backward, which scales it by the
// upstream gradient of each token.
#include "mftk/token_logprobs.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "linear_cross_entropy.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "trainer.h"

namespace mftk {
namespace {

constexpr int64_t kChunkRows = 1024;  // logits rows held at once, as for the token loss

struct LogprobHead : torch::CustomClassHolder {
  core::LogitsFn head;
  int64_t chunk_rows = 0;
};

// log p(target) of one chunk of fp32 logits.
at::Tensor chunk_logprobs(const at::Tensor& logits, const at::Tensor& targets) {
  return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - at::logsumexp(logits, 1);
}

struct FusedHeadLogprobs : torch::autograd::Function<FusedHeadLogprobs> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& targets,
                            c10::intrusive_ptr<LogprobHead> holder) {
    const int64_t n = hidden.size(0);
    at::Tensor out = at::empty({n}, hidden.options().dtype(at::kFloat));
    at::Tensor grad_hidden = at::empty_like(hidden, at::MemoryFormat::Contiguous);
    for (int64_t start = 0; start < n; start += holder->chunk_rows) {
      const int64_t len = std::min(holder->chunk_rows, n - start);
      const at::Tensor index = targets.narrow(0, start, len).unsqueeze(1);
      at::Tensor rows = hidden.narrow(0, start, len).detach().requires_grad_(true);
      at::Tensor logits;
      {
        at::AutoGradMode grad_on(true);
        logits = holder->head(rows).to(at::kFloat);
      }
      const at::Tensor plain = logits.detach();
      out.narrow(0, start, len).copy_(chunk_logprobs(plain, targets.narrow(0, start, len)));
      at::Tensor d_logits = at::_softmax(plain, 1, /*half_to_float=*/false).neg_();
      d_logits.scatter_add_(1, index, at::ones({len, 1}, d_logits.options()));
      at::AutoGradMode grad_on(true);
      const auto grads = torch::autograd::grad({logits}, {rows}, {d_logits}, /*retain_graph=*/false,
                                               /*create_graph=*/false, /*allow_unused=*/true);
      if (grads[0].defined()) grad_hidden.narrow(0, start, len).copy_(grads[0]);
      else grad_hidden.narrow(0, start, len).zero_();
    }
    ctx->saved_data["grad_hidden"] = grad_hidden;
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor grad_hidden = ctx->saved_data["grad_hidden"].toTensor();
    const at::Tensor scale = grad_outputs[0].to(grad_hidden.scalar_type()).unsqueeze(1);
    return {grad_hidden * scale, at::Tensor(), at::Tensor()};
  }
};

// The same by plain autograd: right for any head, trainable or not.
at::Tensor chunked_logprobs(const at::Tensor& hidden, const at::Tensor& targets, const core::LogitsFn& head) {
  std::vector<at::Tensor> parts;
  for (int64_t start = 0; start < hidden.size(0); start += kChunkRows) {
    const int64_t len = std::min(kChunkRows, hidden.size(0) - start);
    parts.push_back(chunk_logprobs(head(hidden.narrow(0, start, len)).to(at::kFloat), targets.narrow(0, start, len)));
  }
  return at::cat(parts);
}

}  // namespace

at::Tensor token_cross_entropy_sum(Model& model, const Batch& batch, int64_t* token_count) {
  return core::supervised_loss_sum(model, batch, token_count);
}

at::Tensor supervised_token_logprobs(Model& model, const Batch& batch) {
  at::Tensor hidden = model.forward(batch);  // [B, T, H]
  const int64_t B = batch.targets.size(0), T = batch.targets.size(1);
  const at::Tensor flat_targets = batch.targets.reshape({-1});
  const at::Tensor idx = (flat_targets != kIgnoreIndex).nonzero().squeeze(1);
  at::Tensor zeros = at::zeros({B * T}, hidden.options().dtype(at::kFloat));
  if (idx.numel() == 0) return (zeros + hidden.sum().to(at::kFloat) * 0.0).reshape({B, T});  // keeps the graph
  const at::Tensor h = hidden.reshape({-1, hidden.size(-1)}).index_select(0, idx);
  const at::Tensor t = flat_targets.index_select(0, idx);
  const core::LogitsFn head = [&model](const at::Tensor& x) { return model.logits(x); };
  const auto head_params = core::head_trainable_tensors(model);
  const bool fused = at::GradMode::is_enabled() && h.requires_grad() && head_params && head_params->empty();
  at::Tensor lp;
  if (fused) {
    auto holder = c10::make_intrusive<LogprobHead>();
    holder->head = head;
    holder->chunk_rows = kChunkRows;
    lp = FusedHeadLogprobs::apply(h, t, holder);
  } else {
    lp = chunked_logprobs(h, t, head);
  }
  return zeros.index_copy(0, idx, lp).reshape({B, T});
}

at::Tensor sum_by_document(const at::Tensor& values, const at::Tensor& doc_ids, int64_t num_docs) {
  MFTK_CHECK(values.dim() == 2 && values.sizes() == doc_ids.sizes(), "sum_by_document: values and doc_ids must be [B, T]");
  const at::Tensor ids = doc_ids.to(at::kLong);
  MFTK_CHECK(ids.numel() == 0 || ids.max().item<int64_t>() < num_docs,
             "sum_by_document: a doc id is not below num_docs = {}", num_docs);
  const at::Tensor padding = ids < 0;
  return at::zeros({values.size(0), num_docs}, values.options())
      .scatter_add(1, ids.masked_fill(padding, 0), values.masked_fill(padding, 0));
}

DocumentLogprobs document_logprobs(Model& model, const Batch& batch) {
  const int64_t docs = batch.doc_ids.numel() ? std::max<int64_t>(batch.doc_ids.max().item<int64_t>() + 1, 0) : 0;
  DocumentLogprobs out;
  out.logp = sum_by_document(supervised_token_logprobs(model, batch), batch.doc_ids, docs);
  out.tokens = sum_by_document((batch.targets != kIgnoreIndex).to(at::kLong), batch.doc_ids, docs);
  return out;
}

}  // namespace mftk
