// The NF4 number format as bitsandbytes defines it (docs/formats.md §6, NF4): the
// 16-value code table, blockwise quantisation into packed nibbles, the
// dequantisation kernels (scalar and AVX2), and double quantisation of the
// per-block absmax. Plain loops over raw buffers; nf4_tensor.h wraps them
// in tensors.
//
// defines: mftk::nf4::kNf4Codes, mftk::nf4::kNestedBlocksize, mftk::nf4::kNf4Thresholds,
//          mftk::nf4::nearest_nf4_code, mftk::nf4::DequantPath, mftk::nf4::avx2_available,
//          mftk::nf4::quantize_blocks, mftk::nf4::dequantize_blocks_f32,
//          mftk::nf4::dequantize_blocks_bf16, mftk::nf4::double_quantize_absmax,
//          mftk::nf4::recover_absmax
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include <c10/core/ScalarType.h>

namespace mftk::nf4 {

// Index = the 4-bit code. The float32 values of bitsandbytes' get_4bit_type("nf4").
inline constexpr std::array<float, 16> kNf4Codes = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// Double quantisation quantises the absmax values in blocks of 256.
inline constexpr int64_t kNestedBlocksize = 256;

// threshold[k] separates codes k and k+1: the float literals of bitsandbytes'
// dQuantizeNF4 decision tree. They are midpoints of the code values taken
// before those were rounded to float, so four of them differ in the last bit
// from the midpoints of kNf4Codes; the literals are what the kernel compares.
inline constexpr std::array<float, 15> kNf4Thresholds = {
    -0.8480964004993439f,   -0.6106329262256622f,  -0.4599952697753906f, -0.33967943489551544f,
    -0.23460740596055984f,  -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
    0.1202552504837513f,    0.2035212516784668f,   0.2920137718319893f,  0.3893125355243683f,
    0.5016634166240692f,    0.6427869200706482f,   0.8614784181118011f};

// Code k+1 is chosen over code k when x > threshold[k]; a value exactly on
// a threshold takes the lower code; NaN gives code 0 (as the tree does).
inline uint8_t nearest_nf4_code(float x) {
  uint8_t code = 0;
  for (size_t k = 0; k < kNf4Thresholds.size(); ++k) code += static_cast<uint8_t>(x > kNf4Thresholds[k]);
  return code;
}

enum class DequantPath { automatic, scalar, avx2 };

// Whether this CPU runs the AVX2 dequantisation kernel.
bool avx2_available();

// Quantises n row-major values of `dtype` (Float, BFloat16 or Half) as
// bitsandbytes' kQuantizeBlockwise does: per block absmax = max |x| as
// float32, x * (1 / absmax) -> nearest code, two codes per byte with the
// first (even) element in the high nibble. packed: (n + 1) / 2 bytes (an odd
// n pads the last low nibble with the code of 0 / absmax); absmax: one
// float per block. blocksize must be even. Runs on at::parallel_for.
void quantize_blocks(const void* values, c10::ScalarType dtype, int64_t n, int64_t blocksize, uint8_t* packed,
                     float* absmax);

// out[i] = code[nibble i] * absmax[i / blocksize], as float32 (or rounded
// to bfloat16, nearest-even). Per block a 16-entry table scaled by the
// block's absmax; both paths read the same table, so they agree bit for bit.
void dequantize_blocks_f32(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, float* out,
                           DequantPath path = DequantPath::automatic);
void dequantize_blocks_bf16(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize,
                            uint16_t* out, DequantPath path = DequantPath::automatic);

// Double quantisation (docs/formats.md §6.3, double quantisation): offset = mean(absmax) (summed in
// double, rounded to float), then absmax - offset quantised blockwise (256)
// with the signed dynamic map: codes[blocks], nested_absmax[ceil(blocks/256)].
void double_quantize_absmax(const float* absmax, int64_t blocks, uint8_t* codes, float* nested_absmax,
                            float* offset);

// absmax[b] = map[codes[b]] * nested_absmax[b / 256] + offset, with the
// product and the sum each rounded to float (bitsandbytes' two kernels).
void recover_absmax(const uint8_t* codes, const float* nested_absmax, const float* map, float offset,
                    int64_t blocks, float* absmax);

}  // namespace mftk::nf4
