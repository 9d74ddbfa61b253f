// Host services the SDK declares and the core implements (mftk/model.h):
// plugins reach another plugin's component through here, never by linking it.
#include <memory>
#include <string>

#include "defaults.h"
#include "mftk/model.h"
#include "mftk/plugin.h"
#include "model_tools.h"
#include "registry.h"

namespace mftk {

std::unique_ptr<Model> open_model(const std::string& dir, const std::string& plugin) {
  const std::string name = plugin.empty() ? std::string(core::kDefaultModelPlugin) : plugin;
  core::Registry registry;
  auto model = registry.create<Model>(Kind::model, name,
                                      core::component_config(registry, Kind::model, name, "model", {{"path", dir}}));
  model->load_config(dir);
  return model;
}

}  // namespace mftk
