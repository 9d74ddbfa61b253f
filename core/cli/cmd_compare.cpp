// mftk compare RUN_DIR... [--out compare.html]
#include <cstdio>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "mftk/error.h"
#include "run_compare.h"

namespace mftk::cli {

void add_compare_commands(CLI::App& app) {
  struct Args {
    std::vector<std::string> runs;
    std::string out = "compare.html";
  };
  auto a = std::make_shared<Args>();
  auto* cmd = app.add_subcommand("compare", "compare runs side by side: curves, summary figures, recipe differences");
  cmd->add_option("runs", a->runs, "run folders (the output_dir of each mftk run)")->required();
  cmd->add_option("--out", a->out, "the HTML page to write (new, or one mftk compare wrote)")->capture_default_str();
  cmd->callback([a] {
    if (a->runs.size() < 2)
      throw UsageError(fmt::format("mftk compare needs at least two run folders; got {}", a->runs.size()),
                       "name each run's output_dir: mftk compare out/run-a out/run-b");
    std::vector<core::RunFolder> runs;
    for (const auto& path : a->runs) {
      runs.push_back(core::load_run_folder(path));
      if (!runs.back().summary.is_object())
        spdlog::warn("{}: no summary.json (the run has not finished); its figures are left blank", path);
      if (!runs.back().recipe.is_object())
        spdlog::warn("{}: no {}; its recipe is left out of the differences", path, core::kResolvedRecipeFile);
    }
    core::write_compare_html(a->out, runs);
    std::fputs(core::compare_text(runs).c_str(), stdout);
    std::printf("wrote %s\n", a->out.c_str());
  });
}

}  // namespace mftk::cli
