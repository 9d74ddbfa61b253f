// `mftk compare` (run_compare.h): the comparison page, its text table and
// the recipe differences. The curves go through the same chart sections
// (chart_html.h) as report.html; here each chart holds one series per run.
#include "run_compare.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include <fmt/format.h>

#include "chart_html.h"
#include "mftk/output_path.h"
#include "plan.h"

namespace mftk::core {

namespace {

// One colour per run, told apart on white (more runs than colours repeat them).
const char* const kRunColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

const char* run_colour(size_t i) { return kRunColours[i % (sizeof kRunColours / sizeof kRunColours[0])]; }

// A recipe value as TOML writes it: strings quoted, arrays in brackets.
std::string toml_text(const nlohmann::json& v) {
  if (!v.is_array()) return v.dump();
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + toml_text(v[i]);
  return s + "]";
}

bool is_array_of_tables(const nlohmann::json& v) {
  return v.is_array() && !v.empty() && std::all_of(v.begin(), v.end(), [](const auto& e) { return e.is_object(); });
}

void flatten(const nlohmann::json& v, const std::string& key, std::map<std::string, std::string>& out) {
  if (v.is_object()) {
    for (const auto& [k, child] : v.items()) flatten(child, key.empty() ? k : key + "." + k, out);
  } else if (is_array_of_tables(v)) {
    for (size_t i = 0; i < v.size(); ++i) flatten(v[i], fmt::format("{}[{}]", key, i), out);
  } else {
    out[key] = toml_text(v);
  }
}

bool is_plugin_key(const std::string& key) {
  const auto dot = key.rfind('.');
  return key.substr(dot == std::string::npos ? 0 : dot + 1) == "plugin";
}

// ---- the figures of summary.json ------------------------------------------

// A summary figure: its key, its row label and how its value reads.
struct Figure {
  const char* key;
  const char* label;
  std::string (*format)(double);
};

std::string as_count(double v) { return fmt::format("{:.0f}", v); }
std::string as_loss(double v) { return fmt::format("{:.4f}", v); }
std::string as_rate(double v) { return fmt::format("{:.0f}", v); }
std::string as_seconds(double v) { return fmt::format("{:.1f} s", v); }
std::string as_bytes(double v) { return format_bytes(int64_t(v)); }
std::string as_percent(double v) { return fmt::format("{:.1f}%", 100 * v); }
std::string as_number(double v) { return fmt::format("{:.6g}", v); }

// The figures `mftk run` writes, in the order a reader looks for them.
const Figure kFigures[] = {{"steps", "steps", as_count},
                           {"final_loss", "final loss", as_loss},
                           {"eval_loss", "eval loss", as_loss},
                           {"best_eval_loss", "best eval loss", as_loss},
                           {"tokens_per_s", "tokens/s", as_rate},
                           {"seconds", "training time", as_seconds},
                           {"train_tokens", "train tokens", as_count},
                           {"trainable_parameters", "trainable parameters", as_count},
                           {"total_parameters", "total parameters", as_count},
                           {"peak_rss_bytes", "peak memory", as_bytes},
                           {"exact_match_before", "exact match before", as_percent},
                           {"exact_match_after", "exact match after", as_percent},
                           {"skipped_nonfinite_steps", "skipped non-finite steps", as_count}};

std::optional<double> summary_number(const RunFolder& run, const std::string& key) {
  if (!run.summary.is_object() || !run.summary.contains(key) || !run.summary[key].is_number()) return std::nullopt;
  return run.summary[key].get<double>();
}

struct FigureRow {
  std::string label;
  std::vector<std::optional<std::string>> values;  // per run
};

std::vector<FigureRow> figure_rows(const std::vector<RunFolder>& runs) {
  std::vector<FigureRow> rows;
  auto add = [&](const std::string& label, auto value_of) {
    FigureRow row{label, {}};
    bool any = false;
    for (const auto& run : runs) {
      row.values.push_back(value_of(run));
      any = any || row.values.back().has_value();
    }
    if (any) rows.push_back(std::move(row));
  };
  std::set<std::string> known;
  for (const auto& f : kFigures) {
    known.insert(f.key);
    add(f.label, [&](const RunFolder& run) -> std::optional<std::string> {
      const auto v = summary_number(run, f.key);
      return v ? std::optional(f.format(*v)) : std::nullopt;
    });
  }
  // Numbers a newer run (or a plugin's objective) adds, under their own names.
  std::set<std::string> other;
  for (const auto& run : runs)
    if (run.summary.is_object())
      for (const auto& [key, value] : run.summary.items())
        if (value.is_number() && !known.count(key)) other.insert(key);
  for (const auto& key : other)
    add(key, [&](const RunFolder& run) -> std::optional<std::string> {
      const auto v = summary_number(run, key);
      return v ? std::optional(as_number(*v)) : std::nullopt;
    });
  // The export parity gate: each artefact's mean KL, by kind.
  std::set<std::string> kinds;
  for (const auto& run : runs)
    if (run.summary.is_object() && run.summary.contains("export_parity") && run.summary["export_parity"].is_array())
      for (const auto& c : run.summary["export_parity"]) kinds.insert(c.value("kind", std::string()));
  for (const auto& kind : kinds)
    add("export parity mean KL: " + kind, [&](const RunFolder& run) -> std::optional<std::string> {
      if (!run.summary.is_object() || !run.summary.contains("export_parity")) return std::nullopt;
      for (const auto& c : run.summary["export_parity"])
        if (c.value("kind", std::string()) == kind && c.contains("mean_kl") && c["mean_kl"].is_number())
          return fmt::format("{:.3e}", c["mean_kl"].get<double>());
      return std::nullopt;
    });
  return rows;
}

// ---- the curves -------------------------------------------------------------

struct Chart {
  std::string id, title, metric;
};

// The four curves of report.html and the gradient norm, then every
// preference metric any run logged, under TRL's names (rewards/accuracies,
// rewards/margins, logps/chosen, ...; eval_ before them for the eval split).
std::vector<Chart> charts_for(const std::vector<RunFolder>& runs) {
  std::vector<Chart> charts = {{"curve-loss", "Training loss", "loss"},
                               {"curve-eval-loss", "Eval loss", "eval_loss"},
                               {"curve-lr", "Learning rate", "lr"},
                               {"curve-tokens", "Tokens per second", "tokens_per_s"},
                               {"curve-grad-norm", "Gradient norm", "grad_norm"}};
  std::set<std::string> preference;
  for (const auto& run : runs)
    for (const auto& [key, points] : run.metrics)
      for (const char* prefix : {"rewards/", "logps/", "eval_rewards/", "eval_logps/"})
        if (key.rfind(prefix, 0) == 0) preference.insert(key);
  for (const auto& key : preference) {
    std::string id = "curve-";
    for (char c : key) id += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
    charts.push_back({id, key, key});
  }
  return charts;
}

std::string dash_or(const std::optional<std::string>& v) { return v ? xml_escape(*v) : "&mdash;"; }

std::string swatch(size_t run) {
  return fmt::format("<span style=\"display:inline-block;width:14px;height:4px;margin-right:6px;"
                     "vertical-align:middle;background:{}\"></span>",
                     run_colour(run));
}

// The runs that recorded their resolved recipe, by index.
std::vector<size_t> runs_with_recipe(const std::vector<RunFolder>& runs) {
  std::vector<size_t> with;
  for (size_t i = 0; i < runs.size(); ++i)
    if (runs[i].recipe.is_object()) with.push_back(i);
  return with;
}

std::vector<RecipeDifference> differences_of(const std::vector<RunFolder>& runs, const std::vector<size_t>& with) {
  std::vector<nlohmann::json> recipes;
  for (size_t i : with) recipes.push_back(runs[i].recipe);
  return recipe_differences(recipes);
}

std::string number_or_dash(const RunFolder& run, const char* key, const char* format) {
  const auto v = summary_number(run, key);
  return v && std::isfinite(*v) ? fmt::format(fmt::runtime(format), *v) : "—";
}

// Text width of a UTF-8 string: its code points (the dash is one).
size_t text_width(const std::string& s) {
  return size_t(std::count_if(s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string pad(const std::string& s, size_t width, bool right) {
  const std::string fill(width > text_width(s) ? width - text_width(s) : 0, ' ');
  return right ? fill + s : s + fill;
}

}  // namespace

std::vector<RecipeDifference> recipe_differences(const std::vector<nlohmann::json>& recipes,
                                                 const std::vector<std::string>& ignored) {
  std::vector<std::map<std::string, std::string>> flat(recipes.size());
  std::set<std::string> keys;
  for (size_t i = 0; i < recipes.size(); ++i) {
    flatten(recipes[i], "", flat[i]);
    for (const auto& [k, v] : flat[i]) keys.insert(k);
  }
  std::vector<RecipeDifference> plugins, others;
  for (const auto& key : keys) {
    if (std::find(ignored.begin(), ignored.end(), key) != ignored.end()) continue;
    RecipeDifference d{key, is_plugin_key(key), {}};
    for (const auto& f : flat) {
      const auto it = f.find(key);
      d.values.push_back(it == f.end() ? std::nullopt : std::optional(it->second));
    }
    if (std::all_of(d.values.begin(), d.values.end(), [&](const auto& v) { return v == d.values.front(); })) continue;
    (d.plugin_swap ? plugins : others).push_back(std::move(d));
  }
  plugins.insert(plugins.end(), std::make_move_iterator(others.begin()), std::make_move_iterator(others.end()));
  return plugins;
}

std::string compare_html(const std::vector<RunFolder>& runs) {
  const std::string title = fmt::format("mftk compare: {} runs", runs.size());
  std::string h = html_page_start(title, kCompareGenerator);
  h += fmt::format("<h1 id=\"title\">{}</h1>\n", xml_escape(title));

  h += "<h2>Runs</h2>\n<table id=\"runs\">\n<tr><th>run</th><th>folder</th><th>state</th></tr>\n";
  for (size_t i = 0; i < runs.size(); ++i)
    h += fmt::format("<tr><td>{}{}</td><td>{}</td><td>{}</td></tr>\n", swatch(i), xml_escape(runs[i].name),
                     xml_escape(runs[i].path),
                     runs[i].summary.is_object() ? "finished" : "no summary.json (unfinished, or stopped)");
  h += "</table>\n";

  // Shared axes: all runs in one chart per metric, each in its colour.
  h += "<h2>Curves</h2>\n";
  for (const auto& chart : charts_for(runs)) {
    std::vector<CurveSeries> series;
    for (size_t i = 0; i < runs.size(); ++i) {
      const auto it = runs[i].metrics.find(chart.metric);
      series.push_back({runs[i].name, run_colour(i),
                        it == runs[i].metrics.end() ? std::vector<std::pair<double, double>>{} : it->second, false});
    }
    h += chart_section(chart.id, chart.title, series);
  }

  h += "<h2>Summary</h2>\n<table id=\"summary\">\n<tr><th>figure</th>";
  for (size_t i = 0; i < runs.size(); ++i) h += fmt::format("<th>{}{}</th>", swatch(i), xml_escape(runs[i].name));
  h += "</tr>\n";
  for (const auto& row : figure_rows(runs)) {
    h += fmt::format("<tr><td>{}</td>", xml_escape(row.label));
    for (const auto& v : row.values) h += fmt::format("<td>{}</td>", dash_or(v));
    h += "</tr>\n";
  }
  h += "</table>\n";

  h += "<h2>Recipe differences</h2>\n";
  const auto with = runs_with_recipe(runs);
  if (with.size() < runs.size()) {
    std::vector<std::string> without;
    for (size_t i = 0; i < runs.size(); ++i)
      if (!runs[i].recipe.is_object()) without.push_back(runs[i].name);
    h += fmt::format("<p>{}: no {} (a run written before mftk recorded its resolved recipe); left out below.</p>\n",
                     xml_escape(fmt::format("{}", fmt::join(without, ", "))), kResolvedRecipeFile);
  }
  if (with.size() < 2) {
    h += "<p>Fewer than two runs recorded their resolved recipe: nothing to compare.</p>\n";
  } else {
    const auto diffs = differences_of(runs, with);
    if (diffs.empty()) {
      h += "<p id=\"recipe-same\">The resolved recipes are the same (training.output_dir aside).</p>\n";
    } else {
      h += "<p>Keys of the resolved recipes (defaults filled in) whose values differ; training.output_dir is "
           "left out. Plugin swaps come first.</p>\n<table id=\"recipe-diff\">\n<tr><th>key</th>";
      for (size_t i : with) h += fmt::format("<th>{}{}</th>", swatch(i), xml_escape(runs[i].name));
      h += "</tr>\n";
      for (const auto& d : diffs) {
        h += d.plugin_swap ? fmt::format("<tr class=\"plugin-swap\"><td><b>{}</b> (plugin swap)</td>", xml_escape(d.key))
                           : fmt::format("<tr><td>{}</td>", xml_escape(d.key));
        for (const auto& v : d.values) h += fmt::format("<td>{}</td>", dash_or(v));
        h += "</tr>\n";
      }
      h += "</table>\n";
    }
  }
  h += html_page_end();
  return h;
}

std::string compare_text(const std::vector<RunFolder>& runs) {
  const std::vector<std::string> heads = {"run", "steps", "final loss", "eval loss", "tokens/s"};
  std::vector<std::vector<std::string>> rows;
  for (const auto& run : runs)
    rows.push_back({run.name, number_or_dash(run, "steps", "{:.0f}"), number_or_dash(run, "final_loss", "{:.4f}"),
                    number_or_dash(run, "eval_loss", "{:.4f}"), number_or_dash(run, "tokens_per_s", "{:.0f}")});
  std::vector<size_t> width;
  for (size_t c = 0; c < heads.size(); ++c) {
    width.push_back(text_width(heads[c]));
    for (const auto& r : rows) width[c] = std::max(width[c], text_width(r[c]));
  }
  std::string t;
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t c = 0; c < cells.size(); ++c) t += (c ? "  " : "") + pad(cells[c], width[c], c > 0);
    t += "\n";
  };
  line(heads);
  for (const auto& r : rows) line(r);

  const auto with = runs_with_recipe(runs);
  if (with.size() >= 2) {
    const auto diffs = differences_of(runs, with);
    t += diffs.empty() ? std::string("recipes: the same (training.output_dir aside)\n")
                       : fmt::format("recipe differences ({}):\n", diffs.size());
    for (const auto& d : diffs) {
      std::vector<std::string> values;
      for (const auto& v : d.values) values.push_back(v.value_or("—"));
      t += fmt::format("  {}{}: {}\n", d.key, d.plugin_swap ? " (plugin swap)" : "", fmt::join(values, " | "));
    }
  }
  return t;
}

void write_compare_html(const std::string& out, const std::vector<RunFolder>& runs) {
  // A file this command wrote names it as its generator near the top.
  auto is_compare_page = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::string head(1024, '\0');
    in.read(head.data(), std::streamsize(head.size()));
    head.resize(size_t(in.gcount()));
    return head.find(fmt::format("<meta name=\"generator\" content=\"{}\">", kCompareGenerator)) != std::string::npos;
  };
  OutputGuard guard(out, "compare-html", OutputShape::file, is_compare_page);
  write_file_atomic(guard.path(), compare_html(runs));
  guard.commit();
}

}  // namespace mftk::core
