// Writing a plugin: declare components, register them, export the entry.
//
// defines: mftk::Kind, mftk::ComponentSpec, mftk::Factory, mftk::Registrar,
//          MFTK_BUILD_FINGERPRINT, MFTK_PLUGIN
//
//   static void register_components(mftk::Registrar& r) {
//     r.add_exporter({mftk::Kind::exporter, "acme.csv", "writes ...", {keys...}},
//                    [](const mftk::Config& c) { return std::make_unique<CsvExporter>(c); });
//   }
//   MFTK_PLUGIN("acme_csv", "1.0.0", register_components)
//
// Components are registered explicitly from the entry callback, after the
// loader checked the ABI version and build fingerprint: no static
// initialisers, so loading order is clear and a duplicate is a clean error.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/version.h>

#include "mftk/abi.h"
#include "mftk/config.h"

namespace mftk {

class Model;
class Adapter;
class Quantizer;
class Packer;
class Optimizer;
class Exporter;
class Objective;

enum class Kind { model, adapter, quantizer, packer, optimizer, exporter, objective };
const char* to_string(Kind k);

struct ComponentSpec {
  Kind kind = Kind::model;
  std::string name;     // lowercase [a-z0-9_.]; third parties use "vendor.name"
  std::string summary;  // one line for `mftk plugins`
  std::vector<KeySpec> keys;  // recipe keys besides `plugin`
  // Capabilities the core asks about instead of spelling a component's name
  // (sdk/docs/writing-a-plugin.md lists the ones it knows, e.g. a packer's
  // "respects_sliding_window"); a trait the core does not know is ignored.
  std::vector<std::string> traits;
  bool has_trait(const std::string& trait) const {
    for (const auto& t : traits)
      if (t == trait) return true;
    return false;
  }
};

template <class Interface>
using Factory = std::function<std::unique_ptr<Interface>(const Config&)>;

class Registrar {
 public:
  virtual ~Registrar() = default;
  virtual void add_model(ComponentSpec spec, Factory<Model> make) = 0;
  virtual void add_adapter(ComponentSpec spec, Factory<Adapter> make) = 0;
  virtual void add_quantizer(ComponentSpec spec, Factory<Quantizer> make) = 0;
  virtual void add_packer(ComponentSpec spec, Factory<Packer> make) = 0;
  virtual void add_optimizer(ComponentSpec spec, Factory<Optimizer> make) = 0;
  virtual void add_exporter(ComponentSpec spec, Factory<Exporter> make) = 0;
  virtual void add_objective(ComponentSpec spec, Factory<Objective> make) = 0;
};

}  // namespace mftk

#define MFTK_STR_(x) #x
#define MFTK_STR(x) MFTK_STR_(x)
#if defined(__clang__)
#define MFTK_COMPILER_ID "clang-" MFTK_STR(__clang_major__)
#elif defined(__GNUC__)
#define MFTK_COMPILER_ID "gcc-" MFTK_STR(__GNUC__)
#else
#define MFTK_COMPILER_ID "unknown"
#endif

// Everything that must match between core and plugin for C++ objects
// (tensors, std::string, exceptions) to cross the boundary safely.
#define MFTK_BUILD_FINGERPRINT                                              \
  "sdk=" MFTK_SDK_VERSION ";torch=" TORCH_VERSION ";compiler=" MFTK_COMPILER_ID \
  ";cxx11abi=" MFTK_STR(_GLIBCXX_USE_CXX11_ABI)

#define MFTK_PLUGIN_EXPORT extern "C" __attribute__((visibility("default")))

// Writes the plugin's entry point. register_fn: void(mftk::Registrar&).
#define MFTK_PLUGIN(name_, version_, register_fn)                               \
  static void mftk_plugin_register_thunk_(void* r) {                           \
    register_fn(*static_cast<::mftk::Registrar*>(r));                          \
  }                                                                            \
  MFTK_PLUGIN_EXPORT const MftkPluginInfo* mftk_plugin_info(void) {            \
    static const MftkPluginInfo info = {MFTK_PLUGIN_ABI_VERSION,               \
                                        (uint32_t)sizeof(MftkPluginInfo),      \
                                        name_,                                 \
                                        version_,                              \
                                        MFTK_BUILD_FINGERPRINT,                \
                                        &mftk_plugin_register_thunk_};         \
    return &info;                                                              \
  }
