#include "run_log.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "fs_util.h"
#include "mftk/error.h"

namespace mftk::core {

MetricsWriter::MetricsWriter(const std::string& path) : path_(path), out_(path, std::ios::app) {
  if (!out_) throw Error(fmt::format("cannot open {} for writing", path));
}

void MetricsWriter::write(const nlohmann::json& record) {
  out_ << record.dump() << '\n';
  out_.flush();
}

MetricPoints read_metrics(const std::string& metrics_jsonl_path) {
  MetricPoints points;
  std::ifstream in(metrics_jsonl_path);
  for (std::string line; std::getline(in, line);) add_metrics_record(points, nlohmann::json::parse(line, nullptr, false));
  return points;
}

void add_metrics_record(MetricPoints& points, const nlohmann::json& j) {
  if (!j.is_object() || !j.contains("step") || !j["step"].is_number()) return;
  const double step = j["step"].get<double>();
  for (const auto& [key, value] : j.items()) {
    if (key == "step") continue;
    // A NaN mean is written as null; both read back as NaN.
    if (value.is_number()) points[key].emplace_back(step, value.get<double>());
    else if (value.is_null()) points[key].emplace_back(step, NAN);
  }
}

ProgressBar::ProgressBar(int64_t total, int64_t start, bool enabled)
    : total_(total), start_(start), enabled_(enabled && ::isatty(STDERR_FILENO)), t0_(std::chrono::steady_clock::now()) {}

std::string ProgressBar::render(int64_t done, int64_t total, double loss, double lr, double tokens_per_s,
                                double eta_seconds, int width, const std::string& extra) {
  const double frac = total > 0 ? std::clamp(double(done) / double(total), 0.0, 1.0) : 1.0;
  const int filled = int(frac * width);
  std::string bar(size_t(filled), '=');
  if (filled < width) bar += '>' + std::string(size_t(width - filled - 1), ' ');
  const int64_t eta = std::isfinite(eta_seconds) ? int64_t(eta_seconds + 0.5) : -1;
  const std::string eta_text =
      eta < 0 ? "--:--"
              : eta >= 3600 ? fmt::format("{}:{:02d}:{:02d}", eta / 3600, (eta / 60) % 60, eta % 60)
                            : fmt::format("{:02d}:{:02d}", eta / 60, eta % 60);
  return fmt::format("[{}] {}/{} {:3.0f}% | loss {:.4f} | lr {:.2e} | {:.0f} tok/s{} | ETA {}", bar, done, total,
                     frac * 100, loss, lr, tokens_per_s, extra.empty() ? "" : " | " + extra, eta_text);
}

void ProgressBar::update(int64_t done, double loss, double lr, double tokens_per_s, const std::string& extra) {
  if (!enabled_) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const int64_t since = done - start_;
  const double eta = since > 0 ? elapsed / double(since) * double(total_ - done) : NAN;
  std::fprintf(stderr, "\r%s\x1b[K", render(done, total_, loss, lr, tokens_per_s, eta, 24, extra).c_str());
  std::fflush(stderr);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (drawn_) std::fprintf(stderr, "\n");
  drawn_ = false;
}

// Text placed in SVG or HTML (titles, series names, recipes) must not break the markup.
std::string xml_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string curves_svg(const std::string& title, const std::vector<CurveSeries>& series) {
  const double W = 720, H = 360, L = 64, R = 64, T = 40, B = 44;
  double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY, r0 = INFINITY, r1 = -INFINITY;
  for (const auto& s : series)
    for (const auto& [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x);
      if (s.right_axis) r0 = std::min(r0, y), r1 = std::max(r1, y);
      else y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  auto widen = [](double& a, double& b) {
    if (!std::isfinite(a)) a = 0, b = 1;
    if (b - a < 1e-12) b = a + 1e-12 + std::abs(a) * 0.1, a = a - std::abs(a) * 0.1;
  };
  // Only charts with a right-axis series get right-axis labels.
  const bool has_right = std::isfinite(r0);
  widen(x0, x1), widen(y0, y1), widen(r0, r1);
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y, bool right) {
    double a = right ? r0 : y0, b = right ? r1 : y1;
    return H - B - (y - a) / (b - a) * (H - T - B);
  };
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" viewBox=\"0 0 {} {}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"22\" font-size=\"15\">{}</text>\n",
      W, H, W, H, L, xml_escape(title));
  svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>\n", L, T,
                     W - L - R, H - T - B);
  for (int i = 0; i <= 4; ++i) {
    const double f = i / 4.0;
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.3g}</text>\n", L - 6, H - B - f * (H - T - B) + 4,
                       y0 + f * (y1 - y0));
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0f}</text>\n", L + f * (W - L - R), H - B + 16,
                       x0 + f * (x1 - x0));
    if (has_right && r1 > r0)
      svg += fmt::format("<text x=\"{}\" y=\"{}\">{:.2e}</text>\n", W - R + 4, H - B - f * (H - T - B) + 4,
                         r0 + f * (r1 - r0));
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n", L + (W - L - R) / 2, H - 8);
  double legend_x = L + 8;
  for (const auto& s : series) {
    std::string pts;
    for (const auto& [x, y] : s.points)
      if (std::isfinite(y)) pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y, s.right_axis));
    if (s.points.size() == 1 && std::isfinite(s.points[0].second)) {
      const auto& [x, y] = s.points[0];
      svg += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", px(x), py(y, s.right_axis),
                         xml_escape(s.color));
    }
    svg += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" points=\"{}\"><title>{}</title></polyline>\n",
                       xml_escape(s.color), pts, xml_escape(s.name));
    svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}{}</text>\n",
                       legend_x, T + 10, xml_escape(s.color), legend_x + 16, T + 15, xml_escape(s.name),
                       s.right_axis ? " (right axis)" : "");
    legend_x += 40 + 8.0 * double(s.name.size()) + (s.right_axis ? 80 : 0);
  }
  svg += "</svg>\n";
  return svg;
}

void write_curves_svg(const std::string& path, const std::string& title, const std::vector<CurveSeries>& series) {
  write_file_atomic(path, curves_svg(title, series));
}

int64_t peak_rss_bytes() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  // The kernel folds its per-CPU RSS counters into the high-water mark
  // lazily, so ru_maxrss can trail the resident set read a moment earlier by
  // a few pages; the peak is never below what is resident now.
  long pages_total = 0, pages_resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages_total, &pages_resident) != 2) pages_resident = 0;
    std::fclose(f);
  }
  return std::max(int64_t(u.ru_maxrss) * 1024, int64_t(pages_resident) * int64_t(sysconf(_SC_PAGESIZE)));
}

}  // namespace mftk::core
