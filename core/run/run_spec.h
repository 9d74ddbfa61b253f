// The run a resolved recipe describes, read once into typed values: where
// it writes (every path under output_dir), how it trains, which component
// fills each role. `mftk run`, `mftk plan --measure` and the bench read the
// recipe through it instead of by string key, so a value is read (and a
// default chosen) in one place.
//
// defines: mftk::core::RunPaths, mftk::core::ComponentChoice, mftk::core::ValidateSpec, mftk::core::RunSpec,
//          mftk::core::make_run_spec
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "dataset.h"
#include "device.h"
#include "mftk/config.h"
#include "mftk/packer.h"
#include "mftk/plugin.h"
#include "trainer.h"

namespace mftk::core {

class Recipe;
class Registry;

// Every file and folder a run writes, named once. output_dir is the run's
// own folder (claim_work_folder); the rest lie inside it.
struct RunPaths {
  RunPaths() = default;
  explicit RunPaths(const std::string& output_dir);
  std::string output_dir;
  std::string log;         // mftk.log
  std::string metrics;     // metrics.jsonl (the trainer appends to it)
  std::string summary;     // summary.json
  std::string loss_curve;  // loss_curve.svg
  std::string report;      // report.html
  std::string adapter;     // adapter/ (PEFT), after adapter training
  std::string model;       // model/ (HF checkpoint), after full fine-tuning
  std::string merged;      // merged/ (HF checkpoint), base + adapter
  // An [[export]]'s `out`: a relative one lives in output_dir, with
  // everything else the run writes, not wherever mftk was started.
  std::string export_target(const std::string& out) const;
};

// The plugin that fills a role and its checked table: the recipe's, or a
// default (core/recipe/defaults.h) with the plugin's defaults.
struct ComponentChoice {
  std::string table;  // "model", "optimizer", ...
  Kind kind = Kind::model;
  std::string plugin;
  Config config;
  bool from_recipe = false;  // false: the default, the recipe has no such table
};

// [validate]: what the run checks after training.
struct ValidateSpec {
  int64_t exact_match = 0;  // examples scored by greedy exact match, before and after
  std::vector<std::string> prompts;
  int64_t max_new_tokens = 0;
  double temperature = 0;
};

struct RunSpec {
  const Recipe* recipe = nullptr;  // for what stays recipe-shaped: its path, text, [[export]]s, run.json
  RunPaths paths;

  // Components. adapter and quantize are absent when the recipe has no such
  // table (full fine-tuning, unquantised base); packer is used for document
  // data only (the core packs preference pairs itself).
  ComponentChoice model;
  std::string model_path;  // [model] path: the checkpoint folder
  std::optional<ComponentChoice> quantize;
  std::optional<ComponentChoice> adapter;
  std::string adapter_start;  // [adapter] path, resolved: a saved adapter to continue from ("" = inject fresh)
  ComponentChoice objective;
  ComponentChoice packer;
  ComponentChoice optimizer;

  // [training]
  int64_t sequence_len = 0;
  int64_t micro_batch_size = 1;
  int64_t gradient_accumulation_steps = 1;
  double max_grad_norm = 1.0;
  bool bf16 = false;
  bool gradient_checkpointing = false;
  bool merge_adapter = false;
  uint64_t seed = 42;
  int64_t threads = 0;  // 0: leave libtorch's count as start-up set it
  DeviceSetting device;
  double distributed_timeout_s = 0;

  DataOptions data;    // [[datasets]], [data]
  std::string chat_template;  // [data] chat_template, for the [validate] prompts
  bool preference_data = false;  // the datasets are type = "preference"
  PackOptions pack;    // sequence_len and friends; the model fills sliding_window
  TrainOptions train;  // the trainer's view of [training] and [schedule]
  ValidateSpec validate;

  bool has_adapter() const { return adapter.has_value(); }
  // Whether the run merges the adapter: merge_adapter, or an [[export]] that needs the merged model.
  bool wants_merge() const;
};

// Reads a resolved recipe (Recipe::resolve ran): every value checked and
// typed, the default components chosen. A [training] device that does not
// parse is the recipe's error (exit 2).
RunSpec make_run_spec(const Recipe& recipe, Registry& registry);

}  // namespace mftk::core
