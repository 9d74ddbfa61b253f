// Preference pairs -> rows: the packing of type = "preference" data, done by
// the core (a packer plugin may split or regroup documents; a pair must
// stay whole and in order, mftk/objective.h).
//
// defines: mftk::core::pack_preference_pairs
#pragma once

#include <vector>

#include "mftk/batch.h"
#include "mftk/packer.h"

namespace mftk::core {

// examples[2k] (chosen) and examples[2k+1] (rejected) -> one row per pair,
// documents 0 and 1 (batch.h's rules: positions from 0, shifted targets,
// no attention between them). A pair longer than sequence_len in total is
// dropped and counted in stats.dropped (a truncated reply would be
// compared with a whole one); pad_to_sequence_len pads each row.
std::vector<PackedRow> pack_preference_pairs(const std::vector<Example>& examples, const PackOptions& options,
                                             PackStats& stats);

}  // namespace mftk::core
