// `mftk plan`: what a recipe will cost before it runs. Memory by part, steps,
// a time estimate from a few measured steps, and what the data looks like at
// this sequence_len, all from the checkpoint's config.json (no weights) and
// the tokenized data.
//
// defines: mftk::core::PlanDevice, mftk::core::PlanOptions, mftk::core::MemoryPart,
//          mftk::core::MemoryEstimate, mftk::core::DataPlan, mftk::core::StepPlan,
//          mftk::core::TimeEstimate, mftk::core::Plan, mftk::core::ModelFacts,
//          mftk::core::TrainingFacts, mftk::core::read_model_facts, mftk::core::describe_model,
//          mftk::core::training_facts, mftk::core::ask_planning_hooks,
//          mftk::core::estimate_memory, mftk::core::make_plan, mftk::core::measure_steps,
//          mftk::core::format_plan, mftk::core::plan_json, mftk::core::format_bytes,
//          mftk::core::plan_placement, mftk::core::plan_device_for
//
// The memory model says what mftk itself allocates, part by part (see
// docs/plan.md for the derivation and the check against measured peaks).
// The core knows no plugin: the components say what they hold through their
// planning hooks (Model::plan_activations, Adapter::plan, Quantizer::plan_slot,
// Optimizer::plan_state, Objective::plan_note), the weights come from the
// model's tensor table (Model::architecture); a hook that gives no figure
// leaves a stated generic figure, named in the part's detail.
//   cpu:  what this build does on this machine. Weights stay memory-mapped in
//         their checkpoint dtype (pages count once touched: for the embedding
//         table only the rows the data uses), quantised slots are dequantised
//         whole per matmul, bf16 weights are widened to fp32 in 64 MiB row
//         chunks, the model's attention is its own (not fused), the loss
//         takes logits of supervised tokens only, in chunks of 1024; plus the
//         process's own footprint (libtorch, plugins, tokenizer), measured in
//         this process.
//   cuda: what a GPU run would hold: bf16 compute (when [training] bf16), no
//         widening, fused attention, a fixed CUDA context.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "defaults.h"
#include "mftk/adapter.h"
#include "mftk/model.h"
#include "mftk/optimizer.h"
#include "mftk/quantizer.h"

namespace mftk::core {

class Recipe;
class Registry;

enum class PlanDevice { cpu, cuda };

struct PlanOptions {
  PlanDevice device = PlanDevice::cpu;
  double gpu_memory_gb = 0;  // 0: cpu: this machine's RAM; cuda: 24
  int64_t measure_steps = 0; // > 0: run that many optimizer steps to time them
};

// The shape facts the estimate needs, from config.json through the recipe's
// model plugin: its shape, its tensor table and its planning hook.
struct ModelFacts {
  std::string path;
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
  int64_t num_heads = 0, num_kv_heads = 0, head_dim = 0;
  std::optional<int64_t> sliding_window;
  bool tie_word_embeddings = false;
  int64_t checkpoint_dtype_bytes = 2;  // config.json torch_dtype
  std::string checkpoint_dtype = "bfloat16";
  bool stored_quantized = false;        // config.json has a quantization_config
  // Model::architecture: every checkpoint tensor with its shape (no head
  // when tied). Empty: the plugin does not describe its tensors.
  ModelArchitecture architecture;
  // Model::plan_activations. Empty (hand-made facts) or answering none: the
  // estimate uses a generic figure from the tensor table and says so.
  std::function<std::optional<ActivationPlan>(const ActivationQuery&)> activations;
  int64_t parameters() const;           // the tensor table's elements (a tied head counted once)
};
// Reads <model.path>/config.json through the recipe's model plugin
// (load_config), plus the dtype and quantization_config keys.
ModelFacts read_model_facts(const Recipe& recipe, Registry& registry);
// The facts `model` (load_config done) gives of itself; `path` is its folder.
ModelFacts describe_model(std::shared_ptr<const Model> model, const std::string& path);

// The recipe keys the estimate reads, gathered in one place; what the
// components will hold comes from their planning hooks (ask_planning_hooks).
struct TrainingFacts {
  int64_t sequence_len = 0, micro_batch_size = 1, gradient_accumulation_steps = 1;
  double num_epochs = 1;
  int64_t max_steps = -1;
  bool bf16 = false, gradient_checkpointing = false;
  std::string quantizer;   // "" or the [quantize] plugin (or the one that reads a stored checkpoint)
  std::string adapter;     // "" (full fine-tuning) or the [adapter] plugin
  std::string optimizer = kDefaultOptimizerPlugin;
  std::string packer;      // the packer the run uses
  bool packer_window_aware = false;  // it declares the respects_sliding_window trait
  std::string objective = kDefaultObjectivePlugin;  // the [objective] plugin
  bool preference_pairs = false;  // type = "preference" data: one pair (two sequences) per row
  // The components' planning hooks (ask_planning_hooks). Hand-made facts may
  // leave them empty: the estimate then uses core's generic figures and says so.
  std::function<std::optional<OptimizerStatePlan>(int64_t)> optimizer_state;  // Optimizer::plan_state
  bool optimizer_state_on_host = false;  // what plan_state says (paged state)
  std::string objective_note;            // Objective::plan_note
  std::function<std::optional<AdapterPlan>(const ModelArchitecture&)> adapter_plan;  // Adapter::plan
  std::function<bool(const std::string&)> quantizer_wants;                          // Quantizer::wants
  std::function<std::optional<QuantizedSlotPlan>(const std::string&, int64_t, int64_t)> quantized_slot;  // plan_slot
};
TrainingFacts training_facts(const Recipe& recipe);
// Creates the optimizer, objective, adapter and quantizer `t` names (with the
// recipe's keys when `recipe` has their tables, else their defaults) and
// keeps what their planning hooks say in `t`.
void ask_planning_hooks(TrainingFacts& t, const Recipe* recipe, Registry& registry);

struct MemoryPart {
  std::string name;    // "base weights", "adapter", ...
  int64_t bytes = 0;
  std::string detail;  // how it was counted, in words
};

struct MemoryEstimate {
  std::vector<MemoryPart> parts;  // adding up to total
  int64_t total = 0;
  int64_t activations_with_checkpointing = 0;
  int64_t activations_without_checkpointing = 0;
  int64_t trainable_parameters = 0;
  int64_t batch_rows = 0, batch_tokens = 0;  // the micro-batch the peak is computed for
};

struct DataPlan {
  bool available = false;
  std::string why_not;  // when not available: which file is missing
  int64_t train_examples = 0, eval_examples = 0;
  int64_t train_rows = 0, eval_rows = 0;
  int64_t real_tokens = 0, total_tokens = 0, supervised_tokens = 0;
  int64_t truncated = 0, dropped = 0;
  double packing_efficiency = 0;           // real / total tokens of the emitted rows
  int64_t longest_example = 0, median_example = 0, longest_row = 0;
  int64_t distinct_tokens = 0;             // embedding rows the data touches
  double supervised_fraction = 0;          // of the real tokens
  bool instruction_data = false;           // some dataset is instruction or chat
  std::vector<std::pair<int64_t, int64_t>> histogram;  // (upper bound 2^k, examples with length in (2^(k-1), 2^k])
};

struct StepPlan {
  int64_t tokens_per_step = 0;             // rows per step x sequence_len (real tokens: see real_tokens_per_step)
  int64_t real_tokens_per_step = 0;        // average document tokens per step
  int64_t micro_batches_per_epoch = 0, steps_per_epoch = 0, total_steps = 0;
  int64_t warmup_steps = 0;
};

struct TimeEstimate {
  int64_t measured_steps = 0;   // 0: not measured
  double seconds_per_step = 0;  // median of the measured steps
  double total_seconds = 0;
  double tokens_per_s = 0;
  int64_t measured_peak_rss = 0;  // this process after the measured steps
};

struct Plan {
  std::string recipe_path;
  PlanDevice device = PlanDevice::cpu;
  int64_t device_memory = 0;     // bytes the total is compared against
  std::string device_memory_source;
  ModelFacts model;
  TrainingFacts training;
  MemoryEstimate memory;
  DataPlan data;
  StepPlan steps;
  TimeEstimate time;
  std::vector<std::string> lint;  // filled by the caller (lint.h)
};

// The memory model alone (tests call it with hand-made facts). `runtime`:
// the process's own footprint to add (cpu), `data` may be unavailable (then
// rows are assumed full and every embedding row touched).
MemoryEstimate estimate_memory(const ModelFacts& model, const TrainingFacts& training, const DataPlan& data,
                               PlanDevice device, int64_t runtime_bytes);

// Everything but the measured time: resolves the recipe's plugins (the
// recipe must be resolved), reads config.json, tokenizes the data through
// the prepared-data cache (the run reuses it) and packs it.
Plan make_plan(const Recipe& recipe, Registry& registry, const PlanOptions& options);

// Loads the weights and runs `steps` optimizer steps on the first rows
// (nothing is saved), filling plan.time.
void measure_steps(const Recipe& recipe, Registry& registry, int64_t steps, Plan& plan);

std::string format_plan(const Plan& plan);
nlohmann::json plan_json(const Plan& plan);

// What lives where in a run on `device`: (part, device type) for weights,
// trainable (adapter or full weights, and their gradients), optimizer_state,
// activations and data; "cpu" or "cuda". Data (tokenized examples, packed
// rows) stays on the host and goes over one micro-batch at a time; an
// optimizer whose plan_state says on_host (a paged one) keeps its state in
// host pages. The run writes what it observed, under the same names, into
// summary.json ("placement").
std::vector<std::pair<std::string, std::string>> plan_placement(PlanDevice device, bool optimizer_state_on_host);
// The PlanDevice a run of `device_setting` ([training] device) uses on this
// machine: cuda/cuda:N -> cuda, cpu -> cpu, auto -> cuda only when this
// libtorch has CUDA and a GPU is visible.
PlanDevice plan_device_for(const std::string& device_setting);
std::string format_bytes(int64_t bytes);  // "5.34 GB" (10^9)

}  // namespace mftk::core
