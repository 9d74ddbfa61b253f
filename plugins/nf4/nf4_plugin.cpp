// libmftk-nf4: registers the "nf4" quantizer (QLoRA's 4-bit base weights)
// and the "nf4" exporter (a checkpoint folder as a bitsandbytes 4-bit one).
#include <memory>

#include "mftk/plugin.h"
#include "nf4_checkpoint.h"
#include "nf4_quantizer.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_quantizer(
      {mftk::Kind::quantizer,
       "nf4",
       "bitsandbytes NF4 4-bit weights (QLoRA), dequantised on the fly; optional double quantisation",
       mftk::nf4::nf4_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Quantizer> {
        return std::make_unique<mftk::nf4::Nf4Quantizer>(mftk::nf4::nf4_options_from_config(config));
      });
  registrar.add_exporter(
      {mftk::Kind::exporter,
       "nf4",
       "writes a checkpoint folder as a transformers + bitsandbytes 4-bit (NF4) checkpoint",
       mftk::nf4::nf4_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Exporter> {
        return std::make_unique<mftk::nf4::Nf4Exporter>(mftk::nf4::nf4_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("nf4", "0.1.0", register_components)
