// The model and data commands end to end: each test runs the built `mftk`
// binary on a tiny random checkpoint (`mftk init --preset tiny --layers 2`)
// and checks its output against facts computed independently here (the
// core tokenizer and chat API, an argmax chain, probability sums, in-process
// model runs). CliE2EPackingCheck tests the packing comparison itself,
// including a model that deliberately lets attention leak across documents.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "batching.h"
#include "chat_template.h"
#include "lora/lora_adapter.h"
#include "mftk/model.h"
#include "mftk/tokenizer.h"
#include "mistral/mistral_model.h"
#include "child_process.h"
#include "model_tools.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

using mftk::child_process::mftk_binary;
using mftk::child_process::shell_quote;

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  ASSERT_TRUE(f.good()) << path;
}

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The base checkpoint is the same for every test process (ctest runs each
// test in its own), so it is made once per build of the binary and reused.
std::string shared_base_checkpoint() {
  const fs::path root = fs::path(MFTK_BINARY_DIR) / "tests" / "cli_e2e";
  const fs::path base = root / "base-tiny-l2-s3";
  struct stat st {};
  if (::stat(mftk_binary().c_str(), &st) != 0) throw std::runtime_error("no mftk binary at " + mftk_binary());
  const std::string stamp = std::to_string(st.st_mtime) + ":" + std::to_string(st.st_size);
  if (fs::exists(base / "model.safetensors") && read_text(base / ".mftk_binary_stamp") == stamp) return base.string();
  fs::create_directories(root);
  // Write into a private folder, then rename: parallel test processes never see half a checkpoint.
  const fs::path staging = root / ("staging-" + std::to_string(::getpid()));
  fs::remove_all(staging);
  const std::string cmd = mftk_binary() + " init --preset tiny --layers 2 --seed 3 --out " + shell_quote(staging.string()) +
                          " > " + shell_quote((root / "init.log").string()) + " 2>&1";
  if (std::system(cmd.c_str()) != 0)
    throw std::runtime_error("mftk init failed: " + read_text(root / "init.log"));
  write_text(staging / ".mftk_binary_stamp", stamp);
  std::error_code ec;
  fs::remove_all(base, ec);
  fs::rename(staging, base, ec);
  if (ec) fs::remove_all(staging, ec);  // another process won the race: use its copy
  return base.string();
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

class CliE2E : public testing::Test {
 public:
  static void SetUpTestSuite() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_cli_e2e_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    base_ = shared_base_checkpoint();
    tokenizer_ = mftk::Tokenizer::load(base_);
    write_adapter();
    write_instruction_data();
  }
  static void TearDownTestSuite() {
    tokenizer_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

 protected:
  static CommandResult run(const std::string& args) {
    static int counter = 0;
    const fs::path err_file = dir_ / ("stderr-" + std::to_string(++counter) + ".txt");
    const std::string cmd = mftk_binary() + " " + args + " 2>" + shell_quote(err_file.string());
    CommandResult r;
    FILE* pipe = ::popen(cmd.c_str(), "r");
    if (!pipe) return r;
    char buffer[4096];
    size_t n;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.out.append(buffer, n);
    const int status = ::pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    r.err = read_text(err_file);
    return r;
  }
  // Runs a command that must succeed and prints JSON on stdout.
  static json run_json(const std::string& args) {
    const auto r = run(args);
    EXPECT_EQ(r.exit_code, 0) << "mftk " << args << "\nstderr:\n" << r.err;
    const auto j = json::parse(r.out, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << r.out;
    return j;
  }
  static std::vector<double> logprobs_of(const std::string& model_args, const std::vector<int32_t>& tokens) {
    const json j = run_json("logprobs " + model_args + " --tokens " + join_ids(tokens));
    return j.value("logprobs", std::vector<double>{});
  }

  // A LoRA adapter with non-zero B (so it changes the model), written with
  // the lora plugin's own API onto the in-process Mistral model.
  static void write_adapter() {
    mftk::mistral::MistralModel model;
    model.load_config(base_);
    mftk::LoadOptions lo;
    lo.path = base_;
    model.load(lo);
    mftk::lora::LoRAOptions o;
    o.r = 4;
    o.alpha = 8;
    o.target_modules = {"q_proj", "v_proj", "down_proj"};
    mftk::lora::LoRAAdapter adapter(o);
    adapter.inject(model);
    at::manual_seed(11);
    at::NoGradGuard no_grad;
    for (auto& [name, t] : adapter.trainable_parameters())
      if (name.find("lora_B") != std::string::npos) t.copy_(at::randn_like(t) * 0.05);
    adapter_ = (dir_ / "adapter").string();
    adapter.save(adapter_, base_);
  }

  // Instruction rows (chat template, loss on answers) for eval and verify.
  static void write_instruction_data() {
    std::string train, eval;
    const char* words[] = {"apple", "river", "stone", "cloud", "green", "seven", "paper", "light"};
    for (int i = 0; i < 16; ++i) {
      json row = {{"instruction", fmt::format("Repeat the word {} {} times.", words[i % 8], 1 + i % 3)},
                  {"output", fmt::format("{} {}", words[i % 8], words[(i + 3) % 8])}};
      (i < 10 ? train : eval) += row.dump() + "\n";
    }
    write_text(dir_ / "train.jsonl", train);
    write_text(dir_ / "eval.jsonl", eval);
    recipe_ = (dir_ / "recipe.toml").string();
    write_text(recipe_, fmt::format(R"([model]
plugin = "mistral"
path = "{0}"

[[datasets]]
path = "{1}/train.jsonl"
type = "instruction"

[[datasets]]
path = "{1}/eval.jsonl"
type = "instruction"
split = "eval"

[data]
dataset_prepared_path = "{1}/prepared"

[training]
sequence_len = 64
micro_batch_size = 2
output_dir = "{1}/out"
)",
                                    base_, dir_.string()));
  }

  static inline fs::path dir_;
  static inline std::string base_, adapter_, recipe_;
  static inline std::shared_ptr<mftk::Tokenizer> tokenizer_;
};

// ---------------------------------------------------------------------------
// generate / logprobs / merge

TEST_F(CliE2E, GreedyGenerateFollowsTheArgmaxOfLogprobs) {
  const std::string prompt = "The river runs past the stone";
  const json gen = run_json("generate --model " + shell_quote(base_) + " --prompt " + shell_quote(prompt) +
                            " --max-new-tokens 6 --json");
  const auto prompt_ids = ids_of(gen.at("prompt_tokens"));
  const auto new_ids = ids_of(gen.at("tokens"));
  EXPECT_EQ(prompt_ids, mftk::core::encode_text(*tokenizer_, prompt));
  ASSERT_FALSE(new_ids.empty());
  ASSERT_LE(new_ids.size(), 6u);
  std::vector<int32_t> all = prompt_ids;
  all.insert(all.end(), new_ids.begin(), new_ids.end());

  // Independent check: a full forward over prompt + generated tokens (no KV
  // cache) must pick each generated token as the most likely next one.
  const json lp = run_json("logprobs --model " + shell_quote(base_) + " --tokens " + join_ids(all) + " --top 1");
  ASSERT_EQ(lp.at("top").size(), all.size() - 1);
  for (size_t j = 0; j < new_ids.size(); ++j) {
    const size_t position = prompt_ids.size() - 1 + j;
    const json& best = lp["top"][position][0];
    EXPECT_EQ(best["id"].get<int32_t>(), new_ids[j]) << "generated token " << j;
    EXPECT_NEAR(best["logprob"].get<double>(), lp["logprobs"][position].get<double>(), 1e-6);
  }

  // The plain output is the decoded text of the same tokens (without EOS).
  const auto plain = run("generate --model " + shell_quote(base_) + " --prompt " + shell_quote(prompt) + " --max-new-tokens 6");
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  std::vector<int32_t> text_ids = new_ids;
  if (!text_ids.empty() && text_ids.back() == tokenizer_->eos_id()) text_ids.pop_back();
  EXPECT_EQ(plain.out, tokenizer_->decode(text_ids) + "\n");
  EXPECT_NE(plain.err.find("ms to first token"), std::string::npos) << plain.err;
}

TEST_F(CliE2E, ChatGenerateUsesTheChatTemplate) {
  const std::string prompt = "Name a color.";
  const json gen = run_json("generate --model " + shell_quote(base_) + " --prompt " + shell_quote(prompt) +
                            " --chat --max-new-tokens 2 --temperature 0.8 --top-p 0.9 --seed 5 --json");
  const auto expected = mftk::core::encode_chat(*tokenizer_, mftk::core::detect_chat_format(*tokenizer_),
                                                {{"user", prompt}}, false, true);
  EXPECT_EQ(ids_of(gen.at("prompt_tokens")), expected.ids);
  EXPECT_GE(gen.at("tokens").size(), 1u);
}

TEST_F(CliE2E, LogprobsAreNormalisedAndTextEqualsTokens) {
  const std::string text = "Seven clouds over green paper";
  const int64_t vocab = tokenizer_->vocab_size();
  const json j = run_json("logprobs --model " + shell_quote(base_) + " --text " + shell_quote(text) + " --top " +
                          std::to_string(vocab));
  const auto tokens = ids_of(j.at("tokens"));
  EXPECT_EQ(tokens, mftk::core::encode_text(*tokenizer_, text));
  ASSERT_GE(tokens.size(), 3u);
  const auto logprobs = j.at("logprobs").get<std::vector<double>>();
  ASSERT_EQ(logprobs.size(), tokens.size() - 1);
  ASSERT_EQ(j.at("top").size(), tokens.size() - 1);
  for (size_t i = 0; i < logprobs.size(); ++i) {
    const json& top = j["top"][i];
    ASSERT_EQ(int64_t(top.size()), vocab);
    // With K = vocabulary the list is the whole distribution: it sums to 1,
    // is sorted, holds every id once, and contains the scored token's value.
    double total = 0, previous = 0;
    std::vector<bool> seen(size_t(vocab), false);
    for (size_t k = 0; k < top.size(); ++k) {
      const double lp = top[k]["logprob"].get<double>();
      const int32_t id = top[k]["id"].get<int32_t>();
      EXPECT_LE(lp, 0.0);
      if (k > 0) {
        EXPECT_LE(lp, previous);
      }
      previous = lp;
      total += std::exp(lp);
      ASSERT_FALSE(seen[size_t(id)]);
      seen[size_t(id)] = true;
      if (id == tokens[i + 1]) {
        EXPECT_NEAR(lp, logprobs[i], 1e-6);
      }
    }
    EXPECT_NEAR(total, 1.0, 1e-4) << "position " << i;
  }

  // The same ids given as --tokens score the same.
  const auto again = logprobs_of("--model " + shell_quote(base_), tokens);
  ASSERT_EQ(again.size(), logprobs.size());
  for (size_t i = 0; i < logprobs.size(); ++i) EXPECT_NEAR(again[i], logprobs[i], 1e-9);

  // bf16 weights and compute: the same shape, close to fp32 (bf16 keeps ~3 significant digits).
  const json b = run_json("logprobs --model " + shell_quote(base_) + " --tokens " + join_ids(tokens) + " --dtype bf16");
  const auto bf16 = b.at("logprobs").get<std::vector<double>>();
  ASSERT_EQ(bf16.size(), logprobs.size());
  EXPECT_FALSE(b.contains("top"));
  for (size_t i = 0; i < logprobs.size(); ++i) EXPECT_NEAR(bf16[i], logprobs[i], 0.05 + 0.02 * std::abs(logprobs[i]));
}

TEST_F(CliE2E, MergedCheckpointScoresLikeBasePlusAdapter) {
  const auto tokens = mftk::core::encode_text(*tokenizer_, "A stone in the river, a cloud of light");
  const fs::path merged = dir_ / "merged";
  const auto m = run("merge --model " + shell_quote(base_) + " --adapter " + shell_quote(adapter_) + " --out " +
                     shell_quote(merged.string()));
  ASSERT_EQ(m.exit_code, 0) << m.err;
  for (const char* f : {"config.json", "tokenizer.model", "model.safetensors"})
    EXPECT_TRUE(fs::exists(merged / f)) << f;

  const auto with_adapter = logprobs_of("--model " + shell_quote(base_) + " --adapter " + shell_quote(adapter_), tokens);
  const auto from_merged = logprobs_of("--model " + shell_quote(merged.string()), tokens);
  const auto base_only = logprobs_of("--model " + shell_quote(base_), tokens);
  ASSERT_EQ(with_adapter.size(), tokens.size() - 1);
  ASSERT_EQ(from_merged.size(), with_adapter.size());
  ASSERT_EQ(base_only.size(), with_adapter.size());
  double adapter_effect = 0;
  for (size_t i = 0; i < with_adapter.size(); ++i) {
    EXPECT_NEAR(from_merged[i], with_adapter[i], 1e-5 * std::max(1.0, std::abs(with_adapter[i]))) << i;
    adapter_effect = std::max(adapter_effect, std::abs(with_adapter[i] - base_only[i]));
  }
  EXPECT_GT(adapter_effect, 1e-3) << "the adapter should change the model, or the merge test proves nothing";

  // Writing over the base is refused.
  EXPECT_EQ(run("merge --model " + shell_quote(base_) + " --adapter " + shell_quote(adapter_) + " --out " + shell_quote(base_))
                .exit_code,
            2);
}

// ---------------------------------------------------------------------------
// tokenize / preprocess / eval / verify

TEST_F(CliE2E, TokenizeMatchesTheCoreEncoders) {
  const std::vector<mftk::core::ChatMessage> messages = {{"system", "Be brief."},
                                                         {"user", "Name a river."},
                                                         {"assistant", "The green river."},
                                                         {"user", "And a stone?"},
                                                         {"assistant", "Seven stones."}};
  json list = json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  write_text(dir_ / "chat.json", json{{"messages", list}}.dump());
  write_text(dir_ / "chat_list.json", list.dump());
  const auto format = mftk::core::detect_chat_format(*tokenizer_);

  for (const bool train_on_inputs : {false, true}) {
    const std::string file = train_on_inputs ? "chat_list.json" : "chat.json";
    const json j = run_json("tokenize --model " + shell_quote(base_) + " --chat-json " + shell_quote((dir_ / file).string()) +
                            (train_on_inputs ? " --train-on-inputs" : ""));
    const auto expected = mftk::core::encode_chat(*tokenizer_, format, messages, train_on_inputs);
    EXPECT_EQ(ids_of(j.at("ids")), expected.ids);
    EXPECT_EQ(j.at("label_mask").get<std::vector<int>>(), std::vector<int>(expected.loss_mask.begin(),
                                                                           expected.loss_mask.end()));
    ASSERT_EQ(j.at("pieces").size(), expected.ids.size());
    for (size_t i = 0; i < expected.ids.size(); ++i)
      EXPECT_EQ(j["pieces"][i].get<std::string>(), tokenizer_->piece(expected.ids[i]));
  }

  const json t = run_json("tokenize --model " + shell_quote(base_) + " --text " + shell_quote("light paper"));
  std::vector<int32_t> expected = {tokenizer_->bos_id()};
  for (int32_t id : tokenizer_->encode("light paper")) expected.push_back(id);
  EXPECT_EQ(ids_of(t.at("ids")), expected);
  EXPECT_EQ(t.at("label_mask").get<std::vector<int>>(), std::vector<int>(expected.size(), 1));
}

TEST_F(CliE2E, PreprocessPrintsTheCountsOfACraftedSet) {
  // Completion rows: BOS + text + EOS, loss on every token. One row is longer than sequence_len.
  const std::vector<std::string> texts = {"apple", "river stone", "seven green clouds",
                                          "paper light paper light paper light paper light paper light paper light "
                                          "paper light paper light paper light paper light paper light"};
  const int64_t seq = 16;
  std::string jsonl;
  int64_t tokens = 0, row_tokens = 0, targets = 0, truncated = 0;
  for (const auto& t : texts) {
    jsonl += json{{"text", t}}.dump() + "\n";
    const int64_t length = int64_t(tokenizer_->encode(t).size()) + 2;
    tokens += length;
    row_tokens += std::min(length, seq);
    targets += std::min(length, seq) - 1;  // every token but the first is a target
    truncated += length > seq;
  }
  ASSERT_EQ(truncated, 1) << "the long row must exceed sequence_len";
  write_text(dir_ / "completion.jsonl", jsonl);
  const std::string recipe = (dir_ / "preprocess.toml").string();
  write_text(recipe, fmt::format(R"([model]
plugin = "mistral"
path = "{0}"
[[datasets]]
path = "{1}/completion.jsonl"
type = "completion"
[data]
dataset_prepared_path = "{1}/prepared-pre"
[training]
sequence_len = {2}
)",
                                 base_, dir_.string(), seq));

  const auto r = run("preprocess " + shell_quote(recipe));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find(fmt::format("4 rows -> 4 examples, {} tokens ({} trainable)", tokens, tokens)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("packed by swa_packer"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(fmt::format("examples: 4 in rows (1 truncated to sequence_len {}, 0 dropped", seq)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find(fmt::format("tokens: {} in examples, {} in rows, {} trainable targets", tokens, row_tokens,
                                   targets)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("packing efficiency"), std::string::npos) << r.out;

  // Dropping instead of truncating, one example per row (padding packer), cache rebuilt.
  const int64_t long_length = int64_t(tokenizer_->encode(texts.back()).size()) + 2;
  const auto d = run("preprocess " + shell_quote(recipe) +
                     " --set data.drop_long_examples=true --set training.sample_packing=false --force");
  ASSERT_EQ(d.exit_code, 0) << d.err;
  EXPECT_NE(d.out.find("packed by padding"), std::string::npos) << d.out;
  EXPECT_NE(d.out.find(fmt::format("examples: 3 in rows (0 truncated to sequence_len {}, 1 dropped", seq)),
            std::string::npos)
      << d.out;
  EXPECT_NE(d.out.find(fmt::format("{} in rows, {} trainable targets", row_tokens - seq,
                                   targets - (seq - 1))),
            std::string::npos)
      << d.out << " (long example: " << long_length << " tokens)";
  EXPECT_NE(d.out.find("rows: 3 "), std::string::npos) << d.out;
}

TEST_F(CliE2E, EvalLossDoesNotDependOnPacking) {
  const json packed = run_json("eval " + shell_quote(recipe_) + " --set training.sample_packing=true");
  const json single = run_json("eval " + shell_quote(recipe_) + " --set training.sample_packing=false");
  const double a = packed.at("eval_loss").get<double>(), b = single.at("eval_loss").get<double>();
  EXPECT_TRUE(std::isfinite(a));
  EXPECT_NEAR(a, b, 1e-5 * std::abs(b));
  EXPECT_NEAR(packed.at("perplexity").get<double>(), std::exp(a), 1e-9 * std::exp(a));

  // Supervised tokens: every answer token and its EOS, as the chat encoder masks them.
  int64_t expected_tokens = 0;
  std::ifstream eval(dir_ / "eval.jsonl");
  for (std::string line; std::getline(eval, line);) {
    const json row = json::parse(line);
    const auto enc = mftk::core::encode_chat(*tokenizer_, mftk::core::detect_chat_format(*tokenizer_),
                                             {{"user", row["instruction"].get<std::string>()},
                                              {"assistant", row["output"].get<std::string>()}},
                                             false);
    for (size_t t = 1; t < enc.loss_mask.size(); ++t) expected_tokens += enc.loss_mask[t];
  }
  EXPECT_EQ(packed.at("tokens").get<int64_t>(), expected_tokens);
  EXPECT_EQ(single.at("tokens").get<int64_t>(), expected_tokens);

  // A random base knows nothing: its loss is near log(vocab), far from 0.
  EXPECT_GT(a, 0.5 * std::log(double(tokenizer_->vocab_size())));

  // With the adapter the loss changes (the adapter is loaded, not ignored).
  const json adapted = run_json("eval " + shell_quote(recipe_) + " --adapter " + shell_quote(adapter_));
  EXPECT_GT(std::abs(adapted.at("eval_loss").get<double>() - a), 1e-4);
}

TEST_F(CliE2E, VerifyPackingPassesOnTheRealModel) {
  const auto r = run("verify packing " + shell_quote(recipe_) + " --rows 2");
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("row 0: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("row 1: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("overall worst relative difference"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("packing is exact"), std::string::npos) << r.out;
}

TEST_F(CliE2E, BadUsageExitsWithCode2) {
  const std::string model = " --model " + shell_quote(base_);
  struct Case {
    std::string args;
    std::string message;  // expected on stderr
  };
  const std::vector<Case> cases = {
      {"generate" + model + " --prompt hi --no-such-flag", "no-such-flag"},
      {"generate --model " + shell_quote((dir_ / "missing").string()) + " --prompt hi", "does not exist"},
      {"logprobs" + model, "nothing to score"},
      {"logprobs" + model + " --tokens 1,x,3", "'x' is not a token id"},
      {"logprobs" + model + " --tokens 1,99999", "outside the vocabulary"},
      {"logprobs" + model + " --text a --tokens 1", "excludes"},
      {"tokenize" + model + " --chat-json " + shell_quote((dir_ / "missing.json").string()), "is not a file"},
      {"eval " + shell_quote((dir_ / "missing.toml").string()), "missing.toml"},
      {"preprocess " + shell_quote(recipe_) + " --set training.no_such_key=1", "no_such_key"},
      {"verify " + shell_quote(recipe_), ""},
      {"merge" + model + " --out " + shell_quote((dir_ / "never").string()), "--adapter"},
  };
  for (const auto& c : cases) {
    const auto r = run(c.args);
    EXPECT_EQ(r.exit_code, 2) << "mftk " << c.args << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << "mftk " << c.args << "\nstderr: " << r.err;
  }
  // An adapter folder that does not exist is a usage error too.
  EXPECT_EQ(run("generate" + model + " --adapter " + shell_quote((dir_ / "nothing").string()) + " --prompt hi").exit_code,
            2);
}

// ---------------------------------------------------------------------------
// The packing comparison itself.

mftk::core::DocumentCheck document(int64_t row, int32_t doc, double loss_packed, double loss_alone,
                                   double norm_packed = 2.0, double norm_alone = 2.0, double difference = 0.0) {
  mftk::core::DocumentCheck c;
  c.row = row;
  c.doc = doc;
  c.tokens = 10;
  c.supervised = 4;
  c.loss_packed = loss_packed;
  c.loss_alone = loss_alone;
  c.grad_norm_packed = norm_packed;
  c.grad_norm_alone = norm_alone;
  c.grad_difference = difference;
  return c;
}

TEST(CliE2EPackingCheck, RelativeDifference) {
  using mftk::core::relative_difference;
  EXPECT_DOUBLE_EQ(relative_difference(0, 0), 0);
  EXPECT_DOUBLE_EQ(relative_difference(10, 9), 0.1);
  EXPECT_DOUBLE_EQ(relative_difference(9, 10), 0.1);
  EXPECT_DOUBLE_EQ(relative_difference(-2, 2), 2.0);
  EXPECT_TRUE(std::isinf(relative_difference(NAN, 1)));
  EXPECT_TRUE(std::isinf(relative_difference(1, INFINITY)));
}

TEST(CliE2EPackingCheck, JudgeFindsTheWorstDocumentOfEachRow) {
  using mftk::core::judge_packing;
  // Rounding-level differences pass.
  auto ok = judge_packing({document(0, 0, 30.0, 30.0 * (1 + 1e-7)), document(0, 1, 12.0, 12.0),
                           document(1, 0, 8.0, 8.0, 1.0, 1.0, 1e-8)},
                          1e-4);
  EXPECT_TRUE(ok.passed);
  EXPECT_EQ(ok.compared, 3);
  ASSERT_EQ(ok.rows.size(), 2u);
  EXPECT_EQ(ok.rows[0].documents, 2);
  EXPECT_NEAR(ok.rows[0].worst, 1e-7, 1e-12);
  EXPECT_NEAR(ok.rows[1].worst, 1e-8, 1e-12);

  // A leaking document 2 of row 1: its loss moves by 1e-3, which a 1e-4 tolerance refuses.
  auto leak = judge_packing({document(0, 0, 30.0, 30.0), document(1, 0, 20.0, 20.0),
                             document(1, 2, 20.02, 20.0), document(2, 0, 5.0, 5.0)},
                            1e-4);
  EXPECT_FALSE(leak.passed);
  EXPECT_NEAR(leak.worst, 0.02 / 20.02, 1e-12);
  EXPECT_NE(leak.worst_what.find("row 1 doc 2"), std::string::npos) << leak.worst_what;
  EXPECT_NE(leak.worst_what.find("loss"), std::string::npos) << leak.worst_what;
  EXPECT_DOUBLE_EQ(leak.rows[0].worst, 0);
  EXPECT_NEAR(leak.rows[1].worst, 0.02 / 20.02, 1e-12);

  // Equal losses, but the gradient points elsewhere (attention to another document's tokens).
  auto gradient = judge_packing({document(0, 1, 7.0, 7.0, 3.0, 3.0, 0.3)}, 1e-4);
  EXPECT_FALSE(gradient.passed);
  EXPECT_NEAR(gradient.worst, 0.1, 1e-12);
  EXPECT_NE(gradient.worst_what.find("gradient differs"), std::string::npos) << gradient.worst_what;

  // A NaN is a failure, not a pass by comparison rules.
  EXPECT_FALSE(judge_packing({document(0, 0, NAN, 1.0)}, 1e-4).passed);
  // Documents without supervised tokens are not compared; nothing compared is no pass.
  auto empty = document(0, 0, 0, 5.0);
  empty.supervised = 0;
  auto none = judge_packing({empty}, 1e-4);
  EXPECT_EQ(none.compared, 0);
  EXPECT_FALSE(none.passed);
}

// The real model, except that it treats a whole packed row as one document:
// attention leaks from each document into the ones before it.
class LeakyModel final : public mftk::Model {
 public:
  explicit LeakyModel(mftk::Model& inner) : inner_(inner) {}
  void load_config(const std::string& path) override { inner_.load_config(path); }
  void load(const mftk::LoadOptions& o) override { inner_.load(o); }
  const mftk::ModelShape& shape() const override { return inner_.shape(); }
  std::vector<mftk::LinearSlot*> linear_slots() override { return inner_.linear_slots(); }
  mftk::NamedTensors named_parameters() override { return inner_.named_parameters(); }
  at::Tensor forward(const mftk::Batch& batch) override {
    mftk::Batch leaky = batch;
    leaky.doc_ids = at::where(batch.doc_ids >= 0, at::zeros_like(batch.doc_ids), batch.doc_ids);
    return inner_.forward(leaky);
  }
  at::Tensor logits(const at::Tensor& hidden) override { return inner_.logits(hidden); }
  std::unique_ptr<mftk::DecodeState> start_decode(int64_t n) override { return inner_.start_decode(n); }
  at::Tensor decode(mftk::DecodeState& s, const at::Tensor& ids) override { return inner_.decode(s, ids); }
  void set_gradient_checkpointing(bool on) override { inner_.set_gradient_checkpointing(on); }
  void set_training(bool on) override { inner_.set_training(on); }
  at::ScalarType compute_dtype() const override { return inner_.compute_dtype(); }

 private:
  mftk::Model& inner_;
};

TEST(CliE2EPackingCheck, MeasureCatchesAttentionThatLeaksAcrossDocuments) {
  const std::string base = shared_base_checkpoint();
  mftk::mistral::MistralModel model;
  model.load_config(base);
  mftk::LoadOptions lo;
  lo.path = base;
  model.load(lo);

  // One row of three documents with different loss masks.
  auto example = [](std::vector<int32_t> ids, size_t first_supervised) {
    mftk::Example e;
    e.ids = std::move(ids);
    for (size_t t = 0; t < e.ids.size(); ++t) e.loss_mask.push_back(t >= first_supervised);
    return e;
  };
  mftk::PackedRow row;
  mftk::core::append_document(row, example({1, 40, 41, 42, 43, 44, 2}, 1), 7);
  mftk::core::append_document(row, example({1, 50, 51, 52, 53, 2}, 3), 6);
  mftk::core::append_document(row, example({1, 60, 61, 62, 63, 64, 65, 2}, 4), 8);
  mftk::core::pad_row(row, 24, 0);

  const auto probe = at::tensor({1, 40, 50, 60}, at::kLong);
  const auto before = model.logits(at::embedding(model.named_parameters()[0].second, probe));

  const auto honest = mftk::core::judge_packing(mftk::core::measure_packing(model, {row}), 1e-4);
  EXPECT_TRUE(honest.passed) << honest.worst_what;
  EXPECT_EQ(honest.compared, 3);
  EXPECT_LT(honest.worst, 1e-5) << honest.worst_what;

  LeakyModel leaky(model);
  const auto checks = mftk::core::measure_packing(leaky, {row});
  ASSERT_EQ(checks.size(), 3u);
  // The first document has nothing before it to leak from; the others do.
  EXPECT_LT(mftk::core::relative_difference(checks[0].loss_packed, checks[0].loss_alone), 1e-5);
  const auto verdict = mftk::core::judge_packing(checks, 1e-4);
  EXPECT_FALSE(verdict.passed);
  EXPECT_GT(verdict.worst, 1e-3);
  EXPECT_EQ(verdict.worst_what.rfind("row 0 doc 0", 0), std::string::npos) << verdict.worst_what;

  // The probe parameters are put back: the model computes what it did before.
  at::NoGradGuard no_grad;
  const auto after = model.logits(at::embedding(model.named_parameters()[0].second, probe));
  EXPECT_FALSE(model.named_parameters()[0].second.requires_grad());
  EXPECT_TRUE(at::equal(before.detach(), after));
}

}  // namespace
