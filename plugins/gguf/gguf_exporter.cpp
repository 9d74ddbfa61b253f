// The "gguf" exporter (see gguf_exporter.h).
#include "gguf_exporter.h"

#include <chrono>
#include <filesystem>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "ggml_quants.h"
#include "gguf_modelfile.h"
#include "mftk/error.h"
#include "mftk/gguf_reader.h"
#include "mftk/output_path.h"
#include "mftk/safetensors.h"

namespace mftk::gguf {

namespace {
constexpr const char* kSupported = "f32, f16, bf16, q8_0, q4_k, q6_k, q4_k_m";
}

std::vector<KeySpec> gguf_keys() {
  return {
      KeySpec::string("type", std::string("f16"),
                      "how 2-D weights are stored: f32, f16, bf16, q8_0, q4_k, q6_k or q4_k_m "
                      "(llama-quantize's mix); norms are always F32"),
      KeySpec::string("name", std::string(""), "general.name in the file; empty: the model folder's name"),
  };
}

GgufExportOptions gguf_options_from_config(const Config& config) {
  GgufExportOptions o;
  const std::string& type = config.get_string("type");
  auto encoding = parse_encoding(type);
  if (!encoding) {
    config.fail("type", fmt::format("unknown encoding \"{}\"; the gguf exporter writes {}", type, kSupported),
                "q4_k_m is llama.cpp's usual 4-bit choice, q8_0 its near-lossless one");
  }
  o.encoding = *encoding;
  o.name = config.get_string("name");
  return o;
}

bool is_gguf_written_by_mftk(const std::string& path) {
  try {
    const auto file = GgufFile::open(path);
    const auto* mark = file.find(kWrittenByKey);
    return mark && mark->type == GgufValueType::string && mark->text == "mftk";
  } catch (const std::exception&) {
    return false;  // not a GGUF file, or not one that parses: not ours
  }
}

ExportReport export_gguf(const std::string& model_dir, const std::string& out, const GgufExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  const auto model = describe_checkpoint(model_dir);  // the model plugin's shape and tensor table
  const auto checkpoint = CheckpointReader::open(model_dir);
  std::string name = options.name;
  if (name.empty()) name = std::filesystem::path(model_dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::absolute(model_dir).lexically_normal().parent_path().filename().string();

  // `out` may be new or a GGUF file mftk wrote (its kWrittenByKey says so);
  // anything else is refused before any work. The file is written in a
  // private folder beside it and renamed over it once it reads back.
  OutputGuard guard(out, "gguf", OutputShape::file, is_gguf_written_by_mftk);
  const std::string& staged = guard.path();
  ModelfileBeside modelfile(out);  // claimed now: a foreign file there is refused before the work

  const auto tokenizer = load_tokenizer_facts(model_dir, model.shape.vocab_size);
  auto metadata = llama_metadata(model.shape, tokenizer, options.encoding, name);
  metadata.emplace_back(kWrittenByKey, GgufValue::str("mftk"));
  const auto plan = plan_llama_tensors(model, checkpoint, options.encoding, model_dir);

  std::vector<GgufTensorDecl> decls;
  for (const auto& p : plan) decls.push_back(p.decl);
  GgufWriter writer(staged, metadata, decls);

  int fallbacks = 0;
  std::vector<uint8_t> encoded;
  for (const auto& p : plan) {
    // A mapped view; .to(kFloat) copies only when the checkpoint is not fp32.
    const at::Tensor source = checkpoint.get(p.hf_name);
    at::Tensor w = source.to(at::kFloat).contiguous();
    const float* data = w.data_ptr<float>();
    const int64_t cols = p.hf_shape.back();
    const int64_t rows = w.numel() / std::max<int64_t>(cols, 1);
    const uint64_t row_bytes = ggml_row_bytes(p.decl.type, uint64_t(cols));
    std::vector<int64_t> order;
    if (p.rope_heads > 0) order = llama_rope_row_order(rows, p.rope_heads);
    encoded.resize(size_t(row_bytes * uint64_t(rows)));
    // Rows are encoded in GGUF order straight from the source rows: the
    // permutation costs no copy of the tensor.
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t src = order.empty() ? r : order[size_t(r)];
        encode_row(p.decl.type, data + src * cols, encoded.data() + uint64_t(r) * row_bytes, size_t(cols));
      }
    });
    writer.write(encoded.data(), encoded.size());
    // Streaming: the source pages need not stay resident once encoded (else
    // the whole checkpoint ends up in RSS by the last tensor).
    w = at::Tensor();
    release_mapped_pages(source);
    if (p.fell_back) {
      ++fallbacks;
      spdlog::warn("gguf: {} ({}) has rows of {} values, not a whole number of {} blocks: written as {}",
                   p.decl.name, p.hf_name, cols, ggml_type_traits(weight_type(options.encoding)).name,
                   ggml_type_traits(p.decl.type).name);
    }
  }
  encoded = {};
  const uint64_t bytes = writer.finish();
  std::vector<GgufTensorDecl> declared;
  for (const auto& p : plan) declared.push_back(p.decl);
  check_gguf_reads_back(staged, metadata, declared);
  guard.commit();
  OllamaModelfile ollama;
  ollama.format = checkpoint_chat_format(model_dir);
  ollama.from = modelfile_reference(out, modelfile.path());
  ollama.comment = fmt::format("{}: {}, exported from {}", std::filesystem::path(out).filename().string(), name,
                               model_dir);
  modelfile.commit(ollama);

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ExportReport report;
  report.path = out;
  report.bytes = int64_t(bytes);
  report.also_written = {modelfile.path()};
  report.summary = fmt::format("{} tensors, {} weights, {} metadata keys, {:.1f} s{}", plan.size(),
                               to_string(options.encoding), metadata.size(), seconds,
                               fallbacks ? fmt::format(" ({} tensors in a fallback type)", fallbacks) : "");
  return report;
}

}  // namespace mftk::gguf
