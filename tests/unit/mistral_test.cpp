// The Mistral model plugin against independent facts: a plain reference
// implementation of the HF forward (tests/reference), formulas written out
// element by element, and invariants (GQA == repeated MHA, packing ==
// separate runs, KV-cache decoding == full forward, block size and gradient
// checkpointing change nothing, the sliding window cuts exactly where
// docs/formats.md §2.5, sliding window, says).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/autograd.h>

#include "mistral/attention.h"
#include "mistral/layers.h"
#include "mistral/mistral_config.h"
#include "mistral/mistral_model.h"
#include "mistral/tensor_names.h"
#include "model_presets.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"
#include "reference/hf_mistral_reference.h"

namespace fs = std::filesystem;
using mftk::mistral::MistralConfig;
using mftk::mistral::MistralModel;
using nlohmann::json;

namespace {

// A scratch folder removed at the end of the test.
class MistralTempDir {
 public:
  MistralTempDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_mistral_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~MistralTempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }

 private:
  fs::path path_;
};

MistralConfig small_config(int64_t heads = 4, int64_t kv_heads = 2, std::optional<int64_t> window = std::nullopt,
                           bool tied = false, int64_t head_dim = 0) {
  MistralConfig c;
  c.vocab_size = 61;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_hidden_layers = 2;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = head_dim > 0 ? head_dim : c.hidden_size / heads;
  c.max_position_embeddings = 256;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.sliding_window = window;
  c.tie_word_embeddings = tied;
  c.torch_dtype = "float32";
  return c;
}

// Random HF-named weights for `c`, names written out here (not taken from
// the plugin's table). Scaled so activations stay O(1) and attention is far
// from uniform.
std::map<std::string, at::Tensor> random_weights(const MistralConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
  auto linear = [](int64_t out, int64_t in) { return at::randn({out, in}) / std::sqrt(double(in)) * 1.5; };
  auto norm = [](int64_t n) { return 1.0 + 0.2 * at::randn({n}); };
  std::map<std::string, at::Tensor> w;
  w["model.embed_tokens.weight"] = at::randn({V, H});
  for (int64_t n = 0; n < c.num_hidden_layers; ++n) {
    const std::string p = "model.layers." + std::to_string(n) + ".";
    w[p + "self_attn.q_proj.weight"] = linear(qd, H);
    w[p + "self_attn.k_proj.weight"] = linear(kvd, H);
    w[p + "self_attn.v_proj.weight"] = linear(kvd, H);
    w[p + "self_attn.o_proj.weight"] = linear(H, qd);
    w[p + "mlp.gate_proj.weight"] = linear(I, H);
    w[p + "mlp.up_proj.weight"] = linear(I, H);
    w[p + "mlp.down_proj.weight"] = linear(H, I);
    w[p + "input_layernorm.weight"] = norm(H);
    w[p + "post_attention_layernorm.weight"] = norm(H);
  }
  w["model.norm.weight"] = norm(H);
  if (!c.tie_word_embeddings) w["lm_head.weight"] = linear(V, H);
  return w;
}

void write_checkpoint(const std::string& dir, const MistralConfig& c,
                      const std::map<std::string, at::Tensor>& weights) {
  mftk::NamedTensors tensors(weights.begin(), weights.end());
  mftk::save_checkpoint(dir, tensors);
  c.save(dir);
}

std::unique_ptr<MistralModel> load_model(const std::string& dir, int64_t attention_chunk = 512,
                                         mftk::LoadOptions options = {}) {
  mftk::mistral::MistralModelOptions model_options;
  model_options.attention_chunk = attention_chunk;
  auto model = std::make_unique<MistralModel>(model_options);
  model->load_config(dir);
  options.path = dir;
  model->load(options);
  return model;
}

// A model written to its own folder; keeps the folder (and the mapping) alive.
struct TestModel {
  MistralTempDir dir;
  MistralConfig config;
  std::map<std::string, at::Tensor> weights;
  std::unique_ptr<MistralModel> model;

  TestModel(const MistralConfig& c, uint64_t seed, int64_t attention_chunk = 512)
      : config(c), weights(random_weights(c, seed)) {
    write_checkpoint(dir.str(), c, weights);
    model = load_model(dir.str(), attention_chunk);
  }
};

mftk::Batch make_batch(const std::vector<std::vector<int64_t>>& ids,
                       const std::vector<std::vector<int64_t>>& positions = {},
                       const std::vector<std::vector<int64_t>>& docs = {}) {
  const int64_t B = ids.size(), T = ids[0].size();
  auto to_tensor = [&](const std::vector<std::vector<int64_t>>& rows, at::ScalarType dtype) {
    at::Tensor t = at::empty({B, T}, at::kLong);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < T; ++i) t[b][i] = rows[b][i];
    return t.to(dtype);
  };
  mftk::Batch batch;
  batch.input_ids = to_tensor(ids, at::kLong);
  if (!positions.empty()) batch.position_ids = to_tensor(positions, at::kLong);
  if (!docs.empty()) batch.doc_ids = to_tensor(docs, at::kInt);
  return batch;
}

std::vector<int64_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> ids(n);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % vocab);
  return ids;
}

mftk::reference::HfMistralReferenceConfig reference_config(const MistralConfig& c) {
  mftk::reference::HfMistralReferenceConfig r;
  r.vocab_size = c.vocab_size;
  r.hidden_size = c.hidden_size;
  r.intermediate_size = c.intermediate_size;
  r.num_layers = c.num_hidden_layers;
  r.num_heads = c.num_attention_heads;
  r.num_kv_heads = c.num_key_value_heads;
  r.head_dim = c.head_dim;
  r.rms_norm_eps = c.rms_norm_eps;
  r.rope_theta = c.rope_theta;
  r.sliding_window = c.sliding_window;
  r.tie_word_embeddings = c.tie_word_embeddings;
  return r;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// ---------------------------------------------------------------- config

TEST(MistralConfig, ParsesHfKeysWithTransformersDefaults) {
  json j = {{"vocab_size", 100}, {"hidden_size", 64},   {"intermediate_size", 96},
            {"num_hidden_layers", 2}, {"num_attention_heads", 8}, {"num_key_value_heads", 2},
            {"rms_norm_eps", 1e-5}, {"rope_theta", 1e6},  {"sliding_window", nullptr},
            {"torch_dtype", "bfloat16"}, {"tie_word_embeddings", true}};
  auto c = MistralConfig::from_json(j, "config.json");
  EXPECT_EQ(c.head_dim, 8);  // absent -> hidden / heads
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.dtype(), at::kBFloat16);
  EXPECT_EQ(c.group_size(), 4);

  j.erase("sliding_window");  // absent: transformers' default 4096
  j["head_dim"] = nullptr;
  j["num_key_value_heads"] = nullptr;  // null: one KV head per query head
  c = MistralConfig::from_json(j, "config.json");
  EXPECT_EQ(c.sliding_window.value_or(-1), 4096);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 8);

  j["head_dim"] = 16;  // may differ from hidden / heads
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500.0}};
  c = MistralConfig::from_json(j, "config.json");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500.0);
}

TEST(MistralConfig, ErrorsNameTheFileAndTheKey) {
  json j = {{"vocab_size", 100}, {"hidden_size", 64}, {"intermediate_size", 96}, {"num_hidden_layers", 2},
            {"num_attention_heads", 8}, {"num_key_value_heads", 3}};
  auto e = error_of([&] { MistralConfig::from_json(j, "ckpt/config.json"); });
  EXPECT_NE(e.find("ckpt/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("num_attention_heads"), std::string::npos) << e;
  EXPECT_NE(e.find("num_key_value_heads (3)"), std::string::npos) << e;

  j["num_key_value_heads"] = 2;
  j.erase("hidden_size");
  e = error_of([&] { MistralConfig::from_json(j, "ckpt/config.json"); });
  EXPECT_NE(e.find("ckpt/config.json: 'hidden_size' is missing"), std::string::npos) << e;

  j["hidden_size"] = "64";
  e = error_of([&] { MistralConfig::from_json(j, "ckpt/config.json"); });
  EXPECT_NE(e.find("'hidden_size' must be an integer"), std::string::npos) << e;

  j["hidden_size"] = 64;
  j["sliding_window"] = 0;
  e = error_of([&] { MistralConfig::from_json(j, "ckpt/config.json"); });
  EXPECT_NE(e.find("'sliding_window'"), std::string::npos) << e;

  j["sliding_window"] = 16;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  e = error_of([&] { MistralConfig::from_json(j, "ckpt/config.json"); });
  EXPECT_NE(e.find("'rope_scaling'"), std::string::npos) << e;
}

TEST(MistralConfig, PresetsHoldTheShippedValues) {
  // docs/formats.md §2.2 (Mistral-7B configs).
  auto v1 = MistralConfig::preset("mistral-7b-v0.1", 0);
  EXPECT_EQ(v1.vocab_size, 32000);
  EXPECT_EQ(v1.hidden_size, 4096);
  EXPECT_EQ(v1.intermediate_size, 14336);
  EXPECT_EQ(v1.num_hidden_layers, 32);
  EXPECT_EQ(v1.num_attention_heads, 32);
  EXPECT_EQ(v1.num_key_value_heads, 8);
  EXPECT_EQ(v1.head_dim, 128);
  EXPECT_EQ(v1.max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(v1.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(v1.rope_theta, 10000.0);
  EXPECT_EQ(v1.sliding_window.value_or(-1), 4096);
  EXPECT_FALSE(v1.tie_word_embeddings);
  EXPECT_EQ(v1.dtype(), at::kBFloat16);

  auto v3 = MistralConfig::preset("mistral-7b-v0.3", 32768);
  EXPECT_EQ(v3.vocab_size, 32768);
  EXPECT_DOUBLE_EQ(v3.rope_theta, 1000000.0);
  EXPECT_FALSE(v3.sliding_window.has_value());
  EXPECT_EQ(v3.bos_token_id, 1);
  EXPECT_EQ(v3.eos_token_id, 2);

  auto tiny = MistralConfig::preset("tiny", 1000);
  EXPECT_EQ(tiny.vocab_size, 1000);
  EXPECT_EQ(tiny.hidden_size, 256);
  EXPECT_EQ(tiny.num_hidden_layers, 4);
  EXPECT_EQ(tiny.num_attention_heads, 8);
  EXPECT_EQ(tiny.num_key_value_heads, 2);
  EXPECT_EQ(tiny.intermediate_size, 768);
  EXPECT_EQ(tiny.sliding_window.value_or(-1), 64);
  EXPECT_EQ(tiny.max_position_embeddings, 2048);
  auto small = MistralConfig::preset("small", 1000);
  EXPECT_EQ(small.hidden_size, 512);
  EXPECT_EQ(small.num_hidden_layers, 8);
  EXPECT_EQ(small.num_key_value_heads, 4);
  EXPECT_EQ(small.intermediate_size, 1536);
  EXPECT_EQ(small.sliding_window.value_or(-1), 256);

  auto e = error_of([] { mftk::mistral_preset_config("mistral-8b", 0); });
  EXPECT_NE(e.find("tiny, small, mistral-7b-v0.1, mistral-7b-v0.3"), std::string::npos) << e;
  e = error_of([] { mftk::mistral_preset_config("mistral-7b-v0.3", 32000); });
  EXPECT_NE(e.find("32768"), std::string::npos) << e;
  e = error_of([] { mftk::mistral_preset_config("tiny", 0); });
  EXPECT_NE(e.find("vocab_size"), std::string::npos) << e;
}

TEST(MistralConfig, ToJsonRoundTripsAndIsWhatHfReads) {
  for (const auto& name : mftk::mistral_preset_names()) {
    const bool shipped = name.rfind("mistral-7b", 0) == 0;  // vocab fixed by the preset
    const json preset = mftk::mistral_preset_config(name, shipped ? 0 : 1000);
    const auto c = MistralConfig::from_json(preset, name);
    const json written = c.to_json();
    // Every key the preset writes comes back with the same value.
    for (const auto& [key, value] : preset.items())
      EXPECT_EQ(written.at(key), value) << name << " key " << key;
    EXPECT_EQ(written.at("architectures"), json::array({"MistralForCausalLM"}));
    EXPECT_EQ(written.at("model_type"), "mistral");
    EXPECT_FALSE(written.contains("head_dim")) << "default head_dim is left out like the shipped files";
  }
  auto c = small_config(4, 2, 8, true, 12);
  const json j = c.to_json();
  EXPECT_EQ(j.at("head_dim"), 12);
  EXPECT_EQ(j.at("sliding_window"), 8);
  const auto back = MistralConfig::from_json(j, "x");
  EXPECT_EQ(back.head_dim, 12);
  EXPECT_TRUE(back.tie_word_embeddings);
  EXPECT_EQ(back.sliding_window.value_or(-1), 8);
}

// ---------------------------------------------------------------- names

TEST(MistralTensorNames, HfAndGgufNames) {
  using mftk::mistral::TensorRole;
  EXPECT_EQ(mftk::mistral::hf_tensor_name(TensorRole::q_proj, 3), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(mftk::mistral::hf_module_name(TensorRole::down_proj, 0), "model.layers.0.mlp.down_proj");
  EXPECT_EQ(mftk::mistral::hf_tensor_name(TensorRole::post_attention_norm, 1),
            "model.layers.1.post_attention_layernorm.weight");
  EXPECT_EQ(mftk::mistral::hf_module_name(TensorRole::lm_head), "lm_head");
  EXPECT_EQ(mftk::mistral::gguf_tensor_name(TensorRole::post_attention_norm, 5), "blk.5.ffn_norm.weight");
  EXPECT_EQ(mftk::mistral::gguf_tensor_name(TensorRole::o_proj, 2), "blk.2.attn_output.weight");
  EXPECT_EQ(mftk::mistral::gguf_tensor_name(TensorRole::embed_tokens), "token_embd.weight");

  // Same set of names and shapes as the hand-written generator above.
  for (bool tied : {false, true}) {
    auto c = small_config(4, 2, std::nullopt, tied, 12);
    auto w = random_weights(c, 1);
    auto listed = mftk::mistral::checkpoint_tensors(c);
    ASSERT_EQ(listed.size(), w.size());
    for (const auto& t : listed) {
      ASSERT_TRUE(w.count(t.name)) << t.name;
      EXPECT_EQ(w[t.name].sizes().vec(), t.shape) << t.name;
    }
    EXPECT_EQ(listed.front().name, "model.embed_tokens.weight");
  }
}

// ---------------------------------------------------------------- formulas

TEST(MistralRope, MatchesTheFormulaElementByElement) {
  const int64_t D = 8;
  const double theta = 10000.0;
  mftk::mistral::RotaryEmbedding rope(D, theta, at::kCPU);
  const std::vector<int64_t> positions = {0, 1, 5, 17, 300};
  const int64_t T = positions.size();
  at::manual_seed(3);
  const at::Tensor x = at::randn({1, T, D});
  at::Tensor pos = at::tensor(positions, at::kLong).view({1, T});
  auto [cos, sin] = rope.cos_sin(pos, at::kFloat);
  const at::Tensor y = mftk::mistral::apply_rotary(x, cos, sin);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < D / 2; ++i) {
      const double angle = positions[t] / std::pow(theta, 2.0 * i / D);
      const double a = x[0][t][i].item<double>(), b = x[0][t][i + D / 2].item<double>();
      EXPECT_NEAR(y[0][t][i].item<double>(), a * std::cos(angle) - b * std::sin(angle), 1e-4)
          << "t=" << t << " i=" << i;
      EXPECT_NEAR(y[0][t][i + D / 2].item<double>(), b * std::cos(angle) + a * std::sin(angle), 1e-4)
          << "t=" << t << " i=" << i;
    }
  }
}

TEST(MistralRmsNorm, MatchesTheFormulaAndKeepsTheInputDtype) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({3, 6});
  const at::Tensor w = at::randn({6});
  const at::Tensor y = mftk::mistral::rms_norm(x, w, 1e-5);
  for (int64_t r = 0; r < 3; ++r) {
    double ms = 0;
    for (int64_t i = 0; i < 6; ++i) ms += std::pow(x[r][i].item<double>(), 2) / 6;
    for (int64_t i = 0; i < 6; ++i)
      EXPECT_NEAR(y[r][i].item<double>(), x[r][i].item<double>() / std::sqrt(ms + 1e-5) * w[i].item<double>(), 1e-5);
  }
  EXPECT_EQ(mftk::mistral::rms_norm(x.to(at::kBFloat16), w, 1e-5).scalar_type(), at::kBFloat16);
}

// ---------------------------------------------------------------- reference

TEST(MistralReference, LogitsMatchTheIndependentHfReference) {
  struct Case {
    const char* what;
    MistralConfig config;
    int64_t chunk;
  };
  const std::vector<Case> cases = {
      {"GQA 4/2, window 5 < T, untied", small_config(4, 2, 5, false), 512},
      {"GQA 4/1, window 7, tied, chunked by 4", small_config(4, 1, 7, true), 4},
      {"head_dim 12 != 32/4, no window, chunked by 9", small_config(4, 2, std::nullopt, false, 12), 9},
      {"MHA 4/4, window 3, tied", small_config(4, 4, 3, true), 512},
  };
  int64_t seed = 100;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    TestModel m(c.config, seed++, c.chunk);
    const auto ids = random_ids(33, c.config.vocab_size, seed);
    const at::Tensor logits = m.model->logits(m.model->forward(make_batch({ids})))[0];
    const at::Tensor expected = mftk::reference::hf_mistral_reference_logits(m.weights, reference_config(c.config), ids);
    ASSERT_EQ(logits.sizes(), expected.sizes());
    EXPECT_LT(max_abs_diff(logits, expected), 1e-4);
    EXPECT_GT(expected.abs().max().item<double>(), 0.5) << "logits too small to be a test";
  }
}

// ---------------------------------------------------------------- attention

TEST(MistralAttention, GqaEqualsMhaWithRepeatedKvHeads) {
  const auto gqa_config = small_config(8, 2, 6, false, 4);
  TestModel gqa(gqa_config, 7);
  // MHA checkpoint: query head h uses KV head h / 4, so K/V rows of each KV
  // head are repeated 4 times in place.
  auto mha_config = gqa_config;
  mha_config.num_key_value_heads = 8;
  auto mha_weights = gqa.weights;
  for (int64_t n = 0; n < gqa_config.num_hidden_layers; ++n)
    for (const char* proj : {"k_proj", "v_proj"}) {
      const std::string name = "model.layers." + std::to_string(n) + ".self_attn." + proj + ".weight";
      const at::Tensor w = gqa.weights[name];
      mha_weights[name] = at::repeat_interleave(w.view({2, 4, gqa_config.hidden_size}), 4, 0)
                              .reshape({8 * 4, gqa_config.hidden_size});
    }
  MistralTempDir dir;
  write_checkpoint(dir.str(), mha_config, mha_weights);
  auto mha = load_model(dir.str());
  const auto batch = make_batch({random_ids(20, 61, 1), random_ids(20, 61, 2)});
  EXPECT_LT(max_abs_diff(gqa.model->forward(batch), mha->forward(batch)), 1e-5);
}

TEST(MistralAttention, SlidingWindowAtLeastTheLengthIsPlainCausal) {
  const int64_t T = 16;
  TestModel windowed(small_config(4, 2, T), 11);
  auto plain_config = small_config(4, 2, std::nullopt);
  MistralTempDir dir;
  write_checkpoint(dir.str(), plain_config, windowed.weights);
  auto plain = load_model(dir.str());
  const auto batch = make_batch({random_ids(T, 61, 5)});
  EXPECT_LT(max_abs_diff(windowed.model->forward(batch), plain->forward(batch)), 1e-6);
  // ...and a window that binds changes the result.
  TestModel narrow(small_config(4, 2, 4), 11);
  EXPECT_GT(max_abs_diff(narrow.model->forward(batch), plain->forward(batch)), 1e-3);
}

TEST(MistralAttention, SlidingWindowCutsExactlyAtIMinusW) {
  // One layer, so position i depends on tokens i-W+1 .. i only.
  auto c = small_config(4, 2, 4);
  c.num_hidden_layers = 1;
  TestModel m(c, 12, /*attention_chunk=*/3);
  const int64_t W = 4, i = 9;
  const auto ids = random_ids(12, c.vocab_size, 9);
  const at::Tensor base = m.model->forward(make_batch({ids}))[0];
  auto changed_at = [&](int64_t j) {
    auto other = ids;
    other[j] = (other[j] + 7) % c.vocab_size;
    return m.model->forward(make_batch({other}))[0];
  };
  const at::Tensor far = changed_at(i - W);      // just outside the window of i
  const at::Tensor near = changed_at(i - W + 1);  // oldest key inside it
  EXPECT_EQ(max_abs_diff(far[i], base[i]), 0.0);
  EXPECT_GT(max_abs_diff(near[i], base[i]), 1e-4);
  // Causal: earlier positions never see a later token.
  EXPECT_EQ(max_abs_diff(near.slice(0, 0, i - W + 1), base.slice(0, 0, i - W + 1)), 0.0);
  // Position i - W + 1 + (W - 1) = i is the last one that sees token i-W+1.
  EXPECT_EQ(max_abs_diff(near[i + 1], base[i + 1]), 0.0);
}

TEST(MistralAttention, ChunkedEqualsSingleBlockForwardAndGradients) {
  auto c = small_config(4, 2, 6);
  TestModel m(c, 21);
  // Packed rows with padding, so blocks see partial, empty and full masks.
  const auto batch = make_batch({random_ids(20, 61, 3), random_ids(20, 61, 4)},
                                {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6, 0, 0, 0},
                                 {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}},
                                {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1},
                                 std::vector<int64_t>(20, 0)});
  std::vector<at::Tensor> params;
  for (auto& [name, t] : m.model->named_parameters()) {
    t.requires_grad_(true);
    params.push_back(t);
  }
  at::manual_seed(0);
  const at::Tensor probe = at::randn({2, 20, c.hidden_size});
  auto run = [&](int64_t chunk) {
    m.model->set_attention_chunk(chunk);
    const at::Tensor h = m.model->forward(batch);
    const at::Tensor loss = (h * probe).sum();
    auto grads = torch::autograd::grad({loss}, params);
    return std::make_pair(h.detach(), grads);
  };
  const auto [h_full, g_full] = run(512);
  EXPECT_TRUE(at::isfinite(h_full).all().item<bool>());
  for (int64_t chunk : {1, 3, 7}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const auto [h, g] = run(chunk);
    EXPECT_LT(max_abs_diff(h, h_full), 1e-5);
    for (size_t k = 0; k < params.size(); ++k) {
      EXPECT_TRUE(at::isfinite(g[k]).all().item<bool>());
      EXPECT_LT(max_abs_diff(g[k], g_full[k]), 1e-4 * (1 + g_full[k].abs().max().item<double>()));
    }
  }
}

TEST(MistralAttention, PlanVisitsOnlyTheKeysAWindowCanSee) {
  // T = 12, W = 3, blocks of 4 rows: block [4, 8) sees keys 2..7, block [8, 12) keys 6..11.
  const auto index = at::arange(12, at::kLong);
  const auto pos = index.unsqueeze(0);
  const auto doc = at::zeros({1, 12}, at::kLong);
  mftk::mistral::AttentionPlan plan({index, index, pos, pos, doc, doc, 3}, 4);
  ASSERT_EQ(plan.blocks().size(), 3u);
  EXPECT_EQ(plan.blocks()[1].k0, 2);
  EXPECT_EQ(plan.blocks()[1].k1, 8);
  EXPECT_EQ(plan.blocks()[2].k0, 6);
  EXPECT_EQ(plan.blocks()[2].k1, 12);
  // The mask is the rule of FORMATS §2.5 written out.
  const at::Tensor vis = plan.visible(plan.blocks()[2]);
  for (int64_t i = 8; i < 12; ++i)
    for (int64_t j = 6; j < 12; ++j)
      EXPECT_EQ(vis[0][i - 8][j - 6].item<bool>(), j <= i && j > i - 3) << i << "," << j;
}

// ---------------------------------------------------------------- packing

TEST(MistralPacking, EachDocumentEqualsRunningItAlone) {
  for (std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(2)}) {
    SCOPED_TRACE(window ? "window 2" : "no window");
    TestModel m(small_config(4, 2, window), 31, /*attention_chunk=*/2);
    const std::vector<int64_t> doc0 = {5, 9, 13}, doc1 = {40, 2};
    const auto packed = m.model->forward(make_batch({{5, 9, 13, 40, 2, 0, 0}}, {{0, 1, 2, 0, 1, 0, 0}},
                                                    {{0, 0, 0, 1, 1, -1, -1}}))[0];
    const auto alone0 = m.model->forward(make_batch({doc0}))[0];
    const auto alone1 = m.model->forward(make_batch({doc1}))[0];
    EXPECT_LT(max_abs_diff(packed.slice(0, 0, 3), alone0), 1e-5);
    EXPECT_LT(max_abs_diff(packed.slice(0, 3, 5), alone1), 1e-5);
    EXPECT_TRUE(at::isfinite(packed).all().item<bool>()) << "padding rows must not be NaN";
  }
}

// ---------------------------------------------------------------- decoding

TEST(MistralDecode, KvCacheEqualsTheFullForward) {
  for (std::optional<int64_t> window : {std::optional<int64_t>(), std::optional<int64_t>(5)}) {
    SCOPED_TRACE(window ? "window 5 (rolling cache)" : "no window");
    TestModel m(small_config(4, 2, window), 41, /*attention_chunk=*/4);
    const int64_t T = 23;
    const auto ids = random_ids(T, 61, 8);
    const at::Tensor full = m.model->forward(make_batch({ids}))[0];
    const at::Tensor id_tensor = at::tensor(ids, at::kLong);

    auto state = m.model->start_decode(T);
    std::vector<at::Tensor> steps;
    for (int64_t t = 0; t < T; ++t) steps.push_back(m.model->decode(*state, id_tensor.slice(0, t, t + 1)));
    EXPECT_EQ(state->position(), T);
    EXPECT_LT(max_abs_diff(at::cat(steps, 0), full), 1e-5);

    // Uneven pieces, one longer than the window.
    auto state2 = m.model->start_decode(T);
    std::vector<at::Tensor> pieces;
    int64_t t = 0;
    for (int64_t n : {3, 1, 9, 1, 1, 8}) {
      pieces.push_back(m.model->decode(*state2, id_tensor.slice(0, t, t + n)));
      t += n;
    }
    ASSERT_EQ(t, T);
    EXPECT_LT(max_abs_diff(at::cat(pieces, 0), full), 1e-5);

    auto e = error_of([&] { m.model->decode(*state2, id_tensor.slice(0, 0, 1)); });
    EXPECT_NE(e.find("max_tokens"), std::string::npos) << e;
  }
}

// ---------------------------------------------------------------- training

namespace {

// A LoRA-like op with input dropout: exercises trainable tensors inside a
// slot and the RNG replay of gradient checkpointing.
class DropoutDeltaLinear final : public mftk::LinearOp {
 public:
  DropoutDeltaLinear(std::shared_ptr<mftk::LinearOp> inner, int64_t in, int64_t out, bool* training)
      : inner_(std::move(inner)), training_(training) {
    a_ = (at::randn({2, in}) * 0.3).requires_grad_(true);
    b_ = (at::randn({out, 2}) * 0.3).requires_grad_(true);
  }
  at::Tensor forward(const at::Tensor& x) override {
    return inner_->forward(x) + at::linear(at::linear(at::dropout(x, 0.3, *training_), a_), b_);
  }
  at::Tensor dense_weight(at::ScalarType dtype) const override { return inner_->dense_weight(dtype); }
  mftk::NamedTensors parameters() override { return {{"a", a_}, {"b", b_}}; }
  int64_t storage_bytes() const override { return 0; }
  std::string describe() const override { return "test delta"; }

 private:
  std::shared_ptr<mftk::LinearOp> inner_;
  bool* training_;
  at::Tensor a_, b_;
};

}  // namespace

// Counts forward calls of the op it wraps.
class CountingLinear final : public mftk::LinearOp {
 public:
  CountingLinear(std::shared_ptr<mftk::LinearOp> inner, int* calls) : inner_(std::move(inner)), calls_(calls) {}
  at::Tensor forward(const at::Tensor& x) override {
    ++*calls_;
    return inner_->forward(x);
  }
  at::Tensor dense_weight(at::ScalarType dtype) const override { return inner_->dense_weight(dtype); }
  mftk::NamedTensors parameters() override { return inner_->parameters(); }
  int64_t storage_bytes() const override { return 0; }
  std::string describe() const override { return "counting"; }

 private:
  std::shared_ptr<mftk::LinearOp> inner_;
  int* calls_;
};

TEST(MistralCheckpointing, EveryLayerButTheLastIsRecomputedInBackward) {
  MistralConfig c = small_config(4, 2);
  c.num_hidden_layers = 3;
  TestModel m(c, 52);
  std::vector<int> calls(3, 0);
  for (auto* slot : m.model->linear_slots())
    for (int n = 0; n < 3; ++n)
      if (slot->name == "model.layers." + std::to_string(n) + ".self_attn.q_proj")
        slot->op = std::make_shared<CountingLinear>(slot->op, &calls[size_t(n)]);
  at::Tensor norm = m.model->named_parameters()[1].second;  // layer 0's input norm: makes backward reach every layer
  norm.requires_grad_(true);
  m.model->set_gradient_checkpointing(true);
  auto batch = make_batch({random_ids(10, 61, 4)});
  const at::Tensor logits = m.model->logits(m.model->forward(batch));
  EXPECT_EQ(calls, (std::vector<int>{1, 1, 1}));
  logits.sum().backward();
  EXPECT_EQ(calls, (std::vector<int>{2, 2, 1})) << "layers 0 and 1 recomputed, the last one not";
  ASSERT_TRUE(norm.grad().defined());
}

TEST(MistralCheckpointing, SameLossAndGradientsWithAndWithout) {
  TestModel m(small_config(4, 2, 5), 51, /*attention_chunk=*/6);
  bool training = true;
  at::manual_seed(9);
  std::vector<at::Tensor> params;
  for (auto* slot : m.model->linear_slots()) {
    if (slot->name == "lm_head") continue;
    slot->op = std::make_shared<DropoutDeltaLinear>(slot->op, slot->in_features, slot->out_features, &training);
    for (auto& [name, t] : slot->op->parameters()) params.push_back(t);
  }
  for (auto& [name, t] : m.model->named_parameters()) {
    if (name == "model.embed_tokens.weight") continue;  // layer-external; grads of norms suffice
    t.requires_grad_(true);
    params.push_back(t);
  }
  const auto ids = random_ids(18, 61, 2);
  auto batch = make_batch({ids, random_ids(18, 61, 3)});
  const at::Tensor targets = at::randint(61, {2 * 18}, at::kLong);
  auto run = [&](bool checkpointing) {
    m.model->set_gradient_checkpointing(checkpointing);
    at::manual_seed(1234);  // same dropout masks in both runs
    const at::Tensor logits = m.model->logits(m.model->forward(batch));
    const at::Tensor loss = at::cross_entropy_loss(logits.view({-1, 61}), targets);
    auto grads = torch::autograd::grad({loss}, params);
    return std::make_pair(loss.item<double>(), grads);
  };
  const auto [loss_plain, g_plain] = run(false);
  const auto [loss_ckpt, g_ckpt] = run(true);
  EXPECT_DOUBLE_EQ(loss_plain, loss_ckpt);
  for (size_t k = 0; k < params.size(); ++k) {
    ASSERT_TRUE(g_ckpt[k].defined()) << k;
    EXPECT_LT(max_abs_diff(g_plain[k], g_ckpt[k]), 1e-6) << k;
    EXPECT_GT(g_plain[k].abs().max().item<double>(), 0.0) << k;
  }
}

// ---------------------------------------------------------------- loading

TEST(MistralLoad, MissingOrMisshapenTensorIsNamed) {
  const auto c = small_config(4, 2, 5);
  auto weights = random_weights(c, 61);
  {
    auto w = weights;
    w.erase("model.layers.1.mlp.up_proj.weight");
    MistralTempDir dir;
    write_checkpoint(dir.str(), c, w);
    const auto e = error_of([&] { load_model(dir.str()); });
    EXPECT_NE(e.find("'model.layers.1.mlp.up_proj.weight' (expected shape [48, 32])"), std::string::npos) << e;
  }
  {
    auto w = weights;
    w["model.layers.0.self_attn.k_proj.weight"] = at::zeros({8, 32});
    MistralTempDir dir;
    write_checkpoint(dir.str(), c, w);
    const auto e = error_of([&] { load_model(dir.str()); });
    EXPECT_NE(e.find("'model.layers.0.self_attn.k_proj.weight' has shape [8, 32], but config.json implies [16, 32]"),
              std::string::npos)
        << e;
  }
  {
    MistralTempDir dir;
    const auto e = error_of([&] { load_model(dir.str()); });
    EXPECT_NE(e.find("config.json"), std::string::npos) << e;
  }
}

TEST(MistralLoad, SlotsParametersAndDtypes) {
  TestModel m(small_config(4, 2, 5, /*tied=*/true), 71);
  const auto slots = m.model->linear_slots();
  ASSERT_EQ(slots.size(), 2u * 7 + 1);
  EXPECT_EQ(slots[0]->name, "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(slots[6]->name, "model.layers.0.mlp.down_proj");
  EXPECT_EQ(slots[7]->name, "model.layers.1.self_attn.q_proj");
  EXPECT_EQ(slots.back()->name, "lm_head");
  EXPECT_EQ(slots[1]->out_features, 16);
  EXPECT_EQ(slots[1]->in_features, 32);
  std::set<std::string> names;
  for (auto& [name, t] : m.model->named_parameters()) names.insert(name);
  EXPECT_EQ(names, (std::set<std::string>{"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                          "model.layers.0.post_attention_layernorm.weight",
                                          "model.layers.1.input_layernorm.weight",
                                          "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"}));
  // Tied: lm_head is the embedding matrix itself.
  const at::Tensor embed = m.model->named_parameters()[0].second;
  EXPECT_EQ(slots.back()->op->dense_weight(at::kFloat).data_ptr<float>(), embed.data_ptr<float>());
  EXPECT_EQ(m.model->shape().num_kv_heads, 2);
  EXPECT_EQ(m.model->shape().sliding_window.value_or(-1), 5);

  // weight_dtype converts; compute_dtype bf16 stays close to fp32.
  mftk::LoadOptions options;
  options.weight_dtype = at::kBFloat16;
  options.compute_dtype = at::kBFloat16;
  auto bf16 = load_model(m.dir.str(), 512, options);
  EXPECT_EQ(bf16->named_parameters()[0].second.scalar_type(), at::kBFloat16);
  EXPECT_EQ(bf16->compute_dtype(), at::kBFloat16);
  const auto batch = make_batch({random_ids(10, 61, 1)});
  const at::Tensor ref = m.model->logits(m.model->forward(batch));
  const at::Tensor low = bf16->logits(bf16->forward(batch));
  EXPECT_EQ(low.scalar_type(), at::kBFloat16);
  EXPECT_LT(max_abs_diff(low, ref), 0.1 * ref.abs().max().item<double>());
}

TEST(MistralLoad, QuantizerReceivesTheSlotsItWants) {
  struct RecordingQuantizer final : mftk::Quantizer {
    std::vector<std::string> seen;
    bool wants(const std::string& slot) const override { return slot.find("mlp.") != std::string::npos; }
    std::shared_ptr<mftk::LinearOp> quantize(const std::string& slot, const at::Tensor& weight,
                                             at::ScalarType compute_dtype) override {
      seen.push_back(slot);
      EXPECT_EQ(compute_dtype, at::kFloat);
      return mftk::make_dense_linear(weight.clone());
    }
  };
  const auto c = small_config(4, 2, 5);
  MistralTempDir dir;
  write_checkpoint(dir.str(), c, random_weights(c, 81));
  RecordingQuantizer q;
  mftk::LoadOptions options;
  options.quantizer = &q;
  auto model = load_model(dir.str(), 512, options);
  EXPECT_EQ(q.seen, (std::vector<std::string>{"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                                              "model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj",
                                              "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"}));
}

// The description exporters and the core read (mftk/model.h) is the
// checkpoint's own table: the same names and shapes as the files hold,
// roles at the places transformers' modeling_mistral.py puts them.
TEST(MistralDescription, ArchitectureIsTheCheckpointsTensorTable) {
  for (const bool tied : {false, true}) {
    TestModel m(small_config(4, 2, 5, tied), 81);
    const mftk::ModelArchitecture arch = m.model->architecture();
    const auto reader = mftk::CheckpointReader::open(m.dir.str());
    std::set<std::string> described;
    for (const auto& t : arch.tensors) {
      described.insert(t.name);
      ASSERT_TRUE(reader.contains(t.name)) << t.name;
      EXPECT_EQ(reader.info(t.name).shape, t.shape) << t.name;
    }
    const auto names = reader.names();
    EXPECT_EQ(described, std::set<std::string>(names.begin(), names.end()));
    EXPECT_EQ(described.count("lm_head.weight"), tied ? 0u : 1u);
    EXPECT_EQ(arch.head_slot, "lm_head");
    EXPECT_EQ(arch.embedding, "model.embed_tokens.weight");
    // 1 embedding + 2 layers x 9 + final norm (+ head).
    EXPECT_EQ(arch.tensors.size(), tied ? 20u : 21u);
    auto find = [&](mftk::TensorRole role, int64_t layer) -> const mftk::ModelTensor* {
      for (const auto& t : arch.tensors)
        if (t.role == role && t.layer == layer) return &t;
      return nullptr;
    };
    const auto* k = find(mftk::TensorRole::attn_k, 1);
    ASSERT_NE(k, nullptr);
    EXPECT_EQ(k->name, "model.layers.1.self_attn.k_proj.weight");
    EXPECT_EQ(k->shape, (std::vector<int64_t>{2 * 8, 32}));  // kv heads x head_dim, hidden
    EXPECT_TRUE(k->in_slot);
    const auto* norm = find(mftk::TensorRole::ffn_norm, 0);
    ASSERT_NE(norm, nullptr);
    EXPECT_EQ(norm->name, "model.layers.0.post_attention_layernorm.weight");
    EXPECT_FALSE(norm->in_slot);
    EXPECT_EQ(find(mftk::TensorRole::output, -1) != nullptr, !tied);
  }
}

// `mftk init`'s side of the plugin: the presets' shipped vocabularies and
// random weights as documented (norms 1, the rest N(0, initializer_range)),
// split into shards with an index when they exceed max_shard_bytes.
TEST(MistralDescription, PresetsAndRandomWeights) {
  mftk::mistral::MistralModel model;
  std::map<std::string, int64_t> vocab;
  for (const auto& p : model.presets()) vocab[p.name] = p.vocab_size;
  EXPECT_EQ(vocab, (std::map<std::string, int64_t>{
                       {"tiny", 0}, {"small", 0}, {"mistral-7b-v0.1", 32000}, {"mistral-7b-v0.3", 32768}}));
  EXPECT_THROW(model.preset_config("mistral-8b", 0), mftk::UsageError);

  MistralTempDir dir;
  auto c = small_config(4, 2, 5);
  c.hidden_size = 64;
  c.head_dim = 16;
  c.intermediate_size = 128;
  c.save(dir.str());
  model.load_config(dir.str());
  mftk::RandomWeightsJob job;
  job.dir = dir.str();
  job.seed = 5;
  job.max_shard_bytes = 40000;  // a few tensors per file
  const int64_t params = model.write_random_weights(job);
  EXPECT_TRUE(fs::exists(fs::path(dir.str()) / "model.safetensors.index.json"));
  const auto reader = mftk::CheckpointReader::open(dir.str());
  int64_t counted = 0;
  for (const auto& t : model.architecture().tensors) {
    const at::Tensor w = reader.get(t.name).to(at::kFloat);
    EXPECT_EQ(w.sizes().vec(), t.shape) << t.name;
    counted += w.numel();
    if (t.shape.size() == 1) {
      EXPECT_TRUE(w.eq(1).all().item<bool>()) << t.name;
    } else {
      EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.01) << t.name;
      EXPECT_NEAR(w.std().item<double>(), 0.02, 0.002) << t.name;
    }
  }
  EXPECT_EQ(params, counted);
}
