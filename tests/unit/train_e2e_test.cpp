// `mftk run` as a person runs it: the real binary on a tiny recipe written
// here (a 1-layer random Mistral, a dozen instruction rows). It must write
// everything the README promises and lower the loss; Ctrl-C must leave a
// checkpoint and exit 130, and kill -9 in the middle of checkpointing must
// leave a checkpoint that "latest" resumes from.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "child_process.h"
#include "fs_util.h"
#include "mftk/safetensors.h"
#include "train_test_support.h"
#include "trainer.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;
using namespace std::chrono_literals;

const std::string kMftk = MFTK_BINARY_DIR "/bin/mftk";
using mftk::child_process::exit_code;
using mftk::child_process::wait_status;

// Questions with one-word answers; the eval file asks some of them again.
void write_data(const std::string& dir) {
  const std::vector<std::pair<std::string, std::string>> facts = {
      {"What color is the sky?", "blue"},   {"What color is grass?", "green"},
      {"What color is snow?", "white"},     {"What color is coal?", "black"},
      {"How many legs has a cat?", "four"}, {"How many legs has a bird?", "two"},
      {"What is two plus two?", "four"},    {"What is one plus one?", "two"},
  };
  std::ofstream train(dir + "/train.jsonl"), eval(dir + "/eval.jsonl");
  for (size_t i = 0; i < facts.size(); ++i) {
    const std::string line = json{{"instruction", facts[i].first}, {"output", facts[i].second}}.dump() + "\n";
    train << line;
    if (i % 2 == 0) eval << line;
  }
}

std::string recipe_text(const std::string& dir, int64_t max_steps, int64_t save_steps) {
  return fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 8
alpha = 16
dropout = 0.05

[[datasets]]
path = "{dir}/train.jsonl"
type = "instruction"

[[datasets]]
path = "{dir}/eval.jsonl"
type = "instruction"
split = "eval"

[data]
dataset_prepared_path = "{dir}/prepared"

[packer]
plugin = "swa_packer"

[optimizer]
plugin = "adamw"

[schedule]
learning_rate = 1e-2
lr_scheduler = "constant"
warmup_steps = 1

[training]
sequence_len = 128
micro_batch_size = 2
max_steps = {max_steps}
logging_steps = 1
save_steps = {save_steps}
output_dir = "{dir}/run"
seed = 3
threads = 1

[validate]
exact_match = 4
prompts = ["What color is the sky?"]
max_new_tokens = 3
)",
                     fmt::arg("base", tt::tiny_checkpoint(1)), fmt::arg("dir", dir), fmt::arg("max_steps", max_steps),
                     fmt::arg("save_steps", save_steps));
}

pid_t spawn_mftk(const std::vector<std::string>& args, const std::string& log,
                 rlim_t file_size_limit = RLIM_INFINITY) {
  mftk::child_process::SpawnOptions options;
  options.file_size_limit = file_size_limit;
  return mftk::child_process::spawn(kMftk, args, log, options);
}

// The limit only catches a hung run; a loaded CI machine (ctest -j) can
// make a healthy one several times slower than alone.
int run_mftk(const std::vector<std::string>& args, const std::string& log, std::chrono::seconds limit = 120s) {
  return exit_code(wait_status(spawn_mftk(args, log), limit));
}

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<double> logged_losses(const std::string& metrics) {
  std::vector<double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (j.contains("loss") && j["loss"].is_number()) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// Polls until `ready` holds; false after `limit`.
template <class Ready>
bool wait_until(Ready ready, std::chrono::milliseconds limit, std::chrono::microseconds poll = 2000us) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(poll);
  }
  return true;
}

bool has_tmp_checkpoint(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const auto name = e.path().filename().string();
    if (name.rfind(".checkpoint-", 0) == 0) return true;
  }
  return false;
}

class TrainE2E : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kMftk)) << kMftk << " is not built";
    write_data(dir_.str());
    tt::tiny_checkpoint(1);
  }
  std::string write_recipe(int64_t max_steps, int64_t save_steps) {
    const std::string path = dir_.sub("recipe.toml");
    std::ofstream(path) << recipe_text(dir_.str(), max_steps, save_steps);
    return path;
  }
  std::string out() const { return dir_.sub("run"); }
  std::string log() const { return dir_.sub("mftk.out"); }

  tt::ScratchDir dir_{"e2e"};
};

}  // namespace

TEST_F(TrainE2E, RunWritesEverythingAndLowersTheLoss) {
  const std::string recipe = write_recipe(8, 4);
  ASSERT_EQ(run_mftk({"run", recipe}, log()), 0) << text_of(log());

  const json summary = json::parse(mftk::core::read_file(out() + "/summary.json"));
  for (const char* key : {"steps", "train_tokens", "tokens_per_s", "peak_rss_bytes", "final_loss", "eval_loss",
                          "exact_match_before", "exact_match_after"})
    EXPECT_TRUE(summary.contains(key)) << key << " missing from " << summary.dump(2);
  EXPECT_EQ(summary.value("steps", 0), 8);
  EXPECT_GT(summary.value("train_tokens", 0), 0);
  EXPECT_GT(summary.value("tokens_per_s", 0.0), 0.0);
  EXPECT_GT(summary.value("peak_rss_bytes", int64_t(0)), int64_t(1) << 20);
  for (const char* key : {"exact_match_before", "exact_match_after"}) {
    EXPECT_GE(summary.value(key, -1.0), 0.0) << key;
    EXPECT_LE(summary.value(key, 2.0), 1.0) << key;
  }

  EXPECT_TRUE(fs::is_regular_file(out() + "/adapter/adapter_config.json"));
  EXPECT_TRUE(fs::is_regular_file(out() + "/adapter/adapter_model.safetensors"));
  const json adapter_config = json::parse(mftk::core::read_file(out() + "/adapter/adapter_config.json"));
  EXPECT_EQ(adapter_config.value("peft_type", ""), "LORA");
  EXPECT_EQ(adapter_config.value("r", 0), 8);

  const std::string svg = text_of(out() + "/loss_curve.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);

  const auto losses = logged_losses(out() + "/metrics.jsonl");
  ASSERT_EQ(losses.size(), 8u);  // logging_steps = 1
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_LT(summary.value("final_loss", 1e9), losses.front());
  EXPECT_NEAR(summary.value("final_loss", 0.0), losses.back(), 1e-9);
  EXPECT_TRUE(fs::is_directory(out() + "/checkpoint-4"));
  EXPECT_TRUE(fs::is_directory(out() + "/checkpoint-8"));
}

TEST_F(TrainE2E, CtrlCWritesACheckpointExits130AndTheRunResumes) {
  const std::string recipe = write_recipe(40, 2);
  const pid_t pid = spawn_mftk({"run", recipe}, log());
  ASSERT_GT(pid, 0);
  const bool saved = wait_until([&] { return fs::is_directory(out() + "/checkpoint-2"); }, 90s);
  kill(pid, SIGINT);
  const int status = wait_status(pid, 60s);
  ASSERT_TRUE(saved) << "no checkpoint-2 appeared\n" << text_of(log());
  ASSERT_TRUE(status >= 0 && WIFEXITED(status)) << "status " << status << "\n" << text_of(log());
  ASSERT_EQ(WEXITSTATUS(status), 130) << text_of(log());

  const std::string latest = mftk::core::find_latest_checkpoint(out());
  ASSERT_FALSE(latest.empty());
  const json state = json::parse(mftk::core::read_file(latest + "/trainer_state.json"));
  EXPECT_EQ(state.value("reason", ""), "interrupted");
  const int64_t stopped_at = state.value("step", int64_t(0));
  EXPECT_LT(stopped_at, 40);
  EXPECT_TRUE(fs::is_regular_file(latest + "/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(out() + "/summary.json"));

  ASSERT_EQ(run_mftk({"run", recipe, "--set", "training.resume_from_checkpoint=latest"}, log()), 0) << text_of(log());
  const json summary = json::parse(mftk::core::read_file(out() + "/summary.json"));
  EXPECT_EQ(summary.value("steps", 0), 40);
  EXPECT_NE(text_of(log()).find("resumed from " + latest), std::string::npos) << text_of(log());
}

// The pipeline's run record: each checkpoint's run.json holds the resolved
// recipe and the library of every plugin; a resume names what changed.
TEST_F(TrainE2E, CheckpointsRecordTheRunAndResumeSaysWhatChanged) {
  const std::string recipe = write_recipe(2, 2);
  ASSERT_EQ(run_mftk({"run", recipe, "--set", "validate.exact_match=0"}, log()), 0) << text_of(log());
  const json record = json::parse(mftk::core::read_file(out() + "/checkpoint-2/run.json"));
  const json resolved = json::parse(mftk::core::read_file(out() + "/recipe.resolved.json"));
  EXPECT_EQ(record.at("recipe"), resolved.at("recipe"));
  EXPECT_FALSE(record.value("mftk_version", "").empty());
  std::map<std::string, json> components;
  for (const auto& c : record.at("components")) components[c.value("table", "")] = c;
  for (const char* table : {"model", "adapter", "packer", "optimizer", "objective"})
    ASSERT_TRUE(components.count(table)) << table << " missing from " << record.dump(2);
  EXPECT_EQ(components["adapter"].value("plugin", ""), "lora");
  EXPECT_NE(components["adapter"].value("library_file", "").find("lora"), std::string::npos) << record.dump(2);
  EXPECT_FALSE(components["adapter"].value("library_version", "").empty()) << record.dump(2);
  EXPECT_NE(mftk::core::read_file(out() + "/checkpoint-2/manifest.json").find("\"run.json\""), std::string::npos);

  // Another adapter rank: refused (exit 2), naming the key and both values.
  const std::string refused_log = dir_.sub("refused.log");
  EXPECT_EQ(run_mftk({"run", recipe, "--set", "validate.exact_match=0", "--set", "training.max_steps=3", "--set",
                      "training.resume_from_checkpoint=latest", "--set", "adapter.r=4"},
                     refused_log),
            2)
      << text_of(refused_log);
  EXPECT_NE(text_of(refused_log).find("adapter.r was 8, this run has 4"), std::string::npos) << text_of(refused_log);

  // Another learning rate: a warning with both values, and the run goes on.
  ASSERT_EQ(run_mftk({"run", recipe, "--set", "validate.exact_match=0", "--set", "training.max_steps=3", "--set",
                      "training.resume_from_checkpoint=latest", "--set", "schedule.learning_rate=0.005"},
                     log()),
            0)
      << text_of(log());
  const std::string text = text_of(log());
  EXPECT_NE(text.find("resume: [schedule] learning_rate was 0.01, now 0.005"), std::string::npos) << text;
  EXPECT_NE(text.find("resume: [training] max_steps was 2, now 3"), std::string::npos) << text;
  EXPECT_EQ(json::parse(mftk::core::read_file(out() + "/summary.json")).value("steps", 0), 3);
}

TEST_F(TrainE2E, KillDuringCheckpointingLeavesALoadableCheckpoint) {
  const std::string recipe = write_recipe(40, 1);
  const pid_t pid = spawn_mftk({"run", recipe}, log());
  ASSERT_GT(pid, 0);
  // After a few checkpoints, strike while a save is in progress if we can catch one.
  const bool some = wait_until([&] { return fs::is_directory(out() + "/checkpoint-3"); }, 90s);
  const bool mid_save = some && wait_until([&] { return has_tmp_checkpoint(out()); }, 2000ms, 50us);
  kill(pid, SIGKILL);
  const int status = wait_status(pid, 30s);
  ASSERT_TRUE(some) << "no checkpoint-3 appeared\n" << text_of(log());
  ASSERT_TRUE(status >= 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run ended before the kill (status " << status << ")\n" << text_of(log());
  if (!mid_save) std::cerr << "note: the kill did not land during a save\n";

  const std::string latest = mftk::core::find_latest_checkpoint(out());
  ASSERT_FALSE(latest.empty());
  EXPECT_GE(json::parse(mftk::core::read_file(latest + "/trainer_state.json")).value("step", 0), 3);
  ASSERT_EQ(run_mftk({"run", recipe, "--set", "training.resume_from_checkpoint=latest"}, log()), 0) << text_of(log());
  EXPECT_NE(text_of(log()).find("resumed from " + latest), std::string::npos) << text_of(log());
  EXPECT_EQ(json::parse(mftk::core::read_file(out() + "/summary.json")).value("steps", 0), 40);
  EXPECT_FALSE(has_tmp_checkpoint(out())) << "a finished run leaves no temporary checkpoint folder";
}

// QLoRA as a person runs it, on the quickstart recipe itself: a bf16 base
// is quantised once with `mftk quantize`, the 4-bit folder is trained on
// directly (loaded as stored, not re-quantised), and the loss stays within
// 5% of LoRA on the bf16 base with the same data and seed. Both compute in
// fp32 (this CPU class may lack native bf16 matmul); the comparison is of
// the base weights, bf16 against their NF4 rounding. The merge after QLoRA
// goes onto the dequantised base and writes a plain checkpoint.
TEST(QloraE2E, QuickstartQloraFromAQuantisedFolderTracksBf16LoraAndMerges) {
  ASSERT_TRUE(fs::exists(kMftk)) << kMftk << " is not built";
  tt::ScratchDir dir("qlora");
  const std::string log = dir.sub("mftk.out");
  const std::string base = dir.sub("base"), base4 = dir.sub("base-nf4");
  ASSERT_EQ(run_mftk({"init", "--preset", "tiny", "--seed", "1", "--dtype", "bf16", "--out", base}, log), 0)
      << text_of(log);
  ASSERT_EQ(run_mftk({"quantize", "--plugin", "nf4", "--model", base, "--out", base4, "--set", "double_quant=true"},
                     log),
            0)
      << text_of(log);
  const json qconfig = json::parse(mftk::core::read_file(base4 + "/config.json"));
  ASSERT_TRUE(qconfig.contains("quantization_config")) << qconfig.dump();
  EXPECT_EQ(qconfig["quantization_config"].value("bnb_4bit_quant_type", ""), "nf4");
  EXPECT_TRUE(qconfig["quantization_config"].value("bnb_4bit_use_double_quant", false));
  EXPECT_LT(fs::file_size(base4 + "/model.safetensors"), fs::file_size(base + "/model.safetensors"));

  const std::string recipe = MFTK_SOURCE_DIR "/configs/quickstart.toml";
  auto train = [&](const std::string& model, const std::string& name) {
    const std::string out = dir.sub(name);
    std::vector<std::string> args = {"run", recipe};
    for (const std::string& s : std::vector<std::string>{
             "model.path=\"" + model + "\"", "datasets[0].path=\"" MFTK_SOURCE_DIR "/data/quickstart/train.jsonl\"",
          "datasets[1].path=\"" MFTK_SOURCE_DIR "/data/quickstart/eval.jsonl\"",
          "data.dataset_prepared_path=\"" + dir.sub("prepared") + "\"", "training.output_dir=\"" + out + "\"",
          std::string("training.max_steps=40"),
          std::string("training.merge_adapter=true"), std::string("validate.exact_match=0")}) {
      args.push_back("--set");
      args.push_back(s);
    }
    const std::string run_log = dir.sub(name + ".out");
    EXPECT_EQ(run_mftk(args, run_log, 600s), 0) << text_of(run_log);
    return out;
  };
  const std::string lora = train(base, "lora"), qlora = train(base4, "qlora");
  // The recipe's [[export]] (out relative: inside output_dir) and its parity line.
  for (const std::string& run : {lora, qlora}) {
    EXPECT_TRUE(fs::is_regular_file(run + "/quickstart-q8_0.gguf")) << run;
    const json summary = json::parse(mftk::core::read_file(run + "/summary.json"));
    ASSERT_TRUE(summary.contains("export_parity")) << summary.dump();
    bool gguf_checked = false;
    for (const json& check : summary["export_parity"])
      if (check.value("path", "").find("quickstart-q8_0.gguf") != std::string::npos)
        gguf_checked = check.value("passed", false);
    EXPECT_TRUE(gguf_checked) << summary["export_parity"].dump();
  }
  const std::string qlog = text_of(dir.sub("qlora.out"));
  EXPECT_NE(qlog.find("loaded as stored quantised"), std::string::npos) << qlog;
  EXPECT_NE(qlog.find("merged onto the dequantised base"), std::string::npos) << qlog;

  // The mean training loss of the last logging window (10 steps).
  const std::vector<double> l = logged_losses(lora + "/metrics.jsonl"), q = logged_losses(qlora + "/metrics.jsonl");
  ASSERT_FALSE(l.empty());
  ASSERT_FALSE(q.empty());
  EXPECT_LT(l.back(), 0.5 * l.front()) << "bf16 LoRA did not learn";
  EXPECT_NEAR(q.back(), l.back(), 0.05 * l.back()) << "QLoRA " << q.back() << " vs bf16 LoRA " << l.back();

  // The merged QLoRA model is a plain checkpoint that scores like base + adapter.
  const json merged_config = json::parse(mftk::core::read_file(qlora + "/merged/config.json"));
  EXPECT_FALSE(merged_config.contains("quantization_config"));
  const std::string with_adapter = dir.sub("adapter.json"), merged = dir.sub("merged.json");
  ASSERT_EQ(run_mftk({"logprobs", "--model", base4, "--adapter", qlora + "/adapter", "--tokens", "1,300,301,302,2"},
                     with_adapter),
            0)
      << text_of(with_adapter);
  ASSERT_EQ(run_mftk({"logprobs", "--model", qlora + "/merged", "--tokens", "1,300,301,302,2"}, merged), 0)
      << text_of(merged);
  auto last_json = [&](const std::string& path) {  // stdout's JSON line, after the log lines
    std::istringstream lines(text_of(path));
    json found;
    for (std::string line; std::getline(lines, line);)
      if (!line.empty() && line[0] == '{') found = json::parse(line);
    return found;
  };
  const json a = last_json(with_adapter), m = last_json(merged);
  ASSERT_EQ(a["logprobs"].size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    EXPECT_NEAR(a["logprobs"][i].get<double>(), m["logprobs"][i].get<double>(), 2e-2)  // bf16 merged weights
        << "position " << i;
}

// --------------------------------------------------------------------------
// Fault tests (issue #10): kill -9 in the middle of training, a disk that
// fills during a save, a corrupted checkpoint named in the recipe.

namespace {

// Exit code of a run, or -1 when it did not exit normally in time.

// The adapter a finished run saved, tensor by tensor.
std::map<std::string, at::Tensor> adapter_tensors(const std::string& run_dir) {
  const auto reader = mftk::CheckpointReader::open(run_dir + "/adapter", "adapter_model");
  std::map<std::string, at::Tensor> out;
  for (const auto& name : reader.names()) out[name] = reader.get(name).to(at::kDouble);
  return out;
}

// A tmpfs of `bytes` mounted at `at` for the scope, or the reason it could
// not be (mounting needs CAP_SYS_ADMIN: root on a VM has it, many containers
// do not).
class SmallTmpfs {
 public:
  SmallTmpfs(const std::string& at, size_t bytes) : at_(at) {
    fs::create_directories(at);
    const std::string options = fmt::format("size={},mode=0755", bytes);
    if (mount("tmpfs", at.c_str(), "tmpfs", 0, options.c_str()) == 0) mounted_ = true;
    else why_ = std::strerror(errno);
  }
  ~SmallTmpfs() {
    if (mounted_) umount2(at_.c_str(), MNT_DETACH);
  }
  SmallTmpfs(const SmallTmpfs&) = delete;
  SmallTmpfs& operator=(const SmallTmpfs&) = delete;
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }
  uint64_t free_bytes() const {
    struct statvfs st {};
    return statvfs(at_.c_str(), &st) == 0 ? uint64_t(st.f_bavail) * st.f_frsize : 0;
  }

 private:
  std::string at_, why_;
  bool mounted_ = false;
};

// Writes zeros to `path` until the filesystem has at most `leave` bytes free.
void fill_disk(const SmallTmpfs& disk, const std::string& path, uint64_t leave) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  const std::vector<char> zeros(4096, 0);
  while (disk.free_bytes() > leave) {
    const size_t n = std::min<uint64_t>(zeros.size(), disk.free_bytes() - leave);
    if (write(fd, zeros.data(), n) <= 0) break;
  }
  close(fd);
}

std::vector<json> metrics_lines(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

uint64_t folder_bytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) total += e.file_size();
  return total;
}

}  // namespace

TEST_F(TrainE2E, KillMinus9MidTrainingThenResumeLatestEndsWithTheUninterruptedWeights) {
  const std::string recipe = write_recipe(40, 2);
  const std::string reference = dir_.sub("reference");
  ASSERT_EQ(run_mftk({"run", recipe, "--set", fmt::format("training.output_dir=\"{}\"", reference)}, log()), 0)
      << text_of(log());

  // Kill somewhere between two saves (not on purpose inside one: the test
  // above does that), then resume from whatever "latest" finds.
  const pid_t pid = spawn_mftk({"run", recipe}, log());
  ASSERT_GT(pid, 0);
  const bool some = wait_until([&] { return fs::is_directory(out() + "/checkpoint-6"); }, 90s);
  std::this_thread::sleep_for(30ms);
  kill(pid, SIGKILL);
  const int status = wait_status(pid, 30s);
  ASSERT_TRUE(some) << "no checkpoint-6 appeared\n" << text_of(log());
  ASSERT_TRUE(status >= 0 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the run ended before the kill (status " << status << ")\n" << text_of(log());
  ASSERT_FALSE(fs::exists(out() + "/adapter")) << "killed before the end, yet it saved the final adapter";
  const std::string latest = mftk::core::find_latest_checkpoint(out());
  ASSERT_FALSE(latest.empty());

  ASSERT_EQ(run_mftk({"run", recipe, "--set", "training.resume_from_checkpoint=latest"}, log()), 0) << text_of(log());
  EXPECT_NE(text_of(log()).find("resumed from " + latest), std::string::npos) << text_of(log());
  const auto expected = adapter_tensors(reference);
  const auto resumed = adapter_tensors(out());
  ASSERT_EQ(resumed.size(), expected.size());
  ASSERT_FALSE(expected.empty());
  for (const auto& [name, tensor] : expected) {
    ASSERT_TRUE(resumed.count(name)) << name << " missing from the resumed adapter";
    EXPECT_TRUE(at::equal(resumed.at(name), tensor))  // bit for bit: same threads, same order of every operation
        << name << ": differs by up to " << (resumed.at(name) - tensor).abs().max().item<double>();
  }
  // Every step either run logged (the killed one, the resumed one) is the
  // reference's step: the same loss, gradient norm and lr, to the bit.
  std::map<int64_t, json> reference_steps;
  for (const json& line : metrics_lines(reference + "/metrics.jsonl"))
    if (line.contains("loss")) reference_steps[line.at("step").get<int64_t>()] = line;
  int64_t compared = 0;
  for (const json& line : metrics_lines(out() + "/metrics.jsonl")) {
    if (!line.contains("loss")) continue;
    const int64_t step = line.at("step").get<int64_t>();
    ASSERT_TRUE(reference_steps.count(step)) << "step " << step;
    for (const char* key : {"loss", "grad_norm", "lr"})
      EXPECT_EQ(line.at(key).get<double>(), reference_steps.at(step).at(key).get<double>()) << key << " at step " << step;
    ++compared;
  }
  EXPECT_GE(compared, 40);
  EXPECT_EQ(json::parse(mftk::core::read_file(out() + "/summary.json")).value("steps", 0), 40);
}

TEST_F(TrainE2E, ADiskThatFillsDuringASaveFailsClearlyAndKeepsThePreviousCheckpoint) {
  const std::string recipe = write_recipe(4, 2);
  const std::string disk_dir = dir_.sub("disk");
  SmallTmpfs disk(disk_dir, 64u << 20);
  const std::string run_dir = disk.mounted() ? disk_dir + "/run" : out();
  const std::string on_disk = fmt::format("training.output_dir=\"{}\"", run_dir);
  // Two steps and a checkpoint, with room to spare.
  ASSERT_EQ(run_mftk({"run", recipe, "--set", on_disk, "--set", "training.max_steps=2"}, log()), 0)
      << text_of(log());
  const std::string previous = run_dir + "/checkpoint-2";
  ASSERT_EQ(mftk::core::find_latest_checkpoint(run_dir), previous);
  const uint64_t checkpoint_bytes = folder_bytes(previous);

  // Resume for two more steps with room for the run but only for half a checkpoint.
  const std::vector<std::string> resume = {"run", recipe, "--set", on_disk, "--set",
                                           "training.resume_from_checkpoint=latest"};
  std::string full_disk_text;
  int code = -1;
  if (disk.mounted()) {
    fill_disk(disk, disk_dir + "/filler", checkpoint_bytes / 2);
    code = run_mftk(resume, log());
    full_disk_text = "No space left on device";
  } else {
    std::cerr << "note: cannot mount a tmpfs here (" << disk.why()
              << "); a file size limit (RLIMIT_FSIZE) stands in for the full disk\n";
    const auto largest = fs::file_size(previous + "/optimizer.safetensors");
    code = exit_code(wait_status(spawn_mftk(resume, log(), rlim_t(largest / 2)), 120s));
    full_disk_text = "File too large";
  }
  const std::string text = text_of(log());
  EXPECT_EQ(code, 1) << text;
  // The message says what failed, where, and why.
  EXPECT_NE(text.find(full_disk_text), std::string::npos) << text;
  EXPECT_NE(text.find(run_dir), std::string::npos) << "the message should name the output folder\n" << text;
  EXPECT_NE(text.find("checkpoint"), std::string::npos) << text;
  // The previous checkpoint is intact and still the one "latest" picks.
  EXPECT_FALSE(fs::exists(run_dir + "/checkpoint-4"));
  EXPECT_EQ(mftk::core::find_latest_checkpoint(run_dir), previous);

  // With room again, the run resumes from it and finishes.
  fs::remove(disk_dir + "/filler");
  ASSERT_EQ(run_mftk(resume, log()), 0) << text_of(log());
  EXPECT_NE(text_of(log()).find("resumed from " + previous), std::string::npos) << text_of(log());
  EXPECT_EQ(json::parse(mftk::core::read_file(run_dir + "/summary.json")).value("steps", 0), 4);
}

TEST_F(TrainE2E, ACorruptedCheckpointNamedInTheRecipeIsRefusedWithItsChecksum) {
  const std::string recipe = write_recipe(4, 2);
  ASSERT_EQ(run_mftk({"run", recipe, "--set", "training.max_steps=2"}, log()), 0) << text_of(log());
  const std::string checkpoint = out() + "/checkpoint-2";
  const std::string file = checkpoint + "/trainable.safetensors";
  ASSERT_TRUE(fs::is_regular_file(file));
  {  // One flipped bit in the tensor data: same size, valid header, wrong numbers.
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    const auto at = std::streamoff(fs::file_size(file) - 7);
    f.seekg(at);
    char c = 0;
    f.read(&c, 1);
    c = char(c ^ 0x10);
    f.seekp(at);
    f.write(&c, 1);
  }
  std::ofstream(log(), std::ios::trunc).close();
  const int code =
      run_mftk({"run", recipe, "--set", fmt::format("training.resume_from_checkpoint=\"{}\"", checkpoint)}, log());
  const std::string text = text_of(log());
  EXPECT_EQ(code, 1) << text;
  EXPECT_NE(text.find(checkpoint), std::string::npos) << text;
  EXPECT_NE(text.find("trainable.safetensors does not match its checksum"), std::string::npos) << text;
  EXPECT_EQ(text.find("resumed from"), std::string::npos) << "it trained on from the damaged checkpoint\n" << text;
}
