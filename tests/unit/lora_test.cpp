// The lora adapter plugin against hand-written formulas and PEFT's file
// layout (docs/formats.md §8, PEFT adapters), on a tiny fake model built here (no model plugin).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <iterator>
#include <map>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include "lora/lora_adapter.h"
#include "lora/lora_linear.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/safetensors.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using mftk::LinearSlot;
using mftk::NamedTensors;
using mftk::lora::LoRAAdapter;
using mftk::lora::LoRALinear;
using mftk::lora::LoRAOptions;

namespace {

constexpr int64_t kHidden = 16, kKv = 4, kInter = 24, kVocab = 10, kLayers = 2;
const std::vector<std::string> kSevenTargets = {"down_proj", "gate_proj", "k_proj", "o_proj",
                                                "q_proj",    "up_proj",   "v_proj"};

class LoraTempDir {
 public:
  LoraTempDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_lora_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~LoraTempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  fs::path path() const { return path_; }

 private:
  fs::path path_;
};

[[noreturn]] void not_used(const char* what) {
  throw std::logic_error(std::string(what) + ": not used in this test");
}

// Two decoder-shaped blocks of linear slots (GQA-shaped k/v: out = in / 4),
// an embedding, a norm weight and lm_head. run() composes every slot.
class TinyModel final : public mftk::Model {
 public:
  explicit TinyModel(uint64_t seed, at::ScalarType dtype = at::kFloat) {
    at::manual_seed(seed);
    auto slot = [&](const std::string& name, int64_t in, int64_t out) {
      LinearSlot s;
      s.name = name;
      s.in_features = in;
      s.out_features = out;
      s.op = mftk::make_dense_linear((at::randn({out, in}) / std::sqrt(double(in))).to(dtype));
      return s;
    };
    for (int64_t n = 0; n < kLayers; ++n) {
      const std::string p = "model.layers." + std::to_string(n) + ".";
      slots_.push_back(slot(p + "self_attn.q_proj", kHidden, kHidden));
      slots_.push_back(slot(p + "self_attn.k_proj", kHidden, kKv));
      slots_.push_back(slot(p + "self_attn.v_proj", kHidden, kKv));
      slots_.push_back(slot(p + "self_attn.o_proj", kHidden, kHidden));
      slots_.push_back(slot(p + "mlp.gate_proj", kHidden, kInter));
      slots_.push_back(slot(p + "mlp.up_proj", kHidden, kInter));
      slots_.push_back(slot(p + "mlp.down_proj", kInter, kHidden));
    }
    slots_.push_back(slot("lm_head", kHidden, kVocab));
    embed_ = at::randn({kVocab, kHidden}).to(dtype);
    norm_ = (at::rand({kHidden}) + 0.5).to(dtype);
  }

  LinearSlot& slot(const std::string& name) {
    for (auto& s : slots_)
      if (s.name == name) return s;
    throw std::logic_error("no slot " + name);
  }

  // ids [B, T] -> logits [B, T, vocab], fp32 activations.
  at::Tensor run(const at::Tensor& ids) {
    at::Tensor h = at::embedding(embed_, ids).to(at::kFloat) * norm_.to(at::kFloat);
    for (int64_t n = 0; n < kLayers; ++n) {
      LinearSlot* s = &slots_[n * 7];
      const at::Tensor q = s[0].forward(h), k = s[1].forward(h), v = s[2].forward(h);
      const at::Tensor kv = at::cat({k * v, k, v, k - v}, -1);  // GQA-style widening to kHidden
      h = h + s[3].forward(q * at::tanh(kv));
      h = h + s[6].forward(at::silu(s[4].forward(h)) * s[5].forward(h));
    }
    return slots_.back().forward(h);
  }

  void load_config(const std::string&) override { not_used("load_config"); }
  void load(const mftk::LoadOptions&) override { not_used("load"); }
  const mftk::ModelShape& shape() const override { not_used("shape"); }
  std::vector<LinearSlot*> linear_slots() override {
    std::vector<LinearSlot*> out;
    for (auto& s : slots_) out.push_back(&s);
    return out;
  }
  NamedTensors named_parameters() override { return {{"model.embed_tokens.weight", embed_}, {"model.norm.weight", norm_}}; }
  at::Tensor forward(const mftk::Batch&) override { not_used("forward"); }
  at::Tensor logits(const at::Tensor& hidden) override { return slots_.back().forward(hidden); }
  std::unique_ptr<mftk::DecodeState> start_decode(int64_t) override { not_used("start_decode"); }
  at::Tensor decode(mftk::DecodeState&, const at::Tensor&) override { not_used("decode"); }
  void set_gradient_checkpointing(bool) override {}
  void set_training(bool on) override {
    for (auto& s : slots_) s.op->set_training(on);
  }
  at::ScalarType compute_dtype() const override { return at::kFloat; }

  at::Tensor embed_;
  at::Tensor norm_;

 private:
  std::vector<LinearSlot> slots_;
};

at::Tensor sample_ids() {
  return at::tensor({1, 4, 9, 0, 3, 7, 2, 2, 8, 5, 6, 1}, at::kLong).view({2, 6});
}

// B is zero after init; give every wrapped slot a random one (and a fresh A).
void randomize_lora(LoRAAdapter& adapter, uint64_t seed) {
  at::manual_seed(seed);
  at::NoGradGuard no_grad;
  for (auto& [name, t] : adapter.trainable_parameters()) {
    at::Tensor p = t;
    p.copy_(at::randn(p.sizes()) * 0.1);
  }
}

LoRALinear& lora_op(LinearSlot& slot) {
  auto* op = dynamic_cast<LoRALinear*>(slot.op.get());
  if (!op) throw std::logic_error(slot.name + " is not LoRA-wrapped");
  return *op;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

// What PEFT 0.13 writes for LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]).
json peft_written_config() {
  return json::parse(R"({
    "alpha_pattern": {}, "auto_mapping": null, "base_model_name_or_path": "mistralai/Mistral-7B-v0.1",
    "bias": "none", "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
    "layer_replication": null, "layers_pattern": null, "layers_to_transform": null, "loftq_config": {},
    "lora_alpha": 4, "lora_dropout": 0.05, "megatron_config": null, "megatron_core": "megatron.core",
    "modules_to_save": null, "peft_type": "LORA", "r": 2, "rank_pattern": {}, "revision": null,
    "target_modules": ["v_proj", "q_proj"], "task_type": "CAUSAL_LM", "use_dora": false, "use_rslora": false
  })");
}

// A hand-made PEFT adapter for q_proj and v_proj of both layers (r = 2).
// Returns the tensors by slot name; `segment` is "" or ".default".
struct HandAdapter {
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> ab;  // slot -> (A, B)
};
HandAdapter write_peft_adapter(const fs::path& dir, const std::string& segment, at::ScalarType file_dtype,
                               const json& config = peft_written_config()) {
  HandAdapter h;
  NamedTensors tensors;
  at::manual_seed(99);
  const std::vector<std::pair<std::string, int64_t>> projections = {{"q_proj", kHidden}, {"v_proj", kKv}};
  for (int64_t n = 0; n < kLayers; ++n)
    for (const auto& [proj, out] : projections) {
      const std::string slot = "model.layers." + std::to_string(n) + ".self_attn." + proj;
      at::Tensor a = at::randn({2, kHidden}).to(file_dtype), b = at::randn({out, 2}).to(file_dtype);
      h.ab[slot] = {a.to(at::kFloat), b.to(at::kFloat)};
      tensors.emplace_back("base_model.model." + slot + ".lora_A" + segment + ".weight", a);
      tensors.emplace_back("base_model.model." + slot + ".lora_B" + segment + ".weight", b);
    }
  mftk::save_safetensors((dir / "adapter_model.safetensors").string(), tensors);
  write_text(dir / "adapter_config.json", config.dump(2));
  return h;
}

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// A validated [adapter] table: the plugin's defaults plus `set`.
mftk::Config adapter_config(std::map<std::string, mftk::Value> set = {}) {
  std::map<std::string, mftk::Config::Entry> entries;
  for (const auto& k : mftk::lora::lora_keys()) entries[k.name] = {*k.default_value, {"recipe.toml", 3, 1}, false};
  for (auto& [k, v] : set) entries[k] = {v, {"recipe.toml", 5, 1}, true};
  return mftk::Config("adapter", {"recipe.toml", 3, 1}, std::move(entries));
}

}  // namespace

// ---------------------------------------------------------------------------

TEST(LoraInject, OutputsUnchangedAtInitAndOnlyTargetsWrapped) {
  TinyModel model(1);
  const at::Tensor before = model.run(sample_ids());
  LoRAAdapter adapter;
  adapter.inject(model);
  // B = 0: the update is exactly zero.
  EXPECT_TRUE(at::equal(model.run(sample_ids()), before));
  int wrapped = 0;
  for (LinearSlot* s : model.linear_slots()) {
    if (s->name == "lm_head") {
      EXPECT_EQ(s->op->describe(), "dense Float");
      continue;
    }
    EXPECT_EQ(s->op->describe(), "lora(r=8) over dense Float") << s->name;
    const LoRALinear& op = lora_op(*s);
    EXPECT_EQ(op.lora_A().sizes().vec(), (std::vector<int64_t>{8, s->in_features})) << s->name;
    EXPECT_EQ(op.lora_B().sizes().vec(), (std::vector<int64_t>{s->out_features, 8})) << s->name;
    EXPECT_EQ(op.lora_A().scalar_type(), at::kFloat);
    EXPECT_TRUE(op.lora_A().requires_grad() && op.lora_B().requires_grad());
    EXPECT_EQ(at::count_nonzero(op.lora_B()).item<int64_t>(), 0);
    ++wrapped;
  }
  EXPECT_EQ(wrapped, 14);
  EXPECT_EQ(adapter.trainable_parameters().size(), 28u);
}

TEST(LoraForward, MatchesHandWrittenFormula) {
  for (bool rslora : {false, true}) {
    TinyModel model(2);
    const std::string k_name = "model.layers.1.self_attn.k_proj";  // GQA shape: out = in / 4
    const at::Tensor W = model.slot(k_name).op->dense_weight(at::kFloat).clone();
    LoRAOptions o;
    o.r = 4;
    o.alpha = 8;
    o.use_rslora = rslora;
    LoRAAdapter adapter(o);
    adapter.inject(model);
    randomize_lora(adapter, 5);
    LoRALinear& op = lora_op(model.slot(k_name));
    const at::Tensor A = op.lora_A().detach(), B = op.lora_B().detach();
    ASSERT_EQ(B.sizes().vec(), (std::vector<int64_t>{kKv, 4}));
    const double s = rslora ? 8.0 / 2.0 : 8.0 / 4.0;  // alpha/sqrt(r) or alpha/r
    EXPECT_DOUBLE_EQ(op.scaling(), s);

    at::manual_seed(3);
    const at::Tensor x = at::randn({2, 3, kHidden});
    const at::Tensor want = at::matmul(x, W.t()) + s * at::matmul(at::matmul(x, A.t()), B.t());
    const at::Tensor got = model.slot(k_name).forward(x).detach();
    EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-5)) << "rslora=" << rslora << " max diff "
                                                      << (got - want).abs().max().item<double>();
  }
}

TEST(LoraForward, Bf16InputRunsInBf16) {
  TinyModel model(2);
  LoRAAdapter adapter;
  adapter.inject(model);
  randomize_lora(adapter, 5);
  LinearSlot& q = model.slot("model.layers.0.self_attn.q_proj");
  const at::Tensor x = at::randn({3, kHidden});
  const at::Tensor y16 = q.forward(x.to(at::kBFloat16));
  EXPECT_EQ(y16.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::allclose(y16.to(at::kFloat), q.forward(x), 5e-2, 5e-2));
  EXPECT_EQ(lora_op(q).lora_A().scalar_type(), at::kFloat);  // the parameters stay fp32
}

TEST(LoraInit, DefaultIsKaimingUniformBound) {
  TinyModel model(3);
  at::manual_seed(11);
  LoRAAdapter adapter;
  adapter.inject(model);
  for (const std::string& name : {std::string("model.layers.0.mlp.down_proj"), std::string("model.layers.0.mlp.up_proj")}) {
    LinearSlot& s = model.slot(name);
    const at::Tensor A = lora_op(s).lora_A().detach();
    // kaiming_uniform_(a = sqrt(5)): bound = sqrt(6 / (1 + 5)) * sqrt(1 / fan_in) = 1 / sqrt(in).
    const double bound = 1.0 / std::sqrt(double(s.in_features));
    const double max_abs = A.abs().max().item<double>();
    EXPECT_LE(max_abs, bound) << name;
    // 8 * in uniform draws: the largest lies within 10 % of the bound with
    // probability 1 - 0.9^128 or better.
    EXPECT_GT(max_abs, 0.9 * bound) << name;
    // U(-b, b) has standard deviation b / sqrt(3).
    EXPECT_NEAR(A.std().item<double>(), bound / std::sqrt(3.0), 0.2 * bound / std::sqrt(3.0)) << name;
  }
}

TEST(LoraInit, GaussianHasStdOneOverR) {
  TinyModel model(3);
  at::manual_seed(12);
  LoRAOptions o;
  o.r = 4;
  o.init = mftk::lora::LoRAInit::gaussian;
  LoRAAdapter adapter(o);
  adapter.inject(model);
  std::vector<at::Tensor> all;
  for (auto& [name, t] : adapter.trainable_parameters())
    if (name.find("lora_A") != std::string::npos) all.push_back(t.detach().flatten());
  const at::Tensor a = at::cat(all);  // 4 * (14 * 16 + 2 * 8) = 960 draws
  EXPECT_NEAR(a.std().item<double>(), 0.25, 0.025);
  EXPECT_NEAR(a.mean().item<double>(), 0.0, 0.03);
}

TEST(LoraInit, SameSeedSameInit) {
  TinyModel m1(4), m2(4);
  LoRAAdapter a1, a2;
  at::manual_seed(7);
  a1.inject(m1);
  at::manual_seed(7);
  a2.inject(m2);
  const auto p1 = a1.trainable_parameters(), p2 = a2.trainable_parameters();
  ASSERT_EQ(p1.size(), p2.size());
  for (size_t i = 0; i < p1.size(); ++i) EXPECT_TRUE(at::equal(p1[i].second, p2[i].second)) << p1[i].first;
}

TEST(LoraMerge, MergedEqualsUnmergedAndSlotsAreDense) {
  TinyModel model(5);
  LoRAAdapter adapter;
  adapter.inject(model);
  randomize_lora(adapter, 6);
  const at::Tensor unmerged = model.run(sample_ids()).detach();
  adapter.merge(model);
  for (LinearSlot* s : model.linear_slots()) EXPECT_EQ(s->op->describe(), "dense Float") << s->name;
  const at::Tensor merged = model.run(sample_ids());
  EXPECT_TRUE(at::allclose(merged, unmerged, 1e-5, 1e-5)) << (merged - unmerged).abs().max().item<double>() << " of " << unmerged.abs().max().item<double>();
  EXPECT_TRUE(adapter.trainable_parameters().empty());
  EXPECT_THROW(adapter.merge(model), mftk::Error);
}

TEST(LoraMerge, Bf16BaseGetsFp32DeltaThenOneRounding) {
  TinyModel model(5, at::kBFloat16);
  const std::string name = "model.layers.0.mlp.gate_proj";
  const at::Tensor W = model.slot(name).op->dense_weight(at::kFloat).clone();
  LoRAAdapter adapter;
  adapter.inject(model);
  randomize_lora(adapter, 6);
  const LoRALinear& op = lora_op(model.slot(name));
  const at::Tensor want = (W + 2.0 * at::mm(op.lora_B().detach(), op.lora_A().detach())).to(at::kBFloat16);
  adapter.merge(model);
  EXPECT_EQ(model.slot(name).op->describe(), "dense BFloat16");
  EXPECT_TRUE(at::equal(model.slot(name).op->dense_weight(at::kBFloat16), want));
}

TEST(LoraSave, FileLayoutAndConfigFollowPeft) {
  TinyModel model(6);
  LoRAAdapter adapter;
  adapter.inject(model);
  LoraTempDir dir;
  adapter.save(dir.str(), "mistralai/Mistral-7B-v0.1");

  auto file = mftk::SafetensorsFile::open((dir.path() / "adapter_model.safetensors").string());
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  std::set<std::string> want_names;
  for (int64_t n = 0; n < kLayers; ++n)
    for (const char* m : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      for (const char* ab : {"lora_A", "lora_B"})
        want_names.insert("base_model.model.model.layers." + std::to_string(n) + "." + m + "." + ab + ".weight");
  std::set<std::string> names;
  for (const auto& t : file->tensors()) {
    names.insert(t.name);
    EXPECT_EQ(t.dtype, "F32") << t.name;
  }
  EXPECT_EQ(names, want_names);
  auto shape = [&](const std::string& n) { return file->find("base_model.model.model.layers.1." + n)->shape; };
  EXPECT_EQ(shape("self_attn.q_proj.lora_A.weight"), (std::vector<int64_t>{8, kHidden}));
  EXPECT_EQ(shape("self_attn.q_proj.lora_B.weight"), (std::vector<int64_t>{kHidden, 8}));
  EXPECT_EQ(shape("self_attn.k_proj.lora_A.weight"), (std::vector<int64_t>{8, kHidden}));
  EXPECT_EQ(shape("self_attn.k_proj.lora_B.weight"), (std::vector<int64_t>{kKv, 8}));
  EXPECT_EQ(shape("self_attn.v_proj.lora_B.weight"), (std::vector<int64_t>{kKv, 8}));
  EXPECT_EQ(shape("mlp.down_proj.lora_A.weight"), (std::vector<int64_t>{8, kInter}));
  EXPECT_EQ(shape("mlp.down_proj.lora_B.weight"), (std::vector<int64_t>{kHidden, 8}));

  const json c = json::parse(read_text(dir.path() / "adapter_config.json"));
  EXPECT_EQ(c["peft_type"], "LORA");
  EXPECT_EQ(c["task_type"], "CAUSAL_LM");
  EXPECT_EQ(c["base_model_name_or_path"], "mistralai/Mistral-7B-v0.1");
  EXPECT_EQ(c["r"], 8);
  EXPECT_EQ(c["lora_alpha"], 16);
  EXPECT_EQ(c["lora_dropout"], 0.0);
  std::vector<std::string> targets = c["target_modules"].get<std::vector<std::string>>();
  std::sort(targets.begin(), targets.end());
  EXPECT_EQ(targets, kSevenTargets);
  EXPECT_EQ(c["use_rslora"], false);
  EXPECT_EQ(c["bias"], "none");
  EXPECT_EQ(c["fan_in_fan_out"], false);
  EXPECT_TRUE(c["modules_to_save"].is_null());
  EXPECT_EQ(c["init_lora_weights"], true);
  EXPECT_EQ(c["inference_mode"], true);
  EXPECT_EQ(c["rank_pattern"], json::object());
  EXPECT_EQ(c["alpha_pattern"], json::object());
  // No temporary file left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator{}), 2);
}

TEST(LoraSave, AllLinearExpandsToModuleNamesAndSkipsLmHead) {
  TinyModel model(6);
  LoRAAdapter adapter(mftk::lora::lora_options_from_config(
      adapter_config({{"target_modules", std::vector<std::string>{"all-linear"}}})));
  adapter.inject(model);
  EXPECT_EQ(model.slot("lm_head").op->describe(), "dense Float");
  EXPECT_EQ(adapter.trainable_parameters().size(), 28u);
  LoraTempDir dir;
  adapter.save(dir.str(), "base");
  std::vector<std::string> targets =
      json::parse(read_text(dir.path() / "adapter_config.json"))["target_modules"].get<std::vector<std::string>>();
  std::sort(targets.begin(), targets.end());
  EXPECT_EQ(targets, kSevenTargets);
}

TEST(LoraSave, LoadIntoFreshModelGivesIdenticalOutputs) {
  LoraTempDir dir;
  at::Tensor trained;
  {
    TinyModel model(7);
    LoRAOptions o;
    o.r = 4;
    o.alpha = 12;
    o.use_rslora = true;
    o.target_modules = {"q_proj", "v_proj", "mlp.down_proj"};
    LoRAAdapter adapter(o);
    adapter.inject(model);
    randomize_lora(adapter, 8);
    trained = model.run(sample_ids()).detach();
    adapter.save(dir.str(), "tiny");
  }
  TinyModel fresh(7);
  const at::Tensor base = fresh.run(sample_ids());
  LoRAAdapter loaded;  // recipe defaults; the file's config wins
  loaded.load(dir.str(), fresh);
  EXPECT_EQ(loaded.options().r, 4);
  EXPECT_EQ(loaded.options().alpha, 12);
  EXPECT_TRUE(loaded.options().use_rslora);
  EXPECT_EQ(loaded.trainable_parameters().size(), 12u);
  EXPECT_FALSE(at::equal(fresh.run(sample_ids()), base));
  EXPECT_TRUE(at::equal(fresh.run(sample_ids()), trained));
}

TEST(LoraSave, LoadIntoTheSameInjectedAdapterRestoresWeights) {
  TinyModel model(7);
  LoRAAdapter adapter;
  adapter.inject(model);
  randomize_lora(adapter, 8);
  const at::Tensor saved_out = model.run(sample_ids()).detach();
  LoraTempDir dir;
  adapter.save(dir.str(), "tiny");
  randomize_lora(adapter, 9);
  EXPECT_FALSE(at::equal(model.run(sample_ids()), saved_out));
  adapter.load(dir.str(), model);
  EXPECT_TRUE(at::equal(model.run(sample_ids()), saved_out));
}

TEST(LoraLoad, HandWrittenPeftAdapterBothNameStyles) {
  for (const std::string segment : {"", ".default"}) {
    LoraTempDir dir;
    const HandAdapter hand = write_peft_adapter(dir.path(), segment, segment.empty() ? at::kFloat : at::kBFloat16);
    TinyModel model(8);
    std::map<std::string, at::Tensor> base_w;
    for (LinearSlot* s : model.linear_slots()) base_w[s->name] = s->op->dense_weight(at::kFloat).clone();
    LoRAAdapter adapter;
    adapter.load(dir.str(), model);
    EXPECT_EQ(adapter.options().r, 2);
    EXPECT_EQ(adapter.options().alpha, 4);
    EXPECT_DOUBLE_EQ(adapter.options().dropout, 0.05);

    at::manual_seed(1);
    const at::Tensor x = at::randn({5, kHidden});
    for (LinearSlot* s : model.linear_slots()) {
      const auto it = hand.ab.find(s->name);
      if (it == hand.ab.end()) {
        EXPECT_EQ(s->op->describe(), "dense Float") << s->name;
        continue;
      }
      const auto& [A, B] = it->second;
      const at::Tensor want = at::matmul(x, base_w[s->name].t()) + 2.0 * at::matmul(at::matmul(x, A.t()), B.t());
      EXPECT_TRUE(at::allclose(s->forward(x).detach(), want, 1e-5, 1e-5)) << s->name << " segment=" << segment;
    }
  }
}

TEST(LoraLoad, ErrorsNameTheProblem) {
  // peft_type other than LORA
  {
    LoraTempDir dir;
    json c = peft_written_config();
    c["peft_type"] = "IA3";
    write_peft_adapter(dir.path(), "", at::kFloat, c);
    TinyModel model(9);
    LoRAAdapter adapter;
    const std::string e = error_of([&] { adapter.load(dir.str(), model); });
    EXPECT_NE(e.find("peft_type"), std::string::npos) << e;
    EXPECT_NE(e.find("IA3"), std::string::npos) << e;
    EXPECT_THROW(adapter.load(dir.str(), model), mftk::UsageError);
  }
  // a tensor of the wrong shape
  {
    LoraTempDir dir;
    write_peft_adapter(dir.path(), "", at::kFloat);
    NamedTensors tensors;
    auto file = mftk::SafetensorsFile::open((dir.path() / "adapter_model.safetensors").string());
    for (const auto& t : file->tensors()) tensors.emplace_back(t.name, file->get(t.name).clone());
    const std::string bad = "base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight";
    for (auto& [n, t] : tensors)
      if (n == bad) t = at::zeros({2, kHidden + 1});
    file.reset();
    mftk::save_safetensors((dir.path() / "adapter_model.safetensors").string(), tensors);
    TinyModel model(9);
    LoRAAdapter adapter;
    const std::string e = error_of([&] { adapter.load(dir.str(), model); });
    EXPECT_NE(e.find(bad), std::string::npos) << e;
    EXPECT_NE(e.find("[2, 17]"), std::string::npos) << e;
    EXPECT_NE(e.find("expected [2, 16]"), std::string::npos) << e;
  }
  // a tensor the adapter does not use
  {
    LoraTempDir dir;
    write_peft_adapter(dir.path(), "", at::kFloat);
    NamedTensors tensors;
    auto file = mftk::SafetensorsFile::open((dir.path() / "adapter_model.safetensors").string());
    for (const auto& t : file->tensors()) tensors.emplace_back(t.name, file->get(t.name).clone());
    const std::string extra = "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight";
    tensors.emplace_back(extra, at::zeros({2, kHidden}));
    file.reset();
    mftk::save_safetensors((dir.path() / "adapter_model.safetensors").string(), tensors);
    TinyModel model(9);
    LoRAAdapter adapter;
    const std::string e = error_of([&] { adapter.load(dir.str(), model); });
    EXPECT_NE(e.find("does not use"), std::string::npos) << e;
    EXPECT_NE(e.find(extra), std::string::npos) << e;
  }
  // regex target_modules, per-module ranks, DoRA
  for (auto [key, value, says] : std::vector<std::tuple<std::string, json, std::string>>{
           {"target_modules", ".*\\.(q|v)_proj", "regex target_modules are not supported yet"},
           {"rank_pattern", json{{"q_proj", 4}}, "not supported yet"},
           {"use_dora", true, "DoRA is not supported yet"},
       }) {
    LoraTempDir dir;
    json c = peft_written_config();
    c[key] = value;
    write_peft_adapter(dir.path(), "", at::kFloat, c);
    TinyModel model(9);
    LoRAAdapter adapter;
    const std::string e = error_of([&] { adapter.load(dir.str(), model); });
    EXPECT_NE(e.find(says), std::string::npos) << e;
    EXPECT_NE(e.find(key), std::string::npos) << e;
  }
  // no adapter_config.json at all
  {
    LoraTempDir dir;
    TinyModel model(9);
    LoRAAdapter adapter;
    const std::string e = error_of([&] { adapter.load(dir.str(), model); });
    EXPECT_NE(e.find("adapter_config.json not found"), std::string::npos) << e;
  }
}

TEST(LoraInject, NoMatchingTargetIsAUsageErrorListingSlots) {
  TinyModel model(10);
  const at::Tensor before = model.run(sample_ids());
  LoRAOptions o;
  o.target_modules = {"query_key_value"};
  LoRAAdapter adapter(o);
  const std::string e = error_of([&] { adapter.inject(model); });
  EXPECT_NE(e.find("target_modules"), std::string::npos) << e;
  EXPECT_NE(e.find("query_key_value"), std::string::npos) << e;
  EXPECT_NE(e.find("model.layers.0.self_attn.q_proj"), std::string::npos) << e;
  EXPECT_THROW(LoRAAdapter(o).inject(model), mftk::UsageError);
  EXPECT_TRUE(at::equal(model.run(sample_ids()), before));  // nothing was touched
  // A suffix must end at a dot: "proj" is not "q_proj".
  o.target_modules = {"proj"};
  EXPECT_THROW(LoRAAdapter(o).inject(model), mftk::UsageError);
}

TEST(LoraInject, CountsAndPercentMatchHandCount) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(32);
  spdlog::default_logger()->sinks().push_back(sink);
  struct Unhook {
    std::shared_ptr<spdlog::sinks::sink> s;
    ~Unhook() {
      auto& sinks = spdlog::default_logger()->sinks();
      sinks.erase(std::remove(sinks.begin(), sinks.end(), s), sinks.end());
    }
  } unhook{sink};

  // Base: per layer q 16*16 + k 16*4 + v 16*4 + o 16*16 + gate/up 16*24 each + down 24*16
  // = 256 + 64 + 64 + 256 + 384 + 384 + 384 = 1792; 2 layers = 3584; lm_head 160,
  // embed_tokens 160, norm 16: 3920.
  // LoRA r=4 per layer: 4 * (32 + 20 + 20 + 32 + 40 + 40 + 40) = 896; 2 layers = 1792.
  TinyModel model(11);
  LoRAOptions o;
  o.r = 4;
  LoRAAdapter adapter(o);
  adapter.inject(model);
  EXPECT_EQ(adapter.trainable_count(), 1792);
  EXPECT_EQ(adapter.total_count(), 3920 + 1792);
  bool logged = false;
  for (const auto& line : sink->last_formatted())
    logged = logged || line.find("trainable params: 1792 || all params: 5712 || trainable%: 31.3725") !=
                           std::string::npos;
  EXPECT_TRUE(logged);

  // modules_to_save lm_head adds a trainable copy (160) counted in "all" too;
  // embed_tokens trains in place (160 more trainable, same total).
  TinyModel model2(11);
  o.modules_to_save = {"lm_head", "embed_tokens"};
  LoRAAdapter adapter2(o);
  adapter2.inject(model2);
  EXPECT_EQ(adapter2.trainable_count(), 1792 + 160 + 160);
  EXPECT_EQ(adapter2.total_count(), 3920 + 1792 + 160);
}

TEST(LoraTrain, GradientsReachAAndBOnly) {
  TinyModel model(12);
  std::vector<std::pair<std::string, at::Tensor>> base;
  for (LinearSlot* s : model.linear_slots())
    for (auto& [n, t] : s->op->parameters()) base.emplace_back(s->name + "." + n, t);
  LoRAAdapter adapter;
  adapter.inject(model);
  model.set_training(true);  // reaches the adapter's ops
  randomize_lora(adapter, 13);
  model.run(sample_ids()).pow(2).sum().backward();
  for (auto& [n, t] : adapter.trainable_parameters()) {
    ASSERT_TRUE(t.grad().defined()) << n;
    EXPECT_GT(t.grad().abs().sum().item<double>(), 0.0) << n;
  }
  for (auto& [n, t] : base) EXPECT_FALSE(t.grad().defined()) << n;
  EXPECT_FALSE(model.embed_.grad().defined());
  EXPECT_FALSE(model.norm_.grad().defined());
}

TEST(LoraTrain, DropoutOnlyInTrainingAndSeeded) {
  TinyModel model(14);
  LoRAOptions o;
  o.dropout = 0.5;
  LoRAAdapter adapter(o);
  adapter.inject(model);
  randomize_lora(adapter, 15);
  const at::Tensor eval1 = model.run(sample_ids()).detach();
  EXPECT_TRUE(at::equal(model.run(sample_ids()), eval1));
  model.set_training(true);  // reaches the adapter's ops
  at::manual_seed(21);
  const at::Tensor t1 = model.run(sample_ids()).detach();
  at::manual_seed(21);
  const at::Tensor t2 = model.run(sample_ids()).detach();
  at::manual_seed(22);
  const at::Tensor t3 = model.run(sample_ids()).detach();
  EXPECT_TRUE(at::equal(t1, t2));
  EXPECT_FALSE(at::equal(t1, t3));
  EXPECT_FALSE(at::equal(t1, eval1));
  model.set_training(false);
  EXPECT_TRUE(at::equal(model.run(sample_ids()), eval1));
}

TEST(LoraModulesToSave, SavedUnderPeftNamesAndReloaded) {
  LoraTempDir dir;
  at::Tensor trained;
  {
    TinyModel model(16);
    LoRAOptions o;
    o.target_modules = {"q_proj"};
    o.modules_to_save = {"lm_head", "embed_tokens"};
    LoRAAdapter adapter(o);
    adapter.inject(model);
    std::set<std::string> names;
    for (auto& [n, t] : adapter.trainable_parameters()) names.insert(n);
    EXPECT_EQ(names.count("base_model.model.lm_head.weight"), 1u);
    EXPECT_EQ(names.count("base_model.model.model.embed_tokens.weight"), 1u);
    EXPECT_EQ(names.size(), 6u);
    EXPECT_TRUE(model.embed_.requires_grad());  // the model's own tensor trains
    EXPECT_FALSE(model.norm_.requires_grad());
    randomize_lora(adapter, 17);  // also changes lm_head and embed_tokens
    trained = model.run(sample_ids()).detach();
    adapter.save(dir.str(), "tiny");
  }
  const json c = json::parse(read_text(dir.path() / "adapter_config.json"));
  EXPECT_EQ(c["modules_to_save"], json::array({"lm_head", "embed_tokens"}));
  EXPECT_EQ(c["target_modules"], json::array({"q_proj"}));
  auto file = mftk::SafetensorsFile::open((dir.path() / "adapter_model.safetensors").string());
  EXPECT_EQ(file->find("base_model.model.lm_head.weight")->shape, (std::vector<int64_t>{kVocab, kHidden}));
  EXPECT_EQ(file->find("base_model.model.model.embed_tokens.weight")->shape, (std::vector<int64_t>{kVocab, kHidden}));

  TinyModel fresh(16);
  LoRAAdapter loaded;
  loaded.load(dir.str(), fresh);
  EXPECT_TRUE(at::equal(fresh.run(sample_ids()), trained));
  // merge keeps the trained lm_head as a plain dense op.
  loaded.merge(fresh);
  EXPECT_EQ(fresh.slot("lm_head").op->describe(), "dense Float");
  EXPECT_TRUE(at::allclose(fresh.run(sample_ids()), trained, 1e-5, 1e-5));
}

TEST(LoraConfig, DefaultsAndChecks) {
  const LoRAOptions d = mftk::lora::lora_options_from_config(adapter_config());
  EXPECT_EQ(d.r, 8);
  EXPECT_EQ(d.alpha, 16.0);
  EXPECT_EQ(d.dropout, 0.0);
  std::vector<std::string> t = d.target_modules;
  std::sort(t.begin(), t.end());
  EXPECT_EQ(t, kSevenTargets);
  EXPECT_FALSE(d.use_rslora);
  EXPECT_TRUE(d.modules_to_save.empty());

  auto fails = [](std::map<std::string, mftk::Value> set, const std::string& key) {
    const std::string e = error_of([&] { mftk::lora::lora_options_from_config(adapter_config(set)); });
    EXPECT_NE(e.find("[adapter] " + key), std::string::npos) << e;
    EXPECT_NE(e.find("recipe.toml:5:1"), std::string::npos) << e;
  };
  fails({{"dropout", 1.0}}, "dropout");
  fails({{"r", int64_t{0}}}, "r");
  fails({{"target_modules", std::vector<std::string>{}}}, "target_modules");
  fails({{"target_modules", std::vector<std::string>{"all-linear", "q_proj"}}}, "target_modules");
  fails({{"target_modules", std::vector<std::string>{".*q_proj"}}}, "target_modules");
}
