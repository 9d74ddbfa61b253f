// Exporter plugins: write a (merged) model in another tool's format.
//
// defines: mftk::ExportJob, mftk::ExportReport, mftk::Exporter
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mftk {

class Model;

struct ExportJob {
  std::string model_dir;  // a plain HF checkpoint folder (adapters merged)
  std::string out;        // file or folder to write
  Model* model = nullptr; // the same model, loaded, when the exporter needs to run it
  std::vector<std::vector<int32_t>> calibration_rows;  // token ids, when asked for
  // When the model was trained with an adapter (`mftk export --adapter`, or a
  // run that trained one): the base checkpoint folder and the adapter folder
  // as saved, unmerged (PEFT layout), for exporters that write the adapter on
  // its own (gguf_lora). model_dir is then that base with the adapter merged.
  // Both empty otherwise.
  std::string base_model_dir;
  std::string adapter_dir;
};

struct ExportReport {
  std::string path;
  int64_t bytes = 0;
  std::string summary;  // one line for the log
  // Files written beside `path` that belong to the artefact (the Ollama
  // Modelfile next to a GGUF file), each claimed as `path` is (output_path.h).
  std::vector<std::string> also_written;
};

class Exporter {
 public:
  virtual ~Exporter() = default;
  virtual ExportReport run(const ExportJob& job) = 0;

  // The export parity gate (README "Export parity"): the artefact `report`
  // names, read back from disk and decoded the way a reader of the format
  // decodes it, as a plain Hugging Face checkpoint folder the model plugin
  // loads (config.json, dense *.safetensors, tokenizer files). The core runs
  // held-out rows through it and through the trained model and compares.
  // `scratch_dir` is an empty folder the caller made and removes afterwards;
  // write the folder there (or return report.path when the artefact already
  // is such a folder). nullopt: this exporter cannot read its format back,
  // and the run says "parity: not checked" for it.
  virtual std::optional<std::string> read_back(const ExportJob& job, const ExportReport& report,
                                               const std::string& scratch_dir) {
    (void)job, (void)report, (void)scratch_dir;
    return std::nullopt;
  }
};

}  // namespace mftk
