// Shared pieces of plan_test.cpp and report_test.cpp: run the built `mftk`
// binary, random checkpoints made once per test process with `mftk init`,
// and a data file of long completion rows (so activations, not the process
// itself, dominate the peak).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "child_process.h"

namespace mftk::plan_test {

namespace fs = std::filesystem;

using mftk::child_process::mftk_binary;

inline std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

inline void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

struct Command {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `command` through the shell in `dir`, output captured.
inline Command run_in(const fs::path& dir, const std::string& command) {
  const fs::path log = dir / ("cmd-" + std::to_string(::getpid()) + ".log");
  const std::string full = "cd '" + dir.string() + "' && " + command + " > '" + log.string() + "' 2>&1";
  const int status = std::system(full.c_str());
  Command r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.output = read_text(log);
  return r;
}

// A scratch folder per test process, removed at exit.
inline const fs::path& scratch() {
  static const fs::path dir = [] {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_plan_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    return fs::path(pattern);
  }();
  static struct Cleanup {
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup;
  return dir;
}

// `mftk init <args> --out <scratch>/<name>`, once per process.
inline std::string checkpoint(const std::string& name, const std::string& init_args) {
  static std::mutex mutex;
  static std::map<std::string, std::string> made;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = made.find(name); it != made.end()) return it->second;
  const fs::path out = scratch() / name;
  const auto r = run_in(scratch(), mftk_binary() + " init " + init_args + " --seed 1 --out '" + out.string() + "'");
  if (r.exit_code != 0) throw std::runtime_error("mftk init failed: " + r.output);
  return made[name] = out.string();
}

inline std::string tiny_checkpoint() { return checkpoint("tiny", "--preset tiny"); }

inline std::string v3_tokenizer() { return MFTK_SHARED_DIR "/data/mistral-tokenizers/tokenizer.model.v3"; }

// Mistral-7B-v0.3 shapes with one decoder layer (~0.9 GB bf16).
inline std::string seven_b_one_layer_checkpoint() {
  return checkpoint("7b1", "--preset mistral-7b-v0.3 --layers 1 --tokenizer '" + v3_tokenizer() + "'");
}

// `rows` completion rows of `min_words`..`max_words` words from a small
// vocabulary, written to `path`.
inline void write_long_completions(const fs::path& path, int rows, int min_words, int max_words, uint64_t seed = 3) {
  static const char* words[] = {"the", "model", "train", "memory", "token", "layer", "weight", "river",
                                "mountain", "blue", "green", "quick", "slow", "apple", "seven", "gradient"};
  std::mt19937_64 rng(seed);
  std::ofstream f(path);
  for (int r = 0; r < rows; ++r) {
    const int n = min_words + int(rng() % uint64_t(max_words - min_words + 1));
    std::string text;
    for (int i = 0; i < n; ++i) text += std::string(i ? " " : "") + words[rng() % 16];
    f << nlohmann::json{{"text", text}}.dump() << "\n";
  }
}

}  // namespace mftk::plan_test
