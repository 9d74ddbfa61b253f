// Mistral -> GGUF `llama` metadata and tensor plan (see llama_export_plan.h).
// Keys and their types follow llama.cpp's HF converter (docs/formats.md §4.3, GGUF metadata):
// llama.cpp checks each key's type, so a u32 written as an i32 is an error
// there, not a warning.
#include "llama_export_plan.h"

#include <filesystem>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "mftk/tokenizer.h"

namespace mftk::gguf {

std::optional<Encoding> parse_encoding(const std::string& name) {
  if (name == "f32") return Encoding::f32;
  if (name == "f16") return Encoding::f16;
  if (name == "bf16") return Encoding::bf16;
  if (name == "q8_0") return Encoding::q8_0;
  if (name == "q4_k") return Encoding::q4_k;
  if (name == "q6_k") return Encoding::q6_k;
  if (name == "q4_k_m") return Encoding::q4_k_m;
  return std::nullopt;
}

std::string to_string(Encoding e) {
  switch (e) {
    case Encoding::f32: return "f32";
    case Encoding::f16: return "f16";
    case Encoding::bf16: return "bf16";
    case Encoding::q8_0: return "q8_0";
    case Encoding::q4_k: return "q4_k";
    case Encoding::q6_k: return "q6_k";
    case Encoding::q4_k_m: return "q4_k_m";
  }
  return "?";
}

GgmlType weight_type(Encoding e) {
  switch (e) {
    case Encoding::f32: return GgmlType::f32;
    case Encoding::f16: return GgmlType::f16;
    case Encoding::bf16: return GgmlType::bf16;
    case Encoding::q8_0: return GgmlType::q8_0;
    case Encoding::q4_k:
    case Encoding::q4_k_m: return GgmlType::q4_k;
    case Encoding::q6_k: return GgmlType::q6_k;
  }
  return GgmlType::f16;
}

uint32_t llama_file_type(Encoding e) {
  switch (e) {
    case Encoding::f32: return 0;   // ALL_F32
    case Encoding::f16: return 1;   // MOSTLY_F16
    case Encoding::bf16: return 32; // MOSTLY_BF16
    case Encoding::q8_0: return 7;  // MOSTLY_Q8_0
    case Encoding::q4_k: return 14;   // MOSTLY_Q4_K_S: llama.cpp has no "all Q4_K" file type; S is the nearest
    case Encoding::q6_k: return 18;   // MOSTLY_Q6_K
    case Encoding::q4_k_m: return 15; // MOSTLY_Q4_K_M
  }
  return 1;
}

bool use_more_bits(int64_t layer, int64_t n_layers) {
  return layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
}

std::vector<int64_t> llama_rope_row_order(int64_t rows, int64_t n_head) {
  MFTK_CHECK(n_head > 0 && rows % (2 * n_head) == 0,
             "gguf: {} rows cannot be split into {} heads of an even head size", rows, n_head);
  const int64_t head_dim = rows / n_head;
  const int64_t half = head_dim / 2;
  std::vector<int64_t> order(static_cast<size_t>(rows));
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t k = 0; k < half; ++k)
      for (int64_t s = 0; s < 2; ++s) order[size_t(h * head_dim + 2 * k + s)] = h * head_dim + s * half + k;
  return order;
}

namespace {

nlohmann::json read_json_if_present(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return nlohmann::json::object();
  std::ifstream in(path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: not valid JSON: {}", path.string(), e.what()));
  }
}

// A special token in tokenizer_config.json: "<pad>", {"content": "<pad>"}, or null.
std::optional<std::string> special_token_text(const nlohmann::json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

// The converter's does_token_look_special: added tokens some models forget
// to mark special but that are control tokens all the same.
bool looks_like_control_token(const std::string& text) {
  // Python's startswith and endswith: the two ends may overlap ("<|>").
  auto wrapped = [&](const std::string& open, const std::string& close) {
    return text.size() >= open.size() && text.size() >= close.size() && text.compare(0, open.size(), open) == 0 &&
           text.compare(text.size() - close.size(), close.size(), close) == 0;
  };
  return text == "<pad>" || text == "<mask>" || text == "<2mass>" || text == "[@BOS@]" || wrapped("<|", "|>") ||
         wrapped("<\xef\xbd\x9c", "\xef\xbd\x9c>") /* <｜ ... ｜> */ || wrapped("<unused", ">");
}

std::string spaces_for_word_boundaries(std::string text) {
  const std::string boundary = "\xe2\x96\x81";  // "▁"
  for (size_t at = text.find(boundary); at != std::string::npos; at = text.find(boundary, at + 1))
    text.replace(at, boundary.size(), " ");
  return text;
}

// A token id from a JSON key or value, checked against the vocabulary;
// nullopt (with a warning, as the converter warns) when it is past it.
std::optional<size_t> added_token_id(int64_t id, int64_t vocab_size, const std::string& text, const std::string& file) {
  if (id < 0) throw Error(fmt::format("{}: added token \"{}\" has a negative id {}", file, text, id));
  if (id >= vocab_size) {
    spdlog::warn("gguf: {}: ignoring added token \"{}\": id {} is past the vocabulary ({} ids)", file, text, id,
                 vocab_size);
    return std::nullopt;
  }
  return size_t(id);
}

// Rules 1 and 2 below: every piece of tokenizer.model with sentencepiece's
// score and type (NORMAL for a user-defined one), then "[PAD<id>]" up to vocab_size.
void add_sentencepiece_pieces(const Tokenizer& tok, int64_t vocab_size, TokenizerFacts& f) {
  const int32_t n = tok.vocab_size();
  f.tokens.reserve(size_t(vocab_size));
  for (int32_t id = 0; id < n; ++id) {
    const PieceType type = tok.type(id);
    const bool kept = type == PieceType::unknown || type == PieceType::control || type == PieceType::unused ||
                      type == PieceType::byte;
    f.tokens.push_back(tok.piece(id));
    f.scores.push_back(tok.score(id));
    f.types.push_back(int32_t(kept ? type : PieceType::normal));
  }
  for (int64_t id = n; id < vocab_size; ++id) {
    f.tokens.push_back(fmt::format("[PAD{}]", id));
    f.scores.push_back(-10000.0f);
    f.types.push_back(int32_t(PieceType::unused));
  }
}

// Rule 3: added_tokens.json ({text: id}), USER_DEFINED with score -1000.
void apply_added_tokens_json(const std::string& model_dir, int64_t vocab_size, TokenizerFacts& f) {
  const auto added_path = std::filesystem::path(model_dir) / "added_tokens.json";
  const nlohmann::json added = read_json_if_present(added_path);
  if (!added.is_object())
    throw Error(fmt::format("{}: expected an object {{\"token\": id, ...}}", added_path.string()));
  for (const auto& [text, id] : added.items()) {
    if (!id.is_number_integer())
      throw Error(fmt::format("{}: the id of \"{}\" is not an integer", added_path.string(), text));
    if (auto at = added_token_id(id.get<int64_t>(), vocab_size, text, added_path.string())) {
      f.tokens[*at] = text;
      f.scores[*at] = -1000.0f;
      f.types[*at] = int32_t(PieceType::user_defined);
    }
  }
}

// An added_tokens_decoder key: the whole string a decimal token id.
int64_t decoder_key_id(const std::string& key, const std::string& file) {
  int64_t id = -1;
  size_t used = 0;
  try {
    id = std::stoll(key, &used);
  } catch (const std::exception&) {
  }
  if (used == 0 || used != key.size())
    throw Error(fmt::format("{}: added_tokens_decoder key \"{}\" is not a token id", file, key));
  return id;
}

// Rule 4: tokenizer_config.json's added_tokens_decoder, last so it wins:
// CONTROL when special or control-looking, else USER_DEFINED with "▁" as a space.
void apply_added_tokens_decoder(const nlohmann::json& config, const std::string& config_file, int64_t vocab_size,
                                TokenizerFacts& f) {
  auto it = config.find("added_tokens_decoder");
  if (it == config.end() || it->is_null()) return;
  if (!it->is_object())
    throw Error(fmt::format("{}: added_tokens_decoder is not an object {{\"id\": {{\"content\": ...}}}}",
                            config_file));
  for (const auto& [key, entry] : it->items()) {
    const int64_t id = decoder_key_id(key, config_file);
    if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string())
      throw Error(fmt::format("{}: added_tokens_decoder[\"{}\"] has no \"content\" string", config_file, key));
    std::string text = entry["content"].get<std::string>();
    const auto at = added_token_id(id, vocab_size, text, config_file);
    if (!at) continue;
    const auto special = entry.find("special");
    if ((special != entry.end() && special->is_boolean() && special->get<bool>()) || looks_like_control_token(text)) {
      f.types[*at] = int32_t(PieceType::control);
    } else {
      text = spaces_for_word_boundaries(text);
      f.types[*at] = int32_t(PieceType::user_defined);
    }
    f.scores[*at] = -1000.0f;
    f.tokens[*at] = text;
  }
}

// tokenizer_config.json's chat_template: a string, or transformers' list
// form [{"name": "default", "template": ...}, ...]; empty when there is none.
std::string chat_template_of(const nlohmann::json& config) {
  std::string chat_template;
  if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& entry : *it)
        if (entry.value("name", "") == "default" && entry.contains("template") && entry["template"].is_string())
          chat_template = entry["template"].get<std::string>();
    }
  }
  return chat_template;
}

}  // namespace

TokenizerFacts load_tokenizer_facts(const std::string& model_dir, int64_t vocab_size) {
  auto tok = Tokenizer::load(model_dir);
  const int32_t n = tok->vocab_size();
  if (n > vocab_size)
    throw Error(fmt::format("{}: the tokenizer has {} pieces but the model only {} embeddings (vocab_size)",
                            model_dir, n, vocab_size),
                "the tokenizer does not belong to this checkpoint");
  // The vocabulary exactly as llama.cpp's HF converter writes it for a
  // sentencepiece model (convert_hf_to_gguf.py, _create_vocab_sentencepiece,
  // which _set_vocab_sentencepiece writes for Llama/Mistral), so a GGUF from
  // either tool carries the same tokens, scores and types:
  //  1. every piece of tokenizer.model with sentencepiece's score; type
  //     UNKNOWN, CONTROL, UNUSED or BYTE as sentencepiece says, NORMAL for
  //     every other piece (a user-defined one too);
  //  2. ids past the tokenizer, up to vocab_size: "[PAD<id>]", score -10000,
  //     UNUSED;
  //  3. added_tokens.json ({text: id}): that text, score -1000, USER_DEFINED;
  //  4. tokenizer_config.json's added_tokens_decoder ({id: {content,
  //     special}}), last, so it wins: that content, score -1000, and CONTROL
  //     when "special" is true or the text looks like a control token
  //     (looks_like_control_token), USER_DEFINED otherwise, with "▁" written
  //     as a space. Hugging Face lists Mistral's <unk>, <s>, </s> (and v3's
  //     [INST], [/INST], [TOOL_CALLS], ..., [control_768]) there as special,
  //     so they become CONTROL with score -1000, <unk> included.
  // Added ids past vocab_size are ignored with a warning, as there.
  TokenizerFacts f;
  add_sentencepiece_pieces(*tok, vocab_size, f);
  apply_added_tokens_json(model_dir, vocab_size, f);
  const auto config_path = std::filesystem::path(model_dir) / "tokenizer_config.json";
  const nlohmann::json config = read_json_if_present(config_path);
  apply_added_tokens_decoder(config, config_path.string(), vocab_size, f);

  f.bos = uint32_t(tok->bos_id());
  f.eos = uint32_t(tok->eos_id());
  f.unk = uint32_t(tok->unk_id());
  f.add_bos = tok->add_bos();
  f.add_eos = tok->add_eos();
  if (auto pad = special_token_text(config, "pad_token")) {
    if (auto id = tok->piece_to_id(*pad)) f.pad = uint32_t(*id);
    else
      throw Error(fmt::format("{}: pad_token \"{}\" is not a piece of tokenizer.model", config_path.string(), *pad));
  }
  f.chat_template = chat_template_of(config);
  return f;
}

DescribedCheckpoint describe_checkpoint(const std::string& model_dir) {
  const auto model = open_model(model_dir);
  return {model->shape(), model->architecture()};
}

// llama.cpp's tensor names (llama-arch, convert_hf_to_gguf.py; docs/formats.md
// §4.4), by what the tensor does.
std::string llama_tensor_name(TensorRole role, int64_t layer, const std::string& hf_name) {
  const char* block = nullptr;
  switch (role) {
    case TensorRole::embedding: return "token_embd.weight";
    case TensorRole::output_norm: return "output_norm.weight";
    case TensorRole::output: return "output.weight";
    case TensorRole::attn_norm: block = "attn_norm"; break;
    case TensorRole::attn_q: block = "attn_q"; break;
    case TensorRole::attn_k: block = "attn_k"; break;
    case TensorRole::attn_v: block = "attn_v"; break;
    case TensorRole::attn_output: block = "attn_output"; break;
    case TensorRole::ffn_norm: block = "ffn_norm"; break;
    case TensorRole::ffn_gate: block = "ffn_gate"; break;
    case TensorRole::ffn_up: block = "ffn_up"; break;
    case TensorRole::ffn_down: block = "ffn_down"; break;
    case TensorRole::other: break;
  }
  if (!block || layer < 0)
    throw UsageError(fmt::format("gguf: tensor '{}' has no place in llama.cpp's llama layout", hf_name),
                     "the gguf exporter writes decoder-only models in the llama layout");
  return fmt::format("blk.{}.{}.weight", layer, block);
}

int64_t llama_rope_heads(TensorRole role, const ModelShape& shape) {
  if (role == TensorRole::attn_q) return shape.num_heads;
  if (role == TensorRole::attn_k) return shape.num_kv_heads;
  return 0;
}

GgufWriter::Metadata llama_metadata(const ModelShape& c, const TokenizerFacts& t, Encoding encoding,
                                    const std::string& name) {
  GgufWriter::Metadata m;
  auto u32 = [](int64_t v) {
    MFTK_CHECK(v >= 0 && v <= int64_t(UINT32_MAX), "gguf: {} does not fit a uint32 key", v);
    return GgufValue::u32(uint32_t(v));
  };
  m.emplace_back("general.architecture", GgufValue::str("llama"));
  m.emplace_back("general.name", GgufValue::str(name));
  m.emplace_back("general.alignment", GgufValue::u32(kGgufDefaultAlignment));
  m.emplace_back("general.file_type", GgufValue::u32(llama_file_type(encoding)));
  m.emplace_back("general.quantization_version", GgufValue::u32(2));  // GGML_QUANT_VERSION
  m.emplace_back("llama.vocab_size", u32(c.vocab_size));
  m.emplace_back("llama.context_length", u32(c.max_position_embeddings));
  m.emplace_back("llama.embedding_length", u32(c.hidden_size));
  m.emplace_back("llama.block_count", u32(c.num_layers));
  m.emplace_back("llama.feed_forward_length", u32(c.intermediate_size));
  m.emplace_back("llama.attention.head_count", u32(c.num_heads));
  m.emplace_back("llama.attention.head_count_kv", u32(c.num_kv_heads));
  m.emplace_back("llama.rope.dimension_count", u32(c.head_dim));
  m.emplace_back("llama.rope.freq_base", GgufValue::f32(float(c.rope_theta)));
  m.emplace_back("llama.attention.layer_norm_rms_epsilon", GgufValue::f32(float(c.rms_norm_eps)));
  // llama.cpp assumes head size = embedding / heads unless told otherwise.
  if (c.head_dim * c.num_heads != c.hidden_size) {
    m.emplace_back("llama.attention.key_length", u32(c.head_dim));
    m.emplace_back("llama.attention.value_length", u32(c.head_dim));
  }
  // llama.cpp's llama architecture runs plain causal attention and ignores
  // this key; it records the window for readers that do use it.
  if (c.sliding_window) m.emplace_back("llama.attention.sliding_window", u32(*c.sliding_window));

  m.emplace_back("tokenizer.ggml.model", GgufValue::str("llama"));
  m.emplace_back("tokenizer.ggml.pre", GgufValue::str("default"));  // as the converter writes for sentencepiece
  m.emplace_back("tokenizer.ggml.tokens", GgufValue::strings(t.tokens));
  m.emplace_back("tokenizer.ggml.scores", GgufValue::f32s(t.scores));
  m.emplace_back("tokenizer.ggml.token_type", GgufValue::i32s(t.types));
  m.emplace_back("tokenizer.ggml.bos_token_id", GgufValue::u32(t.bos));
  m.emplace_back("tokenizer.ggml.eos_token_id", GgufValue::u32(t.eos));
  m.emplace_back("tokenizer.ggml.unknown_token_id", GgufValue::u32(t.unk));
  if (t.pad) m.emplace_back("tokenizer.ggml.padding_token_id", GgufValue::u32(*t.pad));
  m.emplace_back("tokenizer.ggml.add_bos_token", GgufValue::boolean(t.add_bos));
  m.emplace_back("tokenizer.ggml.add_eos_token", GgufValue::boolean(t.add_eos));
  if (!t.chat_template.empty()) m.emplace_back("tokenizer.chat_template", GgufValue::str(t.chat_template));
  return m;
}

std::vector<PlannedTensor> plan_llama_tensors(const DescribedCheckpoint& model, const CheckpointReader& checkpoint,
                                              Encoding encoding, const std::string& model_dir) {
  const ModelShape& config = model.shape;
  if (model.architecture.tensors.empty())
    throw UsageError(fmt::format("gguf: the model plugin describes no tensors for {}", model_dir),
                     "the gguf exporter needs the model's tensor table (Model::architecture)");
  std::vector<PlannedTensor> plan;
  std::set<std::string> used;
  for (const auto& ct : model.architecture.tensors) {
    if (!checkpoint.contains(ct.name))
      throw Error(fmt::format("{}: the checkpoint has no tensor '{}'", model_dir, ct.name),
                  "export a merged Hugging Face checkpoint (mftk merge writes one)");
    const auto& info = checkpoint.info(ct.name);
    if (info.shape != ct.shape)
      throw Error(fmt::format("{}: tensor '{}' has shape [{}], config.json implies [{}]", model_dir, ct.name,
                              fmt::join(info.shape, ", "), fmt::join(ct.shape, ", ")));
    used.insert(ct.name);
    PlannedTensor p;
    p.hf_name = ct.name;
    p.hf_shape = ct.shape;
    p.decl.name = llama_tensor_name(ct.role, ct.layer, ct.name);
    for (auto it = ct.shape.rbegin(); it != ct.shape.rend(); ++it) p.decl.ne.push_back(uint64_t(*it));
    if (ct.shape.size() == 1) {
      p.decl.type = GgmlType::f32;  // norms: llama.cpp computes them in F32; the converter always writes F32
    } else {
      p.decl.type = weight_type(encoding);
      if (encoding == Encoding::q4_k_m) {
        // llama-quantize's Q4_K_M rules (llama_tensor_get_type): the output
        // matrix (the embeddings when tied, as they are the output then),
        // and attn_v / ffn_down of the use_more_bits layers, get Q6_K.
        const bool output = ct.role == TensorRole::output ||
                            (ct.role == TensorRole::embedding && config.tie_word_embeddings);
        const bool more_bits = (ct.role == TensorRole::attn_v || ct.role == TensorRole::ffn_down) &&
                               use_more_bits(ct.layer, config.num_layers);
        if (output || more_bits) p.decl.type = GgmlType::q6_k;
      }
      if (p.decl.ne[0] % ggml_type_traits(p.decl.type).block_size != 0) {
        // Q8_0 -> F16 is what llama.cpp's converter does; for K-quants
        // llama-quantize uses Q5_0 (for Q4_K) or Q8_0 (for Q6_K): we write
        // Q8_0 for both, having no Q5_0 encoder.
        p.decl.type = p.decl.type == GgmlType::q8_0 ? GgmlType::f16 : GgmlType::q8_0;
        p.fell_back = true;
      }
    }
    p.rope_heads = llama_rope_heads(ct.role, config);
    plan.push_back(std::move(p));
  }
  for (const auto& name : checkpoint.names()) {
    if (used.count(name)) continue;
    // tied: llama.cpp reuses token_embd
    if (name == model.architecture.head_slot + ".weight" && config.tie_word_embeddings) continue;
    throw Error(fmt::format("{}: tensor '{}' has no place in a llama-architecture GGUF", model_dir, name),
                "the gguf exporter writes plain Mistral checkpoints (no biases, adapters or extra heads)");
  }
  return plan;
}

}  // namespace mftk::gguf
