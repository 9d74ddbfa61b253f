// mftk_bench: benchmarks of the engine against a peer measured in the same
// run (bench/README.md explains every row). Subcommands:
//   forward  mistral plugin forward (no grad) vs the peer's forward
//   load     peak RSS and time of loading a bf16 checkpoint vs a read-it-all loader
//   train    one training step (LoRA or full) vs the peer's step
//   pack     swa_packer vs padding efficiency; prepare_data vs plain encoding
//   gemm     2048^3 matmul GFLOP/s, the peak MFU is measured against
//   qlora    peak RSS of one QLoRA step on an NF4 base vs the same step on the bf16 base
//   nf4-dequant  NF4 dequantisation GB/s vs a libtorch gather-and-scale
//   gguf-export  time and peak RSS of a GGUF export against the checkpoint's size
//   report   the table of a --json results file
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <regex>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/version.h>
// The legacy profiler API as libtorch 1.13 has it; 2.x moved it (--profile
// then says so instead of failing the build).
#if TORCH_VERSION_MAJOR < 2 && __has_include(<torch/csrc/autograd/profiler_legacy.h>)
#include <torch/csrc/autograd/profiler_legacy.h>
#define MFTK_BENCH_HAS_LEGACY_PROFILER 1
#else
#define MFTK_BENCH_HAS_LEGACY_PROFILER 0
#endif

#include "attention.h"
#include "batching.h"
#include "bench_util.h"
#include "dataset.h"
#include "fs_util.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/exporter.h"
#include "mftk/linear_slot.h"
#include "mftk/model.h"
#include "mftk/optimizer.h"
#include "mftk/packer.h"
#include "mftk/quantizer.h"
#include "mftk/tokenizer.h"
#include "nf4_bench.h"
#include "nf4_kernels.h"
#include "nf4_tensor.h"
#include "peer_step.h"
#include "pipeline.h"
#include "recipe.h"
#include "registry.h"
#include "trainer.h"

// The same allocator settings as the mftk executable (core/cli/main.cpp):
// freed pages are kept, since a fresh page costs ~12 us to fault in here.
extern "C" {
const char* malloc_conf = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1";
}

namespace mftk::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct CommonOptions {
  int threads = 2;
  std::string json;  // append rows here when set
};

void emit(const CommonOptions& common, const std::vector<Row>& rows) {
  for (const auto& r : rows) print_row(r);
  if (!common.json.empty()) append_json_rows(common.json, rows, common.threads);
}

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
                         bool lora) {
  std::string text = fmt::format(
      "[model]\nplugin = \"mistral\"\npath = \"{}\"\ndtype = \"{}\"\ncompute_dtype = \"{}\"\n"
      "attention_chunk = {}\n\n"
      "[optimizer]\nplugin = \"adamw\"\nweight_decay = 0.0\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\n",
      dir, weight_dtype, compute_dtype, kAttentionChunk);
  if (lora)
    text += "\n[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ndropout = 0.0\n"
            "target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
            "\"down_proj\"]\n";
  return text;
}

void make_engine(Engine& e, const std::string& recipe_text) {
  e.recipe = core::Recipe::parse(recipe_text, "bench-recipe.toml");
  e.recipe->resolve(e.registry);
}

FlopShape flop_shape(const ModelShape& s) {
  FlopShape f;
  f.vocab = s.vocab_size;
  f.hidden = s.hidden_size;
  f.intermediate = s.intermediate_size;
  f.layers = s.num_layers;
  f.heads = s.num_heads;
  f.kv_heads = s.num_kv_heads;
  f.head_dim = s.head_dim;
  return f;
}

PeerShape peer_shape(const ModelShape& s) {
  PeerShape p;
  p.vocab = s.vocab_size;
  p.hidden = s.hidden_size;
  p.intermediate = s.intermediate_size;
  p.layers = s.num_layers;
  p.heads = s.num_heads;
  p.kv_heads = s.num_kv_heads;
  p.head_dim = s.head_dim;
  p.rope_theta = s.rope_theta;
  p.rms_norm_eps = s.rms_norm_eps;
  return p;
}

const at::Tensor* find_named(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

// The peer's weights, read from the loaded mftk model by Hugging Face name:
// the very tensors (LoRA mode: frozen, shared), or fp32 copies (full mode).
PeerWeights peer_weights_from(Model& model, bool fp32_copies) {
  auto take = [&](const at::Tensor& t) { return fp32_copies ? t.detach().to(at::kFloat).clone() : t.detach(); };
  PeerWeights w;
  w.layers.resize(size_t(model.shape().num_layers));
  static const std::regex slot_re(R"(model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+))");
  for (LinearSlot* slot : model.linear_slots()) {
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* weight = find_named(params, "weight");
    const at::Tensor dense = weight ? *weight : slot->op->dense_weight(at::kFloat);
    if (slot->name == "lm_head") {
      w.lm_head = take(dense);
      continue;
    }
    std::smatch m;
    if (!std::regex_match(slot->name, m, slot_re)) throw Error(fmt::format("bench: unexpected slot {}", slot->name));
    const size_t layer = std::stoul(m[1]);
    for (int p = 0; p < kProjections; ++p)
      if (m[3] == projection_name(p)) w.layers.at(layer).weight[size_t(p)] = take(dense);
  }
  for (const auto& [name, t] : model.named_parameters()) {
    std::smatch m;
    static const std::regex norm_re(R"(model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight)");
    if (name == "model.embed_tokens.weight") w.embed_tokens = take(t);
    else if (name == "model.norm.weight") w.final_norm = take(t);
    else if (std::regex_match(name, m, norm_re)) {
      auto& layer = w.layers.at(std::stoul(m[1]));
      (m[2] == "input_layernorm" ? layer.input_norm : layer.post_attention_norm) = take(t);
    }
  }
  MFTK_CHECK(w.embed_tokens.defined() && w.final_norm.defined() && w.lm_head.defined(),
             "bench: the model lacks embed_tokens, norm or lm_head");
  return w;
}

// Copies of the adapter's LoRA A and B (fp32), so the peer starts where mftk starts.
void copy_lora_into(Model& model, PeerWeights& w) {
  static const std::regex slot_re(R"(model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+))");
  for (LinearSlot* slot : model.linear_slots()) {
    std::smatch m;
    if (!std::regex_match(slot->name, m, slot_re)) continue;
    const NamedTensors params = slot->op->parameters();
    const at::Tensor* a = find_named(params, "lora_A.weight");
    const at::Tensor* b = find_named(params, "lora_B.weight");
    if (!a || !b) throw Error(fmt::format("bench: slot {} has no LoRA weights after inject", slot->name));
    for (int p = 0; p < kProjections; ++p)
      if (m[3] == projection_name(p)) {
        auto& layer = w.layers.at(std::stoul(m[1]));
        layer.lora_A[size_t(p)] = a->detach().to(at::kFloat).clone();
        layer.lora_B[size_t(p)] = b->detach().to(at::kFloat).clone();
      }
  }
}


// Random tokens [batch, seq] (ids 3.. so no special token), and the same
// rows as an mftk Batch: one document per row, every next token supervised.
at::Tensor random_ids(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randint(3, vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
}

// One document per row; its first `prompt_tokens` tokens are the prompt
// (not supervised), the rest the response.
Batch mftk_batch(const at::Tensor& ids, int64_t prompt_tokens = 0) {
  std::vector<PackedRow> rows(size_t(ids.size(0)));
  for (int64_t b = 0; b < ids.size(0); ++b) {
    Example ex;
    const at::Tensor row = ids[b].to(at::kInt).contiguous();
    ex.ids.assign(row.data_ptr<int32_t>(), row.data_ptr<int32_t>() + row.numel());
    ex.loss_mask.assign(ex.ids.size(), 1);
    std::fill_n(ex.loss_mask.begin(), std::min<size_t>(size_t(prompt_tokens), ex.loss_mask.size()), 0);
    core::append_document(rows[size_t(b)], ex, ex.ids.size());
  }
  return core::make_batch(rows);
}

// One mftk training step: the trainer's order of work (core/trainer.cpp):
// supervised_loss_sum / tokens, backward, clip the global norm (computed in
// double, as Trainer::clip_gradients does), optimizer plugin step, grads cleared.
double mftk_train_step(Model& model, Optimizer& optimizer, NamedTensors& trainable, const Batch& batch, double lr,
                       double max_grad_norm) {
  int64_t tokens = 0;
  const at::Tensor loss_sum = core::supervised_loss_sum(model, batch, &tokens);
  const double value = loss_sum.item<double>() / double(tokens);
  (loss_sum / double(tokens)).backward();
  double sq = 0;
  for (auto& [name, p] : trainable)
    if (p.grad().defined()) sq += p.grad().to(at::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(sq);
  if (max_grad_norm > 0 && norm > max_grad_norm)
    for (auto& [name, p] : trainable)
      if (p.grad().defined()) p.mutable_grad().mul_(max_grad_norm / (norm + 1e-6));
  optimizer.step(lr);
  for (auto& [name, p] : trainable)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
  return value;
}

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
void time_rotated(int steps, const std::vector<Side>& sides) {
  const size_t n = sides.size();
  for (int i = 0; i < steps; ++i)
    for (size_t k = 0; k < n; ++k) {
      const Side& side = sides[(size_t(i) + k) % n];
      const auto t0 = Clock::now();
      const double v = side.fn();
      const double s = seconds_since(t0);
      side.timing->seconds.push_back(s);
      std::fprintf(stderr, "  %s step %d: %.1f ms (value %.5f)\n", side.label, i + 1, 1e3 * s, v);
    }
}

template <class PeerFn, class MftkFn>
void time_interleaved(int steps, Timing& peer, PeerFn&& peer_fn, Timing& mftk, MftkFn&& mftk_fn) {
  time_rotated(steps, {{"peer", &peer, peer_fn}, {"mftk", &mftk, mftk_fn}});
}

// peer time / mftk time of each interleaved pair: "lo..hi, median m".
std::string pair_ratio_summary(const Timing& peer, const Timing& mftk) {
  std::vector<double> r;
  for (size_t i = 0; i < mftk.seconds.size() && i < peer.seconds.size(); ++i) r.push_back(peer.seconds[i] / mftk.seconds[i]);
  if (r.empty()) return "no pairs";
  return fmt::format("{:.2f}..{:.2f}, median {:.2f}", *std::min_element(r.begin(), r.end()),
                     *std::max_element(r.begin(), r.end()), median(r));
}

double relative_difference(double a, double b) { return std::abs(a - b) / std::max(1e-12, std::abs(b)); }

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
double mftk_attention_pairs(const Batch& batch, std::optional<int64_t> window) {
  const int64_t B = batch.input_ids.size(0), T = batch.input_ids.size(1);
  const at::Tensor index = at::arange(T, at::kLong);
  const at::Tensor pos = batch.position_ids.defined() ? batch.position_ids.to(at::kLong)
                                                      : index.unsqueeze(0).expand({B, T});
  const at::Tensor doc = batch.doc_ids.defined() ? batch.doc_ids.to(at::kLong) : at::zeros({B, T}, at::kLong);
  mistral::AttentionPlan plan(mistral::AttentionMaskRule{index, index, pos, pos, doc, doc, window}, kAttentionChunk);
  double pairs = 0;
  for (const auto& b : plan.blocks()) pairs += double(b.q1 - b.q0) * double(b.k1 - b.k0);
  return pairs;
}

// ---------------------------------------------------------------------------
// train

struct TrainArgs {
  std::string preset = "tiny", mode = "lora", dtype = "f32";
  int64_t seq = 0, batch = 0;
  int warmup = 2, steps = 5;
  double response_fraction = 1.0;  // supervised share of each row (the rest is prompt)
  std::string profile;              // profile one more step of each side (PREFIX-{peer,mftk}.txt)
};

// One more step under libtorch's profiler: self time per (op, input shapes),
// printed (top 25) and written in full to PREFIX-<side>.txt. Self time is an
// op's time less the ops it called, so the column adds up to the step.
template <class Fn>
void profile_step(const std::string& prefix, const char* side, Fn&& fn) {
  if (prefix.empty()) return;
#if MFTK_BENCH_HAS_LEGACY_PROFILER
  namespace prof = torch::autograd::profiler;
  prof::enableProfilerLegacy(torch::profiler::impl::ProfilerConfig(torch::profiler::impl::ProfilerState::CPU,
                                                                   /*report_input_shapes=*/true));
  const auto t0 = Clock::now();
  fn();
  const double step_ms = 1e3 * seconds_since(t0);
  const prof::thread_event_lists lists = prof::disableProfilerLegacy();
  struct Total { double self_us = 0; int64_t calls = 0; };
  std::map<std::string, Total> totals;
  for (const auto& events : lists) {
    struct Open { const prof::LegacyEvent* push; double child_us; };
    std::vector<Open> stack;
    for (const auto& e : events) {
      if (e.kind() == prof::EventKind::PushRange) {
        stack.push_back({&e, 0.0});
      } else if (e.kind() == prof::EventKind::PopRange && !stack.empty()) {
        const Open open = stack.back();
        stack.pop_back();
        const double us = open.push->cpuElapsedUs(e);
        std::string key = open.push->name();
        for (const auto& shape : open.push->shapes())
          if (!shape.empty()) key += fmt::format(" [{}]", fmt::join(shape, ","));
        totals[key].self_us += us - open.child_us;
        ++totals[key].calls;
        if (!stack.empty()) stack.back().child_us += us;
      }
    }
  }
  std::vector<std::pair<std::string, Total>> rows(totals.begin(), totals.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.self_us > b.second.self_us; });
  const std::string file = prefix + "-" + side + ".txt";
  std::ofstream out(file);
  out << fmt::format("{} step {:.1f} ms (profiled)\n{:>10} {:>6}  op [input shapes]\n", side, step_ms, "self ms", "calls");
  std::fprintf(stderr, "  %s: profiled step %.1f ms; top ops by self time (all in %s):\n", side, step_ms, file.c_str());
  for (size_t i = 0; i < rows.size(); ++i) {
    const std::string line = fmt::format("{:10.2f} {:6d}  {}", rows[i].second.self_us / 1e3, rows[i].second.calls, rows[i].first);
    out << line << "\n";
    if (i < 25) std::fprintf(stderr, "    %s\n", line.c_str());
  }
#else
  (void)fn;
  throw UsageError(fmt::format("--profile {}: built without libtorch 1.13's legacy profiler", prefix + "-" + side),
                   "profile with this libtorch's own (kineto) profiler instead");
#endif
}

void cmd_train(const CommonOptions& common, const TrainArgs& a) {
  if (a.mode != "lora" && a.mode != "full") throw UsageError("--mode must be lora or full");
  if (a.mode == "full" && a.dtype != "f32")
    throw UsageError("--mode full runs in f32 only: mftk's full fine-tuning makes every weight an fp32 leaf",
                     "drop --dtype bf16, or use --mode lora");
  const bool lora = a.mode == "lora";
  const bool tiny = a.preset == "tiny";
  const int64_t seq = a.seq > 0 ? a.seq : (tiny ? 512 : 256);
  const int64_t batch = a.batch > 0 ? a.batch : (tiny ? 2 : 1);
  // 7b-1layer is bf16 on disk; tiny is written in the dtype asked for.
  auto ck = ensure_checkpoint(a.preset, tiny ? a.dtype : "bf16");
  if (!ck) return;
  const at::ScalarType dt = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  const double gemm = gemm_gflops(dt);

  Engine engine;
  // LoRA: frozen weights in the step's dtype (shared with the peer). Full:
  // mapped as stored; both sides then make their own fp32 copies.
  make_engine(engine, model_recipe(ck->dir, lora ? a.dtype : "auto", a.dtype, lora));
  auto lm = core::load_model(*engine.recipe, engine.registry, a.dtype == "bf16");
  Model& model = *lm.model;
  const ModelShape shape = model.shape();
  const at::Tensor ids = random_ids(batch, seq, shape.vocab_size, 7);
  // Instruction data supervises the response only: mftk computes logits for
  // the supervised positions alone (so does the gathering peer below).
  const int64_t prompt_tokens = std::llround((1.0 - a.response_fraction) * double(seq));
  const Batch mb = mftk_batch(ids, prompt_tokens);
  constexpr double kLr = 1e-4, kMaxGradNorm = 1.0;

  // The peers first, from the model's weights before anything is trained.
  // On instruction data there are two: one scores every position (a
  // transformers model given labels = -100), the other gathers the
  // supervised positions' hidden states first (Liger's or Unsloth's loss).
  const bool response_only = prompt_tokens > 0;
  std::unique_ptr<Adapter> adapter;
  NamedTensors trainable;
  PeerOptions po;
  po.lora = lora;
  po.compute_dtype = dt;
  po.lr = kLr;
  po.max_grad_norm = kMaxGradNorm;
  Timing peer_t, gather_t;
  int64_t peer_trainable = 0, gather_trainable = 0;
  std::unique_ptr<PeerModel> peer, gather;
  {
    PeerWeights pw = peer_weights_from(model, /*fp32_copies=*/!lora);
    PeerWeights gw;
    if (response_only) gw = peer_weights_from(model, /*fp32_copies=*/!lora);
    if (lora) {
      const auto* ref = engine.recipe->component("adapter");
      adapter = engine.registry.create<Adapter>(Kind::adapter, ref->plugin, ref->config);
      adapter->inject(model);
      adapter->set_training(true);
      trainable = adapter->trainable_parameters();
      copy_lora_into(model, pw);
      if (response_only) copy_lora_into(model, gw);
    }
    peer = std::make_unique<PeerModel>(peer_shape(shape), std::move(pw), po);
    peer_trainable = peer->trainable_count();
    if (response_only) {
      PeerOptions go = po;
      go.score_supervised_only = true;
      gather = std::make_unique<PeerModel>(peer_shape(shape), std::move(gw), go);
      gather_trainable = gather->trainable_count();
    }
  }
  // What a peer keeps alive while the next side runs, counted (an RSS
  // difference would also count allocator caches): each trainable tensor in
  // fp32, its own (a copy of every weight in full mode; LoRA's A and B), and
  // AdamW's two fp32 moments. Its gradients are cleared after each step and
  // LoRA's frozen weights are shared.
  auto peer_step = [&] { return peer->train_step(ids, prompt_tokens); };
  peer_t = warm_up("peer", a.warmup, peer_step);
  int64_t peers_kept = peer_trainable * 12;
  auto gather_step = [&] { return gather->train_step(ids, prompt_tokens); };
  if (gather) {
    gather_t = warm_up("peer-gather", a.warmup, gather_step);
    gather_t.peak_rss -= peers_kept;
    peers_kept += gather_trainable * 12;
  }
  if (!lora) trainable = core::make_all_trainable(model);
  const auto* oref = engine.recipe->component("optimizer");
  auto optimizer = engine.registry.create<Optimizer>(Kind::optimizer, oref->plugin, oref->config);
  optimizer->attach(trainable);
  model.set_training(true);
  auto mftk_step = [&] { return mftk_train_step(model, *optimizer, trainable, mb, kLr, kMaxGradNorm); };
  // mftk's peak RSS is its phase's peak less what the peers keep alive.
  Timing mftk_t = warm_up("mftk", a.warmup, mftk_step);
  mftk_t.peak_rss -= peers_kept;

  int64_t mftk_trainable = 0;
  for (const auto& [n, t] : trainable) mftk_trainable += t.numel();
  // Same weights, same tokens: the first step's loss (before any update)
  // must agree, or the times below compare different work.
  const double tolerance = dt == at::kBFloat16 ? 2e-2 : 1e-4;
  const std::string workload = fmt::format("train {} {} {} b{}x{}", a.preset, a.mode, a.dtype, batch, seq) +
                               (response_only ? fmt::format(" resp{:.0f}%", 100.0 * a.response_fraction) : "");
  auto check_same = [&](const char* peer_name, const Timing& t, int64_t count) {
    const double diff = relative_difference(mftk_t.first_value, t.first_value);
    if (diff > tolerance || count != mftk_trainable)
      throw WorkloadMismatch(
          fmt::format("{}: mftk and the {} did not run the same workload: first loss {:.6f} vs {:.6f} (relative "
                      "difference {:.2e}, tolerance {:.0e}), trainable parameters {} vs {}; no ratio is reported",
                      workload, peer_name, mftk_t.first_value, t.first_value, diff, tolerance, mftk_trainable, count),
          "a change to mftk's or the peer's numerics made them disagree; find which with `mftk_bench train` and the "
          "unit tests before reading any timing");
  };
  check_same("peer", peer_t, peer_trainable);
  if (gather) check_same("gathering peer", gather_t, gather_trainable);

  if (gather)
    time_rotated(a.steps, {{"peer", &peer_t, peer_step}, {"peer-gather", &gather_t, gather_step},
                           {"mftk", &mftk_t, mftk_step}});
  else
    time_interleaved(a.steps, peer_t, peer_step, mftk_t, mftk_step);
  profile_step(a.profile, "peer", peer_step);
  if (gather) profile_step(a.profile, "peer-gather", gather_step);
  profile_step(a.profile, "mftk", mftk_step);

  // Matmul FLOPs each side executes: mftk's attention blocks as planned
  // (the skipped ones not counted) and its head on the supervised rows; the
  // peers' full masked T^2 square, the head on every row (peer) or on the
  // supervised rows (gathering peer). "Model" FLOPs are what the step needs:
  // the causal triangle and the supervised rows.
  const FlopShape fshape = flop_shape(shape);
  const int64_t supervised_rows = seq - std::max<int64_t>(prompt_tokens, 1);
  const double dense_pairs = double(seq) * double(seq);
  const double mftk_pairs = mftk_attention_pairs(mb, shape.sliding_window);
  const double mftk_flops = step_flops(fshape, batch, seq, lora, 8, supervised_rows, mftk_pairs);
  const double peer_flops = step_flops(fshape, batch, seq, lora, 8, seq, dense_pairs);
  const double gather_flops = step_flops(fshape, batch, seq, lora, 8, supervised_rows, dense_pairs);
  const double model_flops =
      step_flops(fshape, batch, seq, lora, 8, supervised_rows, causal_attention_pairs(seq, shape.sliding_window));
  const double tokens = double(batch * seq);
  const double mftk_tps = tokens / mftk_t.median_s(), peer_tps = tokens / peer_t.median_s();

  Row r;
  r.workload = workload + (gather ? " [peer: all rows]" : "");
  r.unit = "tokens/s";
  r.mftk = mftk_tps;
  r.peer = peer_tps;
  r.ratio = mftk_tps / peer_tps;
  r.extra = {{"preset", a.preset},
             {"mode", a.mode},
             {"dtype", a.dtype},
             {"batch", batch},
             {"seq", seq},
             {"response_fraction", a.response_fraction},
             {"peer_scores", "every position"},
             {"warmup_steps", a.warmup},
             {"measured_steps", a.steps},
             {"mftk_tokens_per_s", mftk_tps},
             {"peer_tokens_per_s", peer_tps},
             {"mftk_step_ms", 1e3 * mftk_t.median_s()},
             {"peer_step_ms", 1e3 * peer_t.median_s()},
             {"gflop_per_step", mftk_flops / 1e9},
             {"peer_gflop_per_step", peer_flops / 1e9},
             {"model_gflop_per_step", model_flops / 1e9},
             {"mftk_attention_pairs_per_row", mftk_pairs},
             {"peer_attention_pairs_per_row", dense_pairs},
             {"supervised_rows_per_row", supervised_rows},
             {"mftk_gflops", mftk_flops / mftk_t.median_s() / 1e9},
             {"peer_gflops", peer_flops / peer_t.median_s() / 1e9},
             {"gemm_gflops", gemm},
             {"gemm_peak_fraction", mftk_flops / mftk_t.median_s() / 1e9 / gemm},
             {"peer_gemm_peak_fraction", peer_flops / peer_t.median_s() / 1e9 / gemm},
             {"peak_rss_bytes", mftk_t.peak_rss},
             {"peer_peak_rss_bytes", peer_t.peak_rss},
             {"mftk_trainable_parameters", mftk_trainable},
             {"peer_trainable_parameters", peer_trainable},
             {"first_loss_mftk", mftk_t.first_value},
             {"first_loss_peer", peer_t.first_value},
             {"checkpoint", ck->dir}};
  const std::string flops_note = fmt::format(
      "GFLOP/step executed: mftk {:.1f} (attention {:.0f} of {} score pairs per head and row, blockwise), peer {:.1f}; "
      "the step needs {:.1f}",
      mftk_flops / 1e9, mftk_pairs, int64_t(dense_pairs), peer_flops / 1e9, model_flops / 1e9);
  r.extra["note"] = fmt::format("median step {:.0f} ms vs peer {:.0f} ms; {}; first loss {:.5f} vs {:.5f}; peer/mftk "
                                "time of each step pair {}",
                                1e3 * mftk_t.median_s(), 1e3 * peer_t.median_s(), flops_note, mftk_t.first_value,
                                peer_t.first_value, pair_ratio_summary(peer_t, mftk_t));
  std::vector<Row> rows = {r};
  if (gather) {
    Row g = r;
    const double gather_tps = tokens / gather_t.median_s();
    g.workload = workload + " [peer: supervised rows]";
    g.peer = gather_tps;
    g.ratio = mftk_tps / gather_tps;
    g.extra["peer_scores"] = "supervised positions only (hidden states gathered before lm_head)";
    g.extra["peer_tokens_per_s"] = gather_tps;
    g.extra["peer_step_ms"] = 1e3 * gather_t.median_s();
    g.extra["peer_gflop_per_step"] = gather_flops / 1e9;
    g.extra["peer_gflops"] = gather_flops / gather_t.median_s() / 1e9;
    g.extra["peer_gemm_peak_fraction"] = gather_flops / gather_t.median_s() / 1e9 / gemm;
    g.extra["peer_peak_rss_bytes"] = gather_t.peak_rss;
    g.extra["peer_trainable_parameters"] = gather_trainable;
    g.extra["first_loss_peer"] = gather_t.first_value;
    g.extra["note"] = fmt::format(
        "median step {:.0f} ms vs gathering peer {:.0f} ms (peer scoring every row {:.0f} ms); gathering peer "
        "executes {:.1f} GFLOP/step; first loss {:.5f} vs {:.5f}; peer/mftk time of each step round {}",
        1e3 * mftk_t.median_s(), 1e3 * gather_t.median_s(), 1e3 * peer_t.median_s(), gather_flops / 1e9,
        mftk_t.first_value, gather_t.first_value, pair_ratio_summary(gather_t, mftk_t));
    rows.push_back(g);
  }
  emit(common, rows);
}

// ---------------------------------------------------------------------------
// forward

void cmd_forward(const CommonOptions& common, const TrainArgs& a) {
  const bool tiny = a.preset == "tiny";
  const int64_t seq = a.seq > 0 ? a.seq : (tiny ? 512 : 256);
  const int64_t batch = a.batch > 0 ? a.batch : (tiny ? 2 : 1);
  auto ck = ensure_checkpoint(a.preset, tiny ? a.dtype : "bf16");
  if (!ck) return;
  const at::ScalarType dt = a.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  const double gemm = gemm_gflops(dt);
  at::NoGradGuard no_grad;

  Engine engine;
  make_engine(engine, model_recipe(ck->dir, a.dtype, a.dtype, false));
  auto lm = core::load_model(*engine.recipe, engine.registry, a.dtype == "bf16");
  Model& model = *lm.model;
  model.set_training(false);
  const ModelShape shape = model.shape();
  const at::Tensor ids = random_ids(batch, seq, shape.vocab_size, 11);
  const Batch mb = mftk_batch(ids);

  PeerOptions po;
  po.lora = false;
  po.train = false;  // forward only: the shared weights stay frozen, no optimizer state
  po.compute_dtype = dt;
  at::Tensor peer_logits, mftk_logits;
  Timing peer_t;
  // A forward-only peer: the same code path with LoRA off.
  PeerModel peer(peer_shape(shape), peer_weights_from(model, false), po);
  auto peer_forward = [&] {
    peer_logits = peer.logits(ids);
    return peer_logits.sum().item<double>() / double(peer_logits.numel());
  };
  auto mftk_forward = [&] {
    mftk_logits = model.logits(model.forward(mb)).to(at::kFloat);
    return mftk_logits.sum().item<double>() / double(mftk_logits.numel());
  };
  peer_t = warm_up("peer", a.warmup, peer_forward);
  Timing mftk_t = warm_up("mftk", a.warmup, mftk_forward);
  time_interleaved(a.steps, peer_t, peer_forward, mftk_t, mftk_forward);
  const double max_diff = (mftk_logits - peer_logits).abs().max().item<double>();
  const double scale = peer_logits.abs().max().item<double>();

  if (max_diff > (dt == at::kBFloat16 ? 0.1 : 1e-3) * std::max(1.0, scale))
    throw WorkloadMismatch(
        fmt::format("forward {} {}: mftk's logits differ from the peer's by up to {:.3e} (logits up to {:.2f}): not the "
                    "same computation, so no ratio is reported",
                    a.preset, a.dtype, max_diff, scale),
        "find which side changed with the mistral plugin's unit tests before reading any timing");

  // Both sides put every position through lm_head; mftk's attention
  // computes only the blocks its plan keeps, the peer the full square.
  const FlopShape fshape = flop_shape(shape);
  const double mftk_pairs = mftk_attention_pairs(mb, shape.sliding_window);
  const double flops = forward_flops(fshape, batch, seq, seq, mftk_pairs);
  const double peer_flops = forward_flops(fshape, batch, seq, seq, double(seq) * double(seq));
  const double tokens = double(batch * seq);
  Row r;
  r.workload = fmt::format("forward {} {} b{}x{}", a.preset, a.dtype, batch, seq);
  r.unit = "tokens/s";
  r.mftk = tokens / mftk_t.median_s();
  r.peer = tokens / peer_t.median_s();
  r.ratio = r.mftk / *r.peer;
  r.extra = {{"preset", a.preset},
             {"dtype", a.dtype},
             {"batch", batch},
             {"seq", seq},
             {"mftk_tokens_per_s", r.mftk},
             {"peer_tokens_per_s", *r.peer},
             {"mftk_ms", 1e3 * mftk_t.median_s()},
             {"peer_ms", 1e3 * peer_t.median_s()},
             {"gflop_per_pass", flops / 1e9},
             {"peer_gflop_per_pass", peer_flops / 1e9},
             {"mftk_attention_pairs_per_row", mftk_pairs},
             {"gemm_gflops", gemm},
             {"gemm_peak_fraction", flops / mftk_t.median_s() / 1e9 / gemm},
             {"peer_gemm_peak_fraction", peer_flops / peer_t.median_s() / 1e9 / gemm},
             {"peak_rss_bytes", mftk_t.peak_rss},
             {"peer_peak_rss_bytes", peer_t.peak_rss},
             {"max_abs_logit_diff", max_diff},
             {"checkpoint", ck->dir}};
  r.extra["note"] = fmt::format(
      "logits for all {} positions; max |mftk - peer| {:.2e} (logits up to {:.2f}); GFLOP/pass executed: mftk {:.1f} "
      "(attention {:.0f} of {} score pairs per head and row), peer {:.1f}; peer/mftk time of each pair {}",
      batch * seq, max_diff, scale, flops / 1e9, mftk_pairs, seq * seq, peer_flops / 1e9,
      pair_ratio_summary(peer_t, mftk_t));
  emit(common, {r});
}

// ---------------------------------------------------------------------------
// load (each loader in a fresh child process, so its RSS is its own)

struct LoadProbe {
  double seconds = 0;
  int64_t rss_before = 0, peak_after_load = 0, peak_after_touch = 0;
  int64_t anon_before = 0, anon_after_touch = 0;
  int64_t file_after_touch = 0;
};

nlohmann::json probe_json(const LoadProbe& p) {
  return {{"seconds", p.seconds},
          {"rss_before", p.rss_before},
          {"peak_after_load", p.peak_after_load},
          {"peak_after_touch", p.peak_after_touch},
          {"anon_before", p.anon_before},
          {"anon_after_touch", p.anon_after_touch},
          {"file_after_touch", p.file_after_touch}};
}

// Runs fn in a child; fn's JSON comes back through a pipe. The parent never
// runs a torch parallel region, so the children's OpenMP starts clean.
nlohmann::json in_child(const std::function<nlohmann::json()>& fn) {
  int fds[2];
  if (::pipe(fds) != 0) throw Error("bench: pipe() failed");
  std::fflush(nullptr);  // else the child inherits, and prints again, what stdout still buffers
  const pid_t pid = ::fork();
  if (pid < 0) throw Error("bench: fork() failed");
  if (pid == 0) {
    ::close(fds[0]);
    std::string out;
    int code = 0;
    try {
      out = fn().dump();
    } catch (const std::exception& e) {
      out = nlohmann::json{{"error", e.what()}}.dump();
      code = 1;
    }
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::write(fds[1], out.data() + done, out.size() - done);
      if (n <= 0) break;
      done += size_t(n);
    }
    ::close(fds[1]);
    std::fflush(nullptr);
    ::_exit(code);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) text.append(buf, size_t(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) throw Error(fmt::format("bench: child process {} died without a result (status {})", pid, status));
  if (j.contains("error")) throw Error(fmt::format("bench child: {}", j["error"].get<std::string>()));
  return j;
}

// Reads every page of every tensor once (a forward pass would).
void touch_all(Model& model) {
  at::NoGradGuard no_grad;
  double sink = 0;
  for (auto* slot : model.linear_slots())
    for (const auto& [n, t] : slot->op->parameters()) sink += t.sum().item<double>();
  for (const auto& [n, t] : model.named_parameters()) sink += t.sum().item<double>();
  if (std::isnan(sink)) std::fprintf(stderr, "(weights contain NaN)\n");
}

void cmd_load(const CommonOptions& common, const TrainArgs& a, int rounds) {
  auto made = in_child([&] {
    auto ck = ensure_checkpoint(a.preset, "bf16");
    return ck ? nlohmann::json{{"dir", ck->dir}, {"bytes", ck->bytes}} : nlohmann::json{{"skipped", true}};
  });
  if (made.contains("skipped")) return;
  const std::string dir = made["dir"];
  const int64_t bytes = made["bytes"];

  auto mftk_probe = [&] {
    return in_child([&] {
      Engine engine;
      make_engine(engine, model_recipe(dir, "auto", "f32", false));
      LoadProbe p;
      const MemoryStatus m0 = read_memory_status();
      p.rss_before = m0.rss;
      p.anon_before = m0.rss_anon;
      reset_peak_rss();
      const auto t0 = Clock::now();
      auto lm = core::load_model(*engine.recipe, engine.registry, false);
      p.seconds = seconds_since(t0);
      p.peak_after_load = read_memory_status().peak_rss;
      touch_all(*lm.model);
      const MemoryStatus m2 = read_memory_status();
      p.peak_after_touch = m2.peak_rss;
      p.anon_after_touch = m2.rss_anon;
      p.file_after_touch = m2.rss_file;
      return probe_json(p);
    });
  };
  // The peer: the plain way to load, every weight file read into memory.
  auto peer_probe = [&] {
    return in_child([&] {
      LoadProbe p;
      const MemoryStatus m0 = read_memory_status();
      p.rss_before = m0.rss;
      p.anon_before = m0.rss_anon;
      reset_peak_rss();
      const auto t0 = Clock::now();
      std::vector<at::Tensor> files;
      for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() != ".safetensors") continue;
        at::Tensor buf = at::empty({int64_t(e.file_size())}, at::kByte);
        std::FILE* f = std::fopen(e.path().c_str(), "rb");
        if (!f) throw Error(fmt::format("cannot open {}", e.path().string()));
        const size_t got = std::fread(buf.data_ptr(), 1, size_t(buf.numel()), f);
        std::fclose(f);
        if (got != size_t(buf.numel())) throw Error(fmt::format("short read of {}", e.path().string()));
        files.push_back(buf);
      }
      p.seconds = seconds_since(t0);
      p.peak_after_load = read_memory_status().peak_rss;
      double sink = 0;
      for (const auto& t : files) sink += t.sum().item<double>();
      const MemoryStatus m2 = read_memory_status();
      p.peak_after_touch = m2.peak_rss;
      p.anon_after_touch = m2.rss_anon;
      p.file_after_touch = m2.rss_file;
      nlohmann::json j = probe_json(p);
      j["checksum"] = sink;  // keeps the reads from being optimised away
      return j;
    });
  };
  // One untimed load of each first (the page cache then holds the files for
  // both), then rounds in alternating order, each load in a fresh process.
  mftk_probe();
  peer_probe();
  std::vector<nlohmann::json> mftk_probes, peer_probes;
  Timing mftk_t, peer_t;
  for (int i = 0; i < rounds; ++i)
    for (int k = 0; k < 2; ++k) {
      const bool mftk_turn = (i + k) % 2 == 0;
      const nlohmann::json p = mftk_turn ? mftk_probe() : peer_probe();
      (mftk_turn ? mftk_probes : peer_probes).push_back(p);
      (mftk_turn ? mftk_t : peer_t).seconds.push_back(p["seconds"].get<double>());
      std::fprintf(stderr, "  %s load %d: %.1f ms\n", mftk_turn ? "mftk" : "peer", i + 1,
                   1e3 * p["seconds"].get<double>());
    }
  auto median_of = [](const std::vector<nlohmann::json>& probes, auto&& value) {
    std::vector<double> v;
    for (const auto& p : probes) v.push_back(double(value(p)));
    return median(v);
  };
  const auto growth = [](const nlohmann::json& p) {
    return p["peak_after_touch"].get<int64_t>() - p["rss_before"].get<int64_t>();
  };
  const auto private_growth = [](const nlohmann::json& p) {
    return p["anon_after_touch"].get<int64_t>() - p["anon_before"].get<int64_t>();
  };
  const auto growth_after_load = [](const nlohmann::json& p) {
    return p["peak_after_load"].get<int64_t>() - p["rss_before"].get<int64_t>();
  };
  const double mftk_ratio = median_of(mftk_probes, growth) / double(bytes);
  const double peer_ratio = median_of(peer_probes, growth) / double(bytes);
  const double mftk_private = median_of(mftk_probes, private_growth);
  const double peer_private = median_of(peer_probes, private_growth);
  Row r;
  r.workload = fmt::format("load {} bf16 (RSS/size)", a.preset);
  r.unit = "RSS/size";
  r.mftk = mftk_ratio;
  r.peer = peer_ratio;
  r.ratio = mftk_ratio / peer_ratio;
  r.extra = {{"preset", a.preset},
             {"checkpoint", dir},
             {"checkpoint_bytes", bytes},
             {"rounds", rounds},
             {"peak_rss_bytes", median_of(mftk_probes, [](const nlohmann::json& p) {
                return p["peak_after_touch"].get<int64_t>(); })},
             {"peer_peak_rss_bytes", median_of(peer_probes, [](const nlohmann::json& p) {
                return p["peak_after_touch"].get<int64_t>(); })},
             {"mftk_load_seconds", mftk_t.median_s()},
             {"peer_load_seconds", peer_t.median_s()},
             {"mftk_private_growth_bytes", mftk_private},
             {"peer_private_growth_bytes", peer_private},
             {"mftk_peak_growth_after_load_bytes", median_of(mftk_probes, growth_after_load)},
             {"mftk_probes", mftk_probes},
             {"peer_probes", peer_probes}};
  r.extra["note"] = fmt::format(
      "medians of {} alternating rounds, each load in a fresh process: peak RSS growth over a {:.0f} MB checkpoint "
      "after every weight was read once; load {:.1f} ms vs read-all {:.1f} ms (peer/mftk time of each round {}); "
      "private (anonymous) growth {:.0f} MB vs {:.0f} MB",
      rounds, double(bytes) / 1e6, 1e3 * mftk_t.median_s(), 1e3 * peer_t.median_s(),
      pair_ratio_summary(peer_t, mftk_t), mftk_private / 1e6, peer_private / 1e6);
  emit(common, {r});
}

// ---------------------------------------------------------------------------
// pack and preprocess

std::vector<Example> synthetic_examples(int64_t count, int64_t min_len, int64_t max_len, uint64_t seed) {
  core::SplitMix64 rng(seed);
  std::vector<Example> out;
  for (int64_t i = 0; i < count; ++i) {
    const size_t len = size_t(min_len + int64_t(rng.below(uint64_t(max_len - min_len + 1))));
    Example ex;
    ex.ids.resize(len);
    for (auto& id : ex.ids) id = int32_t(3 + rng.below(1000));
    ex.loss_mask.assign(len, 1);
    ex.loss_mask[0] = 0;
    out.push_back(std::move(ex));
  }
  return out;
}

std::unique_ptr<Packer> make_packer(core::Registry& registry, const std::string& name) {
  auto recipe = core::Recipe::parse(fmt::format("[packer]\nplugin = \"{}\"\n", name), "bench-packer.toml");
  recipe.resolve(registry);
  const auto* ref = recipe.component("packer");
  return registry.create<Packer>(Kind::packer, ref->plugin, ref->config);
}

struct PackResult {
  PackStats stats;
  double seconds = 0;
  double fixed_efficiency = 0;  // real tokens / (rows x sequence_len)
  double batch4_efficiency = 0; // real tokens / tokens of micro-batches of 4 padded to their longest row
};

PackResult measure_packer(Packer& packer, const std::vector<Example>& examples, const PackOptions& po) {
  PackResult r;
  const auto t0 = Clock::now();
  const auto rows = packer.pack(examples, po, r.stats);
  r.seconds = seconds_since(t0);
  r.fixed_efficiency = double(r.stats.real_tokens) / double(int64_t(rows.size()) * po.sequence_len);
  int64_t padded = 0;
  for (size_t i = 0; i < rows.size(); i += 4) {
    size_t longest = 0;
    const size_t end = std::min(rows.size(), i + 4);
    for (size_t k = i; k < end; ++k) longest = std::max(longest, rows[k].ids.size());
    padded += int64_t(longest * (end - i));
  }
  r.batch4_efficiency = double(r.stats.real_tokens) / double(padded);
  return r;
}

// Instruction rows of plain English words, deterministic from the seed.
struct InstructionRow {
  std::string instruction, input, output;
};
std::vector<InstructionRow> synthetic_instructions(int64_t count, uint64_t seed) {
  static const char* const words[] = {
      "the", "model", "learns", "a", "small", "task", "from", "examples", "and", "answers", "questions", "about",
      "numbers", "cities", "rivers", "colours", "when", "asked", "politely", "it", "should", "reply", "with", "one",
      "short", "sentence", "that", "names", "capital", "of", "country", "translate", "following", "text", "into",
      "French", "summarise", "paragraph", "below", "list", "three", "reasons", "why", "people", "enjoy", "reading",
      "books", "explain", "how", "train", "works", "in", "simple", "terms", "for", "child", "water", "boils", "at",
      "hundred", "degrees", "sea", "level", "write", "poem", "autumn", "leaves", "falling", "quietly", "on", "old",
      "stone", "bridge", "compute", "sum", "seven", "eleven", "twenty", "is", "result", "Paris", "Berlin", "Madrid",
      "Rome", "Lisbon", "Vienna", "because", "they", "are", "interesting", "useful", "easy", "to", "understand"};
  constexpr uint64_t kWords = sizeof(words) / sizeof(words[0]);
  core::SplitMix64 rng(seed);
  auto sentence = [&](uint64_t min_words, uint64_t max_words) {
    const uint64_t n = min_words + rng.below(max_words - min_words + 1);
    std::string s;
    for (uint64_t i = 0; i < n; ++i) {
      if (i) s += ' ';
      s += words[rng.below(kWords)];
    }
    return s + ".";
  };
  std::vector<InstructionRow> rows;
  for (int64_t i = 0; i < count; ++i) {
    InstructionRow r;
    r.instruction = sentence(8, 60);
    if (rng.below(3) == 0) r.input = sentence(5, 40);
    r.output = sentence(5, 80);
    rows.push_back(std::move(r));
  }
  return rows;
}

void cmd_pack(const CommonOptions& common, int64_t examples_count, int64_t rows_count) {
  core::Registry registry;
  auto swa = make_packer(registry, "swa_packer");
  auto padding = make_packer(registry, "padding");
  PackOptions po;
  po.sequence_len = 2048;
  po.seed = 42;
  const auto examples = synthetic_examples(examples_count, 16, po.sequence_len, 99);
  const PackResult s = measure_packer(*swa, examples, po);
  const PackResult p = measure_packer(*padding, examples, po);
  Row pack;
  pack.workload = fmt::format("pack {} ex 16..{} (efficiency)", examples_count, po.sequence_len);
  pack.unit = "real/slots";
  pack.mftk = s.fixed_efficiency;
  pack.peer = p.fixed_efficiency;
  pack.ratio = s.fixed_efficiency / p.fixed_efficiency;
  pack.extra = {{"packer", "swa_packer"},
                {"peer_packer", "padding"},
                {"sequence_len", po.sequence_len},
                {"examples", examples_count},
                {"real_tokens", s.stats.real_tokens},
                {"mftk_rows", s.stats.rows},
                {"peer_rows", p.stats.rows},
                {"mftk_fixed_efficiency", s.fixed_efficiency},
                {"peer_fixed_efficiency", p.fixed_efficiency},
                {"mftk_batch4_efficiency", s.batch4_efficiency},
                {"peer_batch4_efficiency", p.batch4_efficiency},
                {"mftk_pack_tokens_per_s", double(s.stats.real_tokens) / s.seconds},
                {"peer_pack_tokens_per_s", double(p.stats.real_tokens) / p.seconds}};
  pack.extra["note"] = fmt::format(
      "swa_packer vs padding packer: {} vs {} rows of {}; micro-batches of 4 padded to their longest row: {:.3f} vs "
      "{:.3f}; packing took {:.0f} vs {:.0f} ms",
      s.stats.rows, p.stats.rows, po.sequence_len, s.batch4_efficiency, p.batch4_efficiency, 1e3 * s.seconds,
      1e3 * p.seconds);

  // prepare_data on a generated instruction file vs plain sentencepiece
  // encoding of the same texts (the unavoidable part of the work).
  auto ck = ensure_checkpoint("tiny", "f32");
  auto tokenizer = Tokenizer::load(ck->dir);
  const auto rows = synthetic_instructions(rows_count, 5);
  const fs::path data_dir = fs::path(bench_cache_dir()) / "data";
  fs::create_directories(data_dir);
  const std::string jsonl = (data_dir / fmt::format("instructions-{}.jsonl", rows_count)).string();
  {
    std::string text;
    for (const auto& r : rows) {
      nlohmann::json j = {{"instruction", r.instruction}, {"output", r.output}};
      if (!r.input.empty()) j["input"] = r.input;
      text += j.dump() + "\n";
    }
    core::write_file_atomic(jsonl, text);
  }
  core::DataOptions dopt;
  core::DatasetSpec spec;
  spec.path = jsonl;
  spec.type = core::DatasetType::instruction;
  dopt.datasets = {spec};
  dopt.prepared_path = (data_dir / "prepared").string();
  const auto t0 = Clock::now();
  const core::PreparedData data = core::prepare_data(dopt, *tokenizer, core::CacheMode::off);
  const double mftk_s = seconds_since(t0);
  int64_t tokens = 0;
  for (const auto& ex : data.train) tokens += int64_t(ex.ids.size());
  for (const auto& ex : data.eval) tokens += int64_t(ex.ids.size());

  const auto t1 = Clock::now();
  int64_t peer_tokens = 0;
  for (const auto& r : rows) {
    peer_tokens += int64_t(tokenizer->encode(r.input.empty() ? r.instruction : r.instruction + "\n\n" + r.input).size());
    peer_tokens += int64_t(tokenizer->encode(r.output).size());
  }
  const double peer_s = seconds_since(t1);
  Row prep;
  prep.workload = fmt::format("preprocess {} instruction rows", rows_count);
  prep.unit = "tokens/s";
  prep.mftk = double(tokens) / mftk_s;
  prep.peer = double(tokens) / peer_s;  // the same rows, counted as mftk's tokens
  prep.ratio = peer_s / mftk_s;
  prep.extra = {{"mftk_tokens_per_s", prep.mftk},
                {"peer_tokens_per_s", *prep.peer},
                {"rows", rows_count},
                {"tokens", tokens},
                {"peer_encoded_tokens", peer_tokens},
                {"mftk_seconds", mftk_s},
                {"peer_seconds", peer_s},
                {"tokenizer", ck->tokenizer},
                {"cache_mode", "off"}};
  prep.extra["note"] = fmt::format(
      "prepare_data (JSONL, chat template, loss masks; cache off) {:.2f} s vs encoding the same texts {:.2f} s; "
      "tokenizer {}", mftk_s, peer_s, fs::path(ck->tokenizer).filename().string());
  emit(common, {pack, prep});
}

// ---------------------------------------------------------------------------
// gemm

void cmd_gemm(const CommonOptions& common) {
  std::vector<Row> rows;
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  for (auto [dt, name] : {std::pair{at::kFloat, "fp32"}, std::pair{at::kBFloat16, "bf16"}}) {
    Row r;
    r.workload = fmt::format("gemm {} 2048^3", name);
    r.unit = "GFLOP/s";
    r.mftk = gemm_gflops(dt, 2048, 7);
    r.extra = {{"dtype", name}, {"gemm_gflops", r.mftk}, {"openblas_coretype", coretype ? coretype : ""}};
    r.extra["note"] = std::string("libtorch at::mm, best of 7 (the peak %gemm refers to)") +
                      (coretype && dt == at::kFloat
                           ? fmt::format("; OPENBLAS_CORETYPE={} is set: fp32 runs slower kernels", coretype)
                           : "");
    rows.push_back(r);
  }
  emit(common, rows);
}

// ---------------------------------------------------------------------------
// GGUF export: time and peak RSS against the checkpoint's size (streaming)

void cmd_gguf_export(const CommonOptions& common, const std::string& preset, const std::string& type) {
  auto made = in_child([&] {
    auto ck = ensure_checkpoint(preset, "bf16");
    return ck ? nlohmann::json{{"dir", ck->dir}, {"bytes", ck->bytes}} : nlohmann::json{{"skipped", true}};
  });
  if (made.contains("skipped")) return;
  if (made.contains("error")) throw Error(made["error"].get<std::string>());
  const std::string dir = made["dir"];
  const int64_t bytes = made["bytes"];
  const std::string out = (fs::path(bench_cache_dir()) / fmt::format("{}-{}.gguf", preset, type)).string();
  auto probe = in_child([&] {
    Engine engine;
    make_engine(engine, fmt::format("[[export]]\nplugin = \"gguf\"\nout = \"{}\"\ntype = \"{}\"\n", out, type));
    const auto& ref = engine.recipe->exports().at(0);
    auto exporter = engine.registry.create<Exporter>(Kind::exporter, ref.plugin, ref.config);
    const MemoryStatus m0 = read_memory_status();
    reset_peak_rss();
    ExportJob job;
    job.model_dir = dir;
    job.out = out;
    const auto t0 = Clock::now();
    const ExportReport report = exporter->run(job);
    const double seconds = seconds_since(t0);
    const MemoryStatus m1 = read_memory_status();
    return nlohmann::json{{"rss_before", m0.rss}, {"peak", m1.peak_rss}, {"anon", m1.rss_anon},
                          {"seconds", seconds}, {"file_bytes", report.bytes}, {"summary", report.summary}};
  });
  if (probe.contains("error")) throw Error("gguf export: " + probe["error"].get<std::string>());
  fs::remove(out);  // the file is large and only measured
  const double growth = probe["peak"].get<double>() - probe["rss_before"].get<double>();
  Row r;
  r.workload = fmt::format("gguf export {} bf16 -> {} (peak RSS/size)", preset, type);
  r.unit = "RSS/size";
  r.mftk = growth / double(bytes);
  r.extra = {{"preset", preset},      {"type", type},
             {"checkpoint_bytes", bytes}, {"peak_rss_bytes", probe["peak"]},
             {"export_seconds", probe["seconds"]}, {"gguf_bytes", probe["file_bytes"]},
             {"private_rss_bytes", probe["anon"]}};
  r.extra["note"] = fmt::format("{:.1f} s for {:.2f} GB -> {:.2f} GB; peak RSS growth {:.2f} GB ({:.0f}% of the checkpoint)",
                                probe["seconds"].get<double>(), double(bytes) / 1e9,
                                probe["file_bytes"].get<double>() / 1e9, growth / 1e9, 100.0 * growth / double(bytes));
  emit(common, {r});
}

// ---------------------------------------------------------------------------
// QLoRA: NF4 dequantisation throughput, and the memory of one QLoRA step

// The kernels (AVX2 where the CPU has it, and the scalar path) and the
// libtorch gather-and-scale peer, timed in rotating rounds like the train
// rows; medians, and each round's peer/mftk time ratio.
void cmd_nf4_dequant(const CommonOptions& common, int64_t rows, int64_t cols, int steps) {
  at::Generator gen = at::detail::createCPUGenerator(17);
  const nf4::Nf4Tensor w = nf4::quantize_nf4(at::randn({rows, cols}, gen) * 0.02, 64, false);
  const double n = double(w.numel()), packed_bytes = double(w.storage_bytes());
  const bool avx2 = nf4::avx2_available();
  std::vector<Row> out;
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
    const char* dtype = dt == at::kFloat ? "f32" : "bf16";
    const double out_bytes = n * double(at::elementSize(dt));
    at::Tensor peer_out, fast_out, scalar_out;
    // Each call first drops its previous result, so every side pays the same free.
    auto peer_fn = [&] {
      peer_out = at::Tensor();
      peer_out = dt == at::kFloat ? nf4::reference_dequantize(w) : nf4::reference_dequantize(w).to(dt);
      return 0.0;
    };
    const nf4::DequantPath fast_path = avx2 ? nf4::DequantPath::avx2 : nf4::DequantPath::scalar;
    auto fast_fn = [&] {
      fast_out = at::Tensor();
      fast_out = nf4::dequantize_nf4(w, dt, fast_path);
      return 0.0;
    };
    auto scalar_fn = [&] {
      scalar_out = at::Tensor();
      scalar_out = nf4::dequantize_nf4(w, dt, nf4::DequantPath::scalar);
      return 0.0;
    };
    Timing peer_t = warm_up("peer", 1, peer_fn);
    Timing fast_t = warm_up(avx2 ? "nf4 avx2" : "nf4 scalar", 1, fast_fn);
    Timing scalar_t;
    std::vector<Side> sides = {{"peer", &peer_t, peer_fn}, {avx2 ? "nf4 avx2" : "nf4 scalar", &fast_t, fast_fn}};
    if (avx2) {
      scalar_t = warm_up("nf4 scalar", 1, scalar_fn);
      sides.push_back({"nf4 scalar", &scalar_t, scalar_fn});
    }
    // Same codes, same absmax: the kernels must give the gather's values.
    const double diff = (fast_out.to(at::kFloat) - peer_out.to(at::kFloat)).abs().max().item<double>();
    const double tolerance = (dt == at::kFloat ? 1e-6 : 1e-2) * peer_out.to(at::kFloat).abs().max().item<double>();
    if (diff > tolerance)
      throw WorkloadMismatch(fmt::format("nf4 dequant -> {}: the kernel's values differ from the gather's by up to "
                                         "{:.3e}: not the same computation, so no ratio is reported", dtype, diff),
                             "run the nf4 plugin's unit tests");
    time_rotated(steps, sides);
    const double fast_gbps = out_bytes / fast_t.median_s() / 1e9, peer_gbps = out_bytes / peer_t.median_s() / 1e9;
    Row r;
    r.workload = fmt::format("nf4 dequant {}x{} -> {} (GB/s written)", rows, cols, dtype);
    r.unit = "GB/s";
    r.mftk = fast_gbps;
    r.peer = peer_gbps;
    r.ratio = fast_gbps / peer_gbps;
    r.extra = {{"rows", rows},
               {"cols", cols},
               {"path", avx2 ? "avx2" : "scalar"},
               {"measured_steps", steps},
               {"mftk_ms", 1e3 * fast_t.median_s()},
               {"peer_ms", 1e3 * peer_t.median_s()},
               {"mftk_seconds_each", fast_t.seconds},
               {"peer_seconds_each", peer_t.seconds},
               {"packed_gbps", packed_bytes / fast_t.median_s() / 1e9}};
    std::string note = fmt::format(
        "nf4 {} kernel vs a libtorch gather-and-scale, {} rotating rounds: median {:.1f} ms vs {:.1f} ms; peer/mftk "
        "time of each round {}; {:.2f} GB/s of packed weights read",
        avx2 ? "avx2" : "scalar", steps, 1e3 * fast_t.median_s(), 1e3 * peer_t.median_s(),
        pair_ratio_summary(peer_t, fast_t), packed_bytes / fast_t.median_s() / 1e9);
    if (avx2) {
      r.extra["scalar_ms"] = 1e3 * scalar_t.median_s();
      note += fmt::format("; scalar path {:.1f} ms ({:.2f} GB/s)", 1e3 * scalar_t.median_s(),
                          out_bytes / scalar_t.median_s() / 1e9);
    }
    r.extra["note"] = note;
    out.push_back(r);
  }
  emit(common, out);
}

// One QLoRA step as the seed recipe takes it (LoRA on the seven projections,
// gradient checkpointing, paged_adamw_8bit, bf16 compute) on an NF4 base,
// next to the same step on the bf16 base; each in its own process so each
// peak RSS is its own.
void cmd_qlora(const CommonOptions& common, const TrainArgs& a) {
  auto made = in_child([&] {
    auto ck = ensure_checkpoint(a.preset, "bf16");
    return ck ? nlohmann::json{{"dir", ck->dir}, {"bytes", ck->bytes}} : nlohmann::json{{"skipped", true}};
  });
  if (made.contains("skipped")) return;
  if (made.contains("error")) throw Error(made["error"].get<std::string>());
  const std::string dir = made["dir"];
  const int64_t seq = a.seq > 0 ? a.seq : 512;
  const int64_t batch = a.batch > 0 ? a.batch : 1;

  // bf16 compute where the CPU has native bf16 matmul; fp32 compute over
  // the bf16 / NF4 weights elsewhere (emulated bf16 GEMM is ~25x slower).
  const bool bf16_compute = cpu_has_native_bf16();
  const char* compute = bf16_compute ? "bf16" : "f32";
  auto probe = [&](bool nf4_base) {
    return in_child([&] {
      std::string text = fmt::format(
          "[model]\nplugin = \"mistral\"\npath = \"{}\"\ndtype = \"bf16\"\ncompute_dtype = \"{}\"\n\n"
          "[optimizer]\nplugin = \"paged_adamw_8bit\"\n\n"
          "[adapter]\nplugin = \"lora\"\nr = 16\nalpha = 32\ndropout = 0.0\n"
          "target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
          "\"down_proj\"]\n",
          dir, compute);
      if (nf4_base) text += "\n[quantize]\nplugin = \"nf4\"\ndouble_quant = true\n";
      Engine engine;
      make_engine(engine, text);
      const MemoryStatus m0 = read_memory_status();
      reset_peak_rss();
      const auto t0 = Clock::now();
      auto lm = core::load_model(*engine.recipe, engine.registry, bf16_compute);
      const double load_s = seconds_since(t0);
      const MemoryStatus loaded = read_memory_status();
      Model& model = *lm.model;
      const auto* aref = engine.recipe->component("adapter");
      auto adapter = engine.registry.create<Adapter>(Kind::adapter, aref->plugin, aref->config);
      adapter->inject(model);
      adapter->set_training(true);
      NamedTensors trainable = adapter->trainable_parameters();
      const auto* oref = engine.recipe->component("optimizer");
      auto optimizer = engine.registry.create<Optimizer>(Kind::optimizer, oref->plugin, oref->config);
      optimizer->attach(trainable);
      model.set_gradient_checkpointing(true);
      model.set_training(true);
      const at::Tensor ids = random_ids(batch, seq, model.shape().vocab_size, 5);
      const auto t1 = Clock::now();
      const double loss = mftk_train_step(model, *optimizer, trainable, mftk_batch(ids), 1e-4, 1.0);
      const double step_s = seconds_since(t1);
      const MemoryStatus stepped = read_memory_status();
      int64_t trainable_count = 0;
      for (const auto& [n, t] : trainable) trainable_count += t.numel();
      return nlohmann::json{{"rss_before", m0.rss},
                            {"peak_after_load", loaded.peak_rss},
                            {"anon_after_load", loaded.rss_anon},
                            {"file_after_load", loaded.rss_file},
                            {"peak_after_step", stepped.peak_rss},
                            {"load_seconds", load_s},
                            {"step_seconds", step_s},
                            {"loss", loss},
                            {"trainable_parameters", trainable_count}};
    });
  };
  const nlohmann::json q = probe(true);
  if (q.contains("error")) throw Error("qlora step (nf4 base): " + q["error"].get<std::string>());
  const nlohmann::json b = probe(false);
  if (b.contains("error")) throw Error("qlora step (bf16 base): " + b["error"].get<std::string>());
  const double qpeak = q["peak_after_step"].get<double>(), bpeak = b["peak_after_step"].get<double>();
  Row r;
  r.workload = fmt::format("qlora step {} nf4 vs bf16 base b{}x{} (peak RSS GB)", a.preset, batch, seq);
  r.unit = "GB";
  r.mftk = qpeak / 1e9;
  r.peer = bpeak / 1e9;
  r.ratio = qpeak / bpeak;
  r.extra = {{"preset", a.preset},
             {"checkpoint", dir},
             {"checkpoint_bytes", made["bytes"]},
             {"batch", batch},
             {"seq", seq},
             {"peak_rss_bytes", q["peak_after_step"]},
             {"peer_peak_rss_bytes", b["peak_after_step"]},
             {"nf4_load_peak_rss_bytes", q["peak_after_load"]},
             {"bf16_load_peak_rss_bytes", b["peak_after_load"]},
             {"nf4", q},
             {"bf16", b},
             {"compute_dtype", compute},
             {"target", "QLoRA step under 6 GB and at least 65% below the bf16-base step"}};
  r.extra["note"] = fmt::format(
      "{} compute; nf4 base: load peak {:.2f} GB ({:.0f} s), step peak {:.2f} GB ({:.0f} s, loss {:.4f}); bf16 base: load peak "
      "{:.2f} GB, step peak {:.2f} GB ({:.0f} s, loss {:.4f}); {:.0f}% below the bf16 step",
      compute, q["peak_after_load"].get<double>() / 1e9, q["load_seconds"].get<double>(), qpeak / 1e9,
      q["step_seconds"].get<double>(), q["loss"].get<double>(), b["peak_after_load"].get<double>() / 1e9, bpeak / 1e9,
      b["step_seconds"].get<double>(), b["loss"].get<double>(), 100.0 * (1.0 - qpeak / bpeak));
  emit(common, {r});
}

}  // namespace
}  // namespace mftk::bench

int main(int argc, char** argv) {
  using namespace mftk::bench;
  spdlog::set_level(spdlog::level::warn);
  CLI::App app{"mftk_bench: mftk against a peer measured in the same run", "mftk_bench"};
  app.require_subcommand(1);
  CommonOptions common;
  app.add_option("--threads", common.threads, "libtorch threads (default 2)")->check(CLI::PositiveNumber);
  app.add_option("--json", common.json, "append result rows to this JSON file");

  TrainArgs train_args, forward_args, load_args;
  auto add_shape = [](CLI::App* cmd, TrainArgs& a) {
    cmd->add_option("--preset", a.preset, "tiny | 7b-1layer")->check(CLI::IsMember({"tiny", "7b-1layer"}));
    cmd->add_option("--seq", a.seq, "tokens per row (default 512 tiny, 256 7b-1layer)");
    cmd->add_option("--batch", a.batch, "rows (default 2 tiny, 1 7b-1layer)");
    cmd->add_option("--dtype", a.dtype, "f32 | bf16 (weights and activations)")->check(CLI::IsMember({"f32", "bf16"}));
    cmd->add_option("--warmup", a.warmup, "untimed steps first (default 2)");
    cmd->add_option("--steps", a.steps, "timed steps; the median is reported (default 5)")->check(CLI::PositiveNumber);
  };
  auto* train = app.add_subcommand("train", "training step tokens/s and peak RSS vs the peer");
  add_shape(train, train_args);
  train->add_option("--mode", train_args.mode, "lora (r=8, alpha=16, 7 projections) | full")
      ->check(CLI::IsMember({"lora", "full"}));
  train->add_option("--response-fraction", train_args.response_fraction,
                    "supervised share of each row, the rest a masked prompt (default 1: every token)")
      ->check(CLI::Range(0.01, 1.0));
  train->add_option("--profile", train_args.profile,
                    "after timing, profile one step of each side: top ops printed, all in PREFIX-peer.txt and PREFIX-mftk.txt");
  auto* forward = app.add_subcommand("forward", "forward (no grad) tokens/s and peak RSS vs the peer");
  add_shape(forward, forward_args);
  auto* load = app.add_subcommand("load", "peak RSS and time of loading a bf16 checkpoint vs reading it all");
  load->add_option("--preset", load_args.preset, "tiny | 7b-1layer")->check(CLI::IsMember({"tiny", "7b-1layer"}));
  int load_rounds = 5;
  load->add_option("--rounds", load_rounds, "alternating rounds of both loaders; medians are reported (default 5)")
      ->check(CLI::PositiveNumber);
  int64_t pack_examples = 2000, pack_rows = 20000;
  auto* pack = app.add_subcommand("pack", "swa_packer vs padding efficiency; prepare_data vs plain encoding");
  pack->add_option("--examples", pack_examples, "synthetic examples to pack (default 2000)");
  pack->add_option("--rows", pack_rows, "instruction rows to preprocess (default 20000)");
  auto* gemm = app.add_subcommand("gemm", "fp32 and bf16 2048^3 matmul GFLOP/s");
  TrainArgs qlora_args;
  qlora_args.preset = "7b-1layer";
  auto* qlora = app.add_subcommand("qlora", "peak RSS of loading and of one QLoRA step, NF4 vs bf16 base");
  qlora->add_option("--preset", qlora_args.preset, "7b-1layer | 7b (full depth, ~14.5 GB bf16 on disk)")
      ->check(CLI::IsMember({"7b-1layer", "7b"}));
  qlora->add_option("--seq", qlora_args.seq, "tokens per row (default 512)");
  qlora->add_option("--batch", qlora_args.batch, "rows (default 1)");
  std::string gguf_preset = "7b-1layer", gguf_type = "f16";
  auto* gguf = app.add_subcommand("gguf-export", "time and peak RSS of a GGUF export against the checkpoint's size");
  gguf->add_option("--preset", gguf_preset, "7b-1layer | 7b")->check(CLI::IsMember({"7b-1layer", "7b"}));
  gguf->add_option("--type", gguf_type, "f16 | q8_0 | ... (the exporter's type key)");
  int64_t dq_rows = 4096, dq_cols = 14336;
  auto* nf4_dequant = app.add_subcommand("nf4-dequant", "NF4 dequantisation GB/s vs a libtorch gather-and-scale");
  nf4_dequant->add_option("--rows", dq_rows, "weight rows (default 4096)");
  nf4_dequant->add_option("--cols", dq_cols, "weight columns (default 14336: a 7B MLP weight)");
  int dq_steps = 7;
  nf4_dequant->add_option("--steps", dq_steps, "timed rounds; medians are reported (default 7)")
      ->check(CLI::PositiveNumber);
  std::string report_file;
  auto* report = app.add_subcommand("report", "print the table of a --json results file");
  report->add_option("file", report_file, "results JSON")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    at::set_num_threads(common.threads);
    if (report->parsed()) {
      print_report(report_file);
      return 0;
    }
    if (!load->parsed() && std::getenv("OPENBLAS_CORETYPE"))
      std::fprintf(stderr, "warning: OPENBLAS_CORETYPE=%s is set; fp32 GEMM may run at half speed "
                   "(bench/run unsets it)\n", std::getenv("OPENBLAS_CORETYPE"));
    print_row_header();
    if (train->parsed()) cmd_train(common, train_args);
    else if (forward->parsed()) cmd_forward(common, forward_args);
    else if (load->parsed()) cmd_load(common, load_args, load_rounds);
    else if (pack->parsed()) cmd_pack(common, pack_examples, pack_rows);
    else if (gemm->parsed()) cmd_gemm(common);
    else if (qlora->parsed()) cmd_qlora(common, qlora_args);
    else if (gguf->parsed()) cmd_gguf_export(common, gguf_preset, gguf_type);
    else if (nf4_dequant->parsed()) cmd_nf4_dequant(common, dq_rows, dq_cols, dq_steps);
  } catch (const WorkloadMismatch& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 3;
  } catch (const mftk::UsageError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 2;
  } catch (const mftk::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (!e.hint().empty()) std::fprintf(stderr, "hint: %s\n", e.hint().c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
