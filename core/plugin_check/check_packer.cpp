// Packer checks, on synthetic documents that all fit a row:
//   no token lost          the documents found in the rows (tokens with the same
//                          doc id, in position order) are exactly the examples,
//                          each once: the multiset of (document, position, id)
//                          is preserved
//                          (rows built with and without pad_to_sequence_len)
//   documents separate     the Batch contract (batch.h): vectors of one length
//                          <= sequence_len, each document contiguous with
//                          position_ids 0, 1, ..., doc ids 0, 1, ... in row order
//                          and -1 only on padding, targets the next token of the
//                          same document (or ignored), never the next document's
#include <algorithm>
#include <map>
#include <random>

#include <fmt/format.h>

#include "mftk/packer.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace mftk::core::check {
namespace {

constexpr int64_t kSequenceLen = 32;

// Documents of lengths 2..15, ids in [3, 500); each starts with its own id so
// no two are equal. loss_mask 0 on each document's first two tokens (a prompt).
std::vector<Example> synthetic_examples() {
  std::mt19937 gen(31);
  std::vector<Example> out;
  const int lengths[] = {9, 3, 15, 2, 11, 7, 13, 5, 4, 14, 6};
  for (size_t d = 0; d < std::size(lengths); ++d) {
    Example e;
    e.ids.push_back(int32_t(400 + d));
    for (int t = 1; t < lengths[d]; ++t) e.ids.push_back(int32_t(3 + gen() % 397));
    for (int t = 0; t < lengths[d]; ++t) e.loss_mask.push_back(t >= 2);
    out.push_back(std::move(e));
  }
  return out;
}

struct Found {
  size_t row = 0;
  int32_t doc = 0;
  std::vector<int32_t> ids;
};

// Tokens grouped by (row, doc id), in position order.
std::vector<Found> documents_in(const std::vector<PackedRow>& rows) {
  std::vector<Found> found;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::map<int32_t, std::vector<std::pair<int32_t, int32_t>>> by_doc;  // doc -> (position, id)
    const auto& row = rows[r];
    for (size_t t = 0; t < row.ids.size() && t < row.doc_ids.size() && t < row.position_ids.size(); ++t)
      if (row.doc_ids[t] >= 0) by_doc[row.doc_ids[t]].emplace_back(row.position_ids[t], row.ids[t]);
    for (auto& [doc, tokens] : by_doc) {
      std::sort(tokens.begin(), tokens.end());
      Found f{r, doc, {}};
      for (const auto& [pos, id] : tokens) f.ids.push_back(id);
      found.push_back(std::move(f));
    }
  }
  return found;
}

}  // namespace

void check_packer(Registry& registry, const ComponentInfo& component, Checker& checker) {
  std::vector<PackedRow> rows, padded_rows;
  const auto examples = synthetic_examples();
  bool packed = false;
  checker.run("no token lost", [&] {
    auto packer = registry.create<Packer>(Kind::packer, component.spec.name, default_config(registry, component));
    PackOptions options;
    options.sequence_len = kSequenceLen;
    options.pad_id = 0;
    options.seed = 1;
    PackStats stats;
    rows = packer->pack(examples, options, stats);
    PackStats padded_stats;
    options.pad_to_sequence_len = true;
    padded_rows = packer->pack(examples, options, padded_stats);
    packed = true;
    for (const auto& row : padded_rows)
      if (int64_t(row.ids.size()) != kSequenceLen)
        throw CheckFailed(fmt::format("with pad_to_sequence_len a row is {} long, not sequence_len {}",
                                      row.ids.size(), kSequenceLen));
    std::vector<std::vector<int32_t>> want, got, got_padded;
    for (const auto& e : examples) want.push_back(e.ids);
    for (auto& f : documents_in(rows)) got.push_back(std::move(f.ids));
    for (auto& f : documents_in(padded_rows)) got_padded.push_back(std::move(f.ids));
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    std::sort(got_padded.begin(), got_padded.end());
    checker.note(fmt::format("{} documents in {} rows", got.size(), rows.size()));
    if (got == want && got_padded != want)
      throw CheckFailed("with pad_to_sequence_len the documents in the rows are not the inputs, each once");
    if (got == want) return;
    size_t lost = 0, extra = 0;
    for (const auto& w : want) lost += std::count(got.begin(), got.end(), w) == 0;
    for (const auto& g : got) extra += std::count(want.begin(), want.end(), g) == 0;
    throw CheckFailed(fmt::format("{} documents in, {} found in the rows: {} missing or changed, {} not among the "
                                  "inputs (all fit sequence_len {}, so nothing may be cut)",
                                  want.size(), got.size(), lost, extra, kSequenceLen));
  });
  if (!packed) {
    checker.report("documents separate", CheckOutcome::skip, "pack() failed");
    return;
  }
  checker.run("documents separate", [&] {
    std::map<std::vector<int32_t>, const Example*> by_ids;
    for (const auto& e : examples) by_ids[e.ids] = &e;
    std::vector<PackedRow> all = rows;
    all.insert(all.end(), padded_rows.begin(), padded_rows.end());  // row numbers past rows.size(): padded run
    for (size_t r = 0; r < all.size(); ++r) {
      const auto& row = all[r];
      const size_t n = row.ids.size();
      if (row.targets.size() != n || row.position_ids.size() != n || row.doc_ids.size() != n)
        throw CheckFailed(fmt::format("row {}: ids, targets, position_ids and doc_ids differ in length", r));
      if (int64_t(n) > kSequenceLen) throw CheckFailed(fmt::format("row {} is {} long, over sequence_len {}", r, n, kSequenceLen));
      int32_t doc = -1;
      for (size_t t = 0; t < n; ++t) {
        const int32_t d = row.doc_ids[t];
        if (d < 0) {
          if (row.targets[t] != kIgnoreIndex)
            throw CheckFailed(fmt::format("row {} position {}: padding has a target", r, t));
          continue;
        }
        const bool starts = t == 0 || row.doc_ids[t - 1] != d;
        if (starts) {
          if (d != doc + 1)
            throw CheckFailed(fmt::format("row {} position {}: document id {} after {} (ids must count 0, 1, ... "
                                          "and each document be contiguous)",
                                          r, t, d, doc));
          doc = d;
        }
        const int32_t want_pos = starts ? 0 : row.position_ids[t - 1] + 1;
        if (row.position_ids[t] != want_pos)
          throw CheckFailed(fmt::format("row {} position {}: position_ids {} where {} was due (they restart at 0 "
                                        "for every document)",
                                        r, t, row.position_ids[t], want_pos));
      }
      // Targets: within a document the next token where it is a training target, else ignored.
      for (const auto& f : documents_in({row})) {
        const auto it = by_ids.find(f.ids);
        if (it == by_ids.end()) continue;  // "no token lost" reports it
        const Example& e = *it->second;
        size_t first = 0;
        while (row.doc_ids[first] != f.doc) ++first;
        for (size_t k = 0; k < e.ids.size(); ++k) {
          const int64_t want = k + 1 < e.ids.size() && e.loss_mask[k + 1] ? e.ids[k + 1] : kIgnoreIndex;
          if (row.targets[first + k] != want)
            throw CheckFailed(fmt::format("row {} position {}: target {} where {} was due{}", r, first + k,
                                          row.targets[first + k], want,
                                          k + 1 == e.ids.size() ? " (a document's last token predicts nothing "
                                                                  "of the next document)"
                                                                : ""));
        }
      }
    }
  });
}

}  // namespace mftk::core::check
