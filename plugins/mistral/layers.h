// The small pieces of a Mistral block, each exactly as transformers'
// modeling_mistral.py computes it (docs/formats.md §2.3, §2.4, Mistral block, RoPE).
//
// defines: mftk::mistral::rms_norm, mftk::mistral::RotaryEmbedding,
//          mftk::mistral::rotate_half, mftk::mistral::apply_rotary
#pragma once

#include <cstdint>
#include <utility>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "mftk/tensor.h"

namespace mftk::mistral {

// x * rsqrt(mean(x^2) + eps) in fp32, cast back to x's dtype, then times
// weight (cast to x's dtype). No "+1" offset on the weight.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// Rotary position embedding, HF "rotate_half" (non-interleaved) layout:
// dimension i < D/2 is paired with i + D/2 and turned by p * inv_freq[i].
class RotaryEmbedding {
 public:
  RotaryEmbedding() = default;
  RotaryEmbedding(int64_t head_dim, double theta, at::Device device);
  // position_ids [B, T] (int) -> cos, sin [B, T, D], computed in fp32 and
  // cast to `dtype`.
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids,
                                            at::ScalarType dtype) const;
  const at::Tensor& inv_freq() const { return inv_freq_; }

 private:
  at::Tensor inv_freq_;  // [D/2] fp32: 1 / theta^(2j/D)
};

// concat(-x[..., D/2:], x[..., :D/2])
at::Tensor rotate_half(const at::Tensor& x);
// x * cos + rotate_half(x) * sin; cos/sin broadcast against x [..., D].
at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace mftk::mistral
