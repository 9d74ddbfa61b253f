// mftk tokenize
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace mftk::cli {

void add_data_commands(CLI::App& /*app*/) {}

}  // namespace mftk::cli
