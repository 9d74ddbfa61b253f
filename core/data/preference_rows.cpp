// Preference pairs -> rows; see preference_rows.h.
#include "preference_rows.h"

#include <fmt/format.h>

#include "batching.h"
#include "mftk/error.h"

namespace mftk::core {

std::vector<PackedRow> pack_preference_pairs(const std::vector<Example>& examples, const PackOptions& options,
                                             PackStats& stats) {
  MFTK_CHECK(examples.size() % 2 == 0, "preference data holds {} examples, not whole pairs", examples.size());
  std::vector<PackedRow> rows;
  for (size_t i = 0; i < examples.size(); i += 2) {
    const Example& chosen = examples[i];
    const Example& rejected = examples[i + 1];
    stats.examples += 2;
    const size_t length = chosen.ids.size() + rejected.ids.size();
    if (int64_t(length) > options.sequence_len) {
      ++stats.dropped;
      continue;
    }
    PackedRow row;
    append_document(row, chosen, chosen.ids.size());
    append_document(row, rejected, rejected.ids.size());
    stats.real_tokens += int64_t(length);
    if (options.pad_to_sequence_len) pad_row(row, size_t(options.sequence_len), options.pad_id);
    stats.total_tokens += int64_t(row.ids.size());
    rows.push_back(std::move(row));
  }
  stats.rows = int64_t(rows.size());
  return rows;
}

}  // namespace mftk::core
