// AWQ's group quantiser and GEMM packing (see awq_quant.h).
#include "awq_quant.h"

#include <vector>

#include <ATen/ATen.h>

#include "mftk/error.h"

namespace mftk::awq {

GroupQuantized quantize_groups(const at::Tensor& weight, int64_t group_size) {
  MFTK_CHECK(weight.dim() == 2, "awq: quantize_groups wants a 2-D weight, got {} dims", weight.dim());
  const int64_t out = weight.size(0), in = weight.size(1);
  MFTK_CHECK(group_size > 0 && in % group_size == 0, "awq: {} input channels are not a whole number of groups of {}",
             in, group_size);
  const at::Tensor w = weight.to(at::kFloat).reshape({out, in / group_size, group_size});
  const at::Tensor max_w = std::get<0>(w.max(2, true));
  const at::Tensor min_w = std::get<0>(w.min(2, true));
  // fp16 round trip: the stored scale is the one the codes must fit.
  const at::Tensor scale = ((max_w - min_w).clamp_min(1e-5) / double(kMaxCode)).to(at::kHalf).to(at::kFloat);
  const at::Tensor zero = (-at::round(min_w / scale)).clamp(0, double(kMaxCode));
  const at::Tensor codes = (at::round(w / scale) + zero).clamp(0, double(kMaxCode));
  GroupQuantized q;
  q.codes = codes.reshape({out, in}).to(at::kInt);
  q.zeros = zero.squeeze(2).to(at::kInt);
  q.scales = scale.squeeze(2).to(at::kHalf);
  q.group_size = group_size;
  return q;
}

at::Tensor GroupQuantized::dequantize() const {
  const int64_t out = codes.size(0), in = codes.size(1);
  const at::Tensor c = codes.to(at::kFloat).reshape({out, in / group_size, group_size});
  const at::Tensor z = zeros.to(at::kFloat).unsqueeze(2);
  const at::Tensor s = scales.to(at::kFloat).unsqueeze(2);
  return ((c - z) * s).reshape({out, in});
}

at::Tensor fake_quantize(const at::Tensor& weight, int64_t group_size) {
  return quantize_groups(weight, group_size).dequantize();
}

at::Tensor pack_int4_columns(const at::Tensor& values) {
  MFTK_CHECK(values.dim() == 2 && values.size(1) % 8 == 0, "awq: packing wants [rows, 8k] values, got {} dims, {} columns", values.dim(),
             values.dim() == 2 ? values.size(1) : 0);
  const int64_t rows = values.size(0), packed_cols = values.size(1) / 8;
  const at::Tensor order = at::tensor(std::vector<int64_t>(kPackOrder.begin(), kPackOrder.end()), at::kLong);
  // [rows, cols/8, 8] with nibble slot i holding column 8c + order[i].
  const at::Tensor slots = values.to(at::kLong).reshape({rows, packed_cols, 8}).index_select(2, order);
  std::vector<int64_t> nibble_weight;  // 2^(4i)
  for (int64_t i = 0; i < 8; ++i) nibble_weight.push_back(int64_t(1) << (4 * i));
  at::Tensor word = (slots.bitwise_and(0xF) * at::tensor(nibble_weight, at::kLong)).sum(2);  // 0 .. 2^32-1
  // Reinterpret the unsigned 32-bit pattern as int32 (two's complement).
  word = at::where(word >= (int64_t(1) << 31), word - (int64_t(1) << 32), word);
  return word.to(at::kInt).contiguous();
}

GemmTensors pack_gemm(const GroupQuantized& q) {
  MFTK_CHECK(q.codes.size(0) % 8 == 0, "awq: {} output channels are not a multiple of 8 (AutoAWQ's GEMM packing)",
             q.codes.size(0));
  GemmTensors t;
  t.qweight = pack_int4_columns(q.codes.t().contiguous());
  t.qzeros = pack_int4_columns(q.zeros.t().contiguous());
  t.scales = q.scales.t().contiguous();
  return t;
}

}  // namespace mftk::awq
