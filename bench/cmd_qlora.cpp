// mftk_bench nf4-dequant and qlora: NF4 dequantisation throughput against a
// libtorch gather-and-scale, and the peak memory of one QLoRA step on an NF4
// base against the same step on the bf16 base.

#include "mftk/adapter.h"
#include "mftk/linear_slot.h"
#include "mftk/quantizer.h"
#include "nf4_bench.h"
#include "nf4_kernels.h"
#include "nf4_tensor.h"
#include "run_build.h"
#include "run_spec.h"
#include "train_step.h"
#include "workload_support.h"

namespace mftk::bench {

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
          "[training]\nbf16 = {}\n\n"
          "[optimizer]\nplugin = \"paged_adamw_8bit\"\n\n"
          "[adapter]\nplugin = \"lora\"\nr = 16\nalpha = 32\ndropout = 0.0\n"
          "target_modules = [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
          "\"down_proj\"]\n",
          dir, compute, bf16_compute);
      if (nf4_base) text += "\n[quantize]\nplugin = \"nf4\"\ndouble_quant = true\n";
      Engine engine;
      make_engine(engine, text);
      const MemoryStatus m0 = read_memory_status();
      reset_peak_rss();
      const auto t0 = Clock::now();
      const core::RunSpec spec = core::make_run_spec(*engine.recipe, engine.registry);
      auto lm = core::load_model(spec, engine.registry);
      const double load_s = seconds_since(t0);
      const MemoryStatus loaded = read_memory_status();
      Model& model = *lm.model;
      core::Trainables t = core::make_trainables(spec, engine.registry, model, /*log=*/false);
      NamedTensors& trainable = t.tensors;
      auto optimizer = core::attach_optimizer(spec, engine.registry, trainable);
      model.set_gradient_checkpointing(true);
      model.set_training(true);
      const at::Tensor ids = random_ids(batch, seq, model.shape().vocab_size, 5);
      const auto t1 = Clock::now();
      const Batch batch = mftk_batch(ids);
      core::TrainStep train_step(model, *optimizer, trainable);
      const double loss = train_step.run({{batch, std::nullopt}}, core::supervised_units(batch), 1e-4, 1.0).loss();
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


}  // namespace mftk::bench
