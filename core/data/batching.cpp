// Row rules (mftk/rows.h), batches and the packing summary; see batching.h.
#include "batching.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "mftk/error.h"
#include "mftk/tensor.h"
#include "recipe.h"

// mftk/rows.h: the SDK's row rules.
namespace mftk {

uint64_t SplitMix64::next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::below(uint64_t bound) {
  MFTK_CHECK(bound > 0, "SplitMix64::below(0)");
  // Reject the few low values that would make some residues more likely.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = next();
    if (r >= threshold) return r % bound;
  }
}

void append_document(PackedRow& row, const Example& example, size_t length) {
  MFTK_CHECK(example.ids.size() == example.loss_mask.size(), "example has {} ids but {} loss-mask entries",
             example.ids.size(), example.loss_mask.size());
  MFTK_CHECK(length > 0 && length <= example.ids.size(), "append_document: length {} of a {}-token example",
             length, example.ids.size());
  int32_t doc = 0;
  for (auto it = row.doc_ids.rbegin(); it != row.doc_ids.rend(); ++it) {
    if (*it >= 0) {
      doc = *it + 1;
      break;
    }
  }
  constexpr auto kIgnore = static_cast<int32_t>(kIgnoreIndex);
  for (size_t t = 0; t < length; ++t) {
    row.ids.push_back(example.ids[t]);
    const bool has_next = t + 1 < length;
    row.targets.push_back(has_next && example.loss_mask[t + 1] ? example.ids[t + 1] : kIgnore);
    row.position_ids.push_back(static_cast<int32_t>(t));
    row.doc_ids.push_back(doc);
  }
}

void pad_row(PackedRow& row, size_t length, int32_t pad_id) {
  if (row.ids.size() >= length) return;
  const size_t extra = length - row.ids.size();
  row.ids.insert(row.ids.end(), extra, pad_id);
  row.targets.insert(row.targets.end(), extra, static_cast<int32_t>(kIgnoreIndex));
  row.position_ids.insert(row.position_ids.end(), extra, 0);
  row.doc_ids.insert(row.doc_ids.end(), extra, -1);
}

}  // namespace mftk

namespace mftk::core {

Batch make_batch(const PackedRow* rows, size_t count, int32_t pad_id) {
  MFTK_CHECK(count > 0, "make_batch: no rows");
  size_t longest = 0;
  for (size_t b = 0; b < count; ++b) {
    const PackedRow& r = rows[b];
    MFTK_CHECK(r.targets.size() == r.ids.size() && r.position_ids.size() == r.ids.size() &&
                   r.doc_ids.size() == r.ids.size(),
               "make_batch: row {} has {} ids, {} targets, {} position ids, {} doc ids", b, r.ids.size(),
               r.targets.size(), r.position_ids.size(), r.doc_ids.size());
    longest = std::max(longest, r.ids.size());
  }
  MFTK_CHECK(longest > 0, "make_batch: every row is empty");
  const auto B = static_cast<int64_t>(count), T = static_cast<int64_t>(longest);
  Batch batch;
  batch.input_ids = at::full({B, T}, int64_t{pad_id}, at::kLong);
  batch.targets = at::full({B, T}, kIgnoreIndex, at::kLong);
  batch.position_ids = at::zeros({B, T}, at::kLong);
  batch.doc_ids = at::full({B, T}, -1, at::kInt);
  // Host bookkeeping, CPU only on purpose: the rows are std::vector data and
  // the batch is built in host memory once; the trainer moves it to the
  // device (no device-generic twin needed, see mftk/kernels.h).
  int64_t* ids = batch.input_ids.data_ptr<int64_t>();
  int64_t* targets = batch.targets.data_ptr<int64_t>();
  int64_t* positions = batch.position_ids.data_ptr<int64_t>();
  int32_t* docs = batch.doc_ids.data_ptr<int32_t>();
  for (size_t b = 0; b < count; ++b) {
    const PackedRow& r = rows[b];
    const size_t base = b * longest;
    std::copy(r.ids.begin(), r.ids.end(), ids + base);
    std::copy(r.targets.begin(), r.targets.end(), targets + base);
    std::copy(r.position_ids.begin(), r.position_ids.end(), positions + base);
    std::copy(r.doc_ids.begin(), r.doc_ids.end(), docs + base);
  }
  return batch;
}

Batch make_batch(const std::vector<PackedRow>& rows, int32_t pad_id) {
  return make_batch(rows.data(), rows.size(), pad_id);
}

PackOptions pack_options_from_recipe(const Recipe& recipe) {
  const Config& training = recipe.section("training");
  PackOptions options;
  options.sequence_len = training.get_int("sequence_len");
  options.pad_to_sequence_len = training.get_bool("pad_to_sequence_len");
  options.drop_long = recipe.section("data").get_bool("drop_long_examples");
  options.seed = static_cast<uint64_t>(training.get_int("seed"));
  return options;
}

std::vector<std::string> describe_packing(const std::vector<Example>& examples, const std::vector<PackedRow>& rows,
                                          const PackStats& stats, int64_t sequence_len) {
  std::vector<std::string> lines;
  int64_t example_tokens = 0;
  std::map<int, int64_t> histogram;  // k -> examples with 2^(k-1) < length <= 2^k
  for (const Example& e : examples) {
    const auto length = static_cast<int64_t>(e.ids.size());
    example_tokens += length;
    int k = 0;
    while ((int64_t{1} << k) < length) ++k;
    ++histogram[k];
  }
  int64_t trainable = 0;
  for (const PackedRow& row : rows)
    trainable += std::count_if(row.targets.begin(), row.targets.end(),
                               [](int32_t t) { return t != static_cast<int32_t>(kIgnoreIndex); });

  lines.push_back(fmt::format("examples: {} in rows ({} truncated to sequence_len {}, {} dropped as longer)",
                              stats.examples, stats.truncated, sequence_len, stats.dropped));
  lines.push_back(fmt::format("tokens: {} in examples, {} in rows, {} trainable targets", example_tokens,
                              stats.real_tokens, trainable));
  lines.push_back("example lengths (tokens):");
  for (const auto& [k, count] : histogram) {
    const int64_t high = int64_t{1} << k;
    const int64_t low = k == 0 ? 1 : (high / 2) + 1;
    const std::string range = low == high ? fmt::format("{}", high) : fmt::format("{}-{}", low, high);
    lines.push_back(fmt::format("  {:>13}: {}", range, count));
  }
  const double fill = stats.rows > 0 && sequence_len > 0
                          ? double(stats.real_tokens) / (double(stats.rows) * double(sequence_len))
                          : 0.0;
  lines.push_back(fmt::format("rows: {} holding {} tokens with padding; packing efficiency {:.1f}% "
                              "({:.1f}% of {} x {} slots)",
                              stats.rows, stats.total_tokens, 100.0 * stats.efficiency(), 100.0 * fill, stats.rows,
                              sequence_len));
  return lines;
}

}  // namespace mftk::core
