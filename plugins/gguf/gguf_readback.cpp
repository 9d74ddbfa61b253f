// GGUF -> checkpoint folder for the export parity gate (gguf_readback.h).
#include "gguf_readback.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ggml_quants.h"
#include "gguf_exporter.h"
#include "llama_export_plan.h"
#include "mftk/error.h"
#include "mftk/gguf_reader.h"
#include "mftk/safetensors.h"

namespace mftk::gguf {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("gguf read-back: cannot read {}", path.string()));
  return nlohmann::json::parse(in);
}

// config.json as a GGUF reader would set the model up: the llama.*
// hyperparameters from the file itself (a wrong one there shows up as
// divergence instead of being hidden by the source folder's copy).
nlohmann::json config_from_metadata(const GgufFile& file, nlohmann::json config, bool has_output) {
  auto integer = [&](const char* key, const char* field) {
    if (const auto* v = file.find(key)) config[field] = v->as_int();
  };
  auto real = [&](const char* key, const char* field) {
    if (const auto* v = file.find(key)) config[field] = v->real;
  };
  integer("llama.vocab_size", "vocab_size");
  integer("llama.context_length", "max_position_embeddings");
  integer("llama.embedding_length", "hidden_size");
  integer("llama.block_count", "num_hidden_layers");
  integer("llama.feed_forward_length", "intermediate_size");
  integer("llama.attention.head_count", "num_attention_heads");
  integer("llama.attention.head_count_kv", "num_key_value_heads");
  integer("llama.attention.key_length", "head_dim");
  integer("llama.attention.sliding_window", "sliding_window");
  real("llama.rope.freq_base", "rope_theta");
  real("llama.attention.layer_norm_rms_epsilon", "rms_norm_eps");
  // Without an output matrix llama.cpp reuses token_embd: tied.
  config["tie_word_embeddings"] = !has_output;
  config["torch_dtype"] = "float32";
  config.erase("quantization_config");
  return config;
}

}  // namespace

std::string read_back_gguf(const std::string& gguf_path, const std::string& model_dir, const std::string& out_dir) {
  const auto file = GgufFile::open(gguf_path);
  const auto described = describe_checkpoint(model_dir);
  const auto checkpoint = CheckpointReader::open(model_dir);
  // The names, shapes and row orders; the stored types come from the file.
  const auto plan = plan_llama_tensors(described, checkpoint, Encoding::f32, model_dir);

  fs::create_directories(out_dir);
  std::vector<SafetensorsWriter::Decl> decls;
  for (const auto& p : plan) decls.push_back({p.hf_name, at::kFloat, p.hf_shape});
  SafetensorsWriter writer((fs::path(out_dir) / "model.safetensors").string(), decls);
  bool has_output = false;
  for (const auto& p : plan) {
    const auto* info = file.find_tensor(p.decl.name);
    if (!info)
      throw Error(fmt::format("gguf read-back: {} has no tensor '{}' (from {})", gguf_path, p.decl.name, p.hf_name));
    if (info->ne != p.decl.ne)
      throw Error(fmt::format("gguf read-back: {}: tensor '{}' has ne [{}], the model needs [{}]", gguf_path,
                              p.decl.name, fmt::join(info->ne, ", "), fmt::join(p.decl.ne, ", ")));
    has_output |= p.decl.name == "output.weight";
    const int64_t cols = p.hf_shape.back();
    int64_t rows = 1;
    for (size_t d = 0; d + 1 < p.hf_shape.size(); ++d) rows *= p.hf_shape[d];
    const uint64_t row_bytes = ggml_row_bytes(info->type, uint64_t(cols));
    const auto bytes = file.data(*info);
    MFTK_CHECK(bytes.size() >= row_bytes * uint64_t(rows), "gguf read-back: {}: '{}' holds {} bytes, {} expected",
               gguf_path, p.decl.name, bytes.size(), row_bytes * uint64_t(rows));
    std::vector<int64_t> order;  // GGUF row r holds HF row order[r]
    if (p.rope_heads > 0) order = llama_rope_row_order(rows, p.rope_heads);
    at::Tensor w = at::empty(p.hf_shape, at::kFloat);
    float* out = w.data_ptr<float>();
    const auto* in = reinterpret_cast<const uint8_t*>(bytes.data());
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t hf_row = order.empty() ? r : order[size_t(r)];
        decode_row(info->type, in + uint64_t(r) * row_bytes, out + hf_row * cols, size_t(cols));
      }
    });
    writer.write(p.hf_name, w);
  }
  writer.finish();

  const fs::path source(model_dir), target(out_dir);
  const auto config = config_from_metadata(file, read_json(source / "config.json"), has_output);
  {
    std::ofstream out(target / "config.json");
    out << config.dump(2) << "\n";
    if (!out) throw Error(fmt::format("gguf read-back: cannot write {}", (target / "config.json").string()));
  }
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
    if (fs::exists(source / f)) fs::copy_file(source / f, target / f, fs::copy_options::overwrite_existing);
  return out_dir;
}

std::optional<std::string> GgufExporter::read_back(const ExportJob& job, const ExportReport& report,
                                                   const std::string& scratch_dir) {
  return read_back_gguf(report.path, job.model_dir, (fs::path(scratch_dir) / "checkpoint").string());
}

}  // namespace mftk::gguf
