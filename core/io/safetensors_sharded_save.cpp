// save_checkpoint: a Hugging Face checkpoint folder, one model.safetensors or
// shards split by huggingface_hub's rule plus model.safetensors.index.json
// (docs/formats.md §1.4, sharded checkpoints).

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <unordered_set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fs_util.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "safetensors_internal.h"

namespace mftk {

namespace fs = std::filesystem;
using namespace safetensors_impl;

namespace {

// "model-00002-of-00005.safetensors" and the like.
bool is_shard_file_name(const std::string& name) {
  const std::string prefix = "model-", suffix = ".safetensors";
  if (name.size() <= prefix.size() + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
      !ends_with(name, suffix)) {
    return false;
  }
  const std::string middle = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
  const size_t of = middle.find("-of-");
  if (of == std::string::npos || of == 0 || of + 4 >= middle.size()) return false;
  auto all_digits = [](const std::string& s) {
    return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return all_digits(middle.substr(0, of)) && all_digits(middle.substr(of + 4));
}

}  // namespace

void save_checkpoint(const std::string& dir, const NamedTensors& tensors, uint64_t max_shard_bytes) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    throw Error(fmt::format("cannot create checkpoint folder {}: {}", dir, ec.message()),
                "check the path and permissions");
  }
  std::unordered_set<std::string> seen;
  std::vector<uint64_t> sizes;
  sizes.reserve(tensors.size());
  uint64_t total_size = 0;
  for (const auto& [name, tensor] : tensors) {
    if (!seen.insert(name).second) throw UsageError(fmt::format("{}: tensor '{}' given twice", dir, name));
    if (!tensor.defined()) throw UsageError(fmt::format("{}: tensor '{}' is undefined", dir, name));
    sizes.push_back(static_cast<uint64_t>(tensor.numel()) * tensor.element_size());
    total_size += sizes.back();
  }

  // huggingface_hub's splitter: insertion order; a tensor above the limit
  // becomes a shard of its own at once (ahead of the shard being filled);
  // otherwise a new shard starts when the next tensor would exceed it.
  std::vector<std::vector<size_t>> shards;
  std::vector<size_t> current;
  uint64_t current_size = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i] > max_shard_bytes) {
      shards.push_back({i});
      continue;
    }
    if (current_size + sizes[i] > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(i);
    current_size += sizes[i];
  }
  if (!current.empty()) shards.push_back(std::move(current));

  const fs::path root(dir);
  const std::map<std::string, std::string> shard_metadata{{"format", "pt"}};
  std::set<std::string> keep;
  if (shards.size() <= 1) {
    save_safetensors((root / "model.safetensors").string(), tensors, shard_metadata);
    keep.insert("model.safetensors");
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    const size_t n = shards.size();
    for (size_t s = 0; s < n; ++s) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n);
      NamedTensors part;
      part.reserve(shards[s].size());
      for (const size_t i : shards[s]) {
        part.push_back(tensors[i]);
        weight_map[tensors[i].first] = file;
      }
      save_safetensors((root / file).string(), part, shard_metadata);
      keep.insert(file);
    }
    // transformers' layout: sorted keys, 2-space indent, trailing newline.
    nlohmann::json index = {{"metadata", {{"total_size", total_size}}}, {"weight_map", weight_map}};
    write_file_atomic((root / "model.safetensors.index.json").string(),
                           index.dump(2, ' ', true) + "\n");
    keep.insert("model.safetensors.index.json");
  }

  // Only now remove what an earlier save left, so a crash above leaves the
  // old checkpoint readable and a finished save never mixes old shards in.
  std::vector<fs::path> stale;
  try {
    for (const auto& entry : fs::directory_iterator(root)) {
      const std::string name = entry.path().filename().string();
      const bool ours = name == "model.safetensors" || name == "model.safetensors.index.json" ||
                        is_shard_file_name(name);
      if (ours && !keep.count(name)) stale.push_back(entry.path());
    }
  } catch (const fs::filesystem_error& e) {
    throw Error(fmt::format("cannot list {} to remove files of an earlier save: {}", dir, e.what()));
  }
  for (const fs::path& file : stale) {
    std::error_code remove_ec;
    fs::remove(file, remove_ec);
    if (remove_ec) {
      throw Error(fmt::format("cannot remove stale checkpoint file {}: {}", file.string(), remove_ec.message()),
                  "remove it by hand; it belongs to an earlier save and would be mixed with this one");
    }
  }
}

}  // namespace mftk
