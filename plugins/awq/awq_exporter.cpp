// The "awq" exporter (see awq_exporter.h).
#include "awq_exporter.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "awq_calibration.h"
#include "awq_quant.h"
#include "awq_search.h"
#include "mftk/error.h"
#include "mftk/output_path.h"
#include "mftk/safetensors.h"
#include "mftk/tokenizer.h"

namespace mftk::awq {

namespace fs = std::filesystem;

std::vector<KeySpec> awq_keys() {
  return {
      KeySpec::integer("group_size", int64_t(128),
                       "input channels sharing one scale and zero point; must divide every linear's in_features "
                       "(128 is what AutoAWQ, transformers and vLLM expect by default)")
          .range(8, 1 << 20),
      KeySpec::string("calibration_file", std::string(""),
                      "JSONL ({\"text\": ...} or {\"messages\": [...]}) or plain text to run the model on; empty: "
                      "the training documents inside `mftk run`, required for `mftk export`"),
      KeySpec::integer("calibration_rows", int64_t(128), "rows of calibration_len tokens to run (AutoAWQ: 128)")
          .range(1, 1 << 20),
      KeySpec::integer("calibration_len", int64_t(512), "tokens per calibration row (AutoAWQ: 512)").range(1, 1 << 20),
      KeySpec::integer("sample_tokens", int64_t(512),
                       "recorded input rows per linear that the scale and clip searches score on (memory: "
                       "sample_tokens x in_features x 4 bytes per recorded linear)")
          .range(1, 1 << 20),
      KeySpec::boolean("duo_scaling", true, "s = x_mean^a / w_mean^(1-a) (AutoAWQ's default); false: s = x_mean^a"),
      KeySpec::boolean("clip", true, "search a clipping range per group after scaling (AutoAWQ's apply_clip)"),
  };
}

AwqOptions awq_options_from_config(const Config& config) {
  AwqOptions o;
  o.group_size = config.get_int("group_size");
  if (o.group_size % 8 != 0)
    config.fail("group_size", fmt::format("{} is not a multiple of 8", o.group_size), "use 128 (or 64, 32)");
  o.calibration_file = config.get_string("calibration_file");
  o.calibration_rows = config.get_int("calibration_rows");
  o.calibration_len = config.get_int("calibration_len");
  o.sample_tokens = config.get_int("sample_tokens");
  o.duo_scaling = config.get_bool("duo_scaling");
  o.clip = config.get_bool("clip");
  return o;
}

void check_awq_shapes(const ModelShape& config, int64_t group_size) {
  const int64_t q_dim = config.num_heads * config.head_dim, kv_dim = config.num_kv_heads * config.head_dim;
  const std::vector<std::pair<const char*, int64_t>> inputs = {
      {"hidden_size (q/k/v/gate/up in_features)", config.hidden_size},
      {"num_attention_heads x head_dim (o_proj in_features)", q_dim},
      {"intermediate_size (down_proj in_features)", config.intermediate_size}};
  for (const auto& [what, n] : inputs)
    if (n % group_size != 0)
      throw UsageError(fmt::format("awq: group_size {} does not divide {} = {}", group_size, what, n),
                       "--set group_size=N with N dividing every linear's input size (e.g. 32 or 64)");
  const std::vector<std::pair<const char*, int64_t>> outputs = {
      {"hidden_size", config.hidden_size}, {"kv heads x head_dim", kv_dim},
      {"q heads x head_dim", q_dim}, {"intermediate_size", config.intermediate_size}};
  for (const auto& [what, n] : outputs)
    if (n % 8 != 0)
      throw UsageError(fmt::format("awq: {} = {} is not a multiple of 8: AutoAWQ's GEMM layout packs 8 output "
                                   "channels per int32", what, n),
                       "AWQ cannot store this model's shapes; export it with another plugin (gguf)");
}

nlohmann::json awq_quantization_config(int64_t group_size) {
  return {{"quant_method", "awq"}, {"zero_point", true},   {"group_size", group_size},
          {"bits", 4},             {"version", "gemm"},    {"modules_to_not_convert", nullptr}};
}

std::vector<ScalingGroup> scaling_groups(const ModelArchitecture& architecture, const ModelShape& config,
                                         int64_t layer) {
  auto tensor = [&](TensorRole r) -> const std::string& {
    for (const auto& t : architecture.tensors)
      if (t.layer == layer && t.role == r) return t.name;
    throw UsageError(fmt::format("awq: the model describes no {} tensor in layer {} (Model::architecture)",
                                 static_cast<int>(r), layer),
                     "AWQ needs a decoder layer of norm, q/k/v/o attention and a gated MLP");
  };
  auto module = [&](TensorRole r) {
    const std::string& name = tensor(r);
    const std::string suffix = ".weight";
    return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0
               ? name.substr(0, name.size() - suffix.size())
               : name;
  };
  std::vector<ScalingGroup> groups;
  groups.push_back({tensor(TensorRole::attn_norm), true,
                    {module(TensorRole::attn_q), module(TensorRole::attn_k), module(TensorRole::attn_v)}});
  // v_proj's output channel c is o_proj's input channel c only when there
  // is one v head per q head; with GQA each v channel feeds several o_proj
  // columns, so no single row division can absorb a per-column scale
  // (AutoAWQ skips it too): o_proj gets clip and rounding only.
  const bool v_absorbs = config.num_kv_heads == config.num_heads;
  groups.push_back({v_absorbs ? module(TensorRole::attn_v) : "", false, {module(TensorRole::attn_output)}});
  groups.push_back({tensor(TensorRole::ffn_norm), true,
                    {module(TensorRole::ffn_gate), module(TensorRole::ffn_up)}});
  groups.push_back({module(TensorRole::ffn_up), false, {module(TensorRole::ffn_down)}});
  return groups;
}

namespace {

bool skips_clip(const std::string& module) {
  // AutoAWQ leaves query/key projections unclipped: their error is
  // amplified by the softmax, which the per-linear clip loss cannot see.
  return module.find("q_proj") != std::string::npos || module.find("k_proj") != std::string::npos;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("awq: cannot read {}", path.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// calibration_file when the recipe names one, else the caller's documents
// (the pipeline passes the training documents), else a UsageError.
std::vector<std::vector<int32_t>> calibration_rows_for(const ExportJob& job, const AwqOptions& o) {
  if (!o.calibration_file.empty()) {
    const auto tokenizer = Tokenizer::load(job.model_dir);
    return calibration_rows_from_file(o.calibration_file, *tokenizer, o.calibration_rows, o.calibration_len);
  }
  auto rows = calibration_rows_from_documents(job.calibration_rows, o.calibration_rows, o.calibration_len);
  if (rows.empty())
    throw UsageError("awq: no calibration data: AWQ chooses its scales from the activations of real text",
                     "--set calibration_file=FILE (JSONL rows with \"text\" or \"messages\", or plain text lines), "
                     "e.g. the training data");
  return rows;
}

// The OutputGuard kind of the folders written here: one may replace another.
constexpr const char* kAwqCheckpointKind = "awq-checkpoint";

// The per-linear output error relative to the output's mean square: lets
// the report add errors of linears of very different scales.
double relative_error(const at::Tensor& x, const at::Tensor& reference, const at::Tensor& approx) {
  const double power = at::matmul(x, reference.t()).pow(2).mean().item<double>();
  return output_error(x, reference, approx) / std::max(power, 1e-30);
}

// Refused before the calibration pass: OUT must be named, must not be the
// model folder, and must be new, empty or an AWQ folder mftk wrote.
void check_awq_output(const ExportJob& job) {
  const fs::path out(job.out);
  std::error_code ec;
  if (out.empty()) throw UsageError("awq: no output folder", "--out DIR (a new or empty folder, or an earlier AWQ export)");
  if (fs::exists(out, ec) && fs::equivalent(out, job.model_dir, ec))
    throw UsageError(fmt::format("awq: --out {} is the model folder", job.out), "write the AWQ folder somewhere new");
  check_output_path(job.out, kAwqCheckpointKind, OutputShape::folder);
}

// Every decoder layer's scaling groups, in layer order.
std::vector<std::vector<ScalingGroup>> scaling_layers(const ModelArchitecture& architecture,
                                                      const ModelShape& config) {
  std::vector<std::vector<ScalingGroup>> layers;
  for (int64_t layer = 0; layer < config.num_layers; ++layer)
    layers.push_back(scaling_groups(architecture, config, layer));
  return layers;
}

// What one calibration pass leaves: each group's first linear's sampled input.
struct Calibration {
  std::map<std::string, std::shared_ptr<ActivationRecord>> records;
  size_t rows = 0;
  int64_t tokens = 0;
};

// Runs job.model, or the plugin's own model loaded from job.model_dir in
// fp32, over the rows and records the input of every group's first linear
// (the group's other linears read the same input).
Calibration record_calibration(const ExportJob& job, const AwqOptions& o, Model& own,
                               const std::vector<std::vector<ScalingGroup>>& layers,
                               const std::vector<std::vector<int32_t>>& rows) {
  Calibration calibration;
  calibration.rows = rows.size();
  for (const auto& r : rows) calibration.tokens += int64_t(r.size());
  std::vector<std::string> recorded;
  for (const auto& groups : layers)
    for (const auto& g : groups) recorded.push_back(g.linears.front());
  Model* model = job.model;
  if (!model) {
    LoadOptions lo;
    lo.path = job.model_dir;
    lo.compute_dtype = at::kFloat;
    own.load(lo);
    model = &own;
  }
  SlotRecorders recorders(*model, recorded, std::max<int64_t>(1, calibration.tokens / o.sample_tokens),
                          o.sample_tokens);
  run_calibration(*model, rows);
  calibration.records = recorders.records();
  return calibration;
}

// The output's tensor table: three tensors for each quantised linear, every
// other tensor as the checkpoint declares it.
std::vector<SafetensorsWriter::Decl> awq_tensor_table(const CheckpointReader& checkpoint,
                                                      const std::set<std::string>& quantised, int64_t G) {
  std::vector<SafetensorsWriter::Decl> decls;
  for (const auto& name : checkpoint.names()) {
    const auto& info = checkpoint.info(name);
    const std::string module = name.size() > 7 ? name.substr(0, name.size() - 7) : "";
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && quantised.count(module)) {
      const int64_t n_out = info.shape.at(0), n_in = info.shape.at(1);
      decls.push_back({module + ".qweight", at::kInt, {n_in, n_out / 8}});
      decls.push_back({module + ".qzeros", at::kInt, {n_in / G, n_out / 8}});
      decls.push_back({module + ".scales", at::kHalf, {n_in / G, n_out}});
    } else {
      decls.push_back({name, dtype_from_safetensors(info.dtype), info.shape});
    }
  }
  return decls;
}

// What the layer loop adds up across layers, for the file and the report.
struct AwqProgress {
  std::set<std::string> written;  // checkpoint tensors already written (in AWQ form or scaled)
  double rel_rtn = 0, rel_awq = 0;
  int scaled_groups = 0;
};

// One decoder layer while it is scaled: fp32 copies of its linears and the
// inputs each one is scored on.
struct LayerWork {
  std::map<std::string, at::Tensor> weights;     // fp32 copies, [out, in]
  std::map<std::string, at::Tensor> originals;   // before scaling, for the report
  std::map<std::string, at::Tensor> norms;       // norm tensors with 1/s folded in
  std::map<std::string, at::Tensor> inputs;      // module -> its (scaled) sample inputs
  std::map<std::string, at::Tensor> raw_inputs;  // module -> the recorded ones
};

LayerWork read_layer(const std::vector<ScalingGroup>& groups, const CheckpointReader& checkpoint) {
  LayerWork work;
  for (const auto& g : groups)
    for (const auto& l : g.linears) {
      work.weights[l] = checkpoint.get(l + ".weight").to(at::kFloat).clone();  // the mapping is read-only
      work.originals[l] = work.weights[l];
    }
  return work;
}

// Per group, in order: the scale search on the recorded input, 1/s folded
// into the previous op and s into the group's input columns; later groups
// then score on the scaled weights of earlier ones.
void scale_layer(const std::vector<ScalingGroup>& groups, const Calibration& calibration,
                 const CheckpointReader& checkpoint, const AwqOptions& o, LayerWork& work, AwqProgress& progress) {
  for (const auto& g : groups) {
    const auto& record = *calibration.records.at(g.linears.front());
    at::Tensor x = record.sample();
    for (const auto& l : g.linears) work.raw_inputs[l] = x;
    if (!g.prev.empty()) {
      std::vector<at::Tensor> ws;
      for (const auto& l : g.linears) ws.push_back(work.weights[l]);
      const auto found = search_scales(record.abs_mean(), x, ws, o.group_size, 20, o.duo_scaling);
      const at::Tensor& s = found.scales;
      if (g.prev_is_norm) {
        if (!work.norms.count(g.prev)) work.norms[g.prev] = checkpoint.get(g.prev).to(at::kFloat).clone();
        work.norms[g.prev] = work.norms[g.prev] / s;
      } else {
        work.weights[g.prev] = work.weights[g.prev] / s.unsqueeze(1);  // the previous linear's output rows
      }
      for (const auto& l : g.linears) work.weights[l] = work.weights[l] * s;  // input columns
      x = x / s;
      progress.scaled_groups += found.alpha >= 0;
      spdlog::debug("awq: {} alpha {} loss {:.4g} (plain rounding {:.4g})", g.linears.front(), found.alpha,
                    found.loss, found.rtn_loss);
    }
    for (const auto& l : g.linears) work.inputs[l] = x;
  }
}

// Clip, round and pack every linear of the scaled layer, and write its
// norms with the folded scales in their checkpoint dtype.
void write_layer(const std::vector<ScalingGroup>& groups, const CheckpointReader& checkpoint, const AwqOptions& o,
                 LayerWork& work, SafetensorsWriter& writer, AwqProgress& progress) {
  const int64_t G = o.group_size;
  for (const auto& g : groups)
    for (const auto& l : g.linears) {
      at::Tensor w = work.weights[l];
      if (o.clip && !skips_clip(l)) w = apply_clip(w, search_clip(w, work.inputs[l], G), G);
      const auto q = quantize_groups(w, G);
      // The report: this linear's output error with AWQ (its scaled input
      // through the quantised scaled weight, against the exact scaled
      // weight) next to plain rounding of the original weight.
      progress.rel_awq += relative_error(work.inputs[l], work.weights[l], q.dequantize());
      progress.rel_rtn += relative_error(work.raw_inputs[l], work.originals[l], fake_quantize(work.originals[l], G));
      const auto gemm = pack_gemm(q);
      writer.write(l + ".qweight", gemm.qweight);
      writer.write(l + ".qzeros", gemm.qzeros);
      writer.write(l + ".scales", gemm.scales);
      progress.written.insert(l + ".weight");
    }
  for (const auto& [name, norm] : work.norms) {
    writer.write(name, norm.to(dtype_from_safetensors(checkpoint.info(name).dtype)));
    progress.written.insert(name);
  }
}

// config.json with quantization_config; tokenizer and other files copied,
// every safetensors file and its index left out.
void write_awq_side_files(const fs::path& source, const fs::path& tmp, int64_t G) {
  auto cfg = nlohmann::json::parse(read_text(source / "config.json"));
  cfg["quantization_config"] = awq_quantization_config(G);
  write_file_atomic((tmp / "config.json").string(), cfg.dump(2) + "\n");
  for (const auto& entry : fs::directory_iterator(source)) {
    const std::string file = entry.path().filename().string();
    if (!entry.is_regular_file() || file == "config.json" || file == "model.safetensors.index.json" ||
        entry.path().extension() == ".safetensors")
      continue;
    fs::copy_file(entry.path(), tmp / file);
  }
}

// Reads the file back: every declared tensor, with its dtype and shape.
void check_awq_reads_back(const fs::path& file, const std::vector<SafetensorsWriter::Decl>& decls) {
  const auto written_file = SafetensorsFile::open(file.string());
  MFTK_CHECK(written_file->tensors().size() == decls.size(), "awq: {} reads back {} tensors, {} were written",
             written_file->path(), written_file->tensors().size(), decls.size());
  for (const auto& d : decls) {
    const auto* info = written_file->find(d.name);
    MFTK_CHECK(info && info->dtype == dtype_to_safetensors(d.dtype) && info->shape == d.shape,
               "awq: {} does not read back '{}' as written", written_file->path(), d.name);
  }
}

}  // namespace

ExportReport export_awq(const ExportJob& job, const AwqOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  const int64_t G = o.group_size;
  // The checkpoint described by the model plugin (its shape and tensor
  // table), and loaded by it when the caller passes no model to run.
  std::unique_ptr<Model> own = open_model(job.model_dir);
  const ModelShape config = own->shape();
  const ModelArchitecture architecture = own->architecture();
  check_awq_shapes(config, G);
  check_awq_output(job);
  const auto checkpoint = CheckpointReader::open(job.model_dir);

  // 1. Calibration: the input of every group's first linear, recorded in one pass.
  const auto rows = calibration_rows_for(job, o);
  const auto layers = scaling_layers(architecture, config);
  const Calibration calibration = record_calibration(job, o, *own, layers, rows);
  own.reset();  // the weights are read from the checkpoint from here on
  spdlog::info("awq: calibration on {} rows, {} tokens; searches score on up to {} sampled tokens", calibration.rows,
               calibration.tokens, o.sample_tokens);

  // 2. The output's tensor table, written in a private folder beside OUT and
  // put in place only once it reads back.
  std::set<std::string> quantised;
  for (const auto& groups : layers)
    for (const auto& g : groups) quantised.insert(g.linears.begin(), g.linears.end());
  const auto decls = awq_tensor_table(checkpoint, quantised, G);
  OutputGuard building(job.out, kAwqCheckpointKind, OutputShape::folder);
  const fs::path tmp = building.path();
  SafetensorsWriter writer((tmp / "model.safetensors").string(), decls);

  // 3. Layer by layer: scale, clip, round, write.
  AwqProgress progress;
  for (const auto& groups : layers) {
    LayerWork work = read_layer(groups, checkpoint);
    scale_layer(groups, calibration, checkpoint, o, work, progress);
    write_layer(groups, checkpoint, o, work, writer, progress);
  }
  // 4. Everything else as it is: embeddings, final norm, lm_head, any bias.
  for (const auto& name : checkpoint.names())
    if (!progress.written.count(name)) writer.write(name, checkpoint.get(name));
  writer.finish();

  // 5. config.json and the tokenizer; 6. the file read back before the folder is put in place.
  write_awq_side_files(fs::path(job.model_dir), tmp, G);
  check_awq_reads_back(tmp / "model.safetensors", decls);
  building.commit();

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const fs::path out(job.out);
  ExportReport report;
  report.path = out.string();
  report.bytes = int64_t(fs::file_size(out / "model.safetensors"));
  report.summary = fmt::format(
      "{} linears 4-bit (group {}), {} of {} groups scaled, calibration {} tokens; summed relative output error on "
      "the calibration sample {:.4g} (plain rounding {:.4g}), {:.1f} s",
      quantised.size(), G, progress.scaled_groups, layers.size() * 4, calibration.tokens, progress.rel_awq,
      progress.rel_rtn, seconds);
  return report;
}

}  // namespace mftk::awq
