// The objective's prepared state beside the prepared data; see objective_cache.h.
#include "objective_cache.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "mftk/error.h"
#include "mftk/objective.h"
#include "mftk/safetensors.h"
#include "sha256.h"
#include "trainer.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

// The metadata mark of a file this code wrote: only such a file is read back
// or replaced.
constexpr const char* kMarkKey = "mftk";
constexpr const char* kMarkValue = "objective-prepared-state";

// Names, sizes and modification times of a folder's files (not their bytes).
nlohmann::json folder_identity(const std::string& folder) {
  nlohmann::json files = nlohmann::json::array();
  std::error_code ec;
  const fs::path canonical = fs::weakly_canonical(folder, ec);
  if (!fs::is_directory(folder, ec)) return {{"path", canonical.string()}, {"files", files}};
  std::vector<fs::directory_entry> entries(fs::directory_iterator(folder, ec), fs::directory_iterator());
  std::sort(entries.begin(), entries.end(),
            [](const auto& a, const auto& b) { return a.path().filename() < b.path().filename(); });
  for (const auto& e : entries) {
    if (!e.is_regular_file(ec)) continue;
    const auto mtime = fs::last_write_time(e.path(), ec).time_since_epoch();
    files.push_back({e.path().filename().string(), e.file_size(ec),
                     std::chrono::duration_cast<std::chrono::nanoseconds>(mtime).count()});
  }
  return {{"path", canonical.string()}, {"files", files}};
}

[[noreturn]] void refuse_foreign(const std::string& file, const std::string& what) {
  throw UsageError(fmt::format("the objective cache {} {}: mftk never replaces what it did not write", file, what),
                   "move or remove that file, or point [data] dataset_prepared_path at a new or empty folder");
}

// The cached tensors, or nothing when there is no file; throws for a file
// that is not this code's.
std::optional<NamedTensors> read_state(const std::string& file) {
  std::error_code ec;
  const auto st = fs::symlink_status(file, ec);
  if (!fs::exists(st)) return std::nullopt;
  if (!fs::is_regular_file(st)) refuse_foreign(file, "is not a regular file");
  std::shared_ptr<SafetensorsFile> f;
  try {
    f = SafetensorsFile::open(file);
  } catch (const Error& e) {
    refuse_foreign(file, fmt::format("is not a safetensors file mftk wrote ({})", e.what()));
  }
  const auto mark = f->metadata().find(kMarkKey);
  if (mark == f->metadata().end() || mark->second != kMarkValue)
    refuse_foreign(file, "has no mftk objective-cache mark");
  NamedTensors state;
  for (const auto& info : f->tensors()) state.emplace_back(info.name, f->get(info.name).clone());
  return state;
}

}  // namespace

std::string objective_cache_file(const ObjectiveCacheInputs& in) {
  if (in.data_cache_file.empty()) return "";
  nlohmann::json key = {{"objective", in.objective}, {"settings", nlohmann::json::parse(in.settings_json)},
                        {"device", in.device}};
  for (const auto& folder : in.weight_folders) key["weights"].push_back(folder_identity(folder));
  const std::string hex = sha256_hex(key.dump());
  return (fs::path(in.data_cache_file).parent_path() / fmt::format("objective-{}.safetensors", hex.substr(0, 32)))
      .string();
}

std::string prepare_objective_cached(Model& model, Objective& objective, Adapter* adapter,
                                     const std::vector<PackedRow>& train_rows,
                                     const std::vector<PackedRow>& eval_rows, int64_t micro_batch_size,
                                     const std::string& cache_file, bool write) {
  if (!objective.needs_preparation(adapter)) return "";
  if (!cache_file.empty()) {
    if (auto state = read_state(cache_file)) {
      if (objective.restore_prepared(*state)) return fmt::format("objective: prepared state read from {}", cache_file);
      spdlog::warn("objective: {} does not fit this run's rows; preparing again", cache_file);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  prepare_objective(model, objective, adapter, train_rows, micro_batch_size);
  prepare_objective(model, objective, adapter, eval_rows, micro_batch_size);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::string line = fmt::format("objective: prepared {} train and {} eval rows in {:.1f} s", train_rows.size(),
                                 eval_rows.size(), seconds);
  if (cache_file.empty() || !write) return line;
  const NamedTensors state = objective.prepared_state();
  if (state.empty()) return line;
  fs::create_directories(fs::path(cache_file).parent_path());
  // save_safetensors writes beside the target and renames over it.
  save_safetensors(cache_file, state, {{"format", "pt"}, {kMarkKey, kMarkValue}});
  return line + fmt::format("; cached in {}", cache_file);
}

}  // namespace mftk::core
