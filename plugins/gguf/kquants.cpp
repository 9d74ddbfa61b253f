// K-quants (see kquants.h). Bit-exactness means the same float operations
// in the same order as ggml's reference: every sum below runs in index
// order, every product and quotient is grouped as ggml groups it, and no
// expression may be contracted into an FMA (the plugin is built for plain
// x86-64 / without -ffast-math, as libggml-base is). Derived from ggml's
// reference quantisers (ggml-quants.c: quantize_row_q4_K_ref with
// make_qkx2_quants, quantize_row_q6_K_ref with make_qx_quants; ggml is MIT
// licensed, see THIRD_PARTY_NOTICES.md), rewritten here, not copied. The
// ctest ggml_quant_oracle compares these bytes with ggml's own
// ggml_quantize_chunk on blocks crafted for the scale search (outliers,
// mixed signs, sub-block ranges 1e-4..1e3, zero, constant and tiny groups,
// rounding ties) and 2048 random mixed super-blocks; gguf_llamacpp does the
// same on whole exported models.
#include "kquants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ggml_quants.h"
#include "mftk/error.h"

namespace mftk::gguf {
namespace {

constexpr float kGroupMaxEps = 1e-15f;  // below this a group counts as all zero

// Rounds to the nearest integer, ties to even, for |x| < 2^22: adding
// 1.5 * 2^23 leaves the integer in the low mantissa bits (ggml's nearest_int).
int nearest_int(float x) {
  const float shifted = x + 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

void store_fp16(uint8_t* p, float v) {
  const uint16_t h = fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

float load_fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return fp16_to_fp32(h);
}

// ---------------------------------------------------------------- Q4_K

// The scale and (negated) min of one sub-block, q = round((x - min) / scale)
// in 0..nmax, minimising the weighted squared error over a sweep of scales.
struct AffineFit {
  float scale = 0;
  float neg_min = 0;  // ggml stores -min (>= 0)
};

AffineFit fit_affine(int n, int nmax, const float* x, const float* weights, uint8_t* L, uint8_t* trial, float rmin,
                     float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = weights[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    const float w = weights[i];
    sum_w += w;
    sum_x += w * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    std::fill(L, L + n, uint8_t(0));
    return {0.0f, -min};
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearest_int(iscale * (x[i] - min));
    L[i] = uint8_t(std::max(0, std::min(nmax, l)));
    const float diff = scale * L[i] + min - x[i];
    best_error += weights[i] * (diff * diff);
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * float(step) + float(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::max(0, std::min(nmax, nearest_int(iscale * (x[i] - min))));
      trial[i] = uint8_t(l);
      const float w = weights[i];
      sum_l += w * float(l);
      sum_l2 += w * float(l) * float(l);
      sum_xl += w * float(l) * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * trial[i] + this_min - x[i];
        error += weights[i] * (diff * diff);
      }
      if (error < best_error) {
        std::copy(trial, trial + n, L);
        best_error = error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  return {scale, -min};
}

// The 6-bit scale and min of sub-block j from the 12 packed bytes.
void unpack_scale_min(int j, const uint8_t* q, uint8_t& sc, uint8_t& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void quantize_block_q4_k(const float* x, uint8_t* block) {
  uint8_t L[kQK_K];
  uint8_t trial[32];
  float weights[32];
  float scales[8], mins[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    const AffineFit fit = fit_affine(32, 15, xs, weights, L + 32 * j, trial, -1.0f, 0.1f, 20);
    scales[j] = fit.scale;
    mins[j] = fit.neg_min;
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }

  uint8_t* d = block;
  uint8_t* dmin = block + 2;
  uint8_t* packed = block + 4;  // 12 bytes
  uint8_t* qs = block + 16;     // 128 bytes
  std::memset(packed, 0, 12);
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  for (int j = 0; j < 8; ++j) {
    // uint8_t first, as ggml assigns the int to a uint8_t before clamping.
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      packed[j - 4] |= uint8_t((ls >> 4) << 6);
      packed[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  store_fp16(d, max_scale / 63.0f);
  store_fp16(dmin, max_min / 63.0f);

  // Re-round every value against the scales as stored.
  const float d_stored = load_fp16(d), dmin_stored = load_fp16(dmin);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    unpack_scale_min(j, packed, sc, m);
    const float ds = d_stored * float(sc);
    if (ds == 0) continue;  // keeps the search's codes, as ggml does
    const float dm = dmin_stored * float(m);
    for (int i = 0; i < 32; ++i) {
      const int l = nearest_int((x[32 * j + i] + dm) / ds);
      L[32 * j + i] = uint8_t(std::max(0, std::min(15, l)));
    }
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

// ---------------------------------------------------------------- Q6_K

// A symmetric scale for one sub-block, q = round(x / scale) in -nmax..nmax-1
// (stored in L offset by nmax), weighted by x^2.
float fit_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(L, L + n, int8_t(0));
    return 0.0f;
  }
  auto clamp = [nmax](int l) { return std::max(-nmax, std::min(nmax - 1, l)); };
  float iscale = float(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clamp(nearest_int(iscale * x[i]));
    L[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * float(l);
    suml2 += w * float(l) * float(l);
  }
  float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0) continue;
    iscale = -(float(nmax) + 0.1f * float(step)) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clamp(nearest_int(iscale * x[i]));
      const float w = x[i] * x[i];
      sumlx += w * x[i] * float(l);
      suml2 += w * float(l) * float(l);
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; ++i) L[i] = int8_t(nmax + clamp(nearest_int(iscale * x[i])));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void quantize_block_q6_k(const float* x, uint8_t* block) {
  int8_t L[kQK_K];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = fit_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
    const float abs_scale = std::fabs(scales[ib]);
    if (abs_scale > max_abs_scale) {
      max_abs_scale = abs_scale;
      max_scale = scales[ib];
    }
  }
  uint8_t* ql = block;         // 128
  uint8_t* qh = block + 128;   // 64
  auto* sc = reinterpret_cast<int8_t*>(block + 192);  // 16
  uint8_t* d = block + 208;
  if (max_abs_scale < kGroupMaxEps) {
    std::memset(block, 0, kQ6_KBlockBytes);
    return;
  }
  const float iscale = -128.0f / max_scale;
  store_fp16(d, 1 / iscale);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = int8_t(std::min(127, nearest_int(iscale * scales[ib])));
  const float d_stored = load_fp16(d);
  for (int j = 0; j < 16; ++j) {
    const float ds = d_stored * float(sc[j]);
    if (ds == 0) continue;
    for (int i = 0; i < 16; ++i) {
      const int l = std::max(-32, std::min(31, nearest_int(x[16 * j + i] / ds)));
      L[16 * j + i] = int8_t(l + 32);
    }
  }
  for (int half = 0; half < 2; ++half) {
    const int8_t* Lh = L + 128 * half;
    uint8_t* qlh = ql + 64 * half;
    uint8_t* qhh = qh + 32 * half;
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = uint8_t(Lh[l]), q2 = uint8_t(Lh[l + 32]), q3 = uint8_t(Lh[l + 64]), q4 = uint8_t(Lh[l + 96]);
      qlh[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
      qlh[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
      qhh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

void check_blocks(size_t n, const char* type) {
  MFTK_CHECK(n % kQK_K == 0, "{}: a row of {} values is not a whole number of 256-value super-blocks", type, n);
}

}  // namespace

void quantize_row_q4_k(const float* x, uint8_t* out, size_t n) {
  check_blocks(n, "q4_k");
  for (size_t b = 0; b < n / kQK_K; ++b) quantize_block_q4_k(x + b * kQK_K, out + b * kQ4_KBlockBytes);
}

void dequantize_row_q4_k(const uint8_t* in, float* x, size_t n) {
  check_blocks(n, "q4_k");
  for (size_t b = 0; b < n / kQK_K; ++b) {
    const uint8_t* block = in + b * kQ4_KBlockBytes;
    const float d = load_fp16(block), dmin = load_fp16(block + 2);
    const uint8_t* qs = block + 16;
    float* y = x + b * kQK_K;
    for (int j = 0; j < 8; ++j) {
      uint8_t sc, m;
      unpack_scale_min(j, block + 4, sc, m);
      const float ds = d * float(sc), dm = dmin * float(m);
      const uint8_t* q = qs + 32 * (j / 2);
      for (int l = 0; l < 32; ++l) y[32 * j + l] = ds * float(j % 2 ? q[l] >> 4 : q[l] & 0xF) - dm;
    }
  }
}

void quantize_row_q6_k(const float* x, uint8_t* out, size_t n) {
  check_blocks(n, "q6_k");
  for (size_t b = 0; b < n / kQK_K; ++b) quantize_block_q6_k(x + b * kQK_K, out + b * kQ6_KBlockBytes);
}

void dequantize_row_q6_k(const uint8_t* in, float* x, size_t n) {
  check_blocks(n, "q6_k");
  for (size_t b = 0; b < n / kQK_K; ++b) {
    const uint8_t* block = in + b * kQ6_KBlockBytes;
    const auto* sc = reinterpret_cast<const int8_t*>(block + 192);
    const float d = load_fp16(block + 208);
    float* y = x + b * kQK_K;
    for (int half = 0; half < 2; ++half) {
      const uint8_t* ql = block + 64 * half;
      const uint8_t* qh = block + 128 + 32 * half;
      for (int l = 0; l < 32; ++l) {
        const int q[4] = {(ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4), (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                          (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4), (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)};
        for (int k = 0; k < 4; ++k) {
          const int e = 128 * half + 32 * k + l;
          y[e] = d * float(sc[e / 16]) * float(q[k] - 32);
        }
      }
    }
  }
}

}  // namespace mftk::gguf
