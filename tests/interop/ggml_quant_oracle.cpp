// mftk's GGUF encoders against ggml's own, byte for byte, on inputs built to
// make every branch of the quantisers matter: ctest `ggml_quant_oracle`.
//
// ggml is the libggml-base.so that node-llama-cpp ships (installed by
// scripts/gguf-interop-setup.sh, the ctest fixture `gguf_interop`), loaded
// with dlopen; its encoder is ggml_quantize_chunk, the function
// llama-quantize calls (without an importance matrix it runs ggml's
// reference quantisers), and its decoder the type's to_float. For F16, BF16,
// Q8_0, Q4_K and Q6_K, and for each named case below, mftk's encode_row must
// give exactly ggml's bytes, and mftk's decode_row exactly ggml's floats
// (bit patterns) from those bytes.
//
// The cases are chosen so that an encoder which skipped or changed the
// K-quants' scale search would differ: outliers, mixed signs, sub-blocks
// whose ranges differ by orders of magnitude (so the 6-bit scales of the
// small ones round to 0 or 1), all-positive and all-negative blocks (the
// min clamp and the "min > 0" refit), constant and all-zero sub-blocks
// (the max == min and group-max-epsilon exits), tiny and subnormal values,
// values on a grid (exact rounding ties), sparse and heavy-tailed blocks,
// and a few thousand random super-blocks mixing all of these. As a check on
// the check, the program also quantises every case with a Q4_K and a Q6_K
// encoder that keeps each sub-block's first scale guess (no search) and
// reports how many super-blocks that would get wrong: the test fails if
// the crafted cases could not tell the search from its absence.
//
//   ggml_quant_oracle LIBGGML_BASE
//
// Exit 0: every comparison equal; 1: a difference or a failure to load
// ggml (never a skip: the fixture installs it).
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gguf/ggml_quants.h"
#include "gguf/kquants.h"
#include "mftk/gguf_format.h"

namespace {

using mftk::GgmlType;

// ggml's ABI, as ggml.h declares it (stable across the releases
// node-llama-cpp has shipped): the enum values are the GGUF type ids.
using QuantizeChunkFn = size_t (*)(int type, const float* src, void* dst, int64_t start, int64_t nrows,
                                   int64_t n_per_row, const float* imatrix);
using QuantizeInitFn = void (*)(int type);
using ToFloatFn = void (*)(const void* x, float* y, int64_t k);
struct GgmlTypeTraits {  // struct ggml_type_traits
  const char* type_name;
  int64_t blck_size;
  int64_t blck_size_interleave;
  size_t type_size;
  bool is_quantized;
  ToFloatFn to_float;
  void* from_float_ref;
};
using GetTypeTraitsFn = const GgmlTypeTraits* (*)(int type);

struct Ggml {
  QuantizeChunkFn quantize_chunk = nullptr;
  QuantizeInitFn quantize_init = nullptr;
  GetTypeTraitsFn type_traits = nullptr;
};

struct Format {
  GgmlType type;
  const char* ggml_name;  // ggml's type_name, checked before its traits are trusted
  size_t block, block_bytes;
};
const Format kFormats[] = {{GgmlType::f16, "f16", 1, 2},
                           {GgmlType::bf16, "bf16", 1, 2},
                           {GgmlType::q8_0, "q8_0", 32, 34},
                           {GgmlType::q4_k, "q4_K", 256, 144},
                           {GgmlType::q6_k, "q6_K", 256, 210}};

constexpr int kRandomBlocks = 2048;

struct Case {
  std::string name;
  std::vector<float> x;  // a multiple of 256 values
  bool finite = true;    // NaN/inf cases go to F16/BF16 only
};

// ---------------------------------------------------------------- inputs

using Rng = std::mt19937;

float gauss(Rng& rng, float sigma) { return std::normal_distribution<float>(0.0f, sigma)(rng); }
float uniform(Rng& rng, float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(rng); }

std::vector<float> gaussian_block(Rng& rng, float sigma) {
  std::vector<float> x(256);
  for (auto& v : x) v = gauss(rng, sigma);
  return x;
}

// One super-block of 8 sub-blocks of 32 drawn by `sub(j, i)`.
std::vector<float> block_of(const std::function<float(int, int)>& sub) {
  std::vector<float> x(256);
  for (int j = 0; j < 8; ++j)
    for (int i = 0; i < 32; ++i) x[size_t(32 * j + i)] = sub(j, i);
  return x;
}

std::vector<Case> crafted_cases() {
  Rng rng(20240601);
  std::vector<Case> cases;
  auto add = [&](std::string name, std::vector<float> x) { cases.push_back({std::move(name), std::move(x), true}); };

  add("gaussian weights (sigma 0.02)", gaussian_block(rng, 0.02f));
  {
    auto x = gaussian_block(rng, 0.02f);
    x[77] = 0.9f;  // one outlier, 45 sigma, in sub-block 2
    add("one positive outlier", x);
  }
  {
    auto x = gaussian_block(rng, 0.02f);
    for (int j = 0; j < 8; ++j) x[size_t(32 * j + 5 * j % 32)] = (j % 2 ? -1.0f : 1.0f) * (0.1f + 0.2f * j);
    add("outliers of both signs in every sub-block", x);
  }
  {
    auto x = gaussian_block(rng, 0.02f);
    for (int i = 0; i < 16; ++i) x[size_t(16 * i + 3)] = -0.5f - 0.01f * i;  // one per Q6_K sub-block, negative
    add("negative outliers in every 16-value group", x);
  }
  add("all positive", block_of([&](int, int) { return uniform(rng, 0.25f, 1.0f); }));
  add("all negative", block_of([&](int, int) { return uniform(rng, -1.0f, -0.25f); }));
  add("positive with a small negative tail", block_of([&](int, int i) {
        return i == 0 ? -0.01f : uniform(rng, 0.1f, 2.0f);
      }));
  add("sub-block ranges 1e-4 .. 1e3", block_of([&](int j, int) {
        return gauss(rng, std::pow(10.0f, float(j) * 1.0f - 4.0f) / 3.0f);
      }));
  add("one loud sub-block, seven quiet (6-bit scales round to 0 and 1)", block_of([&](int j, int) {
        return j == 3 ? gauss(rng, 1.0f) : gauss(rng, 1.0f / 150.0f);
      }));
  add("sub-blocks alternating symmetric and one-sided", block_of([&](int j, int) {
        return j % 2 ? uniform(rng, -0.3f, 0.3f) : uniform(rng, 0.0f, 0.6f) - 0.02f;
      }));
  add("all zero", std::vector<float>(256, 0.0f));
  add("zero sub-blocks among gaussian ones", block_of([&](int j, int) {
        return j % 3 == 1 ? 0.0f : gauss(rng, 0.05f);
      }));
  add("constant sub-blocks (0.5, -0.5, 0, 1e-3)", block_of([&](int j, int) {
        const float c[4] = {0.5f, -0.5f, 0.0f, 1e-3f};
        return c[j % 4];
      }));
  add("tiny values (1e-12 .. 1e-20)", block_of([&](int j, int) {
        return gauss(rng, std::pow(10.0f, -12.0f - float(j)));
      }));
  add("around ggml's group epsilon 1e-15", block_of([&](int j, int i) {
        return (i % 2 ? 1.0f : -1.0f) * (j < 4 ? 0.9e-15f : 1.1e-15f) * (1.0f + 0.01f * float(i));
      }));
  add("subnormal floats", block_of([&](int j, int i) {
        return float(i - 16) * std::numeric_limits<float>::denorm_min() * float(1 + j * 1000);
      }));
  add("grid of sixteenths (exact rounding ties)", block_of([&](int j, int i) {
        return float((i + 3 * j) % 16 - 8) / 16.0f;
      }));
  add("grid of halves up to 127 (Q8_0 ties)", block_of([&](int, int i) {
        return i == 0 ? 127.0f : float(i * 4 % 255 - 127) + 0.5f;
      }));
  add("sparse: 8 non-zeros", block_of([&](int j, int i) {
        return i == (7 * j) % 32 ? float(j + 1) * (j % 2 ? -0.1f : 0.1f) : 0.0f;
      }));
  add("heavy tailed (Cauchy)", block_of([&](int, int) {
        return 0.01f * std::tan(3.14159265f * (uniform(rng, 0.0f, 1.0f) - 0.5f) * 0.98f);
      }));
  add("linear ramp -1 .. 1", block_of([&](int j, int i) { return float(32 * j + i) / 127.5f - 1.0f; }));
  add("large values (1e3 .. 6e4)", block_of([&](int j, int) {
        return gauss(rng, j < 4 ? 1e3f : 2e4f);
      }));

  // F16 / BF16 special values, padded to 256 with their neighbours.
  {
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e6f, inf, -inf,
                            6.103515625e-05f /* min normal half */, 6.0e-05f, 5.960464477539063e-08f /* min subnormal */,
                            2.98e-08f, 2.9802322387695312e-08f /* half of it: tie to 0 */, 2.99e-08f, 1e-10f,
                            3.0e38f, -3.0e38f, 1.0009765625f /* 1 + 2^-10 */, 1.00048828125f /* tie */,
                            1.00146484375f /* tie, odd */, 1.00390625f /* bf16 1 + 2^-8 */, 1.001953125f /* bf16 tie */,
                            1.005859375f /* bf16 tie, odd */};
    std::vector<float> x;
    for (float f : v)
      for (int d = -2; d <= 2; ++d) {
        if (std::isinf(f)) {
          x.push_back(f);
          continue;
        }
        x.push_back(std::nextafter(f, d < 0 ? -inf : inf));
        if (d == 0) x.back() = f;
      }
    while (x.size() % 256) x.push_back(float(x.size()) * 0.001f);
    cases.push_back({"half/bfloat16 boundaries, ties, overflow, infinities", x, false});
  }
  {
    std::vector<float> x(256, 1.0f);
    const uint32_t nans[] = {0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fa00000u, 0x7fffffffu, 0xff812345u};
    for (size_t i = 0; i < std::size(nans); ++i) std::memcpy(&x[i], &nans[i], 4);
    cases.push_back({"NaNs (quiet, signalling, payloads)", x, false});
  }

  // Random super-blocks mixing all of the above: each sub-block of 32 draws
  // its own kind and scale.
  for (int b = 0; b < kRandomBlocks; ++b) {
    Rng r(uint32_t(1000 + b));
    const float base = std::pow(10.0f, uniform(r, -4.0f, 1.0f));
    int kind = 0;
    float sub_scale = 1.0f, shift = 0.0f;
    cases.push_back({"random mix #" + std::to_string(b), block_of([&](int, int i) {
                       if (i == 0) {
                         kind = int(r() % 6);
                         sub_scale = base * std::pow(10.0f, uniform(r, -2.5f, 1.0f));
                         shift = kind == 3 ? uniform(r, -2.0f, 2.0f) * sub_scale : 0.0f;
                       }
                       switch (kind) {
                         case 0: return gauss(r, sub_scale);  // plain
                         case 1:                               // 10 % outliers
                           return uniform(r, 0.0f, 1.0f) < 0.1f ? gauss(r, 20 * sub_scale) : gauss(r, sub_scale);
                         case 2: return uniform(r, 0.0f, 1.0f) < 0.7f ? 0.0f : gauss(r, sub_scale);  // sparse
                         case 3: return shift + uniform(r, -0.5f, 0.5f) * sub_scale;  // off-centre
                         case 4: return float(int(r() % 16) - 8) * sub_scale / 8.0f;  // on a grid
                         default:                                                     // Cauchy
                           return sub_scale * std::tan(3.14159265f * (uniform(r, 0.0f, 1.0f) - 0.5f) * 0.95f);
                       }
                     }),
                     true});
  }
  return cases;
}

// ------------------------------------------- quantisers without the search

int nearest(float v) { return int(std::nearbyint(v)); }

// Q4_K with each sub-block's first guess (scale (max - min) / 15, min
// clamped to <= 0) kept, then the same 6-bit packing and re-rounding as the
// real format: what a quantiser without make_qkx2_quants' search writes.
std::vector<uint8_t> q4_k_without_search(const float* x) {
  std::vector<uint8_t> out(mftk::gguf::kQ4_KBlockBytes, 0);
  float scales[8], mins[8], max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    float lo = x[32 * j], hi = x[32 * j];
    for (int i = 0; i < 32; ++i) lo = std::min(lo, x[32 * j + i]), hi = std::max(hi, x[32 * j + i]);
    lo = std::min(lo, 0.0f);
    scales[j] = hi > lo ? (hi - lo) / 15.0f : 0.0f;
    mins[j] = -lo;
    max_scale = std::max(max_scale, scales[j]);
    max_min = std::max(max_min, mins[j]);
  }
  uint8_t ls[8], lm[8];
  for (int j = 0; j < 8; ++j) {
    ls[j] = uint8_t(std::min(63, max_scale > 0 ? nearest(63.0f / max_scale * scales[j]) : 0));
    lm[j] = uint8_t(std::min(63, max_min > 0 ? nearest(63.0f / max_min * mins[j]) : 0));
  }
  const uint16_t d = mftk::gguf::fp32_to_fp16(max_scale / 63.0f), dmin = mftk::gguf::fp32_to_fp16(max_min / 63.0f);
  std::memcpy(&out[0], &d, 2);
  std::memcpy(&out[2], &dmin, 2);
  uint8_t* packed = &out[4];
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      packed[j] = ls[j];
      packed[j + 4] = lm[j];
    } else {
      packed[j + 4] = uint8_t((ls[j] & 0xF) | ((lm[j] & 0xF) << 4));
      packed[j - 4] |= uint8_t((ls[j] >> 4) << 6);
      packed[j] |= uint8_t((lm[j] >> 4) << 6);
    }
  }
  uint8_t L[256];
  for (int j = 0; j < 8; ++j) {
    const float ds = mftk::gguf::fp16_to_fp32(d) * float(ls[j]), dm = mftk::gguf::fp16_to_fp32(dmin) * float(lm[j]);
    for (int i = 0; i < 32; ++i) L[32 * j + i] = ds == 0 ? 0 : uint8_t(std::clamp(nearest((x[32 * j + i] + dm) / ds), 0, 15));
  }
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) out[size_t(16 + 32 * c + l)] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  return out;
}

// Q6_K with each 16-value group's first guess (scale = -max / 32 on the
// value of largest magnitude) kept: make_qx_quants without its sweep.
std::vector<uint8_t> q6_k_without_search(const float* x) {
  std::vector<uint8_t> out(mftk::gguf::kQ6_KBlockBytes, 0);
  float scales[16], max_scale = 0, max_abs = 0;
  for (int g = 0; g < 16; ++g) {
    float m = 0, a = 0;
    for (int i = 0; i < 16; ++i)
      if (std::fabs(x[16 * g + i]) > a) a = std::fabs(x[16 * g + i]), m = x[16 * g + i];
    scales[g] = a < 1e-15f ? 0.0f : m / -32.0f;
    if (std::fabs(scales[g]) > max_abs) max_abs = std::fabs(scales[g]), max_scale = scales[g];
  }
  if (max_abs < 1e-15f) return out;
  const float iscale = -128.0f / max_scale;
  const uint16_t d = mftk::gguf::fp32_to_fp16(1 / iscale);
  std::memcpy(&out[208], &d, 2);
  int8_t sc[16];
  int8_t L[256];
  for (int g = 0; g < 16; ++g) sc[g] = int8_t(std::min(127, nearest(iscale * scales[g])));
  std::memcpy(&out[192], sc, 16);
  for (int g = 0; g < 16; ++g) {
    const float ds = mftk::gguf::fp16_to_fp32(d) * float(sc[g]);
    for (int i = 0; i < 16; ++i) L[16 * g + i] = int8_t(32 + (ds == 0 ? 0 : std::clamp(nearest(x[16 * g + i] / ds), -32, 31)));
  }
  for (int half = 0; half < 2; ++half)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* q = reinterpret_cast<const uint8_t*>(L + 128 * half);
      out[size_t(64 * half + l)] = uint8_t((q[l] & 0xF) | ((q[l + 64] & 0xF) << 4));
      out[size_t(64 * half + l + 32)] = uint8_t((q[l + 32] & 0xF) | ((q[l + 96] & 0xF) << 4));
      out[size_t(128 + 32 * half + l)] =
          uint8_t((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6));
    }
  return out;
}

// ---------------------------------------------------------------- driver

template <typename F>
F symbol(void* lib, const char* name) {
  void* p = dlsym(lib, name);
  if (!p) {
    std::fprintf(stderr, "ggml_quant_oracle: FAIL: libggml-base has no %s\n", name);
    std::exit(1);
  }
  return reinterpret_cast<F>(p);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s LIBGGML_BASE\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    std::fprintf(stderr, "ggml_quant_oracle: FAIL: cannot load ggml: %s\n", dlerror());
    return 1;
  }
  Ggml ggml{symbol<QuantizeChunkFn>(lib, "ggml_quantize_chunk"), symbol<QuantizeInitFn>(lib, "ggml_quantize_init"),
            symbol<GetTypeTraitsFn>(lib, "ggml_get_type_traits")};

  int failures = 0;
  auto fail = [&](const std::string& what) {
    if (++failures <= 20) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  };
  // The block sizes mftk writes must be ggml's (a check on the traits
  // layout too: the name is read first).
  for (const auto& f : kFormats) {
    const GgmlTypeTraits* t = ggml.type_traits(int(f.type));
    if (!t || !t->type_name || std::strcmp(t->type_name, f.ggml_name) != 0) {
      fail(std::string("ggml's traits for type ") + std::to_string(int(f.type)) + " are not " + f.ggml_name +
           " (ggml ABI changed?)");
      continue;
    }
    if (size_t(t->blck_size) != f.block || t->type_size != f.block_bytes ||
        mftk::ggml_row_bytes(f.type, f.block) != f.block_bytes)
      fail(std::string(f.ggml_name) + ": block size/bytes differ from ggml's");
    ggml.quantize_init(int(f.type));
  }
  if (failures) return 1;

  const auto cases = crafted_cases();
  size_t compared_blocks[5] = {}, values = 0, without_search_wrong[2] = {}, kquant_blocks = 0;
  size_t crafted_without_search_wrong[2] = {};
  for (const auto& c : cases) {
    const size_t n = c.x.size();
    values += n;
    for (size_t k = 0; k < std::size(kFormats); ++k) {
      const Format& f = kFormats[k];
      if (!c.finite && f.block != 1) continue;
      const size_t bytes = n / f.block * f.block_bytes;
      std::vector<uint8_t> ours(bytes), theirs(bytes, 0xAA);
      mftk::gguf::encode_row(f.type, c.x.data(), ours.data(), n);
      // Rows of 256: ggml quantises row by row, as a tensor of [n/256, 256].
      const size_t written = ggml.quantize_chunk(int(f.type), c.x.data(), theirs.data(), 0, int64_t(n / 256), 256, nullptr);
      if (written != bytes) fail(c.name + ": " + f.ggml_name + ": ggml wrote " + std::to_string(written) + " bytes");
      for (size_t b = 0; b < bytes; ++b)
        if (ours[b] != theirs[b]) {
          fail(c.name + ": " + f.ggml_name + " differs from ggml at byte " + std::to_string(b) + " of " +
               std::to_string(bytes) + " (block " + std::to_string(b / f.block_bytes) + "): mftk " +
               std::to_string(ours[b]) + ", ggml " + std::to_string(theirs[b]));
          break;
        }
      // Decoding: mftk's floats from ggml's bytes, bit for bit.
      std::vector<float> ours_x(n), theirs_x(n);
      mftk::gguf::decode_row(f.type, theirs.data(), ours_x.data(), n);
      ggml.type_traits(int(f.type))->to_float(theirs.data(), theirs_x.data(), int64_t(n));
      if (std::memcmp(ours_x.data(), theirs_x.data(), n * sizeof(float)) != 0)
        fail(c.name + ": " + f.ggml_name + ": mftk decodes ggml's bytes differently");
      compared_blocks[k] += n / f.block;
    }
    if (!c.finite) continue;
    // The check on the check: would these inputs catch a missing search?
    for (size_t b = 0; b < n / 256; ++b) {
      const float* x = c.x.data() + 256 * b;
      std::vector<uint8_t> q4(mftk::gguf::kQ4_KBlockBytes), q6(mftk::gguf::kQ6_KBlockBytes);
      mftk::gguf::quantize_row_q4_k(x, q4.data(), 256);
      mftk::gguf::quantize_row_q6_k(x, q6.data(), 256);
      const bool q4_wrong = q4_k_without_search(x) != q4, q6_wrong = q6_k_without_search(x) != q6;
      without_search_wrong[0] += q4_wrong;
      without_search_wrong[1] += q6_wrong;
      if (c.name.rfind("random mix", 0) != 0) {
        crafted_without_search_wrong[0] += q4_wrong;
        crafted_without_search_wrong[1] += q6_wrong;
      }
      ++kquant_blocks;
    }
  }
  const size_t crafted = cases.size() - kRandomBlocks;
  std::printf("{\"cases\": %zu, \"values\": %zu, \"blocks_compared_with_ggml\": {\"f16\": %zu, \"bf16\": %zu, "
              "\"q8_0\": %zu, \"q4_K\": %zu, \"q6_K\": %zu}, \"super_blocks_a_search_free_encoder_gets_wrong\": "
              "{\"q4_K\": %zu, \"q6_K\": %zu, \"of\": %zu, \"crafted_q4_K\": %zu, \"crafted_q6_K\": %zu, "
              "\"crafted_of\": %zu}, \"failures\": %d}\n",
              cases.size(), values, compared_blocks[0], compared_blocks[1], compared_blocks[2], compared_blocks[3],
              compared_blocks[4], without_search_wrong[0], without_search_wrong[1], kquant_blocks,
              crafted_without_search_wrong[0], crafted_without_search_wrong[1], crafted - 2);
  for (size_t k = 0; k < std::size(kFormats); ++k)
    if (compared_blocks[k] == 0) fail(std::string(kFormats[k].ggml_name) + ": nothing compared");
  // Most crafted blocks must tell the search from its absence, or they
  // would not test it.
  if (crafted_without_search_wrong[0] * 2 < crafted - 2 || crafted_without_search_wrong[1] * 2 < crafted - 2)
    fail("the crafted cases do not exercise the K-quant scale search: a search-free encoder passes most of them");
  if (failures) {
    std::fprintf(stderr, "ggml_quant_oracle: %d difference(s) from ggml\n", failures);
    return 1;
  }
  std::printf("ggml_quant_oracle: mftk's F16, BF16, Q8_0, Q4_K and Q6_K bytes are ggml's on every case\n");
  return 0;
}
