// bitsandbytes' 8-bit "dynamic" quantisation map (FORMATS.md §7.1) and the
// nearest-code search of its blockwise quantisation kernel. Shared by the
// plugins that need it (nf4's double quantisation; 8-bit optimizer states).
//
// defines: mftk::core::DynamicMap, mftk::core::linspace_f32,
//          mftk::core::make_dynamic_map, mftk::core::signed_dynamic_map,
//          mftk::core::nearest_dynamic_code
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace mftk::core {

// 256 values, strictly increasing, in [-1, 1] (signed) or [0, 1] (unsigned).
using DynamicMap = std::array<float, 256>;

// float32 linspace as PyTorch's CPU kernel computes it: step = (end -
// start) / (steps - 1); the first steps/2 points are start + step * i, the
// others end - step * (steps - 1 - i), each product rounded to float.
std::vector<float> linspace_f32(float start, float end, int64_t steps);

// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8): for
// i = 0..6, the midpoints of float32 linspace(0.1, 1, n_i) with n_i = 2^i + 1
// (signed) or 2^(i+1) + 1 (unsigned), times 10^(i-6) (and negated when
// signed); then 0 and 1; sorted. Every value is a float32 product, as the
// tensor ops that build it in Python round them.
DynamicMap make_dynamic_map(bool is_signed);

// The signed map, built once.
const DynamicMap& signed_dynamic_map();

// The code bitsandbytes' blockwise quantisation kernel (dQuantize, not
// stochastic) picks for a value x already divided by its block's absmax: a
// 7-step binary search from code 127, then the nearer of the final pivot
// and its neighbour, comparing against float32 midpoints (a + b) * 0.5f; a
// value exactly on a midpoint keeps the final pivot. NaN gives code 0.
uint8_t nearest_dynamic_code(const DynamicMap& map, float x);

}  // namespace mftk::core
