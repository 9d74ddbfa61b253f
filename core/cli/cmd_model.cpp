// mftk init | generate | logprobs
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace mftk::cli {

void add_model_commands(CLI::App& /*app*/) {}

}  // namespace mftk::cli
