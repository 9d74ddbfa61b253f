// Fused head + cross-entropy. The gradient of sum_i CE_i with respect to the
// logits is softmax - onehot(target), known as soon as the logits are: the
// chunk's softmax becomes that gradient in place (1 subtracted at each
// target), is pushed through the head at once, and is freed before the next
// chunk, so one [chunk, vocab] allocation is reused chunk after chunk.
#include "linear_cross_entropy.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>

#include "mftk/error.h"

namespace mftk::core {
namespace {

struct HeadHolder : torch::CustomClassHolder {
  LogitsFn head;
  int64_t chunk_rows = 0;
};

// Loss sum of one chunk of fp32 logits; with want_grad, `logits` is turned
// into d(loss sum)/d(logits) = softmax - onehot.
//
// The gradient path takes the softmax (one fused pass per row, the row held
// in L2) and reads each loss as -log p[target], rather than a log-softmax
// followed by a separate exp pass over [rows, vocab]. Where p[target] is
// too small for fp32 to hold its log accurately (below ~1e-30), that row's
// loss is taken from its log-sum-exp instead.
at::Tensor chunk_loss(at::Tensor& logits, const at::Tensor& targets, bool want_grad) {
  const at::Tensor index = targets.unsqueeze(1);
  if (!want_grad) {
    const at::Tensor lse = at::logsumexp(logits, 1, /*keepdim=*/true);
    return (lse - logits.gather(1, index)).sum();
  }
  at::Tensor probs = at::_softmax(logits, 1, /*half_to_float=*/false);
  const at::Tensor p_target = probs.gather(1, index).squeeze(1);
  at::Tensor row_loss = p_target.log().neg();
  const at::Tensor tiny = (p_target < 1e-30).nonzero().squeeze(1);
  if (tiny.numel() > 0) {
    const at::Tensor rows = logits.index_select(0, tiny);
    const at::Tensor exact = at::logsumexp(rows, 1) - rows.gather(1, index.index_select(0, tiny)).squeeze(1);
    row_loss.index_copy_(0, tiny, exact);
  }
  probs.scatter_add_(1, index, at::full({targets.size(0), 1}, -1.0, probs.options()));
  logits = probs;
  return row_loss.sum();
}

struct FusedHeadCrossEntropy : torch::autograd::Function<FusedHeadCrossEntropy> {
  // params: the head's tensors that train; they are inputs so that autograd
  // routes their gradients (accumulated here over the chunks) to them.
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& hidden,
                            const at::Tensor& targets, at::TensorList params, c10::intrusive_ptr<HeadHolder> holder) {
    const int64_t n = hidden.size(0);
    const bool want_hidden = hidden.requires_grad();
    at::Tensor grad_hidden = want_hidden ? at::empty_like(hidden, at::MemoryFormat::Contiguous) : at::Tensor();
    std::vector<at::Tensor> grad_params(params.size());
    at::Tensor total = at::zeros({}, hidden.options().dtype(at::kFloat));
    for (int64_t start = 0; start < n; start += holder->chunk_rows) {
      const int64_t len = std::min(holder->chunk_rows, n - start);
      at::Tensor rows = hidden.narrow(0, start, len).detach().requires_grad_(want_hidden);
      at::Tensor logits;
      {
        at::AutoGradMode grad_on(true);
        logits = holder->head(rows).to(at::kFloat);
      }
      at::Tensor grad_logits = logits.detach();  // read only: chunk_loss writes a new buffer
      total.add_(chunk_loss(grad_logits, targets.narrow(0, start, len), true));
      std::vector<at::Tensor> wrt;
      if (want_hidden) wrt.push_back(rows);
      wrt.insert(wrt.end(), params.begin(), params.end());
      at::AutoGradMode grad_on(true);
      const auto grads = torch::autograd::grad({logits}, wrt, {grad_logits}, /*retain_graph=*/false,
                                               /*create_graph=*/false, /*allow_unused=*/true);
      if (want_hidden) grad_hidden.narrow(0, start, len).copy_(grads[0]);
      for (size_t i = 0; i < params.size(); ++i) {
        const at::Tensor& g = grads[i + (want_hidden ? 1 : 0)];
        if (!g.defined()) continue;
        grad_params[i] = grad_params[i].defined() ? grad_params[i].add_(g) : g.clone();
      }
    }
    ctx->saved_data["grad_hidden"] = grad_hidden;
    ctx->saved_data["grad_params"] = c10::List<at::Tensor>(grad_params);
    return total;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const at::Tensor scale = grad_outputs[0];
    auto scaled = [&](const at::Tensor& g) { return g.defined() ? g * scale.to(g.scalar_type()) : at::Tensor(); };
    torch::autograd::variable_list result{scaled(ctx->saved_data["grad_hidden"].toTensor()), at::Tensor()};
    for (const at::Tensor& g : ctx->saved_data["grad_params"].toTensorList()) result.push_back(scaled(g));
    result.emplace_back();  // holder
    return result;
  }
};

void check_shapes(const at::Tensor& hidden, const at::Tensor& targets, int64_t chunk_rows) {
  MFTK_CHECK(hidden.dim() == 2 && targets.dim() == 1 && hidden.size(0) == targets.size(0),
             "cross-entropy: expected hidden [n, H] and targets [n]");
  MFTK_CHECK(chunk_rows > 0, "cross-entropy: chunk_rows must be positive");
}

}  // namespace

at::Tensor linear_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& targets, const LogitsFn& head,
                                    int64_t chunk_rows, const std::vector<at::Tensor>& head_params) {
  check_shapes(hidden, targets, chunk_rows);
  for (const at::Tensor& p : head_params)
    MFTK_CHECK(p.defined() && p.requires_grad(), "linear_cross_entropy_sum: head_params must require grad");
  const bool grads = at::GradMode::is_enabled() && (hidden.requires_grad() || !head_params.empty());
  if (!grads) return chunked_cross_entropy_sum(hidden, targets, head, chunk_rows);
  auto holder = c10::make_intrusive<HeadHolder>();
  holder->head = head;
  holder->chunk_rows = chunk_rows;
  // As a TensorList, so that autograd sees each tensor as an input (a
  // std::vector would be one opaque argument and its tensors get no gradient).
  return FusedHeadCrossEntropy::apply(hidden, targets, at::TensorList(head_params), holder);
}

at::Tensor chunked_cross_entropy_sum(const at::Tensor& hidden, const at::Tensor& targets, const LogitsFn& head,
                                     int64_t chunk_rows) {
  check_shapes(hidden, targets, chunk_rows);
  const int64_t n = hidden.size(0);
  at::Tensor total;
  for (int64_t start = 0; start < n; start += chunk_rows) {
    const int64_t len = std::min(chunk_rows, n - start);
    at::Tensor logits = head(hidden.narrow(0, start, len)).to(at::kFloat);
    at::Tensor part = at::GradMode::is_enabled() && logits.requires_grad()
                          ? at::cross_entropy_loss(logits, targets.narrow(0, start, len), {}, at::Reduction::Sum)
                          : chunk_loss(logits, targets.narrow(0, start, len), false);
    total = total.defined() ? total + part : part;
  }
  return total.defined() ? total : at::zeros({}, hidden.options().dtype(at::kFloat));
}

}  // namespace mftk::core
