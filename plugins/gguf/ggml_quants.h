// ggml's scalar encodings, bit-exact with its reference (C) implementations:
// fp32 -> fp16 and bf16 conversions and the Q8_0 block quantiser
// (docs/formats.md §4.7, GGUF blocks). Plain C++, no torch: the exporter hands rows of floats.
//
// defines: mftk::gguf::fp32_to_fp16, mftk::gguf::fp16_to_fp32,
//          mftk::gguf::fp32_to_bf16, mftk::gguf::bf16_to_fp32,
//          mftk::gguf::kQ8_0BlockElements, mftk::gguf::kQ8_0BlockBytes,
//          mftk::gguf::quantize_row_q8_0, mftk::gguf::dequantize_row_q8_0,
//          mftk::gguf::encode_row, mftk::gguf::decode_row
#pragma once

#include <cstddef>
#include <cstdint>

#include "mftk/gguf_format.h"

namespace mftk::gguf {

// IEEE half, round to nearest even; overflow gives infinity, NaN stays NaN.
uint16_t fp32_to_fp16(float x);
float fp16_to_fp32(uint16_t h);

// bfloat16 as ggml_compute_fp32_to_bf16: round to nearest even on the upper
// 16 bits; a NaN keeps its upper bits with the quiet bit forced on.
uint16_t fp32_to_bf16(float x);
float bf16_to_fp32(uint16_t h);

// block_q8_0 = { fp16 d; int8 qs[32] }: 34 bytes per 32 values.
constexpr size_t kQ8_0BlockElements = 32;
constexpr size_t kQ8_0BlockBytes = 34;

// quantize_row_q8_0_ref: per block amax = max |x|, d = amax / 127 (float),
// id = d != 0 ? 1 / d : 0, q = roundf(x * id) (halves away from zero), d
// stored as fp16. n must be a multiple of 32; out gets n / 32 * 34 bytes.
void quantize_row_q8_0(const float* x, uint8_t* out, size_t n);
// x = fp16(d) * q.
void dequantize_row_q8_0(const uint8_t* in, float* x, size_t n);

// One row of n values in a tensor type the exporter writes (F32, F16, BF16,
// Q8_0, Q4_K, Q6_K; the K-quants are in kquants.h); out gets ggml_row_bytes(type, n) bytes. Throws for others.
void encode_row(GgmlType type, const float* x, uint8_t* out, size_t n);
// The inverse, for the tests and the exporter's self-check.
void decode_row(GgmlType type, const uint8_t* in, float* x, size_t n);

}  // namespace mftk::gguf
