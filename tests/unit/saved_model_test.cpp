// The model a run saves is the model it trained: `mftk run` on a tiny
// random Mistral (tied and untied embeddings; full fine-tuning and LoRA)
// reports an eval loss at its last step, and the folder it wrote, read back
// from disk by a fresh `mftk eval`, must score that same loss (1e-4). A tied
// head trained as a private copy of the embeddings and dropped at save, or a
// merged head left out of the merged checkpoint, shows up as a different loss.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "init_checkpoint.h"
#include "mftk/safetensors.h"
#include "pipeline.h"
#include "train_test_support.h"
#include "trainer.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;

const std::string kMftk = MFTK_BINARY_DIR "/bin/mftk";

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs mftk with `args` (already shell-quoted where needed); stdout is
// returned, stderr goes to `log`. Exit code through *code.
std::string run_mftk(const std::string& args, const std::string& log, int* code) {
  const std::string cmd = kMftk + " " + args + " 2>>'" + log + "'";
  std::string out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (!pipe) {
    *code = -1;
    return out;
  }
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) out.append(buffer, n);
  const int status = ::pclose(pipe);
  *code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return out;
}

// A 1-layer random fp32 checkpoint, with or without tied embeddings, made
// once per process.
std::string checkpoint(bool tied) {
  static tt::ScratchDir root("saved_model_ckpt");
  const std::string out = root.sub(tied ? "tied" : "untied");
  if (fs::exists(out + "/config.json")) return out;
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 1},
                 {"hidden_size", 64},
                 {"intermediate_size", 128},
                 {"num_attention_heads", 4},
                 {"num_key_value_heads", 2}};
  o.dtype = "f32";
  o.seed = 5;
  o.out = out;
  o.tie_word_embeddings = tied;
  o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
  o.tokenizer_vocab = 512;
  tt::QuietLog quiet;
  mftk::core::write_random_checkpoint(o);
  return out;
}

struct Case {
  const char* name;
  bool tied;
  std::string adapter;  // the [adapter] table; empty: full fine-tuning
  bool saved_tied;      // tie_word_embeddings in the saved (or merged) config.json
};
// ctest lists a case by its name, not by the struct's bytes.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class SavedModel : public testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kMftk)) << kMftk << " is not built";
    std::ofstream train(dir_.sub("train.jsonl")), eval(dir_.sub("eval.jsonl"));
    const char* words[] = {"apple", "river", "stone", "cloud", "green", "seven", "paper", "light"};
    for (int i = 0; i < 16; ++i) {
      const json row = {{"instruction", fmt::format("Repeat the word {} {} times.", words[i % 8], 1 + i % 3)},
                        {"output", fmt::format("{} {}", words[i % 8], words[(i + 3) % 8])}};
      (i < 10 ? train : eval) << row.dump() << "\n";
    }
  }

  std::string write_recipe(const Case& c) {
    const std::string path = dir_.sub("recipe.toml");
    std::ofstream(path) << fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

{adapter}

[[datasets]]
path = "{dir}/train.jsonl"
type = "instruction"

[[datasets]]
path = "{dir}/eval.jsonl"
type = "instruction"
split = "eval"

[data]
dataset_prepared_path = "{dir}/prepared"

[optimizer]
plugin = "adamw"

[schedule]
learning_rate = 1e-2
lr_scheduler = "constant"
warmup_steps = 0

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 4
save_steps = 0
logging_steps = 1
merge_adapter = true
output_dir = "{dir}/run"
seed = 3
threads = 1

[validate]
exact_match = 0
)",
                                       fmt::arg("base", checkpoint(c.tied)), fmt::arg("adapter", c.adapter),
                                       fmt::arg("dir", dir_.str()));
    return path;
  }

  // `mftk eval` on the recipe's eval split with the given extra arguments.
  double eval_loss(const std::string& recipe, const std::string& extra) {
    int code = 0;
    const std::string out = run_mftk("eval '" + recipe + "' " + extra, log(), &code);
    EXPECT_EQ(code, 0) << text_of(log());
    const json j = json::parse(out, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("eval_loss")) << out;
    return j.is_object() ? j.value("eval_loss", -1.0) : -1.0;
  }

  std::string run_dir() const { return dir_.sub("run"); }
  std::string log() const { return dir_.sub("mftk.log.txt"); }

  tt::ScratchDir dir_{"saved_model"};
};

TEST_P(SavedModel, ReloadedFromDiskScoresTheEvalLossTheRunReported) {
  const Case& c = GetParam();
  const std::string recipe = write_recipe(c);
  int code = 0;
  run_mftk("run '" + recipe + "'", log(), &code);
  ASSERT_EQ(code, 0) << text_of(log());
  const json summary = json::parse(text_of(run_dir() + "/summary.json"));
  ASSERT_TRUE(summary.contains("eval_loss")) << summary.dump(2);
  const double reported = summary["eval_loss"].get<double>();

  // Training changed the model: the base scores a different loss, so an
  // equal loss below says the trained weights were saved, not the base's.
  const double base = eval_loss(recipe, "");
  EXPECT_GT(std::abs(base - reported), 1e-2) << "training did not move the eval loss; the check below would be empty";

  const std::string saved = run_dir() + (c.adapter.empty() ? "/model" : "/merged");
  const double reloaded = eval_loss(recipe, "--set 'model.path=\"" + saved + "\"'");
  EXPECT_NEAR(reloaded, reported, 1e-4) << saved;
  std::cout << std::setprecision(9) << "[ saved ] " << c.name << ": reported eval loss " << reported << ", base "
            << base << ", " << fs::path(saved).filename().string() << " reloaded " << reloaded;
  if (!c.adapter.empty()) {
    const double with_adapter = eval_loss(recipe, "--adapter '" + run_dir() + "/adapter'");
    EXPECT_NEAR(with_adapter, reported, 1e-4) << "base + adapter";
    std::cout << ", base + adapter reloaded " << with_adapter;
  }
  std::cout << "\n";
  // A head that is still the embedding tensor stays tied (the embeddings
  // alone written); one that trained apart is written and untied.
  const json config = json::parse(text_of(saved + "/config.json"));
  EXPECT_EQ(config.value("tie_word_embeddings", false), c.saved_tied);
  EXPECT_EQ(mftk::CheckpointReader::open(saved).contains("lm_head.weight"), !c.saved_tied);
}

// Full fine-tuning of a tied model trains one tensor: the head's weight is
// the embedding leaf itself, and its gradient is the sum of what the fused
// head cross-entropy and the embedding lookup give it, as plain autograd
// over logits = hidden E^T computes it.
TEST(TiedFullFineTuning, TheHeadIsTheEmbeddingLeafAndGetsBothGradients) {
  const std::string dir = checkpoint(/*tied=*/true);
  mftk::mistral::MistralModel model;
  model.load_config(dir);
  mftk::LoadOptions lo;
  lo.path = dir;
  model.load(lo);
  const mftk::NamedTensors trainable = mftk::core::make_all_trainable(model);
  at::Tensor embed;
  for (const auto& [name, t] : trainable) {
    EXPECT_NE(name, "lm_head.weight") << "a private copy of the tied head";
    if (name == "model.embed_tokens.weight") embed = t;
  }
  ASSERT_TRUE(embed.defined());
  const mftk::LinearSlot* head = model.linear_slots().back();
  ASSERT_EQ(head->name, "lm_head");
  EXPECT_TRUE(head->op->parameters().at(0).second.is_same(embed));

  const auto rows = tt::synthetic_rows(4, 3, model.shape().vocab_size);
  const mftk::Batch batch = mftk::core::make_batch(rows);
  mftk::core::supervised_loss_sum(model, batch, nullptr).backward();
  const at::Tensor fused = embed.grad().clone();
  embed.mutable_grad().zero_();

  const at::Tensor hidden = model.forward(batch);
  const at::Tensor targets = batch.targets.reshape({-1}).to(at::kLong);
  const at::Tensor logits = at::matmul(hidden.reshape({-1, hidden.size(-1)}), embed.t());
  at::cross_entropy_loss(logits, targets, {}, at::Reduction::Sum, mftk::kIgnoreIndex).backward();
  const at::Tensor plain = embed.grad().clone();
  EXPECT_TRUE(at::allclose(fused, plain, 1e-4, 1e-5)) << "max |d| = " << (fused - plain).abs().max().item<double>();

  // The lookup's part is really in it: the head's part alone (hidden states
  // detached) leaves a clear difference.
  embed.mutable_grad().zero_();
  const at::Tensor frozen_hidden = model.forward(batch).detach();
  at::cross_entropy_loss(at::matmul(frozen_hidden.reshape({-1, frozen_hidden.size(-1)}), embed.t()), targets, {},
                         at::Reduction::Sum, mftk::kIgnoreIndex)
      .backward();
  EXPECT_GT((plain - embed.grad()).abs().max().item<double>(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(
    TiedAndUntied, SavedModel,
    testing::Values(Case{"FullTied", true, "", true}, Case{"FullUntied", false, "", false},
                    Case{"LoraTied", true, "[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ntarget_modules = [\"all-linear\"]", true},
                    Case{"LoraUntied", false, "[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ntarget_modules = [\"all-linear\"]", false},
                    // lm_head trained in full: a copy of the tied embeddings, so the merged model is untied.
                    Case{"LoraTiedHeadSaved", true,
                         "[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ntarget_modules = [\"q_proj\", \"v_proj\"]\n"
                         "modules_to_save = [\"lm_head\"]", false},
                    // embed_tokens trained in full: the tied head is that same tensor and follows it.
                    Case{"LoraTiedEmbeddingsSaved", true,
                         "[adapter]\nplugin = \"lora\"\nr = 8\nalpha = 16\ntarget_modules = [\"q_proj\", \"v_proj\"]\n"
                         "modules_to_save = [\"embed_tokens\"]", true}),
    [](const testing::TestParamInfo<Case>& info) { return std::string(info.param.name); });

}  // namespace
