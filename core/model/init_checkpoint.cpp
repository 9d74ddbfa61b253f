// Random checkpoints for tests, benchmarks and the quickstart. The model
// plugin owns the shapes (presets, config.json) and draws the weights; the
// core adds the tokenizer and the transformers side files.
#include "init_checkpoint.h"

#include <filesystem>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "defaults.h"
#include "fs_util.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/plugin.h"
#include "mftk/tokenizer.h"
#include "mftk/output_path.h"
#include "model_tools.h"
#include "registry.h"
#include "pipeline.h"
#include "tokenizer_train.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

at::ScalarType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return at::kFloat;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  if (s == "f16" || s == "float16") return at::kHalf;
  throw UsageError(fmt::format("unknown dtype '{}'", s), "use f32, bf16 or f16");
}

const char* hf_dtype_name(at::ScalarType t) {
  return t == at::kBFloat16 ? "bfloat16" : t == at::kHalf ? "float16" : "float32";
}

// A chat template for tokenizer_config.json, so transformers' apply_chat_template
// renders what mftk's chat encoder builds (docs/formats.md §3.3, chat templates). With `tools`
// (a v3 tokenizer with the function-calling pieces) it renders tools, calls
// and results as the v3 encoder does: each control piece is followed by " "
// + the JSON, which a sentencepiece tokenizer turns into the same "▁"-prefixed
// pieces as encoding the JSON alone; tojson is json.dumps(ensure_ascii=False)
// there. Arguments given as a JSON string are inserted as written (Jinja
// cannot parse JSON), so they match only when already in json.dumps form;
// a tool result's content is a number when it reads back as the same text
// (as mistral-common's json.loads would give), else a JSON string (where
// mistral-common would parse an object or list).
std::string chat_template(bool v3, bool tools = false) {
  if (v3) {
    const std::string tool_setup =
        tools ? "{%- set ns = namespace(tools=[]) -%}{%- if tools is defined and tools -%}{%- for t in tools -%}"
                "{%- set f = t['function'] -%}{%- set ns.tools = ns.tools + [{'type': 'function', 'function': "
                "{'name': f['name'], 'description': f['description'] if f['description'] is defined and "
                "f['description'] is not none else '', 'parameters': f['parameters'] if f['parameters'] is defined "
                "and f['parameters'] is not none else {}}}] -%}{%- endfor -%}{%- endif -%}"
              : "{%- if tools is defined and tools -%}{{ raise_exception('this tokenizer has no tool tokens') }}"
                "{%- endif -%}{%- set ns = namespace(tools=[]) -%}";
    const std::string tools_block =
        "{%- if loop.index0 == last_user.i and ns.tools -%}"
        "{{ '[AVAILABLE_TOOLS] ' + ns.tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif -%}";
    const std::string calls =
        tools ? "{%- elif m['role'] == 'assistant' and m['tool_calls'] is defined and m['tool_calls'] -%}"
                "{{ '[TOOL_CALLS] [' }}{%- for c in m['tool_calls'] -%}{%- set a = c['function']['arguments'] -%}"
                "{{ '{\"name\": ' + c['function']['name'] | tojson + ', \"arguments\": ' + "
                "(a if a is string else a | tojson) }}{%- if c['id'] is defined and c['id'] -%}"
                "{{ ', \"id\": ' + c['id'] | tojson }}{%- endif -%}{{ '}' }}{%- if not loop.last -%}{{ ', ' }}"
                "{%- endif -%}{%- endfor -%}{{ ']' + eos_token }}"
                "{%- elif m['role'] == 'tool' -%}{%- set r = namespace(c=m['content']) -%}"
                "{%- if r.c is string and (r.c | int) | string == r.c -%}{%- set r.c = r.c | int -%}"
                "{%- elif r.c is string and (r.c | float) | string == r.c and r.c not in ['nan', 'inf', '-inf'] -%}"
                "{%- set r.c = r.c | float -%}{%- endif -%}"
                "{{ '[TOOL_RESULTS] ' + {'content': r.c, 'call_id': m['tool_call_id']} | tojson + '[/TOOL_RESULTS]' }}"
              : "";
    return "{%- set msgs = messages -%}{%- set sys = none -%}"
           "{%- if msgs and msgs[0]['role'] == 'system' -%}{%- set sys = msgs[0]['content'] -%}"
           "{%- set msgs = msgs[1:] -%}{%- endif -%}"
           "{%- set last_user = namespace(i=-1) -%}{%- for m in msgs -%}{%- if m['role'] == 'user' -%}"
           "{%- set last_user.i = loop.index0 -%}{%- endif -%}{%- endfor -%}" +
           tool_setup + "{{ bos_token }}{%- for m in msgs -%}{%- if m['role'] == 'user' -%}" + tools_block +
           "{%- if sys and loop.index0 == last_user.i -%}{{ '[INST] ' + sys + '\\n\\n' + m['content'] + '[/INST]' }}"
           "{%- else -%}{{ '[INST] ' + m['content'] + '[/INST]' }}{%- endif -%}" +
           calls +
           "{%- elif m['role'] == 'assistant' -%}{{ ' ' + m['content'] | trim + eos_token }}"
           "{%- else -%}{{ raise_exception('roles must be system, user or assistant" +
           (tools ? std::string(" (or tool)") : std::string()) + "') }}{%- endif -%}{%- endfor -%}";
  }
  return "{%- set msgs = messages -%}{%- set sys = none -%}"
         "{%- if msgs and msgs[0]['role'] == 'system' -%}{%- set sys = msgs[0]['content'] -%}"
         "{%- set msgs = msgs[1:] -%}{%- endif -%}"
         "{{ bos_token }}{%- for m in msgs -%}{%- if m['role'] == 'user' -%}"
         "{%- if sys and loop.first -%}{{ ' [INST] ' + sys + '\\n\\n' + m['content'] + ' [/INST]' }}"
         "{%- else -%}{{ ' [INST] ' + m['content'] + ' [/INST]' }}{%- endif -%}"
         "{%- elif m['role'] == 'assistant' -%}{{ ' ' + m['content'] + eos_token }}"
         "{%- else -%}{{ raise_exception('roles must be system, user or assistant') }}{%- endif -%}{%- endfor -%}";
}

// The preset named `name` among those the model plugin offers; an unknown
// name gets the plugin's own message (which lists them), else one of ours.
ModelPreset find_preset(const Model& model, const std::string& name, const std::string& plugin) {
  std::optional<ModelPreset> preset;
  std::vector<std::string> names;
  for (auto& p : model.presets()) {
    names.push_back(p.name);
    if (p.name == name) preset = p;
  }
  if (!preset)  // the plugin's own message lists its presets
    (void)model.preset_config(name, 0);
  if (!preset)
    throw UsageError(fmt::format("unknown model preset '{}' for model plugin '{}'. Known presets: {}", name,
                                 plugin, fmt::join(names, ", ")));
  return *preset;
}

// Tokenizer: given, or trained on the shipped corpus (not for a preset with
// a fixed vocabulary: only its own tokenizer fits it).
std::shared_ptr<Tokenizer> write_tokenizer(const InitOptions& o, const ModelPreset& preset,
                                           const std::string& tok_path) {
  if (!o.tokenizer.empty()) {
    if (!fs::exists(o.tokenizer)) throw UsageError(fmt::format("--tokenizer {}: no such file", o.tokenizer));
    fs::copy_file(o.tokenizer, tok_path);
  } else {
    if (preset.vocab_size > 0)
      throw UsageError(fmt::format("preset '{}' needs the tokenizer it ships with (vocab {}), which mftk "
                                   "cannot train from its small corpus",
                                   o.preset, preset.vocab_size),
                       preset.tokenizer_hint);
    if (o.corpus.empty() || !fs::exists(o.corpus))
      throw UsageError(fmt::format("tokenizer corpus '{}' not found", o.corpus),
                       "run from the mftk source folder, pass --corpus FILE, or --tokenizer FILE");
    train_sentencepiece(o.corpus, tok_path, o.tokenizer_vocab, o.v3_controls, o.tool_controls);
  }
  return Tokenizer::load(tok_path);
}

// The preset's config.json with the command line's overrides, checked for
// shapes the model cannot have. torch_dtype is still the preset's.
nlohmann::json make_config(const InitOptions& o, const Model& model, const ModelPreset& preset,
                           const Tokenizer& tokenizer) {
  const bool fixed_vocab = preset.vocab_size > 0;
  nlohmann::json config = nlohmann::json::parse(model.preset_config(o.preset, fixed_vocab ? 0 : tokenizer.vocab_size()));
  if (fixed_vocab && config["vocab_size"].get<int64_t>() != tokenizer.vocab_size())
    throw UsageError(fmt::format("preset '{}' has vocab_size {}, the tokenizer {} has {}", o.preset,
                                 config["vocab_size"].get<int64_t>(), o.tokenizer, tokenizer.vocab_size()),
                     preset.tokenizer_hint);
  for (const auto& [key, value] : o.overrides) {
    if (!config.contains(key) && key != "head_dim")
      throw UsageError(fmt::format("mftk init: '{}' is not a config.json key of the preset", key));
    config[key] = value;
  }
  if (o.sliding_window_null) config["sliding_window"] = nullptr;
  if (o.tie_word_embeddings) config["tie_word_embeddings"] = true;
  if (config["num_attention_heads"].get<int64_t>() % config["num_key_value_heads"].get<int64_t>() != 0)
    throw UsageError("mftk init: the number of heads must be a multiple of the number of key/value heads");
  if (!config.contains("head_dim") && config["hidden_size"].get<int64_t>() % config["num_attention_heads"].get<int64_t>())
    throw UsageError("mftk init: hidden size must be a multiple of the number of heads (or pass --head-dim)");
  return config;
}

// added_tokens_decoder as transformers writes it for a sentencepiece
// tokenizer (and Mistral's published configs have it): the unknown and
// every control piece "special": true, every user-defined piece false.
// llama.cpp's converter (and mftk's GGUF exporter) types tokens from it,
// so a checkpoint made here exports like a real one.
nlohmann::json added_tokens_decoder(const Tokenizer& tokenizer) {
  nlohmann::json added_tokens = nlohmann::json::object();
  for (int32_t id = 0; id < tokenizer.vocab_size(); ++id) {
    const PieceType type = tokenizer.type(id);
    if (type != PieceType::unknown && type != PieceType::control && type != PieceType::user_defined) continue;
    added_tokens[std::to_string(id)] = {{"content", tokenizer.piece(id)}, {"lstrip", false},
                                        {"normalized", false},           {"rstrip", false},
                                        {"single_word", false},          {"special", type != PieceType::user_defined}};
  }
  return added_tokens;
}

// Tokenizer and generation configs as transformers writes them.
void write_tokenizer_configs(const Tokenizer& tokenizer, const nlohmann::json& config, const std::string& out) {
  const bool v3 = tokenizer.piece_to_id("[INST]").has_value() &&
                  tokenizer.type(*tokenizer.piece_to_id("[INST]")) == PieceType::control;
  nlohmann::json tc = {{"add_bos_token", true},
                       {"add_eos_token", false},
                       {"bos_token", "<s>"},
                       {"eos_token", "</s>"},
                       {"unk_token", "<unk>"},
                       {"pad_token", nullptr},
                       {"legacy", false},
                       {"model_max_length", config.value("max_position_embeddings", nlohmann::json())},
                       {"tokenizer_class", "LlamaTokenizer"},
                       {"clean_up_tokenization_spaces", false},
                       {"chat_template", chat_template(v3, v3 && tokenizer.piece_to_id("[TOOL_CALLS]").has_value())}};
  tc["added_tokens_decoder"] = added_tokens_decoder(tokenizer);
  write_file_atomic((fs::path(out) / "tokenizer_config.json").string(), tc.dump(2) + "\n");
  nlohmann::json st = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
  write_file_atomic((fs::path(out) / "special_tokens_map.json").string(), st.dump(2) + "\n");
  nlohmann::json gc = {{"_from_model_config", true}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  write_file_atomic((fs::path(out) / "generation_config.json").string(), gc.dump(2) + "\n");
}

}  // namespace

int64_t write_random_checkpoint(const InitOptions& o) {
  if (o.out.empty()) throw UsageError("mftk init: --out is required");
  // Everything is written privately and put in place at the end: --out may
  // be new, empty, or a checkpoint mftk wrote; anything else is refused.
  OutputGuard guard(o.out, kHfCheckpointKind, OutputShape::folder);
  const std::string& out = guard.path();
  const std::string tok_path = (fs::path(out) / "tokenizer.model").string();

  // 0. The model plugin, made through the registry, owns the presets.
  const std::string plugin = o.model_plugin.empty() ? std::string(kDefaultModelPlugin) : o.model_plugin;
  Registry registry;
  auto model = registry.create<Model>(Kind::model, plugin,
                                      component_config(registry, Kind::model, plugin, "model", {{"path", out}}));
  const ModelPreset preset = find_preset(*model, o.preset, plugin);

  // 1. Tokenizer: given, or trained on the shipped corpus.
  auto tokenizer = write_tokenizer(o, preset, tok_path);

  // 2. config.json
  nlohmann::json config = make_config(o, *model, preset, *tokenizer);
  const at::ScalarType dtype = o.dtype.empty() ? parse_dtype(config["torch_dtype"].get<std::string>()) : parse_dtype(o.dtype);
  config["torch_dtype"] = hf_dtype_name(dtype);
  write_file_atomic((fs::path(out) / "config.json").string(), config.dump(2) + "\n");

  // 3. Tokenizer and generation configs as transformers writes them.
  write_tokenizer_configs(*tokenizer, config, out);

  // 4. Weights, streamed by the model plugin (shards + index above max_shard_bytes).
  model->load_config(out);
  RandomWeightsJob job;
  job.dir = out;
  job.seed = o.seed;
  job.dtype = dtype;
  job.max_shard_bytes = o.max_shard_bytes;
  const int64_t params = model->write_random_weights(job);
  size_t shards = 0;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().extension() == ".safetensors") ++shards;
  guard.commit();
  spdlog::info("mftk init: {} ({} parameters, {}, {} shard(s)) -> {}", o.preset, params, hf_dtype_name(dtype),
               shards, o.out);
  return params;
}

}  // namespace mftk::core
