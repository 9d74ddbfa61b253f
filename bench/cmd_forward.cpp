// mftk_bench forward: the mistral plugin's forward (no grad) against the
// peer's forward on the same weights and tokens.

#include <cmath>

#include "mftk/quantizer.h"
#include "pipeline.h"
#include "workload_support.h"

namespace mftk::bench {

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

}  // namespace mftk::bench
