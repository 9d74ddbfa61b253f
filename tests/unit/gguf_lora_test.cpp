// The gguf_lora exporter against facts written out here: llama.cpp's adapter
// keys (convert_lora_to_gguf.py, llama-adapter.cpp; docs/formats.md §4.8),
// the tensor names and ne of each pair, the RoPE row order of q/k lora_b
// spelled out as an index formula (not through llama_rope_row_order), the
// alpha that gives PEFT's scaling under llama.cpp's alpha / r (rsLoRA too),
// the refusals, and the read-back against W + scale * B A computed here.
// (llama.cpp itself applies the file in scripts/check-gguf-lora-llamacpp.sh.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "gguf/gguf_exporter.h"
#include "gguf/gguf_lora_exporter.h"
#include "gguf_format.h"
#include "gguf_reader.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using mftk::core::GgmlType;
using mftk::core::GgufFile;
using mftk::core::GgufValueType;

// The tiny checkpoint: hidden 64, 4 query heads and 2 KV heads of 16, MLP 128.
constexpr int64_t kHidden = 64, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kMlp = 128;

struct Module {
  std::string path;  // "model.layers.0.self_attn.q_proj"
  int64_t out, in;
};

std::vector<Module> projections(int64_t layers) {
  std::vector<Module> m;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    m.push_back({p + ".self_attn.q_proj", kHeads * kHeadDim, kHidden});
    m.push_back({p + ".self_attn.k_proj", kKvHeads * kHeadDim, kHidden});
    m.push_back({p + ".self_attn.v_proj", kKvHeads * kHeadDim, kHidden});
    m.push_back({p + ".self_attn.o_proj", kHidden, kHeads * kHeadDim});
    m.push_back({p + ".mlp.gate_proj", kMlp, kHidden});
    m.push_back({p + ".mlp.up_proj", kMlp, kHidden});
    m.push_back({p + ".mlp.down_proj", kHidden, kMlp});
  }
  return m;
}

struct AdapterSpec {
  int64_t r = 4;
  double alpha = 8;
  bool rslora = false;
  nlohmann::json modules_to_save = nullptr;
  std::vector<std::pair<std::string, at::Tensor>> extra;  // more tensors in the file
};

// A PEFT adapter folder with random, non-zero A and B on every projection.
std::map<std::string, at::Tensor> write_adapter(const std::string& dir, const AdapterSpec& spec, int64_t layers = 1) {
  fs::create_directories(dir);
  at::manual_seed(3);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& m : projections(layers)) {
    tensors["base_model.model." + m.path + ".lora_A.weight"] = at::randn({spec.r, m.in}) * 0.3;
    tensors["base_model.model." + m.path + ".lora_B.weight"] = at::randn({m.out, spec.r}) * 0.05;
  }
  for (const auto& [name, t] : spec.extra) tensors[name] = t;
  std::vector<mftk::SafetensorsWriter::Decl> decls;
  for (const auto& [name, t] : tensors) decls.push_back({name, at::kFloat, t.sizes().vec()});
  mftk::SafetensorsWriter writer((fs::path(dir) / "adapter_model.safetensors").string(), decls);
  for (const auto& [name, t] : tensors) writer.write(name, t.contiguous());
  writer.finish();
  nlohmann::json config = {{"peft_type", "LORA"},
                           {"task_type", "CAUSAL_LM"},
                           {"r", spec.r},
                           {"lora_alpha", spec.alpha},
                           {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}},
                           {"use_rslora", spec.rslora},
                           {"bias", "none"},
                           {"modules_to_save", spec.modules_to_save}};
  std::ofstream(fs::path(dir) / "adapter_config.json") << config.dump(2);
  return tensors;
}

at::Tensor decode_f32(const GgufFile& file, const std::string& name) {
  const auto* info = file.find_tensor(name);
  EXPECT_NE(info, nullptr) << name;
  if (!info) return {};
  EXPECT_EQ(info->type, GgmlType::f32) << name;
  const auto bytes = file.data(*info);
  at::Tensor t = at::empty({int64_t(info->ne[1]), int64_t(info->ne[0])}, at::kFloat);
  std::memcpy(t.data_ptr<float>(), bytes.data(), size_t(t.numel()) * 4);
  return t;
}

// llama.cpp's converter reshapes B's rows as (heads, 2, D/2) and swaps the
// last two axes: file row h*D + 2j + s is HF row h*D + s*D/2 + j.
int64_t hf_row_of_file_row(int64_t file_row, int64_t head_dim) {
  const int64_t h = file_row / head_dim, within = file_row % head_dim;
  const int64_t j = within / 2, s = within % 2;
  return h * head_dim + s * (head_dim / 2) + j;
}

mftk::gguf::GgufLoraExportOptions f32_options() {
  mftk::gguf::GgufLoraExportOptions o;
  o.encoding = mftk::gguf::Encoding::f32;
  return o;
}

TEST(GgufLora, MetadataNamesShapesAndModelfile) {
  tt::ScratchDir dir("gguf_lora");
  const std::string base = tt::tiny_checkpoint(1);
  write_adapter(dir.sub("my-adapter"), {});
  const std::string out = dir.sub("adapter.gguf");
  const auto report = mftk::gguf::export_gguf_lora(base, dir.sub("my-adapter"), out, f32_options());
  const auto file = GgufFile::open(out);
  EXPECT_EQ(file.get("general.architecture", GgufValueType::string).text, "llama");
  EXPECT_EQ(file.get("general.type", GgufValueType::string).text, "adapter");
  EXPECT_EQ(file.get("adapter.type", GgufValueType::string).text, "lora");
  EXPECT_EQ(file.get("adapter.lora.alpha", GgufValueType::float32).real, 8.0);
  EXPECT_EQ(file.get("general.name", GgufValueType::string).text, fs::path(base).filename().string() + "+my-adapter");
  EXPECT_EQ(file.get("mftk.written_by", GgufValueType::string).text, "mftk");
  // 7 pairs for the one layer, each A ne = [in, r], B ne = [r, out].
  ASSERT_EQ(file.tensors().size(), 14u);
  const std::map<std::string, std::pair<int64_t, int64_t>> expect = {
      {"blk.0.attn_q.weight", {kHeads * kHeadDim, kHidden}}, {"blk.0.attn_k.weight", {kKvHeads * kHeadDim, kHidden}},
      {"blk.0.attn_v.weight", {kKvHeads * kHeadDim, kHidden}}, {"blk.0.attn_output.weight", {kHidden, kHeads * kHeadDim}},
      {"blk.0.ffn_gate.weight", {kMlp, kHidden}}, {"blk.0.ffn_up.weight", {kMlp, kHidden}},
      {"blk.0.ffn_down.weight", {kHidden, kMlp}}};
  for (const auto& [name, shape] : expect) {
    const auto* a = file.find_tensor(name + ".lora_a");
    const auto* b = file.find_tensor(name + ".lora_b");
    ASSERT_TRUE(a && b) << name;
    EXPECT_EQ(a->ne, (std::vector<uint64_t>{uint64_t(shape.second), 4})) << name;
    EXPECT_EQ(b->ne, (std::vector<uint64_t>{4, uint64_t(shape.first)})) << name;
    EXPECT_EQ(a->type, GgmlType::f32);
  }
  // The Modelfile beside it: the adapter, and a placeholder base.
  ASSERT_EQ(report.also_written.size(), 1u);
  EXPECT_EQ(report.also_written[0], dir.sub("adapter.Modelfile"));
  std::ifstream in(dir.sub("adapter.Modelfile"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\nADAPTER ./adapter.gguf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\nFROM ./" + fs::path(base).filename().string() + ".gguf\n"), std::string::npos) << text;
  EXPECT_NE(text.find("Replace the FROM path"), std::string::npos) << text;
}

TEST(GgufLora, QkLoraBRowsInLlamaRopeOrderAndAUnchanged) {
  tt::ScratchDir dir("gguf_lora");
  const std::string base = tt::tiny_checkpoint(1);
  const auto tensors = write_adapter(dir.sub("a"), {});
  const std::string out = dir.sub("a.gguf");
  mftk::gguf::export_gguf_lora(base, dir.sub("a"), out, f32_options());
  const auto file = GgufFile::open(out);
  const std::string p = "base_model.model.model.layers.0.";
  for (const auto& [gguf, hf] : std::vector<std::pair<std::string, std::string>>{
           {"blk.0.attn_q.weight", p + "self_attn.q_proj"}, {"blk.0.attn_k.weight", p + "self_attn.k_proj"}}) {
    const at::Tensor b_hf = tensors.at(hf + ".lora_B.weight");
    const at::Tensor b_file = decode_f32(file, gguf + ".lora_b");
    ASSERT_EQ(b_file.sizes(), b_hf.sizes());
    bool moved = false;
    for (int64_t r = 0; r < b_file.size(0); ++r) {
      const int64_t src = hf_row_of_file_row(r, kHeadDim);
      moved |= src != r;
      EXPECT_TRUE(at::equal(b_file[r], b_hf[src])) << gguf << " row " << r;
    }
    EXPECT_TRUE(moved);
    EXPECT_TRUE(at::equal(decode_f32(file, gguf + ".lora_a"), tensors.at(hf + ".lora_A.weight"))) << gguf;
  }
  // Other projections: B as stored.
  EXPECT_TRUE(at::equal(decode_f32(file, "blk.0.attn_v.weight.lora_b"), tensors.at(p + "self_attn.v_proj.lora_B.weight")));
  EXPECT_TRUE(at::equal(decode_f32(file, "blk.0.ffn_down.weight.lora_b"), tensors.at(p + "mlp.down_proj.lora_B.weight")));
}

TEST(GgufLora, RsLoraAlphaGivesPeftScalingUnderLlamaCppsRule) {
  tt::ScratchDir dir("gguf_lora");
  AdapterSpec spec;
  spec.r = 4;
  spec.alpha = 6;
  spec.rslora = true;
  write_adapter(dir.sub("a"), spec);
  mftk::gguf::export_gguf_lora(tt::tiny_checkpoint(1), dir.sub("a"), dir.sub("a.gguf"), f32_options());
  const auto file = GgufFile::open(dir.sub("a.gguf"));
  // PEFT: alpha / sqrt(r) = 3; llama.cpp: alpha' / r, so alpha' = 12.
  EXPECT_FLOAT_EQ(float(file.get("adapter.lora.alpha", GgufValueType::float32).real), 12.0f);
}

TEST(GgufLora, ReadBackIsBasePlusScaledProduct) {
  tt::ScratchDir dir("gguf_lora");
  const std::string base = tt::tiny_checkpoint(1);
  const auto tensors = write_adapter(dir.sub("a"), {});
  mftk::gguf::export_gguf_lora(base, dir.sub("a"), dir.sub("a.gguf"), f32_options());
  const auto folder = mftk::gguf::read_back_gguf_lora(dir.sub("a.gguf"), base, dir.sub("back"));
  ASSERT_TRUE(folder.has_value());
  const auto back = mftk::CheckpointReader::open(*folder);
  const auto original = mftk::CheckpointReader::open(base);
  for (const auto& m : projections(1)) {
    const std::string w = m.path + ".weight";
    const at::Tensor want = original.get(w).to(at::kFloat) +
                            2.0 * at::matmul(tensors.at("base_model.model." + m.path + ".lora_B.weight"),
                                             tensors.at("base_model.model." + m.path + ".lora_A.weight"));
    EXPECT_LT((back.get(w) - want).abs().max().item<double>(), 1e-6) << w;
  }
  EXPECT_TRUE(at::equal(back.get("model.norm.weight"), original.get("model.norm.weight").to(at::kFloat)));
}

template <class F>
std::string usage_error_of(F&& f) {
  try {
    f();
  } catch (const mftk::UsageError& e) {
    return e.what();
  }
  return "(no UsageError)";
}

TEST(GgufLora, RefusesWhatLlamaCppCannotApply) {
  tt::ScratchDir dir("gguf_lora");
  const std::string base = tt::tiny_checkpoint(1);
  AdapterSpec saved;
  saved.modules_to_save = {"lm_head"};
  saved.extra = {{"base_model.model.lm_head.weight", at::zeros({512, kHidden})}};
  write_adapter(dir.sub("saved"), saved);
  EXPECT_NE(usage_error_of([&] {
              mftk::gguf::export_gguf_lora(base, dir.sub("saved"), dir.sub("saved.gguf"), f32_options());
            }).find("modules_to_save"),
            std::string::npos);
  AdapterSpec zero;
  zero.alpha = 0;
  write_adapter(dir.sub("zero"), zero);
  EXPECT_NE(usage_error_of([&] {
              mftk::gguf::export_gguf_lora(base, dir.sub("zero"), dir.sub("zero.gguf"), f32_options());
            }).find("lora_alpha = 0"),
            std::string::npos);
  AdapterSpec stray;
  stray.extra = {{"base_model.model.model.layers.0.self_attn.q_proj.bias", at::zeros({kHeads * kHeadDim})}};
  write_adapter(dir.sub("stray"), stray);
  EXPECT_NE(usage_error_of([&] {
              mftk::gguf::export_gguf_lora(base, dir.sub("stray"), dir.sub("stray.gguf"), f32_options());
            }).find("q_proj.bias"),
            std::string::npos);
  EXPECT_NE(usage_error_of([&] { mftk::gguf::export_gguf_lora(base, "", dir.sub("none.gguf"), f32_options()); })
                .find("no adapter"),
            std::string::npos);
  // Nothing was left behind by the refusals.
  for (const char* f : {"saved.gguf", "zero.gguf", "stray.gguf", "none.gguf", "saved.Modelfile", "zero.Modelfile"})
    EXPECT_FALSE(fs::exists(dir.sub(f))) << f;
}

TEST(GgufLora, RefusesAForeignModelfileBeforeWriting) {
  tt::ScratchDir dir("gguf_lora");
  write_adapter(dir.sub("a"), {});
  std::ofstream(dir.sub("a.Modelfile")) << "FROM llama3\n";
  EXPECT_THROW(mftk::gguf::export_gguf_lora(tt::tiny_checkpoint(1), dir.sub("a"), dir.sub("a.gguf"), f32_options()),
               mftk::UsageError);
  EXPECT_FALSE(fs::exists(dir.sub("a.gguf")));
  std::ifstream in(dir.sub("a.Modelfile"));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "FROM llama3");
}

}  // namespace

namespace {

// The whole-model exporter writes its Modelfile too, with the same claim.
TEST(GgufModelfile, WholeModelExportWritesOneBesideItAndRefusesAForeignOne) {
  tt::ScratchDir dir("gguf_modelfile");
  mftk::gguf::GgufExportOptions options;
  options.encoding = mftk::gguf::Encoding::f32;
  const auto report = mftk::gguf::export_gguf(tt::tiny_checkpoint(1), dir.sub("model-f32.gguf"), options);
  ASSERT_EQ(report.also_written, (std::vector<std::string>{dir.sub("model-f32.Modelfile")}));
  std::ifstream in(dir.sub("model-f32.Modelfile"));
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("\nFROM ./model-f32.gguf\n"), std::string::npos) << text;
  EXPECT_EQ(text.find("ADAPTER"), std::string::npos);
  // The tiny checkpoint's tokenizer has [INST] as a control piece: v3.
  EXPECT_NE(text.find("Mistral v3 chat format"), std::string::npos) << text;
  // Exporting again replaces mftk's own Modelfile; a user's is refused and kept.
  EXPECT_NO_THROW(mftk::gguf::export_gguf(tt::tiny_checkpoint(1), dir.sub("model-f32.gguf"), options));
  std::ofstream(dir.sub("other.Modelfile")) << "FROM mistral\n";
  EXPECT_THROW(mftk::gguf::export_gguf(tt::tiny_checkpoint(1), dir.sub("other.gguf"), options), mftk::UsageError);
  EXPECT_FALSE(fs::exists(dir.sub("other.gguf")));
}

}  // namespace
