// An AWQ folder read back from disk as a dense checkpoint folder, for the
// export parity gate (core/model/export_parity.h): each quantised linear's
// qweight / qzeros / scales decoded as AutoAWQ's WQLinear_GEMM dequantises
// them, W[o, i] = (q[i, o] - z[i / G, o]) * s[i / G, o] (docs/formats.md §5, AWQ), and
// every other tensor (the norms with the folded scales among them) taken
// from the folder as written.
//
// defines: mftk::awq::unpack_int4_columns, mftk::awq::dequantize_gemm, mftk::awq::read_back_awq
#pragma once

#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

namespace mftk::awq {

// The inverse of pack_int4_columns: int32 [rows, cols / 8] -> int32 [rows, cols] of 0..15.
at::Tensor unpack_int4_columns(const at::Tensor& packed);

// qweight int32 [in, out / 8], qzeros int32 [in / G, out / 8], scales fp16
// [in / G, out] -> fp32 [out, in] (nn.Linear's orientation).
at::Tensor dequantize_gemm(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales);

// Writes out_dir/model.safetensors (fp32), config.json without its
// quantization_config, and the folder's other files; returns out_dir.
std::string read_back_awq(const std::string& awq_dir, const std::string& out_dir);

}  // namespace mftk::awq
