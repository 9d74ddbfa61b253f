// Finds plugin libraries, checks their handshake, and creates components
// by kind and name. Private to the core (plugins see only mftk::Registrar).
//
// defines: mftk::core::PluginLoadStatus, mftk::core::PluginLoadError, mftk::core::PluginLibraryStatus,
//          mftk::core::Registry
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mftk/error.h"
#include "mftk/plugin.h"

namespace mftk::core {

// Why a plugin library did not load, as a value: callers (`mftk plugins`,
// `mftk plugin check`, tests) branch on it rather than on a message's words,
// which are free to change.
enum class PluginLoadStatus {
  ok,
  not_found,             // no file at that path
  failed_to_open,        // the dynamic loader refused it (not a shared library, missing dependency)
  not_a_plugin,          // a shared library without the mftk entry point
  bad_handshake,         // the entry returned NULL, a short handshake struct or no register function
  abi_mismatch,          // built against another plugin ABI version
  fingerprint_mismatch,  // built with another libtorch, compiler or standard library
  duplicate_name,        // a library of the same plugin name is already loaded
  registration_failed,   // its register function threw
};

// The words `mftk plugins` prints: "ok", "not an mftk plugin", "ABI mismatch", ...
const char* to_string(PluginLoadStatus status);

// A plugin library that could not be loaded: a UsageError (exit 2) that also
// says why as a PluginLoadStatus.
class PluginLoadError : public UsageError {
 public:
  PluginLoadError(PluginLoadStatus status, std::string message, std::string hint = {})
      : UsageError(std::move(message), std::move(hint)), status_(status) {}
  PluginLoadStatus status() const { return status_; }

 private:
  PluginLoadStatus status_;
};

// What `mftk plugins` prints for every library file it finds.
struct PluginLibraryStatus {
  std::string path;
  std::string name;      // from the handshake, if it got that far
  std::string version;
  PluginLoadStatus status = PluginLoadStatus::ok;
  std::string detail;    // the full error, empty when ok
  std::vector<std::string> components;  // "model:mistral"
};

struct ComponentInfo {
  ComponentSpec spec;
  std::string library_path;  // "" for built-ins
};

// Libraries it loads stay loaded until the process ends, after the Registry
// is gone: what a plugin made or threw may still need its code.
class Registry : public Registrar {
 public:
  // extra_search_paths come first (recipe [plugins] search_paths).
  explicit Registry(std::vector<std::string> extra_search_paths = {});
  ~Registry() override;

  // Search order: extra paths, $MFTK_PLUGIN_PATH, <libmftk_core dir>/mftk/plugins
  // (the build tree and an installed tree both), the install prefix's plugin dir.
  const std::vector<std::string>& search_paths() const { return search_paths_; }

  // Loads one library file; throws PluginLoadError (a UsageError) with the reason.
  void load_library(const std::string& path);
  // The component `name` of `kind`, loading libmftk-<name>.so or, failing
  // that, every library on the search path. Throws UsageError listing the
  // registered names of that kind and the paths searched.
  const ComponentInfo& find(Kind kind, const std::string& name);
  // Loads every library on the search path and reports each.
  std::vector<PluginLibraryStatus> scan();
  std::vector<const ComponentInfo*> components(Kind kind) const;

  template <class Interface>
  std::unique_ptr<Interface> create(Kind kind, const std::string& name, const Config& config);

  // Registrar
  void add_model(ComponentSpec spec, Factory<Model> make) override;
  void add_adapter(ComponentSpec spec, Factory<Adapter> make) override;
  void add_quantizer(ComponentSpec spec, Factory<Quantizer> make) override;
  void add_packer(ComponentSpec spec, Factory<Packer> make) override;
  void add_optimizer(ComponentSpec spec, Factory<Optimizer> make) override;
  void add_exporter(ComponentSpec spec, Factory<Exporter> make) override;
  void add_objective(ComponentSpec spec, Factory<Objective> make) override;

 private:
  struct Impl;
  void add(ComponentSpec spec, std::shared_ptr<void> factory);
  std::shared_ptr<void> factory(Kind kind, const std::string& name);

  std::vector<std::string> search_paths_;
  std::unique_ptr<Impl> impl_;  // the libraries themselves stay loaded after it (registry.cpp)
};

template <class Interface>
std::unique_ptr<Interface> Registry::create(Kind kind, const std::string& name, const Config& config) {
  auto f = std::static_pointer_cast<Factory<Interface>>(factory(kind, name));
  try {
    auto made = (*f)(config);
    if (!made) throw Error("the factory returned nothing");
    return made;
  } catch (const UsageError&) {
    throw;
  } catch (const std::exception& e) {
    throw Error(fmt::format("plugin '{}' ({}) failed to create its {}: {}", name,
                            find(kind, name).library_path, to_string(kind), e.what()));
  }
}

// The host's own fingerprint (what plugins must match).
const char* host_fingerprint();

}  // namespace mftk::core
