// The HTML run report: its structure from known inputs, and the file a real
// `mftk run` writes rendered by headless Chromium (screenshot not blank, the
// four curves present in the DOM with their titles and points).
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "html_test_support.h"
#include "plan.h"
#include "plan_test_support.h"
#include "report.h"

namespace {

using namespace mftk::plan_test;

const char* kCurveIds[] = {"curve-loss", "curve-eval-loss", "curve-lr", "curve-tokens"};
const char* kCurveTitles[] = {"Training loss", "Eval loss", "Learning rate", "Tokens per second"};

// The first polyline's points in a chart section (0 when it has none).
size_t polyline_points(const std::string& text) {
  const auto counts = mftk::html_test::polyline_points(text);
  return counts.empty() ? 0 : counts.front();
}

std::string section(const std::string& html, const std::string& id) { return mftk::html_test::element_text(html, id); }

TEST(ReportHtml, HoldsCurvesPlanAnswersAndEscapedRecipe) {
  const fs::path dir = scratch() / "report-unit";
  fs::create_directories(dir);
  write_text(dir / "metrics.jsonl",
             "{\"step\":1,\"loss\":2.5,\"lr\":1e-4,\"tokens_per_s\":100}\n"
             "not json\n"
             "{\"step\":2,\"loss\":null,\"lr\":2e-4,\"tokens_per_s\":110}\n"
             "{\"step\":2,\"eval_loss\":2.1}\n"
             "{\"step\":3,\"loss\":2.0,\"lr\":1e-4,\"tokens_per_s\":120}\n");
  const auto curves = mftk::core::report_curves((dir / "metrics.jsonl").string());
  ASSERT_EQ(curves.size(), 4u);
  EXPECT_EQ(curves[0].points.size(), 3u);  // the null loss stays as a gap
  EXPECT_TRUE(std::isnan(curves[0].points[1].second));
  EXPECT_EQ(curves[1].points.size(), 1u);
  EXPECT_EQ(curves[3].points.size(), 3u);

  mftk::core::Plan plan;
  plan.memory.total = 2'000'000'000;
  plan.memory.parts = {{"base weights", 1'500'000'000, "bf16"}, {"activations", 500'000'000, "gc"}};
  plan.steps.total_steps = 3;
  mftk::core::ReportInputs in;
  in.title = "mftk run: r.toml";
  in.recipe_path = "r.toml";
  in.recipe_text = "[validate]\nprompts = [\"a < b & c\"]\n";
  in.plan = &plan;
  in.summary = {{"steps", 3}, {"peak_rss_bytes", 2'200'000'000}, {"tokens_per_s", 110.0}, {"seconds", 1.5}};
  in.answers = {{"What is <b>?", "bold"}};
  const auto path = mftk::core::write_report(dir.string(), in);
  const std::string html = read_text(path);
  for (size_t i = 0; i < 4; ++i) {
    const auto s = section(html, kCurveIds[i]);
    ASSERT_FALSE(s.empty()) << kCurveIds[i];
    EXPECT_NE(s.find(kCurveTitles[i]), std::string::npos);
    EXPECT_EQ(polyline_points(s), curves[i].points.size() - (i == 0 ? 1 : 0)) << kCurveIds[i];
  }
  EXPECT_NE(html.find("2.00 GB"), std::string::npos);  // predicted
  EXPECT_NE(html.find("2.20 GB"), std::string::npos);  // measured
  EXPECT_NE(html.find("run / plan = 1.10"), std::string::npos);
  EXPECT_NE(html.find("What is &lt;b&gt;?"), std::string::npos);
  EXPECT_NE(html.find("a &lt; b &amp; c"), std::string::npos);
  EXPECT_EQ(html.find("<script"), std::string::npos);  // self-contained: nothing to run or fetch
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));
}

using mftk::html_test::chromium;
using mftk::html_test::kChromium;

TEST(ReportBrowser, RunReportRendersWithAllFourCurves) {
  if (!fs::exists(kChromium)) GTEST_SKIP() << "chromium is not installed (" << kChromium << "); apt-get install chromium";
  const fs::path dir = scratch() / "report-run";
  fs::create_directories(dir);
  write_long_completions(dir / "long.jsonl", 40, 20, 60);
  write_text(dir / "recipe.toml", "[model]\nplugin = \"mistral\"\npath = \"" + tiny_checkpoint() + "\"\n" + R"(
[adapter]
plugin = "lora"
r = 8
alpha = 16
[[datasets]]
path = "long.jsonl"
type = "completion"
[data]
dataset_prepared_path = "prepared"
val_set_size = 0.1
[schedule]
learning_rate = 1e-4
warmup_steps = 1
[training]
sequence_len = 128
micro_batch_size = 2
max_steps = 3
logging_steps = 1
eval_steps = 1
output_dir = "out"
[validate]
prompts = ["Say something"]
max_new_tokens = 4
)");
  const auto run = run_in(dir, mftk_binary() + " run recipe.toml");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const fs::path report = dir / "out" / "report.html";
  ASSERT_TRUE(fs::exists(report)) << run.output;

  // The DOM as the browser built it.
  const auto dom = run_in(dir, chromium("--dump-dom 'file://" + report.string() + "' 2>/dev/null"));
  ASSERT_EQ(dom.exit_code, 0) << dom.output;
  EXPECT_NE(dom.output.find("<h1 id=\"title\">mftk run: recipe.toml</h1>"), std::string::npos) << dom.output;
  for (size_t i = 0; i < 4; ++i) {
    const auto s = section(dom.output, kCurveIds[i]);
    ASSERT_FALSE(s.empty()) << kCurveIds[i] << " missing from the DOM";
    EXPECT_NE(s.find(std::string("<h3>") + kCurveTitles[i] + "</h3>"), std::string::npos) << kCurveIds[i];
    EXPECT_GE(polyline_points(s), 1u) << kCurveIds[i] << " has no points";
  }
  for (const char* heading : {"Predicted and measured", "Validation answers", "Recipe"})
    EXPECT_NE(dom.output.find(heading), std::string::npos) << heading;

  const auto shot = mftk::html_test::screenshot_against_blank(dir, report, "report");
  ASSERT_EQ(shot.page.exit_code, 0) << shot.page.output;
  ASSERT_EQ(shot.blank.exit_code, 0) << shot.blank.output;
  EXPECT_TRUE(shot.is_png) << shot.page.output;
  EXPECT_GT(shot.page_bytes, 5 * shot.blank_bytes) << "report " << shot.page_bytes << " bytes, blank page "
                                                   << shot.blank_bytes;
}

}  // namespace
