// The run report: one self-contained HTML file in output_dir after `mftk run`
// (no scripts, fonts or links to fetch): the loss, eval loss, learning rate
// and tokens/s curves as inline SVG (run_log.h's plotter), the plan's
// predictions beside what the run measured, the validation answers and the
// recipe.
//
// defines: mftk::core::ReportAnswer, mftk::core::ReportInputs, mftk::core::report_curves,
//          mftk::core::report_html, mftk::core::write_report
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "run_log.h"

namespace mftk::core {

struct Plan;

struct ReportAnswer {
  std::string prompt;
  std::string answer;
};

struct ReportInputs {
  std::string title;          // "mftk run: <recipe>"
  std::string recipe_path;
  std::string recipe_text;    // the file as written
  const Plan* plan = nullptr; // predictions; null: the table shows only what was measured
  nlohmann::json summary;     // summary.json's object
  std::vector<ReportAnswer> answers;
};

// The four report curves from metrics.jsonl lines: train loss, eval loss,
// learning rate, tokens/s (in that order); lines that are not JSON are skipped.
std::vector<CurveSeries> report_curves(const std::string& metrics_jsonl_path);
// The same four curves from series already in memory (TrainResult::metrics).
std::vector<CurveSeries> report_curves(MetricPoints metrics);

std::string report_html(const ReportInputs& inputs, const std::vector<CurveSeries>& curves);
// Writes <output_dir>/report.html (atomically) and returns its path.
std::string write_report(const std::string& output_dir, const ReportInputs& inputs);
// The same, its curves drawn from `metrics` instead of metrics.jsonl.
std::string write_report(const std::string& output_dir, const ReportInputs& inputs, const MetricPoints& metrics);

}  // namespace mftk::core
