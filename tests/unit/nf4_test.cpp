// The nf4 plugin against independent facts: bitsandbytes' code table and
// decision thresholds, packed bytes worked out by hand, the bitsandbytes
// reference quantiser written here with plain libtorch ops (argmin over the
// code table), error bounds, the transformers + bitsandbytes file layout,
// and a QLoRA run on a tiny Mistral loaded through the plugin registry.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "adamw/adamw_optimizer.h"
#include "lora/lora_adapter.h"
#include "mftk/dynamic_map.h"
#include "mftk/error.h"
#include "mftk/model.h"
#include "mftk/quantizer.h"
#include "mftk/safetensors.h"
#include "model_tools.h"
#include "nf4/nf4_checkpoint.h"
#include "nf4/nf4_kernels.h"
#include "nf4/nf4_linear.h"
#include "nf4/nf4_quantizer.h"
#include "nf4/nf4_tensor.h"
#include "pipeline.h"
#include "recipe.h"
#include "registry.h"
#include "trainer.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;
using mftk::nf4::DequantPath;
using mftk::nf4::Nf4Tensor;
using mftk::nf4::kNf4Codes;

// docs/formats.md §6.1 (NF4 values), as printed there (index -> value).
const double kTable[16] = {-1.0,
                           -0.6961928009986877,
                           -0.5250730514526367,
                           -0.39491748809814453,
                           -0.28444138169288635,
                           -0.18477343022823334,
                           -0.09105003625154495,
                           0.0,
                           0.07958029955625534,
                           0.16093020141124725,
                           0.24611230194568634,
                           0.33791524171829224,
                           0.44070982933044434,
                           0.5626170039176941,
                           0.7229568362236023,
                           1.0};

at::Tensor code_table() {
  std::vector<float> v;
  for (double c : kTable) v.push_back(static_cast<float>(c));
  return at::tensor(v, at::kFloat);
}

// The codes of a packed weight in element order, unpacked with torch ops
// (first element = high nibble).
at::Tensor unpack_codes(const Nf4Tensor& w) {
  const at::Tensor high = at::bitwise_right_shift(w.packed, 4);
  const at::Tensor low = at::bitwise_and(w.packed, 15);
  return at::stack({high, low}, 1).reshape({-1}).narrow(0, 0, w.numel()).to(at::kLong);
}

// bitsandbytes' reference quantiser (backends/default/ops.py) in libtorch:
// absmax per block, x * (1 / absmax) clamped to [-1, 1], argmin |x - code|.
struct Reference {
  at::Tensor codes;   // long [n]
  at::Tensor absmax;  // float [blocks]
};
Reference reference_quantize(const at::Tensor& weight, int64_t blocksize) {
  const at::Tensor flat = weight.reshape({-1}).to(at::kFloat);
  const int64_t n = flat.numel();
  const int64_t blocks = (n + blocksize - 1) / blocksize;
  const at::Tensor padded = at::constant_pad_nd(flat, {0, blocks * blocksize - n}, 0).view({blocks, blocksize});
  const at::Tensor absmax = padded.abs().amax(1);
  const at::Tensor scaled = at::clamp(padded * (1.0 / absmax).unsqueeze(1), -1, 1).reshape({-1}).narrow(0, 0, n);
  const at::Tensor codes = (scaled.unsqueeze(1) - code_table().unsqueeze(0)).abs().argmin(1);
  return {codes, absmax};
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_nf4_XXXXXX").string();
    if (!mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string sub(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.numel() != b.numel()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), size_t(ca.numel()) * ca.element_size()) == 0;
}

// ---------------------------------------------------------------------------
// The code table and the decision thresholds.

TEST(Nf4Codes, TableIsBitsandbytesNf4) {
  for (int k = 0; k < 16; ++k) EXPECT_EQ(kNf4Codes[k], static_cast<float>(kTable[k])) << "code " << k;
  for (int k = 0; k < 15; ++k) EXPECT_LT(kNf4Codes[k], kNf4Codes[k + 1]);
  EXPECT_EQ(kNf4Codes[0], -1.0f);
  EXPECT_EQ(kNf4Codes[7], 0.0f);
  EXPECT_EQ(kNf4Codes[15], 1.0f);
}

TEST(Nf4Codes, ThresholdsAreTheLiteralsOfBitsandbytesDecisionTree) {
  // dQuantizeNF4 in bitsandbytes' csrc (kernels.cu / cpu_ops), in code order.
  const float tree[15] = {-0.8480964004993439f,  -0.6106329262256622f, -0.4599952697753906f,
                          -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
                          -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
                          0.2035212516784668f,   0.2920137718319893f,  0.3893125355243683f,
                          0.5016634166240692f,   0.6427869200706482f,  0.8614784181118011f};
  // A value on a literal keeps the lower code; the next float up takes the upper one.
  for (int k = 0; k < 15; ++k) {
    EXPECT_EQ(mftk::nf4::nearest_nf4_code(tree[k]), k) << "threshold " << k;
    EXPECT_EQ(mftk::nf4::nearest_nf4_code(std::nextafter(tree[k], 2.0f)), k + 1) << "threshold " << k;
    // and each literal is the midpoint of its two codes to within one float step
    const double mid = (double(kNf4Codes[k]) + double(kNf4Codes[k + 1])) / 2;
    EXPECT_LE(std::fabs(double(tree[k]) - mid), std::fabs(double(std::nextafter(tree[k], 2.0f)) - double(tree[k])));
  }
}

TEST(Nf4Codes, NearestCodeFollowsTheTree) {
  using mftk::nf4::nearest_nf4_code;
  for (int k = 0; k < 16; ++k) EXPECT_EQ(nearest_nf4_code(kNf4Codes[k]), k);
  const float t7 = mftk::nf4::kNf4Thresholds[7];
  EXPECT_EQ(nearest_nf4_code(t7), 7);  // on the threshold: the lower code (x > t fails)
  EXPECT_EQ(nearest_nf4_code(std::nextafter(t7, 1.0f)), 8);
  EXPECT_EQ(nearest_nf4_code(-2.0f), 0);
  EXPECT_EQ(nearest_nf4_code(2.0f), 15);
  EXPECT_EQ(nearest_nf4_code(std::nanf("")), 0);
}

// ---------------------------------------------------------------------------
// Quantisation.

TEST(Nf4Quantize, PackedBytesWorkedOutByHand) {
  // absmax 2; x / 2 = -1 (code 0), 1 (15), 0 (7), 0.1609 (9), -0.5251 (2),
  // 0.22 (between 0.1609 and 0.2461, above their midpoint 0.2035: 10),
  // 0.725 (between 0.7230 and 1, below 0.8615: 14), -0.05 (below -0.0455: 6).
  const std::vector<float> x = {-2.0f, 2.0f, 0.0f, 2 * 0.16093020141124725f, 2 * -0.5250730514526367f,
                                0.44f, 1.45f,  -0.1f};
  const Nf4Tensor q = mftk::nf4::quantize_nf4(at::tensor(x).view({2, 4}), 64, false);
  ASSERT_EQ(q.packed.numel(), 4);
  const uint8_t* b = q.packed.data_ptr<uint8_t>();
  EXPECT_EQ(b[0], 0x0F);  // codes 0, 15: the first element in the high nibble
  EXPECT_EQ(b[1], 0x79);  // 7, 9
  EXPECT_EQ(b[2], 0x2A);  // 2, 10
  EXPECT_EQ(b[3], 0xE6);  // 14, 6
  ASSERT_EQ(q.absmax.numel(), 1);
  EXPECT_EQ(q.absmax.item<float>(), 2.0f);

  // An odd count: the last low nibble is the code of a padding 0 (7).
  // 1.0 / 2 = 0.5 lies below the 12/13 midpoint 0.5017: code 12.
  const Nf4Tensor odd = mftk::nf4::quantize_nf4(at::tensor(std::vector<float>{2.0f, -2.0f, 1.0f}).view({1, 3}), 64,
                                                false);
  ASSERT_EQ(odd.packed.numel(), 2);
  EXPECT_EQ(odd.packed.data_ptr<uint8_t>()[0], 0xF0);
  EXPECT_EQ(odd.packed.data_ptr<uint8_t>()[1], 0xC7);
}

TEST(Nf4Quantize, EqualsTheArgminReferenceAndAbsmaxPerBlock) {
  at::manual_seed(1);
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (int64_t blocksize : {32, 64, 256}) {
      // 77 x 45 = 3465 values: a partial last block and an odd count.
      const at::Tensor w = (at::randn({77, 45}) * 0.03).to(dtype);
      const Nf4Tensor q = mftk::nf4::quantize_nf4(w, blocksize, false);
      const Reference ref = reference_quantize(w, blocksize);
      EXPECT_TRUE(at::equal(q.absmax, ref.absmax)) << c10::toString(dtype) << " block " << blocksize;
      const int64_t mismatches = (unpack_codes(q) != ref.codes).sum().item<int64_t>();
      EXPECT_EQ(mismatches, 0) << c10::toString(dtype) << " block " << blocksize;
      EXPECT_EQ(q.dtype, dtype);
      EXPECT_EQ(q.shape, (std::vector<int64_t>{77, 45}));
    }
  }
}

TEST(Nf4Quantize, DequantisedErrorWithinHalfTheLargestGapTimesAbsmax) {
  double largest_gap = 0;
  for (int k = 0; k < 15; ++k) largest_gap = std::max(largest_gap, kTable[k + 1] - kTable[k]);
  at::manual_seed(2);
  const at::Tensor w = at::randn({64, 200}) * 0.02;
  for (int64_t blocksize : {32, 64, 128}) {
    const Nf4Tensor q = mftk::nf4::quantize_nf4(w, blocksize, false);
    const at::Tensor back = mftk::nf4::dequantize_nf4(q, at::kFloat).reshape({-1});
    const at::Tensor absmax = q.absmax.repeat_interleave(blocksize).narrow(0, 0, w.numel());
    const at::Tensor bound = absmax * (0.5 * largest_gap) * (1 + 1e-6);
    EXPECT_TRUE(((back - w.reshape({-1})).abs() <= bound).all().item<bool>()) << "block " << blocksize;
    // Each block's largest value comes back exactly (code +-1 times absmax).
    EXPECT_TRUE(at::equal(back.view({-1, blocksize}).abs().amax(1), q.absmax));
  }
}

TEST(Nf4Quantize, AllZeroBlockDequantisesToZero) {
  const Nf4Tensor q = mftk::nf4::quantize_nf4(at::zeros({2, 64}), 64, false);
  EXPECT_TRUE(at::equal(mftk::nf4::dequantize_nf4(q, at::kFloat).abs(), at::zeros({2, 64})));
}

// ---------------------------------------------------------------------------
// Dequantisation: both kernels, against the formula.

TEST(Nf4Dequant, ScalarEqualsCodeTimesAbsmaxFormula) {
  at::manual_seed(3);
  const Nf4Tensor q = mftk::nf4::quantize_nf4(at::randn({7, 13}), 32, false);  // 91 values: odd, partial block
  const at::Tensor formula = code_table().index_select(0, unpack_codes(q)) *
                             q.absmax.repeat_interleave(32).narrow(0, 0, q.numel());
  const at::Tensor f32 = mftk::nf4::dequantize_nf4(q, at::kFloat, DequantPath::scalar);
  EXPECT_TRUE(at::equal(f32.reshape({-1}), formula));
  const at::Tensor bf16 = mftk::nf4::dequantize_nf4(q, at::kBFloat16, DequantPath::scalar);
  EXPECT_TRUE(at::equal(bf16.reshape({-1}), formula.to(at::kBFloat16)));  // one rounding, nearest-even
}

TEST(Nf4Dequant, Avx2AndScalarPathsAgreeBitForBit) {
  if (!mftk::nf4::avx2_available()) GTEST_SKIP() << "this CPU has no AVX2";
  at::manual_seed(4);
  // Shapes with whole 16-byte runs, a tail shorter than 16 bytes, a partial block, an odd count.
  for (auto shape : std::vector<std::vector<int64_t>>{{64, 128}, {3, 50}, {7, 13}, {1, 1}, {33, 4097}}) {
    for (int64_t blocksize : {32, 64, 4096}) {
      const Nf4Tensor q = mftk::nf4::quantize_nf4(at::randn(shape), blocksize, false);
      for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
        const at::Tensor a = mftk::nf4::dequantize_nf4(q, dtype, DequantPath::scalar);
        const at::Tensor b = mftk::nf4::dequantize_nf4(q, dtype, DequantPath::avx2);
        EXPECT_TRUE(same_bytes(a, b)) << "shape " << shape[0] << "x" << shape[1] << " block " << blocksize << " "
                                      << c10::toString(dtype);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The dynamic map and double quantisation.

// The map itself is pinned to bitsandbytes' values in optimizer_test.cpp
// (DynamicMap.*); here: double quantisation uses that one table.
TEST(Nf4DoubleQuant, NestedQuantMapIsTheSdkSignedDynamicMap) {
  const mftk::DynamicMap& map = mftk::signed_dynamic_map();
  const at::Tensor nested = mftk::nf4::nested_map_tensor();
  ASSERT_EQ(nested.numel(), 256);
  for (int k = 0; k < 256; ++k) EXPECT_EQ(nested[k].item<float>(), map[k]) << "code " << k;
  // ... and it is what a double-quantised weight carries and saves.
  const Nf4Tensor q = mftk::nf4::quantize_nf4(at::randn({8, 64}), 64, true);
  EXPECT_TRUE(at::equal(q.nested_map, nested));
}

TEST(Nf4DoubleQuant, NearestDynamicCodeIsANearestCode) {
  const mftk::DynamicMap& map = mftk::signed_dynamic_map();
  at::manual_seed(5);
  const at::Tensor xs = at::rand({20000}) * 2 - 1;
  for (int64_t i = 0; i < xs.numel(); ++i) {
    const float x = xs[i].item<float>();
    const int c = mftk::nearest_dynamic_code(map, x);
    const float d = std::fabs(x - map[c]);
    if (c > 0) EXPECT_LE(d, std::fabs(x - map[c - 1])) << x;
    if (c < 255) EXPECT_LE(d, std::fabs(x - map[c + 1])) << x;
  }
  for (int k = 0; k < 256; ++k) EXPECT_EQ(mftk::nearest_dynamic_code(map, map[k]), k);
}

TEST(Nf4DoubleQuant, RecoveredAbsmaxWithinTheDynamicMapBound) {
  const mftk::DynamicMap& map = mftk::signed_dynamic_map();
  double largest_gap = 0;
  for (int k = 0; k < 255; ++k) largest_gap = std::max(largest_gap, double(map[k + 1]) - double(map[k]));
  at::manual_seed(6);
  // 600 x 64 values, blocksize 32: 1200 absmax values = 4 full nested blocks and a partial one.
  const at::Tensor w = at::randn({600, 64}) * at::rand({600, 1}) * 0.05;
  const Nf4Tensor plain = mftk::nf4::quantize_nf4(w, 32, false);
  const Nf4Tensor q = mftk::nf4::quantize_nf4(w, 32, true);
  ASSERT_TRUE(q.double_quant());
  EXPECT_TRUE(at::equal(q.packed, plain.packed));  // the nibbles do not depend on double quant
  const at::Tensor absmax = plain.absmax;
  EXPECT_FLOAT_EQ(q.offset, static_cast<float>(absmax.to(at::kDouble).mean().item<double>()));
  ASSERT_EQ(q.nested_absmax.numel(), 5);
  const at::Tensor centred = absmax - q.offset;
  const at::Tensor nested =
      at::constant_pad_nd(centred.abs(), {0, 5 * 256 - 1200}, 0).view({5, 256}).amax(1);
  EXPECT_TRUE(at::equal(q.nested_absmax, nested));
  // absmax = map[code] * nested_absmax[b / 256] + offset, each step a float op.
  const at::Tensor map_t = mftk::nf4::nested_map_tensor();
  const at::Tensor recovered =
      map_t.index_select(0, q.quantized_absmax.to(at::kLong)) * nested.repeat_interleave(256).narrow(0, 0, 1200) +
      q.offset;
  EXPECT_TRUE(at::equal(q.block_absmax(), recovered));
  const at::Tensor bound = nested.repeat_interleave(256).narrow(0, 0, 1200) * (0.5 * largest_gap) + 1e-7;
  EXPECT_TRUE(((recovered - absmax).abs() <= bound).all().item<bool>());
  EXPECT_LT(q.storage_bytes(), plain.storage_bytes());
}

// ---------------------------------------------------------------------------
// The linear op.

TEST(Nf4Linear, ForwardEqualsXTimesDequantisedWeightTransposed) {
  at::manual_seed(7);
  auto q = std::make_shared<Nf4Tensor>(mftk::nf4::quantize_nf4(at::randn({48, 96}) * 0.02, 64, false));
  const at::Tensor x = at::randn({3, 5, 96});
  mftk::nf4::Nf4Linear f32(q, at::kFloat);
  const at::Tensor w = mftk::nf4::dequantize_nf4(*q, at::kFloat);
  EXPECT_TRUE(at::allclose(f32.forward(x), at::matmul(x, w.t()), 1e-5, 1e-6));
  // bf16 compute: x and W rounded to bf16, the result handed back in x's dtype.
  mftk::nf4::Nf4Linear bf16(q, at::kBFloat16);
  const at::Tensor y = bf16.forward(x);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(y, at::linear(x.to(at::kBFloat16), w.to(at::kBFloat16)).to(at::kFloat)));
}

TEST(Nf4Linear, BackwardGivesTheDenseInputGradientAndNoWeightGradient) {
  at::manual_seed(8);
  auto q = std::make_shared<Nf4Tensor>(mftk::nf4::quantize_nf4(at::randn({40, 64}) * 0.02, 32, true));
  mftk::nf4::Nf4Linear op(q, at::kFloat);
  const at::Tensor g = at::randn({2, 6, 40});
  const at::Tensor x = at::randn({2, 6, 64}).requires_grad_(true);
  (op.forward(x) * g).sum().backward();
  const at::Tensor w = mftk::nf4::dequantize_nf4(*q, at::kFloat);  // a plain constant
  const at::Tensor x2 = x.detach().clone().requires_grad_(true);
  (at::linear(x2, w) * g).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_TRUE(at::allclose(x.grad(), x2.grad(), 1e-5, 1e-6));
  EXPECT_FALSE(q->packed.requires_grad());
  EXPECT_FALSE(q->packed.grad().defined());
  EXPECT_TRUE(op.parameters().empty());
  // No graph is built when no input needs a gradient.
  EXPECT_FALSE(op.forward(at::randn({1, 64})).requires_grad());
}

TEST(Nf4Linear, DescribeAndStorageBytesCountedByHand) {
  at::manual_seed(9);
  const at::Tensor w = at::randn({64, 96}).to(at::kBFloat16);
  mftk::nf4::Nf4Quantizer plain({64, false, std::nullopt, {"lm_head"}});
  auto op = plain.quantize("model.layers.0.mlp.up_proj", w, at::kFloat);
  EXPECT_EQ(op->describe(), "nf4(64)");
  EXPECT_EQ(op->storage_bytes(), 6144 / 2 + 96 * 4);  // nibbles + one float per block
  mftk::nf4::Nf4Quantizer dq({64, true, std::nullopt, {"lm_head"}});
  auto op2 = dq.quantize("model.layers.0.mlp.up_proj", w, at::kFloat);
  EXPECT_EQ(op2->describe(), "nf4(64, dq)");
  EXPECT_EQ(op2->storage_bytes(), 6144 / 2 + 96 + 1 * 4);  // nibbles + a byte per block + one nested absmax
  EXPECT_EQ(op->dense_weight(at::kBFloat16).scalar_type(), at::kBFloat16);
  EXPECT_EQ(op->dense_weight(at::kFloat).sizes(), w.sizes());
}

// ---------------------------------------------------------------------------
// The quantizer's keys.

mftk::Config quantize_table(const std::map<std::string, mftk::Value>& values, std::vector<std::string>& errors) {
  mftk::core::Recipe::RawTable raw;
  raw.name = "quantize";
  raw.where = {"r.toml", 1, 1};
  for (const auto& [k, v] : values) raw.values[k] = {v, {"r.toml", 2, 1}, {"r.toml", 2, 1}};
  return mftk::core::validate_table(raw, mftk::nf4::nf4_keys(), errors);
}

TEST(Nf4Quantizer, DefaultsSkipModulesAndBlocksizeChecks) {
  std::vector<std::string> errors;
  const mftk::Config defaults = quantize_table({}, errors);
  ASSERT_TRUE(errors.empty());
  const auto o = mftk::nf4::nf4_options_from_config(defaults);
  EXPECT_EQ(o.blocksize, 64);
  EXPECT_FALSE(o.double_quant);  // transformers' BitsAndBytesConfig default
  EXPECT_FALSE(o.compute_dtype.has_value());
  EXPECT_EQ(o.skip_modules, std::vector<std::string>{"lm_head"});

  mftk::nf4::Nf4Quantizer q(o);
  EXPECT_FALSE(q.wants("lm_head"));
  EXPECT_TRUE(q.wants("model.layers.0.self_attn.q_proj"));
  mftk::nf4::Nf4Quantizer down({64, false, std::nullopt, {"mlp.down_proj"}});
  EXPECT_FALSE(down.wants("model.layers.3.mlp.down_proj"));
  EXPECT_TRUE(down.wants("model.layers.3.mlp.up_proj"));
  mftk::nf4::Nf4Quantizer proj({64, false, std::nullopt, {"proj"}});
  EXPECT_TRUE(proj.wants("model.layers.3.mlp.down_proj"));  // "proj" is not a whole name part

  const mftk::Config bf16 = quantize_table({{"compute_dtype", std::string("bf16")}, {"double_quant", true}}, errors);
  const auto ob = mftk::nf4::nf4_options_from_config(bf16);
  EXPECT_EQ(ob.compute_dtype, at::kBFloat16);
  EXPECT_TRUE(ob.double_quant);

  const mftk::Config odd = quantize_table({{"blocksize", int64_t{48}}}, errors);
  ASSERT_TRUE(errors.empty());
  try {
    mftk::nf4::nf4_options_from_config(odd);
    FAIL() << "blocksize 48 was accepted";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("blocksize"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("power of two"), std::string::npos) << e.what();
  }
  quantize_table({{"blocksize", int64_t{8192}}}, errors);
  EXPECT_FALSE(errors.empty());  // outside 32..4096
}

// ---------------------------------------------------------------------------
// The bitsandbytes checkpoint layout.

TEST(Nf4Save, PythonFloatReprMatchesJsonDumps) {
  using mftk::nf4::python_float_repr;
  // Values printed by Python 3.11's json.dumps.
  EXPECT_EQ(python_float_repr(0.1), "0.1");
  EXPECT_EQ(python_float_repr(1e-05), "1e-05");
  EXPECT_EQ(python_float_repr(0.0001), "0.0001");
  EXPECT_EQ(python_float_repr(2.0), "2.0");
  EXPECT_EQ(python_float_repr(12345.0), "12345.0");
  EXPECT_EQ(python_float_repr(1e16), "1e+16");
  EXPECT_EQ(python_float_repr(1.5e16), "1.5e+16");
  EXPECT_EQ(python_float_repr(1e15), "1000000000000000.0");
  EXPECT_EQ(python_float_repr(123456789012345.6), "123456789012345.6");
  EXPECT_EQ(python_float_repr(double(0.0123f)), "0.012299999594688416");
  EXPECT_EQ(python_float_repr(-3.5e-7), "-3.5e-07");
  EXPECT_EQ(python_float_repr(0.0), "0.0");
}

// A small dense checkpoint folder: one linear weight per kind that matters.
std::string write_dense_folder(const TempDir& dir) {
  const std::string src = dir.sub("dense");
  fs::create_directories(src);
  at::manual_seed(10);
  mftk::save_checkpoint(src, {{"model.embed_tokens.weight", (at::randn({50, 64}) * 0.02).to(at::kBFloat16)},
                              {"model.layers.0.mlp.up_proj.weight", (at::randn({96, 64}) * 0.02).to(at::kBFloat16)},
                              {"model.layers.0.self_attn.k_proj.weight",
                               (at::randn({32, 64}) * 0.02).to(at::kBFloat16)},
                              {"model.norm.weight", at::ones({64}).to(at::kBFloat16)},
                              {"lm_head.weight", (at::randn({50, 64}) * 0.02).to(at::kBFloat16)}});
  std::ofstream(src + "/config.json") << R"({"architectures": ["MistralForCausalLM"], "torch_dtype": "bfloat16"})";
  std::ofstream(src + "/tokenizer_config.json") << "{}";
  return src;
}

TEST(Nf4Save, FolderHasTheBitsandbytesKeysAndConfig) {
  TempDir dir;
  const std::string src = write_dense_folder(dir);
  const std::string out = dir.sub("nf4");
  mftk::nf4::Nf4Options o;
  const auto report = mftk::nf4::quantize_checkpoint(src, out, o);
  EXPECT_EQ(report.quantized, 2);  // up_proj and k_proj; not the embedding, the norm or lm_head

  const auto reader = mftk::CheckpointReader::open(out);
  const std::string p = "model.layers.0.mlp.up_proj.weight";
  EXPECT_EQ(reader.info(p).dtype, "U8");
  EXPECT_EQ(reader.info(p).shape, (std::vector<int64_t>{96 * 64 / 2, 1}));
  EXPECT_EQ(reader.info(p + ".absmax").dtype, "F32");
  EXPECT_EQ(reader.info(p + ".absmax").shape, (std::vector<int64_t>{96}));
  EXPECT_EQ(reader.info(p + ".quant_map").shape, (std::vector<int64_t>{16}));
  const at::Tensor qmap = reader.get(p + ".quant_map");
  EXPECT_TRUE(at::equal(qmap, code_table()));
  EXPECT_FALSE(reader.contains(p + ".nested_absmax"));
  const at::Tensor state = reader.get(p + ".quant_state.bitsandbytes__nf4");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(state.data_ptr<uint8_t>()), size_t(state.numel())),
            R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [96, 64]})");
  // Dense tensors are byte for byte the source's.
  const auto source = mftk::CheckpointReader::open(src);
  for (const char* name : {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"})
    EXPECT_TRUE(same_bytes(reader.get(name), source.get(name))) << name;

  const json cfg = json::parse(read_text(out + "/config.json"));
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  const json& qc = cfg.at("quantization_config");
  EXPECT_EQ(qc["quant_method"], "bitsandbytes");
  EXPECT_EQ(qc["load_in_4bit"], true);
  EXPECT_EQ(qc["load_in_8bit"], false);
  EXPECT_EQ(qc["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(qc["bnb_4bit_use_double_quant"], false);
  EXPECT_EQ(qc["bnb_4bit_compute_dtype"], "bfloat16");  // auto: the checkpoint's torch_dtype
  EXPECT_EQ(qc["bnb_4bit_quant_storage"], "uint8");
  EXPECT_EQ(qc["llm_int8_skip_modules"], json::array({"lm_head"}));
  EXPECT_TRUE(fs::exists(out + "/tokenizer_config.json"));
}

TEST(Nf4Save, SaveThenLoadIsBitExactWithAndWithoutDoubleQuant) {
  TempDir dir;
  const std::string src = write_dense_folder(dir);
  const auto source = mftk::CheckpointReader::open(src);
  for (bool dq : {false, true}) {
    const std::string out = dir.sub(dq ? "dq" : "plain");
    mftk::nf4::Nf4Options o;
    o.double_quant = dq;
    o.compute_dtype = at::kFloat;
    mftk::nf4::quantize_checkpoint(src, out, o);
    const auto loaded = mftk::nf4::load_nf4_checkpoint(out);
    ASSERT_EQ(loaded.quantized.size(), 2u);
    EXPECT_EQ(loaded.other_tensors,
              (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"}));
    for (const auto& [module, w] : loaded.quantized) {
      const Nf4Tensor fresh = mftk::nf4::quantize_nf4(source.get(module + ".weight"), 64, dq);
      EXPECT_EQ(w->shape, fresh.shape) << module;
      EXPECT_EQ(w->dtype, at::kBFloat16) << module;
      EXPECT_EQ(w->double_quant(), dq) << module;
      EXPECT_TRUE(same_bytes(w->packed, fresh.packed)) << module;
      if (dq) {
        EXPECT_TRUE(same_bytes(w->quantized_absmax, fresh.quantized_absmax)) << module;
        EXPECT_TRUE(same_bytes(w->nested_absmax, fresh.nested_absmax)) << module;
        EXPECT_TRUE(same_bytes(w->nested_map, fresh.nested_map)) << module;
        EXPECT_EQ(w->offset, fresh.offset) << module;  // through the JSON repr and back
      } else {
        EXPECT_TRUE(same_bytes(w->absmax, fresh.absmax)) << module;
      }
      EXPECT_TRUE(same_bytes(mftk::nf4::dequantize_nf4(*w, at::kFloat), mftk::nf4::dequantize_nf4(fresh, at::kFloat)));
    }
    const json qc = json::parse(read_text(out + "/config.json")).at("quantization_config");
    EXPECT_EQ(qc["bnb_4bit_use_double_quant"], dq);
    EXPECT_EQ(qc["bnb_4bit_compute_dtype"], "float32");
    if (dq) {
      const auto reader = mftk::CheckpointReader::open(out);
      const std::string p = "model.layers.0.self_attn.k_proj.weight";
      EXPECT_EQ(reader.info(p + ".absmax").dtype, "U8");
      EXPECT_EQ(reader.info(p + ".nested_absmax").shape, (std::vector<int64_t>{1}));
      EXPECT_EQ(reader.info(p + ".nested_quant_map").shape, (std::vector<int64_t>{256}));
      const at::Tensor state = reader.get(p + ".quant_state.bitsandbytes__nf4");
      const std::string text(reinterpret_cast<const char*>(state.data_ptr<uint8_t>()), size_t(state.numel()));
      const Nf4Tensor fresh = mftk::nf4::quantize_nf4(source.get(p), 64, true);
      EXPECT_EQ(text, R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [32, 64], )"
                      R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": )" +
                          mftk::nf4::python_float_repr(fresh.offset) + "}");
    }
  }
}

TEST(Nf4Save, LoadRefusesFp4AndForeignQuantMaps) {
  TempDir dir;
  const std::string src = write_dense_folder(dir);
  const std::string out = dir.sub("nf4");
  mftk::nf4::quantize_checkpoint(src, out, mftk::nf4::Nf4Options{});
  // Rewrite the folder with a damaged quant_map on one module.
  const auto reader = mftk::CheckpointReader::open(out);
  mftk::NamedTensors tensors;
  for (const auto& name : reader.names()) {
    at::Tensor t = reader.get(name).clone();
    if (name == "model.layers.0.mlp.up_proj.weight.quant_map") t.mul_(0.5);
    tensors.emplace_back(name, t);
  }
  const std::string bad = dir.sub("bad");
  fs::create_directories(bad);
  mftk::save_checkpoint(bad, tensors);
  try {
    mftk::nf4::load_nf4_checkpoint(bad);
    FAIL() << "a foreign quant_map was accepted";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.up_proj.weight.quant_map"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------
// QLoRA: a tiny Mistral loaded through the registry with the nf4 quantizer.

std::unique_ptr<mftk::Quantizer> nf4_quantizer(mftk::core::Registry& registry,
                                               const std::map<std::string, mftk::Value>& keys) {
  return registry.create<mftk::Quantizer>(
      mftk::Kind::quantizer, "nf4", mftk::core::component_config(registry, mftk::Kind::quantizer, "nf4", "quantize", keys));
}

// The mistral plugin loading `dir` with fp32 compute and `quantizer` (may be null).
mftk::core::ModelBundle load_mistral(mftk::core::Registry& registry, const std::string& dir,
                                     std::unique_ptr<mftk::Quantizer> quantizer) {
  mftk::core::ModelBundle b;
  b.quantizer = std::move(quantizer);
  b.model = registry.create<mftk::Model>(
      mftk::Kind::model, "mistral",
      mftk::core::component_config(registry, mftk::Kind::model, "mistral", "model", {{"path", dir}}));
  mftk::LoadOptions lo;
  lo.path = dir;
  lo.compute_dtype = at::kFloat;
  lo.quantizer = b.quantizer.get();
  b.model->load_config(dir);
  b.model->load(lo);
  return b;
}

TEST(Nf4Qlora, TinyMistralLoadsQuantisedTrainsAndStaysCloseToFp32) {
  tt::QuietLog quiet;
  const std::string dir = tt::tiny_checkpoint(2);
  mftk::core::Registry registry;
  mftk::core::ModelBundle dense = load_mistral(registry, dir, nullptr);
  mftk::core::ModelBundle q = load_mistral(registry, dir, nf4_quantizer(registry, {}));

  int quantised_slots = 0;
  double weight_error = 0, weight_norm = 0;
  auto dense_slots = dense.model->linear_slots();
  auto q_slots = q.model->linear_slots();
  ASSERT_EQ(dense_slots.size(), q_slots.size());
  for (size_t i = 0; i < q_slots.size(); ++i) {
    if (q_slots[i]->name == "lm_head") {
      EXPECT_EQ(q_slots[i]->op->describe().rfind("dense", 0), 0u) << q_slots[i]->op->describe();
      continue;
    }
    EXPECT_EQ(q_slots[i]->op->describe(), "nf4(64)") << q_slots[i]->name;
    ++quantised_slots;
    const at::Tensor wd = dense_slots[i]->op->dense_weight(at::kFloat);
    weight_error += (q_slots[i]->op->dense_weight(at::kFloat) - wd).pow(2).sum().item<double>();
    weight_norm += wd.pow(2).sum().item<double>();
  }
  EXPECT_EQ(quantised_slots, 2 * 7);
  const double weight_rel = std::sqrt(weight_error / weight_norm);
  // NF4 on Gaussian blocks of 64: about 10% relative RMS error per weight.
  EXPECT_GT(weight_rel, 0.03);
  EXPECT_LT(weight_rel, 0.15);

  const int64_t vocab = q.model->shape().vocab_size;
  const std::vector<mftk::PackedRow> rows = tt::synthetic_rows(11, 8, vocab);
  const mftk::Batch batch = mftk::core::make_batch(rows);
  at::Tensor logits_q, logits_f;
  {
    at::NoGradGuard no_grad;
    logits_q = q.model->logits(q.model->forward(batch));
    logits_f = dense.model->logits(dense.model->forward(batch));
  }
  const double logits_rel = ((logits_q - logits_f).norm() / logits_f.norm()).item<double>();
  EXPECT_GT(logits_rel, 0.0);               // it is quantised
  EXPECT_LT(logits_rel, 2.0 * weight_rel);  // and no worse than the weights' own error suggests

  // The packed weights, to check training leaves them alone.
  const mftk::nf4::Nf4Weights base = mftk::nf4::nf4_weights_of(*q.model);
  ASSERT_EQ(base.size(), 14u);
  std::map<std::string, at::Tensor> packed_before;
  for (const auto& [name, w] : base) packed_before[name] = w->packed.clone();

  // QLoRA: LoRA over the NF4 ops, a few AdamW steps lower the loss.
  at::manual_seed(12);
  mftk::lora::LoRAOptions lo;
  lo.r = 4;
  lo.alpha = 8;
  mftk::lora::LoRAAdapter adapter(lo);
  adapter.inject(*q.model);
  EXPECT_EQ(q_slots[0]->op->describe(), "lora(r=4) over nf4(64)");
  mftk::NamedTensors trainable = adapter.trainable_parameters();
  EXPECT_EQ(trainable.size(), 2u * 14);  // lora_A and lora_B of each quantised slot, nothing else
  mftk::adamw::AdamW optimizer(mftk::adamw::AdamWOptions{});
  optimizer.attach(trainable);
  const double loss_before = mftk::core::evaluate_loss(*q.model, rows, 4).loss;
  TempDir out;
  mftk::core::TrainOptions o;
  o.micro_batch_size = 4;
  o.max_steps = 12;
  o.max_grad_norm = 0.0;
  o.logging_steps = 100;
  o.progress_bar = false;
  o.output_dir = out.sub("run");
  o.schedule.kind = "constant";
  o.schedule.peak_lr = 1e-2;
  mftk::core::Trainer trainer(*q.model, optimizer, trainable, rows, {}, o);
  const mftk::core::TrainResult result = trainer.train();
  EXPECT_EQ(result.steps, 12);
  const double loss_after = mftk::core::evaluate_loss(*q.model, rows, 4).loss;
  EXPECT_LT(loss_after, loss_before - 0.05) << "before " << loss_before << " after " << loss_after;
  for (const auto& [name, w] : base) {
    EXPECT_TRUE(same_bytes(w->packed, packed_before[name])) << name;
    EXPECT_FALSE(w->packed.grad().defined()) << name;
  }
}

// A folder written by the quantizer's checkpoint writer loads back through
// the model plugin as stored: the same packed bytes and the same logits as
// quantising the dense checkpoint while loading, and the core picks the
// quantizer from config.json when the recipe names none.
TEST(Nf4Qlora, SavedFolderLoadsAsStoredAndComputesWhatQuantisingAtLoadDoes) {
  tt::QuietLog quiet;
  const std::string dense_dir = tt::tiny_checkpoint(2);
  TempDir out;
  const std::string q_dir = out.sub("nf4");
  mftk::nf4::Nf4Options options;
  options.double_quant = true;
  mftk::nf4::quantize_checkpoint(dense_dir, q_dir, options);
  mftk::core::Registry registry;
  EXPECT_EQ(mftk::core::stored_quantizer_plugin(registry, q_dir), "nf4");
  EXPECT_EQ(mftk::core::stored_quantizer_plugin(registry, dense_dir), "");

  mftk::core::ModelBundle at_load = load_mistral(registry, dense_dir, nf4_quantizer(registry, {{"double_quant", true}}));
  // No [quantize]: the quantizer is picked from config.json.
  mftk::core::ModelBundle stored =
      load_mistral(registry, q_dir, mftk::core::quantizer_for_checkpoint(registry, q_dir, nullptr, ""));
  ASSERT_TRUE(stored.quantizer);

  const mftk::nf4::Nf4Weights a = mftk::nf4::nf4_weights_of(*at_load.model);
  const mftk::nf4::Nf4Weights b = mftk::nf4::nf4_weights_of(*stored.model);
  ASSERT_EQ(a.size(), 14u);
  ASSERT_EQ(b.size(), a.size());
  for (const auto& [name, w] : a) {
    ASSERT_TRUE(b.count(name)) << name;
    EXPECT_TRUE(same_bytes(w->packed, b.at(name)->packed)) << name;
    EXPECT_TRUE(same_bytes(w->block_absmax(), b.at(name)->block_absmax())) << name;
  }
  const std::vector<mftk::PackedRow> rows = tt::synthetic_rows(5, 3, at_load.model->shape().vocab_size);
  const mftk::Batch batch = mftk::core::make_batch(rows);
  at::NoGradGuard no_grad;
  const at::Tensor la = at_load.model->logits(at_load.model->forward(batch));
  const at::Tensor lb = stored.model->logits(stored.model->forward(batch));
  EXPECT_TRUE(same_bytes(la, lb)) << "max diff " << (la - lb).abs().max().item<double>();

  // A recipe naming another quantizer for a stored NF4 folder is refused.
  try {
    mftk::core::quantizer_for_checkpoint(registry, q_dir, nf4_quantizer(registry, {}), "int8");
    ADD_FAILURE() << "expected a UsageError";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("saved quantised by the 'nf4' quantizer"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------
// Loading refuses stored 4-bit weights whose sizes do not fit: nothing in the
// files is trusted to fit anything else.

// A copy of the checkpoint folder `from` at `to`, its tensors changed by
// `edit` (config.json and the other files as they were).
void damaged_copy(const std::string& from, const std::string& to,
                  const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
  const auto reader = mftk::CheckpointReader::open(from);
  std::map<std::string, at::Tensor> tensors;
  for (const auto& name : reader.names()) tensors[name] = reader.get(name).clone();
  edit(tensors);
  fs::create_directories(to);
  mftk::save_checkpoint(to, mftk::NamedTensors(tensors.begin(), tensors.end()));
  for (const auto& e : fs::directory_iterator(from)) {
    const std::string file = e.path().filename().string();
    if (e.path().extension() != ".safetensors" && file != "model.safetensors.index.json")
      fs::copy_file(e.path(), fs::path(to) / file);
  }
}

at::Tensor text_tensor(const std::string& text) {
  at::Tensor t = at::empty({int64_t(text.size())}, at::kByte);
  std::memcpy(t.data_ptr<uint8_t>(), text.data(), text.size());
  return t;
}

// The message of the mftk::Error `load` throws ("(accepted)" when none).
std::string refusal(const std::function<void()>& load) {
  try {
    load();
  } catch (const mftk::UsageError& e) {
    return std::string("(a UsageError, not an Error about the file) ") + e.what();
  } catch (const mftk::Error& e) {
    return e.what();
  }
  return "(accepted)";
}

struct BadFolder {
  const char* what;
  std::function<void(std::map<std::string, at::Tensor>&)> edit;
  std::vector<std::string> message;  // each must appear: the tensor, what was expected and what was found
};

TEST(Nf4Load, RefusesStoredWeightsWhoseSizesDoNotFitTheirQuantState) {
  TempDir dir;
  const std::string src = write_dense_folder(dir);  // up_proj [96, 64]: 6144 values, 3072 bytes, 96 blocks of 64
  const std::string plain = dir.sub("plain"), dq = dir.sub("dq");
  mftk::nf4::quantize_checkpoint(src, plain, mftk::nf4::Nf4Options{});
  mftk::nf4::Nf4Options dq_options;
  dq_options.double_quant = true;
  mftk::nf4::quantize_checkpoint(src, dq, dq_options);
  ASSERT_EQ(mftk::nf4::load_nf4_checkpoint(plain).quantized.size(), 2u);  // both load as written
  ASSERT_EQ(mftk::nf4::load_nf4_checkpoint(dq).quantized.size(), 2u);

  const std::string p = "model.layers.0.mlp.up_proj.weight";
  const std::string state = p + ".quant_state.bitsandbytes__nf4";
  auto with_state = [&](const std::string& json_text) {
    return [=](std::map<std::string, at::Tensor>& t) { t[state] = text_tensor(json_text); };
  };
  auto plain_state = [](const std::string& blocksize, const std::string& shape) {
    return R"({"quant_type": "nf4", "blocksize": )" + blocksize + R"(, "dtype": "bfloat16", "shape": )" + shape + "}";
  };
  const std::vector<BadFolder> plain_cases = {
      {"a shape with twice the values the packed bytes hold", with_state(plain_state("64", "[96, 128]")),
       {"tensor '" + p + "'", "holds 3072 values, expected 6144", "shape [96, 128]"}},
      {"a shape whose element count overflows int64 (3037000500^2 > 2^63)",
       with_state(plain_state("64", "[3037000500, 3037000500]")),
       {"tensor '" + state + "'", "[3037000500,3037000500]", "more values than an int64 counts"}},
      {"a shape of exactly 2^63 values", with_state(plain_state("64", "[2305843009213693952, 4]")),
       {"tensor '" + state + "'", "more values than an int64 counts"}},
      {"an empty dimension", with_state(plain_state("64", "[96, 0]")), {"tensor '" + state + "'", "empty dimension"}},
      {"a negative dimension", with_state(plain_state("64", "[-96, -64]")), {"tensor '" + state + "'", "[-96,-64]"}},
      {"a 3-D shape", with_state(plain_state("64", "[2, 48, 64]")), {"tensor '" + state + "'", "is not [out, in]"}},
      {"blocksize 48 (not a power of two)", with_state(plain_state("48", "[96, 64]")),
       {"tensor '" + state + "'", "blocksize 48 is not one bitsandbytes' 4-bit kernels take",
        "a power of two from 32 to 4096"}},
      {"blocksize 16 (below bitsandbytes' smallest)", with_state(plain_state("16", "[96, 64]")), {"blocksize 16 is not"}},
      {"blocksize 8192 (above bitsandbytes' largest)", with_state(plain_state("8192", "[96, 64]")),
       {"blocksize 8192 is not"}},
      {"blocksize 0", with_state(plain_state("0", "[96, 64]")), {"blocksize 0 is not"}},
      {"blocksize 2^62 (would overflow a block count)", with_state(plain_state("4611686018427387904", "[96, 64]")),
       {"blocksize 4611686018427387904 is not"}},
      {"a fractional blocksize", with_state(plain_state("64.5", "[96, 64]")), {"blocksize 64.5 is not"}},
      {"blocksize 128 with an absmax of 64-value blocks", with_state(plain_state("128", "[96, 64]")),
       {"tensor '" + p + ".absmax'", "holds 96 values, expected 48", "one per block of 128 for shape [96, 64]"}},
      {"an absmax one value short",
       [&](std::map<std::string, at::Tensor>& t) { t[p + ".absmax"] = t[p + ".absmax"].narrow(0, 0, 95).clone(); },
       {"tensor '" + p + ".absmax'", "holds 95 values, expected 96"}},
      {"a float16 absmax",
       [&](std::map<std::string, at::Tensor>& t) { t[p + ".absmax"] = t[p + ".absmax"].to(at::kHalf); },
       {"tensor '" + p + ".absmax'", "dtype is Half, expected Float"}},
      {"packed bytes of another layout",
       [&](std::map<std::string, at::Tensor>& t) { t[p] = t[p].reshape({1536, 2}).clone(); },
       {"tensor '" + p + "'", "shape [1536, 2] is not [3072, 1]"}},
      {"packed bytes stored as float32",
       [&](std::map<std::string, at::Tensor>& t) { t[p] = t[p].to(at::kFloat); },
       {"tensor '" + p + "'", "dtype is Float, expected Byte"}},
  };
  const std::vector<BadFolder> dq_cases = {
      {"a quantised absmax one code short",
       [&](std::map<std::string, at::Tensor>& t) { t[p + ".absmax"] = t[p + ".absmax"].narrow(0, 0, 95).clone(); },
       {"tensor '" + p + ".absmax'", "holds 95 values, expected 96"}},
      {"two nested absmax values for 96 blocks",
       [&](std::map<std::string, at::Tensor>& t) { t[p + ".nested_absmax"] = at::ones({2}); },
       {"tensor '" + p + ".nested_absmax'", "holds 2 values, expected 1", "one per 256 absmax values"}},
      {"a nested quant map of 255 values",
       [&](std::map<std::string, at::Tensor>& t) {
         t[p + ".nested_quant_map"] = t[p + ".nested_quant_map"].narrow(0, 0, 255).clone();
       },
       {"tensor '" + p + ".nested_quant_map'", "holds 255 values, expected 256"}},
  };
  int n = 0;
  for (const auto& [cases, from] : {std::make_pair(&plain_cases, plain), std::make_pair(&dq_cases, dq)}) {
    for (const BadFolder& c : *cases) {
      SCOPED_TRACE(c.what);
      const std::string bad = dir.sub("bad" + std::to_string(n++));
      damaged_copy(from, bad, c.edit);
      const std::string message = refusal([&] { mftk::nf4::load_nf4_checkpoint(bad); });
      EXPECT_NE(message.find("nf4: " + bad + ": "), std::string::npos) << message;  // the folder
      for (const auto& part : c.message) EXPECT_NE(message.find(part), std::string::npos) << part << "\n" << message;
    }
  }
}

// A stored weight consistent in itself but of another layer's shape is
// refused when the model loads it, naming the folder, the weight and both
// shapes; so is a damaged one, with the folder the quantizer cannot name.
TEST(Nf4Load, AStoredWeightThatDoesNotFitItsLayerIsRefusedByTheModel) {
  tt::QuietLog quiet;
  const std::string dense_dir = tt::tiny_checkpoint(1);  // hidden 64, intermediate 128, 2 kv heads of 16
  TempDir out;
  const std::string q_dir = out.sub("nf4");
  mftk::nf4::quantize_checkpoint(dense_dir, q_dir, mftk::nf4::Nf4Options{});
  mftk::core::Registry registry;
  auto load = [&](const std::string& dir) {
    return refusal([&] { load_mistral(registry, dir, mftk::core::quantizer_for_checkpoint(registry, dir, nullptr, "")); });
  };
  ASSERT_EQ(load(q_dir), "(accepted)");

  const std::string q = "model.layers.0.self_attn.q_proj.weight", k = "model.layers.0.self_attn.k_proj.weight";
  const std::string up = "model.layers.0.mlp.up_proj.weight";
  // q_proj [64, 64] holding k_proj's [32, 64] weight: the inputs fit, the outputs do not.
  const std::string swapped = out.sub("swapped");
  damaged_copy(q_dir, swapped, [&](std::map<std::string, at::Tensor>& t) {
    for (const char* suffix : {"", ".absmax", ".quant_map", ".quant_state.bitsandbytes__nf4"})
      t[q + suffix] = t[k + suffix];
  });
  std::string message = load(swapped);
  for (const std::string& part : std::vector<std::string>{"checkpoint " + swapped + ": ", "'" + q + "'",
                                                         "gives 32 outputs", "config.json implies shape [64, 64]"})
    EXPECT_NE(message.find(part), std::string::npos) << part << "\n" << message;

  // up_proj [128, 64] stored as [64, 128]: the same values and blocks, transposed.
  const std::string transposed = out.sub("transposed");
  damaged_copy(q_dir, transposed, [&](std::map<std::string, at::Tensor>& t) {
    t[up + ".quant_state.bitsandbytes__nf4"] =
        text_tensor(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 128]})");
  });
  message = load(transposed);
  for (const std::string& part :
       std::vector<std::string>{"checkpoint " + transposed + ": ", "'" + up + "'",
                                "does not take the 64 inputs of shape [128, 64]", "the weight [64, 128] expects 128"})
    EXPECT_NE(message.find(part), std::string::npos) << part << "\n" << message;

  // Damaged sizes: the nf4 message, with the folder in front.
  const std::string short_absmax = out.sub("short_absmax");
  damaged_copy(q_dir, short_absmax, [&](std::map<std::string, at::Tensor>& t) {
    t[up + ".absmax"] = t[up + ".absmax"].narrow(0, 0, 3).clone();
  });
  message = load(short_absmax);
  for (const std::string& part : std::vector<std::string>{
           "checkpoint " + short_absmax + ": nf4: tensor '" + up + ".absmax'", "holds 3 values, expected 128"})
    EXPECT_NE(message.find(part), std::string::npos) << part << "\n" << message;
}

}  // namespace
