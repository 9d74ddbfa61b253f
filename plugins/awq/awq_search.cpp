// AWQ's scale and clipping searches (see awq_search.h).
#include "awq_search.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>

#include "awq_quant.h"
#include "mftk/error.h"

namespace mftk::awq {

at::Tensor weight_group_mean(const std::vector<at::Tensor>& weights, int64_t group_size) {
  const at::Tensor w = at::cat(weights, 0).to(at::kFloat);
  const int64_t out = w.size(0), in = w.size(1);
  at::Tensor g = w.abs().reshape({out, in / group_size, group_size});
  g = g / (std::get<0>(g.max(2, true)) + 1e-6);  // AutoAWQ's epsilon keeps all-zero groups finite
  return g.reshape({out, in}).mean(0);
}

double output_error(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(x, (a - b).t()).pow(2).mean().item<double>();
}

namespace {

// Mean squared output error of the group when each W becomes Q(W s) / s.
double group_loss(const at::Tensor& x, const std::vector<at::Tensor>& weights, const at::Tensor& s,
                  int64_t group_size) {
  double sum = 0;
  int64_t elements = 0;
  for (const auto& w : weights) {
    const at::Tensor q = fake_quantize(w * s, group_size) / s;
    sum += at::matmul(x, (w - q).t()).pow(2).sum().item<double>();
    elements += x.size(0) * w.size(0);
  }
  return sum / double(std::max<int64_t>(elements, 1));
}

}  // namespace

ScaleSearch search_scales(const at::Tensor& x_abs_mean, const at::Tensor& x, const std::vector<at::Tensor>& weights,
                          int64_t group_size, int64_t n_grid, bool duo_scaling) {
  MFTK_CHECK(!weights.empty(), "awq: search_scales needs at least one weight");
  const int64_t in = weights.front().size(1);
  const at::Tensor x_mean = x_abs_mean.to(at::kFloat);
  const at::Tensor w_mean = weight_group_mean(weights, group_size);
  ScaleSearch best;
  best.scales = at::ones({in}, at::kFloat);
  best.rtn_loss = group_loss(x, weights, best.scales, group_size);
  best.loss = best.rtn_loss;
  for (int64_t i = 0; i < n_grid; ++i) {
    const double alpha = double(i) / double(n_grid);
    at::Tensor s = duo_scaling ? (x_mean.pow(alpha) / (w_mean.pow(1 - alpha) + 1e-4)).clamp_min(1e-4)
                               : x_mean.pow(alpha).clamp_min(1e-4);
    s = s / std::sqrt(s.max().item<double>() * s.min().item<double>());
    s = at::where(at::isfinite(s), s, at::ones_like(s));
    const double loss = group_loss(x, weights, s, group_size);
    if (loss < best.loss) {
      best.loss = loss;
      best.alpha = alpha;
      best.scales = s;
    }
  }
  return best;
}

at::Tensor search_clip(const at::Tensor& weight, const at::Tensor& x, int64_t group_size, int64_t n_grid,
                       double max_shrink, int64_t out_batch) {
  const int64_t out = weight.size(0), in = weight.size(1), groups = in / group_size;
  const at::Tensor xg = x.to(at::kFloat).reshape({x.size(0), groups, group_size});
  std::vector<at::Tensor> best_parts;
  for (int64_t begin = 0; begin < out; begin += out_batch) {
    const int64_t rows = std::min(out_batch, out - begin);
    const at::Tensor w = weight.narrow(0, begin, rows).to(at::kFloat).reshape({rows, groups, group_size});
    const at::Tensor original_max = std::get<0>(w.abs().max(2, true));  // [rows, groups, 1]
    // Partial dot product of every sampled token with every group: [n, rows, groups].
    const at::Tensor reference = at::einsum("ngk,rgk->nrg", {xg, w});
    at::Tensor best_max = original_max.clone();
    at::Tensor best_err = at::full({rows, groups, 1}, std::numeric_limits<float>::infinity(), at::kFloat);
    for (int64_t i = 0; i < int64_t(max_shrink * double(n_grid)); ++i) {
      const at::Tensor max_val = original_max * (1.0 - double(i) / double(n_grid));
      const at::Tensor clipped = at::max(at::min(w, max_val), -max_val);
      const at::Tensor q = fake_quantize(clipped.reshape({rows, in}), group_size).reshape({rows, groups, group_size});
      const at::Tensor err = (at::einsum("ngk,rgk->nrg", {xg, q}) - reference).pow(2).mean(0).unsqueeze(2);
      const at::Tensor better = err < best_err;
      best_err = at::where(better, err, best_err);
      best_max = at::where(better, max_val, best_max);
    }
    best_parts.push_back(best_max.squeeze(2));
  }
  return at::cat(best_parts, 0);
}

at::Tensor apply_clip(const at::Tensor& weight, const at::Tensor& max_val, int64_t group_size) {
  const int64_t out = weight.size(0), in = weight.size(1);
  const at::Tensor w = weight.to(at::kFloat).reshape({out, in / group_size, group_size});
  const at::Tensor m = max_val.unsqueeze(2);
  return at::max(at::min(w, m), -m).reshape({out, in});
}

}  // namespace mftk::awq
