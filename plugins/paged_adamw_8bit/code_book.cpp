// CodeBook (see code_book.h).
#include "code_book.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk::paged_adamw_8bit {

CodeBook::CodeBook(const CodeValues& values) : values_(values) {
  for (int k = 0; k < 255; ++k) {
    if (!(values_[k] < values_[k + 1]))
      throw Error(fmt::format("quantisation map is not strictly increasing at codes {} and {} ({} >= {})", k,
                              k + 1, values_[k], values_[k + 1]),
                  "the optimizer state is damaged; resume from an earlier checkpoint");
    const float midpoint = (values_[k] + values_[k + 1]) * 0.5f;
    boundary_[k] = (k % 2 == 0) ? midpoint : std::nextafter(midpoint, -std::numeric_limits<float>::infinity());
  }
  boundary_[255] = std::numeric_limits<float>::infinity();
  for (int k = 0; k + 1 < 255; ++k)
    if (!(boundary_[k] < boundary_[k + 1]))
      throw Error(fmt::format("quantisation map codes {}..{} are too close together to tell apart", k, k + 2));

  start_.resize(size_t{1} << (32 - kBucketShift));
  for (uint32_t bucket = 0; bucket < start_.size(); ++bucket) {
    // The numerically smallest float of the bucket: the lowest bit pattern
    // for positive floats, the highest for negative ones (NaNs excluded).
    const bool negative = (bucket >> (31 - kBucketShift)) & 1u;
    uint32_t bits = negative ? ((bucket << kBucketShift) | ((1u << kBucketShift) - 1)) : (bucket << kBucketShift);
    float lowest;
    __builtin_memcpy(&lowest, &bits, sizeof(lowest));
    // NaN-only buckets are never looked up (nearest() returns 0 for NaN).
    if (lowest != lowest) lowest = negative ? -std::numeric_limits<float>::infinity() : 0.0f;
    start_[bucket] = nearest_by_search(lowest);
    // ... and the largest, to know how far a scan may have to go.
    bits = negative ? (bucket << kBucketShift) : ((bucket << kBucketShift) | ((1u << kBucketShift) - 1));
    float highest;
    __builtin_memcpy(&highest, &bits, sizeof(highest));
    if (highest == highest) max_scan_ = std::max(max_scan_, nearest_by_search(highest) - start_[bucket]);
  }
}

uint8_t CodeBook::nearest_by_search(float x) const {
  if (x != x) return 0;
  // Number of boundaries strictly below x.
  const auto it = std::lower_bound(boundary_.begin(), boundary_.begin() + 255, x);
  return static_cast<uint8_t>(it - boundary_.begin());
}

}  // namespace mftk::paged_adamw_8bit
