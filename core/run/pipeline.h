// `mftk run`: the whole flow, top to bottom, one named call per stage.
//
// defines: mftk::core::run_pipeline, mftk::core::save_hf_checkpoint, mftk::core::kHfCheckpointKind,
//          mftk::core::kRunOutputKind, mftk::core::make_all_trainable, mftk::core::check_objective_data,
//          mftk::core::exact_match
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "mftk/batch.h"
#include "mftk/tensor.h"
#include "run_build.h"  // LoadedModel, load_model: callers of the pipeline's helpers use them too

namespace mftk {
class Model;
class Adapter;
class Quantizer;
class Tokenizer;
}  // namespace mftk

namespace mftk::core {

class Recipe;
class Registry;

// Runs a resolved recipe: load model -> quantize -> adapter -> data -> pack
// -> train -> save -> merge -> export -> validate prompts. Returns the exit
// code (0, or 130 after Ctrl-C wrote a checkpoint).
// `plan` (may be null): the predictions set beside the measured values in
// output_dir/report.html.
struct Plan;
int run_pipeline(const Recipe& recipe, Registry& registry, const Plan* plan = nullptr);

// The OutputGuard kind of a plain HF checkpoint folder mftk writes (init,
// merge, a run's model/ and merged/): one may replace another.
inline constexpr const char* kHfCheckpointKind = "hf-checkpoint";
// The claim_work_folder kind of a run's output_dir.
inline constexpr const char* kRunOutputKind = "run";

// Writes model's weights (slots folded to dense) as a plain HF checkpoint
// into dir, with config.json and the tokenizer files copied from source_dir.
// dir is claimed through OutputGuard: missing, empty or mftk's own
// checkpoint, else mftk::UsageError.
void save_hf_checkpoint(Model& model, const std::string& source_dir, const std::string& dir);

// Full fine-tuning: every weight (linear slots and the model's own tensors)
// becomes a writable fp32 leaf; returns them as the trainable tensors.
NamedTensors make_all_trainable(Model& model);

// UsageError unless the objective and the data agree: a preference
// objective (dpo, orpo) needs type = "preference" datasets, and those need one.
void check_objective_data(const std::string& objective, bool wants_pairs, bool has_pairs);

// Greedy exact match on up to `limit` examples: the prompt is everything
// before the first supervised token, the reference the supervised tokens.
struct ExactMatch {
  int64_t total = 0;
  int64_t correct = 0;
  double fraction() const { return total ? double(correct) / double(total) : 0.0; }
  std::vector<std::string> samples;  // a few "prompt -> answer (expected)" lines
};
ExactMatch exact_match(Model& model, const Tokenizer& tokenizer, const std::vector<Example>& examples, int64_t limit);

}  // namespace mftk::core
