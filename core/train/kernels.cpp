// The kernel-path switch (see mftk/kernels.h).
#include "mftk/kernels.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <ATen/ATen.h>

#include "mftk/dynamic_map.h"
#include "mftk/error.h"
#include "mftk/log.h"

namespace mftk {

namespace {

// -1: no override, follow the environment; 0 / 1: forced by a scope.
std::atomic<int> g_override{-1};

bool generic_from_environment() {
  static const bool on = [] {
    const char* value = std::getenv("MFTK_GENERIC_KERNELS");
    const bool set = value != nullptr && std::strcmp(value, "1") == 0;
    if (set) log::info("MFTK_GENERIC_KERNELS=1: generic libtorch kernels on the CPU");
    return set;
  }();
  return on;
}

}  // namespace

bool generic_kernels() {
  const int forced = g_override.load(std::memory_order_relaxed);
  return forced >= 0 ? forced == 1 : generic_from_environment();
}

ScopedGenericKernels::ScopedGenericKernels(bool on)
    : previous_(g_override.exchange(on ? 1 : 0, std::memory_order_relaxed)) {}

ScopedGenericKernels::~ScopedGenericKernels() { g_override.store(previous_, std::memory_order_relaxed); }

namespace {
at::Tensor map_tensor(const DynamicMap& map, const c10::Device& device) {
  return at::tensor(at::ArrayRef<float>(map.data(), map.size()), at::TensorOptions().dtype(at::kFloat)).to(device);
}
}  // namespace

at::Tensor signed_dynamic_map_tensor(const c10::Device& device) { return map_tensor(signed_dynamic_map(), device); }
at::Tensor unsigned_dynamic_map_tensor(const c10::Device& device) {
  return map_tensor(unsigned_dynamic_map(), device);
}

at::Tensor nearest_dynamic_codes(const at::Tensor& map, const at::Tensor& x) {
  MFTK_CHECK(map.numel() == 256, "nearest_dynamic_codes: the map has {} values, expected 256", map.numel());
  MFTK_CHECK(x.scalar_type() == at::kFloat, "nearest_dynamic_codes: x must be float32, got {}",
             c10::toString(x.scalar_type()));
  const at::Tensor values = map.to(x.device(), at::kFloat).reshape({256});
  const auto long_options = x.options().dtype(at::kLong);
  // The state of nearest_dynamic_code's loop, one lane per element.
  at::Tensor pivot = at::full(x.sizes(), 127, long_options);
  at::Tensor upper_pivot = at::full(x.sizes(), 255, long_options);
  at::Tensor lower_pivot = at::zeros(x.sizes(), long_options);
  at::Tensor lower = at::full(x.sizes(), -1.0, x.options());
  at::Tensor upper = at::full(x.sizes(), 1.0, x.options());
  at::Tensor value = values.take(pivot);
  for (int64_t stride = 64; stride > 0; stride >>= 1) {
    const at::Tensor above = at::gt(x, value);  // NaN: false, so NaN walks down to code 0
    lower_pivot = at::where(above, pivot, lower_pivot);
    lower = at::where(above, value, lower);
    upper_pivot = at::where(above, upper_pivot, pivot);
    upper = at::where(above, upper, value);
    pivot = at::where(above, pivot + stride, pivot - stride);
    value = values.take(pivot);
  }
  upper = at::where(upper_pivot == 255, values.select(0, 255), upper);
  lower = at::where(lower_pivot == 0, values.select(0, 0), lower);
  const at::Tensor above = at::gt(x, value);
  // (a + b) * 0.5f, each step rounded to float32 as in the scalar search.
  const at::Tensor upper_mid = (upper + value) * 0.5;
  const at::Tensor lower_mid = (lower + value) * 0.5;
  const at::Tensor code = at::where(above, at::where(at::gt(x, upper_mid), upper_pivot, pivot),
                                    at::where(at::lt(x, lower_mid), lower_pivot, pivot));
  return code.to(at::kByte);
}

}  // namespace mftk
