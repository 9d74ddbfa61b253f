// The NF4 kernels of nf4_kernels.h written with libtorch tensor ops only (no
// data_ptr, no intrinsics), so they run wherever the tensors live: on an
// accelerator, and on the CPU under MFTK_GENERIC_KERNELS=1 (mftk/kernels.h).
// Each follows its fast CPU twin operation by operation, every float32 step
// rounded on its own, so the two agree bit for bit (tested in
// GenericKernels.Nf4*).
//
// defines: mftk::nf4::Nf4Blocks, mftk::nf4::quantize_blocks_generic,
//          mftk::nf4::dequantize_blocks_generic, mftk::nf4::DoubleQuantized,
//          mftk::nf4::double_quantize_absmax_generic, mftk::nf4::recover_absmax_generic
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace mftk::nf4 {

struct Nf4Blocks {
  at::Tensor packed;  // uint8 [(n + 1) / 2], first element in the high nibble
  at::Tensor absmax;  // float32 [blocks]
};

// quantize_blocks on a float32 / bfloat16 / float16 tensor of any shape
// (read row-major); results on the tensor's device. Works a slice of blocks
// at a time (as the dequantiser below), so its temporaries stay small.
Nf4Blocks quantize_blocks_generic(const at::Tensor& values, int64_t blocksize);

// dequantize_blocks_f32 / _bf16: n values as `dtype` (Float or BFloat16),
// flat, on packed's device. Works through the weight a slice of blocks at a
// time, so the int64 lookup indices never take more than a few MiB.
at::Tensor dequantize_blocks_generic(const at::Tensor& packed, const at::Tensor& absmax, int64_t n,
                                     int64_t blocksize, at::ScalarType dtype);

struct DoubleQuantized {
  at::Tensor codes;          // uint8 [blocks]
  at::Tensor nested_absmax;  // float32 [ceil(blocks / 256)]
  float offset = 0.0f;
};

// double_quantize_absmax over a float32 [blocks] tensor.
DoubleQuantized double_quantize_absmax_generic(const at::Tensor& absmax);

// recover_absmax: map[codes] * nested_absmax[b / 256] + offset, two roundings.
at::Tensor recover_absmax_generic(const at::Tensor& codes, const at::Tensor& nested_absmax, const at::Tensor& map,
                                  float offset);

}  // namespace mftk::nf4
