// The [training] device setting and what it becomes on this machine. The
// messages say which of the two things a GPU run needs is missing (a libtorch
// built with CUDA, a GPU it can see), because the fixes differ.
#include "device.h"

#include <cstdlib>
#include <regex>

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <fmt/format.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include "mftk/error.h"
#include "mftk/model.h"

namespace mftk::core {

namespace {

constexpr const char* kDeviceHint =
    "set [training] device = \"cpu\" (or \"auto\", which takes a GPU only when there is one); README \"Running on a "
    "GPU\" says how to build mftk against a CUDA libtorch";

std::string visible_devices_note() {
  const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
  return v ? fmt::format(" (CUDA_VISIBLE_DEVICES=\"{}\")", v) : "";
}

}  // namespace

std::optional<DeviceSetting> parse_device_setting(const std::string& text) {
  DeviceSetting s;
  s.text = text;
  if (text == "auto") return s;
  if (text == "cpu") {
    s.kind = DeviceSetting::Kind::cpu;
    return s;
  }
  static const std::regex cuda(R"(cuda(:([0-9]{1,4}))?)");
  std::smatch m;
  if (!std::regex_match(text, m, cuda)) return std::nullopt;
  s.kind = DeviceSetting::Kind::cuda;
  if (m[2].matched) s.index = std::stoi(m[2]);
  return s;
}

void check_device_setting(const Config& training, std::vector<std::string>& errors) {
  if (!training.has("device")) return;
  const std::string& value = training.get_string("device");
  if (parse_device_setting(value)) return;
  errors.push_back(fmt::format("{}: [training] device: \"{}\" is not a device: use \"auto\", \"cpu\", \"cuda\" or "
                               "\"cuda:N\" (N: the GPU's index)",
                               training.where("device").str(), value));
}

CudaSupport cuda_support() {
  CudaSupport c;
  // libtorch's CUDA library registers the CUDA device guard when it loads; a
  // CPU-only libtorch (Debian's) never does.
  c.built_with_cuda = c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA);
  if (c.built_with_cuda) c.visible_gpus = int(torch::cuda::device_count());
  return c;
}

c10::Device resolve_device(const DeviceSetting& setting, const CudaSupport& cuda, int world_size, int local_rank) {
  if (setting.kind == DeviceSetting::Kind::cpu) return c10::Device(c10::kCPU);
  const bool usable = cuda.built_with_cuda && cuda.visible_gpus > 0;
  if (setting.kind == DeviceSetting::Kind::automatic && !usable) return c10::Device(c10::kCPU);
  if (!cuda.built_with_cuda)
    throw UsageError(fmt::format("[training] device = \"{}\": this mftk runs on a libtorch built without CUDA "
                                 "(libtorch {}, CPU only), so no GPU can be used",
                                 setting.text, TORCH_VERSION),
                     kDeviceHint);
  if (cuda.visible_gpus == 0)
    throw UsageError(fmt::format("[training] device = \"{}\": the libtorch has CUDA, but no GPU is visible to this "
                                 "process{}",
                                 setting.text, visible_devices_note()),
                     fmt::format("check nvidia-smi and CUDA_VISIBLE_DEVICES; or {}", kDeviceHint));
  int index = 0;
  if (setting.index) {
    if (world_size > 1)
      throw UsageError(fmt::format("[training] device = \"{}\" pins all {} ranks to one GPU", setting.text, world_size),
                       "use device = \"cuda\" (or \"auto\"): under mftk launch / torchrun each rank takes "
                       "cuda:LOCAL_RANK");
    index = *setting.index;
  } else if (world_size > 1) {
    index = local_rank;
  }
  if (index >= cuda.visible_gpus)
    throw UsageError(fmt::format("[training] device = \"{}\": {} asks for GPU {}, but {} GPU{} visible{}",
                                 setting.text, world_size > 1 && !setting.index
                                                   ? fmt::format("rank with LOCAL_RANK={}", local_rank)
                                                   : std::string("the recipe"),
                                 index, cuda.visible_gpus, cuda.visible_gpus == 1 ? " is" : "s are",
                                 visible_devices_note()),
                     world_size > 1 ? "start at most one rank per GPU on each machine (mftk launch --nproc N)"
                                    : fmt::format("use an index below {}", cuda.visible_gpus));
  return c10::Device(c10::kCUDA, c10::DeviceIndex(index));
}

c10::Device model_device(Model& model) {
  for (const auto& [name, t] : model.named_parameters())
    if (t.defined()) return t.device();
  for (auto* slot : model.linear_slots())
    for (const auto& [name, t] : slot->op->parameters())
      if (t.defined()) return t.device();
  return c10::Device(c10::kCPU);
}

Batch batch_to_device(const Batch& batch, c10::Device device) {
  auto move = [&](const at::Tensor& t) { return t.defined() && t.device() != device ? t.to(device) : t; };
  return Batch{move(batch.input_ids), move(batch.targets), move(batch.position_ids), move(batch.doc_ids)};
}

}  // namespace mftk::core
