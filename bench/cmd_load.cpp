// mftk_bench load: peak RSS and time of loading a bf16 checkpoint (mapped)
// against a loader that reads it all, each loader in a fresh child process
// so its RSS is its own.

#include <cmath>
#include <filesystem>

#include "mftk/linear_slot.h"
#include "mftk/quantizer.h"
#include "pipeline.h"
#include "workload_support.h"

namespace mftk::bench {
namespace {

namespace fs = std::filesystem;

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

// Reads every page of every tensor once (a forward pass would).
void touch_all(Model& model) {
  at::NoGradGuard no_grad;
  double sink = 0;
  for (auto* slot : model.linear_slots())
    for (const auto& [n, t] : slot->op->parameters()) sink += t.sum().item<double>();
  for (const auto& [n, t] : model.named_parameters()) sink += t.sum().item<double>();
  if (std::isnan(sink)) std::fprintf(stderr, "(weights contain NaN)\n");
}

}  // namespace

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

}  // namespace mftk::bench
