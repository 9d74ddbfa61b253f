// libmftk-gguf: registers the "gguf" exporter (llama.cpp's file format) and
// "gguf_lora" (a LoRA adapter as llama.cpp's adapter file).
#include <memory>

#include "gguf_exporter.h"
#include "gguf_lora_exporter.h"
#include "mftk/plugin.h"

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_exporter(
      {mftk::Kind::exporter,
       "gguf",
       "writes a Mistral checkpoint as a GGUF v3 file for llama.cpp (llama architecture; f32, f16, bf16, q8_0, q4_k, q6_k, q4_k_m), with an Ollama Modelfile beside it",
       mftk::gguf::gguf_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Exporter> {
        return std::make_unique<mftk::gguf::GgufExporter>(mftk::gguf::gguf_options_from_config(config));
      });
  registrar.add_exporter(
      {mftk::Kind::exporter,
       "gguf_lora",
       "writes a LoRA adapter, unmerged, as llama.cpp's LoRA adapter GGUF (llama-cli -m base.gguf --lora adapter.gguf), with an Ollama Modelfile (FROM + ADAPTER) beside it",
       mftk::gguf::gguf_lora_keys()},
      [](const mftk::Config& config) -> std::unique_ptr<mftk::Exporter> {
        return std::make_unique<mftk::gguf::GgufLoraExporter>(mftk::gguf::gguf_lora_options_from_config(config));
      });
}

}  // namespace

MFTK_PLUGIN("gguf", "0.1.0", register_components)
