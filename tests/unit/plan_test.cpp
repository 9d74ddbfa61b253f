// mftk plan: the memory model's parts behave as the code they model does
// (checkpointing, 8-bit state, NF4, fused GPU attention), the seed recipe's
// GPU estimate lands where published QLoRA figures put a 7B run, and on
// tiny and one-layer 7B-shape recipes the predicted peak is within 15% of
// the peak RSS `mftk run` measures for the same recipe.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "lora_adapter.h"
#include "mistral_model.h"
#include "model_presets.h"
#include "nf4_quantizer.h"
#include "nf4_tensor.h"
#include "plan.h"
#include "plan_test_support.h"
#include "recipe.h"
#include "registry.h"

namespace {

using namespace mftk::plan_test;
using mftk::core::DataPlan;
using mftk::core::ModelFacts;
using mftk::core::PlanDevice;
using mftk::core::TrainingFacts;
using json = nlohmann::json;

// A config.json in a scratch folder: `preset`'s, with `changes` written over it.
fs::path mistral_config(const std::string& name, const std::string& preset, const json& changes = json::object()) {
  const fs::path dir = scratch() / name;
  fs::create_directories(dir);
  json c = mftk::mistral_preset_config(preset, preset.rfind("mistral-", 0) == 0 ? 0 : 64);
  for (const auto& [key, value] : changes.items()) c[key] = value;
  write_text(dir / "config.json", c.dump(2));
  return dir;
}

std::shared_ptr<mftk::mistral::MistralModel> mistral_model(const fs::path& dir, int64_t attention_chunk = 128) {
  auto model = std::make_shared<mftk::mistral::MistralModel>();
  model->set_attention_chunk(attention_chunk);
  model->load_config(dir.string());
  return model;
}

// Mistral-7B-v0.3 as the model plugin describes it from config.json alone.
ModelFacts seven_b_facts() {
  const auto dir = mistral_config("7b-config", "mistral-7b-v0.3");
  return mftk::core::describe_model(mistral_model(dir), dir.string());
}

// What the facts' plugins say for the plan (their planning hooks), as
// make_plan asks them (each with its defaults).
void ask_hooks(TrainingFacts& t) {
  static mftk::core::Registry registry;
  mftk::core::ask_planning_hooks(t, nullptr, registry);
}

// The adapter's hook of a LoRA with these options (the recipe's keys).
void use_lora(TrainingFacts& t, const mftk::lora::LoRAOptions& options) {
  auto adapter = std::make_shared<const mftk::lora::LoRAAdapter>(options);
  t.adapter = "lora";
  t.adapter_plan = [adapter](const mftk::ModelArchitecture& a) { return adapter->plan(a); };
}

TrainingFacts qlora_facts(const std::string& optimizer = "paged_adamw_8bit") {
  TrainingFacts t;
  t.sequence_len = 4096, t.micro_batch_size = 2, t.bf16 = true, t.gradient_checkpointing = true;
  t.quantizer = "nf4", t.adapter = "lora", t.optimizer = optimizer;
  ask_hooks(t);  // nf4 with its defaults: block 64, no double quant, lm_head skipped
  mftk::lora::LoRAOptions lora;
  lora.r = 32, lora.alpha = 64;  // target_modules: the seven projections (its default)
  use_lora(t, lora);
  return t;
}

int64_t part(const mftk::core::MemoryEstimate& e, const std::string& name) {
  for (const auto& p : e.parts)
    if (p.name == name) return p.bytes;
  ADD_FAILURE() << "no memory part " << name;
  return -1;
}

std::string detail(const mftk::core::MemoryEstimate& e, const std::string& name) {
  for (const auto& p : e.parts)
    if (p.name == name) return p.detail;
  ADD_FAILURE() << "no memory part " << name;
  return "";
}

TEST(PlanMemory, PartsAddUpAndParameterCountIsMistral7B) {
  const auto m = seven_b_facts();
  EXPECT_EQ(m.parameters(), 7'248'023'552);  // Mistral-7B-v0.3's published parameter count
  const auto e = mftk::core::estimate_memory(m, qlora_facts(), DataPlan{}, PlanDevice::cuda, 0);
  int64_t sum = 0;
  for (const auto& p : e.parts) sum += p.bytes;
  EXPECT_EQ(sum, e.total);
  // LoRA r 32 on all seven projections of 32 layers: r * (in + out) each.
  EXPECT_EQ(e.trainable_parameters, 32 * 32 * (4096 * 2 + 2 * (4096 + 1024) + 4096 * 2 + 3 * (4096 + 14336)));
}

// The parts that come from the hooks, written out for 7B QLoRA on a GPU
// (bf16 compute, fused attention, NF4 block 64 without double quant).
TEST(PlanMemory, SevenBQLoRAPartsAreTheHooksFiguresWrittenOut) {
  const auto m = seven_b_facts();
  const auto e = mftk::core::estimate_memory(m, qlora_facts(), DataPlan{}, PlanDevice::cuda, 0);
  const int64_t H = 4096, Hq = 4096, Hkv = 1024, I = 14336, V = 32768, L = 32, B = 2, T = 4096, N = B * T, c = 2;
  const int64_t heads = 32, r = 32;
  // Activations: the model's per-token count plus LoRA's x A^T per wrapped
  // slot (no dropout), fused attention's logsumexp, checkpointed inputs.
  const int64_t layer = N * (6 * H + 4 * Hq + 3 * Hkv + 4 * I + 7 * r) * c + B * heads * T * 4;
  EXPECT_EQ(e.activations_with_checkpointing, (L - 1) * N * H * c + layer);
  EXPECT_EQ(e.activations_without_checkpointing, L * layer);
  // NF4: half a byte per weight and an fp32 absmax per 64; lm_head stays bf16.
  const int64_t layer_weights = 2 * H * Hq + 2 * H * Hkv + 3 * H * I;
  const int64_t nf4 = L * (layer_weights / 2 + layer_weights / 64 * 4);
  EXPECT_EQ(part(e, "base weights"), nf4 + V * H * 2 + V * H * 2 + (2 * L + 1) * H * 2);
  EXPECT_NE(detail(e, "base weights").find("NF4 (block 64)"), std::string::npos) << detail(e, "base weights");
  // Transient: the largest NF4 slot dequantised (an MLP weight), one layer's
  // backward, the largest LoRA tensor's gradient (r x I).
  EXPECT_EQ(part(e, "transient"), H * I * c + 3 * N * I * c + r * I * 4);
  EXPECT_NE(detail(e, "adapter").find("(lora r 32 on q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)"),
            std::string::npos)
      << detail(e, "adapter");
}

TEST(PlanMemory, CheckpointingOptimizerAndQuantizationMoveTheirParts) {
  const auto m = seven_b_facts();
  auto t = qlora_facts();
  const auto gc = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cuda, 0);
  t.gradient_checkpointing = false;
  const auto no_gc = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cuda, 0);
  EXPECT_LT(part(gc, "activations") * 5, part(no_gc, "activations"));
  EXPECT_EQ(gc.activations_without_checkpointing, no_gc.activations_without_checkpointing);

  t = qlora_facts("adamw");
  const auto fp32_state = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cuda, 0);
  // 8 bytes against 2 bytes (plus absmax) per trainable parameter.
  EXPECT_NEAR(double(part(fp32_state, "optimizer state")) / double(part(gc, "optimizer state")), 8.0 / 2.03, 0.05);

  t = qlora_facts();
  t.quantizer.clear();
  const auto bf16_base = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cuda, 0);
  // NF4 with lm_head kept bf16: ~3.5x smaller than the bf16 base.
  const double ratio = double(part(bf16_base, "base weights")) / double(part(gc, "base weights"));
  EXPECT_GT(ratio, 3.0);
  EXPECT_LT(ratio, 4.0);

  // The CPU path keeps each attention block's probabilities; fused GPU attention does not.
  t = qlora_facts();
  const auto cpu = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cpu, 0);
  EXPECT_GT(cpu.activations_with_checkpointing, gc.activations_with_checkpointing);
}

// ---------------------------------------------------------------------------
// The first-party planning hooks against figures computed by hand.

// A small Mistral: hidden 16 (2 heads of 8, 1 KV head), MLP 32, window 5.
json small_shape() {
  return {{"hidden_size", 16}, {"intermediate_size", 32}, {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"num_hidden_layers", 2}, {"sliding_window", 5}, {"vocab_size", 64}, {"max_position_embeddings", 64}};
}

TEST(PlanningHooks, MistralActivationsAreItsLayerWrittenOut) {
  const auto model = mistral_model(mistral_config("small-activations", "tiny", small_shape()), /*chunk=*/4);
  const int64_t H = 16, Hq = 16, Hkv = 8, I = 32, heads = 2, B = 2, T = 10, N = B * T;
  // Query blocks of 4 over 10 tokens, window 5: rows 0-3 see keys 0-3 (16
  // pairs), rows 4-7 keys 0-7 (32), rows 8-9 keys 4-9 (12).
  const int64_t pairs = 16 + 32 + 12, widest = 32;
  const int64_t per_token = 6 * H + 4 * Hq + 3 * Hkv + 4 * I;

  const auto fp32 = model->plan_activations({B, T, 4, false});
  ASSERT_TRUE(fp32);
  EXPECT_EQ(fp32->layer_bytes, N * per_token * 4 + B * heads * pairs * 4);
  EXPECT_EQ(fp32->layer_input_bytes, N * H * 4);
  EXPECT_EQ(fp32->shared_bytes, B * pairs);  // the block masks, one byte per pair
  EXPECT_EQ(fp32->backward_bytes, 3 * N * I * 4 + 2 * B * heads * widest * 4);

  // bf16 compute: the fp32 softmax and its bf16 copy.
  const auto bf16 = model->plan_activations({B, T, 2, false});
  EXPECT_EQ(bf16->layer_bytes, N * per_token * 2 + B * heads * pairs * 6);

  // Fused attention keeps a logsumexp per query and head, no masks, no block gradients.
  const auto fused = model->plan_activations({B, T, 2, true});
  EXPECT_EQ(fused->layer_bytes, N * per_token * 2 + B * heads * T * 4);
  EXPECT_EQ(fused->shared_bytes, 0);
  EXPECT_EQ(fused->backward_bytes, 3 * N * I * 2);
}

TEST(PlanningHooks, LoRAPlanIsWhatInjectTrains) {
  const auto dir = mistral_config("small-lora", "tiny", small_shape());
  const int64_t H = 16, Hq = 16, Hkv = 8, I = 32, V = 64, L = 2, r = 4;
  mftk::lora::LoRAOptions o;
  o.r = r, o.dropout = 0.1, o.target_modules = {"q_proj", "v_proj", "down_proj"}, o.modules_to_save = {"lm_head"};
  const auto arch = mistral_model(dir)->architecture();
  const auto plan = mftk::lora::LoRAAdapter(o).plan(arch);
  ASSERT_TRUE(plan);
  EXPECT_EQ(plan->trainable_parameters, L * r * ((H + Hq) + (H + Hkv) + (I + H)) + V * H);
  EXPECT_EQ(plan->largest_tensor, V * H);  // the head's fp32 copy
  // Per layer: x A^T (r) per wrapped slot, and with dropout its output and mask (2 x in).
  EXPECT_EQ(plan->saved_per_token, 3 * r + 2 * (H + H + I));
  EXPECT_TRUE(plan->trains_head);
  EXPECT_EQ(plan->detail, "r 4 on q_proj,v_proj,down_proj");

  // The same count inject() reports on the loaded model.
  auto model = mistral_model(dir);
  mftk::RandomWeightsJob job;
  job.dir = dir.string(), job.seed = 1, job.max_shard_bytes = 1ull << 30;
  model->write_random_weights(job);
  mftk::LoadOptions lo;
  lo.path = dir.string();
  model->load(lo);
  mftk::lora::LoRAAdapter adapter(o);
  adapter.inject(*model);
  EXPECT_EQ(adapter.trainable_count(), plan->trainable_parameters);

  // all-linear: every slot but the head; no dropout keeps r per slot.
  o.target_modules = {"all-linear"}, o.modules_to_save.clear(), o.dropout = 0;
  const auto all = mftk::lora::LoRAAdapter(o).plan(arch);
  EXPECT_EQ(all->trainable_parameters, L * r * (2 * (H + Hq) + 2 * (H + Hkv) + 3 * (H + I)));
  EXPECT_EQ(all->saved_per_token, 7 * r);
  EXPECT_FALSE(all->trains_head);

  // A tied head has no tensor of its own: saving the embedding trains it.
  json tied = small_shape();
  tied["tie_word_embeddings"] = true;
  const auto tied_arch = mistral_model(mistral_config("small-tied", "tiny", tied))->architecture();
  o.target_modules = {"q_proj"}, o.modules_to_save = {"embed_tokens"};
  const auto saved_embedding = mftk::lora::LoRAAdapter(o).plan(tied_arch);
  EXPECT_EQ(saved_embedding->trainable_parameters, L * r * (H + Hq) + V * H);
  EXPECT_TRUE(saved_embedding->trains_head);
  o.target_modules = {"lm_head"}, o.modules_to_save.clear();
  const auto head_only = mftk::lora::LoRAAdapter(o).plan(tied_arch);
  EXPECT_EQ(head_only->trainable_parameters, r * (H + V));
  EXPECT_EQ(head_only->saved_per_token, 0);  // the head is outside the decoder layers
  EXPECT_TRUE(head_only->trains_head);
}

TEST(PlanningHooks, Nf4PlanIsWhatTheQuantizerStores) {
  for (const bool double_quant : {false, true})
    for (const auto& [out, in] : std::vector<std::pair<int64_t, int64_t>>{{7, 333}, {130, 128}, {64, 64}}) {
      mftk::nf4::Nf4Options o;
      o.double_quant = double_quant;
      const mftk::nf4::Nf4Quantizer quantizer(o);
      const auto plan = quantizer.plan_slot("model.layers.0.mlp.up_proj", out, in);
      ASSERT_TRUE(plan);
      const auto stored = mftk::nf4::quantize_nf4(at::randn({out, in}), 64, double_quant);
      EXPECT_EQ(plan->bytes, stored.storage_bytes()) << out << "x" << in << " double quant " << double_quant;
      // Written out: nibbles, then an fp32 absmax per block of 64, or a code
      // byte per block and an fp32 absmax per 256 blocks.
      const int64_t n = out * in, blocks = (n + 63) / 64;
      EXPECT_EQ(plan->bytes, (n + 1) / 2 + (double_quant ? blocks + (blocks + 255) / 256 * 4 : blocks * 4));
      EXPECT_EQ(plan->format, double_quant ? "NF4 (block 64, double quant)" : "NF4 (block 64)");
    }
}

// A plugin without the hooks still gets a plan: each part says the plugin
// gave no figure and counts the stated generic figure.
TEST(PlanningHooks, PluginsWithoutHooksGetStatedFallbacks) {
  mftk::core::Registry registry;
  registry.load_library(std::string(MFTK_FIXTURE_DIR) + "/libmftk-conformance_fixture.so");
  const auto dir = mistral_config("small-nohooks", "tiny", small_shape());
  ModelFacts m = mftk::core::describe_model(mistral_model(dir), dir.string());
  m.checkpoint_dtype = "float32", m.checkpoint_dtype_bytes = 4;  // the tiny preset's torch_dtype
  m.activations = [](const mftk::ActivationQuery&) { return std::optional<mftk::ActivationPlan>(); };
  TrainingFacts t;
  t.sequence_len = 10, t.micro_batch_size = 2;
  t.adapter = "conf.adapter", t.quantizer = "conf.int8";  // the conformance fixture's: no planning hooks
  mftk::core::ask_planning_hooks(t, nullptr, registry);
  ASSERT_TRUE(t.adapter_plan && t.quantized_slot);
  const auto e = mftk::core::estimate_memory(m, t, DataPlan{}, PlanDevice::cpu, 0);
  for (const char* name : {"base weights", "adapter", "activations"})
    EXPECT_NE(detail(e, name).find("the plugin gave no figure"), std::string::npos) << name << ": " << detail(e, name);
  EXPECT_EQ(e.trainable_parameters, 0);
  // Unquantised slots at fp32 (the tiny preset's dtype): all weights but the
  // embedding, counted whole from the table.
  const int64_t H = 16, Hq = 16, Hkv = 8, I = 32, V = 64, L = 2, N = 20;
  EXPECT_EQ(part(e, "base weights"), (L * (2 * H * Hq + 2 * H * Hkv + 3 * H * I + 2 * H) + H + 2 * V * H) * 4);
  // Activations: each linear's input and output per token, per layer.
  const int64_t per_token = 2 * (H + Hq) + 2 * (H + Hkv) + 3 * (H + I);
  EXPECT_EQ(e.activations_without_checkpointing, L * N * per_token * 4);
  int64_t sum = 0;
  for (const auto& p : e.parts) sum += p.bytes;
  EXPECT_EQ(sum, e.total);
}

// The seed recipe against a config.json with Mistral-7B-v0.3's shapes (no
// weights: plan reads only the config).
TEST(PlanSeedRecipe, FitsA24GBCardLikePublishedQLoRAFigures) {
  const fs::path dir = scratch() / "seed-config";
  fs::create_directories(dir);
  write_text(dir / "config.json", mftk::mistral_preset_config("mistral-7b-v0.3", 0).dump(2));
  auto recipe = mftk::core::Recipe::load(MFTK_SOURCE_DIR "/configs/mistral/7b_v0.3_qlora.toml",
                                         {"model.path=\"" + dir.string() + "\""});
  mftk::core::Registry registry;
  recipe.resolve(registry);
  mftk::core::PlanOptions options;
  options.device = PlanDevice::cuda;
  options.gpu_memory_gb = 24;
  const auto plan = mftk::core::make_plan(recipe, registry, options);
  EXPECT_FALSE(plan.data.available);  // the seed's data file is not in the repository
  const double total_gb = double(plan.memory.total) / double(1ll << 30);
  // docs/plan.md: a 7B QLoRA run at sequence 4096, micro batch 2, with
  // checkpointing is reported to fit a 24 GB card, well above the ~6-10 GB
  // of short-sequence runs.
  EXPECT_GT(total_gb, 8.0) << mftk::core::format_plan(plan);
  EXPECT_LT(total_gb, 24.0) << mftk::core::format_plan(plan);
  EXPECT_NE(mftk::core::format_plan(plan).find("total"), std::string::npos);
}

// Predicted (mftk plan --json) against measured (summary.json peak_rss_bytes of mftk run).
struct PeakCheck {
  double predicted = 0, measured = 0;
};

PeakCheck predicted_and_measured(const std::string& name, const std::string& recipe_text) {
  const fs::path dir = scratch() / name;
  fs::create_directories(dir);
  write_text(dir / "recipe.toml", recipe_text);
  PeakCheck r;
  const auto plan = run_in(dir, mftk_binary() + " plan recipe.toml --json plan.json");
  EXPECT_EQ(plan.exit_code, 0) << plan.output;
  const auto run = run_in(dir, mftk_binary() + " run recipe.toml");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  if (plan.exit_code != 0 || run.exit_code != 0) return r;
  r.predicted = json::parse(read_text(dir / "plan.json"))["memory"]["total"].get<double>();
  r.measured = json::parse(read_text(dir / "out" / "summary.json"))["peak_rss_bytes"].get<double>();
  std::printf("%s: predicted %.3f GB, measured %.3f GB (%+.1f%%)\n", name.c_str(), r.predicted / 1e9, r.measured / 1e9,
              100 * (r.predicted / r.measured - 1));
  EXPECT_TRUE(fs::exists(dir / "out" / "report.html"));
  return r;
}

std::string recipe_text(const std::string& model, const std::string& extra_training, const std::string& extra_tables) {
  return fmt::format(R"([model]
plugin = "mistral"
path = "{}"
[adapter]
plugin = "lora"
r = 16
alpha = 32
target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
[[datasets]]
path = "long.jsonl"
type = "completion"
[data]
dataset_prepared_path = "prepared"
val_set_size = 0.05
[schedule]
learning_rate = 1e-4
warmup_steps = 1
[training]
logging_steps = 1
output_dir = "out"
{}
{}
)",
                     model, extra_training, extra_tables);
}

TEST(PlanMeasuredPeak, TinyWithinFifteenPercent) {
  const auto dir = scratch() / "tiny-peak";
  fs::create_directories(dir);
  write_long_completions(dir / "long.jsonl", 48, 300, 700);
  const auto r = predicted_and_measured(
      "tiny-peak", recipe_text(tiny_checkpoint(), "sequence_len = 512\nmicro_batch_size = 4\nmax_steps = 2", "[optimizer]\nplugin = \"adamw\""));
  ASSERT_GT(r.measured, 0);
  EXPECT_NEAR(r.predicted / r.measured, 1.0, 0.15);
}

TEST(PlanMeasuredPeak, SevenBOneLayerQLoRAWithinFifteenPercent) {
  if (!fs::exists(v3_tokenizer())) GTEST_SKIP() << "Mistral's v3 tokenizer is not at " << v3_tokenizer();
  const auto dir = scratch() / "7b1-peak";
  fs::create_directories(dir);
  write_long_completions(dir / "long.jsonl", 24, 300, 700);
  const auto r = predicted_and_measured(
      "7b1-peak", recipe_text(seven_b_one_layer_checkpoint(),
                              "sequence_len = 512\nmicro_batch_size = 1\ngradient_checkpointing = true\nmax_steps = 1",
                              "[quantize]\nplugin = \"nf4\"\n[optimizer]\nplugin = \"paged_adamw_8bit\""));
  ASSERT_GT(r.measured, 0);
  EXPECT_NEAR(r.predicted / r.measured, 1.0, 0.15);
}

TEST(PlanCli, PrintsTheBreakdownStepsAndDataHistogram) {
  const auto dir = scratch() / "cli";
  fs::create_directories(dir);
  write_long_completions(dir / "long.jsonl", 40, 20, 120);
  write_text(dir / "recipe.toml", recipe_text(tiny_checkpoint(), "sequence_len = 128\nmicro_batch_size = 2\nnum_epochs = 2", ""));
  const auto r = run_in(dir, mftk_binary() + " plan recipe.toml --measure 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* expected : {"base weights", "adapter", "optimizer state", "gradients", "activations",
                               "logits / cross-entropy", "total", "tokens per optimizer step: 256",
                               "steps per epoch", "packing efficiency", "truncated", "s per step"})
    EXPECT_NE(r.output.find(expected), std::string::npos) << expected << "\n" << r.output;
  // --strict turns lint warnings into exit 2: this recipe has none that fire...
  EXPECT_EQ(r.output.find("warning ["), std::string::npos) << r.output;
  // ...until one is introduced.
  const auto strict = run_in(dir, mftk_binary() + " plan recipe.toml --strict --set schedule.learning_rate=1e-3");
  EXPECT_EQ(strict.exit_code, 2) << strict.output;
  EXPECT_NE(strict.output.find("warning [lora-lr]"), std::string::npos) << strict.output;
}

}  // namespace
