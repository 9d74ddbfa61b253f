// Packers and batches: the batch.h row rules checked token by token against
// the examples, first-fit decreasing against a case worked out by hand,
// packing efficiency against the one-example-per-row baseline, truncation,
// make_batch and the summary text.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "batching.h"
#include "mftk/batch.h"
#include "mftk/error.h"
#include "mftk/packer.h"
#include "mftk/tensor.h"
#include "padding_packer/padding_packer.h"
#include "swa_packer/swa_packer.h"

using mftk::Example;
using mftk::PackedRow;
using mftk::PackOptions;
using mftk::PackStats;
using mftk::padding_packer::PaddingPacker;
using mftk::padding_packer::PaddingPackerOptions;
using mftk::swa_packer::SwaPacker;

namespace {

constexpr int32_t kIgnore = -100;  // torch's cross_entropy ignore_index, as batch.h uses it

// Example `tag` of `length` tokens: ids tag*1000 + t (unique across examples),
// loss on tokens at or after `prompt` (a prompt/answer split like a chat row).
Example make_example(int tag, size_t length, size_t prompt = 0) {
  Example e;
  for (size_t t = 0; t < length; ++t) {
    e.ids.push_back(int32_t(tag * 1000 + int(t)));
    e.loss_mask.push_back(t >= prompt ? 1 : 0);
  }
  return e;
}

// Varied examples with lengths in [lo, hi] and a random prompt part.
std::vector<Example> random_examples(size_t n, size_t lo, size_t hi, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<size_t> length(lo, hi);
  std::vector<Example> out;
  for (size_t i = 0; i < n; ++i) {
    const size_t len = length(gen);
    out.push_back(make_example(int(i) + 1, len, std::uniform_int_distribution<size_t>(0, len - 1)(gen)));
  }
  return out;
}

// Checks every rule of mftk/batch.h on the rows, given the examples that
// went in: each kept example appears exactly once, whole (or its first
// sequence_len tokens), contiguously, in one row; positions restart at 0;
// doc ids count 0, 1, ... per row; targets are the next token of the same
// document where its mask is 1, else -100, and -100 on every document's last
// token; padding is pad_id / -100 / position 0 / doc -1 and only at the end.
void check_rows(const std::vector<Example>& examples, const std::vector<PackedRow>& rows, const PackOptions& options,
                const PackStats& stats) {
  const auto cap = size_t(options.sequence_len);
  std::vector<int> seen(examples.size(), 0);
  int64_t real = 0, total = 0, truncated = 0, dropped = 0;
  for (const Example& e : examples) {
    if (e.ids.size() > cap) (options.drop_long ? dropped : truncated)++;
  }
  for (size_t r = 0; r < rows.size(); ++r) {
    SCOPED_TRACE("row " + std::to_string(r));
    const PackedRow& row = rows[r];
    ASSERT_EQ(row.targets.size(), row.ids.size());
    ASSERT_EQ(row.position_ids.size(), row.ids.size());
    ASSERT_EQ(row.doc_ids.size(), row.ids.size());
    ASSERT_LE(row.ids.size(), cap);
    if (options.pad_to_sequence_len) EXPECT_EQ(row.ids.size(), cap);
    total += int64_t(row.ids.size());
    size_t t = 0;
    int32_t doc = 0;
    while (t < row.ids.size() && row.doc_ids[t] >= 0) {
      ASSERT_EQ(row.doc_ids[t], doc);
      ASSERT_EQ(row.position_ids[t], 0);
      // Which example: ids are tag*1000 + position.
      const int tag = row.ids[t] / 1000;
      ASSERT_GE(tag, 1);
      const Example& e = examples.at(size_t(tag - 1));
      ++seen[size_t(tag - 1)];
      const size_t len = std::min(e.ids.size(), cap);
      ASSERT_LE(t + len, row.ids.size());
      for (size_t k = 0; k < len; ++k) {
        EXPECT_EQ(row.ids[t + k], e.ids[k]);
        EXPECT_EQ(row.doc_ids[t + k], doc);
        EXPECT_EQ(row.position_ids[t + k], int32_t(k));
        const int32_t expected = k + 1 < len && e.loss_mask[k + 1] ? e.ids[k + 1] : kIgnore;
        EXPECT_EQ(row.targets[t + k], expected) << "token " << k << " of example " << tag - 1;
      }
      real += int64_t(len);
      t += len;
      ++doc;
    }
    for (; t < row.ids.size(); ++t) {
      EXPECT_EQ(row.doc_ids[t], -1);
      EXPECT_EQ(row.ids[t], options.pad_id);
      EXPECT_EQ(row.targets[t], kIgnore);
      EXPECT_EQ(row.position_ids[t], 0);
    }
  }
  for (size_t i = 0; i < examples.size(); ++i) {
    const bool kept = !(options.drop_long && examples[i].ids.size() > cap);
    EXPECT_EQ(seen[i], kept ? 1 : 0) << "example " << i;
  }
  EXPECT_EQ(stats.rows, int64_t(rows.size()));
  EXPECT_EQ(stats.real_tokens, real);
  EXPECT_EQ(stats.total_tokens, total);
  EXPECT_EQ(stats.truncated, truncated);
  EXPECT_EQ(stats.dropped, dropped);
  EXPECT_EQ(stats.examples, int64_t(examples.size()) - dropped);
}

// The example indices of each row, in row order.
std::vector<std::vector<size_t>> row_members(const std::vector<PackedRow>& rows) {
  std::vector<std::vector<size_t>> out;
  for (const PackedRow& row : rows) {
    std::vector<size_t> members;
    for (size_t t = 0; t < row.ids.size(); ++t)
      if (row.doc_ids[t] >= 0 && row.position_ids[t] == 0) members.push_back(size_t(row.ids[t] / 1000 - 1));
    out.push_back(members);
  }
  return out;
}

}  // namespace

// -------------------------------------------------------------- swa_packer --

TEST(PackerFfd, HandWorkedCase) {
  // Capacity 10, lengths (index: length) 0:3 1:7 2:5 3:5 4:2 5:4 6:8.
  // Decreasing, ties by index: 6(8) 1(7) 2(5) 3(5) 5(4) 0(3) 4(2).
  //   6 -> new bin A (free 2);  1 -> new bin B (free 3);  2 -> new bin C (free 5)
  //   3 -> C (free 0);          5 -> nothing has 4 free: new bin D (free 6)
  //   0 -> B (free 0);          4 -> A (free 0)
  const std::vector<size_t> lengths = {3, 7, 5, 5, 2, 4, 8};
  const std::vector<std::vector<size_t>> expected = {{6, 4}, {1, 0}, {2, 3}, {5}};
  EXPECT_EQ(mftk::swa_packer::first_fit_decreasing(lengths, 10), expected);

  std::vector<Example> examples;
  for (size_t i = 0; i < lengths.size(); ++i) examples.push_back(make_example(int(i) + 1, lengths[i], 1));
  PackOptions options;
  options.sequence_len = 10;
  PackStats stats;
  auto rows = SwaPacker().pack(examples, options, stats);
  EXPECT_EQ(row_members(rows), expected);
  check_rows(examples, rows, options, stats);
  EXPECT_EQ(stats.real_tokens, 34);
  EXPECT_EQ(stats.total_tokens, 34);  // not padded: rows end at their last document
  EXPECT_EQ(rows[3].ids.size(), 4u);

  // Row A written out: example 6 (ids 7000..7007) then example 4 (ids 5000, 5001).
  const PackedRow& a = rows[0];
  EXPECT_EQ(a.ids, (std::vector<int32_t>{7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007, 5000, 5001}));
  EXPECT_EQ(a.position_ids, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 0, 1}));
  EXPECT_EQ(a.doc_ids, (std::vector<int32_t>{0, 0, 0, 0, 0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(a.targets,
            (std::vector<int32_t>{7001, 7002, 7003, 7004, 7005, 7006, 7007, kIgnore, 5001, kIgnore}));
}

TEST(PackerFfd, TiesAndExactFits) {
  // Equal lengths keep index order; exact fits fill a bin completely.
  EXPECT_EQ(mftk::swa_packer::first_fit_decreasing({4, 4, 4, 4}, 8),
            (std::vector<std::vector<size_t>>{{0, 1}, {2, 3}}));
  EXPECT_EQ(mftk::swa_packer::first_fit_decreasing({1, 9, 5, 5}, 10),
            (std::vector<std::vector<size_t>>{{1, 0}, {2, 3}}));
  EXPECT_EQ(mftk::swa_packer::first_fit_decreasing({}, 10), (std::vector<std::vector<size_t>>{}));
  EXPECT_THROW(mftk::swa_packer::first_fit_decreasing({11}, 10), mftk::Error);
}

TEST(PackerFfd, MatchesAPlainFirstFitScan) {
  // The tree search against the obvious O(n * bins) scan, on random lengths.
  std::mt19937 gen(5);
  for (int trial = 0; trial < 20; ++trial) {
    const size_t capacity = 64;
    std::vector<size_t> lengths(300);
    for (auto& l : lengths) l = std::uniform_int_distribution<size_t>(1, capacity)(gen);
    std::vector<size_t> order(lengths.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
    std::vector<std::vector<size_t>> bins;
    std::vector<size_t> free_space;
    for (size_t item : order) {
      size_t b = 0;
      while (b < bins.size() && free_space[b] < lengths[item]) ++b;
      if (b == bins.size()) {
        bins.emplace_back();
        free_space.push_back(capacity);
      }
      bins[b].push_back(item);
      free_space[b] -= lengths[item];
    }
    EXPECT_EQ(mftk::swa_packer::first_fit_decreasing(lengths, capacity), bins) << "trial " << trial;
  }
}

TEST(PackerSwa, RowsFollowTheBatchRules) {
  const auto examples = random_examples(200, 1, 100, 11);
  for (bool pad : {false, true}) {
    PackOptions options;
    options.sequence_len = 128;
    options.pad_to_sequence_len = pad;
    options.pad_id = 7;
    PackStats stats;
    auto rows = SwaPacker().pack(examples, options, stats);
    check_rows(examples, rows, options, stats);
    // Deterministic: the same input gives the same rows.
    PackStats again_stats;
    auto again = SwaPacker().pack(examples, options, again_stats);
    EXPECT_EQ(row_members(again), row_members(rows));
  }
}

TEST(PackerSwa, EfficiencyBeatsOneExamplePerRow) {
  // Lengths 16..sequence_len, rows padded to sequence_len as a fixed-shape run would.
  const int64_t seq = 512;
  const auto examples = random_examples(1000, 16, size_t(seq), 3);
  PackOptions options;
  options.sequence_len = seq;
  options.pad_to_sequence_len = true;
  PackStats packed, padded;
  auto packed_rows = SwaPacker().pack(examples, options, packed);
  auto padded_rows = PaddingPacker().pack(examples, options, padded);
  check_rows(examples, packed_rows, options, packed);
  check_rows(examples, padded_rows, options, padded);

  int64_t tokens = 0;
  for (const Example& e : examples) tokens += int64_t(e.ids.size());
  // One example per row: efficiency is mean length / sequence_len, written out.
  EXPECT_DOUBLE_EQ(padded.efficiency(), double(tokens) / double(1000 * seq));
  EXPECT_EQ(padded.rows, 1000);
  // Packing: rows never fewer than the token count allows, and >= 95 % full.
  EXPECT_GE(packed.rows, (tokens + seq - 1) / seq);
  EXPECT_GE(packed.efficiency(), 0.95) << packed.rows << " rows";
  EXPECT_GT(packed.efficiency(), padded.efficiency());
}

TEST(PackerSwa, LongExamplesAreTruncatedOrDropped) {
  // sequence_len 8: lengths 5 and 8 fit, 9 and 20 do not.
  const std::vector<Example> examples = {make_example(1, 5, 2), make_example(2, 9, 2), make_example(3, 8, 0),
                                         make_example(4, 20, 3)};
  PackOptions options;
  options.sequence_len = 8;
  PackStats stats;
  auto rows = SwaPacker().pack(examples, options, stats);
  check_rows(examples, rows, options, stats);
  EXPECT_EQ(stats.truncated, 2);
  EXPECT_EQ(stats.dropped, 0);
  EXPECT_EQ(stats.examples, 4);
  EXPECT_EQ(stats.real_tokens, 5 + 8 + 8 + 8);
  // A truncated document's last kept token predicts nothing.
  EXPECT_EQ(rows[0].ids.size(), 8u);
  EXPECT_EQ(rows[0].targets[7], kIgnore);

  options.drop_long = true;
  rows = SwaPacker().pack(examples, options, stats);
  check_rows(examples, rows, options, stats);
  EXPECT_EQ(stats.truncated, 0);
  EXPECT_EQ(stats.dropped, 2);
  EXPECT_EQ(stats.examples, 2);
  EXPECT_EQ(row_members(rows), (std::vector<std::vector<size_t>>{{2}, {0}}));
}

// ----------------------------------------------------------------- padding --

TEST(PackerPadding, OneExamplePerRowInFileOrder) {
  const auto examples = random_examples(50, 1, 40, 2);
  for (bool pad : {false, true}) {
    PackOptions options;
    options.sequence_len = 32;
    options.pad_to_sequence_len = pad;
    options.pad_id = 3;
    PackStats stats;
    auto rows = PaddingPacker().pack(examples, options, stats);
    check_rows(examples, rows, options, stats);
    auto members = row_members(rows);
    ASSERT_EQ(members.size(), 50u);
    for (size_t i = 0; i < 50; ++i) EXPECT_EQ(members[i], std::vector<size_t>{i});
  }
}

TEST(PackerPadding, GroupByLengthSortsBucketsOfASeededShuffle) {
  const auto examples = random_examples(100, 1, 60, 9);
  PaddingPackerOptions grouping;
  grouping.group_by_length = true;
  grouping.bucket_size = 16;
  PackOptions options;
  options.sequence_len = 64;
  options.seed = 21;
  PackStats stats;
  auto rows = PaddingPacker(grouping).pack(examples, options, stats);
  check_rows(examples, rows, options, stats);
  std::vector<size_t> order;
  for (const auto& m : row_members(rows)) order.push_back(m.at(0));

  // Expected order written out: Fisher-Yates from the back with SplitMix64(21),
  // then each run of 16 stably sorted by decreasing length.
  std::vector<size_t> expected(100);
  std::iota(expected.begin(), expected.end(), size_t{0});
  mftk::core::SplitMix64 rng(21);
  for (size_t i = expected.size(); i > 1; --i) std::swap(expected[i - 1], expected[rng.below(i)]);
  for (size_t b = 0; b < 100; b += 16)
    std::stable_sort(expected.begin() + long(b), expected.begin() + long(std::min<size_t>(100, b + 16)),
                     [&](size_t x, size_t y) { return examples[x].ids.size() > examples[y].ids.size(); });
  EXPECT_EQ(order, expected);

  // Same seed, same order; another seed, another one.
  PackStats s2;
  auto same_rows = PaddingPacker(grouping).pack(examples, options, s2);
  EXPECT_EQ(row_members(same_rows), row_members(rows));
  options.seed = 22;
  auto other_rows = PaddingPacker(grouping).pack(examples, options, s2);
  EXPECT_NE(row_members(other_rows), row_members(rows));
}

// ----------------------------------------------------------------- batches --

TEST(PackerBatch, StacksRowsPaddedToTheLongest) {
  std::vector<Example> examples = {make_example(1, 3, 1), make_example(2, 2, 0), make_example(3, 5, 2)};
  PackOptions options;
  options.sequence_len = 6;
  PackStats stats;
  auto rows = SwaPacker().pack(examples, options, stats);
  // FFD: 3(5) alone (1 free), then 1(3)+2(2) share a row of 5.
  ASSERT_EQ(row_members(rows), (std::vector<std::vector<size_t>>{{2}, {0, 1}}));
  rows.push_back(PaddingPacker().pack({make_example(4, 1, 0)}, options, stats).at(0));

  mftk::Batch batch = mftk::core::make_batch(rows, 9);
  EXPECT_EQ(batch.input_ids.sizes().vec(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(batch.input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(batch.targets.scalar_type(), at::kLong);
  EXPECT_EQ(batch.position_ids.scalar_type(), at::kLong);
  EXPECT_EQ(batch.doc_ids.scalar_type(), at::kInt);
  auto row = [](const at::Tensor& t, int64_t b) {
    auto c = t[b].to(at::kLong).contiguous();
    return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
  };
  using V = std::vector<int64_t>;
  // Row 1: example 0 (1000 1001 1002, loss from token 1) then example 1 (2000 2001, loss everywhere).
  EXPECT_EQ(row(batch.input_ids, 1), (V{1000, 1001, 1002, 2000, 2001}));
  EXPECT_EQ(row(batch.targets, 1), (V{1001, 1002, -100, 2001, -100}));
  EXPECT_EQ(row(batch.position_ids, 1), (V{0, 1, 2, 0, 1}));
  EXPECT_EQ(row(batch.doc_ids, 1), (V{0, 0, 0, 1, 1}));
  // Row 2: one token, then padding with pad_id 9.
  EXPECT_EQ(row(batch.input_ids, 2), (V{4000, 9, 9, 9, 9}));
  EXPECT_EQ(row(batch.targets, 2), (V{-100, -100, -100, -100, -100}));
  EXPECT_EQ(row(batch.position_ids, 2), (V{0, 0, 0, 0, 0}));
  EXPECT_EQ(row(batch.doc_ids, 2), (V{0, -1, -1, -1, -1}));
  // Row 0: example 2, loss from token 2 -> targets for tokens 1..3.
  EXPECT_EQ(row(batch.targets, 0), (V{-100, 3002, 3003, 3004, -100}));

  EXPECT_THROW(mftk::core::make_batch(std::vector<PackedRow>{}), mftk::Error);
  PackedRow broken = rows[0];
  broken.targets.pop_back();
  EXPECT_THROW(mftk::core::make_batch(std::vector<PackedRow>{broken}), mftk::Error);
}

TEST(PackerSummary, CountsAndPowerOfTwoHistogram) {
  // Lengths 1, 2, 3, 4, 5, 16, 17 -> buckets 1 | 2 | 3-4 | 5-8 | 9-16 | 17-32.
  std::vector<Example> examples;
  int tag = 1;
  for (size_t len : {1, 2, 3, 4, 5, 16, 17}) examples.push_back(make_example(tag++, len, 0));
  PackOptions options;
  options.sequence_len = 16;
  options.pad_to_sequence_len = true;
  PackStats stats;
  auto rows = SwaPacker().pack(examples, options, stats);
  // 17 is truncated to 16: 1+2+3+4+5+16+16 = 47 tokens in rows; targets: length-1 per document.
  ASSERT_EQ(stats.real_tokens, 47);
  const auto lines = mftk::core::describe_packing(examples, rows, stats, 16);
  std::string text;
  for (const auto& l : lines) text += l + "\n";
  EXPECT_NE(text.find("examples: 7 in rows (1 truncated to sequence_len 16, 0 dropped"), std::string::npos) << text;
  EXPECT_NE(text.find("tokens: 48 in examples, 47 in rows, 40 trainable targets"), std::string::npos) << text;
  // Histogram lines are "<range>: <count>", the range right-aligned.
  std::vector<std::string> trimmed;
  for (const auto& l : lines) trimmed.push_back(l.substr(l.find_first_not_of(' ')));
  for (const char* bucket : {"1: 1", "2: 1", "3-4: 2", "5-8: 1", "9-16: 1", "17-32: 1"})
    EXPECT_NE(std::find(trimmed.begin(), trimmed.end(), bucket), trimmed.end()) << bucket << "\n" << text;
  // FFD: 16 | 16 (the truncated 17) | 5 4 3 2 1 (15 of 16): 47 of 48 slots.
  EXPECT_EQ(stats.rows, 3);
  EXPECT_NE(text.find("rows: 3 holding 48 tokens with padding; packing efficiency 97.9%"), std::string::npos)
      << text;
}
