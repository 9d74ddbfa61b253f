// Data-parallel training (core/train/distributed.cpp, the trainer's DP path, mftk
// launch). In process: the environment parsing, the rendezvous timeout, and
// the bucketed all-reduce / broadcast / scalar sum on two ranks in threads
// against sums computed by hand. End to end, with the real binary on a tiny
// LoRA recipe: 2 ranks give the weights of 1 rank with the same global batch
// (also across a resume), metrics are written once, a killed or hung rank
// ends the other with an error naming it within the timeout, launch stops
// the survivors, and a checkpoint refuses another world size.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "distributed.h"
#include "fs_util.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;
using namespace std::chrono_literals;
using mftk::core::Distributed;
using mftk::core::DistributedEnv;

const std::string kMftk = MFTK_BINARY_DIR "/bin/mftk";
using mftk::child_process::exit_code;
using mftk::child_process::wait_status;

// A loopback port nobody holds now (so tests can run side by side).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  EXPECT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

// Sets environment variables for one scope (nullptr: unset), then restores them.
class ScopedEnv {
 public:
  explicit ScopedEnv(std::initializer_list<std::pair<std::string, const char*>> vars) {
    for (const auto& [k, v] : vars) {
      const char* old = std::getenv(k.c_str());
      saved_[k] = old ? std::optional<std::string>(old) : std::nullopt;
      if (v) ::setenv(k.c_str(), v, 1);
      else ::unsetenv(k.c_str());
    }
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v) ::setenv(k.c_str(), v->c_str(), 1);
      else ::unsetenv(k.c_str());
    }
  }

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(DistributedEnv, ReadsTorchrunVariablesAndRejectsBadOnes) {
  {
    ScopedEnv env({{"WORLD_SIZE", nullptr}, {"RANK", nullptr}});
    EXPECT_FALSE(DistributedEnv::from_env().enabled());
  }
  {
    ScopedEnv env({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.5"},
                   {"MASTER_PORT", "29400"}});
    const auto e = DistributedEnv::from_env();
    EXPECT_TRUE(e.enabled());
    EXPECT_EQ(e.world_size, 4);
    EXPECT_EQ(e.rank, 3);
    EXPECT_EQ(e.local_rank, 1);
    EXPECT_EQ(e.master_addr, "10.0.0.5");
    EXPECT_EQ(e.master_port, 29400);
  }
  {
    ScopedEnv env({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1"}});
    EXPECT_NE(error_of([] { DistributedEnv::from_env(); }).find("RANK=2 is not below WORLD_SIZE=2"), std::string::npos);
  }
  {
    ScopedEnv env({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", nullptr}, {"MASTER_PORT", "1"}});
    EXPECT_NE(error_of([] { DistributedEnv::from_env(); }).find("MASTER_ADDR is not set"), std::string::npos);
  }
  {
    ScopedEnv env({{"WORLD_SIZE", "two"}});
    EXPECT_NE(error_of([] { DistributedEnv::from_env(); }).find("WORLD_SIZE='two'"), std::string::npos);
  }
}

TEST(DistributedRendezvous, AMissingRankZeroFailsWithinTheTimeoutNamingTheAddress) {
  ASSERT_TRUE(Distributed::available());
  DistributedEnv env;
  env.world_size = 2;
  env.rank = 1;
  env.master_port = free_port();
  const auto t0 = std::chrono::steady_clock::now();
  const std::string err = error_of([&] { Distributed::connect(env, 1500ms); });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(err.find(fmt::format("rendezvous at 127.0.0.1:{} failed", env.master_port)), std::string::npos) << err;
  EXPECT_LT(s, 10.0);
}

// Two ranks in two threads of this process, each with its own TCPStore
// connection and Gloo group. Gradients differ per rank; some are undefined
// on one rank, one on both; a tiny bucket size forces several buckets and a
// dtype change starts another.
TEST(DistributedAllReduce, BucketsSumGradientsAcrossTwoInProcessRanks) {
  ASSERT_TRUE(Distributed::available());
  const int port = free_port();
  auto make_params = [](int rank) {
    mftk::NamedTensors p;
    auto param = [&](const std::string& name, std::vector<int64_t> shape, at::ScalarType dtype, bool with_grad) {
      at::Tensor t = at::zeros(shape, at::TensorOptions().dtype(dtype)).requires_grad_(true);
      if (with_grad) {
        // grad = (rank + 1) * (index + 1) + 0.25 * rank
        at::Tensor g = at::arange(t.numel(), at::TensorOptions().dtype(at::kDouble)).add(1).mul(rank + 1).add(0.25 * rank);
        t.mutable_grad() = g.to(dtype).reshape(shape);
      }
      p.emplace_back(name, t);
    };
    param("a", {3, 4}, at::kFloat, true);
    param("b", {5}, at::kFloat, rank == 1);  // only rank 1 has a gradient
    param("c", {2, 2, 2}, at::kFloat, rank == 0);
    param("d", {7}, at::kFloat, false);       // no gradient anywhere
    param("e", {6}, at::kDouble, true);       // another dtype: another bucket
    param("f", {100}, at::kFloat, true);      // larger than one bucket by itself
    return p;
  };
  std::vector<mftk::NamedTensors> params = {make_params(0), make_params(1)};
  std::vector<std::vector<double>> sums(2);
  std::vector<at::Tensor> broadcast(2);
  std::vector<std::string> errors(2);
  auto rank_main = [&](int rank) {
    try {
      DistributedEnv env;
      env.world_size = 2;
      env.rank = env.local_rank = rank;
      env.master_port = port;
      auto d = Distributed::connect(env, 10s);
      EXPECT_EQ(d->backend(), "gloo");
      d->allreduce_gradients(params[size_t(rank)], "the test all-reduce", /*bucket_bytes=*/64);
      sums[size_t(rank)] = d->sum({1.5 * (rank + 1), double(rank)}, "the test sum");
      broadcast[size_t(rank)] = at::full({4}, double(rank + 10));
      d->broadcast_from_main({{"w", broadcast[size_t(rank)]}}, "the test broadcast");
      d->barrier("the test barrier");
    } catch (const std::exception& e) {
      errors[size_t(rank)] = e.what();
    }
  };
  std::thread t0(rank_main, 0), t1(rank_main, 1);
  t0.join();
  t1.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");

  for (int rank = 0; rank < 2; ++rank) {
    const auto& p = params[size_t(rank)];
    auto grad = [&](size_t i) { return p[i].second.grad(); };
    for (size_t i : {size_t(0), size_t(4), size_t(5)}) {
      // rank 0: (k+1); rank 1: 2(k+1) + 0.25  ->  3(k+1) + 0.25
      ASSERT_TRUE(grad(i).defined()) << p[i].first;
      const at::Tensor flat = grad(i).reshape({-1}).to(at::kDouble);
      for (int64_t k = 0; k < flat.numel(); ++k)
        ASSERT_NEAR(flat[k].item<double>(), 3.0 * double(k + 1) + 0.25, 1e-4) << p[i].first << "[" << k << "]";
      EXPECT_EQ(grad(i).scalar_type(), p[i].second.scalar_type());
    }
    ASSERT_TRUE(grad(1).defined()) << "b is defined on rank 1, so it is on every rank after the sum";
    for (int64_t k = 0; k < 5; ++k) EXPECT_NEAR(grad(1)[k].item<double>(), 2.0 * double(k + 1) + 0.25, 1e-5);
    ASSERT_TRUE(grad(2).defined());
    const at::Tensor c = grad(2).reshape({-1});
    for (int64_t k = 0; k < 8; ++k) EXPECT_NEAR(c[k].item<double>(), double(k + 1), 1e-5);
    EXPECT_FALSE(grad(3).defined()) << "d has no gradient on any rank";
    ASSERT_EQ(sums[size_t(rank)].size(), 2u);
    EXPECT_DOUBLE_EQ(sums[size_t(rank)][0], 4.5);
    EXPECT_DOUBLE_EQ(sums[size_t(rank)][1], 1.0);
    EXPECT_TRUE(at::equal(broadcast[size_t(rank)], at::full({4}, 10.0))) << broadcast[size_t(rank)];
  }
}

// ---------------------------------------------------------------------------
// End to end, with the mftk binary.

namespace {

void write_data(const std::string& dir) {
  const std::vector<std::pair<std::string, std::string>> facts = {
      {"What color is the sky?", "blue"},   {"What color is grass?", "green"},
      {"What color is snow?", "white"},     {"What color is coal?", "black"},
      {"How many legs has a cat?", "four"}, {"How many legs has a bird?", "two"},
      {"What is two plus two?", "four"},    {"What is one plus one?", "two"},
      {"What is the opposite of hot?", "cold"},
  };
  std::ofstream train(dir + "/train.jsonl"), eval(dir + "/eval.jsonl");
  for (size_t i = 0; i < facts.size(); ++i) {
    const std::string line = json{{"instruction", facts[i].first}, {"output", facts[i].second}}.dump() + "\n";
    train << line;
    if (i % 2 == 0) eval << line;
  }
}

// 9 rows, micro_batch_size 1: a global batch of 4 micro-batches makes the
// third step cross into the second epoch, and the last step of an epoch
// leaves rank 1 without a micro-batch of its own in some steps.
std::string recipe_text(const std::string& dir) {
  return fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 4
alpha = 8
dropout = 0.1

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
plugin = "padding"

[optimizer]
plugin = "adamw"

[schedule]
learning_rate = 1e-2
lr_scheduler = "constant"
warmup_steps = 1

[training]
sequence_len = 64
micro_batch_size = 1
gradient_accumulation_steps = 4
max_steps = 4
logging_steps = 1
save_steps = 2
output_dir = "{dir}/run"
seed = 5
threads = 1
distributed_timeout_s = 20
)",
                     fmt::arg("base", tt::tiny_checkpoint(1)), fmt::arg("dir", dir));
}

pid_t spawn_mftk(const std::vector<std::string>& args, const std::string& log,
                 const std::map<std::string, std::string>& env = {}) {
  return mftk::child_process::spawn(kMftk, args, log, {env});
}

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// metrics.jsonl: the training lines (with "loss") by step, failing on a repeated step.
std::map<int64_t, double> losses_by_step(const std::string& metrics) {
  std::map<int64_t, double> out;
  std::ifstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line);
    if (!j.contains("loss")) continue;
    const int64_t step = j["step"].get<int64_t>();
    EXPECT_FALSE(out.count(step)) << "step " << step << " logged twice in " << metrics;
    out[step] = j["loss"].get<double>();
  }
  return out;
}

size_t metric_lines(const std::string& metrics) {
  std::ifstream in(metrics);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) n += !line.empty();
  return n;
}

double max_abs_diff(const std::string& adapter_a, const std::string& adapter_b, double* largest = nullptr) {
  auto a = mftk::CheckpointReader::open(adapter_a + "/adapter_model.safetensors");
  auto b = mftk::CheckpointReader::open(adapter_b + "/adapter_model.safetensors");
  EXPECT_EQ(a.names(), b.names());
  double worst = 0, big = 0;
  for (const auto& n : a.names()) {
    if (!b.contains(n)) continue;
    const at::Tensor x = a.get(n).to(at::kDouble), y = b.get(n).to(at::kDouble);
    worst = std::max(worst, (x - y).abs().max().item<double>());
    big = std::max(big, x.abs().max().item<double>());
  }
  if (largest) *largest = big;
  return worst;
}

template <class Ready>
bool wait_until(Ready ready, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

class DistributedE2E : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kMftk)) << kMftk << " is not built";
    write_data(dir_.str());
    std::ofstream(recipe()) << recipe_text(dir_.str());
  }
  std::string recipe() const { return dir_.sub("recipe.toml"); }
  std::string log(const std::string& name) const { return dir_.sub(name + ".log"); }
  std::string out(const std::string& name) const { return dir_.sub(name); }
  // A rank started by hand, as torchrun would.
  pid_t start_rank(int rank, int port, const std::vector<std::string>& run_args, const std::string& log_name) {
    std::vector<std::string> args = {"run", recipe()};
    args.insert(args.end(), run_args.begin(), run_args.end());
    return spawn_mftk(args, log(log_name),
                      {{"RANK", std::to_string(rank)}, {"LOCAL_RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"},
                       {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)}, {"MFTK_THREADS", "1"}});
  }

  tt::ScratchDir dir_{"dist"};
};

}  // namespace

// The global batch is 4 micro-batches in both: 1 rank x 4 accumulation
// steps, and 2 ranks x 2. Dropout is on: its masks follow the micro-batch,
// not the rank.
TEST_F(DistributedE2E, TwoRanksMatchOneRankWithTheSameGlobalBatchAndResumeExactly) {
  ASSERT_EQ(exit_code(wait_status(spawn_mftk({"run", recipe(), "--output-dir", out("one")}, log("one")), 120s)), 0)
      << text_of(log("one"));
  ASSERT_EQ(exit_code(wait_status(spawn_mftk({"launch", "--nproc", "2", recipe(), "--output-dir", out("two"), "--set",
                                              "training.gradient_accumulation_steps=2"},
                                             log("two")),
                                  120s)),
            0)
      << text_of(log("two"));

  double largest = 0;
  const double diff = max_abs_diff(out("one") + "/adapter", out("two") + "/adapter", &largest);
  EXPECT_LT(diff, 1e-5) << "2-rank LoRA weights differ from the 1-rank run";
  EXPECT_GT(largest, 1e-3) << "the adapters did not train (lora_B starts at zero), so equality proves nothing";

  const auto one = losses_by_step(out("one") + "/metrics.jsonl");
  const auto two = losses_by_step(out("two") + "/metrics.jsonl");
  ASSERT_EQ(two.size(), 4u) << text_of(out("two") + "/metrics.jsonl");
  for (int64_t step = 1; step <= 4; ++step) {
    ASSERT_TRUE(two.count(step)) << "step " << step;
    EXPECT_NEAR(two.at(step), one.at(step), 1e-5) << "step " << step;
  }
  // 4 training lines and the final eval line: the same lines as one rank, none twice.
  EXPECT_EQ(metric_lines(out("two") + "/metrics.jsonl"), metric_lines(out("one") + "/metrics.jsonl"));
  const json s1 = json::parse(mftk::core::read_file(out("one") + "/summary.json"));
  const json s2 = json::parse(mftk::core::read_file(out("two") + "/summary.json"));
  EXPECT_EQ(s2.value("train_tokens", 0), s1.value("train_tokens", -1)) << "summary counts every rank's tokens";
  EXPECT_NEAR(s2.value("eval_loss", 0.0), s1.value("eval_loss", 1.0), 1e-5) << "eval shards add up to the whole";
  const json state = json::parse(mftk::core::read_file(out("two") + "/checkpoint-2/trainer_state.json"));
  EXPECT_EQ(state.value("world_size", 0), 2);

  // Resume the 2-rank run from its step-2 checkpoint (into a fresh folder):
  // it must end where both uninterrupted runs did.
  ASSERT_EQ(exit_code(wait_status(
                spawn_mftk({"launch", "--nproc", "2", recipe(), "--output-dir", out("resumed"), "--set",
                            "training.gradient_accumulation_steps=2", "--set",
                            "training.resume_from_checkpoint=\"" + out("two") + "/checkpoint-2\""},
                           log("resumed")),
                120s)),
            0)
      << text_of(log("resumed"));
  EXPECT_LT(max_abs_diff(out("one") + "/adapter", out("resumed") + "/adapter"), 1e-5);
  EXPECT_EQ(losses_by_step(out("resumed") + "/metrics.jsonl").size(), 2u) << "steps 3 and 4, once each";
}

TEST_F(DistributedE2E, ResumeWithAnotherWorldSizeIsRefused) {
  const std::vector<std::string> two_ranks = {"launch", "--nproc", "2", recipe(), "--output-dir", out("two"),
                                              "--set", "training.gradient_accumulation_steps=2", "--set",
                                              "training.max_steps=2"};
  ASSERT_EQ(exit_code(wait_status(spawn_mftk(two_ranks, log("two")), 120s)), 0) << text_of(log("two"));
  const int code = exit_code(wait_status(
      spawn_mftk({"run", recipe(), "--output-dir", out("two"), "--set", "training.resume_from_checkpoint=\"latest\""},
                 log("one")),
      120s));
  EXPECT_EQ(code, 2) << text_of(log("one"));
  EXPECT_NE(text_of(log("one")).find("checkpoint-2 was written by 2 ranks; this run has 1"), std::string::npos)
      << text_of(log("one"));
  EXPECT_NE(text_of(log("one")).find("mftk launch --nproc 2"), std::string::npos) << text_of(log("one"));
}

// A rank killed mid-run: the survivor must not hang; it ends non-zero with
// a message naming rank 1, well within the timeout.
TEST_F(DistributedE2E, AKilledRankEndsTheOtherWithAnErrorNamingIt) {
  const int port = free_port();
  const std::vector<std::string> args = {"--output-dir", out("run"), "--set", "training.max_steps=1000000", "--set",
                                         "training.gradient_accumulation_steps=2", "--set",
                                         "training.distributed_timeout_s=8"};
  const pid_t r0 = start_rank(0, port, args, "rank0");
  const pid_t r1 = start_rank(1, port, args, "rank1");
  const bool trained = wait_until([&] { return metric_lines(out("run") + "/metrics.jsonl") >= 2; }, 60s);
  kill(r1, SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const int status = wait_status(r0, 30s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  wait_status(r1, 5s);
  ASSERT_TRUE(trained) << text_of(log("rank0")) << text_of(log("rank1"));
  ASSERT_GE(status, 0) << "rank 0 hung after rank 1 died\n" << text_of(log("rank0"));
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status;
  EXPECT_LT(seconds, 8.0 + 5.0) << "within the timeout (plus the heartbeat check)";
  EXPECT_NE(text_of(log("rank0")).find("error: rank 1 stopped responding"), std::string::npos) << text_of(log("rank0"));
}

// A rank that hangs (SIGSTOP: alive, silent) is only caught by the timeout.
TEST_F(DistributedE2E, AHungRankIsReportedWhenTheTimeoutExpires) {
  const int port = free_port();
  const std::vector<std::string> args = {"--output-dir", out("run"), "--set", "training.max_steps=1000000", "--set",
                                         "training.gradient_accumulation_steps=2", "--set",
                                         "training.distributed_timeout_s=3"};
  const pid_t r0 = start_rank(0, port, args, "rank0");
  const pid_t r1 = start_rank(1, port, args, "rank1");
  const bool trained = wait_until([&] { return metric_lines(out("run") + "/metrics.jsonl") >= 2; }, 60s);
  kill(r1, SIGSTOP);
  const auto t0 = std::chrono::steady_clock::now();
  const int status = wait_status(r0, 30s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  kill(r1, SIGKILL);
  wait_status(r1, 5s);
  ASSERT_TRUE(trained) << text_of(log("rank0"));
  ASSERT_GE(status, 0) << "rank 0 hung on a stopped rank 1\n" << text_of(log("rank0"));
  EXPECT_EQ(exit_code(status), 1);
  EXPECT_GE(seconds, 2.5) << "an alive peer is waited for until the timeout";
  EXPECT_LT(seconds, 3.0 + 6.0);
  const std::string text = text_of(log("rank0"));
  EXPECT_NE(text.find("error: rank 1 stopped responding (timeout 3 s)"), std::string::npos) << text;
}

// mftk launch: when one rank is killed, the others are stopped and launch
// exits non-zero naming the rank and the signal.
TEST_F(DistributedE2E, LaunchStopsTheOtherRanksWhenOneIsKilled) {
  const pid_t launcher = spawn_mftk({"launch", "--nproc", "2", recipe(), "--output-dir", out("run"), "--set",
                                     "training.max_steps=1000000", "--set", "training.gradient_accumulation_steps=2"},
                                    log("launch"));
  int early_status = 0;
  bool ended_early = false;
  const bool trained = wait_until(
      [&] {
        ended_early = waitpid(launcher, &early_status, WNOHANG) == launcher;
        return ended_early || metric_lines(out("run") + "/metrics.jsonl") >= 2;
      },
      60s);
  ASSERT_FALSE(ended_early) << "launch ended before training (status " << early_status << ")\n" << text_of(log("launch"));
  ASSERT_TRUE(trained) << text_of(log("launch"));
  // Rank 1 is the child of launch whose environment says RANK=1.
  pid_t rank1 = -1;
  std::istringstream children(text_of(fmt::format("/proc/{}/task/{}/children", launcher, launcher)));
  for (pid_t child; children >> child;)
    if (text_of(fmt::format("/proc/{}/environ", child)).find(std::string("RANK=1\0", 7)) != std::string::npos)
      rank1 = child;
  ASSERT_GT(rank1, 0) << "no rank-1 child of launch";
  kill(rank1, SIGKILL);
  const int status = wait_status(launcher, 30s);
  ASSERT_GE(status, 0) << "launch did not end\n" << text_of(log("launch"));
  EXPECT_NE(exit_code(status), 0);
  const std::string text = text_of(log("launch"));
  EXPECT_NE(text.find("launch: rank 1 was killed by signal 9"), std::string::npos) << text;
}
