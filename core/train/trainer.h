// The training loop: micro-batches, gradient accumulation with an exact
// token-weighted loss, clipping, the optimizer plugin, the schedule,
// evaluation, metrics, atomic checkpoints and exact resume.
//
// defines: mftk::core::TrainOptions, mftk::core::TrainResult, mftk::core::Trainer,
//          mftk::core::EvalResult, mftk::core::evaluate_loss, mftk::core::find_latest_checkpoint,
//          mftk::core::kMetricsFile
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mftk/batch.h"
#include "mftk/tensor.h"
#include "run_log.h"
#include "schedule.h"
#include "train_step.h"

namespace mftk {
class Adapter;
class Model;
class Objective;
class Optimizer;
}  // namespace mftk

namespace mftk::core {

class Recipe;
class Distributed;

// The file in output_dir the trainer appends its metrics records to (RunPaths::metrics).
inline constexpr const char* kMetricsFile = "metrics.jsonl";

struct TrainOptions {
  int64_t micro_batch_size = 1;
  int64_t gradient_accumulation_steps = 1;
  double num_epochs = 1.0;
  int64_t max_steps = -1;
  double max_grad_norm = 1.0;
  int64_t logging_steps = 10;
  int64_t eval_steps = 0;
  int64_t save_steps = 0;
  int64_t save_total_limit = 0;
  int64_t nan_patience = 3;
  uint64_t seed = 42;
  std::string output_dir = "out";
  std::string resume_from_checkpoint;  // "", a folder, or "latest"
  // What this run is, as JSON text: the resolved recipe, each component's
  // plugin and library version, the mftk version (the pipeline's
  // run_record). Every checkpoint keeps it as run.json, and a resume compares
  // it with the checkpoint's. Empty: nothing is recorded or compared.
  std::string run_record;
  // Where the objective's prepared state is cached (objective_cache_file);
  // empty: it is prepared in memory at every start.
  std::string objective_cache;
  bool progress_bar = true;            // when stderr is a terminal
  // Also write the metrics to output_dir/tensorboard/ (rank 0). The recipe
  // key defaults to true; options built in code (tests, tools) opt in.
  bool tensorboard = false;
  Schedule schedule;                   // total_steps filled by the trainer
  double warmup_ratio_ = 0.0;          // used when schedule.warmup_steps is 0
  // Data parallelism: null or one rank trains alone. With W ranks each
  // optimizer step takes micro_batch_size x gradient_accumulation_steps x W
  // rows (gradient_accumulation_steps is per rank, as in torchrun/Axolotl):
  // the same global order of micro-batches as one rank with W times the
  // accumulation, rank r taking the step's micro-batches r, r+W, ...
  std::shared_ptr<Distributed> distributed;

  static TrainOptions from_recipe(const Recipe& recipe);
};

struct EvalResult {
  double loss = 0;  // mean over supervised tokens (an objective's: over its units)
  double perplexity = 0;
  int64_t tokens = 0;  // an objective's units (supervised tokens for sft, pairs for dpo/orpo)
  // An objective's metrics, means over its units, in metric_names() order.
  std::vector<std::pair<std::string, double>> metrics;
};

struct TrainResult {
  int64_t steps = 0;           // optimizer steps done in total (incl. before a resume)
  int64_t train_tokens = 0;    // tokens of this run's steps (all ranks together)
  double seconds = 0;
  double tokens_per_s = 0;
  double final_loss = 0;
  std::optional<double> eval_loss;
  std::optional<double> best_eval_loss;
  std::vector<std::pair<std::string, double>> eval_metrics;  // the objective's, at the last evaluation
  std::vector<std::pair<std::string, double>> eval_metrics_before;  // before the first step (a fresh run)
  int64_t skipped_nonfinite = 0;
  bool interrupted = false;    // Ctrl-C: a checkpoint was written
  std::string last_checkpoint;
  // Every record the run logged, as series by key (rank 0; the same records
  // metrics.jsonl holds, read as read_metrics reads them). A resumed run's
  // start with what metrics.jsonl holds up to the checkpoint's step.
  MetricPoints metrics;
};

// Mean cross-entropy over supervised tokens of `rows` (no gradients).
EvalResult evaluate_loss(Model& model, const std::vector<PackedRow>& rows, int64_t micro_batch_size);
// The objective's mean loss and metrics over `rows` (no gradients); a null
// objective is evaluate_loss. The objective must have been prepared already
// when it needs preparation (prepare_objective).
EvalResult evaluate_objective(Model& model, Objective* objective, Adapter* adapter,
                              const std::vector<PackedRow>& rows, int64_t micro_batch_size);
// Objective::prepare over every micro-batch of rows, when it needs it.
void prepare_objective(Model& model, Objective& objective, Adapter* adapter, const std::vector<PackedRow>& rows,
                       int64_t micro_batch_size);

// The head's tensors that train, when the model says (its slot named
// lm_head); nullopt when the model has no such slot.
std::optional<std::vector<at::Tensor>> head_trainable_tensors(Model& model);

// Sum of cross-entropy over the supervised tokens of one batch, computing
// logits only for those tokens, in chunks (the vocabulary is wide).
at::Tensor supervised_loss_sum(Model& model, const Batch& batch, int64_t* token_count);

// checkpoint-N with the highest N whose manifest verifies, or "".
std::string find_latest_checkpoint(const std::string& output_dir);

class Trainer {
 public:
  Trainer(Model& model, Optimizer& optimizer, NamedTensors trainable, std::vector<PackedRow> train_rows,
          std::vector<PackedRow> eval_rows, TrainOptions options);

  // Called after every checkpoint with its folder (the pipeline adds e.g. a PEFT adapter copy).
  std::function<void(const std::string& dir)> on_checkpoint;

  // The loss to minimise (null, the default: token cross-entropy, which is
  // also what the sft objective computes) and the adapter it may switch off
  // for a reference model (null: full fine-tuning). Set before train().
  void set_objective(Objective* objective, Adapter* adapter);

  TrainResult train();
  int64_t total_steps() const { return total_steps_; }

 private:
  // train(), in the order it runs them (trainer.cpp).
  struct Loop;
  void start_training();
  void open_logs(Loop& loop);
  bool take_step(TrainStep& step, Loop& loop);
  std::vector<MicroBatch> step_micro_batches(const TrainStep& step, int64_t& units, int64_t& tokens) const;
  void all_reduce_step(StepOutcome& outcome, bool& interrupted);
  void log_window(Loop& loop, double lr, double grad_norm, double tokens_per_s,
                  std::chrono::steady_clock::time_point now);
  void log_metrics(Loop& loop, const nlohmann::json& record);
  EvalResult evaluate_and_log(Loop& loop);
  bool save_when_due(Loop& loop, bool interrupted);
  TrainResult finish(Loop& loop);

  std::vector<const PackedRow*> micro_batch_rows(int64_t micro_index) const;
  void save_checkpoint(int64_t step, const std::string& reason);
  void load_checkpoint(const std::string& dir);
  EvalResult evaluate_sharded();

  Model& model_;
  Optimizer& optimizer_;
  Objective* objective_ = nullptr;
  Adapter* adapter_ = nullptr;
  std::vector<std::string> metric_names_;  // the objective's
  NamedTensors trainable_;
  std::vector<PackedRow> train_rows_, eval_rows_;
  TrainOptions o_;
  int64_t micro_per_epoch_ = 0;
  int64_t micro_per_step_ = 1;  // gradient_accumulation_steps x world size
  int world_size_ = 1, rank_ = 0;
  int64_t total_micro_ = 0;
  int64_t total_steps_ = 0;
  int64_t step_ = 0;  // optimizer steps done
  int64_t nan_in_a_row_ = 0, nan_total_ = 0;
  std::optional<double> best_eval_;
  // The metrics window in progress (steps since the last metrics line). It
  // is saved with each checkpoint, so that a resumed run logs the same means
  // as the uninterrupted one even when it resumes mid-window.
  double window_loss_ = 0;
  int64_t window_steps_ = 0;  // finite-loss steps in the window (skipped ones would drag the mean down)
  int64_t window_tokens_ = 0;
  std::vector<double> window_metrics_;  // sums of each step's metric means, metric_names_ order
  mutable std::vector<size_t> order_;  // this epoch's row permutation
  mutable int64_t order_epoch_ = -1;
};

}  // namespace mftk::core
