// config.json <-> MistralConfig. Mirrors transformers' MistralConfig: a key
// the file leaves out gets the class default, an explicit null means "none"
// where transformers allows it (sliding_window, head_dim, num_key_value_heads).
#include "mistral_config.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include <nlohmann/json.hpp>

#include "model_presets.h"
#include "mftk/error.h"
#include "mftk/log.h"

namespace mftk::mistral {
namespace {

using nlohmann::json;

// Typed, error-reporting access to one config.json object.
class ConfigReader {
 public:
  ConfigReader(const json& config, const std::string& source) : config_(config), source_(source) {}

  bool has(const char* key) const { return config_.contains(key); }
  bool is_null(const char* key) const { return has(key) && config_.at(key).is_null(); }

  int64_t required_int(const char* key) const {
    if (!has(key) || config_.at(key).is_null())
      fail(key, "is missing", "every Mistral config.json names the model's shape; is this a Mistral checkpoint?");
    return as_int(key);
  }
  int64_t int_or(const char* key, int64_t fallback) const {
    return has(key) && !config_.at(key).is_null() ? as_int(key) : fallback;
  }
  double number_or(const char* key, double fallback) const {
    if (!has(key) || config_.at(key).is_null()) return fallback;
    if (!config_.at(key).is_number()) fail(key, "must be a number, found " + config_.at(key).dump());
    return config_.at(key).get<double>();
  }
  bool bool_or(const char* key, bool fallback) const {
    if (!has(key) || config_.at(key).is_null()) return fallback;
    if (!config_.at(key).is_boolean()) fail(key, "must be true or false, found " + config_.at(key).dump());
    return config_.at(key).get<bool>();
  }
  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key) || config_.at(key).is_null()) return fallback;
    if (!config_.at(key).is_string()) fail(key, "must be a string, found " + config_.at(key).dump());
    return config_.at(key).get<std::string>();
  }
  const json& object(const char* key) const { return config_.at(key); }

  [[noreturn]] void fail(const std::string& key, const std::string& message,
                         const std::string& hint = {}) const {
    throw Error(fmt::format("{}: '{}' {}", source_, key, message), hint);
  }

 private:
  int64_t as_int(const char* key) const {
    const json& v = config_.at(key);
    if (!v.is_number_integer()) fail(key, "must be an integer, found " + v.dump());
    return v.get<int64_t>();
  }

  const json& config_;
  const std::string& source_;
};

}  // namespace

at::ScalarType dtype_from_torch_name(const std::string& name, const std::string& source) {
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "f16" || name == "half") return at::kHalf;
  if (name == "float32" || name == "f32" || name == "float") return at::kFloat;
  throw Error(fmt::format("{}: dtype '{}' is not one of bfloat16, float16, float32", source, name));
}

std::string dtype_to_torch_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kFloat: return "float32";
    default: throw Error(fmt::format("no config.json name for dtype {}", c10::toString(dtype)));
  }
}

MistralConfig MistralConfig::from_json(const nlohmann::json& config, const std::string& source) {
  if (!config.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  ConfigReader r(config, source);
  MistralConfig c;

  const std::string model_type = r.string_or("model_type", "mistral");
  if (model_type != "mistral")
    log::warn("{}: model_type is '{}', not 'mistral'; loading it as Mistral", source, model_type);

  c.vocab_size = r.required_int("vocab_size");
  c.hidden_size = r.required_int("hidden_size");
  c.intermediate_size = r.required_int("intermediate_size");
  c.num_hidden_layers = r.required_int("num_hidden_layers");
  c.num_attention_heads = r.required_int("num_attention_heads");
  if (c.num_attention_heads <= 0) r.fail("num_attention_heads", "must be positive");
  // transformers: absent -> 8 (the class default), null -> one KV head per query head.
  c.num_key_value_heads = r.is_null("num_key_value_heads") ? c.num_attention_heads
                                                           : r.int_or("num_key_value_heads", 8);
  c.head_dim = r.int_or("head_dim", c.hidden_size / c.num_attention_heads);
  c.max_position_embeddings = r.int_or("max_position_embeddings", c.max_position_embeddings);
  c.rms_norm_eps = r.number_or("rms_norm_eps", c.rms_norm_eps);

  // rope_theta: the flat key, or transformers v5's rope_parameters object.
  if (r.has("rope_theta")) {
    c.rope_theta = r.number_or("rope_theta", c.rope_theta);
  } else if (r.has("rope_parameters") && r.object("rope_parameters").is_object()) {
    ConfigReader rp(r.object("rope_parameters"), source + " rope_parameters");
    c.rope_theta = rp.number_or("rope_theta", c.rope_theta);
  }
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!r.has(key) || !r.object(key).is_object()) continue;
    ConfigReader rs(r.object(key), source);
    const std::string type = rs.string_or("rope_type", rs.string_or("type", "default"));
    if (type != "default")
      r.fail(key, fmt::format("asks for RoPE type '{}'; only the default (unscaled) RoPE is "
                              "implemented", type));
  }

  c.sliding_window = r.is_null("sliding_window")
                         ? std::nullopt
                         : std::optional<int64_t>(r.int_or("sliding_window", 4096));
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.hidden_act = r.string_or("hidden_act", "silu");
  // transformers v5 renamed torch_dtype to dtype.
  c.torch_dtype = r.string_or("torch_dtype", r.string_or("dtype", "float32"));
  c.initializer_range = r.number_or("initializer_range", c.initializer_range);
  c.attention_dropout = r.number_or("attention_dropout", 0.0);
  c.bos_token_id = r.int_or("bos_token_id", 1);
  c.eos_token_id = r.int_or("eos_token_id", 2);
  if (r.has("pad_token_id") && !r.is_null("pad_token_id")) c.pad_token_id = r.int_or("pad_token_id", 0);
  c.use_cache = r.bool_or("use_cache", true);
  c.transformers_version = r.string_or("transformers_version", "");

  // Llama-style keys this architecture does not have.
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (r.bool_or(key, false)) r.fail(key, "is true; Mistral layers have no biases and this plugin implements none");

  c.validate(source);
  return c;
}

void MistralConfig::validate(const std::string& source) const {
  auto fail = [&](const std::string& key, const std::string& message) -> void {
    throw Error(fmt::format("{}: '{}' {}", source, key, message),
                "fix config.json so that it describes the checkpoint's tensors");
  };
  const std::pair<const char*, int64_t> positive[] = {
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"num_hidden_layers", num_hidden_layers},
      {"num_attention_heads", num_attention_heads},
      {"num_key_value_heads", num_key_value_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings}};
  for (const auto& [key, value] : positive)
    if (value <= 0) fail(key, fmt::format("must be positive, found {}", value));
  if (num_attention_heads % num_key_value_heads != 0)
    fail("num_attention_heads", fmt::format("({}) must be divisible by num_key_value_heads ({})",
                                            num_attention_heads, num_key_value_heads));
  if (head_dim % 2 != 0) fail("head_dim", fmt::format("({}) must be even for RoPE", head_dim));
  if (sliding_window && *sliding_window <= 0)
    fail("sliding_window", fmt::format("must be positive or null, found {}", *sliding_window));
  if (!(rms_norm_eps > 0)) fail("rms_norm_eps", fmt::format("must be positive, found {}", rms_norm_eps));
  if (!(rope_theta > 0)) fail("rope_theta", fmt::format("must be positive, found {}", rope_theta));
  if (hidden_act != "silu")
    fail("hidden_act", fmt::format("is '{}'; only 'silu' (SwiGLU) is implemented", hidden_act));
  dtype_from_torch_name(torch_dtype, source + ": 'torch_dtype'");
}

MistralConfig MistralConfig::load(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ifstream in(path);
  if (!in)
    throw Error(fmt::format("cannot open {}", path),
                "the model path must be a Hugging Face checkpoint folder with config.json");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse(text, path);
}

MistralConfig MistralConfig::parse(const std::string& text, const std::string& source) {
  json config;
  try {
    config = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", source, e.what()));
  }
  return from_json(config, source);
}

MistralConfig MistralConfig::preset(const std::string& name, int64_t vocab_size) {
  return from_json(mistral_preset_config(name, vocab_size), "preset '" + name + "'");
}

nlohmann::json MistralConfig::to_json() const {
  json c;
  c["architectures"] = {"MistralForCausalLM"};
  c["attention_dropout"] = attention_dropout;
  c["bos_token_id"] = bos_token_id;
  c["eos_token_id"] = eos_token_id;
  // Written only when it differs from the default, like the shipped files,
  // which older transformers releases (no head_dim key) can still read.
  if (head_dim != hidden_size / num_attention_heads) c["head_dim"] = head_dim;
  c["hidden_act"] = hidden_act;
  c["hidden_size"] = hidden_size;
  c["initializer_range"] = initializer_range;
  c["intermediate_size"] = intermediate_size;
  c["max_position_embeddings"] = max_position_embeddings;
  c["model_type"] = "mistral";
  c["num_attention_heads"] = num_attention_heads;
  c["num_hidden_layers"] = num_hidden_layers;
  c["num_key_value_heads"] = num_key_value_heads;
  if (pad_token_id) c["pad_token_id"] = *pad_token_id;
  c["rms_norm_eps"] = rms_norm_eps;
  c["rope_theta"] = rope_theta;
  c["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  c["tie_word_embeddings"] = tie_word_embeddings;
  c["torch_dtype"] = torch_dtype;
  if (!transformers_version.empty()) c["transformers_version"] = transformers_version;
  c["use_cache"] = use_cache;
  c["vocab_size"] = vocab_size;
  return c;
}

void MistralConfig::save(const std::string& dir) const {
  const std::string path = (std::filesystem::path(dir) / "config.json").string();
  std::ofstream out(path);
  if (!out) throw Error(fmt::format("cannot write {}", path));
  out << to_json().dump(2) << "\n";
  if (!out) throw Error(fmt::format("error while writing {}", path));
}

at::ScalarType MistralConfig::dtype() const { return dtype_from_torch_name(torch_dtype, "config.json 'torch_dtype'"); }

ModelShape MistralConfig::to_shape() const {
  ModelShape s;
  s.architecture = "MistralForCausalLM";
  s.vocab_size = vocab_size;
  s.hidden_size = hidden_size;
  s.intermediate_size = intermediate_size;
  s.num_layers = num_hidden_layers;
  s.num_heads = num_attention_heads;
  s.num_kv_heads = num_key_value_heads;
  s.head_dim = head_dim;
  s.max_position_embeddings = max_position_embeddings;
  s.sliding_window = sliding_window;
  s.rope_theta = rope_theta;
  s.rms_norm_eps = rms_norm_eps;
  s.tie_word_embeddings = tie_word_embeddings;
  s.checkpoint_dtype = dtype();
  return s;
}

}  // namespace mftk::mistral
