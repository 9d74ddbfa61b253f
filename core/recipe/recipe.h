// The recipe: one TOML file, one table per component plus the core tables.
//
// defines: mftk::core::ComponentRef, mftk::core::Recipe, mftk::core::core_tables
//
// Loading checks everything that can be checked without plugins (TOML
// syntax, core tables, --set overrides); resolve() then loads the plugins the
// recipe names and checks each component table against the keys its plugin
// declared. Both collect every problem and throw them together as one
// UsageError, each line "file:line:col: [table] key: message".
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mftk/config.h"
#include "mftk/plugin.h"

namespace mftk::core {

class Registry;

struct ComponentRef {
  std::string table;   // "model", "export[0]"
  Kind kind = Kind::model;
  std::string plugin;  // component name
  Config config;       // filled by resolve()
};

// Keys of the core (non-plugin) tables, for validation and `mftk validate --keys`.
const std::map<std::string, std::vector<KeySpec>>& core_tables();
// The `out` key the core adds to every [[export]] table.
KeySpec export_out_key();
// Every core key of an [[export]] table: out, and max_kl (the parity gate's threshold).
std::vector<KeySpec> export_core_keys();
// Component tables and their kinds: model, adapter, quantize, packer, optimizer, export.
const std::map<std::string, Kind>& component_tables();

class Recipe {
 public:
  // overrides: "table.key=value" or "table[i].key=value" (value in TOML
  // syntax; bare words are strings).
  static Recipe load(const std::string& path, const std::vector<std::string>& overrides = {});
  // Same, from TOML text (tests); `name` stands in for the file name.
  static Recipe parse(const std::string& toml_text, const std::string& name,
                      const std::vector<std::string>& overrides = {});

  // Loads the named plugins and validates their tables.
  void resolve(Registry& registry);

  const std::string& path() const { return path_; }
  std::string directory() const;  // relative paths in the recipe are relative to this
  // Core table (always present: defaults fill what the file leaves out).
  const Config& section(const std::string& table) const;
  const ComponentRef* component(const std::string& table) const;
  const std::vector<ComponentRef>& exports() const { return exports_; }
  const std::vector<Config>& datasets() const { return datasets_; }
  // A path from the recipe as the program should open it (relative to the working directory).
  std::string resolve_path(const std::string& relative) const;

  // Collected raw tables, before plugin validation (internal).
  struct RawValue {
    Value value;
    SourceLocation where;      // of the value
    SourceLocation key_where;  // of the key (unknown-key errors point here)
  };
  struct RawTable {
    std::string name;
    SourceLocation where;
    std::map<std::string, RawValue> values;
  };

 private:
  std::string path_;
  std::map<std::string, Config> sections_;
  std::map<std::string, ComponentRef> components_;
  std::vector<ComponentRef> exports_;
  std::vector<Config> datasets_;
  std::map<std::string, RawTable> raw_components_;  // by table name, incl. "export[i]"
  bool resolved_ = false;
};

// Checks raw values against a key list; appends one line per problem.
Config validate_table(const Recipe::RawTable& table, const std::vector<KeySpec>& keys,
                      std::vector<std::string>& errors, const std::string& plugin_hint = {});

// Edit distance, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b);

}  // namespace mftk::core
