// Config and KeySpec: the validated view of one recipe table (see config.h).
#include "mftk/config.h"

#include <cmath>
#include <sstream>

namespace mftk {

const char* to_string(ValueType t) {
  switch (t) {
    case ValueType::boolean: return "boolean";
    case ValueType::integer: return "integer";
    case ValueType::number: return "number";
    case ValueType::string: return "string";
    case ValueType::string_list: return "list of strings";
  }
  return "?";
}

static std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string to_toml(const Value& v) {
  struct Visitor {
    std::string operator()(bool b) const { return b ? "true" : "false"; }
    std::string operator()(int64_t i) const { return std::to_string(i); }
    std::string operator()(double d) const {
      std::ostringstream os;
      os << d;
      std::string s = os.str();
      if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
      return s;
    }
    std::string operator()(const std::string& s) const { return quote(s); }
    std::string operator()(const std::vector<std::string>& l) const {
      std::string out = "[";
      for (size_t i = 0; i < l.size(); ++i) out += (i ? ", " : "") + quote(l[i]);
      return out + "]";
    }
  };
  return std::visit(Visitor{}, v);
}

KeySpec KeySpec::boolean(std::string name, bool def, std::string doc) {
  KeySpec k;
  k.name = std::move(name);
  k.type = ValueType::boolean;
  k.default_value = def;
  k.doc = std::move(doc);
  return k;
}

KeySpec KeySpec::integer(std::string name, std::optional<int64_t> def, std::string doc) {
  KeySpec k;
  k.name = std::move(name);
  k.type = ValueType::integer;
  if (def) k.default_value = *def;
  k.doc = std::move(doc);
  return k;
}

KeySpec KeySpec::number(std::string name, std::optional<double> def, std::string doc) {
  KeySpec k;
  k.name = std::move(name);
  k.type = ValueType::number;
  if (def) k.default_value = *def;
  k.doc = std::move(doc);
  return k;
}

KeySpec KeySpec::string(std::string name, std::optional<std::string> def, std::string doc) {
  KeySpec k;
  k.name = std::move(name);
  k.type = ValueType::string;
  if (def) k.default_value = *def;
  k.doc = std::move(doc);
  return k;
}

KeySpec KeySpec::strings(std::string name, std::vector<std::string> def, std::string doc) {
  KeySpec k;
  k.name = std::move(name);
  k.type = ValueType::string_list;
  k.default_value = std::move(def);
  k.doc = std::move(doc);
  return k;
}

Config::Config(std::string table, SourceLocation table_where, std::map<std::string, Entry> entries)
    : table_(std::move(table)), table_where_(std::move(table_where)), entries_(std::move(entries)) {}

const Config::Entry& Config::at(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end())
    throw Error(fmt::format("[{}] {}: no such key was declared (plugin bug: add it to the "
                            "component's keys)",
                            table_, key));
  return it->second;
}

bool Config::is_set(const std::string& key) const {
  auto it = entries_.find(key);
  return it != entries_.end() && it->second.explicitly_set;
}

bool Config::get_bool(const std::string& key) const {
  const auto& e = at(key);
  if (auto* b = std::get_if<bool>(&e.value)) return *b;
  fail(key, "expected a boolean");
}

int64_t Config::get_int(const std::string& key) const {
  const auto& e = at(key);
  if (auto* i = std::get_if<int64_t>(&e.value)) return *i;
  fail(key, "expected an integer");
}

double Config::get_number(const std::string& key) const {
  const auto& e = at(key);
  if (auto* d = std::get_if<double>(&e.value)) return *d;
  if (auto* i = std::get_if<int64_t>(&e.value)) return double(*i);
  fail(key, "expected a number");
}

const std::string& Config::get_string(const std::string& key) const {
  const auto& e = at(key);
  if (auto* s = std::get_if<std::string>(&e.value)) return *s;
  fail(key, "expected a string");
}

const std::vector<std::string>& Config::get_strings(const std::string& key) const {
  const auto& e = at(key);
  if (auto* l = std::get_if<std::vector<std::string>>(&e.value)) return *l;
  fail(key, "expected a list of strings");
}

const SourceLocation& Config::where(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() || !it->second.explicitly_set ? table_where_ : it->second.where;
}

void Config::fail(const std::string& key, const std::string& message, const std::string& hint) const {
  throw UsageError(fmt::format("{}: [{}] {}: {}", where(key).str(), table_, key, message), hint);
}

}  // namespace mftk
