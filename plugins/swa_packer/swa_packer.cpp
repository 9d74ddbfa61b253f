// First-fit-decreasing packing; see swa_packer.h.
#include "swa_packer.h"

#include <algorithm>
#include <numeric>

#include "mftk/error.h"
#include "mftk/rows.h"

namespace mftk::swa_packer {

namespace {

// Max-tree over the free space of bins 0..n-1. Bins not opened yet are
// full-capacity leaves, so "the leftmost leaf with room" is exactly first
// fit: an open bin if one has room, otherwise the next new bin.
class FreeSpaceTree {
 public:
  FreeSpaceTree(size_t bins, size_t capacity) {
    while (leaves_ < bins) leaves_ *= 2;
    tree_.assign(2 * leaves_, 0);
    for (size_t i = 0; i < bins; ++i) tree_[leaves_ + i] = capacity;
    for (size_t i = leaves_ - 1; i > 0; --i) tree_[i] = std::max(tree_[2 * i], tree_[2 * i + 1]);
  }
  // Leftmost bin with at least `size` free; the caller guarantees one exists.
  size_t first_with_room(size_t size) const {
    size_t node = 1;
    while (node < leaves_) node = tree_[2 * node] >= size ? 2 * node : 2 * node + 1;
    return node - leaves_;
  }
  void take(size_t bin, size_t size) {
    size_t node = leaves_ + bin;
    tree_[node] -= size;
    for (node /= 2; node > 0; node /= 2) tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
  }

 private:
  size_t leaves_ = 1;
  std::vector<size_t> tree_;
};

}  // namespace

std::vector<std::vector<size_t>> first_fit_decreasing(const std::vector<size_t>& lengths, size_t capacity) {
  for (size_t i = 0; i < lengths.size(); ++i)
    MFTK_CHECK(lengths[i] >= 1 && lengths[i] <= capacity, "first_fit_decreasing: item {} has length {} "
               "(allowed 1..{})", i, lengths[i], capacity);
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return lengths[a] != lengths[b] ? lengths[a] > lengths[b] : a < b;
  });
  // At most one bin per item.
  FreeSpaceTree free_space(std::max<size_t>(lengths.size(), 1), capacity);
  std::vector<std::vector<size_t>> bins;
  for (size_t item : order) {
    const size_t bin = free_space.first_with_room(lengths[item]);
    if (bin == bins.size()) bins.emplace_back();
    bins[bin].push_back(item);
    free_space.take(bin, lengths[item]);
  }
  return bins;
}

std::vector<PackedRow> SwaPacker::pack(const std::vector<Example>& examples, const PackOptions& options,
                                       PackStats& stats) {
  MFTK_CHECK(options.sequence_len > 0, "swa_packer: sequence_len must be positive, got {}", options.sequence_len);
  const auto capacity = static_cast<size_t>(options.sequence_len);
  stats = PackStats{};
  // Which examples go in, and how many of their tokens.
  std::vector<size_t> kept, lengths;
  for (size_t i = 0; i < examples.size(); ++i) {
    const size_t length = examples[i].ids.size();
    MFTK_CHECK(length > 0, "swa_packer: example {} has no tokens", i);
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
  for (const std::vector<size_t>& bin : first_fit_decreasing(lengths, capacity)) {
    PackedRow row;
    for (size_t item : bin) {
      append_document(row, examples[kept[item]], lengths[item]);
      stats.real_tokens += static_cast<int64_t>(lengths[item]);
    }
    if (options.pad_to_sequence_len) pad_row(row, capacity, options.pad_id);
    stats.total_tokens += static_cast<int64_t>(row.ids.size());
    rows.push_back(std::move(row));
  }
  stats.examples = static_cast<int64_t>(kept.size());
  stats.rows = static_cast<int64_t>(rows.size());
  return rows;
}

}  // namespace mftk::swa_packer
