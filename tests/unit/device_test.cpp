// [training] device: the setting's forms, what it resolves to for every
// combination of libtorch and GPUs (a CudaSupport stands in for the
// machine), and, end to end with the mftk binary, that device = "cuda" on
// this machine stops with exit 2 naming what is missing while device = "cpu"
// trains exactly as a recipe without the key.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "device.h"
#include "mftk/error.h"
#include "plan.h"
#include "recipe.h"
#include "registry.h"

namespace fs = std::filesystem;
using mftk::core::CudaSupport;
using mftk::core::DeviceSetting;
using mftk::core::parse_device_setting;
using mftk::core::resolve_device;

namespace {

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// The message of the UsageError `f` throws ("" when it throws none).
template <class F>
std::string usage_error_of(F f) {
  try {
    f();
  } catch (const mftk::UsageError& e) {
    return e.what() + std::string("\nhint: ") + e.hint();
  }
  return "";
}

DeviceSetting setting(const std::string& text) {
  auto s = parse_device_setting(text);
  if (!s) throw std::runtime_error("unparsed: " + text);
  return *s;
}

}  // namespace

TEST(DeviceSetting, ParsesTheFourForms) {
  EXPECT_EQ(setting("auto").kind, DeviceSetting::Kind::automatic);
  EXPECT_EQ(setting("cpu").kind, DeviceSetting::Kind::cpu);
  EXPECT_EQ(setting("cuda").kind, DeviceSetting::Kind::cuda);
  EXPECT_FALSE(setting("cuda").index.has_value());
  EXPECT_EQ(setting("cuda:0").index, 0);
  EXPECT_EQ(setting("cuda:13").index, 13);
  for (const char* bad : {"gpu", "CUDA", "cuda:", "cuda:-1", "cuda:0:1", "cpu ", "", "cuda0", "mps", "cuda:x"})
    EXPECT_FALSE(parse_device_setting(bad).has_value()) << bad;
}

TEST(DeviceSetting, ARecipeWithAnUnknownDeviceIsAnErrorNamingTheKey) {
  const std::string e = usage_error_of([] { mftk::core::Recipe::parse("[training]\ndevice = \"gpu\"\n", "r.toml"); });
  EXPECT_NE(e.find("r.toml:2:"), std::string::npos) << e;
  EXPECT_NE(e.find("[training] device"), std::string::npos) << e;
  EXPECT_NE(e.find("\"gpu\""), std::string::npos) << e;
  // The same through --set; and the good forms load.
  EXPECT_NE(usage_error_of([] { mftk::core::Recipe::parse("", "r.toml", {"training.device=cuda:"}); })
                .find("[training] device"),
            std::string::npos);
  for (const char* good : {"auto", "cpu", "cuda", "cuda:3"})
    EXPECT_EQ(usage_error_of([&] { mftk::core::Recipe::parse(fmt::format("[training]\ndevice = \"{}\"\n", good), "r.toml"); }),
              "")
        << good;
  EXPECT_EQ(mftk::core::Recipe::parse("", "r.toml").section("training").get_string("device"), "auto");
}

TEST(DeviceResolution, FollowsTheSettingTheLibtorchAndTheGpus) {
  const CudaSupport cpu_only{false, 0}, cuda_no_gpu{true, 0}, two_gpus{true, 2};
  const c10::Device cpu(c10::kCPU);
  // cpu is cpu whatever the machine has; auto takes a GPU only when one is usable.
  EXPECT_EQ(resolve_device(setting("cpu"), two_gpus), cpu);
  EXPECT_EQ(resolve_device(setting("auto"), cpu_only), cpu);
  EXPECT_EQ(resolve_device(setting("auto"), cuda_no_gpu), cpu);
  EXPECT_EQ(resolve_device(setting("auto"), two_gpus), c10::Device(c10::kCUDA, 0));
  EXPECT_EQ(resolve_device(setting("cuda"), two_gpus), c10::Device(c10::kCUDA, 0));
  EXPECT_EQ(resolve_device(setting("cuda:1"), two_gpus), c10::Device(c10::kCUDA, 1));
  // Data parallelism: each rank takes cuda:LOCAL_RANK (auto and cuda alike); cpu ranks stay on the cpu.
  EXPECT_EQ(resolve_device(setting("cuda"), two_gpus, 2, 1), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(resolve_device(setting("auto"), two_gpus, 4, 1), c10::Device(c10::kCUDA, 1));
  EXPECT_EQ(resolve_device(setting("auto"), cpu_only, 4, 3), cpu);
  EXPECT_EQ(resolve_device(setting("cpu"), two_gpus, 2, 1), cpu);
}

TEST(DeviceResolution, SaysWhatIsMissingWhenAGpuCannotBeHad) {
  const std::string no_cuda = usage_error_of([] { resolve_device(setting("cuda"), CudaSupport{false, 0}); });
  EXPECT_NE(no_cuda.find("built without CUDA"), std::string::npos) << no_cuda;
  EXPECT_NE(no_cuda.find("device = \"cpu\""), std::string::npos) << no_cuda;  // the fix
  const std::string no_gpu = usage_error_of([] { resolve_device(setting("cuda:0"), CudaSupport{true, 0}); });
  EXPECT_NE(no_gpu.find("no GPU is visible"), std::string::npos) << no_gpu;
  EXPECT_EQ(no_gpu.find("without CUDA"), std::string::npos) << no_gpu;
  const std::string too_high = usage_error_of([] { resolve_device(setting("cuda:2"), CudaSupport{true, 2}); });
  EXPECT_NE(too_high.find("GPU 2"), std::string::npos) << too_high;
  EXPECT_NE(too_high.find("2 GPUs are visible"), std::string::npos) << too_high;
  // A rank beyond the machine's GPUs, and one index pinned for every rank.
  EXPECT_NE(usage_error_of([] { resolve_device(setting("cuda"), CudaSupport{true, 2}, 4, 2); }).find("LOCAL_RANK=2"),
            std::string::npos);
  EXPECT_NE(usage_error_of([] { resolve_device(setting("cuda:0"), CudaSupport{true, 2}, 2, 0); }).find("pins all 2"),
            std::string::npos);
}

TEST(DeviceResolution, ACpuBatchStaysTheSameTensors) {
  // device = "cpu" must change nothing: the trainer's move is the identity there.
  mftk::Batch b{at::arange(6).view({1, 6}), at::arange(6).view({1, 6}), at::arange(6).view({1, 6}),
                at::zeros({1, 6}, at::kInt)};
  const mftk::Batch moved = mftk::core::batch_to_device(b, c10::Device(c10::kCPU));
  EXPECT_TRUE(moved.input_ids.is_same(b.input_ids));
  EXPECT_TRUE(moved.targets.is_same(b.targets));
  EXPECT_TRUE(moved.position_ids.is_same(b.position_ids));
  EXPECT_TRUE(moved.doc_ids.is_same(b.doc_ids));
}

TEST(DevicePlan, PlacementFollowsTheDeviceAndThePagedOptimizer) {
  using mftk::core::PlanDevice;
  using Placement = std::vector<std::pair<std::string, std::string>>;
  EXPECT_EQ(mftk::core::plan_placement(PlanDevice::cuda, /*optimizer_state_on_host=*/false),
            (Placement{{"weights", "cuda"}, {"trainable", "cuda"}, {"optimizer_state", "cuda"},
                       {"activations", "cuda"}, {"data", "cpu"}}));
  // The 8-bit state lives in host pages, copied to the GPU per update.
  EXPECT_EQ(mftk::core::plan_placement(PlanDevice::cuda, /*optimizer_state_on_host=*/true)[2],
            (std::pair<std::string, std::string>{"optimizer_state", "cpu"}));
  for (const auto& [part, where] : mftk::core::plan_placement(PlanDevice::cpu, false)) EXPECT_EQ(where, "cpu") << part;
  // Which optimizer keeps host pages is its own planning hook's answer.
  mftk::core::Registry registry;
  mftk::core::TrainingFacts t;
  for (const auto& [name, on_host] : std::vector<std::pair<std::string, bool>>{
           {"paged_adamw_8bit", true}, {"adamw_8bit", false}, {"adamw", false}}) {
    t.optimizer = name;
    mftk::core::ask_planning_hooks(t, nullptr, registry);
    EXPECT_EQ(t.optimizer_state_on_host, on_host) << name;
  }
  // plan's default device is where the recipe's setting puts the run on this machine.
  EXPECT_EQ(mftk::core::plan_device_for("cuda:1"), PlanDevice::cuda);
  EXPECT_EQ(mftk::core::plan_device_for("cpu"), PlanDevice::cpu);
  const CudaSupport here = mftk::core::cuda_support();
  EXPECT_EQ(mftk::core::plan_device_for("auto"),
            here.built_with_cuda && here.visible_gpus > 0 ? PlanDevice::cuda : PlanDevice::cpu);
}

// ---------------------------------------------------------------------------
// End to end: the mftk binary on a tiny checkpoint.

class DeviceRun : public testing::Test {
 public:
  static void SetUpTestSuite() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_device_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    ASSERT_EQ(run({"init", "--preset", "tiny", "--layers", "2", "--seed", "5", "--out", (dir_ / "base").string()},
                  "init"),
              0)
        << read_text(dir_ / "init.log");
    std::string rows;
    for (const char* w : {"apple", "river", "stone", "cloud", "green", "seven", "paper", "light"})
      rows += nlohmann::json{{"instruction", fmt::format("Say {} twice.", w)}, {"output", fmt::format("{} {}", w, w)}}
                  .dump() +
              "\n";
    std::ofstream(dir_ / "train.jsonl") << rows;
  }
  static void TearDownTestSuite() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

 protected:
  // mftk with `args`; output in dir_/<name>.log; the exit code.
  static int run(const std::vector<std::string>& args, const std::string& name) {
    using namespace mftk::child_process;
    const pid_t pid = spawn(mftk_binary(), args, (dir_ / (name + ".log")).string(), {{{"MFTK_THREADS", "1"}}});
    return exit_code(wait_status(pid, std::chrono::minutes(3)));
  }
  // A LoRA recipe of two steps, with `device_line` in [training]; returns its path.
  static std::string recipe(const std::string& name, const std::string& device_line) {
    const fs::path path = dir_ / (name + ".toml");
    std::ofstream(path) << fmt::format(R"([model]
plugin = "mistral"
path = "{0}/base"

[[datasets]]
path = "{0}/train.jsonl"
type = "instruction"

[data]
dataset_prepared_path = "{0}/prepared"

[adapter]
plugin = "lora"
dropout = 0.1

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 2
tensorboard = false
output_dir = "{0}/out-{1}"
{2}
)",
                                       dir_.string(), name, device_line);
    return path.string();
  }

  static inline fs::path dir_;
};

TEST_F(DeviceRun, CudaWithoutCudaStopsWithExit2NamingWhatIsMissing) {
  const CudaSupport here = mftk::core::cuda_support();
  if (here.built_with_cuda && here.visible_gpus > 0) GTEST_SKIP() << "this machine has a GPU";
  EXPECT_EQ(run({"run", recipe("cuda", "device = \"cuda\"")}, "cuda"), 2);
  const std::string log = read_text(dir_ / "cuda.log");
  EXPECT_NE(log.find(here.built_with_cuda ? "no GPU is visible" : "libtorch built without CUDA"), std::string::npos)
      << log;
  EXPECT_NE(log.find("device = \"cpu\""), std::string::npos) << log;  // the fix is named
  EXPECT_FALSE(fs::exists(dir_ / "out-cuda" / "adapter")) << "nothing was trained";
}

TEST_F(DeviceRun, CpuTrainsBitwiseAsARecipeWithoutTheKey) {
  ASSERT_EQ(run({"run", recipe("nokey", "")}, "nokey"), 0) << read_text(dir_ / "nokey.log");
  ASSERT_EQ(run({"run", recipe("cpu", "device = \"cpu\"")}, "cpu"), 0) << read_text(dir_ / "cpu.log");
  EXPECT_NE(read_text(dir_ / "cpu.log").find(") on cpu"), std::string::npos);
  const auto loss = [](const std::string& name) {
    return nlohmann::json::parse(read_text(dir_ / ("out-" + name) / "summary.json")).at("final_loss").get<double>();
  };
  EXPECT_TRUE(std::isfinite(loss("cpu")));
  EXPECT_EQ(loss("nokey"), loss("cpu"));  // the same double, not merely close
  // The trained adapter weights, byte for byte.
  const auto weights = [](const std::string& name) {
    return read_text(dir_ / ("out-" + name) / "checkpoint-2" / "trainable.safetensors");
  };
  EXPECT_FALSE(weights("cpu").empty());
  EXPECT_EQ(weights("nokey"), weights("cpu"));
  // The run's observed placement is what `mftk plan` predicts for the same recipe.
  const auto summary = nlohmann::json::parse(read_text(dir_ / "out-cpu" / "summary.json"));
  EXPECT_EQ(summary.at("device"), "cpu");
  ASSERT_EQ(run({"plan", recipe("cpu", "device = \"cpu\""), "--json", (dir_ / "plan-cpu.json").string()}, "plan-cpu"),
            0)
      << read_text(dir_ / "plan-cpu.log");
  const auto plan = nlohmann::json::parse(read_text(dir_ / "plan-cpu.json"));
  EXPECT_EQ(plan.at("device"), "cpu");
  EXPECT_EQ(plan.at("placement"), summary.at("placement"));
}

TEST_F(DeviceRun, PlanOfACudaRecipeSaysWhatLivesOnTheGpu) {
  // A plan is a prediction: it answers for a GPU run even where the run itself would stop.
  ASSERT_EQ(run({"plan", recipe("cuda-plan", "device = \"cuda\""), "--json", (dir_ / "plan-cuda.json").string()},
                "plan-cuda"),
            0)
      << read_text(dir_ / "plan-cuda.log");
  const auto plan = nlohmann::json::parse(read_text(dir_ / "plan-cuda.json"));
  EXPECT_EQ(plan.at("device"), "cuda");
  EXPECT_EQ(plan.at("placement").at("weights"), "cuda");
  EXPECT_EQ(plan.at("placement").at("optimizer_state"), "cuda");
  EXPECT_EQ(plan.at("placement").at("data"), "cpu");
  const std::string text = read_text(dir_ / "plan-cuda.log");
  // Measuring that plan needs the GPU itself: here it stops, naming what is missing.
  const CudaSupport here = mftk::core::cuda_support();
  if (!(here.built_with_cuda && here.visible_gpus > 0)) {
    EXPECT_EQ(run({"plan", recipe("cuda-plan", "device = \"cuda\""), "--measure", "1"}, "plan-cuda-measure"), 2);
    const std::string measure = read_text(dir_ / "plan-cuda-measure.log");
    EXPECT_NE(measure.find(here.built_with_cuda ? "no GPU is visible" : "built without CUDA"), std::string::npos)
        << measure;
  }
  EXPECT_NE(text.find("placement: weights, trainable, optimizer_state, activations on the GPU; data in host memory"),
            std::string::npos)
      << text;
}
