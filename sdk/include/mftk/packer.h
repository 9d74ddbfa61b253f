// Packer plugins: examples -> fixed-length rows with document boundaries.
//
// defines: mftk::PackOptions, mftk::PackStats, mftk::Packer
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mftk/batch.h"

namespace mftk {

struct PackOptions {
  int64_t sequence_len = 2048;
  bool pad_to_sequence_len = false;
  std::optional<int64_t> sliding_window;  // the model's
  int32_t pad_id = 0;
  bool drop_long = false;  // drop examples longer than sequence_len instead of truncating
  uint64_t seed = 0;
};

struct PackStats {
  int64_t examples = 0;
  int64_t rows = 0;
  int64_t real_tokens = 0;   // document tokens
  int64_t total_tokens = 0;  // including padding
  int64_t truncated = 0;
  int64_t dropped = 0;
  double efficiency() const { return total_tokens ? double(real_tokens) / double(total_tokens) : 0.0; }
};

// ComponentSpec trait of a packer whose rows stay correct when they are
// longer than the model's sliding window (PackOptions::sliding_window): no
// token attends across documents or further back than the window. `mftk
// lint` warns when sequence_len exceeds the window and the packer lacks it.
inline constexpr const char* kTraitRespectsSlidingWindow = "respects_sliding_window";

class Packer {
 public:
  virtual ~Packer() = default;
  virtual std::vector<PackedRow> pack(const std::vector<Example>& examples,
                                      const PackOptions& options, PackStats& stats) = 0;
};

}  // namespace mftk
