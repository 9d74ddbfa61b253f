// The nearest-code search of bitsandbytes' 8-bit blockwise optimizer
// kernels over a dynamic map (mftk/dynamic_map.h): the map values plus a
// bucketed lookup that answers in two compares.
//
// defines: mftk::paged_adamw_8bit::CodeValues, mftk::paged_adamw_8bit::CodeBook
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "mftk/dynamic_map.h"

namespace mftk::paged_adamw_8bit {

// The optimizer's maps are the SDK's dynamic maps (saved with its state as
// qmap1/qmap2, and read back from there on resume).
using CodeValues = DynamicMap;

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

  // x moves past code k exactly when x > boundaries()[k] (k < 255): the
  // device-generic update searches these with at::searchsorted.
  const std::array<float, 256>& boundaries() const { return boundary_; }

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
