// A plugin's recipe table, validated against the keys it declared.
//
// defines: mftk::ValueType, mftk::Value, mftk::KeySpec, mftk::Config
//
// Plugins never parse TOML. They declare their keys (name, type, default,
// one-line doc); the core checks the recipe table against that list
// (unknown keys, types, ranges, required keys), fills defaults, and hands the
// plugin a Config. A plugin that finds a value it cannot use calls fail(),
// which points the user at the file, line and key.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mftk/error.h"

namespace mftk {

enum class ValueType { boolean, integer, number, string, string_list };

const char* to_string(ValueType t);

using Value = std::variant<bool, int64_t, double, std::string, std::vector<std::string>>;

// Renders a value the way it would be written in TOML.
std::string to_toml(const Value& v);

struct KeySpec {
  std::string name;
  ValueType type = ValueType::string;
  std::optional<Value> default_value;  // none: the key is required
  std::string doc;
  std::vector<std::string> choices;    // strings only; empty: any
  std::optional<double> min;           // numbers only
  std::optional<double> max;

  // Builders that read like the option table in the docs.
  static KeySpec boolean(std::string name, bool def, std::string doc);
  static KeySpec integer(std::string name, std::optional<int64_t> def, std::string doc);
  static KeySpec number(std::string name, std::optional<double> def, std::string doc);
  static KeySpec string(std::string name, std::optional<std::string> def, std::string doc);
  static KeySpec strings(std::string name, std::vector<std::string> def, std::string doc);
  KeySpec& range(double lo, double hi) { min = lo; max = hi; return *this; }
  KeySpec& one_of(std::vector<std::string> c) { choices = std::move(c); return *this; }
  KeySpec& required() { default_value.reset(); return *this; }
};

class Config {
 public:
  struct Entry {
    Value value;
    SourceLocation where;  // of the value, or of the table for defaults
    bool explicitly_set = false;
  };

  Config() = default;
  Config(std::string table, SourceLocation table_where, std::map<std::string, Entry> entries);

  // "model", "adapter", "export[1]" ...
  const std::string& table() const { return table_; }
  bool has(const std::string& key) const { return entries_.count(key) != 0; }
  // True when the recipe (or --set) wrote the key, false for a default.
  bool is_set(const std::string& key) const;

  bool get_bool(const std::string& key) const;
  int64_t get_int(const std::string& key) const;
  double get_number(const std::string& key) const;  // integers widen
  const std::string& get_string(const std::string& key) const;
  const std::vector<std::string>& get_strings(const std::string& key) const;

  const SourceLocation& where(const std::string& key) const;
  const std::map<std::string, Entry>& entries() const { return entries_; }

  // Throws UsageError "file:line:col: [table] key: message".
  [[noreturn]] void fail(const std::string& key, const std::string& message,
                         const std::string& hint = {}) const;

 private:
  const Entry& at(const std::string& key) const;
  std::string table_;
  SourceLocation table_where_;
  std::map<std::string, Entry> entries_;
};

}  // namespace mftk
