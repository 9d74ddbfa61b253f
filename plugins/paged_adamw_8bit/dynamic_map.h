// bitsandbytes' 8-bit "dynamic" quantisation maps and nearest-code lookup.
//
// defines: mftk::paged_adamw_8bit::make_dynamic_map,
//          mftk::paged_adamw_8bit::linspace_f32, mftk::paged_adamw_8bit::CodeBook
//
// FORMATS.md §7.1: for i = 0..6, take float32 linspace(0.1, 1, n_i) with
// n_i = 2^i + 1 (signed) or 2^(i+1) + 1 (unsigned), the midpoints of
// consecutive points, scaled by 10^(i-6) (and negated too when signed); add
// 0 and 1, sort. Both maps have 256 strictly increasing values in [-1, 1].
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace mftk::paged_adamw_8bit {

using CodeValues = std::array<float, 256>;

// float32 linspace with PyTorch's CPU formula: step = (end - start)/(n - 1);
// the first n/2 points are start + step*i, the rest end - step*(n - 1 - i).
// (Builds whose linspace rounds differently give maps that differ by at most
// 2 ulp in a few entries; the map is saved with the optimizer state.)
std::vector<float> linspace_f32(float start, float end, int64_t steps);

// create_dynamic_map(signed, max_exponent_bits=7, total_bits=8).
CodeValues make_dynamic_map(bool is_signed);

// A sorted map plus a fast nearest-code search with bitsandbytes' rule.
class CodeBook {
 public:
  // Throws mftk::Error unless `values` is strictly increasing.
  explicit CodeBook(const CodeValues& values);

  float value(uint8_t code) const { return values_[code]; }
  const CodeValues& values() const { return values_; }

  // The code nearest to x, measuring against the float32 midpoints
  // (a + b) * 0.5f of neighbouring values; a value exactly on a midpoint goes
  // to the even code. This is what the binary search in bitsandbytes'
  // quantize_2D returns. NaN gives code 0 (as there).
  uint8_t nearest(float x) const {
    if (x != x) return 0;
    uint32_t bits;
    static_assert(sizeof(bits) == sizeof(x));
    __builtin_memcpy(&bits, &x, sizeof(bits));
    unsigned code = start_[bits >> kBucketShift];
    if (max_scan_ <= kMaxScan) {
      // Branch-free: once x is below the next boundary, further rounds add 0.
      for (int round = 0; round < kMaxScan; ++round) code += x > boundary_[code];
    } else {
      while (x > boundary_[code]) ++code;
    }
    return static_cast<uint8_t>(code);
  }

  // The same, by a plain binary search over the boundaries (reference).
  uint8_t nearest_by_search(float x) const;

 private:
  static constexpr int kBucketShift = 16;  // buckets: sign, exponent, 7 mantissa bits
  static constexpr int kMaxScan = 2;       // boundaries per bucket in the bitsandbytes maps: <= 1
  CodeValues values_;
  // x moves past code k to k+1 exactly when x > boundary_[k]; for odd k the
  // midpoint itself belongs to k+1, so boundary_[k] is the float just below it.
  // boundary_[255] = +inf ends every scan at code 255.
  std::array<float, 256> boundary_;
  int max_scan_ = 0;  // most boundaries inside one bucket
  // Smallest code any float in the bucket (top 16 bits of x) can map to.
  std::vector<uint8_t> start_;
};

}  // namespace mftk::paged_adamw_8bit
