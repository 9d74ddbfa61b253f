// The mftk subcommands, one group per file (cmd_*.cpp). main.cpp calls each
// add_* once; a command's callback throws mftk::Error / mftk::UsageError and
// main turns that into one message and an exit code (1 runtime, 2 usage).
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace mftk::cli {

void add_recipe_commands(CLI::App& app);   // run, validate, plugins                       (cmd_recipe.cpp)
void add_model_commands(CLI::App& app);    // init, export, quantize, generate, logprobs, merge (cmd_model.cpp)
void add_data_commands(CLI::App& app);     // tokenize, preprocess, eval, verify            (cmd_data.cpp)
void add_inspect_commands(CLI::App& app);  // inspect (GGUF files)                           (cmd_inspect.cpp)
void add_plan_commands(CLI::App& app);     // plan (memory, steps, time, data fit; no training) (cmd_plan.cpp)
void add_launch_commands(CLI::App& app);   // launch (data-parallel ranks on this machine)   (cmd_launch.cpp)
void add_plugin_commands(CLI::App& app);   // plugin check (the conformance kit)             (cmd_plugin.cpp)
void add_compare_commands(CLI::App& app);  // compare (runs side by side: compare.html)       (cmd_compare.cpp)

// The positional recipe file and its --set overrides, shared by every
// recipe-taking command (cmd_recipe.cpp).
struct RecipeArgs {
  std::string path;
  std::vector<std::string> overrides;
};
void add_recipe_options(CLI::App* cmd, RecipeArgs& args);

}  // namespace mftk::cli
