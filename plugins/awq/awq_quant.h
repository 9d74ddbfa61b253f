// AWQ's 4-bit group quantiser and AutoAWQ's "GEMM" packing (docs/formats.md §5.1-5.3, AWQ layout).
//
//   quantize_groups   W [out, in] -> integer codes, fp16 scales and integer zero points,
//                     one (scale, zero) per output channel and group of G input channels
//   fake_quantize     W -> dequantize(quantize(W)), what the searches score
//   pack_gemm         -> qweight int32 [in, out/8], qzeros int32 [in/G, out/8], scales fp16 [in/G, out]
//
// defines: mftk::awq::kMaxCode, mftk::awq::kPackOrder, mftk::awq::GroupQuantized,
//          mftk::awq::quantize_groups, mftk::awq::fake_quantize, mftk::awq::pack_int4_columns,
//          mftk::awq::GemmTensors, mftk::awq::pack_gemm
#pragma once

#include <array>
#include <cstdint>

#include <ATen/core/Tensor.h>

namespace mftk::awq {

constexpr int64_t kMaxCode = 15;  // 4 bits, asymmetric: codes 0..15
// Nibble i of a packed int32 holds column 8c + kPackOrder[i] (AutoAWQ's AWQ_ORDER).
constexpr std::array<int64_t, 8> kPackOrder = {0, 2, 4, 6, 1, 3, 5, 7};

// Asymmetric round-to-nearest with a zero point, per output channel and
// group of `group_size` consecutive input channels:
//   scale = fp16(max(max_w - min_w, 1e-5) / 15), zero = clamp(-round(min_w / scale), 0, 15),
//   q = clamp(round(w / scale) + zero, 0, 15), W ~ (q - zero) * scale.
// The scale is rounded to fp16 before the codes are chosen, so the codes are
// the best ones for the scale the checkpoint actually stores.
struct GroupQuantized {
  at::Tensor codes;   // int32 [out, in], 0..15
  at::Tensor zeros;   // int32 [out, in / group_size], 0..15
  at::Tensor scales;  // float16 [out, in / group_size]
  int64_t group_size = 0;

  // fp32 [out, in]: (q - zero) * scale.
  at::Tensor dequantize() const;
};

// weight: [out, in], any floating dtype; in % group_size == 0 (checked).
GroupQuantized quantize_groups(const at::Tensor& weight, int64_t group_size);
at::Tensor fake_quantize(const at::Tensor& weight, int64_t group_size);

// values: int32 [rows, cols] holding 0..15, cols % 8 == 0 -> int32 [rows, cols / 8]
// in AutoAWQ's interleaved nibble order; the int32 is the raw bit pattern
// (negative when the top nibble is 8 or more).
at::Tensor pack_int4_columns(const at::Tensor& values);

struct GemmTensors {
  at::Tensor qweight;  // int32 [in, out / 8]
  at::Tensor qzeros;   // int32 [in / G, out / 8]
  at::Tensor scales;   // float16 [in / G, out]
};
// The [in, out] orientation AutoAWQ's WQLinear_GEMM stores (transposed vs nn.Linear).
GemmTensors pack_gemm(const GroupQuantized& q);

}  // namespace mftk::awq
