// mftk_bench train: one training step (LoRA or full) of mftk against the
// peer's step on the same weights and tokens, timed in rotating rounds;
// --profile adds one profiled step of each side.

#include <cmath>
#include <fstream>
#include <functional>

#include <torch/version.h>
// The legacy profiler API as libtorch 1.13 has it; 2.x moved it (--profile
// then says so instead of failing the build).
#if TORCH_VERSION_MAJOR < 2 && __has_include(<torch/csrc/autograd/profiler_legacy.h>)
#include <torch/csrc/autograd/profiler_legacy.h>
#define MFTK_BENCH_HAS_LEGACY_PROFILER 1
#else
#define MFTK_BENCH_HAS_LEGACY_PROFILER 0
#endif

#include "mftk/adapter.h"
#include "mftk/linear_slot.h"
#include "mftk/quantizer.h"
#include "run_build.h"
#include "run_spec.h"
#include "train_step.h"
#include "workload_support.h"

namespace mftk::bench {
namespace {

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

// The peers, from the model's weights before mftk trains anything: one
// scoring every position (a transformers model given labels = -100) and, on
// response-only rows, one gathering the supervised positions' hidden states
// first (Liger's or Unsloth's loss). In LoRA mode `inject` puts mftk's
// adapter in, and the peers copy its A and B.
struct Peers {
  std::unique_ptr<PeerModel> peer, gather;
};

Peers make_peers(Model& model, const PeerOptions& po, bool response_only, const std::function<void()>& inject) {
  const bool lora = po.lora;
  PeerWeights pw = peer_weights_from(model, /*fp32_copies=*/!lora);
  PeerWeights gw;
  if (response_only) gw = peer_weights_from(model, /*fp32_copies=*/!lora);
  if (lora) {
    inject();
    copy_lora_into(model, pw);
    if (response_only) copy_lora_into(model, gw);
  }
  Peers p;
  p.peer = std::make_unique<PeerModel>(peer_shape(model.shape()), std::move(pw), po);
  if (response_only) {
    PeerOptions go = po;
    go.score_supervised_only = true;
    p.gather = std::make_unique<PeerModel>(peer_shape(model.shape()), std::move(gw), go);
  }
  return p;
}

// Same weights, same tokens: the first step's loss (before any update) and
// the trainable count must agree, or the times compare different work.
void check_same_workload(const std::string& workload, const char* peer_name, const Timing& mftk, int64_t mftk_count,
                         const Timing& peer, int64_t peer_count, double tolerance) {
  const double diff = relative_difference(mftk.first_value, peer.first_value);
  if (diff > tolerance || peer_count != mftk_count)
    throw WorkloadMismatch(
        fmt::format("{}: mftk and the {} did not run the same workload: first loss {:.6f} vs {:.6f} (relative "
                    "difference {:.2e}, tolerance {:.0e}), trainable parameters {} vs {}; no ratio is reported",
                    workload, peer_name, mftk.first_value, peer.first_value, diff, tolerance, mftk_count, peer_count),
        "a change to mftk's or the peer's numerics made them disagree; find which with `mftk_bench train` and the "
        "unit tests before reading any timing");
}

// What one train workload measured, for its result rows.
struct TrainMeasured {
  std::string workload;
  int64_t batch = 0, seq = 0, prompt_tokens = 0;
  bool lora = true;
  ModelShape shape;
  double mftk_pairs = 0;  // attention score pairs per head and row mftk computes
  Timing peer_t, gather_t, mftk_t;
  bool has_gather = false;  // a gathering peer ran (response-only rows)
  int64_t peer_trainable = 0, gather_trainable = 0, mftk_trainable = 0;
  double gemm = 0;  // this machine's GEMM GFLOP/s in the step's dtype
  std::string checkpoint;
};

// The result rows: mftk against the peer scoring every position, and, when
// it ran, against the gathering peer.
std::vector<Row> train_rows(const TrainArgs& a, const TrainMeasured& m) {
  // Matmul FLOPs each side executes: mftk's attention blocks as planned
  // (the skipped ones not counted) and its head on the supervised rows; the
  // peers' full masked T^2 square, the head on every row (peer) or on the
  // supervised rows (gathering peer). "Model" FLOPs are what the step needs:
  // the causal triangle and the supervised rows.
  const FlopShape fshape = flop_shape(m.shape);
  const int64_t batch = m.batch, seq = m.seq;
  const int64_t supervised_rows = seq - std::max<int64_t>(m.prompt_tokens, 1);
  const double dense_pairs = double(seq) * double(seq);
  const double mftk_pairs = m.mftk_pairs;
  const double mftk_flops = step_flops(fshape, batch, seq, m.lora, 8, supervised_rows, mftk_pairs);
  const double peer_flops = step_flops(fshape, batch, seq, m.lora, 8, seq, dense_pairs);
  const double gather_flops = step_flops(fshape, batch, seq, m.lora, 8, supervised_rows, dense_pairs);
  const double model_flops =
      step_flops(fshape, batch, seq, m.lora, 8, supervised_rows, causal_attention_pairs(seq, m.shape.sliding_window));
  const double tokens = double(batch * seq);
  const double mftk_tps = tokens / m.mftk_t.median_s(), peer_tps = tokens / m.peer_t.median_s();

  Row r;
  r.workload = m.workload + (m.has_gather ? " [peer: all rows]" : "");
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
             {"mftk_step_ms", 1e3 * m.mftk_t.median_s()},
             {"peer_step_ms", 1e3 * m.peer_t.median_s()},
             {"gflop_per_step", mftk_flops / 1e9},
             {"peer_gflop_per_step", peer_flops / 1e9},
             {"model_gflop_per_step", model_flops / 1e9},
             {"mftk_attention_pairs_per_row", mftk_pairs},
             {"peer_attention_pairs_per_row", dense_pairs},
             {"supervised_rows_per_row", supervised_rows},
             {"mftk_gflops", mftk_flops / m.mftk_t.median_s() / 1e9},
             {"peer_gflops", peer_flops / m.peer_t.median_s() / 1e9},
             {"gemm_gflops", m.gemm},
             {"gemm_peak_fraction", mftk_flops / m.mftk_t.median_s() / 1e9 / m.gemm},
             {"peer_gemm_peak_fraction", peer_flops / m.peer_t.median_s() / 1e9 / m.gemm},
             {"peak_rss_bytes", m.mftk_t.peak_rss},
             {"peer_peak_rss_bytes", m.peer_t.peak_rss},
             {"mftk_trainable_parameters", m.mftk_trainable},
             {"peer_trainable_parameters", m.peer_trainable},
             {"first_loss_mftk", m.mftk_t.first_value},
             {"first_loss_peer", m.peer_t.first_value},
             {"checkpoint", m.checkpoint}};
  const std::string flops_note = fmt::format(
      "GFLOP/step executed: mftk {:.1f} (attention {:.0f} of {} score pairs per head and row, blockwise), peer {:.1f}; "
      "the step needs {:.1f}",
      mftk_flops / 1e9, mftk_pairs, int64_t(dense_pairs), peer_flops / 1e9, model_flops / 1e9);
  r.extra["note"] = fmt::format("median step {:.0f} ms vs peer {:.0f} ms; {}; first loss {:.5f} vs {:.5f}; peer/mftk "
                                "time of each step pair {}",
                                1e3 * m.mftk_t.median_s(), 1e3 * m.peer_t.median_s(), flops_note, m.mftk_t.first_value,
                                m.peer_t.first_value, pair_ratio_summary(m.peer_t, m.mftk_t));
  std::vector<Row> rows = {r};
  if (m.has_gather) {
    Row g = r;
    const double gather_tps = tokens / m.gather_t.median_s();
    g.workload = m.workload + " [peer: supervised rows]";
    g.peer = gather_tps;
    g.ratio = mftk_tps / gather_tps;
    g.extra["peer_scores"] = "supervised positions only (hidden states gathered before lm_head)";
    g.extra["peer_tokens_per_s"] = gather_tps;
    g.extra["peer_step_ms"] = 1e3 * m.gather_t.median_s();
    g.extra["peer_gflop_per_step"] = gather_flops / 1e9;
    g.extra["peer_gflops"] = gather_flops / m.gather_t.median_s() / 1e9;
    g.extra["peer_gemm_peak_fraction"] = gather_flops / m.gather_t.median_s() / 1e9 / m.gemm;
    g.extra["peer_peak_rss_bytes"] = m.gather_t.peak_rss;
    g.extra["peer_trainable_parameters"] = m.gather_trainable;
    g.extra["first_loss_peer"] = m.gather_t.first_value;
    g.extra["note"] = fmt::format(
        "median step {:.0f} ms vs gathering peer {:.0f} ms (peer scoring every row {:.0f} ms); gathering peer "
        "executes {:.1f} GFLOP/step; first loss {:.5f} vs {:.5f}; peer/mftk time of each step round {}",
        1e3 * m.mftk_t.median_s(), 1e3 * m.gather_t.median_s(), 1e3 * m.peer_t.median_s(), gather_flops / 1e9,
        m.mftk_t.first_value, m.gather_t.first_value, pair_ratio_summary(m.gather_t, m.mftk_t));
    rows.push_back(g);
  }
  return rows;
}

}  // namespace

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
  const core::RunSpec spec = core::make_run_spec(*engine.recipe, engine.registry);
  auto lm = core::load_model(spec, engine.registry);
  Model& model = *lm.model;
  const ModelShape shape = model.shape();
  const at::Tensor ids = random_ids(batch, seq, shape.vocab_size, 7);
  // Instruction data supervises the response only: mftk computes logits for
  // the supervised positions alone (so does the gathering peer below).
  const int64_t prompt_tokens = std::llround((1.0 - a.response_fraction) * double(seq));
  const Batch mb = mftk_batch(ids, prompt_tokens);
  constexpr double kLr = 1e-4, kMaxGradNorm = 1.0;

  // The peers first, from the model's weights before anything is trained.
  const bool response_only = prompt_tokens > 0;
  PeerOptions po;
  po.lora = lora;
  po.compute_dtype = dt;
  po.lr = kLr;
  po.max_grad_norm = kMaxGradNorm;
  // LoRA: mftk's adapter is injected between reading the peers' weights
  // and building them, so both start from the same A and B.
  core::Trainables mftk_side;
  Peers peers = make_peers(model, po, response_only, [&] {
    mftk_side = core::make_trainables(spec, engine.registry, model, /*log=*/false);
  });
  std::unique_ptr<PeerModel>& peer = peers.peer;
  std::unique_ptr<PeerModel>& gather = peers.gather;
  const int64_t peer_trainable = peer->trainable_count();
  const int64_t gather_trainable = gather ? gather->trainable_count() : 0;
  NamedTensors& trainable = mftk_side.tensors;
  Timing peer_t, gather_t;
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
  // Full mode: every weight made trainable only now, after the peers' phase.
  if (!lora) mftk_side = core::make_trainables(spec, engine.registry, model, /*log=*/false);
  auto optimizer = core::attach_optimizer(spec, engine.registry, trainable);
  model.set_training(true);
  // The trainer's own step (core/train/train_step.h) on the one micro-batch.
  core::TrainStep train_step(model, *optimizer, trainable);
  const std::vector<core::MicroBatch> micro = {{mb, std::nullopt}};
  const int64_t units = core::supervised_units(mb);
  auto mftk_step = [&] { return train_step.run(micro, units, kLr, kMaxGradNorm).loss(); };
  // mftk's peak RSS is its phase's peak less what the peers keep alive.
  Timing mftk_t = warm_up("mftk", a.warmup, mftk_step);
  mftk_t.peak_rss -= peers_kept;

  int64_t mftk_trainable = 0;
  for (const auto& [n, t] : trainable) mftk_trainable += t.numel();
  const double tolerance = dt == at::kBFloat16 ? 2e-2 : 1e-4;
  const std::string workload = fmt::format("train {} {} {} b{}x{}", a.preset, a.mode, a.dtype, batch, seq) +
                               (response_only ? fmt::format(" resp{:.0f}%", 100.0 * a.response_fraction) : "");
  check_same_workload(workload, "peer", mftk_t, mftk_trainable, peer_t, peer_trainable, tolerance);
  if (gather) check_same_workload(workload, "gathering peer", mftk_t, mftk_trainable, gather_t, gather_trainable, tolerance);

  if (gather)
    time_rotated(a.steps, {{"peer", &peer_t, peer_step}, {"peer-gather", &gather_t, gather_step},
                           {"mftk", &mftk_t, mftk_step}});
  else
    time_interleaved(a.steps, peer_t, peer_step, mftk_t, mftk_step);
  profile_step(a.profile, "peer", peer_step);
  if (gather) profile_step(a.profile, "peer-gather", gather_step);
  profile_step(a.profile, "mftk", mftk_step);

  TrainMeasured m{workload, batch, seq, prompt_tokens, lora, shape, mftk_attention_pairs(mb, shape.sliding_window),
                  peer_t, gather_t, mftk_t, gather != nullptr, peer_trainable, gather_trainable, mftk_trainable, gemm,
                  ck->dir};
  emit(common, train_rows(a, m));
}

}  // namespace mftk::bench
