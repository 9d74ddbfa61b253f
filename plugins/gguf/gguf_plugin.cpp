// libmftk-gguf: registers the "gguf" exporter (llama.cpp's file format).
#include <memory>

#include "gguf_exporter.h"
#include "mftk/plugin.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_exporter(
      {mftk::Kind::exporter,
       "gguf",
       "writes a Mistral checkpoint as a GGUF v3 file for llama.cpp (llama architecture; f32, f16, bf16, q8_0, q4_k, q6_k, q4_k_m)",
       mftk::gguf::gguf_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Exporter> {
        return std::make_unique<mftk::gguf::GgufExporter>(mftk::gguf::gguf_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("gguf", "0.1.0", register_components)
