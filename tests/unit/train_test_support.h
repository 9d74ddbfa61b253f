// Shared pieces of the training-engine tests (trainer_test.cpp,
// train_e2e_test.cpp): scratch folders, one tiny random Mistral checkpoint
// per process, synthetic packed rows, and a quiet logger.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "batching.h"
#include "init_checkpoint.h"
#include "mftk/batch.h"
#include "mistral/mistral_model.h"

namespace mftk::train_test {

namespace fs = std::filesystem;

// A folder removed at the end of its scope.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag = "train") {
    std::string pattern = (fs::path(testing::TempDir()) / ("mftk_" + tag + "_XXXXXX")).string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string str() const { return path_.string(); }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// info lines from the trainer are noise in test output; warnings stay.
class QuietLog {
 public:
  QuietLog() : previous_(spdlog::get_level()) { spdlog::set_level(spdlog::level::warn); }
  ~QuietLog() { spdlog::set_level(previous_); }

 private:
  spdlog::level::level_enum previous_;
};

// A random fp32 Mistral checkpoint (64 hidden, 4 heads / 2 kv heads, a
// 512-piece tokenizer trained on the repository corpus), written once per
// process and layer count.
inline std::string tiny_checkpoint(int64_t layers) {
  static std::mutex mutex;
  static ScratchDir root("tiny_ckpt");
  static std::map<int64_t, std::string> made;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = made.find(layers); it != made.end()) return it->second;
  core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", layers},
                 {"hidden_size", 64},
                 {"intermediate_size", 128},
                 {"num_attention_heads", 4},
                 {"num_key_value_heads", 2}};
  o.dtype = "f32";
  o.seed = 7;
  o.out = root.sub("layers" + std::to_string(layers));
  o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
  o.tokenizer_vocab = 512;
  {
    QuietLog quiet;
    core::write_random_checkpoint(o);
  }
  return made[layers] = o.out;
}

inline std::unique_ptr<mistral::MistralModel> load_tiny_model(int64_t layers) {
  const std::string dir = tiny_checkpoint(layers);
  mistral::MistralModelOptions mo;
  mo.path = dir;
  auto model = std::make_unique<mistral::MistralModel>(mo);
  LoadOptions lo;
  lo.path = dir;
  lo.compute_dtype = at::kFloat;
  model->load_config(dir);
  model->load(lo);
  return model;
}

// Rows of one or two documents each, with random ids and a prompt part that
// is not supervised, so rows differ in their number of supervised tokens.
inline std::vector<PackedRow> synthetic_rows(uint64_t seed, size_t count, int64_t vocab, int min_len = 5,
                                             int max_len = 18) {
  std::mt19937_64 rng(seed);
  auto uniform = [&](int lo, int hi) { return lo + int(rng() % uint64_t(hi - lo + 1)); };
  std::vector<PackedRow> rows;
  for (size_t r = 0; r < count; ++r) {
    PackedRow row;
    const int docs = uniform(1, 2);
    for (int d = 0; d < docs; ++d) {
      Example ex;
      const int len = uniform(min_len, max_len);
      const int prompt = uniform(1, len - 2);
      for (int t = 0; t < len; ++t) {
        ex.ids.push_back(int32_t(uniform(3, int(vocab) - 1)));
        ex.loss_mask.push_back(t >= prompt ? 1 : 0);
      }
      core::append_document(row, ex, ex.ids.size());
    }
    rows.push_back(std::move(row));
  }
  return rows;
}

inline int64_t supervised_tokens(const std::vector<PackedRow>& rows) {
  int64_t n = 0;
  for (const auto& r : rows)
    for (int32_t t : r.targets) n += t != kIgnoreIndex;
  return n;
}

inline int64_t real_tokens(const std::vector<PackedRow>& rows) {
  int64_t n = 0;
  for (const auto& r : rows)
    for (int32_t d : r.doc_ids) n += d >= 0;
  return n;
}

}  // namespace mftk::train_test
