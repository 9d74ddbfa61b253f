// Checkpoints stored in float16, and mixed ones (some tensors f16, some
// f32), through every command, with the real `mftk` binary. libtorch's CPU
// kernels have no Half matmul, so mftk widens f16 weights to fp32 per matmul,
// as it widens bf16 ones: an f16 checkpoint must then score exactly what the
// same weights score when stored in f32 after rounding them to f16 (the
// reference folder below), up to fp32 noise. Quantising or exporting an f16
// checkpoint must give what the reference gives.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "init_checkpoint.h"
#include "mftk/safetensors.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;

const std::string kMftk = MFTK_BINARY_DIR "/bin/mftk";

std::string text_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Result {
  int code = -1;
  std::string out;
};

// mftk `args` (shell words, quoted by the caller); stderr appended to `log`.
Result mftk(const std::string& args, const std::string& log) {
  Result r;
  FILE* pipe = ::popen((kMftk + " " + args + " 2>>'" + log + "'").c_str(), "r");
  if (!pipe) return r;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.out.append(buffer, n);
  const int status = ::pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// A copy of the checkpoint folder `src` whose tensors are `convert(name, t)`,
// config.json's torch_dtype set to `torch_dtype`.
template <class Convert>
void derive(const std::string& src, const std::string& dst, const std::string& torch_dtype, Convert convert) {
  fs::create_directories(dst);
  const auto reader = mftk::CheckpointReader::open(src);
  mftk::NamedTensors tensors;
  for (const auto& name : reader.names()) tensors.emplace_back(name, convert(name, reader.get(name)).contiguous());
  mftk::save_checkpoint(dst, tensors);
  json config = json::parse(text_of(src + "/config.json"));
  config["torch_dtype"] = torch_dtype;
  std::ofstream(dst + "/config.json") << config.dump(2);
  for (const char* f : {"tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"})
    if (fs::exists(src + "/" + f)) fs::copy_file(src + "/" + f, dst + "/" + f);
}

at::Tensor through_f16(const at::Tensor& t) { return t.to(at::kHalf).to(at::kFloat); }

// Whether two float tensors hold the same values once the wider one is
// rounded to the narrower one's dtype (what an f16 folder stores of an f32
// result).
bool same_values(const at::Tensor& x, const at::Tensor& y) {
  if (x.sizes() != y.sizes()) return false;
  const bool x_narrower = x.element_size() < y.element_size();
  const at::ScalarType narrow = x_narrower ? x.scalar_type() : y.scalar_type();
  return x.to(narrow).to(at::kFloat).equal(y.to(narrow).to(at::kFloat));
}

// Every tensor of two checkpoint folders, compared as values; bitsandbytes'
// quant_state JSON records the source dtype, which is all it may differ in.
// "" when they all agree, else the first name that differs.
std::string first_difference(const std::string& a, const std::string& b) {
  const auto ra = mftk::CheckpointReader::open(a), rb = mftk::CheckpointReader::open(b);
  if (ra.names() != rb.names()) return "the tensor names differ";
  for (const auto& name : ra.names()) {
    const at::Tensor x = ra.get(name).contiguous(), y = rb.get(name).contiguous();
    bool same = false;
    if (at::isFloatingType(x.scalar_type()) && at::isFloatingType(y.scalar_type())) {
      same = same_values(x, y);
    } else if (name.find(".quant_state.") != std::string::npos) {
      auto state = [](const at::Tensor& t) {
        json j = json::parse(std::string(static_cast<const char*>(t.data_ptr()), size_t(t.numel())));
        j.erase("dtype");
        return j;
      };
      same = state(x) == state(y);
    } else {
      same = x.scalar_type() == y.scalar_type() && x.equal(y);
    }
    if (!same) return name;
  }
  return "";
}

class CheckpointDtypes : public testing::Test {
 public:
  // base: a random 2-layer f32 checkpoint; reference: its weights rounded to
  // f16, stored in f32; f16: the same values stored in f16; mixed: even
  // tensors (by name order) in f16, the others in f32, the same values.
  // Each is a folder named "model" so exporters name their files alike.
  static void SetUpTestSuite() {
    root_ = std::make_unique<tt::ScratchDir>("dtypes");
    mftk::core::InitOptions o;
    o.preset = "tiny";
    o.overrides = {{"num_hidden_layers", 2},
                   {"hidden_size", 64},
                   {"intermediate_size", 128},
                   {"num_attention_heads", 4},
                   {"num_key_value_heads", 2}};
    o.dtype = "f32";
    o.seed = 9;
    o.out = root_->sub("base/model");
    o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
    o.tokenizer_vocab = 512;
    {
      tt::QuietLog quiet;
      mftk::core::write_random_checkpoint(o);
    }
    derive(o.out, ref(), "float32", [](const std::string&, const at::Tensor& t) { return through_f16(t); });
    derive(o.out, f16(), "float16", [](const std::string&, const at::Tensor& t) { return t.to(at::kHalf); });
    int index = 0;
    derive(o.out, mixed(), "float16", [&](const std::string&, const at::Tensor& t) {
      return index++ % 2 == 0 ? t.to(at::kHalf) : through_f16(t);
    });
  }
  static void TearDownTestSuite() { root_.reset(); }

 protected:
  static std::string ref() { return root_->sub("ref/model"); }
  static std::string f16() { return root_->sub("f16/model"); }
  static std::string mixed() { return root_->sub("mixed/model"); }
  std::string log() const { return dir_.sub("stderr.txt"); }

  std::vector<double> logprobs(const std::string& model, const std::string& tokens) {
    const Result r = mftk("logprobs --model '" + model + "' --tokens " + tokens, log());
    EXPECT_EQ(r.code, 0) << model << "\n" << text_of(log());
    const json j = json::parse(r.out, nullptr, false);
    return j.is_object() ? j.value("logprobs", std::vector<double>{}) : std::vector<double>{};
  }

  std::string write_recipe(const std::string& model, const std::string& adapter) {
    std::ofstream(dir_.sub("train.jsonl")) << R"({"instruction": "Name a color.", "output": "blue"}
{"instruction": "Name a number.", "output": "seven"}
{"instruction": "Name a fruit.", "output": "apple"}
{"instruction": "Name a river.", "output": "Nile"}
)";
    const std::string path = dir_.sub("recipe.toml");
    std::ofstream(path) << fmt::format(R"([model]
plugin = "mistral"
path = "{model}"

{adapter}

[[datasets]]
path = "{dir}/train.jsonl"
type = "instruction"

[data]
dataset_prepared_path = "{dir}/prepared"

[schedule]
learning_rate = 1e-2
lr_scheduler = "constant"

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 2
save_steps = 0
output_dir = "{dir}/run"
threads = 1

[validate]
exact_match = 0
)",
                                       fmt::arg("model", model), fmt::arg("adapter", adapter),
                                       fmt::arg("dir", dir_.str()));
    return path;
  }

  static std::unique_ptr<tt::ScratchDir> root_;
  tt::ScratchDir dir_{"dtypes_case"};
};

std::unique_ptr<tt::ScratchDir> CheckpointDtypes::root_;

const char* kTokens = "1,17,230,45,99,301,7,88,402,13,260,5,77,150,511,32";

TEST_F(CheckpointDtypes, LogprobsOfF16AndMixedCheckpointsEqualTheF32ReferenceOfTheSameWeights) {
  const auto reference = logprobs(ref(), kTokens);
  ASSERT_EQ(reference.size(), 15u);
  for (const std::string& model : {f16(), mixed()}) {
    const auto got = logprobs(model, kTokens);
    ASSERT_EQ(got.size(), reference.size()) << model;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - reference[i]));
    // The weights are equal after widening; only fp32 summation order may differ.
    EXPECT_LE(worst, 1e-5) << model;
    std::cout << "[ dtypes ] max |logprob(" << fs::path(model).parent_path().filename().string()
              << ") - logprob(f32 reference)| = " << worst << "\n";
  }
  // bf16 compute on an f16 checkpoint: every weight narrowed to bf16, so only
  // near the reference (bf16 keeps 8 bits of mantissa).
  const Result r = mftk("logprobs --dtype bf16 --model '" + f16() + "' --tokens " + kTokens, log());
  ASSERT_EQ(r.code, 0) << text_of(log());
  const auto bf16 = json::parse(r.out).value("logprobs", std::vector<double>{});
  ASSERT_EQ(bf16.size(), reference.size());
  for (size_t i = 0; i < bf16.size(); ++i) EXPECT_NEAR(bf16[i], reference[i], 0.1) << i;
}

TEST_F(CheckpointDtypes, GreedyGenerateOnF16AndMixedFollowsTheReference) {
  auto greedy = [&](const std::string& model) {
    const Result r = mftk("generate --json --max-new-tokens 8 --temperature 0 --model '" + model +
                              "' --prompt 'The river'", log());
    EXPECT_EQ(r.code, 0) << model << "\n" << text_of(log());
    const json j = json::parse(r.out, nullptr, false);
    return j.is_object() ? j.value("tokens", std::vector<int>{}) : std::vector<int>{};
  };
  const auto reference = greedy(ref());
  ASSERT_FALSE(reference.empty());
  EXPECT_EQ(greedy(f16()), reference);
  EXPECT_EQ(greedy(mixed()), reference);
}

TEST_F(CheckpointDtypes, LoraTrainsOnAnF16Checkpoint) {
  const std::string recipe = write_recipe(f16(), "[adapter]\nplugin = \"lora\"\nr = 4\nalpha = 8");
  ASSERT_EQ(mftk("run '" + recipe + "'", log()).code, 0) << text_of(log());
  const json summary = json::parse(text_of(dir_.sub("run/summary.json")));
  EXPECT_EQ(summary.value("steps", 0), 2);
  EXPECT_TRUE(std::isfinite(summary.value("final_loss", NAN))) << summary.dump(2);
  EXPECT_TRUE(fs::exists(dir_.sub("run/adapter/adapter_model.safetensors")));
}

TEST_F(CheckpointDtypes, FullFineTuningTrainsOnAMixedCheckpointAndSavesIt) {
  const std::string recipe = write_recipe(mixed(), "");
  ASSERT_EQ(mftk("run '" + recipe + "'", log()).code, 0) << text_of(log());
  const json summary = json::parse(text_of(dir_.sub("run/summary.json")));
  EXPECT_EQ(summary.value("steps", 0), 2);
  EXPECT_TRUE(std::isfinite(summary.value("final_loss", NAN))) << summary.dump(2);
  // The saved model loads and scores.
  EXPECT_EQ(logprobs(dir_.sub("run/model"), kTokens).size(), 15u);
}

TEST_F(CheckpointDtypes, Nf4QuantizingAnF16CheckpointGivesWhatTheReferenceGives) {
  const std::string from_f16 = dir_.sub("nf4_f16/model"), from_ref = dir_.sub("nf4_ref/model");
  ASSERT_EQ(mftk("quantize --plugin nf4 --model '" + f16() + "' --out '" + from_f16 + "'", log()).code, 0)
      << text_of(log());
  ASSERT_EQ(mftk("quantize --plugin nf4 --model '" + ref() + "' --out '" + from_ref + "'", log()).code, 0)
      << text_of(log());
  EXPECT_EQ(first_difference(from_f16, from_ref), "");
  EXPECT_EQ(logprobs(from_f16, kTokens), logprobs(from_ref, kTokens));
}

TEST_F(CheckpointDtypes, GgufAndAwqExportsOfAnF16CheckpointEqualTheReferences) {
  for (const std::string type : {"f16", "q8_0"}) {
    const std::string a = dir_.sub("gguf_f16_" + type + ".gguf"), b = dir_.sub("gguf_ref_" + type + ".gguf");
    ASSERT_EQ(mftk("export --plugin gguf --model '" + f16() + "' --out '" + a + "' --set type=" + type, log()).code, 0)
        << text_of(log());
    ASSERT_EQ(mftk("export --plugin gguf --model '" + ref() + "' --out '" + b + "' --set type=" + type, log()).code, 0)
        << text_of(log());
    EXPECT_TRUE(text_of(a) == text_of(b)) << type << ": the two files differ";
  }
  const std::string a = dir_.sub("awq_f16/model"), b = dir_.sub("awq_ref/model");
  const std::string calibration = dir_.sub("calibration.txt");
  std::ofstream(calibration) << "The river runs to the sea.\nA stone, a cloud and a green apple.\n";
  for (const auto& [model, out] : {std::pair{f16(), a}, std::pair{ref(), b}})
    ASSERT_EQ(mftk("export --plugin awq --model '" + model + "' --out '" + out + "' --set group_size=32 --set calibration_rows=4 --set "
                   "calibration_len=32 --set 'calibration_file=\"" + calibration + "\"'",
                   log())
                  .code,
              0)
        << text_of(log());
  EXPECT_TRUE(fs::exists(a + "/config.json"));
  EXPECT_EQ(first_difference(a, b), "");
}

}  // namespace
