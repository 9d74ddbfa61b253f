// CheckpointReader: a Hugging Face checkpoint as one set of named tensors,
// from a single .safetensors file or a sharded folder with its
// model.safetensors.index.json (docs/formats.md §1.4, sharded checkpoints).
// Pickle checkpoints are refused with a conversion command.

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"
#include "mftk/safetensors.h"
#include "safetensors_internal.h"
#include "safetensors_parse.h"

namespace mftk {

namespace fs = std::filesystem;
using namespace safetensors_impl;

namespace {

bool is_pickle_file_name(const std::string& name) {
  return ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth");
}

[[noreturn]] void refuse_pickle(const std::string& where, const std::vector<std::string>& files) {
  throw Error(
      fmt::format("{}: only pickle checkpoints found ({}); mftk does not load pickle files because "
                  "unpickling can execute arbitrary code", where, fmt::join(files, ", ")),
      fmt::format("convert them to safetensors with Python, e.g. for a model folder: python3 -c \"from "
                  "transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{0}')"
                  ".save_pretrained('OUT_DIR', safe_serialization=True)\"; for a single state-dict file: "
                  "python3 -c \"import torch; from safetensors.torch import save_file; "
                  "save_file(torch.load('FILE.bin', weights_only=True), 'FILE.safetensors', "
                  "metadata={{'format': 'pt'}})\"", where));
}

// A shard name from an index must stay inside the checkpoint folder.
void check_shard_name(const std::string& index_path, const std::string& name) {
  const fs::path p(name);
  bool escapes = name.empty() || p.is_absolute();
  for (const auto& part : p) escapes = escapes || part == "..";
  if (escapes) {
    throw Error(fmt::format("{}: shard file name '{}' is not a plain relative path inside the folder",
                            index_path, name), kBadFileHint);
  }
}

}  // namespace

detail::CheckpointIndex detail::parse_checkpoint_index(const std::string& index_name, const std::string& text) {
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", index_name, e.what()), kBadFileHint);
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
    throw Error(fmt::format("{}: no \"weight_map\" object (expected {{\"metadata\": {{...}}, \"weight_map\": "
                            "{{\"tensor name\": \"shard file\", ...}}}})", index_name), kBadFileHint);
  }
  CheckpointIndex out;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    if (!shard.is_string()) {
      throw Error(fmt::format("{}: weight_map entry '{}' is not a file name string", index_name, name),
                  kBadFileHint);
    }
    const std::string shard_name = shard.get<std::string>();
    check_shard_name(index_name, shard_name);
    out.tensors_by_shard[shard_name].push_back(name);
    out.shard_of[name] = shard_name;
  }
  const auto metadata = index.find("metadata");
  if (metadata != index.end() && metadata->is_object()) {
    const auto total = metadata->find("total_size");
    if (total != metadata->end() && total->is_number_unsigned()) out.total_size = total->get<uint64_t>();
  }
  return out;
}

namespace {

// CheckpointReader's table: every tensor name -> the file that holds it.
using TensorFiles = std::map<std::string, std::shared_ptr<SafetensorsFile>>;

void add_single_file(const fs::path& file, TensorFiles& by_name) {
  auto st = SafetensorsFile::open(file.string());
  for (const TensorInfo& t : st->tensors()) by_name.emplace(t.name, st);
}

detail::CheckpointIndex read_checkpoint_index(const fs::path& index_path) {
  const std::string index_name = index_path.string();
  std::ifstream in(index_path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open checkpoint index {}", index_name));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return detail::parse_checkpoint_index(index_name, buffer.str());
}

// Every shard the index names is present, before any is opened.
void check_shards_present(const std::string& index_name, const fs::path& folder,
                          const detail::CheckpointIndex& index) {
  std::error_code ec;
  std::vector<std::string> missing;
  for (const auto& [shard_name, names] : index.tensors_by_shard) {
    if (!fs::is_regular_file(folder / shard_name, ec)) missing.push_back(shard_name);
  }
  if (!missing.empty()) {
    throw Error(fmt::format("{}: shard files listed in the index are missing: {}", index_name,
                            fmt::join(missing, ", ")),
                "the download or copy of this checkpoint is incomplete; fetch the missing shards");
  }
}

// The shards of an index, each holding exactly the tensors the index puts
// in it; a total_size that differs from the bytes found is only a warning.
void add_indexed_shards(const fs::path& index_path, TensorFiles& by_name) {
  const std::string index_name = index_path.string();
  const detail::CheckpointIndex index = read_checkpoint_index(index_path);
  const auto& shard_of = index.shard_of;
  const fs::path folder = index_path.parent_path();
  check_shards_present(index_name, folder, index);
  uint64_t total = 0;
  for (const auto& [shard_name, names] : index.tensors_by_shard) {
    auto st = SafetensorsFile::open((folder / shard_name).string());
    for (const std::string& name : names) {
      if (!st->find(name)) {
        throw Error(fmt::format("{}: the index puts tensor '{}' in {}, but that shard does not contain it",
                                index_name, name, shard_name), kBadFileHint);
      }
    }
    for (const TensorInfo& t : st->tensors()) {
      const auto it = shard_of.find(t.name);
      if (it == shard_of.end() || it->second != shard_name) {
        throw Error(fmt::format("{}: shard {} contains tensor '{}', which the index {}", index_name,
                                shard_name, t.name,
                                it == shard_of.end() ? std::string("does not list")
                                                     : fmt::format("puts in {}", it->second)),
                    "the index and the shards come from different saves; re-download the checkpoint");
      }
      by_name.emplace(t.name, st);
      total += t.nbytes();
    }
  }
  if (index.total_size && *index.total_size != total) {
    // huggingface_hub counts storage sizes, which can differ for views;
    // not an error.
    log::warn("{}: metadata.total_size is {} but the shards hold {} bytes of tensors", index_name,
              *index.total_size, total);
  }
}

// `dir` names a file: a .safetensors file or an index; a pickle file is refused.
void add_named_file(const fs::path& root, const std::string& dir, TensorFiles& by_name) {
  const std::string name = root.filename().string();
  if (ends_with(name, ".safetensors")) {
    add_single_file(root, by_name);
  } else if (ends_with(name, ".safetensors.index.json")) {
    add_indexed_shards(root, by_name);
  } else if (is_pickle_file_name(name)) {
    refuse_pickle(dir, {name});
  } else {
    throw Error(fmt::format("{}: not a .safetensors file, a .safetensors.index.json index or a checkpoint "
                            "folder", dir), "pass a checkpoint folder or a .safetensors file");
  }
}

// A folder with neither <stem>.safetensors nor its index: pickle files are
// refused with a conversion command, other .safetensors files are named.
[[noreturn]] void refuse_folder(const fs::path& root, const std::string& dir, const fs::path& single,
                                const fs::path& index) {
  std::error_code ec;
  std::vector<std::string> pickles, other_safetensors;
  try {
    for (const auto& entry : fs::directory_iterator(root)) {
      if (!entry.is_regular_file(ec)) continue;
      const std::string name = entry.path().filename().string();
      if (is_pickle_file_name(name)) pickles.push_back(name);
      if (ends_with(name, ".safetensors")) other_safetensors.push_back(name);
    }
  } catch (const fs::filesystem_error& e) {
    throw Error(fmt::format("cannot list checkpoint folder {}: {}", dir, e.what()), "check its permissions");
  }
  std::sort(pickles.begin(), pickles.end());
  std::sort(other_safetensors.begin(), other_safetensors.end());
  if (!pickles.empty() && other_safetensors.empty()) refuse_pickle(dir, pickles);
  throw Error(fmt::format("no checkpoint in {}: looked for {} and {}{}", dir, single.string(), index.string(),
                          other_safetensors.empty()
                              ? std::string()
                              : fmt::format(" (the folder has {})", fmt::join(other_safetensors, ", "))),
              other_safetensors.empty() ? "check the path"
                                        : "pass the path of the .safetensors file you mean directly");
}

}  // namespace

CheckpointReader CheckpointReader::open(const std::string& dir, const std::string& stem) {
  CheckpointReader reader;
  std::error_code ec;
  const fs::path root(dir);
  if (fs::is_regular_file(root, ec)) {
    add_named_file(root, dir, reader.by_name_);
    return reader;
  }
  if (!fs::is_directory(root, ec)) {
    throw Error(fmt::format("checkpoint {} does not exist", dir), "check the path");
  }

  const fs::path single = root / (stem + ".safetensors");
  const fs::path index = root / (stem + ".safetensors.index.json");
  const bool have_single = fs::is_regular_file(single, ec);
  const bool have_index = fs::is_regular_file(index, ec);
  if (have_single) {
    // transformers prefers the single file too.
    if (have_index) log::warn("{} has both {} and {}; using the single file", dir, single.filename().string(),
                              index.filename().string());
    add_single_file(single, reader.by_name_);
    return reader;
  }
  if (have_index) {
    add_indexed_shards(index, reader.by_name_);
    return reader;
  }
  refuse_folder(root, dir, single, index);
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(by_name_.size());
  for (const auto& [name, file] : by_name_) out.push_back(name);
  return out;
}

bool CheckpointReader::contains(const std::string& name) const { return by_name_.count(name) > 0; }

const TensorInfo& CheckpointReader::info(const std::string& name) const {
  const auto it = by_name_.find(name);
  if (it == by_name_.end()) {
    throw Error(fmt::format("checkpoint has no tensor named '{}' ({} tensors)", name, by_name_.size()),
                "check the tensor name (names are case-sensitive)");
  }
  return *it->second->find(name);
}

at::Tensor CheckpointReader::get(const std::string& name) const {
  info(name);  // throws with the checkpoint-level message
  return by_name_.at(name)->get(name);
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : by_name_) total += file->find(name)->nbytes();
  return total;
}

}  // namespace mftk
