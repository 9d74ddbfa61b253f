// One NF4-quantised weight: packed nibbles plus the per-block absmax (or
// its double-quantised form), exactly the tensors bitsandbytes keeps in a
// Params4bit and its QuantState.
//
// defines: mftk::nf4::Nf4Tensor, mftk::nf4::quantize_nf4, mftk::nf4::dequantize_nf4,
//          mftk::nf4::nested_map_tensor
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "nf4_kernels.h"

namespace mftk::nf4 {

// The blocksizes bitsandbytes' 4-bit kernels accept: the powers of two from
// 32 to 4096 (bitsandbytes/backends/cuda/ops.py, quantize_4bit and
// dequantize_4bit; 32 only off ROCm, older releases start at 64).
inline constexpr int64_t kMinBlocksize = 32;
inline constexpr int64_t kMaxBlocksize = 4096;
bool is_bitsandbytes_blocksize(int64_t blocksize);

// The number of values of a weight of this shape, or -1 when a dimension is
// not positive or the product does not fit an int64 with room for a block
// of padding (so blocks() and (numel + 1) / 2 cannot overflow either).
int64_t checked_numel(const std::vector<int64_t>& shape);

struct Nf4Tensor {
  std::vector<int64_t> shape;            // of the original weight: [out, in]
  int64_t blocksize = 64;
  at::ScalarType dtype = at::kBFloat16;  // the original weight's dtype (quant_state "dtype")
  at::Tensor packed;                     // uint8 [(numel + 1) / 2], first element in the high nibble
  at::Tensor absmax;                     // float32 [blocks]; undefined with double quantisation
  // Double quantisation (bnb_4bit_use_double_quant); all undefined without it.
  at::Tensor quantized_absmax;           // uint8 [blocks]: codes of absmax - offset
  at::Tensor nested_absmax;              // float32 [ceil(blocks / 256)]
  at::Tensor nested_map;                 // float32 [256], the signed dynamic map
  float offset = 0.0f;                   // mean of the original absmax

  bool double_quant() const { return quantized_absmax.defined(); }
  int64_t numel() const;
  int64_t blocks() const { return (numel() + blocksize - 1) / blocksize; }
  // float32 [blocks]: absmax, or recovered from its double-quantised form.
  at::Tensor block_absmax() const;
  // Bytes held: packed + absmax (or codes + nested absmax; the 1 KiB nested
  // map is shared by every weight and not counted).
  int64_t storage_bytes() const;
  // Throws mftk::Error naming `what` when sizes, dtypes or the blocksize do
  // not fit together (a damaged or foreign checkpoint); checks the shape's
  // element count for overflow before any other size is derived from it.
  void check(const std::string& what) const;
  // The same weight with every part on `device` (what a model placed on an
  // accelerator holds; its kernels then take the generic path).
  Nf4Tensor to(const at::Device& device) const;
};

// Quantises a float32 / bfloat16 / float16 tensor (any shape, read
// row-major). Reads `weight` once and keeps nothing of it. The result lives
// on the weight's device: a CPU weight takes the fast CPU kernels, any other
// (or any under MFTK_GENERIC_KERNELS=1) the libtorch-op ones of nf4_generic.h.
Nf4Tensor quantize_nf4(const at::Tensor& weight, int64_t blocksize, bool double_quant);

// The weight as a dense tensor of `dtype` with the original shape. Float32
// and bfloat16 come straight out of the kernels; other dtypes go through
// float32.
// On the packed weight's device; the generic kernels run off the CPU, and on
// the CPU under MFTK_GENERIC_KERNELS=1 when `path` is automatic.
at::Tensor dequantize_nf4(const Nf4Tensor& weight, at::ScalarType dtype,
                          DequantPath path = DequantPath::automatic);

// The signed dynamic map as a float32 [256] tensor (shared, read-only).
const at::Tensor& nested_map_tensor();

}  // namespace mftk::nf4
