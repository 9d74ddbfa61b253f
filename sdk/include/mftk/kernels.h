// Which kernel a numerics routine runs: the fast CPU kernel that reads raw
// host memory (data_ptr, AVX2), or the device-generic one written only with
// libtorch tensor ops, which runs wherever the tensors live (CPU, CUDA, ...).
//
// defines: mftk::generic_kernels, mftk::use_generic_path, mftk::ScopedGenericKernels,
//          mftk::signed_dynamic_map_tensor, mftk::unsigned_dynamic_map_tensor,
//          mftk::nearest_dynamic_codes
//
// The generic path is taken for any tensor off the CPU, and on the CPU when
// the environment sets MFTK_GENERIC_KERNELS=1 (read once; logged once), so
// the code an accelerator runs is exercised and compared on a CPU-only
// machine. The fast CPU kernels stay the default.
//
// Generic twins exist for: NF4 quantisation, dequantisation and double
// quantisation (plugins/nf4/nf4_generic.h), the 8-bit and 32-bit AdamW
// updates (plugins/paged_adamw_8bit), the dynamic-map code search (below),
// and the attention plan's block bounds (plugins/mistral/attention.cpp).
// Already tensor ops only, so the same on every device: the fused
// cross-entropy (core/train/linear_cross_entropy.cpp) and the attention masks.
// Left on the CPU on purpose, being host data by nature: the packers and
// make_batch (std::vector rows -> tensors; the trainer moves batches), the
// 8-bit optimizer's host pages and its state()/load_state() copies, and
// file I/O (safetensors, checkpoints, GGUF/AWQ/NF4 exports).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace mftk {

// True when the generic kernels are forced on the CPU: MFTK_GENERIC_KERNELS=1,
// or a ScopedGenericKernels in force.
bool generic_kernels();

// Whether a kernel over `t` takes the generic path.
inline bool use_generic_path(const at::Tensor& t) { return !t.device().is_cpu() || generic_kernels(); }

// Forces the choice (on or off) for the life of the object, whatever the
// environment says; tests run both paths in one process with it. Scopes
// nest; not meant to be flipped while another thread runs kernels.
class ScopedGenericKernels {
 public:
  explicit ScopedGenericKernels(bool on);
  ~ScopedGenericKernels();
  ScopedGenericKernels(const ScopedGenericKernels&) = delete;
  ScopedGenericKernels& operator=(const ScopedGenericKernels&) = delete;

 private:
  int previous_;
};

// --- generic forms of the SDK's own kernels (mftk/dynamic_map.h) ---

// The dynamic maps as float32 [256] tensors on `device`.
at::Tensor signed_dynamic_map_tensor(const c10::Device& device);
at::Tensor unsigned_dynamic_map_tensor(const c10::Device& device);

// nearest_dynamic_code for every element of the float32 tensor x (any
// shape), against `map` (float32 [256]): the same 7-step search with the
// same float32 midpoints and tie rule, as tensor ops. uint8 codes, x's shape
// and device.
at::Tensor nearest_dynamic_codes(const at::Tensor& map, const at::Tensor& x);

}  // namespace mftk
