// libmftk-awq: registers the "awq" exporter (AutoAWQ's 4-bit GEMM checkpoint layout).
#include <memory>

#include "awq_exporter.h"
#include "mftk/plugin.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_exporter(
      {mftk::Kind::exporter,
       "awq",
       "writes a Mistral checkpoint as an AutoAWQ GEMM folder (activation-aware 4-bit, zero point, groups of 128) "
       "for transformers / vLLM",
       mftk::awq::awq_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Exporter> {
        return std::make_unique<mftk::awq::AwqExporter>(mftk::awq::awq_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("awq", "0.1.0", register_components)
