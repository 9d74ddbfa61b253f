// mftk_bench gguf-export: time and peak RSS of a GGUF export against the
// checkpoint's size (the exporter streams, so the peak should stay far below it).

#include <filesystem>

#include "mftk/exporter.h"
#include "workload_support.h"

namespace mftk::bench {

namespace fs = std::filesystem;

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

}  // namespace mftk::bench
