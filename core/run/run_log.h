// What a person sees of a run: a progress bar, metrics.jsonl, and the
// loss / learning-rate picture at the end.
//
// defines: mftk::core::MetricsWriter, mftk::core::MetricPoints, mftk::core::read_metrics,
//          mftk::core::add_metrics_record, mftk::core::ProgressBar, mftk::core::CurveSeries, mftk::core::write_curves_svg, mftk::core::xml_escape,
//          mftk::core::peak_rss_bytes
#pragma once

#include <chrono>
#include <cstdint>
#include <fstream>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mftk::core {

// Appends one JSON object per line to output_dir/metrics.jsonl (flushed per
// line, so a crash keeps everything logged so far).
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& path);
  void write(const nlohmann::json& record);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

// metrics.jsonl read back: each key's (step, value) points in file order.
// Lines that are not JSON or have no "step" are skipped, and so are values
// that are neither numbers nor null; a null (a logging window of skipped
// non-finite steps) is kept as NaN, which the plotter draws as a gap. A
// missing file reads as no metrics.
using MetricPoints = std::map<std::string, std::vector<std::pair<double, double>>>;
MetricPoints read_metrics(const std::string& metrics_jsonl_path);
// One record's points, by read_metrics' rules (the trainer collects its
// series with it, so they equal metrics.jsonl read back).
void add_metrics_record(MetricPoints& points, const nlohmann::json& record);

// One line redrawn in place on a terminal:
//   [=========>          ] 120/300  40% | loss 1.234 | lr 1.2e-04 | 1234 tok/s | ETA 02:13
// `extra`, when given, goes before the ETA (a preference run's reward accuracy).
class ProgressBar {
 public:
  ProgressBar(int64_t total, int64_t start, bool enabled);
  void update(int64_t done, double loss, double lr, double tokens_per_s, const std::string& extra = "");
  void finish();
  // Text of the bar for the given state (tests read it).
  static std::string render(int64_t done, int64_t total, double loss, double lr, double tokens_per_s,
                            double eta_seconds, int width = 24, const std::string& extra = "");

 private:
  int64_t total_, start_;
  bool enabled_;
  std::chrono::steady_clock::time_point t0_;
  bool drawn_ = false;
};

struct CurveSeries {
  std::string name;
  std::string color;
  std::vector<std::pair<double, double>> points;  // (step, value)
  bool right_axis = false;                         // e.g. the learning rate
};

// A self-contained SVG line chart (no external fonts or scripts).
void write_curves_svg(const std::string& path, const std::string& title, const std::vector<CurveSeries>& series);
std::string curves_svg(const std::string& title, const std::vector<CurveSeries>& series);
// &, <, > and " as entities: for text placed in SVG or HTML.
std::string xml_escape(const std::string& text);

// Peak resident set size of this process (getrusage).
int64_t peak_rss_bytes();

}  // namespace mftk::core
