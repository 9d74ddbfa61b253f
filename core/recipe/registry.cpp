// Plugin discovery and loading (Boost.DLL) with the versioned C handshake
// of abi.h. Libraries are never unloaded: everything a plugin creates may
// hold its code (vtables, deleters), and so may an exception it threw,
// which can outlive the Registry that loaded it (a CLI command's registry
// is gone by the time main prints the error). Every library whose code we
// ran therefore stays mapped until the process ends (KeptLibraries).
#include "registry.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <set>
#include <sstream>

#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>

namespace mftk {

const char* to_string(Kind k) {
  switch (k) {
    case Kind::model: return "model";
    case Kind::adapter: return "adapter";
    case Kind::quantizer: return "quantizer";
    case Kind::packer: return "packer";
    case Kind::optimizer: return "optimizer";
    case Kind::exporter: return "exporter";
    case Kind::objective: return "objective";
  }
  return "?";
}

}  // namespace mftk

namespace mftk::core {

namespace fs = std::filesystem;

const char* to_string(PluginLoadStatus status) {
  switch (status) {
    case PluginLoadStatus::ok: return "ok";
    case PluginLoadStatus::not_found: return "not found";
    case PluginLoadStatus::failed_to_open: return "failed to open";
    case PluginLoadStatus::not_a_plugin: return "not an mftk plugin";
    case PluginLoadStatus::bad_handshake: return "bad handshake";
    case PluginLoadStatus::abi_mismatch: return "ABI mismatch";
    case PluginLoadStatus::fingerprint_mismatch: return "fingerprint mismatch";
    case PluginLoadStatus::duplicate_name: return "duplicate name";
    case PluginLoadStatus::registration_failed: return "register failed";
  }
  return "?";
}

const char* host_fingerprint() { return MFTK_BUILD_FINGERPRINT; }

namespace {

constexpr const char* kLibraryPrefix = "libmftk-";
constexpr const char* kLibrarySuffix = ".so";

std::string core_library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&host_fingerprint), &info) && info.dli_fname)
    return fs::path(info.dli_fname).parent_path().string();
  return {};
}

std::map<std::string, std::string> parse_fingerprint(const std::string& s) {
  std::map<std::string, std::string> out;
  std::stringstream ss(s);
  std::string field;
  while (std::getline(ss, field, ';')) {
    auto eq = field.find('=');
    if (eq != std::string::npos) out[field.substr(0, eq)] = field.substr(eq + 1);
  }
  return out;
}

// "" when equal, else a sentence naming the first field that differs.
std::string fingerprint_difference(const std::string& plugin, const std::string& host) {
  auto p = parse_fingerprint(plugin), h = parse_fingerprint(host);
  static const std::map<std::string, std::string> what = {
      {"torch", "libtorch"}, {"sdk", "mftk SDK"}, {"compiler", "compiler"}, {"cxx11abi", "_GLIBCXX_USE_CXX11_ABI"}};
  for (const auto& [key, host_value] : h) {
    auto it = p.find(key);
    std::string plugin_value = it == p.end() ? "(missing)" : it->second;
    if (plugin_value != host_value) {
      auto w = what.count(key) ? what.at(key) : key;
      return fmt::format("built with {} {}, this mftk uses {} (fingerprint field: {})", w, plugin_value,
                         host_value, key);
    }
  }
  return {};
}

// Libraries stay loaded for the life of the process, whichever Registry
// loaded them: the list is leaked on purpose, so that no static destructor
// dlcloses a library while objects, exceptions or atexit handlers from it
// may still be around. Keyed by canonical path: a second Registry loading
// the same file adds no entry.
class KeptLibraries {
 public:
  static KeptLibraries& instance() {
    static KeptLibraries* kept = new KeptLibraries();  // never destroyed
    return *kept;
  }
  void keep(const std::string& key, boost::dll::shared_library library) {
    std::lock_guard<std::mutex> lock(mutex_);
    libraries_.emplace(key, std::move(library));
  }

 private:
  std::mutex mutex_;
  std::map<std::string, boost::dll::shared_library> libraries_;
};

bool is_plugin_file(const fs::path& p) {
  auto name = p.filename().string();
  return name.rfind(kLibraryPrefix, 0) == 0 && name.size() > 3 &&
         name.compare(name.size() - 3, 3, kLibrarySuffix) == 0;
}

}  // namespace

struct Registry::Impl {
  // The libraries this registry loaded (their handles live on in
  // KeptLibraries: factories and what they made may hold their code).
  std::set<std::string> libraries;                              // canonical paths
  std::map<std::string, std::string> library_names;             // plugin name -> path
  std::map<std::pair<Kind, std::string>, ComponentInfo> components;
  std::map<std::pair<Kind, std::string>, std::shared_ptr<void>> factories;
  std::string loading_path;  // library whose register_components is running
  std::vector<std::string> registered_now;
  bool scanned = false;
};

Registry::Registry(std::vector<std::string> extra_search_paths) : impl_(std::make_unique<Impl>()) {
  std::vector<std::string> paths = std::move(extra_search_paths);
  if (const char* env = std::getenv("MFTK_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string p;
    while (std::getline(ss, p, ':'))
      if (!p.empty()) paths.push_back(p);
  }
  if (auto dir = core_library_dir(); !dir.empty()) paths.push_back((fs::path(dir) / "mftk" / "plugins").string());
#ifdef MFTK_INSTALL_PLUGIN_DIR
  paths.push_back(MFTK_INSTALL_PLUGIN_DIR);
#endif
  std::set<std::string> seen;
  for (auto& p : paths) {
    std::error_code ec;
    auto canon = fs::weakly_canonical(p, ec).string();
    if (seen.insert(ec ? p : canon).second) search_paths_.push_back(p);
  }
}

Registry::~Registry() = default;

void Registry::load_library(const std::string& path) {
  std::error_code fec;
  const std::string key = fs::weakly_canonical(path, fec).string();
  if (impl_->libraries.count(key)) return;

  boost::dll::shared_library lib;
  std::error_code ec;  // BOOST_DLL_USE_STD_FS: std error codes
  lib.load(boost::dll::fs::path(path), boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
  if (ec) {
    const char* why = dlerror();
    std::error_code exists_ec;
    const auto status =
        fs::exists(path, exists_ec) ? PluginLoadStatus::failed_to_open : PluginLoadStatus::not_found;
    throw PluginLoadError(status,
                          fmt::format("could not load plugin library '{}': {}", path, why ? why : ec.message()),
                          "check that the file is a shared library built for this machine and that its "
                          "dependencies are installed (ldd shows missing ones)");
  }
  if (!lib.has(MFTK_PLUGIN_ENTRY_SYMBOL))
    throw PluginLoadError(PluginLoadStatus::not_a_plugin,
                          fmt::format("file is not an mftk plugin: {} not found in '{}'", MFTK_PLUGIN_ENTRY_SYMBOL, path),
                          "plugins export their entry with the MFTK_PLUGIN(...) macro from <mftk/plugin.h>");
  auto entry = lib.get<const MftkPluginInfo*()>(MFTK_PLUGIN_ENTRY_SYMBOL);
  const MftkPluginInfo* info = entry();
  if (!info)
    throw PluginLoadError(PluginLoadStatus::bad_handshake,
                          fmt::format("plugin '{}': {} returned NULL", path, MFTK_PLUGIN_ENTRY_SYMBOL));
  // abi_version is the first field of every handshake version: safe to read.
  if (info->abi_version != MFTK_PLUGIN_ABI_VERSION)
    throw PluginLoadError(PluginLoadStatus::abi_mismatch,
                          fmt::format("plugin '{}' ({}): ABI version {}, this mftk expects {}",
                                      info->name ? info->name : "?", path, info->abi_version,
                                      MFTK_PLUGIN_ABI_VERSION),
                          fmt::format("rebuild the plugin against the mftk {} SDK", MFTK_SDK_VERSION));
  if (info->struct_size < sizeof(MftkPluginInfo))
    throw PluginLoadError(PluginLoadStatus::bad_handshake,
                          fmt::format("plugin '{}': handshake struct is {} bytes, expected {}", path,
                                      info->struct_size, sizeof(MftkPluginInfo)));
  const std::string name = info->name ? info->name : "";
  if (auto diff = fingerprint_difference(info->build_fingerprint ? info->build_fingerprint : "", host_fingerprint());
      !diff.empty())
    throw PluginLoadError(PluginLoadStatus::fingerprint_mismatch, fmt::format("plugin '{}' ({}): {}", name, path, diff),
                          "rebuild the plugin against the libtorch and compiler this mftk was built with");
  if (auto it = impl_->library_names.find(name); it != impl_->library_names.end())
    throw PluginLoadError(PluginLoadStatus::duplicate_name,
                          fmt::format("two plugin libraries are both named '{}': '{}' and '{}'", name, it->second, path),
                          "remove one of them from the plugin search path");
  if (!info->register_components)
    throw PluginLoadError(PluginLoadStatus::bad_handshake,
                          fmt::format("plugin '{}' ({}): no register function", name, path));

  impl_->loading_path = path;
  impl_->registered_now.clear();
  // From here the plugin's own code runs and may leave things behind (a
  // factory registered before a throw, the exception itself): keep it loaded.
  KeptLibraries::instance().keep(key, lib);
  try {
    info->register_components(static_cast<Registrar*>(this));
  } catch (const std::exception& e) {
    impl_->loading_path.clear();
    throw PluginLoadError(PluginLoadStatus::registration_failed,
                          fmt::format("plugin '{}' ({}) failed to register its components: {}", name, path, e.what()));
  }
  impl_->loading_path.clear();
  impl_->library_names[name] = path;
  impl_->libraries.insert(key);
}

void Registry::add(ComponentSpec spec, std::shared_ptr<void> factory) {
  const auto id = std::make_pair(spec.kind, spec.name);
  for (char c : spec.name)
    if (!(std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '_' ||
          c == '.'))
      throw Error(fmt::format("component name '{}' must be lowercase [a-z0-9_.]", spec.name));
  if (auto it = impl_->components.find(id); it != impl_->components.end())
    throw Error(fmt::format("{} '{}' is registered twice: by '{}' and by '{}'", to_string(spec.kind), spec.name,
                            it->second.library_path.empty() ? "mftk (built in)" : it->second.library_path,
                            impl_->loading_path.empty() ? "mftk (built in)" : impl_->loading_path));
  impl_->registered_now.push_back(fmt::format("{}:{}", to_string(spec.kind), spec.name));
  impl_->components[id] = ComponentInfo{std::move(spec), impl_->loading_path};
  impl_->factories[id] = std::move(factory);
}

void Registry::add_model(ComponentSpec s, Factory<Model> f) { s.kind = Kind::model; add(std::move(s), std::make_shared<Factory<Model>>(std::move(f))); }
void Registry::add_adapter(ComponentSpec s, Factory<Adapter> f) { s.kind = Kind::adapter; add(std::move(s), std::make_shared<Factory<Adapter>>(std::move(f))); }
void Registry::add_quantizer(ComponentSpec s, Factory<Quantizer> f) { s.kind = Kind::quantizer; add(std::move(s), std::make_shared<Factory<Quantizer>>(std::move(f))); }
void Registry::add_packer(ComponentSpec s, Factory<Packer> f) { s.kind = Kind::packer; add(std::move(s), std::make_shared<Factory<Packer>>(std::move(f))); }
void Registry::add_optimizer(ComponentSpec s, Factory<Optimizer> f) { s.kind = Kind::optimizer; add(std::move(s), std::make_shared<Factory<Optimizer>>(std::move(f))); }
void Registry::add_exporter(ComponentSpec s, Factory<Exporter> f) { s.kind = Kind::exporter; add(std::move(s), std::make_shared<Factory<Exporter>>(std::move(f))); }
void Registry::add_objective(ComponentSpec s, Factory<Objective> f) { s.kind = Kind::objective; add(std::move(s), std::make_shared<Factory<Objective>>(std::move(f))); }

std::vector<PluginLibraryStatus> Registry::scan() {
  std::vector<PluginLibraryStatus> out;
  std::set<std::string> seen_files;
  for (const auto& dir : search_paths_) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file() && is_plugin_file(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      if (!seen_files.insert(f.filename().string()).second) continue;  // earlier path wins
      PluginLibraryStatus st;
      st.path = f.string();
      try {
        std::error_code cec;
        const auto key = fs::weakly_canonical(f, cec).string();
        const bool already = impl_->libraries.count(key) != 0;
        if (!already) load_library(st.path);
        st.status = PluginLoadStatus::ok;
        for (const auto& [name, path] : impl_->library_names)
          if (path == st.path || fs::weakly_canonical(path, cec).string() == key) st.name = name;
        for (const auto& [id, c] : impl_->components)
          if (c.library_path == st.path || fs::weakly_canonical(c.library_path, cec).string() == key)
            st.components.push_back(fmt::format("{}:{}", to_string(id.first), id.second));
      } catch (const PluginLoadError& e) {
        st.detail = e.what();
        st.status = e.status();
      } catch (const std::exception& e) {
        // Not one of load_library's own refusals (the loader library or the
        // file system threw): the library did not open.
        st.detail = e.what();
        st.status = PluginLoadStatus::failed_to_open;
      }
      // Version string from the handshake, even for refused plugins.
      if (void* h = dlopen(st.path.c_str(), RTLD_LAZY | RTLD_LOCAL | RTLD_NOLOAD)) {
        if (auto fn = reinterpret_cast<MftkPluginEntryFn>(dlsym(h, MFTK_PLUGIN_ENTRY_SYMBOL))) {
          if (const MftkPluginInfo* info = fn()) {
            if (info->name && st.name.empty()) st.name = info->name;
            if (info->version && info->abi_version == MFTK_PLUGIN_ABI_VERSION) st.version = info->version;
            else st.version = fmt::format("abi {}", info->abi_version);
          }
        }
        dlclose(h);
      }
      out.push_back(std::move(st));
    }
  }
  impl_->scanned = true;
  return out;
}

const ComponentInfo& Registry::find(Kind kind, const std::string& name) {
  const auto id = std::make_pair(kind, name);
  if (auto it = impl_->components.find(id); it != impl_->components.end()) return it->second;
  // The conventional file first, then everything on the path.
  for (const auto& dir : search_paths_) {
    fs::path candidate = fs::path(dir) / (kLibraryPrefix + name + kLibrarySuffix);
    std::error_code ec;
    if (fs::exists(candidate, ec)) {
      load_library(candidate.string());
      break;
    }
  }
  if (auto it = impl_->components.find(id); it != impl_->components.end()) return it->second;
  if (!impl_->scanned) scan();
  if (auto it = impl_->components.find(id); it != impl_->components.end()) return it->second;

  std::vector<std::string> names;
  for (const auto* c : components(kind)) names.push_back(c->spec.name);
  throw UsageError(fmt::format("unknown {} plugin '{}'. Registered {}s: {}. Searched: {}", to_string(kind), name,
                               to_string(kind), names.empty() ? "(none)" : fmt::format("{}", fmt::join(names, ", ")),
                               fmt::join(search_paths_, ", ")),
                   "check the spelling, or add the folder holding libmftk-" + name +
                       ".so to MFTK_PLUGIN_PATH; `mftk plugins` lists what is found");
}

std::vector<const ComponentInfo*> Registry::components(Kind kind) const {
  std::vector<const ComponentInfo*> out;
  for (const auto& [id, c] : impl_->components)
    if (id.first == kind) out.push_back(&c);
  return out;  // std::map order: sorted by name
}

std::shared_ptr<void> Registry::factory(Kind kind, const std::string& name) {
  find(kind, name);
  return impl_->factories.at({kind, name});
}

}  // namespace mftk::core
