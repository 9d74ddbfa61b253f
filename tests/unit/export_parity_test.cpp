// The export parity gate (core/model/export_parity.h): the figures against a
// case worked by hand, the row selection, a LoRA merge read back from disk
// (near-exact) against the same checkpoint with one layer zeroed (fails),
// the GGUF and AWQ read-backs against facts of their formats, and `mftk run`
// failing with exit 1 and its report written when an artefact is damaged.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "awq/awq_quant.h"
#include "awq/awq_readback.h"
#include "export_parity.h"
#include "gguf/ggml_quants.h"
#include "gguf/gguf_exporter.h"
#include "gguf/gguf_readback.h"
#include "mftk/adapter.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"
#include "model_tools.h"
#include "pipeline.h"
#include "registry.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using mftk::Example;
using mftk::core::ParityFigures;
using mftk::core::ParityTally;

// log of a probability table, with log 0 = -inf.
at::Tensor log_of(const std::vector<std::vector<double>>& p) {
  std::vector<double> flat;
  for (const auto& row : p)
    for (double x : row) flat.push_back(std::log(x));
  return at::tensor(flat, at::kDouble).reshape({int64_t(p.size()), int64_t(p.front().size())});
}

TEST(ExportParity, FiguresMatchAHandComputedCase) {
  // Three positions over a vocabulary of three:
  //  0: p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4): KL = 1/2 ln 2 + 1/4 ln(1/2) + 0 = ln2 / 4;
  //     argmax 0 vs 1 (disagree); supervised target 1: -ln p = ln 4, -ln q = ln 2
  //  1: p = q = (0.1, 0.7, 0.2): KL 0, agree; not supervised
  //  2: p = (1, 0, 0), q = (1/2, 1/4, 1/4): KL = 1 ln(1 / (1/2)) = ln 2 (0 ln 0 = 0); agree;
  //     supervised target 0: -ln p = 0, -ln q = ln 2
  // mean KL = (ln2/4 + 0 + ln2) / 3 = 5 ln2 / 12; top-1 = 2/3;
  // ppl trained = exp((ln4 + 0) / 2) = 2; ppl artefact = exp((ln2 + ln2) / 2) = 2.
  const at::Tensor p = log_of({{0.5, 0.25, 0.25}, {0.1, 0.7, 0.2}, {1.0, 0.0, 0.0}});
  const at::Tensor q = log_of({{0.25, 0.5, 0.25}, {0.1, 0.7, 0.2}, {0.5, 0.25, 0.25}});
  const at::Tensor targets = at::tensor(std::vector<int64_t>{1, mftk::kIgnoreIndex, 0}, at::kLong);
  ParityTally all;
  all.add(p, q, targets);
  const ParityFigures f = all.figures();
  EXPECT_NEAR(f.mean_kl, 5 * std::log(2.0) / 12, 1e-12);
  EXPECT_NEAR(f.top1_agreement, 2.0 / 3.0, 1e-12);
  EXPECT_NEAR(f.ppl_trained, 2.0, 1e-12);
  EXPECT_NEAR(f.ppl_artefact, 2.0, 1e-12);
  EXPECT_EQ(f.positions, 3);
  EXPECT_EQ(f.supervised, 2);

  // The same positions in two chunks (fp32 inputs, as the models give them) sum to the same figures.
  ParityTally chunks;
  chunks.add(p.narrow(0, 0, 2).to(at::kFloat), q.narrow(0, 0, 2).to(at::kFloat), targets.narrow(0, 0, 2));
  chunks.add(p.narrow(0, 2, 1).to(at::kFloat), q.narrow(0, 2, 1).to(at::kFloat), targets.narrow(0, 2, 1));
  EXPECT_NEAR(chunks.figures().mean_kl, f.mean_kl, 1e-7);
  EXPECT_NEAR(chunks.figures().ppl_artefact, 2.0, 1e-6);

  // Identical distributions: KL 0, full agreement, equal perplexities.
  ParityTally same;
  same.add(p, p, targets);
  EXPECT_EQ(same.figures().mean_kl, 0.0);
  EXPECT_EQ(same.figures().top1_agreement, 1.0);
  // No supervised target: perplexity is not a number, the rest still is.
  ParityTally unsupervised;
  unsupervised.add(p, q, at::full({3}, mftk::kIgnoreIndex, at::kLong));
  EXPECT_TRUE(std::isnan(unsupervised.figures().ppl_trained));
  EXPECT_NEAR(unsupervised.figures().mean_kl, f.mean_kl, 1e-12);
}

TEST(ExportParity, GateVerdictAndThresholds) {
  mftk::core::ParityCheck c;
  c.kind = "merge";
  c.path = "out/merged";
  c.checked = true;
  c.figures.mean_kl = 2e-6;
  EXPECT_TRUE(c.passed());  // no threshold: reported only
  c.threshold = 1e-6;
  EXPECT_FALSE(c.passed());
  c.threshold = 3e-6;
  EXPECT_TRUE(c.passed());
  c.figures.mean_kl = std::nan("");
  EXPECT_FALSE(c.passed());  // a NaN artefact never passes a gate
  mftk::core::ParityCheck unchecked;
  unchecked.kind = "names";
  unchecked.note = "exporter has no read-back";
  unchecked.threshold = 0.1;
  EXPECT_TRUE(unchecked.passed());
  EXPECT_NE(unchecked.describe().find("not checked (exporter has no read-back)"), std::string::npos);
  const auto j = mftk::core::parity_json({c, unchecked});
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["passed"], false);
  EXPECT_TRUE(j[0]["mean_kl"].is_null());
  EXPECT_EQ(j[1]["note"], "exporter has no read-back");
  try {
    mftk::core::enforce_parity({c, unchecked}, "out/report.html");
    FAIL() << "a failed check must throw";
  } catch (const mftk::UsageError&) {
    FAIL() << "a failed gate is a runtime failure (exit 1), not a usage error";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("merge out/merged"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(mftk::core::enforce_parity({unchecked}));
  EXPECT_EQ(mftk::core::default_merge_max_kl(at::kFloat, at::kFloat), mftk::core::kMergeMaxKlFp32);
  EXPECT_EQ(mftk::core::default_merge_max_kl(at::kBFloat16, at::kFloat), mftk::core::kMergeMaxKlHalf);
  EXPECT_EQ(mftk::core::default_merge_max_kl(at::kFloat, at::kBFloat16), mftk::core::kMergeMaxKlHalf);
}

TEST(ExportParity, RowSelectionKeepsItsBounds) {
  std::vector<Example> examples;
  for (int n : {1, 10, 30, 5, 7}) {
    Example ex;
    for (int i = 0; i < n; ++i) ex.ids.push_back(i + 3), ex.loss_mask.push_back(i % 2);
    examples.push_back(ex);
  }
  const auto rows = mftk::core::select_parity_rows(examples, 3, 35, 20);
  // The one-token row predicts nothing; 10, then 30 cut to 20, then 5 of the 5 left.
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].ids.size(), 10u);
  EXPECT_EQ(rows[1].ids.size(), 20u);
  EXPECT_EQ(rows[2].ids.size(), 5u);
  EXPECT_EQ(rows[1].loss_mask, std::vector<uint8_t>(examples[2].loss_mask.begin(), examples[2].loss_mask.begin() + 20));
  EXPECT_EQ(mftk::core::select_parity_rows(examples, 1, 1000, 1000).size(), 1u);
}

std::vector<Example> random_rows(uint64_t seed, int count, int64_t vocab) {
  std::mt19937_64 rng(seed);
  std::vector<Example> rows;
  for (int r = 0; r < count; ++r) {
    Example ex;
    const int n = 12 + int(rng() % 10);
    for (int i = 0; i < n; ++i) {
      ex.ids.push_back(int32_t(3 + rng() % uint64_t(vocab - 3)));
      ex.loss_mask.push_back(i >= n / 2);
    }
    rows.push_back(ex);
  }
  return rows;
}

// A copy of a checkpoint folder with the named tensors set to zero.
void write_damaged_copy(const std::string& from, const std::string& to, const std::vector<std::string>& zeroed) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from))
    if (e.path().extension() != ".safetensors") fs::copy_file(e.path(), fs::path(to) / e.path().filename());
  const auto ckpt = mftk::CheckpointReader::open(from);
  mftk::NamedTensors tensors;
  for (const auto& name : ckpt.names()) {
    at::Tensor t = ckpt.get(name).clone();
    if (std::find(zeroed.begin(), zeroed.end(), name) != zeroed.end()) t.zero_();
    tensors.emplace_back(name, t);
  }
  mftk::save_checkpoint(to, tensors);
}

TEST(ExportParity, MergedLoraReadBackIsNearExactAndAZeroedLayerFailsTheGate) {
  tt::QuietLog quiet;
  tt::ScratchDir dir("parity_merge");
  const std::string base = tt::tiny_checkpoint(2);
  mftk::core::Registry registry;
  mftk::core::ModelBundleOptions o;
  o.model_dir = base;
  auto bundle = mftk::core::load_model_bundle(registry, o);
  const auto config = mftk::core::component_config(
      registry, mftk::Kind::adapter, "lora", "adapter",
      {{"r", int64_t(4)}, {"alpha", int64_t(8)},
       {"target_modules", std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}}});
  auto adapter = registry.create<mftk::Adapter>(mftk::Kind::adapter, "lora", config);
  adapter->inject(*bundle.model);
  {
    // A trained adapter: B is zero at initialisation, so give every factor values.
    at::NoGradGuard no_grad;
    at::manual_seed(3);
    for (auto& [name, t] : adapter->trainable_parameters()) t.copy_(at::randn_like(t) * 0.3);
  }
  bundle.model->set_training(false);
  const auto rows = random_rows(5, 6, bundle.model->shape().vocab_size);
  const auto reference = mftk::core::ParityReference::record(*bundle.model, rows, "test rows");
  ASSERT_EQ(reference.rows(), 6);
  adapter->merge(*bundle.model);
  const std::string merged = dir.sub("merged");
  mftk::core::save_hf_checkpoint(*bundle.model, base, merged);

  const mftk::core::ArtefactModelSource source;
  const auto good = mftk::core::check_checkpoint_folder(registry, source, merged, reference);
  ASSERT_TRUE(good.checked);
  EXPECT_GE(good.figures.mean_kl, -1e-15);  // renormalised in double: a KL, so not below 0 beyond double rounding
  EXPECT_LT(good.figures.mean_kl, mftk::core::kMergeMaxKlFp32 / 100);
  EXPECT_EQ(good.figures.top1_agreement, 1.0);
  EXPECT_NEAR(good.figures.ppl_artefact, good.figures.ppl_trained, 1e-4 * good.figures.ppl_trained);

  // The comparison can see an adapter at all: the base without it is far off.
  const auto base_only = mftk::core::check_checkpoint_folder(registry, source, base, reference);
  EXPECT_GT(base_only.figures.mean_kl, 100 * mftk::core::kMergeMaxKlFp32);

  // One decoder layer's MLP and attention output zeroed after the write.
  const std::string damaged = dir.sub("damaged");
  write_damaged_copy(merged, damaged,
                     {"model.layers.1.mlp.down_proj.weight", "model.layers.1.self_attn.o_proj.weight"});
  auto bad = mftk::core::check_checkpoint_folder(registry, source, damaged, reference);
  bad.kind = "merge";
  bad.threshold = mftk::core::default_merge_max_kl(at::kFloat, at::kFloat);
  ASSERT_TRUE(bad.checked);
  EXPECT_GT(bad.figures.mean_kl, 100 * *bad.threshold) << bad.describe();
  EXPECT_FALSE(bad.passed());
  EXPECT_THROW(mftk::core::enforce_parity({bad}), mftk::Error);
}

TEST(ExportParity, GgufReadBackDecodesTheFileAsWritten) {
  tt::QuietLog quiet;
  tt::ScratchDir dir("parity_gguf");
  const std::string base = tt::tiny_checkpoint(2);
  const auto source = mftk::CheckpointReader::open(base);
  {
    // f32 stores every value as it is: the read-back equals the checkpoint
    // bit for bit, q and k rows back in HF's order.
    mftk::gguf::GgufExportOptions options;
    options.encoding = mftk::gguf::Encoding::f32;
    mftk::gguf::export_gguf(base, dir.sub("f32.gguf"), options);
    const auto back = mftk::gguf::read_back_gguf(dir.sub("f32.gguf"), base, dir.sub("f32"));
    const auto read = mftk::CheckpointReader::open(back);
    EXPECT_EQ(read.names(), source.names());
    for (const auto& name : source.names())
      EXPECT_TRUE(at::equal(read.get(name), source.get(name).to(at::kFloat))) << name;
  }
  {
    // Tied embeddings: the file has no output matrix, and the read-back says tied and holds no lm_head.
    mftk::core::InitOptions o;
    o.preset = "tiny";
    o.overrides = {{"num_hidden_layers", 1}, {"hidden_size", 64}, {"intermediate_size", 128},
                   {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
    o.dtype = "f32";
    o.tokenizer = (fs::path(base) / "tokenizer.model").string();
    o.tie_word_embeddings = true;
    o.out = dir.sub("tied");
    mftk::core::write_random_checkpoint(o);
    mftk::gguf::GgufExportOptions options;
    options.encoding = mftk::gguf::Encoding::f32;
    mftk::gguf::export_gguf(o.out, dir.sub("tied.gguf"), options);
    const auto read = mftk::CheckpointReader::open(mftk::gguf::read_back_gguf(dir.sub("tied.gguf"), o.out, dir.sub("tied-back")));
    const auto tied = mftk::CheckpointReader::open(o.out);
    EXPECT_FALSE(read.contains("lm_head.weight"));
    for (const auto& name : tied.names()) EXPECT_TRUE(at::equal(read.get(name), tied.get(name).to(at::kFloat))) << name;
    EXPECT_EQ(nlohmann::json::parse(std::ifstream(dir.sub("tied-back/config.json"))).at("tie_word_embeddings"), true);
  }
  {
    // q8_0: every value within its block's step, d = amax / 127 (plus d's fp16 rounding).
    mftk::gguf::GgufExportOptions options;
    options.encoding = mftk::gguf::Encoding::q8_0;
    mftk::gguf::export_gguf(base, dir.sub("q8.gguf"), options);
    const auto read = mftk::CheckpointReader::open(mftk::gguf::read_back_gguf(dir.sub("q8.gguf"), base, dir.sub("q8")));
    bool some_differ = false;
    for (const auto& name : source.names()) {
      const at::Tensor w = source.get(name).to(at::kFloat), r = read.get(name);
      ASSERT_EQ(w.sizes(), r.sizes()) << name;
      const double step = w.abs().max().item<double>() / 127;
      EXPECT_LE((w - r).abs().max().item<double>(), 0.51 * step + 1e-3 * w.abs().max().item<double>()) << name;
      some_differ |= !at::equal(w, r);
    }
    EXPECT_TRUE(some_differ);
    const auto config = nlohmann::json::parse(std::ifstream(dir.sub("q8/config.json")));
    EXPECT_EQ(config.at("num_hidden_layers"), 2);
    EXPECT_EQ(config.at("torch_dtype"), "float32");
  }
}

TEST(ExportParity, AwqReadBackUnpacksAutoAwqsOrder) {
  // One int32 holding nibbles 0..7 from the lowest: AutoAWQ's order puts
  // nibble i in column kPackOrder[i] = (0 2 4 6 1 3 5 7)[i], so the columns
  // read 0 4 1 5 2 6 3 7.
  const at::Tensor word = at::tensor(std::vector<int32_t>{0x76543210}, at::kInt).reshape({1, 1});
  const at::Tensor cols = mftk::awq::unpack_int4_columns(word);
  EXPECT_EQ(std::vector<int32_t>(cols.data_ptr<int32_t>(), cols.data_ptr<int32_t>() + 8),
            (std::vector<int32_t>{0, 4, 1, 5, 2, 6, 3, 7}));
  // Packing then unpacking gives the codes back, top nibbles (negative words) included.
  at::manual_seed(1);
  const at::Tensor codes = at::randint(0, 16, {5, 24}, at::kInt);
  EXPECT_TRUE(at::equal(mftk::awq::unpack_int4_columns(mftk::awq::pack_int4_columns(codes)), codes));
  // A quantised weight through AutoAWQ's GEMM tensors and back is (q - z) * s.
  const at::Tensor w = at::randn({16, 64});
  const auto q = mftk::awq::quantize_groups(w, 32);
  const auto gemm = mftk::awq::pack_gemm(q);
  EXPECT_TRUE(at::equal(mftk::awq::dequantize_gemm(gemm.qweight, gemm.qzeros, gemm.scales), q.dequantize()));
}

// ---------------------------------------------------------------------------
// The real binary.

int run_mftk(const std::string& args, const std::string& log) {
  const int status = std::system((MFTK_BINARY_DIR "/bin/mftk " + args + " > " + log + " 2>&1").c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tiny_recipe(const std::string& dir, const std::string& base, const std::string& data,
                        const std::string& extra) {
  return fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 4
alpha = 8
target_modules = ["q_proj", "v_proj", "down_proj"]

[[datasets]]
path = "{data}"
type = "instruction"

[data]
dataset_prepared_path = "{dir}/prepared"
val_set_size = 0.25

[optimizer]
plugin = "adamw"

[schedule]
learning_rate = 0.01

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 3
output_dir = "{dir}/run"
threads = 1
merge_adapter = true
{extra}
)",
                     fmt::arg("base", base), fmt::arg("data", data), fmt::arg("dir", dir), fmt::arg("extra", extra));
}

std::string write_task(const tt::ScratchDir& dir) {
  const std::string data = dir.sub("train.jsonl");
  std::ofstream f(data);
  for (int i = 0; i < 16; ++i)
    f << nlohmann::json{{"instruction", "What is " + std::to_string(i) + " plus one?"},
                        {"output", std::to_string(i + 1)}}.dump()
      << "\n";
  return data;
}

TEST(ExportParityCli, RunReportsEveryArtefactAndADamagedOneFailsWithItsReport) {
  tt::ScratchDir dir("parity_run");
  const std::string base = tt::tiny_checkpoint(2);
  const std::string data = write_task(dir);
  const std::string log = dir.sub("mftk.out");

  // A merge and a GGUF export: both read back and compared; the merge is
  // gated by the fp32 default, the q8_0 file only reported.
  const std::string good = dir.sub("good.toml");
  std::ofstream(good) << tiny_recipe(dir.str(), base, data, fmt::format(R"(
[[export]]
plugin = "gguf"
out = "{}/run/model-q8_0.gguf"
type = "q8_0"
)",
                                                                          dir.str()));
  ASSERT_EQ(run_mftk("run " + good, log), 0) << read_text(log);
  auto summary = nlohmann::json::parse(read_text(dir.sub("run/summary.json")));
  ASSERT_EQ(summary.at("export_parity").size(), 2u) << summary.dump(2);
  const auto& merge = summary["export_parity"][0];
  EXPECT_EQ(merge["kind"], "merge");
  EXPECT_EQ(merge["passed"], true);
  EXPECT_LT(merge["mean_kl"].get<double>(), mftk::core::kMergeMaxKlFp32);
  EXPECT_EQ(merge["threshold"].get<double>(), mftk::core::kMergeMaxKlFp32);
  const auto& gguf = summary["export_parity"][1];
  EXPECT_EQ(gguf["kind"], "gguf");
  EXPECT_EQ(gguf["checked"], true);
  EXPECT_TRUE(gguf["threshold"].is_null());
  EXPECT_GT(gguf["mean_kl"].get<double>(), merge["mean_kl"].get<double>());  // q8_0 rounds, the merge hardly
  EXPECT_GT(gguf["tokens"].get<int64_t>(), 0);
  EXPECT_NE(read_text(dir.sub("run/mftk.log")).find("parity [gguf]"), std::string::npos);
  EXPECT_NE(read_text(dir.sub("run/report.html")).find("id=\"parity\""), std::string::npos);
  for (const auto& e : fs::directory_iterator(dir.sub("run")))  // the read-back folders are gone
    EXPECT_EQ(e.path().filename().string().find("parity-readback"), std::string::npos) << e.path();

  // The commands: `mftk merge` reports the merge against base + adapter
  // unmerged and passes its fp32 default; `mftk export --adapter` past its
  // --set max_kl fails with exit 1 (q8_0 rounds; the bound asks for less
  // than the merge's own rounding).
  ASSERT_EQ(run_mftk("merge --model " + base + " --adapter " + dir.sub("run/adapter") + " --out " +
                         dir.sub("cli-merged") + " --eval-data " + data,
                     log),
            0)
      << read_text(log);
  EXPECT_NE(read_text(log).find("parity [merge]"), std::string::npos) << read_text(log);
  EXPECT_NE(read_text(log).find("passed (max_kl 1e-06)"), std::string::npos) << read_text(log);
  EXPECT_EQ(run_mftk("export --plugin gguf --model " + base + " --adapter " + dir.sub("run/adapter") + " --out " +
                         dir.sub("cli.gguf") + " --set type=q8_0 --set max_kl=1e-14",
                     log),
            1)
      << read_text(log);
  EXPECT_NE(read_text(log).find("export parity gate"), std::string::npos) << read_text(log);
  EXPECT_NE(read_text(log).find("built-in sample"), std::string::npos) << read_text(log);

  // The same run with an exporter whose artefact has a layer zeroed (a test
  // fixture plugin: it copies the merged folder, zeroes layer 1's down_proj
  // and reads that copy back) fails the gate: exit 1, the report written.
  const std::string plugins = dir.sub("plugins");
  fs::create_directories(plugins);
  for (const char* lib : {"libmftk-fixture_parity.so", "libmftk-fixture_good.so"})
    fs::copy_file(fs::path(MFTK_FIXTURE_DIR) / lib, fs::path(plugins) / lib);
  fs::remove_all(dir.sub("run"));
  const std::string bad = dir.sub("bad.toml");
  std::ofstream(bad) << tiny_recipe(dir.str(), base, data, fmt::format(R"(
[plugins]
search_paths = ["{0}"]

[[export]]
plugin = "fixture_damaged_copy"
out = "{1}/run/damaged"
zero = "model.layers.1.mlp.down_proj.weight"
max_kl = 1e-6

[[export]]
plugin = "fixture_good_names"
out = "{1}/run/names.txt"
max_kl = 1e-6
)",
                                                                         plugins, dir.str()));
  EXPECT_EQ(run_mftk("run " + bad, log), 1) << read_text(log);
  const std::string out = read_text(log);
  EXPECT_NE(out.find("export parity gate"), std::string::npos) << out;
  EXPECT_NE(out.find("fixture_damaged_copy"), std::string::npos) << out;
  summary = nlohmann::json::parse(read_text(dir.sub("run/summary.json")));
  ASSERT_EQ(summary.at("export_parity").size(), 3u);
  EXPECT_EQ(summary["export_parity"][0]["passed"], true);
  // An exporter without a read-back is listed, not skipped quietly.
  EXPECT_EQ(summary["export_parity"][2]["checked"], false);
  EXPECT_EQ(summary["export_parity"][2]["note"], "exporter has no read-back");
  EXPECT_EQ(summary["export_parity"][1]["passed"], false);
  // A random tiny model's distributions are near uniform, so the damage
  // costs ~1e-4 nats here; still eight orders of magnitude above the merge's.
  EXPECT_GT(summary["export_parity"][1]["mean_kl"].get<double>(), 1e-6);
  EXPECT_LT(summary["export_parity"][0]["mean_kl"].get<double>(), 1e-10);
  const std::string report = read_text(dir.sub("run/report.html"));
  EXPECT_NE(report.find("FAILED"), std::string::npos);
  EXPECT_NE(report.find("not checked: exporter has no read-back"), std::string::npos);
}

}  // namespace
