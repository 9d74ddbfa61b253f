// The row-building rules every packer shares (implemented in libmftk_core):
// how a document becomes tokens of a PackedRow (mftk/batch.h) and how a row
// is padded, plus the seeded shuffle packers order rows with. A packer that
// builds its rows with these gets the targets, positions and document ids
// the trainer and every model expect; one that builds them by hand must
// follow the same rules (batch.h) and is checked by `mftk plugin check`.
//
//   PackedRow row;
//   append_document(row, examples[0], examples[0].ids.size());
//   append_document(row, examples[1], 100);   // the first 100 tokens only
//   if (options.pad_to_sequence_len) pad_row(row, options.sequence_len, options.pad_id);
//
// defines: mftk::SplitMix64, mftk::append_document, mftk::pad_row
#pragma once

#include <cstddef>
#include <cstdint>

#include "mftk/batch.h"

namespace mftk {

// Sebastiano Vigna's SplitMix64: a fixed algorithm, so data order never
// depends on the standard library (std::shuffle's is implementation-defined).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next();
  // Uniform in [0, bound), bound > 0, without modulo bias.
  uint64_t below(uint64_t bound);

 private:
  uint64_t state_;
};

// Appends the first `length` tokens of one document to a row (batch.h rules):
// position ids from 0, the next free doc id, and shifted targets
// (targets[t] = ids[t+1] when loss_mask[t+1], else kIgnoreIndex; the last
// token of the document gets kIgnoreIndex so it never predicts the next one).
// Throws mftk::Error when length is 0 or above the example's size, or when
// the example's ids and loss mask differ in length.
void append_document(PackedRow& row, const Example& example, size_t length);

// Pads a row up to `length` tokens: pad_id, target kIgnoreIndex, position 0,
// doc -1. A row already that long is left as it is.
void pad_row(PackedRow& row, size_t length, int32_t pad_id);

}  // namespace mftk
