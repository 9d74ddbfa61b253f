// mftk plugin check [NAME|PATH ...]: the conformance kit (core/plugin_check).
// Loads each plugin, runs the checks of every component it registers and
// prints one line per component and check; exit 1 when any check fails.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mftk/error.h"
#include "plugin_check/plugin_check.h"
#include "registry.h"

namespace fs = std::filesystem;

namespace mftk::cli {
namespace {

constexpr Kind kKinds[] = {Kind::model,     Kind::adapter,  Kind::quantizer, Kind::packer,
                           Kind::optimizer, Kind::exporter, Kind::objective};

// A scratch folder under $TMPDIR, made fresh (mkdtemp) and removed at the end.
class ScratchFolder {
 public:
  ScratchFolder() {
    std::string pattern = (fs::temp_directory_path() / "mftk-plugin-check-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw Error(fmt::format("could not create a scratch folder like {}", pattern));
    path_ = pattern;
  }
  ~ScratchFolder() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct Tally {
  int passed = 0, failed = 0, skipped = 0;
};

void print_line(const std::string& plugin, const core::CheckResult& r, Tally& tally) {
  const char* word = r.outcome == core::CheckOutcome::pass ? "PASS" : r.outcome == core::CheckOutcome::fail ? "FAIL" : "SKIP";
  (r.outcome == core::CheckOutcome::pass ? tally.passed : r.outcome == core::CheckOutcome::fail ? tally.failed : tally.skipped)++;
  // A pass shows what it measured in brackets; a failure or skip says why after a colon.
  const std::string detail = r.detail.empty()                       ? ""
                             : r.outcome == core::CheckOutcome::pass ? " (" + r.detail + ")"
                                                                     : ": " + r.detail;
  std::printf("%s  %-18s %-28s %s%s\n", word, plugin.c_str(), r.component.c_str(), r.check.c_str(), detail.c_str());
  std::fflush(stdout);
}

bool looks_like_path(const std::string& arg) {
  return arg.find('/') != std::string::npos || (arg.size() > 3 && arg.compare(arg.size() - 3, 3, ".so") == 0);
}

std::string canonical(const std::string& path) {
  std::error_code ec;
  return fs::weakly_canonical(path, ec).string();
}

// One plugin library to check: its name and the components it registered.
struct Target {
  std::string plugin;
  std::string load_error;  // non-empty: the library did not load
  std::vector<const core::ComponentInfo*> components;
};

std::vector<const core::ComponentInfo*> components_of(const core::Registry& registry, const std::string& library) {
  std::vector<const core::ComponentInfo*> out;
  const std::string key = canonical(library);
  for (Kind k : kKinds)
    for (const auto* c : registry.components(k))
      if (!c->library_path.empty() && canonical(c->library_path) == key) out.push_back(c);
  return out;
}

std::vector<Target> resolve(core::Registry& registry, const std::vector<std::string>& args) {
  std::vector<Target> targets;
  std::vector<std::string> names;
  for (const auto& a : args) {
    if (!looks_like_path(a)) {
      names.push_back(a);
      continue;
    }
    if (!fs::exists(a)) throw UsageError(fmt::format("mftk plugin check: {}: no such file", a), "pass a plugin .so file or a plugin name from `mftk plugins`");
    // libmftk-acme.so -> acme (the handshake's name, by the naming rule the registry follows)
    std::string stem = fs::path(a).stem().string();
    for (const char* prefix : {"libmftk-", "lib"})
      if (stem.rfind(prefix, 0) == 0) {
        stem = stem.substr(std::string(prefix).size());
        break;
      }
    Target t{stem, "", {}};
    try {
      registry.load_library(a);
    } catch (const core::PluginLoadError& e) {
      t.load_error = fmt::format("{}: {}", core::to_string(e.status()), e.what());
    }
    t.components = components_of(registry, a);
    targets.push_back(std::move(t));
  }
  if (!names.empty() || args.empty()) {
    const auto libs = registry.scan();
    std::vector<std::string> unmatched = names;
    for (const auto& lib : libs) {
      bool wanted = args.empty();
      for (const auto& n : names) {
        bool match = lib.name == n;
        for (const auto& c : lib.components) match = match || c.substr(c.find(':') + 1) == n;
        if (match) {
          wanted = true;
          unmatched.erase(std::remove(unmatched.begin(), unmatched.end(), n), unmatched.end());
        }
      }
      if (!wanted) continue;
      Target t{lib.name.empty() ? fs::path(lib.path).stem().string() : lib.name, "", {}};
      if (lib.status != core::PluginLoadStatus::ok)
        t.load_error = fmt::format("{}: {}", core::to_string(lib.status), lib.detail);
      t.components = components_of(registry, lib.path);
      targets.push_back(std::move(t));
    }
    if (!unmatched.empty()) {
      std::vector<std::string> known;
      for (const auto& lib : libs) known.push_back(lib.name);
      throw UsageError(fmt::format("mftk plugin check: no plugin named {} on the search path (found: {})",
                                   fmt::join(unmatched, ", "), fmt::join(known, ", ")),
                       "pass a plugin's library name or component name, or the path of its .so file");
    }
    if (args.empty() && targets.empty())
      throw UsageError("mftk plugin check: no plugin libraries found", "set MFTK_PLUGIN_PATH or pass a .so file");
  }
  return targets;
}

void run_checks(const std::vector<std::string>& args) {
  // Plugins log while they work (init, export); the check's lines are the report.
  if (spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  core::Registry registry;
  const auto targets = resolve(registry, args);
  ScratchFolder scratch;
  Tally tally;
  for (const auto& t : targets) {
    if (!t.load_error.empty()) {
      print_line(t.plugin, {"library", "loads", core::CheckOutcome::fail, t.load_error.substr(0, t.load_error.find('\n'))}, tally);
      continue;
    }
    if (t.components.empty()) {
      print_line(t.plugin, {"library", "registers components", core::CheckOutcome::fail, "it registered none"}, tally);
      continue;
    }
    for (const auto* c : t.components)
      core::check_component(registry, *c, scratch.path(),
                            [&](const core::CheckResult& r) { print_line(t.plugin, r, tally); });
  }
  std::printf("\n%d passed, %d failed, %d skipped\n", tally.passed, tally.failed, tally.skipped);
  std::fflush(stdout);
  if (tally.failed > 0)
    throw Error(fmt::format("{} plugin check(s) failed", tally.failed),
                "each FAIL line names the component, the check and what it saw; sdk/docs/writing-a-plugin.md "
                "says what each check expects");
}

}  // namespace

void add_plugin_commands(CLI::App& app) {
  auto* plugin = app.add_subcommand("plugin", "work with plugins: check");
  plugin->require_subcommand(1);
  auto args = std::make_shared<std::vector<std::string>>();
  auto* check = plugin->add_subcommand(
      "check", "run the conformance checks on plugins (names or .so paths; none: every plugin found)");
  check->add_option("plugins", *args, "plugin names (as `mftk plugins` lists them) or .so files");
  check->callback([args] { run_checks(*args); });
}

}  // namespace mftk::cli
