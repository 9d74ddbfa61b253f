// Fuzz target: recipe TOML through Recipe::parse (syntax, core tables,
// component tables, --set overrides), then the [data]/[[datasets]] reading
// that `mftk run` does next. Leading lines "#@table.key=value" (TOML
// comments, so seeds stay valid recipes) are passed as --set overrides.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "dataset.h"
#include "fuzz_support.h"
#include "recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text = mftk::fuzz::bytes(data, size);
  std::vector<std::string> overrides;
  size_t pos = 0;
  while (text.compare(pos, 2, "#@") == 0) {
    const size_t end = text.find('\n', pos);
    overrides.push_back(text.substr(pos + 2, end == std::string::npos ? std::string::npos : end - pos - 2));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  mftk::fuzz::run_parser([&] {
    const auto recipe = mftk::core::Recipe::parse(text, "fuzz.toml", overrides);
    for (const auto& [table, keys] : mftk::core::core_tables()) {
      if (table != "datasets") (void)recipe.section(table);
    }
    (void)mftk::core::data_options_from_recipe(recipe);
  });
  return 0;
}
