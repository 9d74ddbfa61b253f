#include "layers.h"

#include <ATen/ATen.h>

namespace mftk::mistral {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const auto input_dtype = x.scalar_type();
  const at::Tensor x32 = x.to(at::kFloat);
  const at::Tensor variance = x32.pow(2).mean(-1, /*keepdim=*/true);
  const at::Tensor normed = (x32 * at::rsqrt(variance + eps)).to(input_dtype);
  return weight.to(input_dtype) * normed;
}

RotaryEmbedding::RotaryEmbedding(int64_t head_dim, double theta, at::Device device) {
  // transformers: 1.0 / (base ** (arange(0, dim, 2, int64).float() / dim)).
  const at::Tensor exponent =
      at::arange(0, head_dim, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
      static_cast<double>(head_dim);
  inv_freq_ = at::reciprocal(at::pow(theta, exponent)).to(device);
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::cos_sin(const at::Tensor& position_ids,
                                                            at::ScalarType dtype) const {
  // Each angle is one fp32 product p * inv_freq[j], as in HF's outer product.
  const at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq_;  // [B, T, D/2]
  const at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

}  // namespace mftk::mistral
