// What an objective records before training (a full fine-tuning DPO's
// reference log-probabilities), cached beside the prepared data so that a
// second run or a resume of the same data, base weights and objective
// settings reads it back instead of running the reference pass again.
//
// defines: mftk::core::ObjectiveCacheInputs, mftk::core::objective_cache_file,
//          mftk::core::prepare_objective_cached
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mftk/batch.h"

namespace mftk {
class Model;
class Adapter;
class Objective;
}  // namespace mftk

namespace mftk::core {

// Everything the recorded state depends on besides the rows themselves.
struct ObjectiveCacheInputs {
  std::string data_cache_file;  // PreparedData::cache_file; empty: the data is not cached, neither is this
  std::string objective;        // the objective plugin, its library and version (run.json's record)
  std::string settings_json;    // the recipe tables that shape the model and the rows (model, quantize,
                                // adapter, objective, training's sequence_len and bf16, ...), as JSON
  std::vector<std::string> weight_folders;  // checkpoint and adapter folders the model starts from
  std::string device;           // "cpu", "cuda:0": the numbers differ slightly between devices
};

// <prepared>/<data key>/objective-<key>.safetensors, the key a SHA-256 of the
// inputs, the weight folders by their files' names, sizes and modification
// times (hashing a 14 GB checkpoint would cost more than the pass it saves).
// Empty when the data is not cached.
std::string objective_cache_file(const ObjectiveCacheInputs& inputs);

// Objective::prepare over the train and eval rows, or, when `cache_file`
// holds state this objective restores, that state instead. After preparing,
// writes the objective's prepared_state() there when `write` (rank 0) and it
// is not empty. Returns one line for the log ("" when the objective needs no
// preparation). A file at `cache_file` that mftk did not write is refused.
std::string prepare_objective_cached(Model& model, Objective& objective, Adapter* adapter,
                                     const std::vector<PackedRow>& train_rows,
                                     const std::vector<PackedRow>& eval_rows, int64_t micro_batch_size,
                                     const std::string& cache_file, bool write);

}  // namespace mftk::core
