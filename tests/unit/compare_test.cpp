// `mftk compare`: the recipe differences on hand-written recipes (plugin
// swaps first, nested tables, arrays, keys one recipe lacks), the page and
// the text table from hand-written run folders, the refusals (one run, a
// folder that is not a run, a file of the user's as --out), and the issue's
// case end to end: the quickstart recipe trained twice on a tiny model,
// once with another LoRA rank, compared, and the page rendered by headless
// Chromium.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "html_test_support.h"
#include "plan_test_support.h"
#include "recipe.h"
#include "registry.h"
#include "run_compare.h"
#include "run_folder.h"

namespace {

using json = nlohmann::json;
using mftk::core::RecipeDifference;
using mftk::core::recipe_differences;
using namespace mftk::plan_test;

std::vector<std::string> keys_of(const std::vector<RecipeDifference>& diffs) {
  std::vector<std::string> keys;
  for (const auto& d : diffs) keys.push_back(d.key);
  return keys;
}

const RecipeDifference* find_key(const std::vector<RecipeDifference>& diffs, const std::string& key) {
  for (const auto& d : diffs)
    if (d.key == key) return &d;
  return nullptr;
}

// ---- recipe differences -------------------------------------------------------

TEST(RecipeDifferences, PluginSwapsComeFirstAndEqualKeysAreLeftOut) {
  const json a = {{"adapter", {{"plugin", "lora"}, {"r", 8}, {"alpha", 16.0}}},
                  {"optimizer", {{"plugin", "adamw"}, {"weight_decay", 0.0}}},
                  {"schedule", {{"learning_rate", 2e-4}, {"lr_scheduler", "cosine"}}},
                  {"training", {{"output_dir", "out/a"}, {"seed", 1}}}};
  json b = a;
  b["optimizer"]["plugin"] = "adamw8bit";
  b["adapter"]["plugin"] = "dora";
  b["training"]["seed"] = 2;
  b["training"]["output_dir"] = "out/b";
  const auto diffs = recipe_differences({a, b});
  // Plugin keys first (in key order), then the rest; output_dir differs in any two runs and never counts.
  EXPECT_EQ(keys_of(diffs), (std::vector<std::string>{"adapter.plugin", "optimizer.plugin", "training.seed"}));
  ASSERT_EQ(diffs.size(), 3u);
  EXPECT_TRUE(diffs[0].plugin_swap);
  EXPECT_TRUE(diffs[1].plugin_swap);
  EXPECT_FALSE(diffs[2].plugin_swap);
  EXPECT_EQ(diffs[0].values, (std::vector<std::optional<std::string>>{"\"lora\"", "\"dora\""}));
  EXPECT_EQ(diffs[2].values, (std::vector<std::optional<std::string>>{"1", "2"}));
  // The same recipes with output_dir counted: it is then one more difference.
  EXPECT_EQ(recipe_differences({a, b}, {}).size(), 4u);
  EXPECT_TRUE(recipe_differences({a, a}).empty());
}

TEST(RecipeDifferences, NestedTablesArraysAndMissingKeys) {
  const json a = {{"model", {{"plugin", "mistral"}, {"rope", {{"scaling", {{"factor", 2.0}, {"type", "linear"}}}}}}},
                  {"adapter", {{"plugin", "lora"}, {"target_modules", {"q_proj", "v_proj"}}}},
                  {"datasets", {{{"path", "a.jsonl"}, {"type", "chat"}}, {{"path", "eval.jsonl"}, {"split", "eval"}}}},
                  {"export", {{{"plugin", "gguf"}, {"type", "q8_0"}}}}};
  json b = a;
  b["model"]["rope"]["scaling"]["factor"] = 4.0;                           // nested two tables deep
  b["adapter"]["target_modules"] = {"q_proj", "v_proj", "o_proj"};          // an array is one value
  b["datasets"] = {{{"path", "a.jsonl"}, {"type", "chat"}}};                // the second dataset removed
  b["export"][0]["plugin"] = "awq";                                          // a swap inside an array of tables
  b["export"][0].erase("type");
  b["export"][0]["group_size"] = 32;
  const auto diffs = recipe_differences({a, b});
  EXPECT_EQ(keys_of(diffs), (std::vector<std::string>{"export[0].plugin", "adapter.target_modules",
                                                      "datasets[1].path", "datasets[1].split", "export[0].group_size",
                                                      "export[0].type", "model.rope.scaling.factor"}));
  const auto* modules = find_key(diffs, "adapter.target_modules");
  ASSERT_NE(modules, nullptr);
  EXPECT_EQ(modules->values[0], std::optional<std::string>("[\"q_proj\", \"v_proj\"]"));
  EXPECT_EQ(modules->values[1], std::optional<std::string>("[\"q_proj\", \"v_proj\", \"o_proj\"]"));
  const auto* split = find_key(diffs, "datasets[1].split");
  ASSERT_NE(split, nullptr);
  EXPECT_EQ(split->values[0], std::optional<std::string>("\"eval\""));
  EXPECT_FALSE(split->values[1].has_value());  // the run has no such key
  const auto* group = find_key(diffs, "export[0].group_size");
  ASSERT_NE(group, nullptr);
  EXPECT_FALSE(group->values[0].has_value());
  EXPECT_EQ(group->values[1], std::optional<std::string>("32"));
  const auto* factor = find_key(diffs, "model.rope.scaling.factor");
  ASSERT_NE(factor, nullptr);
  EXPECT_EQ(factor->values, (std::vector<std::optional<std::string>>{"2.0", "4.0"}));
  EXPECT_EQ(find_key(diffs, "model.rope.scaling.type"), nullptr);
  EXPECT_EQ(find_key(diffs, "datasets[0].path"), nullptr);
}

TEST(RecipeDifferences, AKeyDiffersWhenAnyOfThreeRunsDiffers) {
  const json a = {{"adapter", {{"plugin", "lora"}, {"r", 8}}}, {"training", {{"seed", 1}}}};
  json c = a;
  c["adapter"]["r"] = 32;
  json no_adapter = {{"training", {{"seed", 1}}}};  // full fine-tuning: no [adapter] table at all
  auto diffs = recipe_differences({a, a, c});
  ASSERT_EQ(keys_of(diffs), std::vector<std::string>{"adapter.r"});
  EXPECT_EQ(diffs[0].values, (std::vector<std::optional<std::string>>{"8", "8", "32"}));
  diffs = recipe_differences({a, no_adapter});
  ASSERT_EQ(keys_of(diffs), (std::vector<std::string>{"adapter.plugin", "adapter.r"}));
  EXPECT_TRUE(diffs[0].plugin_swap);
  EXPECT_FALSE(diffs[0].values[1].has_value());
}

// The record a run writes holds every key, the core's and the plugins' defaults
// included, and the --set overrides.
TEST(ResolvedRecipe, HoldsDefaultsOverridesAndComponents) {
  auto recipe = mftk::core::Recipe::parse(
      "[model]\nplugin = \"mistral\"\npath = \"m\"\n[adapter]\nplugin = \"lora\"\n"
      "[[datasets]]\npath = \"d.jsonl\"\n[training]\noutput_dir = \"o\"\n",
      "r.toml", {"training.seed=7"});
  mftk::core::Registry registry;
  recipe.resolve(registry);
  const json record = mftk::core::resolved_recipe_json(recipe);
  EXPECT_EQ(record.value("source", ""), "r.toml");
  const json& r = record["recipe"];
  for (const auto& [table, keys] : mftk::core::core_tables()) {
    if (table == "datasets") continue;
    ASSERT_TRUE(r.contains(table)) << table;
    EXPECT_EQ(r[table].size(), keys.size()) << table << " lacks keys: " << r[table].dump();
  }
  EXPECT_EQ(r["training"]["seed"], 7);
  EXPECT_EQ(r["training"]["output_dir"], "o");
  EXPECT_EQ(r["schedule"]["learning_rate"], 2e-4);  // a default (recipe_test: DefaultsFillCoreTables)
  ASSERT_EQ(r["datasets"].size(), 1u);
  EXPECT_EQ(r["datasets"][0]["path"], "d.jsonl");
  EXPECT_EQ(r["adapter"]["plugin"], "lora");
  // lora_adapter.cpp's own defaults: use_rslora = false, init = "default".
  EXPECT_EQ(r["adapter"]["use_rslora"], false);
  EXPECT_EQ(r["adapter"]["init"], "default");
  EXPECT_EQ(r["model"]["plugin"], "mistral");
  EXPECT_FALSE(r.contains("quantize"));  // not in the recipe: not in the record
}

// ---- hand-written run folders -------------------------------------------------

// A run folder as `mftk run` leaves it, written by hand with known numbers.
fs::path fake_run(const std::string& name, double loss0, int64_t r, bool with_rewards) {
  const fs::path dir = scratch() / "compare-fake" / name;
  fs::create_directories(dir);
  std::string metrics;
  for (int step = 1; step <= 4; ++step) {
    json line = {{"step", step}, {"loss", loss0 / step}, {"lr", 1e-4 * step}, {"tokens_per_s", 1000 + step}};
    if (with_rewards) line["rewards/accuracies"] = 0.5 + 0.1 * step, line["logps/chosen"] = -10.0 / step;
    metrics += line.dump() + "\n";
    if (step % 2 == 0) metrics += json{{"step", step}, {"eval_loss", loss0 / step + 0.1}}.dump() + "\n";
  }
  write_text(dir / "metrics.jsonl", metrics);
  write_text(dir / "summary.json", json{{"steps", 4}, {"final_loss", loss0 / 4}, {"eval_loss", loss0 / 4 + 0.1},
                                        {"tokens_per_s", 1234.4}, {"peak_rss_bytes", 2'500'000'000}}
                                       .dump());
  write_text(dir / "recipe.resolved.json",
             json{{"written_by", "mftk"},
                  {"recipe", {{"adapter", {{"plugin", "lora"}, {"r", r}}}, {"training", {{"output_dir", name}}}}}}
                 .dump());
  return dir;
}

using mftk::html_test::element_text;
using mftk::html_test::polyline_points;

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

TEST(ComparePage, CurvesPerRunSummaryAndDifferences) {
  const auto a = fake_run("a", 4.0, 8, true), b = fake_run("b", 2.0, 16, false);
  std::vector<mftk::core::RunFolder> runs = {mftk::core::load_run_folder(a.string()),
                                             mftk::core::load_run_folder(b.string())};
  const std::string html = mftk::core::compare_html(runs);
  // One polyline per run on each chart, with the points each run logged.
  for (const char* id : {"curve-loss", "curve-lr", "curve-tokens"})
    EXPECT_EQ(polyline_points(element_text(html, id, "</section>")), (std::vector<size_t>{4, 4})) << id;
  EXPECT_EQ(polyline_points(element_text(html, "curve-eval-loss", "</section>")), (std::vector<size_t>{2, 2}));
  // The preference metrics only run a logged: a chart each, with run b's series empty.
  EXPECT_EQ(polyline_points(element_text(html, "curve-rewards-accuracies", "</section>")), (std::vector<size_t>{4, 0}));
  EXPECT_EQ(polyline_points(element_text(html, "curve-logps-chosen", "</section>")), (std::vector<size_t>{4, 0}));
  // Five fixed charts and the two preference metrics; other keys (epoch, elapsed_s, ...) get none.
  EXPECT_EQ(count_of(html, "<section class=\"curve\""), 7u);
  // Summary figures, each run a column: final loss 4/4 = 1.0 and 2/4 = 0.5.
  const std::string summary = element_text(html, "summary", "</table>");
  EXPECT_NE(summary.find("<td>final loss</td><td>1.0000</td><td>0.5000</td>"), std::string::npos) << summary;
  EXPECT_NE(summary.find("<td>peak memory</td><td>2.50 GB</td><td>2.50 GB</td>"), std::string::npos) << summary;
  // The one difference, r; output_dir (a and b) is not one.
  const std::string diff = element_text(html, "recipe-diff", "</table>");
  EXPECT_EQ(count_of(diff, "<tr"), 2u) << diff;  // heading and one row
  EXPECT_NE(diff.find("<tr><td>adapter.r</td><td>8</td><td>16</td></tr>"), std::string::npos) << diff;
  EXPECT_EQ(html.find("<script"), std::string::npos);  // self-contained
  EXPECT_EQ(html.find("http://"), html.find("http://www.w3.org/2000/svg"));

  // The terminal table: run, steps, final loss, eval loss, tokens/s, and the difference.
  const std::string text = mftk::core::compare_text(runs);
  EXPECT_NE(text.find(a.string() + "      4      1.0000     1.1000      1234"), std::string::npos) << text;
  EXPECT_NE(text.find("adapter.r: 8 | 16"), std::string::npos) << text;
}

TEST(ComparePage, RunWithoutSummaryOrRecipeRecordShowsDashes) {
  const auto a = fake_run("c", 4.0, 8, false), b = fake_run("d", 2.0, 8, false);
  fs::remove(b / "summary.json");
  fs::remove(b / "recipe.resolved.json");
  std::vector<mftk::core::RunFolder> runs = {mftk::core::load_run_folder(a.string()),
                                             mftk::core::load_run_folder(b.string())};
  const std::string html = mftk::core::compare_html(runs);
  const std::string summary = element_text(html, "summary", "</table>");
  EXPECT_NE(summary.find("<td>final loss</td><td>1.0000</td><td>&mdash;</td>"), std::string::npos) << summary;
  EXPECT_NE(html.find("no recipe.resolved.json"), std::string::npos);
  EXPECT_EQ(element_text(html, "recipe-diff", "</table>"), "");
  EXPECT_EQ(polyline_points(element_text(html, "curve-loss", "</section>")), (std::vector<size_t>{4, 4}));
  const std::string text = mftk::core::compare_text(runs);
  EXPECT_NE(text.find(b.string() + "      —           —          —         —"), std::string::npos) << text;
}

// ---- the command's refusals ---------------------------------------------------

TEST(CompareCli, RefusesOneRunAFolderThatIsNotARunAndAForeignOutFile) {
  const auto a = fake_run("e", 4.0, 8, false), b = fake_run("f", 2.0, 16, false);
  const fs::path dir = scratch() / "compare-cli";
  fs::create_directories(dir / "notes");
  write_text(dir / "notes" / "todo.txt", "mine\n");
  const std::string mftk = mftk_binary() + " compare ";

  auto one = run_in(dir, mftk + a.string());
  EXPECT_EQ(one.exit_code, 2) << one.output;
  EXPECT_NE(one.output.find("at least two run folders"), std::string::npos) << one.output;

  auto not_run = run_in(dir, mftk + a.string() + " notes");
  EXPECT_EQ(not_run.exit_code, 2) << not_run.output;
  EXPECT_NE(not_run.output.find("notes: not an mftk run folder: it has no metrics.jsonl"), std::string::npos)
      << not_run.output;
  auto missing = run_in(dir, mftk + a.string() + " nowhere");
  EXPECT_EQ(missing.exit_code, 2) << missing.output;
  EXPECT_NE(missing.output.find("nowhere: no such folder"), std::string::npos) << missing.output;
  EXPECT_FALSE(fs::exists(dir / "compare.html"));  // nothing written on a refusal

  // A file of the user's at --out: refused, its bytes intact, nothing left beside it.
  const std::string mine = "<html>my notes</html>\n";
  write_text(dir / "mine.html", mine);
  const auto before = std::distance(fs::directory_iterator(dir), fs::directory_iterator());
  auto foreign = run_in(dir, mftk + a.string() + " " + b.string() + " --out mine.html");
  EXPECT_EQ(foreign.exit_code, 2) << foreign.output;
  EXPECT_NE(foreign.output.find("mine.html"), std::string::npos) << foreign.output;
  EXPECT_EQ(read_text(dir / "mine.html"), mine);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), before);

  // The default out, then again over its own page.
  for (int i = 0; i < 2; ++i) {
    auto ok = run_in(dir, mftk + a.string() + " " + b.string());
    ASSERT_EQ(ok.exit_code, 0) << ok.output;
    EXPECT_NE(read_text(dir / "compare.html").find("id=\"recipe-diff\""), std::string::npos);
  }
}

// ---- the case ---------------------------------------------------------

using mftk::html_test::chromium;
using mftk::html_test::kChromium;

// The quickstart recipe, a few steps on a tiny random model, trained at its
// rank (16) and at rank 8; `mftk compare` shows both and lists r alone.
TEST(CompareE2E, QuickstartRunAndALowerRankDifferOnlyInR) {
  const fs::path dir = scratch() / "compare-e2e";
  fs::create_directories(dir);
  std::string sets;
  for (const std::string& s :
       {"model.path=\"" + tiny_checkpoint() + "\"",
        std::string("datasets[0].path=\"" MFTK_SOURCE_DIR "/data/quickstart/train.jsonl\""),
        std::string("datasets[1].path=\"" MFTK_SOURCE_DIR "/data/quickstart/eval.jsonl\""),
        "data.dataset_prepared_path=\"" + (dir / "prepared").string() + "\"", std::string("training.max_steps=4"),
        std::string("training.logging_steps=1"), std::string("training.eval_steps=2"),
        std::string("validate.exact_match=0"), std::string("validate.prompts=[]")})
    sets += " --set " + mftk::child_process::shell_quote(s);
  const std::string run = mftk_binary() + " run " MFTK_SOURCE_DIR "/configs/quickstart.toml" + sets;
  auto r16 = run_in(dir, run + " --output-dir run-r16");
  ASSERT_EQ(r16.exit_code, 0) << r16.output;
  auto r8 = run_in(dir, run + " --set adapter.r=8 --output-dir run-r8");
  ASSERT_EQ(r8.exit_code, 0) << r8.output;

  // The record holds the plugin's defaults too (lora_adapter.cpp: use_rslora = false, init = "default").
  const json record = json::parse(read_text(dir / "run-r8" / "recipe.resolved.json"));
  EXPECT_EQ(record["recipe"]["adapter"]["r"], 8);
  EXPECT_EQ(record["recipe"]["adapter"]["use_rslora"], false);
  EXPECT_EQ(record["recipe"]["adapter"]["init"], "default");

  auto cmp = run_in(dir, mftk_binary() + " compare run-r16 run-r8/ --out cmp.html");
  ASSERT_EQ(cmp.exit_code, 0) << cmp.output;
  EXPECT_NE(cmp.output.find("recipe differences (1):\n  adapter.r: 16 | 8\n"), std::string::npos) << cmp.output;
  for (const char* name : {"run-r16", "run-r8"}) {
    const json summary = json::parse(read_text(dir / name / "summary.json"));
    EXPECT_NE(cmp.output.find(fmt::format("{:.4f}", summary["final_loss"].get<double>())), std::string::npos)
        << name << "\n" << cmp.output;
  }
  // LoRA at rank 8 trains half the adapter parameters of rank 16 on the same
  // modules; modules_to_save (the same in both) adds the same count to each.
  const json s16 = json::parse(read_text(dir / "run-r16" / "summary.json"));
  const json s8 = json::parse(read_text(dir / "run-r8" / "summary.json"));
  EXPECT_LT(s8["trainable_parameters"].get<int64_t>(), s16["trainable_parameters"].get<int64_t>());

  const fs::path page = dir / "cmp.html";
  if (!fs::exists(kChromium)) GTEST_SKIP() << "chromium is not installed (" << kChromium << "); apt-get install chromium";
  const auto dom = run_in(dir, chromium("--dump-dom 'file://" + page.string() + "' 2>/dev/null"));
  ASSERT_EQ(dom.exit_code, 0) << dom.output;
  EXPECT_NE(dom.output.find("<h1 id=\"title\">mftk compare: 2 runs</h1>"), std::string::npos) << dom.output;
  for (const char* id : {"curve-loss", "curve-eval-loss", "curve-lr", "curve-tokens"}) {
    const auto points = polyline_points(element_text(dom.output, id, "</section>"));
    ASSERT_EQ(points.size(), 2u) << id << ": one series per run";
    EXPECT_GE(points[0], id == std::string("curve-eval-loss") ? 2u : 4u) << id;
    EXPECT_EQ(points[0], points[1]) << id << ": both runs logged the same steps";
  }
  const std::string diff = element_text(dom.output, "recipe-diff", "</table>");
  EXPECT_EQ(count_of(diff, "<tr"), 2u) << diff;
  EXPECT_NE(diff.find("<td>adapter.r</td><td>16</td><td>8</td>"), std::string::npos) << diff;
  for (const char* name : {"run-r16", "run-r8"})
    EXPECT_NE(element_text(dom.output, "runs", "</table>").find(name), std::string::npos) << name;

  const auto shot = mftk::html_test::screenshot_against_blank(dir, page, "cmp");
  ASSERT_EQ(shot.page.exit_code, 0) << shot.page.output;
  ASSERT_EQ(shot.blank.exit_code, 0) << shot.blank.output;
  EXPECT_TRUE(shot.is_png) << shot.page.output;
  EXPECT_GT(shot.page_bytes, 5 * shot.blank_bytes) << "compare page " << shot.page_bytes << " bytes, blank page "
                                                   << shot.blank_bytes;
}

}  // namespace
