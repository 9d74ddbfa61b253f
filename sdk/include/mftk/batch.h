// What a packer hands the trainer and the trainer hands the model.
//
// defines: mftk::Example, mftk::PackedRow, mftk::Batch
#pragma once

#include <cstdint>
#include <vector>

#include "mftk/tensor.h"

namespace mftk {

// One tokenized document. loss_mask[t] != 0 means token t is a training
// target (predicted from tokens 0..t-1).
struct Example {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss_mask;
};

// One row of a batch, possibly holding several documents.
//  targets[t]   token to predict at position t, or kIgnoreIndex. Targets are
//               already shifted, so a row never asks one document to predict
//               the next document's first token.
//  position_ids restart at 0 for every document.
//  doc_ids      document index within the row (0, 1, ...), -1 for padding.
//  Attention rule every model must follow: query i sees key j iff
//  doc_ids[i] == doc_ids[j] >= 0, j <= i, and (with a sliding window W)
//  position_ids[i] - position_ids[j] < W.
struct PackedRow {
  std::vector<int32_t> ids;
  std::vector<int32_t> targets;
  std::vector<int32_t> position_ids;
  std::vector<int32_t> doc_ids;
};

// Rows stacked to [B, T]; all int64 except doc_ids (int32).
struct Batch {
  at::Tensor input_ids;
  at::Tensor targets;
  at::Tensor position_ids;
  at::Tensor doc_ids;
};

}  // namespace mftk
