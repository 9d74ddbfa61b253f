// Recipe parsing (toml++) and validation; see recipe.h.
#include "recipe.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "defaults.h"
#include "device.h"
#include "registry.h"

namespace mftk::core {

namespace fs = std::filesystem;

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

namespace {

// The closest candidate within a typo's distance, or "".
std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  if (!best.empty() || word.size() < 2) return best;
  // Abbreviations: the word's letters appear in order in the candidate
  // (seqlen -> sequence_len, lr -> learning_rate); the shortest such wins.
  for (const auto& c : candidates) {
    size_t i = 0;
    for (char ch : c)
      if (i < word.size() && ch == word[i]) ++i;
    if (i == word.size() && c[0] == word[0] && (best.empty() || c.size() < best.size())) best = c;
  }
  return best;
}

// Values from --set come from a fragment with no path: they print as "--set".
SourceLocation location_of(const toml::source_region& r, const std::string& /*file*/) {
  if (!r.path) return SourceLocation{};
  return SourceLocation{*r.path, int(r.begin.line), int(r.begin.column)};
}

// TOML value -> Value; std::nullopt with `why` set when the type is unusable.
std::optional<Value> to_value(const toml::node& n, std::string& why) {
  if (auto b = n.as_boolean()) return Value(b->get());
  if (auto i = n.as_integer()) return Value(int64_t(i->get()));
  if (auto f = n.as_floating_point()) return Value(f->get());
  if (auto s = n.as_string()) return Value(s->get());
  if (auto a = n.as_array()) {
    std::vector<std::string> items;
    for (const auto& e : *a) {
      if (auto s = e.as_string()) items.push_back(s->get());
      else {
        why = "arrays may only hold strings";
        return std::nullopt;
      }
    }
    return Value(items);
  }
  why = n.is_table() ? "a table is not allowed here" : "unsupported TOML type (dates are not used by mftk)";
  return std::nullopt;
}

const char* type_name(const Value& v) {
  switch (v.index()) {
    case 0: return "boolean";
    case 1: return "integer";
    case 2: return "number";
    case 3: return "string";
    default: return "list of strings";
  }
}

void collect_table(const toml::table& t, const std::string& name, const std::string& file,
                   Recipe::RawTable& out, std::vector<std::string>& errors) {
  out.name = name;
  out.where = location_of(t.source(), file);
  for (auto&& [k, v] : t) {
    std::string why;
    auto value = to_value(v, why);
    auto where = location_of(v.source(), file);
    if (!value) {
      errors.push_back(fmt::format("{}: [{}] {}: {}", where.str(), name, k.str(), why));
      continue;
    }
    auto key_where = v.source().path ? location_of(k.source(), file) : where;
    out.values[std::string(k.str())] = Recipe::RawValue{*value, where, key_where};
  }
}

std::string location_table_key(const Recipe::RawTable& t, const std::string& key, bool at_key = false) {
  auto it = t.values.find(key);
  SourceLocation w = it == t.values.end() ? t.where : at_key ? it->second.key_where : it->second.where;
  return fmt::format("{}: [{}] {}", w.str(), t.name, key);
}

}  // namespace

Config validate_table(const Recipe::RawTable& table, const std::vector<KeySpec>& keys,
                      std::vector<std::string>& errors, const std::string& plugin_hint) {
  std::map<std::string, Config::Entry> entries;
  std::vector<std::string> names;
  for (const auto& k : keys) names.push_back(k.name);

  // Not a structured binding: C++17 lambdas cannot capture one (clang refuses).
  for (const auto& entry : table.values) {
    const std::string& key = entry.first;
    const Recipe::RawValue& raw = entry.second;
    if (key == "plugin" || key == "path_to_plugin") continue;
    auto spec = std::find_if(keys.begin(), keys.end(), [&](const KeySpec& k) { return k.name == key; });
    if (spec == keys.end()) {
      std::string msg = fmt::format("{}: unknown key", location_table_key(table, key, true));
      if (auto s = closest(key, names); !s.empty()) msg += fmt::format(", did you mean '{}'?", s);
      else if (!plugin_hint.empty()) msg += fmt::format(" ({})", plugin_hint);
      errors.push_back(msg);
      continue;
    }
    Value v = raw.value;
    // Integers are fine where numbers are expected.
    if (spec->type == ValueType::number && std::holds_alternative<int64_t>(v)) v = double(std::get<int64_t>(v));
    const bool type_ok = (spec->type == ValueType::boolean && std::holds_alternative<bool>(v)) ||
                         (spec->type == ValueType::integer && std::holds_alternative<int64_t>(v)) ||
                         (spec->type == ValueType::number && std::holds_alternative<double>(v)) ||
                         (spec->type == ValueType::string && std::holds_alternative<std::string>(v)) ||
                         (spec->type == ValueType::string_list && std::holds_alternative<std::vector<std::string>>(v));
    if (!type_ok) {
      errors.push_back(fmt::format("{}: expected {}, got {} {}", location_table_key(table, key),
                                   to_string(spec->type), type_name(raw.value), to_toml(raw.value)));
      continue;
    }
    if (spec->min || spec->max) {
      double x = std::holds_alternative<int64_t>(v) ? double(std::get<int64_t>(v)) : std::get<double>(v);
      if ((spec->min && x < *spec->min) || (spec->max && x > *spec->max) || std::isnan(x)) {
        errors.push_back(fmt::format("{}: {} is out of range [{}, {}]", location_table_key(table, key), to_toml(v),
                                     spec->min ? fmt::format("{}", *spec->min) : "-inf",
                                     spec->max ? fmt::format("{}", *spec->max) : "inf"));
        continue;
      }
    }
    if (!spec->choices.empty() && std::holds_alternative<std::string>(v)) {
      const auto& s = std::get<std::string>(v);
      if (std::find(spec->choices.begin(), spec->choices.end(), s) == spec->choices.end()) {
        std::string msg = fmt::format("{}: \"{}\" is not one of {}", location_table_key(table, key), s,
                                      fmt::join(spec->choices, ", "));
        if (auto c = closest(s, spec->choices); !c.empty()) msg += fmt::format("; did you mean \"{}\"?", c);
        errors.push_back(msg);
        continue;
      }
    }
    entries[key] = Config::Entry{v, raw.where, true};
  }
  for (const auto& k : keys) {
    if (entries.count(k.name)) continue;
    if (!k.default_value) {
      errors.push_back(fmt::format("{}: [{}] {}: missing required key ({}: {})", table.where.str(), table.name, k.name,
                                   to_string(k.type), k.doc));
      continue;
    }
    entries[k.name] = Config::Entry{*k.default_value, table.where, false};
  }
  return Config(table.name, table.where, std::move(entries));
}

namespace {

// Applies "table.key=value" / "table[i].key=value" to the parsed document.
void apply_override(toml::table& doc, const std::string& text, std::vector<std::string>& errors) {
  auto eq = text.find('=');
  auto dot = text.substr(0, eq).rfind('.');
  if (eq == std::string::npos || dot == std::string::npos || dot == 0) {
    errors.push_back(fmt::format("--set {}: expected table.key=value (e.g. --set training.num_epochs=2)", text));
    return;
  }
  std::string path = text.substr(0, dot), key = text.substr(dot + 1, eq - dot - 1), raw = text.substr(eq + 1);
  // Parse the value as TOML; a bare word is taken as a string.
  try {
    auto parsed = toml::parse("v = " + raw);
    if (auto* n = parsed.get("v")) {
      toml::table holder;
      holder.insert("v", *n);
      doc.insert_or_assign("__mftk_tmp", holder);
    }
  } catch (const toml::parse_error&) {
    toml::table holder;
    holder.insert("v", raw);
    doc.insert_or_assign("__mftk_tmp", holder);
  }
  toml::node* v = doc["__mftk_tmp"]["v"].node();
  toml::table* target = nullptr;
  auto bracket = path.find('[');
  if (bracket != std::string::npos && path.back() == ']') {
    std::string arr = path.substr(0, bracket);
    size_t idx = 0;
    try {
      idx = std::stoul(path.substr(bracket + 1, path.size() - bracket - 2));
    } catch (...) {
      errors.push_back(fmt::format("--set {}: bad index in '{}'", text, path));
      doc.erase("__mftk_tmp");
      return;
    }
    auto* a = doc[arr].as_array();
    if (!a || idx >= a->size() || !(*a)[idx].is_table()) {
      errors.push_back(fmt::format("--set {}: the recipe has no [[{}]] number {}", text, arr, idx));
      doc.erase("__mftk_tmp");
      return;
    }
    target = (*a)[idx].as_table();
  } else {
    if (!doc.contains(path)) doc.insert(path, toml::table{});
    target = doc[path].as_table();
    if (!target) {
      errors.push_back(fmt::format("--set {}: '{}' is not a table in the recipe", text, path));
      doc.erase("__mftk_tmp");
      return;
    }
  }
  target->insert_or_assign(key, *v);
  doc.erase("__mftk_tmp");
}

}  // namespace

KeySpec export_out_key() {
  return KeySpec::string("out", std::nullopt, "file or folder to write; a relative path is taken inside training.output_dir");
}

const std::map<std::string, Kind>& component_tables() {
  static const std::map<std::string, Kind> t = {{"model", Kind::model},         {"adapter", Kind::adapter},
                                                {"quantize", Kind::quantizer},  {"packer", Kind::packer},
                                                {"optimizer", Kind::optimizer}, {"export", Kind::exporter},
                                                {"objective", Kind::objective}};
  return t;
}

Recipe Recipe::load(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw UsageError(fmt::format("recipe '{}' not found", path), "configs/ holds example recipes");
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path, overrides);
}

Recipe Recipe::parse(const std::string& text, const std::string& name, const std::vector<std::string>& overrides) {
  toml::table doc;
  try {
    doc = toml::parse(text, name);
  } catch (const toml::parse_error& e) {
    auto w = location_of(e.source(), name);
    throw UsageError(fmt::format("{}: TOML syntax error: {}", w.str(), e.description()));
  }
  std::vector<std::string> errors;
  std::set<std::string> overridden;
  for (const auto& o : overrides) {
    apply_override(doc, o, errors);
    auto eq = o.find('=');
    overridden.insert(o.substr(0, eq));
  }

  Recipe r;
  r.path_ = name;
  const auto& cores = core_tables();
  const auto& comps = component_tables();
  std::vector<std::string> table_names;
  for (const auto& [n, _] : cores) table_names.push_back(n);
  for (const auto& [n, _] : comps) table_names.push_back(n);
  table_names.push_back("datasets");

  for (auto&& [k, v] : doc) {
    const std::string key(k.str());
    const auto where = location_of(k.source(), name);
    if (key == "datasets") {
      auto* arr = v.as_array();
      if (!arr || !arr->is_array_of_tables()) {
        errors.push_back(fmt::format("{}: datasets must be an array of tables: [[datasets]]", where.str()));
        continue;
      }
      for (size_t i = 0; i < arr->size(); ++i) {
        RawTable raw;
        collect_table(*(*arr)[i].as_table(), fmt::format("datasets[{}]", i), name, raw, errors);
        r.datasets_.push_back(validate_table(raw, cores.at("datasets"), errors));
      }
      continue;
    }
    if (key == "export") {
      auto* arr = v.as_array();
      if (!arr || !arr->is_array_of_tables()) {
        errors.push_back(fmt::format("{}: export must be an array of tables: [[export]]", where.str()));
        continue;
      }
      for (size_t i = 0; i < arr->size(); ++i) {
        RawTable raw;
        const std::string tname = fmt::format("export[{}]", i);
        collect_table(*(*arr)[i].as_table(), tname, name, raw, errors);
        r.raw_components_[tname] = raw;
      }
      continue;
    }
    if (!v.is_table()) {
      std::string msg = fmt::format("{}: '{}' must be a table", where.str(), key);
      // A stray top-level key usually belongs in a table.
      for (const auto& [tname, keys] : cores)
        for (const auto& spec : keys)
          if (spec.name == key) msg += fmt::format("; did you mean to put it under [{}]?", tname);
      errors.push_back(msg);
      continue;
    }
    RawTable raw;
    collect_table(*v.as_table(), key, name, raw, errors);
    if (cores.count(key) && key != "datasets") {
      r.sections_[key] = validate_table(raw, cores.at(key), errors);
      if (key == "training") check_device_setting(r.sections_[key], errors);  // auto, cpu, cuda or cuda:N
    } else if (comps.count(key)) {
      r.raw_components_[key] = raw;
    } else {
      std::string msg = fmt::format("{}: unknown table [{}]", where.str(), key);
      if (auto s = closest(key, table_names); !s.empty()) msg += fmt::format(", did you mean [{}]?", s);
      else msg += fmt::format(" (tables: {})", fmt::join(table_names, ", "));
      errors.push_back(msg);
    }
  }
  // Defaults for core tables the file leaves out.
  for (const auto& [tname, keys] : cores) {
    if (tname == "datasets" || r.sections_.count(tname)) continue;
    RawTable empty;
    empty.name = tname;
    empty.where = SourceLocation{name, 0, 0};
    r.sections_[tname] = validate_table(empty, keys, errors);
  }
  // Component tables must name their plugin.
  for (auto& [tname, raw] : r.raw_components_) {
    auto base = tname.substr(0, tname.find('['));
    auto it = raw.values.find("plugin");
    if (it == raw.values.end() || !std::holds_alternative<std::string>(it->second.value)) {
      errors.push_back(fmt::format("{}: [{}] plugin: missing required key (the name of the {} plugin to use, "
                                   "e.g. plugin = \"{}\")",
                                   raw.where.str(), tname, to_string(comps.at(base)),
                                   base == "model" ? kDefaultModelPlugin : base == "adapter" ? kDefaultAdapterPlugin : "..."));
    }
  }
  if (!errors.empty()) throw UsageError(fmt::format("{}", fmt::join(errors, "\n")), "fix the lines above; "
                                        "`mftk plugins --keys NAME` lists a plugin's keys");
  return r;
}

void Recipe::resolve(Registry& registry) {
  std::vector<std::string> errors;
  const auto& comps = component_tables();
  for (auto& [tname, raw] : raw_components_) {
    const auto base = tname.substr(0, tname.find('['));
    const Kind kind = comps.at(base);
    const auto plugin = std::get<std::string>(raw.values.at("plugin").value);
    try {
      const auto& info = registry.find(kind, plugin);
      std::vector<KeySpec> keys = info.spec.keys;
      // Every export table says where to write (the core hands it to the exporter as ExportJob::out)
      // and may bound the artefact's parity with the trained model (max_kl).
      if (base == "export") {
        const auto core_keys = export_core_keys();
        keys.insert(keys.begin(), core_keys.begin(), core_keys.end());
      }
      ComponentRef ref{tname, kind, plugin,
                       validate_table(raw, keys, errors,
                                      fmt::format("`mftk plugins --keys {}` lists the keys of '{}'", plugin, plugin))};
      if (base == "export") exports_.push_back(std::move(ref));
      else components_[tname] = std::move(ref);
    } catch (const UsageError& e) {
      errors.push_back(fmt::format("{}: [{}] plugin: {}", raw.values.at("plugin").where.str(), tname, e.what()));
    }
  }
  if (!errors.empty()) throw UsageError(fmt::format("{}", fmt::join(errors, "\n")));
  resolved_ = true;
}

std::string Recipe::directory() const {
  auto p = fs::path(path_).parent_path();
  return p.empty() ? "." : p.string();
}

std::string Recipe::resolve_path(const std::string& relative) const {
  // Relative paths are relative to the working directory, as in Axolotl:
  // recipes in configs/ name data/ and out/ from the project root.
  return relative;
}

const Config& Recipe::section(const std::string& table) const {
  auto it = sections_.find(table);
  if (it == sections_.end()) throw Error(fmt::format("internal: no core table [{}]", table));
  return it->second;
}

const ComponentRef* Recipe::component(const std::string& table) const {
  if (!resolved_) throw Error("internal: Recipe::component() before resolve()");
  auto it = components_.find(table);
  return it == components_.end() ? nullptr : &it->second;
}

}  // namespace mftk::core
