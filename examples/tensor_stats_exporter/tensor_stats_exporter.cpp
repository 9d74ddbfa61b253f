// acme.tensor_stats: an exporter that writes per-tensor statistics of a
// checkpoint (dtype, shape, mean, std, max |x|, non-finite count) as JSON.
// Handy before and after a merge to see what a fine-tune changed, and small
// enough to read as a template for your own plugin.
#include <cstdio>
#include <fstream>
#include <cmath>

#include <ATen/ATen.h>

#include <mftk/exporter.h>
#include <mftk/log.h>
#include <mftk/output_path.h>
#include <mftk/plugin.h>
#include <mftk/safetensors.h>

namespace {

// How every file this exporter writes begins: the proof a later export
// uses that an existing file is its own to replace (mftk/output_path.h).
constexpr const char kFirstLine[] = "{\"_written_by\": \"acme.tensor_stats\"";

bool is_our_stats_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string head(sizeof(kFirstLine) - 1, '\0');
  return in.read(head.data(), std::streamsize(head.size())) && head == kFirstLine;
}

class TensorStatsExporter : public mftk::Exporter {
 public:
  explicit TensorStatsExporter(const mftk::Config& config)
      : pattern_(config.get_string("match")), decimals_(int(config.get_int("decimals"))) {}

  mftk::ExportReport run(const mftk::ExportJob& job) override {
    auto checkpoint = mftk::CheckpointReader::open(job.model_dir);
    // Never write over a file of the user's: the guard refuses one (exit 2)
    // and hands out a private path, put in place by commit().
    mftk::OutputGuard guard(job.out, "acme.tensor_stats", mftk::OutputShape::file, is_our_stats_file);
    std::ofstream out(guard.path());
    if (!out) throw mftk::Error("acme.tensor_stats: cannot write " + guard.path());
    out << kFirstLine;
    int64_t written = 0;
    for (const auto& name : checkpoint.names()) {
      if (!pattern_.empty() && name.find(pattern_) == std::string::npos) continue;
      // One tensor at a time: the checkpoint is memory-mapped, so only this
      // tensor's fp32 copy is ever resident.
      at::Tensor t = checkpoint.get(name).to(at::kFloat);
      const int64_t non_finite = t.numel() - at::isfinite(t).sum().item<int64_t>();
      const double mean = t.numel() ? t.mean().item<double>() : 0.0;
      const double std = t.numel() > 1 ? t.std().item<double>() : 0.0;
      const double absmax = t.numel() ? t.abs().max().item<double>() : 0.0;
      const auto& info = checkpoint.info(name);
      std::string shape;
      for (size_t i = 0; i < info.shape.size(); ++i) shape += (i ? "," : "") + std::to_string(info.shape[i]);
      char line[512];
      std::snprintf(line, sizeof line,
                    ",\n  \"%s\": {\"dtype\": \"%s\", \"shape\": [%s], \"mean\": %.*g, \"std\": %.*g, "
                    "\"absmax\": %.*g, \"non_finite\": %lld}",
                    name.c_str(), info.dtype.c_str(), shape.c_str(), decimals_, mean,
                    decimals_, std, decimals_, absmax, static_cast<long long>(non_finite));
      out << line;
      ++written;
    }
    out << "\n}\n";
    const int64_t bytes = int64_t(out.tellp());
    out.close();
    if (!out) throw mftk::Error("acme.tensor_stats: cannot write " + guard.path(), "is the disk full?");
    guard.commit();
    mftk::log::info("acme.tensor_stats: {} tensors -> {}", written, job.out);
    return {job.out, bytes, std::to_string(written) + " tensors described"};
  }

 private:
  std::string pattern_;
  int decimals_;
};

void register_components(mftk::Registrar& registrar) {
  mftk::ComponentSpec spec;
  spec.kind = mftk::Kind::exporter;
  spec.name = "acme.tensor_stats";  // third parties use a vendor prefix
  spec.summary = "per-tensor statistics of a checkpoint as JSON";
  spec.keys = {
      mftk::KeySpec::string("match", "", "only tensors whose name contains this"),
      mftk::KeySpec::integer("decimals", 6, "significant digits").range(1, 17),
  };
  registrar.add_exporter(spec, [](const mftk::Config& c) { return std::make_unique<TensorStatsExporter>(c); });
}

}  // namespace

MFTK_PLUGIN("acme_tensor_stats", "1.0.0", register_components)
