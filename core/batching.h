// Rows -> batches, the row-building rules every packer shares, and the
// packing summary `mftk preprocess` prints.
//
// defines: mftk::core::SplitMix64, mftk::core::append_document, mftk::core::pad_row,
//          mftk::core::make_batch, mftk::core::pack_options_from_recipe,
//          mftk::core::describe_packing
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mftk/batch.h"
#include "mftk/packer.h"

namespace mftk::core {

class Recipe;

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
void append_document(PackedRow& row, const Example& example, size_t length);

// Pads a row up to `length` tokens: pad_id, target kIgnoreIndex, position 0, doc -1.
void pad_row(PackedRow& row, size_t length, int32_t pad_id);

// Stacks rows into [B, T] tensors, T = the longest row, shorter rows padded
// as pad_row does. int64 everywhere except doc_ids (int32).
Batch make_batch(const std::vector<PackedRow>& rows, int32_t pad_id = 0);
Batch make_batch(const PackedRow* rows, size_t count, int32_t pad_id = 0);

// sequence_len, pad_to_sequence_len ([training]), drop_long_examples ([data])
// and seed; pad_id and sliding_window come from the model and stay default.
PackOptions pack_options_from_recipe(const Recipe& recipe);

// Summary lines: examples, tokens, trainable tokens, a power-of-two length
// histogram of the examples, rows, packing efficiency (against the emitted
// rows and against rows of sequence_len), truncated and dropped counts.
std::vector<std::string> describe_packing(const std::vector<Example>& examples, const std::vector<PackedRow>& rows,
                                          const PackStats& stats, int64_t sequence_len);

}  // namespace mftk::core
