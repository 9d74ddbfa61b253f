// Rows -> batches and the packing summary `mftk preprocess` prints; the
// row-building rules every packer shares are the SDK's (mftk/rows.h).
//
// defines: mftk::core::make_batch, mftk::core::pack_options_from_recipe,
//          mftk::core::describe_packing
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "mftk/batch.h"
#include "mftk/packer.h"
#include "mftk/rows.h"

namespace mftk::core {

class Recipe;

// The row rules packers share live in the SDK (mftk/rows.h); the core uses
// them under their old names.
using ::mftk::append_document;
using ::mftk::pad_row;
using ::mftk::SplitMix64;

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
