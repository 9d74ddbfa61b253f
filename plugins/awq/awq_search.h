// AWQ's two searches (docs/formats.md §5.5, AWQ search, after AutoAWQ's scale.py / quantizer.py):
//
//   search_scales  per input channel s for a group of linears sharing an input:
//                  s = x_mean^a / w_mean^(1-a) ("duo scaling"), a on a grid of 20,
//                  scored by the mean squared error of the group's outputs when
//                  each W is replaced by Q(W diag(s)) diag(1/s)
//   search_clip    per output channel and group, the max |w| (shrunk by up to 50%)
//                  that minimises the error of that group's partial dot products
//
// Both work on a sample of recorded input rows x [tokens, in] in fp32.
//
// defines: mftk::awq::ScaleSearch, mftk::awq::weight_group_mean, mftk::awq::search_scales,
//          mftk::awq::search_clip, mftk::awq::apply_clip, mftk::awq::output_error
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mftk::awq {

struct ScaleSearch {
  at::Tensor scales;         // fp32 [in]; all ones when no grid point beat plain rounding
  double alpha = -1;         // the chosen grid ratio; -1: no scaling (plain rounding won)
  double loss = 0;           // output MSE with the chosen scales
  double rtn_loss = 0;       // output MSE of plain round-to-nearest (s = 1)
};

// Step 1 of §5.5: the group's weights stacked on the output dim, each
// quantisation group normalised by its max |w|, averaged over output rows.
at::Tensor weight_group_mean(const std::vector<at::Tensor>& weights, int64_t group_size);

// x_abs_mean: fp32 [in], mean |x| over all calibration tokens; x: fp32 [n, in]
// (a sample of them) on which the loss is measured; weights: fp32 [out_i, in].
// Besides AutoAWQ's 20 grid points, s = 1 (plain rounding) is a candidate too,
// so the chosen scales never score worse than no scaling on the sample.
ScaleSearch search_scales(const at::Tensor& x_abs_mean, const at::Tensor& x, const std::vector<at::Tensor>& weights,
                          int64_t group_size, int64_t n_grid = 20, bool duo_scaling = true);

// Per output channel and group, the clipping bound max_val [out, in/G]:
// orig_max * (1 - i/n_grid) for i < max_shrink * n_grid, scored by the mean
// squared error over the sample of x_group . w_group, output rows in
// batches of `out_batch` to bound memory.
at::Tensor search_clip(const at::Tensor& weight, const at::Tensor& x, int64_t group_size, int64_t n_grid = 20,
                       double max_shrink = 0.5, int64_t out_batch = 64);
// W clamped to [-max_val, max_val] per group.
at::Tensor apply_clip(const at::Tensor& weight, const at::Tensor& max_val, int64_t group_size);

// mean((x a^T - x b^T)^2): how far the outputs of weight b are from those of a.
double output_error(const at::Tensor& x, const at::Tensor& a, const at::Tensor& b);

}  // namespace mftk::awq
