// The "awq" exporter: the group quantiser and AutoAWQ's GEMM packing
// against an unpacker written here from docs/formats.md §5.2-5.3 (AWQ packing, quantisation; not the
// plugin's code), AWQ against plain round-to-nearest on held-out
// activations, the written folder, and the refusals.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "awq/awq_calibration.h"
#include "awq/awq_exporter.h"
#include "awq/awq_quant.h"
#include "awq/awq_search.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "mftk/tokenizer.h"
#include "mistral/mistral_config.h"
#include "mistral/mistral_model.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using mftk::awq::GroupQuantized;

// docs/formats.md §5.2 (AWQ packing): nibble i of a word is (v >> 4i) & 0xF; output channel j
// of packed column c sits in nibble REVERSE[j].
at::Tensor unpack_awq_columns(const at::Tensor& packed) {
  static const int kReverse[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  const at::Tensor p = packed.contiguous();
  const int64_t rows = p.size(0), words = p.size(1);
  at::Tensor out = at::zeros({rows, words * 8}, at::kInt);
  const int32_t* src = p.data_ptr<int32_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < words; ++c) {
      const uint32_t v = uint32_t(src[r * words + c]);
      for (int j = 0; j < 8; ++j) dst[r * words * 8 + c * 8 + j] = int32_t((v >> (4 * kReverse[j])) & 0xF);
    }
  return out;
}

// docs/formats.md §5.3 (AWQ quantisation): W[k, o] = (q[k, o] - zero[k/G, o]) * scale[k/G, o]; the
// nn.Linear weight is W^T.
at::Tensor dequantize_awq(const at::Tensor& qweight, const at::Tensor& qzeros, const at::Tensor& scales,
                          int64_t group_size) {
  const at::Tensor q = unpack_awq_columns(qweight).to(at::kFloat);  // [in, out]
  const at::Tensor z = unpack_awq_columns(qzeros).to(at::kFloat).repeat_interleave(group_size, 0);
  const at::Tensor s = scales.to(at::kFloat).repeat_interleave(group_size, 0);
  return ((q - z) * s).t().contiguous();
}

TEST(AwqQuant, HandWorkedGroup) {
  // max 2, min -1: scale = fp16(3/15) = 0.199951171875, zero = -round(-1 / scale) = 5,
  // codes round(w / scale) + 5 = 0, 5, 8 (2.5006 rounds up), 15.
  const at::Tensor w = at::tensor({-1.0f, 0.0f, 0.5f, 2.0f}).reshape({1, 4});
  const auto q = mftk::awq::quantize_groups(w, 4);
  EXPECT_EQ(q.scales.scalar_type(), at::kHalf);
  EXPECT_FLOAT_EQ(q.scales.to(at::kFloat).item<float>(), 0.199951171875f);
  EXPECT_EQ(q.zeros.item<int32_t>(), 5);
  EXPECT_TRUE(at::equal(q.codes, at::tensor({0, 5, 8, 15}, at::kInt).reshape({1, 4})));
}

TEST(AwqPacking, HandWorkedWord) {
  // Channels 0..7 hold 1..8; nibbles from the bottom hold channels 0,2,4,6,1,3,5,7:
  // 1,3,5,7,2,4,6,8 -> 0x86427531, a negative int32.
  const at::Tensor v = at::tensor({1, 2, 3, 4, 5, 6, 7, 8}, at::kInt).reshape({1, 8});
  const at::Tensor word = mftk::awq::pack_int4_columns(v);
  ASSERT_EQ(word.sizes(), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(word.item<int32_t>(), int32_t(0x86427531u));
  EXPECT_TRUE(at::equal(unpack_awq_columns(word), v));
}

TEST(AwqPacking, UnpacksToTheChosenIntegersAndScales) {
  at::manual_seed(3);
  const at::Tensor w = at::randn({16, 8});  // out 16 (two packed words), in 8 (two groups of 4)
  const auto q = mftk::awq::quantize_groups(w, 4);
  const auto gemm = mftk::awq::pack_gemm(q);
  ASSERT_EQ(gemm.qweight.sizes(), (std::vector<int64_t>{8, 2}));
  ASSERT_EQ(gemm.qzeros.sizes(), (std::vector<int64_t>{2, 2}));
  ASSERT_EQ(gemm.scales.sizes(), (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(gemm.qweight.scalar_type(), at::kInt);
  EXPECT_EQ(gemm.scales.scalar_type(), at::kHalf);
  EXPECT_TRUE(at::equal(unpack_awq_columns(gemm.qweight), q.codes.t()));
  EXPECT_TRUE(at::equal(unpack_awq_columns(gemm.qzeros), q.zeros.t()));
  EXPECT_TRUE(at::equal(gemm.scales, q.scales.t()));
  EXPECT_TRUE(at::equal(dequantize_awq(gemm.qweight, gemm.qzeros, gemm.scales, 4), q.dequantize()));
}

TEST(AwqQuant, DequantisedWithinHalfAStepOfEachGroup) {
  at::manual_seed(5);
  const int64_t G = 32;
  const at::Tensor w = at::randn({24, 128}) * 0.05;
  const auto q = mftk::awq::quantize_groups(w, G);
  const at::Tensor err = (q.dequantize() - w).abs().reshape({24, 128 / G, G});
  const at::Tensor half_step = q.scales.to(at::kFloat).unsqueeze(2) / 2;
  // Normal weights span zero in every group, so the zero point is never
  // clamped and rounding is the only error: at most half a step (plus fp32 slack).
  EXPECT_TRUE((err <= half_step * (1 + 1e-4) + 1e-7).all().item<bool>()) << (err - half_step).max().item<float>();
  EXPECT_TRUE((q.codes >= 0).all().item<bool>() && (q.codes <= 15).all().item<bool>());
}

// Activations like an LLM's: channel magnitudes spread over an order of
// magnitude, a few outlier channels much larger. The channel profile is the
// same in every draw (a property of the model); `seed` draws the tokens.
at::Tensor llm_like_activations(int64_t tokens, int64_t in, uint64_t seed) {
  at::manual_seed(11);
  at::Tensor channel = at::exp(at::randn({in}) * 0.7);
  const at::Tensor outliers = at::randperm(in).narrow(0, 0, 4);
  channel.index_put_({outliers}, channel.index({outliers}) * 25);
  at::manual_seed(int64_t(seed));
  return at::randn({tokens, in}) * channel;
}

TEST(AwqSearch, BeatsRoundToNearestOnHeldOutActivations) {
  const int64_t in = 256, out = 96, G = 64;
  at::manual_seed(1);
  const at::Tensor w = at::randn({out, in}) * 0.02;
  const at::Tensor calibration = llm_like_activations(512, in, 100);
  const at::Tensor held_out = llm_like_activations(512, in, 200);
  const auto found = mftk::awq::search_scales(calibration.abs().mean(0), calibration, {w}, G);
  const at::Tensor& s = found.scales;
  at::Tensor scaled = w * s;
  scaled = mftk::awq::apply_clip(scaled, mftk::awq::search_clip(scaled, calibration / s, G), G);
  const at::Tensor awq_effective = mftk::awq::fake_quantize(scaled, G) / s;
  const at::Tensor rtn_effective = mftk::awq::fake_quantize(w, G);
  const double awq = mftk::awq::output_error(held_out, w, awq_effective);
  const double rtn = mftk::awq::output_error(held_out, w, rtn_effective);
  RecordProperty("awq_over_rtn_held_out", std::to_string(awq / rtn));
  std::printf("[ awq ] held-out output MSE: awq %.4g, rtn %.4g, ratio %.3f (alpha %.2f)\n", awq, rtn, awq / rtn,
              found.alpha);
  EXPECT_GE(found.alpha, 0) << "no grid point beat plain rounding";
  EXPECT_LT(awq, rtn * 0.9);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::vector<int32_t>> ids_of(const std::vector<mftk::PackedRow>& rows) {
  std::vector<std::vector<int32_t>> ids;
  for (const auto& r : rows) ids.push_back(r.ids);
  return ids;
}

mftk::awq::AwqOptions tiny_options() {
  mftk::awq::AwqOptions o;
  o.group_size = 32;  // the tiny model is 64 wide
  o.sample_tokens = 256;
  return o;
}

// A dense checkpoint folder holding `tensors` and `source`'s config.json.
std::string write_dense(const tt::ScratchDir& dir, const std::string& name, const std::string& source,
                        const mftk::NamedTensors& tensors) {
  const std::string out = dir.sub(name);
  mftk::save_checkpoint(out, tensors);
  fs::copy_file(fs::path(source) / "config.json", fs::path(out) / "config.json");
  return out;
}

std::unique_ptr<mftk::mistral::MistralModel> load_fp32(const std::string& dir) {
  mftk::mistral::MistralModelOptions mo;
  mo.path = dir;
  auto model = std::make_unique<mftk::mistral::MistralModel>(mo);
  mftk::LoadOptions lo;
  lo.path = dir;
  model->load_config(dir);
  model->load(lo);
  return model;
}

// Logits MSE of `dir` against the reference model on `rows`.
double logits_error(mftk::Model& reference, const std::string& dir, const std::vector<mftk::PackedRow>& rows) {
  auto loaded = load_fp32(dir);
  auto& model = *loaded;
  at::NoGradGuard no_grad;
  double sum = 0;
  int64_t n = 0;
  for (const auto& row : rows) {
    const int64_t t = int64_t(row.ids.size());
    mftk::Batch b;
    b.input_ids = at::tensor(std::vector<int64_t>(row.ids.begin(), row.ids.end()), at::kLong).reshape({1, t});
    b.targets = at::full({1, t}, mftk::kIgnoreIndex, at::kLong);
    b.position_ids = at::arange(t, at::kLong).reshape({1, t});
    b.doc_ids = at::zeros({1, t}, at::kInt);
    const at::Tensor a = reference.logits(reference.forward(b));
    const at::Tensor q = model.logits(model.forward(b));
    sum += (a - q).pow(2).sum().item<double>();
    n += a.numel();
  }
  return sum / double(n);
}

// Exports `source` through the caller's loaded model, checks the folder,
// and returns the held-out logits MSE of AWQ over that of plain rounding.
double export_and_compare(const std::string& source, const tt::ScratchDir& dir) {
  auto model = load_fp32(source);
  const auto options = tiny_options();
  mftk::ExportJob job;
  job.model_dir = source;
  job.out = dir.sub("awq");
  job.model = model.get();
  job.calibration_rows = ids_of(tt::synthetic_rows(21, 24, 512, 20, 40));
  const auto report = mftk::awq::export_awq(job, options);
  std::printf("[ awq ] %s\n", report.summary.c_str());
  for (auto* slot : model->linear_slots())
    EXPECT_EQ(slot->op->describe().find("recording"), std::string::npos) << slot->name << " left wrapped";

  // config.json: the source's keys plus quantization_config exactly as AutoAWQ writes it.
  const auto cfg = nlohmann::json::parse(read_file(fs::path(job.out) / "config.json"));
  const auto src_cfg = nlohmann::json::parse(read_file(fs::path(source) / "config.json"));
  const nlohmann::json expected = {{"quant_method", "awq"}, {"zero_point", true}, {"group_size", 32},
                                   {"bits", 4}, {"version", "gemm"}, {"modules_to_not_convert", nullptr}};
  EXPECT_EQ(cfg.at("quantization_config"), expected);
  for (const auto& [key, value] : src_cfg.items()) EXPECT_EQ(cfg.at(key), value) << key;
  EXPECT_TRUE(fs::exists(fs::path(job.out) / "tokenizer.model"));

  // Tensors: every decoder linear as qweight / qzeros / scales, the rest dense.
  const auto file = mftk::SafetensorsFile::open((fs::path(job.out) / "model.safetensors").string());
  auto shape_of = [&](const std::string& n) {
    const auto* info = file->find(n);
    return info ? info->shape : std::vector<int64_t>{};
  };
  auto dtype_of = [&](const std::string& n) {
    const auto* info = file->find(n);
    return info ? info->dtype : std::string("(missing)");
  };
  const std::string q = "model.layers.1.self_attn.q_proj";  // [64 out, 64 in]
  EXPECT_EQ(dtype_of(q + ".qweight"), "I32");
  EXPECT_EQ(shape_of(q + ".qweight"), (std::vector<int64_t>{64, 8}));
  EXPECT_EQ(dtype_of(q + ".qzeros"), "I32");
  EXPECT_EQ(shape_of(q + ".qzeros"), (std::vector<int64_t>{2, 8}));
  EXPECT_EQ(dtype_of(q + ".scales"), "F16");
  EXPECT_EQ(shape_of(q + ".scales"), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(file->find(q + ".weight"), nullptr);
  EXPECT_EQ(shape_of("model.layers.0.mlp.down_proj.qweight"), (std::vector<int64_t>{128, 8}));
  for (const char* dense : {"lm_head.weight", "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                            "model.norm.weight"})
    EXPECT_NE(file->find(dense), nullptr) << dense;
  // Dequantise with this file's own reader and compare whole models on
  // held-out rows: AWQ (with its folded norms) against plain rounding.
  const auto reader = mftk::CheckpointReader::open(source);
  mftk::NamedTensors awq_dense, rtn_dense;
  for (const auto& t : file->tensors()) {
    const std::string& name = t.name;
    if (name.size() > 8 && name.compare(name.size() - 8, 8, ".qweight") == 0) {
      const std::string module = name.substr(0, name.size() - 8);
      awq_dense.emplace_back(module + ".weight", dequantize_awq(file->get(name), file->get(module + ".qzeros"),
                                                                file->get(module + ".scales"), 32));
      rtn_dense.emplace_back(module + ".weight",
                             mftk::awq::fake_quantize(reader.get(module + ".weight"), 32));
    } else if (name.find(".qzeros") == std::string::npos && name.find(".scales") == std::string::npos) {
      awq_dense.emplace_back(name, file->get(name).clone());
      rtn_dense.emplace_back(name, reader.get(name).clone());
    }
  }
  const auto held_out = tt::synthetic_rows(99, 8, 512, 20, 40);
  const double awq = logits_error(*model, write_dense(dir, "awq_dense", source, awq_dense), held_out);
  const double rtn = logits_error(*model, write_dense(dir, "rtn_dense", source, rtn_dense), held_out);
  std::printf("[ awq ] tiny model, held-out logits MSE: awq %.4g, rtn %.4g, ratio %.3f\n", awq, rtn, awq / rtn);
  return awq / rtn;
}

TEST(AwqExport, TinyModelFolderAndHeldOutError) {
  // GQA (4 query heads, 2 KV heads): o_proj is not scaled.
  tt::QuietLog quiet;
  tt::ScratchDir dir("awq");
  const double ratio = export_and_compare(tt::tiny_checkpoint(2), dir);
  RecordProperty("tiny_gqa_awq_over_rtn_logits", std::to_string(ratio));
  EXPECT_LT(ratio, 1.0);
}

TEST(AwqExport, MultiHeadModelScalesOprojThroughVproj) {
  // As many KV heads as query heads: 1/s of o_proj's group is folded into
  // v_proj's output rows. A wrong fold changes the function and shows here.
  tt::QuietLog quiet;
  tt::ScratchDir dir("awq_mha");
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 2}, {"hidden_size", 64}, {"intermediate_size", 128},
                 {"num_attention_heads", 4}, {"num_key_value_heads", 4}};
  o.dtype = "f32";
  o.seed = 9;
  o.out = dir.sub("mha");
  o.tokenizer = (fs::path(tt::tiny_checkpoint(2)) / "tokenizer.model").string();
  mftk::core::write_random_checkpoint(o);
  const double ratio = export_and_compare(o.out, dir);
  RecordProperty("tiny_mha_awq_over_rtn_logits", std::to_string(ratio));
  EXPECT_LT(ratio, 1.0);
}

TEST(AwqExport, RefusesGroupSizeNotDividingInFeatures) {
  auto config = mftk::mistral::MistralConfig::load(tt::tiny_checkpoint(2));
  try {
    mftk::awq::check_awq_shapes(config.to_shape(), 128);
    ADD_FAILURE() << "group_size 128 accepted for hidden_size 64";
  } catch (const mftk::UsageError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("group_size 128"), std::string::npos) << what;
    EXPECT_NE(what.find("hidden_size"), std::string::npos) << what;
    EXPECT_NE(e.hint().find("--set group_size="), std::string::npos) << e.hint();
  }
  EXPECT_NO_THROW(mftk::awq::check_awq_shapes(config.to_shape(), 32));

  tt::ScratchDir dir("awq_refuse");
  mftk::ExportJob job;
  job.model_dir = tt::tiny_checkpoint(2);
  job.out = dir.sub("awq");
  auto options = tiny_options();
  options.group_size = 128;
  EXPECT_THROW(mftk::awq::export_awq(job, options), mftk::UsageError);
  EXPECT_FALSE(fs::exists(job.out));
}

TEST(AwqExport, RefusesMissingCalibrationData) {
  tt::ScratchDir dir("awq_nocal");
  mftk::ExportJob job;
  job.model_dir = tt::tiny_checkpoint(2);
  job.out = dir.sub("awq");
  try {
    mftk::awq::export_awq(job, tiny_options());
    ADD_FAILURE() << "exported without calibration data";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("calibration"), std::string::npos) << e.what();
    EXPECT_NE(e.hint().find("calibration_file"), std::string::npos) << e.hint();
  }
  auto options = tiny_options();
  options.calibration_file = dir.sub("missing.jsonl");
  EXPECT_THROW(mftk::awq::export_awq(job, options), mftk::UsageError);
}

mftk::Config awq_config(std::map<std::string, mftk::Value> set) {
  std::map<std::string, mftk::Config::Entry> entries;
  for (const auto& key : mftk::awq::awq_keys()) {
    auto it = set.find(key.name);
    const bool explicitly = it != set.end();
    entries[key.name] = {explicitly ? it->second : *key.default_value, {"recipe.toml", 8, 1}, explicitly};
  }
  return mftk::Config("export[0]", {"recipe.toml", 6, 1}, std::move(entries));
}

TEST(AwqExport, RefusesGroupSizeNotAMultipleOfEight) {
  try {
    mftk::awq::awq_options_from_config(awq_config({{"group_size", mftk::Value(int64_t(12))}}));
    ADD_FAILURE() << "group_size 12 accepted";
  } catch (const mftk::UsageError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("group_size"), std::string::npos) << what;
    EXPECT_NE(what.find("recipe.toml:8"), std::string::npos) << what;
  }
  EXPECT_EQ(mftk::awq::awq_options_from_config(awq_config({})).group_size, 128);
}

// The real binary, both ways in: `mftk export` with a calibration file, and
// `mftk run` with an [[export]] table calibrating on the training documents.
int run_mftk(const std::string& args, const std::string& log) {
  const int status = std::system((MFTK_BINARY_DIR "/bin/mftk " + args + " > " + log + " 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST(AwqCli, ExportAndRecipeExport) {
  tt::ScratchDir dir("awq_cli");
  const std::string base = tt::tiny_checkpoint(1);
  const std::string data = dir.sub("train.jsonl");
  {
    std::ofstream f(data);
    for (int i = 0; i < 16; ++i)
      f << nlohmann::json{{"instruction", "What is " + std::to_string(i) + " plus one?"},
                          {"output", std::to_string(i + 1)}}.dump()
        << "\n";
  }
  const std::string log = dir.sub("mftk.out");
  const std::string out = dir.sub("awq");
  EXPECT_EQ(run_mftk("export --plugin awq --model " + base + " --out " + out + " --set group_size=32", log), 2)
      << read_file(log);
  EXPECT_NE(read_file(log).find("calibration_file"), std::string::npos) << read_file(log);
  EXPECT_EQ(run_mftk("export --plugin awq --model " + base + " --out " + out +
                         " --set group_size=32 --set calibration_file=" + data,
                     log),
            0)
      << read_file(log);
  EXPECT_TRUE(fs::exists(fs::path(out) / "model.safetensors"));
  EXPECT_EQ(run_mftk("export --plugin awq --model " + base + " --out " + out + " --set group_size=128 "
                     "--set calibration_file=" + data, log), 2);
  EXPECT_NE(read_file(log).find("does not divide hidden_size"), std::string::npos) << read_file(log);

  const std::string recipe = dir.sub("recipe.toml");
  std::ofstream(recipe) << fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 4
alpha = 8

[[datasets]]
path = "{data}"
type = "instruction"

[data]
dataset_prepared_path = "{dir}/prepared"

[optimizer]
plugin = "adamw"

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 2
output_dir = "{dir}/run"
threads = 1

[[export]]
plugin = "awq"
out = "{dir}/run/awq"
group_size = 32
)",
                                       fmt::arg("base", base), fmt::arg("data", data), fmt::arg("dir", dir.str()));
  ASSERT_EQ(run_mftk("run " + recipe, log), 0) << read_file(log);
  EXPECT_NE(read_file(log).find("awq: calibration on"), std::string::npos) << read_file(log);
  const auto cfg = nlohmann::json::parse(read_file(dir.sub("run/awq/config.json")));
  EXPECT_EQ(cfg.at("quantization_config").at("quant_method"), "awq");
}

TEST(AwqCalibration, RowsFromJsonlAndText) {
  tt::ScratchDir dir("awq_cal");
  const std::string path = dir.sub("cal.jsonl");
  {
    std::ofstream f(path);
    f << R"({"text": "the quick brown fox jumps over the lazy dog"})" << "\n";
    f << R"({"messages": [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi"}]})" << "\n";
    f << "a plain line of text\n\n";
  }
  const auto tokenizer = mftk::Tokenizer::load(tt::tiny_checkpoint(2));
  const auto rows = mftk::awq::calibration_rows_from_file(path, *tokenizer, 3, 4);
  ASSERT_FALSE(rows.empty());
  EXPECT_LE(rows.size(), 3u);
  for (const auto& r : rows) EXPECT_EQ(r.size(), 4u);
  const auto one = mftk::awq::calibration_rows_from_file(path, *tokenizer, 1, 100000);
  ASSERT_EQ(one.size(), 1u);  // no full row: everything as one shorter row
  EXPECT_GT(one[0].size(), 12u);
}

}  // namespace
