// bitsandbytes' 8-bit "dynamic" quantisation map, the one table behind
// NF4's double quantisation (the absmax values) and the 8-bit optimizer
// states. Implemented once, in libmftk_core, for every plugin.
//
// defines: mftk::DynamicMap, mftk::make_dynamic_map, mftk::signed_dynamic_map,
//          mftk::unsigned_dynamic_map, mftk::nearest_dynamic_code
//
// The construction (docs/formats.md §7.1) is bitsandbytes'
// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)
// (bitsandbytes/functional.py): for
// i = 0..6, take float32 torch.linspace(0.1, 1, n_i) with n_i = 2^i + 1
// (signed) or 2^(i+1) + 1 (unsigned), the means of neighbouring points, times
// 10^(i-6), and with signed maps their negatives too; add 0 and 1; sort.
// Every step is a float32 tensor operation there, so every step rounds to
// float32 here (linspace as PyTorch's CPU kernel computes it: the first half
// of the points start + step * k, the rest end - step * (n - 1 - k)).
#pragma once

#include <array>
#include <cstdint>

namespace mftk {

// 256 values, strictly increasing: in [-1, 1] with 0 at code 127 (signed),
// or in [0, 1] with 0 at code 0 (unsigned); 1 is always code 255.
using DynamicMap = std::array<float, 256>;

DynamicMap make_dynamic_map(bool is_signed);

// The two maps, built once (thread-safe; never freed).
const DynamicMap& signed_dynamic_map();
const DynamicMap& unsigned_dynamic_map();

// The code bitsandbytes' blockwise quantisation kernel (kQuantizeBlockwise,
// not stochastic) picks for a value x already divided by its block's
// absmax: a 7-step binary search from code 127, then the nearer of the
// final pivot and its neighbour, comparing against float32 midpoints
// (a + b) * 0.5f; a value exactly on a midpoint keeps the final pivot.
// NaN gives code 0. (The 8-bit optimizer's kernel rounds ties differently;
// paged_adamw_8bit keeps its own search over this same table.)
uint8_t nearest_dynamic_code(const DynamicMap& map, float x);

}  // namespace mftk
