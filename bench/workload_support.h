// What the mftk_bench subcommands share (bench/cmd_*.cpp): the engine built
// from a recipe through the registry, the peer's weights read from mftk's
// model, synthetic batches, one mftk training step, and the interleaved
// timing every workload uses. Row printing, memory probes and FLOP counts
// are in bench_util.h; the peer itself in peer_step.h.
//
// defines: mftk::bench::CommonOptions, emit, Engine, kAttentionChunk, model_recipe, make_engine,
//          flop_shape, peer_shape, find_named, peer_weights_from, copy_lora_into, random_ids,
//          mftk_batch, Timing, warm_up, Side, time_rotated, time_interleaved,
//          pair_ratio_summary, relative_difference, WorkloadMismatch, mftk_attention_pairs,
//          TrainArgs, in_child, and the cmd_* entry points of the subcommands
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/optimizer.h"
#include "peer_step.h"
#include "recipe.h"
#include "registry.h"

namespace mftk::bench {

using Clock = std::chrono::steady_clock;

struct CommonOptions {
  int threads = 2;
  std::string json;  // append rows here when set
};

// Prints the rows and appends them to --json when given.
void emit(const CommonOptions& common, const std::vector<Row>& rows);

// ---------------------------------------------------------------------------
// mftk components, created through the registry from a recipe (as `mftk run` does)

struct Engine {
  core::Registry registry;
  std::optional<core::Recipe> recipe;
};

// Query rows per attention block, set in the recipe so the FLOP count below
// plans the very blocks the model computes.
constexpr int64_t kAttentionChunk = 128;

// [model] dtype: "auto" (as stored, mapped), "f32" or "bf16"; compute: "f32" | "bf16".
std::string model_recipe(const std::string& dir, const std::string& weight_dtype, const std::string& compute_dtype,
                         bool lora);
void make_engine(Engine& e, const std::string& recipe_text);

FlopShape flop_shape(const ModelShape& s);
PeerShape peer_shape(const ModelShape& s);
const at::Tensor* find_named(const NamedTensors& tensors, const std::string& name);

// The peer's weights, read from the loaded mftk model by Hugging Face name:
// the very tensors (LoRA mode: frozen, shared), or fp32 copies (full mode).
PeerWeights peer_weights_from(Model& model, bool fp32_copies);

// Copies of the adapter's LoRA A and B (fp32), so the peer starts where mftk starts.
void copy_lora_into(Model& model, PeerWeights& w);

// Random tokens [batch, seq] (ids 3.. so no special token), and the same
// rows as an mftk Batch: one document per row, every next token supervised.
at::Tensor random_ids(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed);

// One document per row; its first `prompt_tokens` tokens are the prompt
// (not supervised), the rest the response.
Batch mftk_batch(const at::Tensor& ids, int64_t prompt_tokens = 0);

struct Timing {
  std::vector<double> seconds;  // measured steps only
  double first_value = 0;       // loss of the first step (before any update)
  int64_t peak_rss = 0;
  double median_s() const { return median(seconds); }
};

// Runs max(warmup, 1) untimed calls of fn; the peak RSS is this phase's own
// (earlier phases' freed pages are released first). The first call's value
// is the loss before any update.
template <class Fn>
Timing warm_up(const char* label, int warmup, Fn&& fn) {
  release_free_memory();
  reset_peak_rss();
  Timing t;
  for (int i = 0; i < std::max(warmup, 1); ++i) {
    const auto t0 = Clock::now();
    const double v = fn();
    if (i == 0) t.first_value = v;
    std::fprintf(stderr, "  %s warmup %d: %.1f ms (value %.5f)\n", label, i + 1, 1e3 * seconds_since(t0), v);
  }
  t.peak_rss = read_memory_status().peak_rss;
  return t;
}

// One side of an interleaved measurement: a label, its timing, its call.
struct Side {
  const char* label;
  Timing* timing;
  std::function<double()> fn;
};

// Times `steps` calls of each side, one call of every side per round, the
// order rotating from round to round (a b c, b c a, c a b, ...; two sides:
// a b, b a, ...), so each side runs in each place of a round equally often.
// This machine's speed drifts by 20-30% over tens of seconds (other tenants
// of the host), so timing one side after the other would measure the drift;
// a round's calls are seconds apart.
void time_rotated(int steps, const std::vector<Side>& sides);

template <class PeerFn, class MftkFn>
void time_interleaved(int steps, Timing& peer, PeerFn&& peer_fn, Timing& mftk, MftkFn&& mftk_fn) {
  time_rotated(steps, {{"peer", &peer, peer_fn}, {"mftk", &mftk, mftk_fn}});
}

// peer time / mftk time of each interleaved pair: "lo..hi, median m".
std::string pair_ratio_summary(const Timing& peer, const Timing& mftk);

double relative_difference(double a, double b);

// The two sides did not compute the same thing (first loss, logits or
// trainable count differ): their times say nothing, so the workload fails
// (exit 3) instead of printing a ratio.
class WorkloadMismatch : public Error {
 public:
  using Error::Error;
};

// (query, key) pairs per head and row whose score mftk's blockwise attention
// computes for this batch: the mistral plugin's own AttentionPlan, built from
// the batch the way MistralModel::forward builds it, summed over its blocks
// (each block of queries against the key range any of them sees).
double mftk_attention_pairs(const Batch& batch, std::optional<int64_t> window);

// The shape and length of a train, forward or load workload (the options
// bench/run passes).
struct TrainArgs {
  std::string preset = "tiny", mode = "lora", dtype = "f32";
  int64_t seq = 0, batch = 0;
  int warmup = 2, steps = 5;
  double response_fraction = 1.0;  // supervised share of each row (the rest is prompt)
  std::string profile;              // profile one more step of each side (PREFIX-{peer,mftk}.txt)
};

// Runs fn in a child; fn's JSON comes back through a pipe. The parent never
// runs a torch parallel region, so the children's OpenMP starts clean.
nlohmann::json in_child(const std::function<nlohmann::json()>& fn);

// The subcommands (bench/cmd_<name>.cpp).
void cmd_train(const CommonOptions& common, const TrainArgs& a);
void cmd_forward(const CommonOptions& common, const TrainArgs& a);
void cmd_load(const CommonOptions& common, const TrainArgs& a, int rounds);
void cmd_pack(const CommonOptions& common, int64_t examples_count, int64_t rows_count);
void cmd_gemm(const CommonOptions& common);
void cmd_gguf_export(const CommonOptions& common, const std::string& preset, const std::string& type);
void cmd_nf4_dequant(const CommonOptions& common, int64_t rows, int64_t cols, int steps);
void cmd_qlora(const CommonOptions& common, const TrainArgs& a);

}  // namespace mftk::bench
