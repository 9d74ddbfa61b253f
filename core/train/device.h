// Where a run computes: the [training] device setting, what it resolves to
// on this machine and this libtorch, and the small helpers that keep the
// trainer's tensors on the model's device.
//
// defines: mftk::core::DeviceSetting, mftk::core::parse_device_setting, mftk::core::check_device_setting,
//          mftk::core::CudaSupport, mftk::core::cuda_support, mftk::core::resolve_device,
//          mftk::core::model_device, mftk::core::batch_to_device
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "mftk/batch.h"
#include "mftk/config.h"

namespace mftk {
class Model;
}

namespace mftk::core {

// `[training] device`: "auto", "cpu", "cuda" or "cuda:N".
struct DeviceSetting {
  enum class Kind { automatic, cpu, cuda };
  Kind kind = Kind::automatic;
  std::optional<int> index;  // cuda:N only
  std::string text;          // as written
};

// nullopt when `text` is none of the four forms.
std::optional<DeviceSetting> parse_device_setting(const std::string& text);
// Recipe validation: appends "file:line:col: [training] device: ..." to `errors` when the value does not parse.
void check_device_setting(const Config& training, std::vector<std::string>& errors);

// What this process can use: whether the libtorch it runs on was built with
// CUDA (its CUDA runtime registered itself), and how many GPUs it sees.
struct CudaSupport {
  bool built_with_cuda = false;
  int visible_gpus = 0;
};
CudaSupport cuda_support();

// The device a run uses. auto: cuda when `cuda` has a GPU, else cpu. Under
// data parallelism (world_size > 1) rank r takes cuda:local_rank. Throws
// UsageError (exit 2) naming what is missing (a CUDA libtorch, a visible
// GPU, GPU N) and the fix, for cuda / cuda:N that cannot be had.
c10::Device resolve_device(const DeviceSetting& setting, const CudaSupport& cuda, int world_size = 1,
                           int local_rank = 0);

// The device of the model's weights (its first tensor; cpu for a model without any).
c10::Device model_device(Model& model);
// The batch's tensors on `device` (the same tensors when they are there already).
Batch batch_to_device(const Batch& batch, c10::Device device);

}  // namespace mftk::core
