// The "gguf_lora" exporter (see gguf_lora_exporter.h).
#include "gguf_lora_exporter.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ggml_quants.h"
#include "gguf_exporter.h"
#include "gguf_modelfile.h"
#include "mftk/error.h"
#include "mftk/gguf_reader.h"
#include "mftk/output_path.h"
#include "mftk/peft_config.h"
#include "mftk/safetensors.h"

namespace mftk::gguf {

namespace fs = std::filesystem;

namespace {

constexpr const char* kPeftPrefix = "base_model.model.";

// "runs/a/adapter/" -> "adapter"
std::string folder_name(const std::string& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

// PEFT may keep the adapter's name in a tensor's path ("lora_A.default.weight");
// the lora plugin accepts both spellings, and so does this exporter.
std::string without_adapter_name(const std::string& name) {
  std::string out;
  std::stringstream in(name);
  for (std::string part; std::getline(in, part, '.');)
    if (part != "default") out += (out.empty() ? "" : ".") + part;
  return out;
}

std::string strip_suffix(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0
             ? s.substr(0, s.size() - suffix.size())
             : s;
}

void check_lora_encoding(Encoding e, const std::string& what) {
  if (e != Encoding::f32 && e != Encoding::f16 && e != Encoding::bf16)
    throw UsageError(fmt::format("{}: type = {}: an adapter file is written as f32, f16 or bf16", what, to_string(e)),
                     "use type = f32 (llama.cpp's converter's default) or f16");
}

}  // namespace

std::vector<KeySpec> gguf_lora_keys() {
  return {
      KeySpec::string("type", std::string("f32"),
                      "how lora_a / lora_b are stored: f32 (as llama.cpp's convert_lora_to_gguf.py writes by "
                      "default), f16 or bf16"),
      KeySpec::string("name", std::string(""),
                      "general.name in the file; empty: \"<base folder>+<adapter folder>\""),
      KeySpec::string("base_gguf", std::string(""),
                      "the base model's GGUF file, named on the Modelfile's FROM line (a path relative to the "
                      "current folder); empty: a placeholder FROM line with a comment saying what to put there"),
  };
}

GgufLoraExportOptions gguf_lora_options_from_config(const Config& config) {
  GgufLoraExportOptions o;
  const std::string& type = config.get_string("type");
  const auto encoding = parse_encoding(type);
  if (!encoding || (*encoding != Encoding::f32 && *encoding != Encoding::f16 && *encoding != Encoding::bf16))
    config.fail("type", fmt::format("\"{}\" is not an adapter encoding; gguf_lora writes f32, f16 or bf16", type),
                "llama.cpp applies the adapter in the precision stored; f32 is exact");
  o.encoding = *encoding;
  o.name = config.get_string("name");
  o.base_gguf = config.get_string("base_gguf");
  return o;
}

LoraExportPlan plan_lora_tensors(const DescribedCheckpoint& model, const std::string& adapter_dir,
                                 Encoding encoding) {
  check_lora_encoding(encoding, "gguf_lora");
  const std::string config_path = (fs::path(adapter_dir) / "adapter_config.json").string();
  const PeftLoraConfig peft = read_peft_lora_config(config_path);
  if (!peft.modules_to_save.empty())
    throw UsageError(fmt::format("gguf_lora: {} trains {} in full (modules_to_save); a llama.cpp adapter file holds "
                                 "only LoRA pairs",
                                 config_path, fmt::join(peft.modules_to_save, ", ")),
                     "export the merged model with --plugin gguf (mftk export --model BASE --adapter DIR) instead");
  LoraExportPlan plan;
  plan.r = peft.r;
  plan.peft_scaling = lora_scaling(peft.alpha, peft.r, peft.use_rslora);
  // llama.cpp scales by alpha / r; the alpha that gives PEFT's scaling.
  const double alpha = peft.use_rslora ? plan.peft_scaling * double(peft.r) : peft.alpha;
  if (!(std::isfinite(alpha) && alpha != 0.0 && std::isfinite(float(alpha))))
    throw UsageError(fmt::format("gguf_lora: {}: lora_alpha = {} cannot be written: llama.cpp reads an alpha of 0 "
                                 "as \"scale 1\" and needs a finite float",
                                 config_path, peft.alpha),
                     "an adapter with lora_alpha = 0 changes nothing; export the base model instead");
  plan.alpha = float(alpha);

  const CheckpointReader adapter = CheckpointReader::open(adapter_dir, "adapter_model");
  std::map<std::string, std::string> stored;  // name without the adapter name -> name in the file
  for (const auto& name : adapter.names()) stored[without_adapter_name(name)] = name;
  std::set<std::string> used;
  const GgmlType type = weight_type(encoding);
  for (const auto& ct : model.architecture.tensors) {
    if (ct.shape.size() != 2) continue;
    const std::string slot = std::string(kPeftPrefix) + strip_suffix(ct.name, ".weight");
    const auto a = stored.find(slot + ".lora_A.weight");
    const auto b = stored.find(slot + ".lora_B.weight");
    if (a == stored.end() && b == stored.end()) continue;
    if (a == stored.end() || b == stored.end())
      throw Error(fmt::format("gguf_lora: {}: '{}' has only its lora_{} tensor", adapter_dir, ct.name,
                              a == stored.end() ? "B" : "A"),
                  "re-save the adapter");
    if (ct.role == TensorRole::embedding)
      throw UsageError(fmt::format("gguf_lora: {}: LoRA on the token embeddings ('{}') is not written", adapter_dir,
                                   ct.name),
                       "export the merged model with --plugin gguf instead");
    PlannedLoraPair p;
    p.hf_name = ct.name;
    p.a_source = a->second;
    p.b_source = b->second;
    p.a_shape = adapter.info(p.a_source).shape;
    p.b_shape = adapter.info(p.b_source).shape;
    const std::vector<int64_t> want_a = {peft.r, ct.shape[1]}, want_b = {ct.shape[0], peft.r};
    if (p.a_shape != want_a || p.b_shape != want_b)
      throw UsageError(fmt::format("gguf_lora: {}: '{}' is [{}] and '{}' [{}]; the base weight '{}' [{}] with r = {} "
                                   "needs [{}] and [{}]",
                                   adapter_dir, p.a_source, fmt::join(p.a_shape, ", "), p.b_source,
                                   fmt::join(p.b_shape, ", "), ct.name, fmt::join(ct.shape, ", "), peft.r,
                                   fmt::join(want_a, ", "), fmt::join(want_b, ", ")),
                       "the adapter was trained on another base model, or with per-module ranks");
    const std::string gguf_name = llama_tensor_name(ct.role, ct.layer, ct.name);
    p.a = {gguf_name + ".lora_a", type, {uint64_t(p.a_shape[1]), uint64_t(p.a_shape[0])}};
    p.b = {gguf_name + ".lora_b", type, {uint64_t(p.b_shape[1]), uint64_t(p.b_shape[0])}};
    p.rope_heads = llama_rope_heads(ct.role, model.shape);
    used.insert(a->first);
    used.insert(b->first);
    plan.pairs.push_back(std::move(p));
  }
  std::vector<std::string> left;
  for (const auto& [name, in_file] : stored)
    if (!used.count(name)) left.push_back(in_file);
  if (!left.empty())
    throw UsageError(fmt::format("gguf_lora: {}: tensor{} {} {} no place in a llama.cpp adapter for this base "
                                 "(llama.cpp applies LoRA pairs to weights its base GGUF holds; {})",
                                 adapter_dir, left.size() > 1 ? "s" : "", fmt::join(left, ", "),
                                 left.size() > 1 ? "have" : "has",
                                 model.shape.tie_word_embeddings ? "with tied embeddings it has no output.weight"
                                                            : "no weights trained in full, no biases"),
                     "export the merged model with --plugin gguf instead");
  if (plan.pairs.empty())
    throw UsageError(fmt::format("gguf_lora: {}: no LoRA pair in adapter_model.safetensors", adapter_dir),
                     "is this a LoRA adapter folder (PEFT layout)?");
  return plan;
}

GgufWriter::Metadata lora_metadata(const LoraExportPlan& plan, Encoding encoding, const std::string& name) {
  GgufWriter::Metadata m;
  m.emplace_back("general.architecture", GgufValue::str("llama"));
  m.emplace_back("general.type", GgufValue::str("adapter"));
  m.emplace_back("general.name", GgufValue::str(name));
  m.emplace_back("general.alignment", GgufValue::u32(kGgufDefaultAlignment));
  m.emplace_back("general.file_type", GgufValue::u32(llama_file_type(encoding)));
  m.emplace_back("general.quantization_version", GgufValue::u32(2));
  m.emplace_back("adapter.type", GgufValue::str("lora"));
  m.emplace_back("adapter.lora.alpha", GgufValue::f32(plan.alpha));
  m.emplace_back(kWrittenByKey, GgufValue::str("mftk"));
  return m;
}

namespace {

// rows x cols fp32 values, row r of the file taken from row order[r] (or r).
std::vector<uint8_t> encode_rows(GgmlType type, const at::Tensor& t, const std::vector<int64_t>& order) {
  const at::Tensor w = t.to(at::kFloat).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  const uint64_t row_bytes = ggml_row_bytes(type, uint64_t(cols));
  std::vector<uint8_t> out(size_t(row_bytes * uint64_t(rows)));
  const float* data = w.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t src = order.empty() ? r : order[size_t(r)];
    encode_row(type, data + src * cols, out.data() + uint64_t(r) * row_bytes, size_t(cols));
  }
  return out;
}

}  // namespace

ExportReport export_gguf_lora(const std::string& base_model_dir, const std::string& adapter_dir, const std::string& out,
                              const GgufLoraExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (adapter_dir.empty() || base_model_dir.empty())
    throw UsageError("gguf_lora: no adapter to export: this exporter writes an adapter on its own",
                     "mftk export --plugin gguf_lora --model BASE --adapter ADAPTER_DIR --out adapter.gguf, or an "
                     "[[export]] table in a recipe that trains an adapter");
  const auto model = describe_checkpoint(base_model_dir);
  OutputGuard guard(out, "gguf", OutputShape::file, is_gguf_written_by_mftk);
  ModelfileBeside modelfile(out);
  const LoraExportPlan plan = plan_lora_tensors(model, adapter_dir, options.encoding);
  std::string name = options.name;
  if (name.empty()) name = folder_name(base_model_dir) + "+" + folder_name(adapter_dir);
  const auto metadata = lora_metadata(plan, options.encoding, name);

  std::vector<GgufTensorDecl> decls;
  for (const auto& p : plan.pairs) {
    decls.push_back(p.a);
    decls.push_back(p.b);
  }
  GgufWriter writer(guard.path(), metadata, decls);
  const CheckpointReader adapter = CheckpointReader::open(adapter_dir, "adapter_model");
  for (const auto& p : plan.pairs) {
    auto a = encode_rows(p.a.type, adapter.get(p.a_source), {});
    writer.write(a.data(), a.size());
    std::vector<int64_t> order;
    if (p.rope_heads > 0) order = llama_rope_row_order(p.b_shape[0], p.rope_heads);
    auto b = encode_rows(p.b.type, adapter.get(p.b_source), order);
    writer.write(b.data(), b.size());
  }
  const uint64_t bytes = writer.finish();
  check_gguf_reads_back(guard.path(), metadata, decls);
  guard.commit();

  OllamaModelfile ollama;
  ollama.format = checkpoint_chat_format(base_model_dir);
  ollama.adapter = modelfile_reference(out, modelfile.path());
  if (!options.base_gguf.empty()) ollama.from = modelfile_reference(options.base_gguf, modelfile.path());
  else ollama.from_placeholder = "./" + folder_name(base_model_dir) + ".gguf";
  ollama.comment = fmt::format("{}: LoRA adapter {} for the base {} (r = {}, alpha = {})",
                               fs::path(out).filename().string(), adapter_dir, base_model_dir, plan.r, plan.alpha);
  modelfile.commit(ollama);

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ExportReport report;
  report.path = out;
  report.bytes = int64_t(bytes);
  report.also_written = {modelfile.path()};
  report.summary = fmt::format("{} LoRA pairs (r = {}, adapter.lora.alpha = {}, scale {}), {}, {:.1f} s",
                               plan.pairs.size(), plan.r, plan.alpha, plan.peft_scaling, to_string(options.encoding),
                               seconds);
  return report;
}

std::optional<std::string> read_back_gguf_lora(const std::string& gguf_path, const std::string& base_model_dir,
                                               const std::string& out_dir) {
  const auto model = describe_checkpoint(base_model_dir);
  const auto base = CheckpointReader::open(base_model_dir);
  std::vector<PlannedTensor> plan;
  try {
    plan = plan_llama_tensors(model, base, Encoding::f32, base_model_dir);
  } catch (const Error&) {
    return std::nullopt;  // not plain dense weights: nothing to apply the adapter to here
  }
  for (const auto& p : plan) {
    const std::string& dtype = base.info(p.hf_name).dtype;
    if (dtype != "F32" && dtype != "F16" && dtype != "BF16") return std::nullopt;
  }

  const auto file = GgufFile::open(gguf_path);
  const auto* alpha_value = file.find("adapter.lora.alpha");
  if (!alpha_value) throw Error(fmt::format("gguf_lora read-back: {} has no adapter.lora.alpha", gguf_path));
  const double alpha = alpha_value->real;
  auto decode = [&](const GgufTensorInfo& info) {
    // ne = [cols, rows]
    const int64_t cols = int64_t(info.ne[0]), rows = int64_t(info.ne[1]);
    at::Tensor t = at::empty({rows, cols}, at::kFloat);
    const uint64_t row_bytes = ggml_row_bytes(info.type, uint64_t(cols));
    const auto bytes = file.data(info);
    const auto* in = reinterpret_cast<const uint8_t*>(bytes.data());
    for (int64_t r = 0; r < rows; ++r)
      decode_row(info.type, in + uint64_t(r) * row_bytes, t.data_ptr<float>() + r * cols, size_t(cols));
    return t;
  };

  fs::create_directories(out_dir);
  std::vector<SafetensorsWriter::Decl> decls;
  for (const auto& p : plan) decls.push_back({p.hf_name, at::kFloat, p.hf_shape});
  SafetensorsWriter writer((fs::path(out_dir) / "model.safetensors").string(), decls);
  size_t applied = 0;
  for (const auto& p : plan) {
    at::Tensor w = base.get(p.hf_name).to(at::kFloat).contiguous();
    const auto* a_info = file.find_tensor(p.decl.name + ".lora_a");
    const auto* b_info = file.find_tensor(p.decl.name + ".lora_b");
    if (a_info && b_info) {
      const at::Tensor a = decode(*a_info);  // [r, in]
      at::Tensor b_file = decode(*b_info);   // [out, r], rows in GGUF order
      at::Tensor b = b_file;
      if (p.rope_heads > 0) {
        const auto order = llama_rope_row_order(b_file.size(0), p.rope_heads);
        b = at::empty_like(b_file);
        for (size_t r = 0; r < order.size(); ++r) b[order[r]].copy_(b_file[int64_t(r)]);
      }
      const double scale = alpha / double(b.size(1));  // llama.cpp: alpha / r, r = lora_b's ne[0]
      w = w + scale * at::matmul(b, a);
      ++applied;
    }
    writer.write(p.hf_name, w);
  }
  writer.finish();
  MFTK_CHECK(applied * 2 == file.tensors().size(), "gguf_lora read-back: {}: {} of its {} tensors name a base weight",
             gguf_path, applied * 2, file.tensors().size());

  const fs::path source(base_model_dir), target(out_dir);
  nlohmann::json cfg;
  {
    std::ifstream in(source / "config.json");
    cfg = nlohmann::json::parse(in);
  }
  cfg["torch_dtype"] = "float32";
  cfg.erase("quantization_config");
  {
    std::ofstream o(target / "config.json");
    o << cfg.dump(2) << "\n";
    if (!o) throw Error(fmt::format("gguf_lora read-back: cannot write {}", (target / "config.json").string()));
  }
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
    if (fs::exists(source / f)) fs::copy_file(source / f, target / f, fs::copy_options::overwrite_existing);
  return out_dir;
}

ExportReport GgufLoraExporter::run(const ExportJob& job) {
  return export_gguf_lora(job.base_model_dir, job.adapter_dir, job.out, options_);
}

std::optional<std::string> GgufLoraExporter::read_back(const ExportJob& job, const ExportReport& report,
                                                       const std::string& scratch_dir) {
  return read_back_gguf_lora(report.path, job.base_model_dir, (fs::path(scratch_dir) / "checkpoint").string());
}

}  // namespace mftk::gguf
