// NF4 kernels (see nf4_kernels.h). Quantisation runs once per weight at
// load time; dequantisation runs on every forward and backward, so it is a
// table lookup per nibble with the table scaled once per block, parallel
// over blocks, with an AVX2 variant picked at run time.
#include "nf4_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <fmt/format.h>

#include "mftk/dynamic_map.h"
#include "mftk/error.h"

namespace mftk::nf4 {

namespace {

// Blocks per parallel task: about 32k values, so tiny weights stay on one thread.
int64_t grain_blocks(int64_t blocksize) { return std::max<int64_t>(1, 32768 / blocksize); }

inline float as_float(float v) { return v; }
inline float as_float(c10::BFloat16 v) { return static_cast<float>(v); }
inline float as_float(c10::Half v) { return static_cast<float>(v); }

template <class T>
void quantize_block_range(const T* values, int64_t n, int64_t blocksize, int64_t first_block, int64_t end_block,
                          uint8_t* packed, float* absmax) {
  std::vector<float> scaled(static_cast<size_t>(blocksize) + 1);
  std::vector<uint8_t> codes(static_cast<size_t>(blocksize) + 1);
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    float block_max = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      const float v = as_float(values[begin + i]);
      scaled[i] = v;
      block_max = std::fmax(block_max, std::fabs(v));
    }
    absmax[b] = block_max;
    // bitsandbytes multiplies by the reciprocal (an all-zero block gives
    // inf * 0 = NaN -> code 0, dequantised as -1 * 0 = 0).
    const float inverse = 1.0f / block_max;
    // An odd tail is padded with 0, scaled like the rest (CUDA loads 0 there).
    if (count & 1) scaled[count] = 0.0f;
    const int64_t padded = count + (count & 1);
    for (int64_t i = 0; i < padded; ++i) scaled[i] *= inverse;
    // Count the thresholds below each value: a form the compiler vectorises.
    std::fill(codes.begin(), codes.begin() + padded, uint8_t{0});
    for (float t : kNf4Thresholds)
      for (int64_t i = 0; i < padded; ++i) codes[i] += static_cast<uint8_t>(scaled[i] > t);
    uint8_t* out = packed + begin / 2;
    for (int64_t i = 0; i < padded; i += 2) out[i / 2] = static_cast<uint8_t>((codes[i] << 4) | codes[i + 1]);
  }
}

// The block's table: code values times its absmax, as float and as bf16 bits.
inline void scaled_table(float block_absmax, float* table) {
  for (int k = 0; k < 16; ++k) table[k] = kNf4Codes[k] * block_absmax;
}
inline void scaled_table_bf16(float block_absmax, uint32_t* table) {
  for (int k = 0; k < 16; ++k) table[k] = c10::BFloat16(kNf4Codes[k] * block_absmax).x;
}

// --- scalar ----------------------------------------------------------------

void dequantize_f32_scalar(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                           int64_t first_block, int64_t end_block, float* out) {
  float table[16];
  for (int64_t b = first_block; b < end_block; ++b) {
    scaled_table(absmax[b], table);
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    const uint8_t* bytes = packed + begin / 2;
    float* o = out + begin;
    const int64_t pairs = count / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      o[2 * j] = table[bytes[j] >> 4];
      o[2 * j + 1] = table[bytes[j] & 0x0F];
    }
    if (count & 1) o[count - 1] = table[bytes[pairs] >> 4];
  }
}

void dequantize_bf16_scalar(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            int64_t first_block, int64_t end_block, uint16_t* out) {
  uint32_t table[16];
  for (int64_t b = first_block; b < end_block; ++b) {
    scaled_table_bf16(absmax[b], table);
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    const uint8_t* bytes = packed + begin / 2;
    uint16_t* o = out + begin;
    const int64_t pairs = count / 2;
    for (int64_t j = 0; j < pairs; ++j) {
      o[2 * j] = static_cast<uint16_t>(table[bytes[j] >> 4]);
      o[2 * j + 1] = static_cast<uint16_t>(table[bytes[j] & 0x0F]);
    }
    if (count & 1) o[count - 1] = static_cast<uint16_t>(table[bytes[pairs] >> 4]);
  }
}

// --- AVX2 --------------------------------------------------------------------
// 16 packed bytes -> 32 codes in output order (high nibble first) -> four
// lookups of 8 lanes: permutevar8x32 in the low and the high half of the
// table, bit 3 of the code choosing between them.

__attribute__((target("avx2"))) inline __m256i lookup8(__m256i table_low, __m256i table_high, __m128i codes8) {
  const __m256i index = _mm256_cvtepu8_epi32(codes8);
  const __m256 low = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(table_low, index));
  const __m256 high = _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(table_high, index));
  const __m256 use_high = _mm256_castsi256_ps(_mm256_slli_epi32(index, 28));
  return _mm256_castps_si256(_mm256_blendv_ps(low, high, use_high));
}

// The 32 codes of 16 bytes: first (codes 0..15) and second (16..31).
__attribute__((target("avx2"))) inline void split_codes(const uint8_t* bytes, __m128i* first, __m128i* second) {
  const __m128i nibble = _mm_set1_epi8(0x0F);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes));
  const __m128i high = _mm_and_si128(_mm_srli_epi16(raw, 4), nibble);
  const __m128i low = _mm_and_si128(raw, nibble);
  *first = _mm_unpacklo_epi8(high, low);
  *second = _mm_unpackhi_epi8(high, low);
}

__attribute__((target("avx2"))) void dequantize_f32_avx2(const uint8_t* packed, const float* absmax, int64_t n,
                                                          int64_t blocksize, int64_t first_block,
                                                          int64_t end_block, float* out) {
  alignas(32) float table[16];
  for (int64_t b = first_block; b < end_block; ++b) {
    scaled_table(absmax[b], table);
    const __m256i table_low = _mm256_castps_si256(_mm256_load_ps(table));
    const __m256i table_high = _mm256_castps_si256(_mm256_load_ps(table + 8));
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    const uint8_t* bytes = packed + begin / 2;
    float* o = out + begin;
    const int64_t pairs = count / 2;
    int64_t j = 0;
    for (; j + 16 <= pairs; j += 16) {
      __m128i first, second;
      split_codes(bytes + j, &first, &second);
      float* dst = o + 2 * j;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), lookup8(table_low, table_high, first));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 8),
                          lookup8(table_low, table_high, _mm_srli_si128(first, 8)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16), lookup8(table_low, table_high, second));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 24),
                          lookup8(table_low, table_high, _mm_srli_si128(second, 8)));
    }
    for (; j < pairs; ++j) {
      o[2 * j] = table[bytes[j] >> 4];
      o[2 * j + 1] = table[bytes[j] & 0x0F];
    }
    if (count & 1) o[count - 1] = table[bytes[pairs] >> 4];
  }
}

// Two 8 x 32-bit vectors of bf16 bits -> 16 x uint16 in order.
__attribute__((target("avx2"))) inline __m256i narrow16(__m256i a, __m256i b) {
  // packus works per 128-bit lane: [a0-3 b0-3 | a4-7 b4-7]; reorder the quarters.
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(a, b), 0xD8);
}

__attribute__((target("avx2"))) void dequantize_bf16_avx2(const uint8_t* packed, const float* absmax, int64_t n,
                                                           int64_t blocksize, int64_t first_block,
                                                           int64_t end_block, uint16_t* out) {
  alignas(32) uint32_t table[16];
  for (int64_t b = first_block; b < end_block; ++b) {
    scaled_table_bf16(absmax[b], table);
    const __m256i table_low = _mm256_load_si256(reinterpret_cast<const __m256i*>(table));
    const __m256i table_high = _mm256_load_si256(reinterpret_cast<const __m256i*>(table + 8));
    const int64_t begin = b * blocksize;
    const int64_t count = std::min(blocksize, n - begin);
    const uint8_t* bytes = packed + begin / 2;
    uint16_t* o = out + begin;
    const int64_t pairs = count / 2;
    int64_t j = 0;
    for (; j + 16 <= pairs; j += 16) {
      __m128i first, second;
      split_codes(bytes + j, &first, &second);
      uint16_t* dst = o + 2 * j;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst),
                          narrow16(lookup8(table_low, table_high, first),
                                   lookup8(table_low, table_high, _mm_srli_si128(first, 8))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 16),
                          narrow16(lookup8(table_low, table_high, second),
                                   lookup8(table_low, table_high, _mm_srli_si128(second, 8))));
    }
    for (; j < pairs; ++j) {
      o[2 * j] = static_cast<uint16_t>(table[bytes[j] >> 4]);
      o[2 * j + 1] = static_cast<uint16_t>(table[bytes[j] & 0x0F]);
    }
    if (count & 1) o[count - 1] = static_cast<uint16_t>(table[bytes[pairs] >> 4]);
  }
}

bool use_avx2(DequantPath path) {
  switch (path) {
    case DequantPath::scalar:
      return false;
    case DequantPath::avx2:
      if (!avx2_available())
        throw Error("nf4: the AVX2 dequantisation path was asked for, but this CPU has no AVX2",
                    "use DequantPath::automatic");
      return true;
    case DequantPath::automatic:
      break;
  }
  return avx2_available();
}

void check_layout(int64_t n, int64_t blocksize) {
  if (n < 0 || blocksize < 2 || blocksize % 2 != 0)
    throw Error(fmt::format("nf4: bad layout (n = {}, blocksize = {}); blocksize must be even and positive", n,
                            blocksize));
}

}  // namespace

bool avx2_available() {
  static const bool available = __builtin_cpu_supports("avx2");
  return available;
}

void quantize_blocks(const void* values, c10::ScalarType dtype, int64_t n, int64_t blocksize, uint8_t* packed,
                     float* absmax) {
  check_layout(n, blocksize);
  if (dtype != c10::ScalarType::Float && dtype != c10::ScalarType::BFloat16 && dtype != c10::ScalarType::Half)
    throw Error(fmt::format("nf4: cannot quantise {} values", c10::toString(dtype)),
                "NF4 quantises float32, bfloat16 or float16 weights");
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  at::parallel_for(0, blocks, grain_blocks(blocksize), [&](int64_t first, int64_t end) {
    switch (dtype) {
      case c10::ScalarType::Float:
        quantize_block_range(static_cast<const float*>(values), n, blocksize, first, end, packed, absmax);
        break;
      case c10::ScalarType::BFloat16:
        quantize_block_range(static_cast<const c10::BFloat16*>(values), n, blocksize, first, end, packed, absmax);
        break;
      case c10::ScalarType::Half:
        quantize_block_range(static_cast<const c10::Half*>(values), n, blocksize, first, end, packed, absmax);
        break;
      default:
        break;  // refused above
    }
  });
}

void dequantize_blocks_f32(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, float* out,
                           DequantPath path) {
  check_layout(n, blocksize);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const bool avx2 = use_avx2(path);
  at::parallel_for(0, blocks, grain_blocks(blocksize), [&](int64_t first, int64_t end) {
    if (avx2)
      dequantize_f32_avx2(packed, absmax, n, blocksize, first, end, out);
    else
      dequantize_f32_scalar(packed, absmax, n, blocksize, first, end, out);
  });
}

void dequantize_blocks_bf16(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            uint16_t* out, DequantPath path) {
  check_layout(n, blocksize);
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const bool avx2 = use_avx2(path);
  at::parallel_for(0, blocks, grain_blocks(blocksize), [&](int64_t first, int64_t end) {
    if (avx2)
      dequantize_bf16_avx2(packed, absmax, n, blocksize, first, end, out);
    else
      dequantize_bf16_scalar(packed, absmax, n, blocksize, first, end, out);
  });
}

void double_quantize_absmax(const float* absmax, int64_t blocks, uint8_t* codes, float* nested_absmax,
                            float* offset) {
  if (blocks <= 0) throw Error("nf4: double quantisation of an empty absmax");
  double sum = 0.0;
  for (int64_t b = 0; b < blocks; ++b) sum += absmax[b];
  const float mean = static_cast<float>(sum / static_cast<double>(blocks));
  *offset = mean;
  const DynamicMap& map = signed_dynamic_map();
  std::vector<float> centred(kNestedBlocksize);
  for (int64_t begin = 0; begin < blocks; begin += kNestedBlocksize) {
    const int64_t count = std::min(kNestedBlocksize, blocks - begin);
    float block_max = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
      centred[i] = absmax[begin + i] - mean;
      block_max = std::fmax(block_max, std::fabs(centred[i]));
    }
    nested_absmax[begin / kNestedBlocksize] = block_max;
    const float inverse = 1.0f / block_max;
    for (int64_t i = 0; i < count; ++i) codes[begin + i] = nearest_dynamic_code(map, centred[i] * inverse);
  }
}

void recover_absmax(const uint8_t* codes, const float* nested_absmax, const float* map, float offset,
                    int64_t blocks, float* absmax) {
  for (int64_t b = 0; b < blocks; ++b) {
    // Two roundings, as bitsandbytes' dequantize kernel and then `+= offset`.
    volatile float scaled = map[codes[b]] * nested_absmax[b / kNestedBlocksize];
    absmax[b] = scaled + offset;
  }
}

}  // namespace mftk::nf4
