// What a person sees of a run: the progress-bar text (written out by hand
// for chosen states), metrics.jsonl lines, the SVG chart (checked to be
// well-formed XML with one polyline per series, points inside the picture
// and the y axis pointing up) and the peak RSS against /proc.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "run_log.h"
#include "train_test_support.h"

using mftk::core::CurveSeries;
using mftk::core::ProgressBar;
using mftk::train_test::ScratchDir;

namespace {

// Minimal XML well-formedness: tags nest and close, attribute quotes pair,
// every '&' starts an entity. Returns "" or what is wrong; collects element names.
std::string xml_problem(const std::string& text, std::vector<std::string>* elements) {
  std::vector<std::string> open;
  int roots = 0;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '&') {
      static const char* entities[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
      bool ok = text.compare(i, 2, "&#") == 0;
      for (const char* e : entities) ok = ok || text.compare(i, std::strlen(e), e) == 0;
      if (!ok) return "bare '&' at " + std::to_string(i);
      ++i;
      continue;
    }
    if (text[i] != '<') {
      if (open.empty() && !std::isspace(static_cast<unsigned char>(text[i])))
        return "text outside the root at " + std::to_string(i);
      ++i;
      continue;
    }
    size_t end = i + 1;
    bool in_quote = false;
    while (end < text.size() && (in_quote || text[end] != '>')) {
      if (text[end] == '"') in_quote = !in_quote;
      if (text[end] == '<' && !in_quote) return "'<' inside a tag at " + std::to_string(end);
      ++end;
    }
    if (end >= text.size()) return "unterminated tag at " + std::to_string(i);
    std::string tag = text.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) return "empty tag";
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      if (open.empty() || open.back() != name) return "</" + name + "> does not close <" + (open.empty() ? "" : open.back()) + ">";
      open.pop_back();
      continue;
    }
    const bool self_closing = tag.back() == '/';
    const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
    if (elements) elements->push_back(name);
    if (open.empty() && ++roots > 1) return "more than one root element";
    if (!self_closing) open.push_back(name);
  }
  if (!open.empty()) return "<" + open.back() + "> is never closed";
  return roots == 1 ? "" : "no root element";
}

// The "x,y x,y" points of every polyline, in document order.
std::vector<std::vector<std::pair<double, double>>> polylines(const std::string& svg) {
  std::vector<std::vector<std::pair<double, double>>> out;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) {
    const size_t p = svg.find("points=\"", at) + 8;
    std::istringstream in(svg.substr(p, svg.find('"', p) - p));
    std::vector<std::pair<double, double>> pts;
    std::string pair;
    while (in >> pair) {
      const size_t comma = pair.find(',');
      pts.emplace_back(std::stod(pair.substr(0, comma)), std::stod(pair.substr(comma + 1)));
    }
    out.push_back(pts);
  }
  return out;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

}  // namespace

TEST(RunLog, ProgressBarTextForAGivenState) {
  // 120 of 300 on a 20-wide bar: 8 '=' then the head, 11 blanks; 133 s is 2 min 13 s.
  EXPECT_EQ(ProgressBar::render(120, 300, 1.2345, 1.2e-4, 1234.4, 133.0, 20),
            "[========>           ] 120/300  40% | loss 1.2345 | lr 1.20e-04 | 1234 tok/s | ETA 02:13");
  EXPECT_EQ(ProgressBar::render(0, 10, 5.0, 0.0, 0.0, NAN, 10),
            "[>         ] 0/10   0% | loss 5.0000 | lr 0.00e+00 | 0 tok/s | ETA --:--");
  EXPECT_EQ(ProgressBar::render(10, 10, 0.5, 2e-4, 99.6, 0.0, 10),
            "[==========] 10/10 100% | loss 0.5000 | lr 2.00e-04 | 100 tok/s | ETA 00:00");
  // An objective's headline metric goes before the ETA.
  EXPECT_EQ(ProgressBar::render(10, 10, 0.5, 2e-4, 99.6, 0.0, 10, "reward acc 0.875"),
            "[==========] 10/10 100% | loss 0.5000 | lr 2.00e-04 | 100 tok/s | reward acc 0.875 | ETA 00:00");
}

TEST(RunLog, ProgressBarEtaFormatting) {
  auto eta = [](double seconds) {
    const std::string s = ProgressBar::render(1, 2, 0, 0, 0, seconds, 4);
    return s.substr(s.rfind("ETA ") + 4);
  };
  EXPECT_EQ(eta(0.4), "00:00");
  EXPECT_EQ(eta(59.6), "01:00");        // rounds to the nearest second
  EXPECT_EQ(eta(3599.0), "59:59");
  EXPECT_EQ(eta(3600.0), "1:00:00");     // hours appear from one hour on
  EXPECT_EQ(eta(3725.4), "1:02:05");
  EXPECT_EQ(eta(36000.0 * 3 + 61), "30:01:01");
  EXPECT_EQ(eta(INFINITY), "--:--");
}

TEST(RunLog, MetricsWriterAppendsOneJsonObjectPerLine) {
  ScratchDir dir("runlog");
  const std::string path = dir.sub("metrics.jsonl");
  {
    mftk::core::MetricsWriter w(path);
    w.write({{"step", 1}, {"loss", 2.5}});
    w.write({{"step", 2}, {"loss", 2.25}});
    // Flushed per line: readable while the writer is still open.
    EXPECT_EQ(lines_of(path).size(), 2u);
  }
  mftk::core::MetricsWriter resumed(path);  // a resumed run appends
  resumed.write({{"step", 3}, {"eval_loss", 2.0}});
  const auto lines = lines_of(path);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(nlohmann::json::parse(lines[0]).at("step"), 1);
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(lines[1]).at("loss").get<double>(), 2.25);
  EXPECT_DOUBLE_EQ(nlohmann::json::parse(lines[2]).at("eval_loss").get<double>(), 2.0);
}

TEST(RunLog, MetricsWriterNamesAnUnwritablePath) {
  try {
    mftk::core::MetricsWriter w("/nonexistent-dir-mftk/metrics.jsonl");
    FAIL() << "expected an error";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir-mftk/metrics.jsonl"), std::string::npos) << e.what();
  }
}

TEST(RunLog, SvgIsWellFormedWithOnePolylinePerSeries) {
  std::vector<CurveSeries> series = {{"train loss", "#1f77b4", {{1, 3.0}, {2, 2.0}, {3, NAN}, {4, 1.0}}, false},
                                     {"eval loss", "#d62728", {{4, 1.5}}, false},
                                     {"learning rate", "#2ca02c", {{1, 1e-4}, {2, 2e-4}, {3, 2e-4}, {4, 1e-4}}, true}};
  const std::string svg = mftk::core::curves_svg("loss & lr <run 1>", series);
  std::vector<std::string> elements;
  EXPECT_EQ(xml_problem(svg, &elements), "") << svg;
  ASSERT_FALSE(elements.empty());
  EXPECT_EQ(elements.front(), "svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("loss &amp; lr &lt;run 1&gt;"), std::string::npos);

  const auto lines = polylines(svg);
  ASSERT_EQ(lines.size(), series.size());
  EXPECT_EQ(lines[0].size(), 3u);  // the NaN point is left out
  EXPECT_EQ(lines[1].size(), 1u);
  EXPECT_EQ(lines[2].size(), 4u);
  // Every point inside the 720 x 360 picture the root declares.
  EXPECT_NE(svg.find("viewBox=\"0 0 720 360\""), std::string::npos);
  for (const auto& line : lines)
    for (const auto& [x, y] : line) {
      EXPECT_GE(x, 0);
      EXPECT_LE(x, 720);
      EXPECT_GE(y, 0);
      EXPECT_LE(y, 360);
    }
  // Later steps further right; a falling loss goes down the picture (SVG y grows downwards).
  EXPECT_LT(lines[0][0].first, lines[0][1].first);
  EXPECT_LT(lines[0][0].second, lines[0][1].second);
  EXPECT_LT(lines[0][1].second, lines[0][2].second);
  // The learning rate has its own axis: its peak reaches as high as the loss's.
  EXPECT_NEAR(lines[2][1].second, lines[0][0].second, 1e-6);
}

TEST(RunLog, SvgOfEmptyAndFlatSeriesIsStillWellFormed) {
  const std::string empty = mftk::core::curves_svg("nothing yet", {{"train loss", "#000", {}, false}});
  EXPECT_EQ(xml_problem(empty, nullptr), "") << empty;
  const std::string flat = mftk::core::curves_svg("flat", {{"loss", "#000", {{1, 2.0}, {2, 2.0}}, false}});
  EXPECT_EQ(xml_problem(flat, nullptr), "") << flat;
  EXPECT_EQ(flat.find("nan"), std::string::npos) << flat;
  EXPECT_EQ(flat.find("inf"), std::string::npos) << flat;

  ScratchDir dir("runlog");
  mftk::core::write_curves_svg(dir.sub("c.svg"), "t", {{"loss", "#000", {{1, 2.0}, {2, 1.0}}, false}});
  std::ifstream in(dir.sub("c.svg"));
  std::stringstream s;
  s << in.rdbuf();
  EXPECT_GT(s.str().size(), 200u);
  EXPECT_EQ(xml_problem(s.str(), nullptr), "");
}

TEST(RunLog, PeakRssCoversWhatIsResidentNow) {
  // Touch 32 MiB so the resident set surely contains it.
  std::vector<char> block(32u << 20);
  for (size_t i = 0; i < block.size(); i += 4096) block[i] = char(i);
  long pages_total = 0, pages_resident = 0;
  std::ifstream("/proc/self/statm") >> pages_total >> pages_resident;
  const int64_t resident = int64_t(pages_resident) * sysconf(_SC_PAGESIZE);
  ASSERT_GT(resident, int64_t(32) << 20);
  EXPECT_GE(mftk::core::peak_rss_bytes(), resident);
  EXPECT_GT(block[4096], -128);  // keep the block alive
}
