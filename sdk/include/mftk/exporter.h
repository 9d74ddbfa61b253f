// Exporter plugins: write a (merged) model in another tool's format.
//
// defines: mftk::ExportJob, mftk::ExportReport, mftk::Exporter
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mftk {

class Model;

struct ExportJob {
  std::string model_dir;  // a plain HF checkpoint folder (adapters merged)
  std::string out;        // file or folder to write
  Model* model = nullptr; // the same model, loaded, when the exporter needs to run it
  std::vector<std::vector<int32_t>> calibration_rows;  // token ids, when asked for
};

struct ExportReport {
  std::string path;
  int64_t bytes = 0;
  std::string summary;  // one line for the log
};

class Exporter {
 public:
  virtual ~Exporter() = default;
  virtual ExportReport run(const ExportJob& job) = 0;
};

}  // namespace mftk
