// One example per row; see padding_packer.h.
#include "padding_packer.h"

#include <algorithm>
#include <numeric>

#include "mftk/error.h"
#include "mftk/rows.h"

namespace mftk::padding_packer {

std::vector<size_t> row_order(const std::vector<size_t>& lengths, const PaddingPackerOptions& options,
                              uint64_t seed) {
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), size_t{0});
  if (!options.group_by_length) return order;
  MFTK_CHECK(options.bucket_size > 0, "padding packer: bucket_size must be positive, got {}", options.bucket_size);
  SplitMix64 rng(seed);
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng.below(i)]);
  const auto bucket = static_cast<size_t>(options.bucket_size);
  for (size_t begin = 0; begin < order.size(); begin += bucket) {
    const size_t end = std::min(order.size(), begin + bucket);
    std::stable_sort(order.begin() + long(begin), order.begin() + long(end),
                     [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  }
  return order;
}

std::vector<PackedRow> PaddingPacker::pack(const std::vector<Example>& examples, const PackOptions& options,
                                           PackStats& stats) {
  MFTK_CHECK(options.sequence_len > 0, "padding packer: sequence_len must be positive, got {}",
             options.sequence_len);
  const auto capacity = static_cast<size_t>(options.sequence_len);
  stats = PackStats{};
  std::vector<size_t> kept, lengths;
  for (size_t i = 0; i < examples.size(); ++i) {
    const size_t length = examples[i].ids.size();
    MFTK_CHECK(length > 0, "padding packer: example {} has no tokens", i);
    if (length > capacity) {
      if (options.drop_long) {
        ++stats.dropped;
        continue;
      }
      ++stats.truncated;
    }
    kept.push_back(i);
    lengths.push_back(std::min(length, capacity));
  }

  std::vector<PackedRow> rows;
  rows.reserve(kept.size());
  for (size_t item : row_order(lengths, options_, options.seed)) {
    PackedRow row;
    append_document(row, examples[kept[item]], lengths[item]);
    if (options.pad_to_sequence_len) pad_row(row, capacity, options.pad_id);
    stats.real_tokens += static_cast<int64_t>(lengths[item]);
    stats.total_tokens += static_cast<int64_t>(row.ids.size());
    rows.push_back(std::move(row));
  }
  stats.examples = static_cast<int64_t>(kept.size());
  stats.rows = static_cast<int64_t>(rows.size());
  return rows;
}

}  // namespace mftk::padding_packer
