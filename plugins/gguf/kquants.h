// ggml's K-quant super-blocks of 256 values, bit-exact with its reference
// quantisers (quantize_row_q4_K_ref, quantize_row_q6_K_ref: what
// llama-quantize writes without an importance matrix). Layouts in
// docs/formats.md §4.7 (GGUF blocks). Plain C++, no torch.
//
// defines: mftk::gguf::kQK_K, kQ4_KBlockBytes, kQ6_KBlockBytes,
//          mftk::gguf::quantize_row_q4_k, dequantize_row_q4_k,
//          mftk::gguf::quantize_row_q6_k, dequantize_row_q6_k
#pragma once

#include <cstddef>
#include <cstdint>

namespace mftk::gguf {

constexpr size_t kQK_K = 256;
constexpr size_t kQ4_KBlockBytes = 144;  // fp16 d, fp16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
constexpr size_t kQ6_KBlockBytes = 210;  // 128 bytes low nibbles, 64 bytes high 2 bits, 16 int8 scales, fp16 d

// Q4_K: 8 sub-blocks of 32, x = d*sc[j]*q - dmin*m[j], q in 0..15. Each
// sub-block's scale and min come from ggml's weighted least-squares search
// (make_qkx2_quants: weights sqrt(mean x^2) + |x|, 21 candidate scales
// (15 + (-1 + 0.1 i)) / (max - min), the min kept <= 0); the 8 scales and
// mins are then quantised to 6 bits against d = max/63, dmin = max/63, and
// every value re-rounded against the stored scales.
void quantize_row_q4_k(const float* x, uint8_t* out, size_t n);
void dequantize_row_q4_k(const uint8_t* in, float* x, size_t n);

// Q6_K: 16 sub-blocks of 16, x = d*scale[j]*(q - 32), q in 0..63. Each
// sub-block's scale is ggml's make_qx_quants (x^2-weighted, 19 candidate
// scales -(32 + 0.1 i) / max, i = -9..9); the 16 scales become int8 against
// d = -max_scale/128, and every value is re-rounded against them.
void quantize_row_q6_k(const float* x, uint8_t* out, size_t n);
void dequantize_row_q6_k(const uint8_t* in, float* x, size_t n);

}  // namespace mftk::gguf
