// The HTML run report (report.h). Plain HTML and inline SVG only, so the
// file opens anywhere, offline, and can be attached to an issue as is.
#include "report.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "chart_html.h"
#include "fs_util.h"
#include "plan.h"
#include "run_log.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

// One predicted-vs-measured row; a missing side prints as a dash.
std::string compare_row(const std::string& what, const std::string& predicted, const std::string& measured,
                        const std::string& note = {}) {
  return fmt::format("<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n", xml_escape(what),
                     predicted.empty() ? "&ndash;" : xml_escape(predicted),
                     measured.empty() ? "&ndash;" : xml_escape(measured), xml_escape(note));
}

double number_or_nan(const nlohmann::json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN;
}

}  // namespace

std::vector<CurveSeries> report_curves(const std::string& metrics_jsonl_path) {
  return report_curves(read_metrics(metrics_jsonl_path));
}

std::vector<CurveSeries> report_curves(MetricPoints metrics) {
  return {{"train loss", "#1f77b4", metrics["loss"], false},
          {"eval loss", "#d62728", metrics["eval_loss"], false},
          {"learning rate", "#2ca02c", metrics["lr"], false},
          {"tokens/s", "#9467bd", metrics["tokens_per_s"], false}};
}

namespace {

// The curves, each its own chart: scales differ by orders of magnitude.
std::string curves_section(const std::vector<CurveSeries>& curves) {
  static const char* ids[] = {"curve-loss", "curve-eval-loss", "curve-lr", "curve-tokens"};
  static const char* titles[] = {"Training loss", "Eval loss", "Learning rate", "Tokens per second"};
  std::string h = "<h2>Curves</h2>\n";
  for (size_t i = 0; i < curves.size() && i < 4; ++i) {
    h += chart_section(ids[i], titles[i], {curves[i]});
  }
  return h;
}

// The plan's predictions (when there is a plan) beside what the run measured
// (summary.json), then a preference objective's eval metrics, then the plan's lint.
std::string plan_comparison_section(const nlohmann::json& s, const Plan* p) {
  std::string h = "<h2 id=\"plan\">Predicted and measured</h2>\n<table>\n<tr><th>quantity</th><th>plan</th><th>run</th><th>note</th></tr>\n";
  const double peak = number_or_nan(s, "peak_rss_bytes");
  std::string peak_note;
  if (p && std::isfinite(peak) && p->memory.total > 0)
    peak_note = fmt::format("run / plan = {:.2f}", peak / double(p->memory.total));
  h += compare_row("peak memory", p ? format_bytes(p->memory.total) : "",
                   std::isfinite(peak) ? format_bytes(int64_t(peak)) : "", peak_note);
  if (p)
    for (const auto& part : p->memory.parts) h += compare_row("  " + part.name, format_bytes(part.bytes), "", part.detail);
  h += compare_row("optimizer steps", p && p->steps.total_steps ? std::to_string(p->steps.total_steps) : "",
                   std::to_string(s.value("steps", int64_t(0))));
  const double tps = number_or_nan(s, "tokens_per_s");
  h += compare_row("tokens/s", p && p->time.measured_steps ? fmt::format("{:.0f}", p->time.tokens_per_s) : "",
                   std::isfinite(tps) ? fmt::format("{:.0f}", tps) : "",
                   p && p->time.measured_steps ? "" : "plan --measure N predicts this");
  const double seconds = number_or_nan(s, "seconds");
  h += compare_row("training time", p && p->time.measured_steps ? fmt::format("{:.1f} s", p->time.total_seconds) : "",
                   std::isfinite(seconds) ? fmt::format("{:.1f} s", seconds) : "");
  if (p && p->data.available)
    h += compare_row("packing efficiency", fmt::format("{:.1f}%", 100 * p->data.packing_efficiency), "",
                     fmt::format("{} truncated, {} dropped at sequence_len {}", p->data.truncated, p->data.dropped,
                                 p->training.sequence_len));
  const double eval = number_or_nan(s, "eval_loss");
  if (std::isfinite(eval)) h += compare_row("eval loss", "", fmt::format("{:.4f}", eval));
  // A preference objective's eval metrics (TRL's names), before the first step and after the last.
  for (const auto& [key, value] : s.items()) {
    const bool preference = key.rfind("eval_rewards/", 0) == 0 || key.rfind("eval_logps/", 0) == 0;
    if (!preference || !value.is_number() || key.find("_before") != std::string::npos) continue;
    const double before = number_or_nan(s, (key + "_before").c_str());
    h += compare_row("eval " + key.substr(5), "",
                     std::isfinite(before) ? fmt::format("{:.4f} → {:.4f}", before, value.get<double>())
                                           : fmt::format("{:.4f}", value.get<double>()),
                     std::isfinite(before) ? "before training → after" : "");
  }
  h += "</table>\n";
  if (p && !p->lint.empty()) {
    h += "<h3>Lint</h3>\n<ul>\n";
    for (const auto& l : p->lint) h += "<li>" + xml_escape(l) + "</li>\n";
    h += "</ul>\n";
  }
  return h;
}

// One artefact's row of the parity table: its figures when it was checked,
// and its verdict against max_kl.
std::string parity_row(const nlohmann::json& c) {
  auto num = [](const nlohmann::json& j, const char* key, const char* format) {
    return j.contains(key) && j[key].is_number() ? fmt::format(fmt::runtime(format), j[key].get<double>())
                                                 : std::string("n/a");
  };
  const bool checked = c.value("checked", false);
  const std::string threshold = num(c, "threshold", "{:.3g}");
  std::string verdict = !checked ? "not checked: " + c.value("note", std::string())
                        : c.value("passed", false) ? (threshold == "n/a" ? "reported" : "passed")
                                                   : "FAILED";
  std::string h = fmt::format("<tr><td>{}</td><td>{}</td>", xml_escape(c.value("kind", std::string())),
                              xml_escape(c.value("path", std::string())));
  if (checked)
    h += fmt::format("<td>{}</td><td>{}</td><td>{} &rarr; {}</td><td>{} / {}</td>", num(c, "mean_kl", "{:.3e}"),
                     c.contains("top1_agreement") && c["top1_agreement"].is_number()
                         ? fmt::format("{:.2f}%", 100 * c["top1_agreement"].get<double>())
                         : std::string("n/a"),
                     num(c, "ppl_trained", "{:.4f}"), num(c, "ppl_artefact", "{:.4f}"), c.value("rows", int64_t(0)),
                     c.value("tokens", int64_t(0)));
  else
    h += "<td>&ndash;</td><td>&ndash;</td><td>&ndash;</td><td>&ndash;</td>";
  h += fmt::format("<td>{}</td><td>{}</td></tr>\n", threshold == "n/a" ? "none" : threshold, xml_escape(verdict));
  return h;
}

// The export parity gate (export_parity.h): each artefact against the trained model.
std::string export_parity_section(const nlohmann::json& parity) {
  std::string h =
      "<h2 id=\"parity\">Export parity</h2>\n<p>Held-out rows through the trained model and through each "
      "artefact read back from disk: mean KL(trained &#8214; artefact) per token over the vocabulary, greedy-token "
      "agreement, and perplexity on the supervised tokens.</p>\n<table>\n<tr><th>artefact</th><th>path</th>"
      "<th>mean KL (nats/token)</th><th>top-1 agreement</th><th>perplexity trained &rarr; artefact</th>"
      "<th>rows / tokens</th><th>max_kl</th><th>verdict</th></tr>\n";
  for (const auto& c : parity) h += parity_row(c);
  h += "</table>\n";
  return h;
}

std::string answers_section(const std::vector<ReportAnswer>& answers) {
  std::string h = "<h2 id=\"answers\">Validation answers</h2>\n";
  if (answers.empty()) h += "<p>(no [validate] prompts in the recipe)</p>\n";
  else {
    h += "<table>\n<tr><th>prompt</th><th>answer</th></tr>\n";
    for (const auto& a : answers)
      h += fmt::format("<tr><td>{}</td><td>{}</td></tr>\n", xml_escape(a.prompt), xml_escape(a.answer));
    h += "</table>\n";
  }
  return h;
}

}  // namespace

std::string report_html(const ReportInputs& in, const std::vector<CurveSeries>& curves) {
  std::string h = html_page_start(in.title);
  h += fmt::format("<h1 id=\"title\">{}</h1>\n", xml_escape(in.title));
  const auto& s = in.summary;
  h += fmt::format("<p>{} steps, final loss {}, {} in {:.1f} s</p>\n", s.value("steps", int64_t(0)),
                   s.contains("final_loss") && s["final_loss"].is_number() ? fmt::format("{:.4f}", s["final_loss"].get<double>()) : "n/a",
                   xml_escape(s.value("output_dir", std::string())), s.value("seconds", 0.0));
  h += curves_section(curves);
  h += plan_comparison_section(s, in.plan);
  if (s.contains("export_parity") && s["export_parity"].is_array()) h += export_parity_section(s["export_parity"]);
  h += answers_section(in.answers);
  h += fmt::format("<h2 id=\"recipe\">Recipe</h2>\n<p>{}</p>\n<pre>{}</pre>\n", xml_escape(in.recipe_path),
                   xml_escape(in.recipe_text));
  h += html_page_end();
  return h;
}

std::string write_report(const std::string& output_dir, const ReportInputs& inputs) {
  return write_report(output_dir, inputs, read_metrics((fs::path(output_dir) / "metrics.jsonl").string()));
}

std::string write_report(const std::string& output_dir, const ReportInputs& inputs, const MetricPoints& metrics) {
  const std::string path = (fs::path(output_dir) / "report.html").string();
  write_file_atomic(path, report_html(inputs, report_curves(metrics)));
  return path;
}

}  // namespace mftk::core
