// The "padding" packer: one example per row, the baseline swa_packer is
// measured against.
//
// defines: mftk::padding_packer::PaddingPackerOptions, mftk::padding_packer::PaddingPacker,
//          mftk::padding_packer::row_order
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "mftk/packer.h"

namespace mftk::padding_packer {

struct PaddingPackerOptions {
  // Order rows so that neighbours have similar lengths (less padding once
  // make_batch pads a micro-batch to its longest row).
  bool group_by_length = false;
  // Rows per length-sorted bucket; buckets follow a seeded shuffle.
  int64_t bucket_size = 64;
};

// The order examples become rows in. Without group_by_length: 0, 1, 2, ...
// With it: a SplitMix64 Fisher-Yates shuffle from `seed`, cut into buckets
// of bucket_size, each bucket sorted by decreasing length (ties keep the
// shuffled order). The same on every platform.
std::vector<size_t> row_order(const std::vector<size_t>& lengths, const PaddingPackerOptions& options,
                              uint64_t seed);

class PaddingPacker final : public Packer {
 public:
  explicit PaddingPacker(PaddingPackerOptions options = {}) : options_(options) {}
  // Examples longer than sequence_len are truncated to their first
  // sequence_len tokens, or dropped with options.drop_long (both counted).
  std::vector<PackedRow> pack(const std::vector<Example>& examples, const PackOptions& options,
                              PackStats& stats) override;

 private:
  PaddingPackerOptions options_;
};

}  // namespace mftk::padding_packer
