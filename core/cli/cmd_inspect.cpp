// mftk inspect FILE: what a GGUF file says, read with mftk's bounds-checked
// reader (core/io/gguf_reader.h): the header, every metadata key with its type
// (arrays as element type, length and their first items) and the tensor
// table (name, type, ne, offset).
#include <cstdio>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "gguf_reader.h"

namespace mftk::cli {
namespace {

constexpr size_t kArrayPreview = 5;     // items shown of an array
constexpr size_t kStringPreview = 120;  // bytes shown of a long string (chat templates)

// A string as a quoted one-liner: control bytes escaped, long ones cut.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  const size_t shown = s.size() > kStringPreview ? kStringPreview : s.size();
  for (size_t i = 0; i < shown; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') out += fmt::format("\\{}", char(c));
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
    else out += char(c);
  }
  out += "\"";
  if (shown < s.size()) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

std::string scalar_text(const core::GgufValue& v) {
  using T = core::GgufValueType;
  switch (v.type) {
    case T::float32: return fmt::format("{}", float(v.real));
    case T::float64: return fmt::format("{}", v.real);
    case T::boolean: return v.integer ? "true" : "false";
    case T::string: return quoted(v.text);
    case T::int8:
    case T::int16:
    case T::int32:
    case T::int64: return fmt::format("{}", v.as_int());
    default: return fmt::format("{}", v.integer);
  }
}

std::string value_text(const core::GgufValue& v) {
  if (v.type != core::GgufValueType::array) return scalar_text(v);
  std::string out = fmt::format("[{} x {}]", core::to_string(v.element_type), v.items.size());
  if (v.items.empty()) return out;
  out += " ";
  for (size_t i = 0; i < v.items.size() && i < kArrayPreview; ++i) out += (i ? ", " : "") + value_text(v.items[i]);
  if (v.items.size() > kArrayPreview) out += ", ...";
  return out;
}

void print_inspection(const core::GgufFile& file) {
  std::printf("%s: GGUF v%u, %llu bytes, alignment %u, tensor data at byte %llu\n", file.path().c_str(),
              file.version(), static_cast<unsigned long long>(file.file_size()), file.alignment(),
              static_cast<unsigned long long>(file.data_offset()));
  size_t key_width = 0;
  for (const auto& [key, value] : file.metadata()) key_width = std::max(key_width, key.size());
  std::printf("\nmetadata (%zu keys)\n", file.metadata().size());
  for (const auto& [key, value] : file.metadata())
    std::printf("  %-*s  %-7s  %s\n", int(key_width), key.c_str(), core::to_string(value.type).c_str(),
                value_text(value).c_str());
  size_t name_width = 4;
  for (const auto& t : file.tensors()) name_width = std::max(name_width, t.name.size());
  std::printf("\ntensors (%zu)\n  %-*s  %-5s  %-20s  %s\n", file.tensors().size(), int(name_width), "name", "type",
              "ne", "offset");
  for (const auto& t : file.tensors()) {
    const std::string ne = fmt::format("[{}]", fmt::join(t.ne, ", "));
    std::printf("  %-*s  %-5s  %-20s  %llu\n", int(name_width), t.name.c_str(), core::ggml_type_traits(t.type).name,
                ne.c_str(), static_cast<unsigned long long>(t.offset));
  }
}

}  // namespace

void add_inspect_commands(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("inspect", "print a GGUF file's metadata and tensor table");
  cmd->add_option("file", *path, "a .gguf file")->required();
  cmd->callback([path] { print_inspection(core::GgufFile::open(*path)); });
}

}  // namespace mftk::cli
