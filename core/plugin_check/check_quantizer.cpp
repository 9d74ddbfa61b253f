// Quantizer checks, on the tiny checkpoint's weights:
//   dequantised close      for every slot it wants: rms(W' - W) / rms(W) < 0.2,
//                          W' = the op's dense_weight (4-bit formats stay near 0.1)
//   forward matches weight op.forward(x) == x W'^T, and x gets a gradient
//   save/load bit-exact    when the same plugin registers an exporter of the same
//                          name (its stored format): load_quantized() of what it
//                          wrote equals quantize() of the original, bit for bit
#include <filesystem>

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "mftk/exporter.h"
#include "mftk/model.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"
#include "plugin_check/check_support.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::core::check {
namespace {

constexpr double kMaxRelativeRms = 0.2;

double relative_rms(const at::Tensor& approx, const at::Tensor& exact) {
  const auto e = exact.to(at::kDouble);
  return (approx.to(at::kDouble) - e).pow(2).mean().sqrt().item<double>() /
         std::max(e.pow(2).mean().sqrt().item<double>(), 1e-12);
}

}  // namespace

void check_quantizer(Registry& registry, const ComponentInfo& component, TinyModelSource& source,
                     const std::string& scratch_dir, Checker& checker) {
  std::unique_ptr<Quantizer> quantizer;
  std::vector<std::string> wanted;
  CheckpointReader* reader_ptr = nullptr;
  std::optional<CheckpointReader> reader;
  checker.run("dequantised close", [&] {
    quantizer = registry.create<Quantizer>(Kind::quantizer, component.spec.name, default_config(registry, component));
    reader.emplace(CheckpointReader::open(source.checkpoint_dir()));
    reader_ptr = &*reader;
    auto model = source.load_default();
    for (LinearSlot* slot : model->linear_slots())
      if (quantizer->wants(slot->name)) wanted.push_back(slot->name);
    if (wanted.empty()) throw CheckFailed("wants() refused every linear slot of the tiny model");
    double worst = 0;
    for (const auto& name : wanted) {
      const auto w = reader->get(name + ".weight").to(at::kFloat);
      const auto op = quantizer->quantize(name, w, at::kFloat);
      if (!op) throw CheckFailed(fmt::format("quantize('{}') returned no op", name));
      const double e = relative_rms(op->dense_weight(at::kFloat), w);
      worst = std::max(worst, e);
      if (!(e < kMaxRelativeRms))
        throw CheckFailed(fmt::format("{}: dequantised weight has relative rms error {:.3g} (bound {})", name, e,
                                      kMaxRelativeRms));
    }
    checker.note(fmt::format("{} slots, worst relative rms error {:.3g}", wanted.size(), worst));
  });
  if (wanted.empty()) {
    checker.report("forward matches weight", CheckOutcome::skip, "no quantised op to test");
    checker.report("save/load bit-exact", CheckOutcome::skip, "no quantised op to test");
    return;
  }
  checker.run("forward matches weight", [&] {
    const auto& name = wanted.front();
    const auto w = reader_ptr->get(name + ".weight").to(at::kFloat);
    const auto op = quantizer->quantize(name, w, at::kFloat);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(29);
    auto x = at::randn({3, w.size(1)}, gen, at::TensorOptions().dtype(at::kFloat)).requires_grad_(true);
    const auto y = op->forward(x);
    const auto expect = at::matmul(x.detach(), op->dense_weight(at::kFloat).t());
    const double d = max_relative_difference(y.detach(), expect, "forward");
    checker.note(fmt::format("max relative difference {:.2g}", d));
    if (d > 1e-4)
      throw CheckFailed(fmt::format("{}: forward(x) differs from x W'^T (W' = dense_weight()) by {:.3g}", name, d));
    y.pow(2).sum().backward();
    if (!x.grad().defined()) throw CheckFailed(fmt::format("{}: forward gives the input no gradient", name));
  });
  checker.run("save/load bit-exact", [&] {
    const ComponentInfo* writer = nullptr;
    for (const auto* c : registry.components(Kind::exporter))
      if (c->spec.name == component.spec.name && c->library_path == component.library_path) writer = c;
    if (!writer)
      throw CheckSkipped("the plugin registers no exporter named '" + component.spec.name +
                         "' to write its stored format");
    auto exporter = registry.create<Exporter>(Kind::exporter, writer->spec.name, default_config(registry, *writer));
    auto model = source.load_default();
    ExportJob job;
    job.model_dir = source.checkpoint_dir();
    job.out = (fs::path(scratch_dir) / "quantized-checkpoint").string();
    job.model = model.get();
    const ExportReport report = exporter->run(job);
    const auto stored = CheckpointReader::open(report.path.empty() ? job.out : report.path);
    int64_t loaded = 0;
    for (const auto& name : wanted) {
      const auto op = quantizer->load_quantized(name, stored, at::kFloat);
      if (!op) continue;  // stored dense
      ++loaded;
      const auto fresh = quantizer->quantize(name, reader_ptr->get(name + ".weight").to(at::kFloat), at::kFloat);
      if (!at::equal(op->dense_weight(at::kFloat), fresh->dense_weight(at::kFloat)))
        throw CheckFailed(fmt::format("{}: the stored slot read back differs from quantising the weight in memory",
                                      name));
    }
    checker.note(fmt::format("{} stored slots read back", loaded));
    if (loaded == 0)
      throw CheckFailed(fmt::format("load_quantized() read no slot of the checkpoint exporter '{}' wrote",
                                    writer->spec.name));
  });
}

}  // namespace mftk::core::check
