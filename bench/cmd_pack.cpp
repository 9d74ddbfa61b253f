// mftk_bench pack: swa_packer against padding (share of real tokens per
// row), and prepare_data against plain encoding of the same rows.

#include <filesystem>

#include "batching.h"
#include "dataset.h"
#include "fs_util.h"
#include "mftk/packer.h"
#include "mftk/tokenizer.h"
#include "workload_support.h"

namespace mftk::bench {
namespace {

namespace fs = std::filesystem;

std::vector<Example> synthetic_examples(int64_t count, int64_t min_len, int64_t max_len, uint64_t seed) {
  core::SplitMix64 rng(seed);
  std::vector<Example> out;
  for (int64_t i = 0; i < count; ++i) {
    const size_t len = size_t(min_len + int64_t(rng.below(uint64_t(max_len - min_len + 1))));
    Example ex;
    ex.ids.resize(len);
    for (auto& id : ex.ids) id = int32_t(3 + rng.below(1000));
    ex.loss_mask.assign(len, 1);
    ex.loss_mask[0] = 0;
    out.push_back(std::move(ex));
  }
  return out;
}

std::unique_ptr<Packer> make_packer(core::Registry& registry, const std::string& name) {
  auto recipe = core::Recipe::parse(fmt::format("[packer]\nplugin = \"{}\"\n", name), "bench-packer.toml");
  recipe.resolve(registry);
  const auto* ref = recipe.component("packer");
  return registry.create<Packer>(Kind::packer, ref->plugin, ref->config);
}

struct PackResult {
  PackStats stats;
  double seconds = 0;
  double fixed_efficiency = 0;  // real tokens / (rows x sequence_len)
  double batch4_efficiency = 0; // real tokens / tokens of micro-batches of 4 padded to their longest row
};

PackResult measure_packer(Packer& packer, const std::vector<Example>& examples, const PackOptions& po) {
  PackResult r;
  const auto t0 = Clock::now();
  const auto rows = packer.pack(examples, po, r.stats);
  r.seconds = seconds_since(t0);
  r.fixed_efficiency = double(r.stats.real_tokens) / double(int64_t(rows.size()) * po.sequence_len);
  int64_t padded = 0;
  for (size_t i = 0; i < rows.size(); i += 4) {
    size_t longest = 0;
    const size_t end = std::min(rows.size(), i + 4);
    for (size_t k = i; k < end; ++k) longest = std::max(longest, rows[k].ids.size());
    padded += int64_t(longest * (end - i));
  }
  r.batch4_efficiency = double(r.stats.real_tokens) / double(padded);
  return r;
}

// Instruction rows of plain English words, deterministic from the seed.
struct InstructionRow {
  std::string instruction, input, output;
};
std::vector<InstructionRow> synthetic_instructions(int64_t count, uint64_t seed) {
  static const char* const words[] = {
      "the", "model", "learns", "a", "small", "task", "from", "examples", "and", "answers", "questions", "about",
      "numbers", "cities", "rivers", "colours", "when", "asked", "politely", "it", "should", "reply", "with", "one",
      "short", "sentence", "that", "names", "capital", "of", "country", "translate", "following", "text", "into",
      "French", "summarise", "paragraph", "below", "list", "three", "reasons", "why", "people", "enjoy", "reading",
      "books", "explain", "how", "train", "works", "in", "simple", "terms", "for", "child", "water", "boils", "at",
      "hundred", "degrees", "sea", "level", "write", "poem", "autumn", "leaves", "falling", "quietly", "on", "old",
      "stone", "bridge", "compute", "sum", "seven", "eleven", "twenty", "is", "result", "Paris", "Berlin", "Madrid",
      "Rome", "Lisbon", "Vienna", "because", "they", "are", "interesting", "useful", "easy", "to", "understand"};
  constexpr uint64_t kWords = sizeof(words) / sizeof(words[0]);
  core::SplitMix64 rng(seed);
  auto sentence = [&](uint64_t min_words, uint64_t max_words) {
    const uint64_t n = min_words + rng.below(max_words - min_words + 1);
    std::string s;
    for (uint64_t i = 0; i < n; ++i) {
      if (i) s += ' ';
      s += words[rng.below(kWords)];
    }
    return s + ".";
  };
  std::vector<InstructionRow> rows;
  for (int64_t i = 0; i < count; ++i) {
    InstructionRow r;
    r.instruction = sentence(8, 60);
    if (rng.below(3) == 0) r.input = sentence(5, 40);
    r.output = sentence(5, 80);
    rows.push_back(std::move(r));
  }
  return rows;
}

}  // namespace

void cmd_pack(const CommonOptions& common, int64_t examples_count, int64_t rows_count) {
  core::Registry registry;
  auto swa = make_packer(registry, "swa_packer");
  auto padding = make_packer(registry, "padding");
  PackOptions po;
  po.sequence_len = 2048;
  po.seed = 42;
  const auto examples = synthetic_examples(examples_count, 16, po.sequence_len, 99);
  const PackResult s = measure_packer(*swa, examples, po);
  const PackResult p = measure_packer(*padding, examples, po);
  Row pack;
  pack.workload = fmt::format("pack {} ex 16..{} (efficiency)", examples_count, po.sequence_len);
  pack.unit = "real/slots";
  pack.mftk = s.fixed_efficiency;
  pack.peer = p.fixed_efficiency;
  pack.ratio = s.fixed_efficiency / p.fixed_efficiency;
  pack.extra = {{"packer", "swa_packer"},
                {"peer_packer", "padding"},
                {"sequence_len", po.sequence_len},
                {"examples", examples_count},
                {"real_tokens", s.stats.real_tokens},
                {"mftk_rows", s.stats.rows},
                {"peer_rows", p.stats.rows},
                {"mftk_fixed_efficiency", s.fixed_efficiency},
                {"peer_fixed_efficiency", p.fixed_efficiency},
                {"mftk_batch4_efficiency", s.batch4_efficiency},
                {"peer_batch4_efficiency", p.batch4_efficiency},
                {"mftk_pack_tokens_per_s", double(s.stats.real_tokens) / s.seconds},
                {"peer_pack_tokens_per_s", double(p.stats.real_tokens) / p.seconds}};
  pack.extra["note"] = fmt::format(
      "swa_packer vs padding packer: {} vs {} rows of {}; micro-batches of 4 padded to their longest row: {:.3f} vs "
      "{:.3f}; packing took {:.0f} vs {:.0f} ms",
      s.stats.rows, p.stats.rows, po.sequence_len, s.batch4_efficiency, p.batch4_efficiency, 1e3 * s.seconds,
      1e3 * p.seconds);

  // prepare_data on a generated instruction file vs plain sentencepiece
  // encoding of the same texts (the unavoidable part of the work).
  auto ck = ensure_checkpoint("tiny", "f32");
  auto tokenizer = Tokenizer::load(ck->dir);
  const auto rows = synthetic_instructions(rows_count, 5);
  const fs::path data_dir = fs::path(bench_cache_dir()) / "data";
  fs::create_directories(data_dir);
  const std::string jsonl = (data_dir / fmt::format("instructions-{}.jsonl", rows_count)).string();
  {
    std::string text;
    for (const auto& r : rows) {
      nlohmann::json j = {{"instruction", r.instruction}, {"output", r.output}};
      if (!r.input.empty()) j["input"] = r.input;
      text += j.dump() + "\n";
    }
    core::write_file_atomic(jsonl, text);
  }
  core::DataOptions dopt;
  core::DatasetSpec spec;
  spec.path = jsonl;
  spec.type = core::DatasetType::instruction;
  dopt.datasets = {spec};
  dopt.prepared_path = (data_dir / "prepared").string();
  const auto t0 = Clock::now();
  const core::PreparedData data = core::prepare_data(dopt, *tokenizer, core::CacheMode::off);
  const double mftk_s = seconds_since(t0);
  int64_t tokens = 0;
  for (const auto& ex : data.train) tokens += int64_t(ex.ids.size());
  for (const auto& ex : data.eval) tokens += int64_t(ex.ids.size());

  const auto t1 = Clock::now();
  int64_t peer_tokens = 0;
  for (const auto& r : rows) {
    peer_tokens += int64_t(tokenizer->encode(r.input.empty() ? r.instruction : r.instruction + "\n\n" + r.input).size());
    peer_tokens += int64_t(tokenizer->encode(r.output).size());
  }
  const double peer_s = seconds_since(t1);
  Row prep;
  prep.workload = fmt::format("preprocess {} instruction rows", rows_count);
  prep.unit = "tokens/s";
  prep.mftk = double(tokens) / mftk_s;
  prep.peer = double(tokens) / peer_s;  // the same rows, counted as mftk's tokens
  prep.ratio = peer_s / mftk_s;
  prep.extra = {{"mftk_tokens_per_s", prep.mftk},
                {"peer_tokens_per_s", *prep.peer},
                {"rows", rows_count},
                {"tokens", tokens},
                {"peer_encoded_tokens", peer_tokens},
                {"mftk_seconds", mftk_s},
                {"peer_seconds", peer_s},
                {"tokenizer", ck->tokenizer},
                {"cache_mode", "off"}};
  prep.extra["note"] = fmt::format(
      "prepare_data (JSONL, chat template, loss masks; cache off) {:.2f} s vs encoding the same texts {:.2f} s; "
      "tokenizer {}", mftk_s, peer_s, fs::path(ck->tokenizer).filename().string());
  emit(common, {pack, prep});
}

}  // namespace mftk::bench
