// example.dora (see dora_adapter.h). The PEFT facts used here, read from
// PEFT's source (src/peft/tuners/lora/dora.py, layer.py and
// utils/save_and_load.py; Apache-2.0, see THIRD_PARTY_NOTICES.md):
// DoRA is a LoRA config with "use_dora": true; the magnitude starts as the
// row norms of W + s B A (B = 0, so of W); the norm is over the input dim,
// one per output row, and is detached in forward; merge writes
// (m / ||W + s B A||) * (W + s B A); file names as in dora_adapter.h.
#include "dora_adapter.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <mftk/error.h>
#include <mftk/log.h>
#include <mftk/model.h>
#include <mftk/output_path.h>
#include <mftk/plugin.h>
#include <mftk/safetensors.h>

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace example_dora {
namespace {

constexpr const char* kPeftPrefix = "base_model.model.";
constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";
constexpr const char* kAllLinear = "all-linear";
constexpr const char* kMagnitude = "lora_magnitude_vector";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// PEFT's rule for a target_modules entry: the module name equals it or ends with "." + it.
bool name_matches(const std::string& name, const std::string& entry) {
  return name == entry || ends_with(name, "." + entry);
}

std::string last_component(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// The slots DoRA wraps (inject() and plan() both ask): "all-linear" is every
// slot but lm_head, else a target_modules entry matches.
bool targets_slot(const DoraOptions& o, const std::string& slot_name) {
  if (o.target_modules.size() == 1 && o.target_modules[0] == kAllLinear) return !name_matches(slot_name, "lm_head");
  for (const auto& t : o.target_modules)
    if (name_matches(slot_name, t)) return true;
  return false;
}

const at::Tensor* find_param(const mftk::NamedTensors& params, const std::string& name) {
  for (const auto& [n, t] : params)
    if (n == name && t.defined()) return &t;
  return nullptr;
}

// "....lora_magnitude_vector.weight" (PEFT's in-memory name) -> the saved spelling.
std::string saved_name(const std::string& stored) {
  const std::string suffix = ".weight";
  return ends_with(stored, kMagnitude + suffix) ? stored.substr(0, stored.size() - suffix.size()) : stored;
}

json number_json(double v) {
  // 16 rather than 16.0, as PEFT's int-typed lora_alpha is usually written.
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return json(int64_t(v));
  return json(v);
}

void check_targets(const std::vector<std::string>& targets, const std::function<void(const std::string&)>& fail) {
  if (targets.empty()) fail("is empty: nothing would be trained");
  for (const auto& t : targets) {
    if (t == kAllLinear && targets.size() > 1) fail("\"all-linear\" must be the only entry");
    if (t.empty() || t.front() == '.' || t.back() == '.' || t.find_first_of("*+?()[]{}|^$\\") != std::string::npos)
      fail(fmt::format("\"{}\" is not a module-name suffix", t));
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// recipe keys and adapter_config.json

std::vector<mftk::KeySpec> dora_keys() {
  const DoraOptions d;
  using mftk::KeySpec;
  return {
      KeySpec::integer("r", d.r, "rank of the direction update B @ A").range(1, 4096),
      KeySpec::number("alpha", d.alpha, "lora_alpha; B @ A is scaled by alpha / r (alpha / sqrt(r) with use_rslora)")
          .range(1e-12, 1e12),
      KeySpec::number("dropout", d.dropout, "dropout on the adapter's input while training").range(0.0, 0.99),
      KeySpec::strings("target_modules", d.target_modules,
                       "linear layers to adapt: module-name suffixes (\"q_proj\", \"mlp.down_proj\"), or "
                       "[\"all-linear\"] for every linear layer except lm_head"),
      KeySpec::boolean("use_rslora", d.use_rslora, "rank-stabilised scaling alpha / sqrt(r)"),
  };
}

DoraOptions dora_options_from_config(const mftk::Config& config) {
  DoraOptions o;
  o.r = config.get_int("r");
  o.alpha = config.get_number("alpha");
  o.dropout = config.get_number("dropout");
  o.target_modules = config.get_strings("target_modules");
  check_targets(o.target_modules, [&](const std::string& why) {
    config.fail("target_modules", why, "write e.g. [\"q_proj\", \"v_proj\"], or [\"all-linear\"]");
  });
  o.use_rslora = config.get_bool("use_rslora");
  return o;
}

DoraOptions parse_dora_config(const std::string& text, const std::string& where) {
  json c;
  try {
    c = json::parse(text);
  } catch (const json::exception& e) {
    throw mftk::Error(fmt::format("example.dora: {}: not valid JSON: {}", where, e.what()), "re-save the adapter");
  }
  auto bad = [&](const std::string& key, const std::string& why, const std::string& hint = {}) {
    return mftk::UsageError(fmt::format("example.dora: {}: {} {}", where, key, why), hint);
  };
  auto has = [&](const char* key) { return c.is_object() && c.contains(key) && !c[key].is_null(); };
  if (!has("peft_type") || c["peft_type"] != json("LORA"))
    throw bad("peft_type", "must be \"LORA\" (PEFT saves DoRA as a LoRA config with use_dora)");
  if (!has("use_dora") || c["use_dora"] != json(true))
    throw bad("use_dora", "is not true: this is a plain LoRA adapter", "load it with the lora adapter plugin");
  DoraOptions o;
  if (!has("r") || !c["r"].is_number_integer() || c["r"].get<int64_t>() < 1)
    throw bad("r", "must be a positive integer");
  o.r = c["r"].get<int64_t>();
  o.alpha = 8.0;  // PEFT's default when absent
  if (has("lora_alpha")) {
    if (!c["lora_alpha"].is_number()) throw bad("lora_alpha", "must be a number");
    o.alpha = c["lora_alpha"].get<double>();
  }
  if (has("lora_dropout")) {
    if (!c["lora_dropout"].is_number()) throw bad("lora_dropout", "must be a number");
    o.dropout = c["lora_dropout"].get<double>();
  }
  if (has("use_rslora")) {
    if (!c["use_rslora"].is_boolean()) throw bad("use_rslora", "must be true or false");
    o.use_rslora = c["use_rslora"].get<bool>();
  }
  if (!has("target_modules")) throw bad("target_modules", "is missing");
  const json& tm = c["target_modules"];
  o.target_modules.clear();
  if (tm.is_string() && tm.get<std::string>() == kAllLinear) {
    o.target_modules = {kAllLinear};
  } else if (tm.is_array()) {
    for (const auto& e : tm) {
      if (!e.is_string()) throw bad("target_modules", "must list strings");
      o.target_modules.push_back(e.get<std::string>());
    }
  } else {
    throw bad("target_modules", "must be a list of module names (a regular expression is not supported)");
  }
  check_targets(o.target_modules, [&](const std::string& why) -> void { throw bad("target_modules", why); });
  // What this example does not implement: refuse rather than load it wrongly.
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (has(key) && !(c[key].is_object() && c[key].empty())) throw bad(key, "(per-module rank/alpha) is not supported");
  if (has("modules_to_save") && !(c["modules_to_save"].is_array() && c["modules_to_save"].empty()))
    throw bad("modules_to_save", "is not supported by this example");
  if (has("bias") && c["bias"] != json("none")) throw bad("bias", "other than \"none\" is not supported");
  if (has("lora_bias") && c["lora_bias"] != json(false)) throw bad("lora_bias", "is not supported");
  if (has("layers_to_transform")) throw bad("layers_to_transform", "is not supported");
  return o;
}

// ---------------------------------------------------------------------------
// inject, parameters, modes

void DoraAdapter::inject(mftk::Model& model) {
  if (injected_)
    throw mftk::Error("example.dora: inject() was already called on this adapter",
                      "create a new adapter for another model");
  const bool all_linear = options_.target_modules.size() == 1 && options_.target_modules[0] == kAllLinear;
  std::set<std::string> hit;
  std::vector<mftk::LinearSlot*> targets;
  for (mftk::LinearSlot* slot : model.linear_slots()) {
    if (!targets_slot(options_, slot->name)) continue;
    targets.push_back(slot);
    if (all_linear) {
      hit.insert(last_component(slot->name));
      continue;
    }
    for (const auto& t : options_.target_modules)
      if (name_matches(slot->name, t)) {
        hit.insert(t);
        break;
      }
  }
  if (targets.empty())
    throw mftk::UsageError(fmt::format("[adapter] target_modules: {} matched none of the model's linear slots",
                                       fmt::join(options_.target_modules, ", ")),
                           "use suffixes of the slot names, e.g. \"q_proj\", or [\"all-linear\"]");

  // Everything the model holds stays frozen; only A, B and m train.
  for (auto& [n, t] : model.named_parameters())
    if (t.defined() && t.requires_grad()) t.requires_grad_(false);
  for (mftk::LinearSlot* slot : model.linear_slots())
    for (auto& [n, t] : slot->op->parameters())
      if (t.defined() && t.is_leaf() && t.requires_grad()) t.requires_grad_(false);

  DoraLinearOptions lo;
  lo.r = options_.r;
  lo.alpha = options_.alpha;
  lo.dropout = options_.dropout;
  lo.use_rslora = options_.use_rslora;
  for (mftk::LinearSlot* slot : targets) {
    const mftk::NamedTensors params = slot->op->parameters();
    const at::Tensor* weight = find_param(params, "weight");
    const at::Tensor* bias = find_param(params, "bias");
    Wrapped w;
    w.slot_name = slot->name;
    if (weight && at::isFloatingType(weight->scalar_type())) w.base_dtype = weight->scalar_type();
    lo.device = weight ? weight->device() : at::Device(at::kCPU);
    w.op = std::make_shared<DoraLinear>(slot->op, bias ? bias->detach() : at::Tensor(), slot->in_features,
                                        slot->out_features, lo);
    slot->op = w.op;
    wrapped_.push_back(std::move(w));
  }
  matched_targets_.assign(hit.begin(), hit.end());
  injected_ = true;
  mftk::log::info("example.dora: r={} alpha={} scaling={:.4g} on {} linear slots ({})", options_.r, options_.alpha,
                  dora_scaling(options_.alpha, options_.r, options_.use_rslora), wrapped_.size(),
                  fmt::join(matched_targets_, ", "));
}

std::optional<mftk::AdapterPlan> DoraAdapter::plan(const mftk::ModelArchitecture& model) const {
  mftk::AdapterPlan p;
  const int64_t r = options_.r;
  std::map<int64_t, int64_t> saved_per_layer;
  bool head_listed = false;
  const mftk::ModelTensor* embedding = nullptr;
  auto count = [&](const std::string& slot, int64_t out, int64_t in, int64_t layer) {
    if (!targets_slot(options_, slot)) return;
    p.trainable_parameters += r * (in + out) + out;  // A [r, in], B [out, r], the magnitude [out]
    p.largest_tensor = std::max(p.largest_tensor, r * std::max(in, out));
    // What forward leaves for backward per token: x A^T, and x W^T and the
    // low-rank output for the magnitude's gradient; with dropout its mask and
    // the dropped input too.
    if (layer >= 0) saved_per_layer[layer] += r + 2 * out + (options_.dropout > 0 ? 2 * in : 0);
    p.trains_head = p.trains_head || slot == model.head_slot;
  };
  for (const auto& t : model.tensors) {
    if (t.name == model.embedding) embedding = &t;
    if (!t.in_slot || t.shape.size() != 2) continue;
    const std::string slot = t.name.substr(0, t.name.rfind('.'));
    head_listed = head_listed || slot == model.head_slot;
    count(slot, t.shape[0], t.shape[1], t.layer);
  }
  // A tied head has no tensor of its own: it reads the embedding's shape.
  if (!head_listed && !model.head_slot.empty() && embedding && embedding->shape.size() == 2)
    count(model.head_slot, embedding->shape[0], embedding->shape[1], -1);
  for (const auto& [layer, elements] : saved_per_layer) p.saved_per_token = std::max(p.saved_per_token, elements);
  p.detail = fmt::format("r {} on {}", r, fmt::join(options_.target_modules, ","));
  return p;
}

mftk::NamedTensors DoraAdapter::trainable_parameters() {
  if (!injected_) throw mftk::Error("example.dora: trainable_parameters() before inject()");
  mftk::NamedTensors out;
  if (merged_) return out;
  for (const auto& w : wrapped_)
    for (const auto& [n, t] : w.op->parameters()) out.emplace_back(kPeftPrefix + w.slot_name + "." + n, t);
  return out;
}

void DoraAdapter::set_enabled(bool on) {
  for (auto& w : wrapped_) w.op->set_enabled(on);
}

// ---------------------------------------------------------------------------
// save, load

void DoraAdapter::save(const std::string& dir, const std::string& base_model) const {
  if (!injected_) throw mftk::Error("example.dora: save() before inject()");
  fs::create_directories(dir);
  mftk::NamedTensors tensors;
  {
    at::NoGradGuard no_grad;
    for (const auto& w : wrapped_)
      for (const auto& [n, t] : w.op->parameters())
        tensors.emplace_back(kPeftPrefix + w.slot_name + "." + n, t.detach().to(at::kCPU, at::kFloat).contiguous());
  }
  // Weights first, config last: a folder with a config has its weights.
  mftk::save_safetensors((fs::path(dir) / kWeightsFile).string(), tensors);
  const json config = {
      {"peft_type", "LORA"},
      {"use_dora", true},
      {"task_type", "CAUSAL_LM"},
      {"base_model_name_or_path", base_model},
      {"inference_mode", true},
      {"r", options_.r},
      {"lora_alpha", number_json(options_.alpha)},
      {"lora_dropout", options_.dropout},
      {"use_rslora", options_.use_rslora},
      {"target_modules", matched_targets_},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"modules_to_save", nullptr},
      {"init_lora_weights", true},
      {"layers_to_transform", nullptr},
      {"layers_pattern", nullptr},
      {"rank_pattern", json::object()},
      {"alpha_pattern", json::object()},
  };
  mftk::write_file_atomic((fs::path(dir) / kConfigFile).string(), config.dump(2) + "\n");
}

void DoraAdapter::load(const std::string& dir, mftk::Model& model) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  std::ifstream in(config_path, std::ios::binary);
  if (!in)
    throw mftk::UsageError(fmt::format("example.dora: {} not found", config_path),
                           "an adapter folder holds adapter_config.json and adapter_model.safetensors");
  std::stringstream text;
  text << in.rdbuf();
  const DoraOptions file = parse_dora_config(text.str(), config_path);
  if (injected_) {
    // Resuming into the layout this adapter already made.
    if (file.r != options_.r || dora_scaling(file.alpha, file.r, file.use_rslora) !=
                                    dora_scaling(options_.alpha, options_.r, options_.use_rslora))
      throw mftk::Error(fmt::format("example.dora: {} (r={}, lora_alpha={}) does not match the injected adapter "
                                    "(r={}, alpha={})", config_path, file.r, file.alpha, options_.r, options_.alpha),
                        "load the adapter into a fresh model");
  } else {
    options_ = file;
    inject(model);
  }

  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  const auto weights = mftk::SafetensorsFile::open(weights_path);
  std::map<std::string, at::Tensor> expected;
  for (const auto& [n, t] : trainable_parameters()) expected[n] = t;
  std::map<std::string, std::string> source;  // our name -> name in the file
  for (const mftk::TensorInfo& info : weights->tensors()) {
    const std::string name = saved_name(info.name);
    const auto it = expected.find(name);
    if (it == expected.end())
      throw mftk::Error(fmt::format("example.dora: {}: tensor '{}' belongs to no adapted module", weights_path,
                                    info.name),
                        "the adapter config and its weights do not belong together");
    if (!source.emplace(name, info.name).second)
      throw mftk::Error(fmt::format("example.dora: {}: '{}' and '{}' are the same tensor", weights_path,
                                    source[name], info.name));
    if (at::IntArrayRef(info.shape) != it->second.sizes())
      throw mftk::Error(fmt::format("example.dora: {}: '{}' has shape [{}], expected [{}]", weights_path, info.name,
                                    fmt::join(info.shape, ", "), fmt::join(it->second.sizes(), ", ")),
                        "the adapter was trained for a model of another size");
  }
  for (const auto& [n, t] : expected)
    if (!source.count(n))
      throw mftk::Error(fmt::format("example.dora: {}: tensor '{}' is missing", weights_path, n),
                        "the file is incomplete or was saved for other target_modules");
  at::NoGradGuard no_grad;
  for (auto& [n, t] : expected) t.copy_(weights->get(source.at(n)));
}

// ---------------------------------------------------------------------------
// merge

void DoraAdapter::merge(mftk::Model& model) {
  if (!injected_) throw mftk::Error("example.dora: merge() before inject()");
  if (merged_) throw mftk::Error("example.dora: merge() was already called");
  std::map<std::string, mftk::LinearSlot*> slots;
  for (mftk::LinearSlot* s : model.linear_slots()) slots[s->name] = s;
  at::ScalarType fallback = model.shape().checkpoint_dtype;
  if (!at::isFloatingType(fallback)) fallback = at::kFloat;
  at::NoGradGuard no_grad;
  for (const auto& w : wrapped_) {
    const auto it = slots.find(w.slot_name);
    if (it == slots.end() || it->second->op != w.op)
      throw mftk::Error(fmt::format("example.dora: merge: slot '{}' no longer holds this adapter's op", w.slot_name),
                        "merge into the model the adapter was injected into");
    const at::ScalarType dtype = w.base_dtype.value_or(fallback);
    const at::Tensor bias = w.op->base_bias();
    it->second->op = mftk::make_dense_linear(w.op->dense_weight(dtype), bias.defined() ? bias.to(dtype) : bias);
  }
  merged_ = true;
}

}  // namespace example_dora

// ---------------------------------------------------------------------------
// registration

namespace {

void register_components(mftk::Registrar& registrar) {
  registrar.add_adapter({mftk::Kind::adapter, "example.dora",
                         "DoRA (weight-decomposed LoRA) on the model's linear layers; PEFT use_dora files",
                         example_dora::dora_keys()},
                        [](const mftk::Config& config) -> std::unique_ptr<mftk::Adapter> {
                          return std::make_unique<example_dora::DoraAdapter>(
                              example_dora::dora_options_from_config(config));
                        });
}

}  // namespace

MFTK_PLUGIN("example_dora", "1.0.0", register_components)
