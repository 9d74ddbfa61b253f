// PEFT's LoRA adapter_config.json and the LoRA scaling rule (see
// mftk/peft_config.h). No libtorch code here, so the parse can be fuzzed on
// its own (fuzz/).
#include "mftk/peft_config.h"

#include <cmath>

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"

namespace mftk {

using json = nlohmann::json;

PeftLoraConfig read_peft_lora_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(fmt::format("lora: {} not found", path),
                "an adapter folder holds adapter_config.json and adapter_model.safetensors (PEFT save_pretrained)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parse_peft_lora_config(buffer.str(), path);
}

PeftLoraConfig parse_peft_lora_config(const std::string& text, const std::string& where) {
  json c;
  try {
    c = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("lora: {}: not valid JSON: {}", where, e.what()), "re-save the adapter");
  }
  if (!c.is_object()) throw Error(fmt::format("lora: {}: expected a JSON object", where), "re-save the adapter");

  auto bad = [&](const std::string& key, const std::string& why, const std::string& hint = {}) {
    return UsageError(fmt::format("lora: {}: {} {}", where, key, why), hint);
  };
  auto has = [&](const char* key) { return c.contains(key) && !c[key].is_null(); };
  auto unsupported = [&](const std::string& key, const std::string& what) {
    return bad(key, fmt::format("= {}: {} is not supported yet", c[key].dump(), what),
               "convert the adapter to plain LoRA with PEFT first, or train it with mftk");
  };

  if (!c.contains("peft_type") || !c["peft_type"].is_string())
    throw bad("peft_type", "is missing; this is not a PEFT adapter config",
              "a PEFT LoRA adapter_config.json has \"peft_type\": \"LORA\"");
  if (c["peft_type"].get<std::string>() != "LORA")
    throw bad("peft_type", fmt::format("is \"{}\"; the lora plugin loads only \"LORA\" adapters",
                                       c["peft_type"].get<std::string>()),
              "use the adapter plugin made for this PEFT method");

  PeftLoraConfig o;
  if (!c.contains("r") || !c["r"].is_number_integer() || c["r"].get<int64_t>() < 1)
    throw bad("r", fmt::format("must be a positive integer, found {}", c.value("r", json()).dump()));
  o.r = c["r"].get<int64_t>();
  if (has("lora_alpha")) {
    if (!c["lora_alpha"].is_number()) throw bad("lora_alpha", "must be a number");
    o.alpha = c["lora_alpha"].get<double>();
  }
  o.dropout = 0.0;
  if (has("lora_dropout")) {
    if (!c["lora_dropout"].is_number()) throw bad("lora_dropout", "must be a number");
    o.dropout = c["lora_dropout"].get<double>();
    if (!(o.dropout >= 0.0 && o.dropout < 1.0)) throw bad("lora_dropout", "must be in [0, 1)");
  }
  if (has("use_rslora")) {
    if (!c["use_rslora"].is_boolean()) throw bad("use_rslora", "must be true or false");
    o.use_rslora = c["use_rslora"].get<bool>();
  }

  if (!has("target_modules"))
    throw bad("target_modules", "is missing", "the adapter's config must list the modules it adapts");
  const json& tm = c["target_modules"];
  if (tm.is_string()) {
    if (tm.get<std::string>() != kPeftAllLinear)
      throw bad("target_modules", fmt::format("is the regular expression \"{}\"; regex target_modules are not "
                                              "supported yet", tm.get<std::string>()),
                "re-save the adapter with target_modules as a list of module names");
    o.target_modules = {kPeftAllLinear};
  } else if (tm.is_array() && !tm.empty()) {
    o.target_modules.clear();
    for (const auto& e : tm) {
      if (!e.is_string()) throw bad("target_modules", "must list strings");
      o.target_modules.push_back(e.get<std::string>());
    }
  } else {
    throw bad("target_modules", "must be a non-empty list of module names");
  }

  o.modules_to_save.clear();
  if (has("modules_to_save")) {
    if (!c["modules_to_save"].is_array()) throw bad("modules_to_save", "must be a list of module names or null");
    for (const auto& e : c["modules_to_save"]) {
      if (!e.is_string()) throw bad("modules_to_save", "must list strings");
      o.modules_to_save.push_back(e.get<std::string>());
    }
  }

  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (has(key) && !(c[key].is_object() && c[key].empty()))
      throw unsupported(key, "per-module rank/alpha");
  if (has("use_dora") && c["use_dora"] != json(false)) throw unsupported("use_dora", "DoRA");
  if (has("lora_bias") && c["lora_bias"] != json(false)) throw unsupported("lora_bias", "a bias on lora_B");
  if (has("bias") && c["bias"] != json("none")) throw unsupported("bias", "training the base biases");
  if (has("layers_to_transform")) throw unsupported("layers_to_transform", "adapting only some layers");
  if (has("exclude_modules") && !(c["exclude_modules"].is_array() && c["exclude_modules"].empty()))
    throw unsupported("exclude_modules", "excluding modules");
  if (has("layer_replication")) throw unsupported("layer_replication", "duplicating layers");
  if (has("trainable_token_indices")) throw unsupported("trainable_token_indices", "trainable tokens");
  if (has("init_lora_weights") && c["init_lora_weights"].is_string()) {
    const std::string init = c["init_lora_weights"].get<std::string>();
    // These inits rewrite the base weights when PEFT loads the adapter.
    for (const char* changes_base : {"pissa", "olora", "corda", "loftq"})
      if (init.rfind(changes_base, 0) == 0)
        throw bad("init_lora_weights", fmt::format("= \"{}\" changes the base weights when the adapter is "
                                                   "loaded; not supported yet", init),
                  "convert it to a plain LoRA adapter with PEFT (path_initial_model_for_weight_conversion)");
  }
  if (has("fan_in_fan_out") && c["fan_in_fan_out"] == json(true))
    log::warn("lora: {}: fan_in_fan_out = true applies to Conv1D layers only; ignored for linear layers, as "
              "PEFT does", where);
  if (has("task_type") && c["task_type"] != json("CAUSAL_LM"))
    log::warn("lora: {}: task_type is {}, loading it into a causal LM anyway", where, c["task_type"].dump());
  return o;
}

double lora_scaling(double alpha, int64_t r, bool use_rslora) {
  MFTK_CHECK(r >= 1, "lora: rank r must be at least 1, got {}", r);
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

}  // namespace mftk
