// ggml's scalar encodings (see ggml_quants.h). Written from the format
// definitions (ggml, MIT licensed: THIRD_PARTY_NOTICES.md); the unit tests
// pin them against torch's half conversion and Q8_0 blocks worked by hand,
// and the ctest ggml_quant_oracle against ggml's own ggml_quantize_chunk and
// to_float (ties, subnormals, overflow, infinities, NaN payloads included).
#include "ggml_quants.h"

#include "kquants.h"

#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk::gguf {
namespace {

uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Shifts m right by `shift` bits, rounding to nearest, ties to even.
uint32_t shift_round_even(uint32_t m, uint32_t shift) {
  const uint32_t kept = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  return kept + ((rest > half || (rest == half && (kept & 1))) ? 1 : 0);
}

}  // namespace

uint16_t fp32_to_fp16(float x) {
  const uint32_t u = bits_of(x);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000);
  const uint32_t a = u & 0x7fffffff;
  if (a > 0x7f800000) return sign | 0x7e00;  // NaN
  if (a == 0x7f800000) return sign | 0x7c00;  // infinity
  const int32_t e = int32_t(a >> 23) - 127;
  const uint32_t mantissa = a & 0x7fffff;
  if (e >= -14) {
    // Normal half: 5-bit exponent, 10 mantissa bits. A carry out of the
    // mantissa bumps the exponent, which is the correct rounding; past the
    // largest exponent that is infinity.
    if (e > 15) return sign | 0x7c00;
    const uint32_t h = (uint32_t(e + 15) << 10) + shift_round_even(mantissa, 13);
    return sign | uint16_t(h >= 0x7c00 ? 0x7c00 : h);
  }
  // Subnormal half (units of 2^-24); below 2^-25 everything rounds to zero.
  if (e < -25) return sign;
  const uint32_t m = mantissa | 0x800000;  // 24 significant bits, value m * 2^(e-23)
  return sign | uint16_t(shift_round_even(m, uint32_t(-14 - e + 13)));
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f;
  const uint32_t m = h & 0x3ff;
  if (e == 0x1f) return float_of(sign | 0x7f800000 | (m << 13));
  if (e == 0) {
    const float v = std::ldexp(float(m), -24);  // exact: 10 bits
    return sign ? -v : v;
  }
  return float_of(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t fp32_to_bf16(float x) {
  const uint32_t u = bits_of(x);
  if ((u & 0x7fffffff) > 0x7f800000) return uint16_t((u >> 16) | 64);  // NaN: force quiet
  return uint16_t((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

float bf16_to_fp32(uint16_t h) { return float_of(uint32_t(h) << 16); }

void quantize_row_q8_0(const float* x, uint8_t* out, size_t n) {
  MFTK_CHECK(n % kQ8_0BlockElements == 0, "q8_0: a row of {} values is not a whole number of 32-value blocks", n);
  for (size_t b = 0; b < n / kQ8_0BlockElements; ++b) {
    const float* block = x + b * kQ8_0BlockElements;
    uint8_t* dst = out + b * kQ8_0BlockBytes;
    float amax = 0.0f;
    for (size_t j = 0; j < kQ8_0BlockElements; ++j) amax = std::fmax(amax, std::fabs(block[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t d16 = fp32_to_fp16(d);
    std::memcpy(dst, &d16, 2);  // little-endian host
    for (size_t j = 0; j < kQ8_0BlockElements; ++j) {
      // x * id, not x / d: the reference multiplies, and the two can differ
      // in the last bit, which decides a tie.
      const float q = std::roundf(block[j] * id);
      dst[2 + j] = uint8_t(int8_t(q));
    }
  }
}

void dequantize_row_q8_0(const uint8_t* in, float* x, size_t n) {
  MFTK_CHECK(n % kQ8_0BlockElements == 0, "q8_0: a row of {} values is not a whole number of 32-value blocks", n);
  for (size_t b = 0; b < n / kQ8_0BlockElements; ++b) {
    const uint8_t* src = in + b * kQ8_0BlockBytes;
    uint16_t d16;
    std::memcpy(&d16, src, 2);
    const float d = fp16_to_fp32(d16);
    for (size_t j = 0; j < kQ8_0BlockElements; ++j) x[b * kQ8_0BlockElements + j] = d * float(int8_t(src[2 + j]));
  }
}

void encode_row(GgmlType type, const float* x, uint8_t* out, size_t n) {
  switch (type) {
    case GgmlType::f32: std::memcpy(out, x, n * sizeof(float)); return;
    case GgmlType::f16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case GgmlType::bf16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
      return;
    case GgmlType::q8_0: quantize_row_q8_0(x, out, n); return;
    case GgmlType::q4_k: quantize_row_q4_k(x, out, n); return;
    case GgmlType::q6_k: quantize_row_q6_k(x, out, n); return;
    default: throw Error(fmt::format("gguf: encoding to {} is not supported", ggml_type_traits(type).name));
  }
}

void decode_row(GgmlType type, const uint8_t* in, float* x, size_t n) {
  switch (type) {
    case GgmlType::f32: std::memcpy(x, in, n * sizeof(float)); return;
    case GgmlType::f16:
    case GgmlType::bf16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        x[i] = type == GgmlType::f16 ? fp16_to_fp32(h) : bf16_to_fp32(h);
      }
      return;
    case GgmlType::q8_0: dequantize_row_q8_0(in, x, n); return;
    case GgmlType::q4_k: dequantize_row_q4_k(in, x, n); return;
    case GgmlType::q6_k: dequantize_row_q6_k(in, x, n); return;
    default: throw Error(fmt::format("gguf: decoding {} is not supported", ggml_type_traits(type).name));
  }
}

}  // namespace mftk::gguf
