// The "swa_packer" packer: several documents per row, first-fit decreasing.
//
// defines: mftk::swa_packer::SwaPacker, mftk::swa_packer::first_fit_decreasing
//
// Documents are never split: the model enforces the sliding window from
// doc_ids and position_ids (the attention rule in mftk/batch.h), so a row of
// sequence_len > sliding_window needs no cutting here. See README.md.
#pragma once

#include <cstddef>
#include <vector>

#include "mftk/packer.h"

namespace mftk::swa_packer {

// Bins of `capacity` for items of the given lengths (each 1..capacity):
// items in order of decreasing length (ties: lower index first), each into
// the first open bin with room, else a new bin. Returns the item indices of
// every bin, bins in the order they were opened, items in placement order.
// O(n log n) through a max-tree over the bins' free space.
std::vector<std::vector<size_t>> first_fit_decreasing(const std::vector<size_t>& lengths, size_t capacity);

class SwaPacker final : public Packer {
 public:
  // Examples longer than sequence_len are truncated to their first
  // sequence_len tokens, or dropped with options.drop_long (both counted).
  std::vector<PackedRow> pack(const std::vector<Example>& examples, const PackOptions& options,
                              PackStats& stats) override;
};

}  // namespace mftk::swa_packer
