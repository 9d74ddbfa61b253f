// The GGUF exporter and reader against independent facts: Q8_0 and half
// precision bytes worked out by hand from ggml's definitions (and torch's
// own fp16 conversion), the Q/K row order of llama.cpp's HF converter
// rebuilt with torch reshapes, files laid out byte by byte here for the
// reader's error paths, a writer -> reader round trip of every value type,
// and a tiny Mistral exported and read back tensor by tensor.
// (llama.cpp itself reads our files in scripts/check-gguf-llamacpp.sh.)
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Half.h>
#include <nlohmann/json.hpp>

#include "gguf/ggml_quants.h"
#include "gguf/gguf_exporter.h"
#include "gguf/gguf_writer.h"
#include "gguf/kquants.h"
#include "gguf/llama_export_plan.h"
#include "gguf_format.h"
#include "gguf_reader.h"
#include "mftk/error.h"
#include "mftk/safetensors.h"
#include "mftk/tokenizer.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using mftk::core::GgmlType;
using mftk::core::GgufFile;
using mftk::core::GgufValue;
using mftk::core::GgufValueType;
using mftk::gguf::GgufTensorDecl;
using mftk::gguf::GgufWriter;

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// Expects GgufFile::open to throw mftk::Error whose text contains `needle`.
void expect_rejected(const std::string& path, const std::string& needle) {
  try {
    (void)GgufFile::open(path);
    ADD_FAILURE() << "accepted a bad file; expected an error containing: " << needle;
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "the error should name the file: " << e.what();
  }
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void write_json(const fs::path& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

// convert_hf_to_gguf.py's type for a tokenizer.model piece that no added
// token overrides: sentencepiece's UNKNOWN, CONTROL, UNUSED and BYTE stay,
// everything else (user-defined pieces too) is NORMAL.
int64_t converter_type(mftk::PieceType t) {
  using mftk::PieceType;
  return t == PieceType::unknown || t == PieceType::control || t == PieceType::unused || t == PieceType::byte
             ? int64_t(t)
             : 1;
}

// ------------------------------------------------------------------ encodings

TEST(GgufQ8_0, HandWorkedBlocks) {
  // Block 0: amax 127 -> d = 1 (fp16 0x3C00), id = 1, so q = roundf(x):
  // halves go away from zero (2.5 -> 3, -2.5 -> -3, -126.5 -> -127), where
  // round-half-even would give 2 and -2.
  // Block 1: amax 254 -> d = 2 (0x4000), id = 0.5: 5 -> 2.5 -> 3, -7 -> -4.
  // Block 2: all zeros -> d = 0, id = 0, every q 0.
  std::vector<float> x(96, 0.0f);
  const float b0[] = {127, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 3.49f, -126.5f, 0, 1.0f};
  std::copy(std::begin(b0), std::end(b0), x.begin());
  const float b1[] = {254, 5, -7, 1, -1, 0.9f, -253};
  std::copy(std::begin(b1), std::end(b1), x.begin() + 32);
  std::vector<uint8_t> out(3 * 34, 0xAA);
  mftk::gguf::quantize_row_q8_0(x.data(), out.data(), x.size());

  std::vector<uint8_t> want(3 * 34, 0);
  want[0] = 0x00, want[1] = 0x3C;  // d = 1.0 as little-endian fp16
  const int8_t q0[] = {127, 3, -3, 1, -1, 2, 3, -127, 0, 1};
  for (size_t j = 0; j < std::size(q0); ++j) want[2 + j] = uint8_t(q0[j]);
  want[34] = 0x00, want[35] = 0x40;  // d = 2.0
  const int8_t q1[] = {127, 3, -4, 1, -1, 0, -127};  // 0.45 -> 0; -126.5 -> -127
  for (size_t j = 0; j < std::size(q1); ++j) want[36 + j] = uint8_t(q1[j]);
  EXPECT_EQ(out, want);

  std::vector<float> back(96);
  mftk::gguf::dequantize_row_q8_0(out.data(), back.data(), back.size());
  EXPECT_EQ(back[1], 3.0f);
  EXPECT_EQ(back[34], -8.0f);
  EXPECT_EQ(back[70], 0.0f);
}

TEST(GgufQ8_0, RejectsPartialBlocks) {
  std::vector<float> x(33, 1.0f);
  std::vector<uint8_t> out(68);
  EXPECT_THROW(mftk::gguf::quantize_row_q8_0(x.data(), out.data(), x.size()), mftk::Error);
}

TEST(GgufQ8_0, DequantisedWithinHalfAStep) {
  // q = round(x / d) is off by at most half a step d/2; storing d as fp16
  // moves each value by at most |q| * |d - fp16(d)| <= 127 |d - fp16(d)|.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = 32 * 4096;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = normal(rng) * (i % 97 == 0 ? 40.0f : 1.0f);
  std::vector<uint8_t> q(n / 32 * 34);
  mftk::gguf::quantize_row_q8_0(x.data(), q.data(), n);
  std::vector<float> back(n);
  mftk::gguf::dequantize_row_q8_0(q.data(), back.data(), n);
  double worst = 0;
  for (size_t b = 0; b < n / 32; ++b) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127.0f;
    const float d16 = mftk::gguf::fp16_to_fp32(mftk::gguf::fp32_to_fp16(d));
    const double bound = d / 2.0 + 127.0 * std::fabs(double(d) - d16) + 1e-6 * amax;
    for (size_t j = 0; j < 32; ++j) {
      const double err = std::fabs(double(x[b * 32 + j]) - back[b * 32 + j]);
      ASSERT_LE(err, bound) << "block " << b << " element " << j;
      worst = std::max(worst, err / d);
    }
  }
  EXPECT_GT(worst, 0.3);  // the bound is not vacuous
}

TEST(GgufHalf, MatchesTorchConversion) {
  // c10::Half rounds to nearest even like ggml's fp32 -> fp16; compare on
  // special values and a million random bit patterns (NaNs only by class).
  std::vector<uint32_t> patterns = {0x00000000, 0x80000000, 0x3f800000, 0x477fe000, 0x477ff000, 0x47800000,
                                    0x7f800000, 0xff800000, 0x33000000, 0x33000001, 0x337fffff, 0x38800000,
                                    0x387fc000, 0x387fe000, 0x3c7ff000, 0x3c7fe000};
  std::mt19937 rng(11);
  for (int i = 0; i < 1000000; ++i) patterns.push_back(rng());
  for (uint32_t u : patterns) {
    float x;
    std::memcpy(&x, &u, 4);
    const uint16_t ours = mftk::gguf::fp32_to_fp16(x);
    if (std::isnan(x)) {
      EXPECT_EQ(ours & 0x7c00, 0x7c00);
      EXPECT_NE(ours & 0x03ff, 0);
      continue;
    }
    const uint16_t torch_bits = c10::Half(x).x;
    ASSERT_EQ(ours, torch_bits) << std::hex << "fp32 bits 0x" << u;
    const float back = mftk::gguf::fp16_to_fp32(ours);
    ASSERT_EQ(back, float(c10::Half(x))) << std::hex << "fp32 bits 0x" << u;
  }
}

TEST(GgufBf16, RoundsToNearestEvenAndQuietsNaN) {
  auto bf16 = [](uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return mftk::gguf::fp32_to_bf16(x);
  };
  EXPECT_EQ(bf16(0x3f800000), 0x3f80);  // 1.0
  EXPECT_EQ(bf16(0x3f808000), 0x3f80);  // tie, even below
  EXPECT_EQ(bf16(0x3f818000), 0x3f82);  // tie, odd below: up
  EXPECT_EQ(bf16(0x3f808001), 0x3f81);  // past the tie
  EXPECT_EQ(bf16(0x7f7fffff), 0x7f80);  // max float rounds to infinity
  EXPECT_EQ(bf16(0x7f800001), 0x7fc0);  // signalling NaN: quiet bit forced
  EXPECT_EQ(bf16(0xffc00000), 0xffc0);
  EXPECT_EQ(mftk::gguf::bf16_to_fp32(0xc040), -3.0f);
}

TEST(GgufQ6_K, HandWorkedSuperBlock) {
  // Every sub-block of 16 holds -8..7. make_qx_quants: max = -8 (first of
  // |x| = 8), iscale = -32 / -8 = 4, q = 4x fits exactly, so scale = 1/4 and
  // no other candidate beats a perfect fit. Super-block: iscale = -128 / 0.25
  // = -512, d = fp16(-1/512) = 0x9800, every int8 scale round(-512 * 0.25) =
  // -128; re-rounding against d * -128 = 0.25 gives q = 4x, stored as
  // L = 4x + 32 = 4 * (i % 16).
  std::vector<float> x(256);
  for (size_t i = 0; i < 256; ++i) x[i] = float(int(i % 16) - 8);
  std::vector<uint8_t> out(mftk::gguf::kQ6_KBlockBytes);
  mftk::gguf::quantize_row_q6_k(x.data(), out.data(), x.size());
  std::vector<uint8_t> want(210);
  for (int half = 0; half < 2; ++half)
    for (int l = 0; l < 32; ++l) {
      const int L = 4 * (l % 16);  // the same for elements l, l+32, l+64, l+96 of each half
      want[size_t(64 * half + l)] = uint8_t((L & 0xF) | ((L & 0xF) << 4));
      want[size_t(64 * half + l + 32)] = uint8_t((L & 0xF) | ((L & 0xF) << 4));
      const int h = L >> 4;
      want[size_t(128 + 32 * half + l)] = uint8_t(h | (h << 2) | (h << 4) | (h << 6));
    }
  for (int j = 0; j < 16; ++j) want[size_t(192 + j)] = 0x80;  // int8 -128
  want[208] = 0x00, want[209] = 0x98;                         // d = -1/512
  EXPECT_EQ(out, want);
  std::vector<float> back(256);
  mftk::gguf::dequantize_row_q6_k(out.data(), back.data(), back.size());
  EXPECT_EQ(back, x);  // -1/512 * -128 * (4x + 32 - 32) is exact
}

TEST(GgufQ4_K, HandWorkedSuperBlock) {
  // Every sub-block of 32 holds 0..15 twice: min = 0, iscale = 15 / 15 = 1,
  // q = x with zero error, so no candidate of the sweep replaces it: scale 1,
  // min 0. Super-block: 6-bit scale round(63 * 1) = 63, min code 0,
  // d = fp16(1/63) = 0x2410 (2^-6 * 1040/1024), dmin = 0. Scales packed:
  // bytes 0-3 = 63 | (63 >> 4) << 6 = 0xFF, 4-7 = 0, 8-11 = 63 & 15 = 0x0F.
  // Re-rounding x / (d * 63) = x * 1.000244 keeps q = x; nibbles: element
  // 64c + l low, 64c + 32 + l high, both l % 16.
  std::vector<float> x(256);
  for (size_t i = 0; i < 256; ++i) x[i] = float(i % 16);
  std::vector<uint8_t> out(mftk::gguf::kQ4_KBlockBytes);
  mftk::gguf::quantize_row_q4_k(x.data(), out.data(), x.size());
  std::vector<uint8_t> want(144, 0);
  want[0] = 0x10, want[1] = 0x24;  // d
  for (int j = 0; j < 4; ++j) want[size_t(4 + j)] = 0xFF;
  for (int j = 8; j < 12; ++j) want[size_t(4 + j)] = 0x0F;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) want[size_t(16 + 32 * c + l)] = uint8_t((l % 16) * 17);
  EXPECT_EQ(out, want);
  std::vector<float> back(256);
  mftk::gguf::dequantize_row_q4_k(out.data(), back.data(), back.size());
  for (size_t i = 0; i < 256; ++i) EXPECT_EQ(back[i], 0.015869140625f * 63.0f * float(i % 16)) << i;
}

// The hand-worked blocks above fit exactly, so the scale search keeps its
// first guess there; the search itself is compared with ggml's own encoder
// (ggml_quantize_chunk) on blocks built to exercise it by the ctest
// ggml_quant_oracle (tests/interop/ggml_quant_oracle.cpp).
TEST(GgufKQuants, ZeroBlocksAndErrorOnRandomWeights) {
  std::vector<float> zeros(256, 0.0f);
  std::vector<uint8_t> q6(210, 0xAA), q4(144, 0xAA);
  mftk::gguf::quantize_row_q6_k(zeros.data(), q6.data(), 256);
  EXPECT_EQ(q6, std::vector<uint8_t>(210, 0));
  mftk::gguf::quantize_row_q4_k(zeros.data(), q4.data(), 256);
  std::vector<float> back(256, 1.0f);
  mftk::gguf::dequantize_row_q4_k(q4.data(), back.data(), 256);
  EXPECT_EQ(back, zeros);

  // Gaussian weights: 6 bits lose about 1 % of the rms, 4 bits about 8 %.
  std::mt19937 rng(21);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const size_t n = 256 * 64;
  std::vector<float> x(n), y(n);
  for (auto& v : x) v = normal(rng);
  auto relative_rms_error = [&](auto quantize, auto dequantize, size_t block_bytes) {
    std::vector<uint8_t> q(n / 256 * block_bytes);
    quantize(x.data(), q.data(), n);
    dequantize(q.data(), y.data(), n);
    double err = 0, ref = 0;
    for (size_t i = 0; i < n; ++i) err += double(x[i] - y[i]) * (x[i] - y[i]), ref += double(x[i]) * x[i];
    return std::sqrt(err / ref);
  };
  const double e6 = relative_rms_error(mftk::gguf::quantize_row_q6_k, mftk::gguf::dequantize_row_q6_k, 210);
  const double e4 = relative_rms_error(mftk::gguf::quantize_row_q4_k, mftk::gguf::dequantize_row_q4_k, 144);
  EXPECT_LT(e6, 0.02);
  EXPECT_LT(e4, 0.12);
  EXPECT_LT(e6, e4 / 3);
  EXPECT_THROW(mftk::gguf::quantize_row_q4_k(x.data(), q4.data(), 255), mftk::Error);
}

// --------------------------------------------------------- Q/K permutation

TEST(GgufRope, RowOrderByHand) {
  // 2 heads of size 4: HF rows (0 1 | 2 3) rotate as pairs (0,2), (1,3);
  // llama.cpp wants each pair adjacent: 0 2 1 3, then 4 6 5 7.
  EXPECT_EQ(mftk::gguf::llama_rope_row_order(8, 2), (std::vector<int64_t>{0, 2, 1, 3, 4, 6, 5, 7}));
  // 1 head of size 6: pairs (0,3) (1,4) (2,5).
  EXPECT_EQ(mftk::gguf::llama_rope_row_order(6, 1), (std::vector<int64_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_THROW(mftk::gguf::llama_rope_row_order(6, 2), mftk::Error);  // head size 3 is odd
}

TEST(GgufRope, RowOrderMatchesTheConverterReshape) {
  // The converter: w.reshape(n_head, 2, D/2, in).swapaxes(1, 2).reshape(w.shape).
  for (int64_t n_head : {1, 2, 4, 8}) {
    const int64_t head_dim = 16, in = 3, rows = n_head * head_dim;
    at::Tensor w = at::arange(rows * in, at::kFloat).reshape({rows, in});
    at::Tensor want = w.reshape({n_head, 2, head_dim / 2, in}).transpose(1, 2).reshape({rows, in});
    const auto order = mftk::gguf::llama_rope_row_order(rows, n_head);
    at::Tensor index = at::tensor(std::vector<int64_t>(order.begin(), order.end()), at::kLong);
    EXPECT_TRUE(at::equal(w.index_select(0, index), want)) << "n_head " << n_head;
  }
}

// ------------------------------------------------------ writer and reader

GgufValue scalar(GgufValueType type, uint64_t integer) {
  GgufValue v;
  v.type = type;
  v.integer = integer;
  return v;
}

GgufWriter::Metadata every_value_type() {
  GgufValue f64;
  f64.type = GgufValueType::float64;
  f64.real = -1.0 / 3.0;
  GgufWriter::Metadata m = {
      {"general.architecture", GgufValue::str("llama")},
      {"test.u8", scalar(GgufValueType::uint8, 200)},
      {"test.i8", GgufValue{scalar(GgufValueType::int8, uint64_t(int64_t(-5)))}},
      {"test.u16", scalar(GgufValueType::uint16, 65535)},
      {"test.i16", scalar(GgufValueType::int16, uint64_t(int64_t(-300)))},
      {"test.u32", GgufValue::u32(4000000000u)},
      {"test.i32", GgufValue::i32(-123456)},
      {"test.f32", GgufValue::f32(1e-5f)},
      {"test.bool", GgufValue::boolean(true)},
      {"test.string", GgufValue::str("▁hello\n\"world\"")},
      {"test.empty_string", GgufValue::str("")},
      {"test.u64", GgufValue::u64(0xfedcba9876543210ull)},
      {"test.i64", scalar(GgufValueType::int64, uint64_t(int64_t(-9000000000ll)))},
      {"test.f64", f64},
      {"test.strings", GgufValue::strings({"<unk>", "<s>", "", "▁the"})},
      {"test.f32s", GgufValue::f32s({0.0f, -1000.0f, 3.5f})},
      {"test.i32s", GgufValue::i32s({1, 2, 3, 6})},
      {"test.empty_array", GgufValue::array(GgufValueType::uint8, {})},
      {"test.nested",
       GgufValue::array(GgufValueType::array,
                        {GgufValue::i32s({1, -1}), GgufValue::array(GgufValueType::int32, {})})},
  };
  for (auto& kv : m)
    if (kv.first == "test.i8") kv.second.integer = uint64_t(int64_t(-5));
  return m;
}

TEST(GgufReader, RoundTripsTheWriter) {
  tt::ScratchDir dir("gguf");
  const std::string path = dir.sub("round.gguf");
  const auto metadata = every_value_type();
  // ne[0] = 32 so Q8_0 fits; sizes chosen so padding is needed after each.
  std::vector<GgufTensorDecl> decls = {
      {"a.f32", GgmlType::f32, {3}},
      {"b.f16", GgmlType::f16, {5, 2}},
      {"c.q8_0", GgmlType::q8_0, {64, 3}},
      {"d.bf16", GgmlType::bf16, {1, 1, 1, 7}},
  };
  std::mt19937 rng(5);
  std::vector<std::vector<uint8_t>> data;
  {
    GgufWriter writer(path, metadata, decls);
    for (const auto& d : decls) {
      std::vector<uint8_t> bytes(d.nbytes());
      for (auto& b : bytes) b = uint8_t(rng());
      EXPECT_EQ(writer.next_tensor(), d.name);
      // In two pieces: the writer streams.
      writer.write(bytes.data(), bytes.size() / 2);
      writer.write(bytes.data() + bytes.size() / 2, bytes.size() - bytes.size() / 2);
      data.push_back(std::move(bytes));
    }
    const uint64_t size = writer.finish();
    EXPECT_EQ(size, fs::file_size(path));
  }
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  const auto file = GgufFile::open(path);
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 32u);
  EXPECT_EQ(file.data_offset() % 32, 0u);
  ASSERT_EQ(file.metadata().size(), metadata.size());
  for (size_t i = 0; i < metadata.size(); ++i) {
    EXPECT_EQ(file.metadata()[i].first, metadata[i].first);
    EXPECT_TRUE(file.metadata()[i].second == metadata[i].second) << metadata[i].first;
  }
  EXPECT_EQ(file.get("test.i16", GgufValueType::int16).as_int(), -300);
  EXPECT_EQ(file.get("test.i8", GgufValueType::int8).as_int(), -5);
  EXPECT_EQ(file.get("test.f32", GgufValueType::float32).real, double(1e-5f));
  EXPECT_THROW(file.get("test.u32", GgufValueType::int32), mftk::Error);
  EXPECT_THROW(file.get("no.such.key", GgufValueType::int32), mftk::Error);

  ASSERT_EQ(file.tensors().size(), decls.size());
  uint64_t expected_offset = 0;
  for (size_t i = 0; i < decls.size(); ++i) {
    const auto& t = file.tensors()[i];
    EXPECT_EQ(t.name, decls[i].name);
    EXPECT_EQ(t.type, decls[i].type);
    EXPECT_EQ(t.ne, decls[i].ne);
    EXPECT_EQ(t.offset, expected_offset) << "ggml's reader wants contiguous, aligned offsets";
    expected_offset += (t.nbytes + 31) / 32 * 32;
    const auto view = file.data(t);
    ASSERT_EQ(view.size(), data[i].size());
    EXPECT_EQ(std::memcmp(view.data(), data[i].data(), view.size()), 0) << t.name;
  }
  EXPECT_EQ(file.data_offset() + expected_offset, file.file_size());
  EXPECT_EQ(file.find_tensor("c.q8_0")->nbytes, 3u * 2 * 34);
}

TEST(GgufWriter, RefusesWhatLlamaCppWouldNotRead) {
  tt::ScratchDir dir("gguf");
  const std::string path = dir.sub("bad.gguf");
  const GgufWriter::Metadata none;
  EXPECT_THROW(GgufWriter(path, none, {{"x", GgmlType::q8_0, {31}}}), mftk::Error);  // partial block
  EXPECT_THROW(GgufWriter(path, none, {{std::string(64, 'n'), GgmlType::f32, {1}}}), mftk::Error);
  EXPECT_THROW(GgufWriter(path, none, {{"x", GgmlType::f32, {1}}, {"x", GgmlType::f32, {1}}}), mftk::Error);
  EXPECT_THROW(GgufWriter(path, none, {{"x", GgmlType::f32, {1, 1, 1, 1, 1}}}), mftk::Error);
  EXPECT_THROW(GgufWriter(path, {{"k", GgufValue::u32(1)}, {"k", GgufValue::u32(2)}}, {}), mftk::Error);
  EXPECT_THROW(GgufWriter(path, {{"general.alignment", GgufValue::u32(24)}}, {}), mftk::Error);
  {
    GgufWriter w(path, none, {{"x", GgmlType::f32, {2}}});
    const float one = 1.0f;
    w.write(&one, 4);
    EXPECT_THROW(w.finish(), mftk::Error);  // 4 of 8 bytes
    std::vector<float> three(3);
    EXPECT_THROW(w.write(three.data(), 12), mftk::Error);
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

// Builds GGUF bytes by hand, independent of the writer.
class Bytes {
 public:
  Bytes& u32(uint32_t v) { return raw(&v, 4); }
  Bytes& u64(uint64_t v) { return raw(&v, 8); }
  Bytes& str(const std::string& s) {
    u64(s.size());
    return raw(s.data(), s.size());
  }
  Bytes& raw(const void* p, size_t n) {
    const auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
    return *this;
  }
  Bytes& pad(size_t a) {
    while (b.size() % a) b.push_back(0);
    return *this;
  }
  std::vector<uint8_t> b;
};

// magic, v3, 1 tensor, 1 key (general.name = "t"), tensor "w" F32 [4] at 0.
Bytes minimal_file() {
  Bytes f;
  f.u32(0x46554747).u32(3).u64(1).u64(1);
  f.str("general.name").u32(8).str("t");
  f.str("w").u32(1).u64(4).u32(0).u64(0);
  f.pad(32);
  const float w[4] = {1, 2, 3, 4};
  f.raw(w, sizeof w);
  return f;
}

TEST(GgufReader, ReadsAHandBuiltFile) {
  tt::ScratchDir dir("gguf");
  const std::string path = dir.sub("hand.gguf");
  write_bytes(path, minimal_file().b);
  const auto file = GgufFile::open(path);
  EXPECT_EQ(file.get("general.name", GgufValueType::string).text, "t");
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.data_offset(), 96u);  // 90 bytes of header, key and info, aligned up
  float w[4];
  std::memcpy(w, file.data(file.tensors()[0]).data(), sizeof w);
  EXPECT_EQ(w[3], 4.0f);
}

TEST(GgufReader, RejectsEveryTruncation) {
  tt::ScratchDir dir("gguf");
  const std::string path = dir.sub("cut.gguf");
  const auto full = minimal_file().b;
  for (size_t n = 0; n < full.size(); ++n) {
    write_bytes(path, std::vector<uint8_t>(full.begin(), full.begin() + long(n)));
    EXPECT_THROW((void)GgufFile::open(path), mftk::Error) << "accepted the first " << n << " bytes";
  }
}

TEST(GgufReader, RejectsHostileCountsAndOffsets) {
  tt::ScratchDir dir("gguf");
  const std::string path = dir.sub("bad.gguf");
  auto with = [&](Bytes f, const std::string& needle) {
    write_bytes(path, f.pad(32).b);
    expect_rejected(path, needle);
  };
  // Huge counts are refused before anything is reserved.
  with(Bytes().u32(0x46554747).u32(3).u64(1ull << 60).u64(0), "tensor count");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(~0ull), "metadata count");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("a").u32(9).u32(4).u64(1ull << 61), "array length");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("a").u32(9).u32(8).u64(1ull << 40), "array length");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).u64(1ull << 50).u64(0).u64(0), "metadata key");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("a").u32(8).u64(1ull << 50), "string value");
  // Wrong identity.
  with(Bytes().u32(0x46554746).u32(3).u64(0).u64(0), "not a GGUF file");
  with(Bytes().u32(0x46554747).u32(1).u64(0).u64(0), "version 1");
  // Types and values ggml refuses.
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("a").u32(13).u32(0), "unknown value type");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("a").u32(7).raw("\x02", 1), "bool");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(2).str("a").u32(4).u32(1).str("a").u32(4).u32(2), "twice");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("general.alignment").u32(4).u32(48), "power of two");
  with(Bytes().u32(0x46554747).u32(3).u64(0).u64(1).str("general.alignment").u32(5).u32(32), "expected uint32");
  // Tensor infos.
  auto tensor = [](const std::string& name, uint32_t dims, std::vector<uint64_t> ne, uint32_t type, uint64_t off) {
    Bytes f;
    f.u32(0x46554747).u32(3).u64(1).u64(0).str(name).u32(dims);
    for (uint64_t n : ne) f.u64(n);
    f.u32(type).u64(off);
    return f;
  };
  with(tensor("w", 5, {1, 1, 1, 1, 1}, 0, 0), "dimensions");
  with(tensor("w", 1, {4}, 99, 0), "unknown ggml type 99");
  with(tensor("w", 1, {31}, 8, 0), "block size");
  with(tensor("w", 1, {4}, 0, 7), "not a multiple of the alignment");
  with(tensor("w", 2, {1ull << 40, 1ull << 40}, 0, 0), "overflow");
  with(tensor(std::string(64, 'w'), 1, {4}, 0, 0), "name");
  // A tensor past the end of the data: the offset, or its size.
  {
    Bytes f = tensor("w", 1, {4}, 0, 1ull << 40);
    f.pad(32);
    const float w[4] = {};
    f.raw(w, sizeof w);
    write_bytes(path, f.b);
    expect_rejected(path, "past the end");
  }
  {
    Bytes f = tensor("w", 1, {1024}, 0, 0);
    f.pad(32);
    const float w[4] = {};
    f.raw(w, sizeof w);
    write_bytes(path, f.b);
    expect_rejected(path, "past the end");
  }
  expect_rejected(dir.sub("missing.gguf"), "cannot open");
}

// ------------------------------------------------------------ the exporter

mftk::gguf::GgufExportOptions options(mftk::gguf::Encoding e) {
  mftk::gguf::GgufExportOptions o;
  o.encoding = e;
  o.name = "tiny";
  return o;
}

std::vector<float> decode_tensor(const GgufFile& file, const mftk::core::GgufTensorInfo& t) {
  std::vector<float> out(t.elements());
  const auto bytes = file.data(t);
  const uint64_t row_bytes = mftk::core::ggml_row_bytes(t.type, t.ne[0]);
  for (uint64_t r = 0; r < t.elements() / t.ne[0]; ++r)
    mftk::gguf::decode_row(t.type, reinterpret_cast<const uint8_t*>(bytes.data()) + r * row_bytes,
                           out.data() + r * t.ne[0], t.ne[0]);
  return out;
}

TEST(GgufExport, TinyMistralAtF32IsTheCheckpointRearranged) {
  tt::ScratchDir dir("gguf");
  const std::string model = tt::tiny_checkpoint(2);
  const std::string out = dir.sub("tiny-f32.gguf");
  const auto report = mftk::gguf::export_gguf(model, out, options(mftk::gguf::Encoding::f32));
  EXPECT_EQ(report.bytes, int64_t(fs::file_size(out)));

  const auto file = GgufFile::open(out);
  auto u32 = [&](const char* key) { return file.get(key, GgufValueType::uint32).integer; };
  EXPECT_EQ(file.get("general.architecture", GgufValueType::string).text, "llama");
  EXPECT_EQ(file.get("general.name", GgufValueType::string).text, "tiny");
  EXPECT_EQ(u32("general.file_type"), 0u);
  EXPECT_EQ(u32("general.alignment"), 32u);
  EXPECT_EQ(u32("llama.block_count"), 2u);
  EXPECT_EQ(u32("llama.embedding_length"), 64u);
  EXPECT_EQ(u32("llama.feed_forward_length"), 128u);
  EXPECT_EQ(u32("llama.attention.head_count"), 4u);
  EXPECT_EQ(u32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(u32("llama.rope.dimension_count"), 16u);
  EXPECT_EQ(file.find("llama.attention.key_length"), nullptr);  // 64 / 4 = 16: implied
  EXPECT_EQ(file.get("llama.attention.layer_norm_rms_epsilon", GgufValueType::float32).real, double(1e-5f));
  EXPECT_EQ(file.get("tokenizer.ggml.model", GgufValueType::string).text, "llama");

  // The vocabulary: the converter's rules (GgufVocabulary.* pins them on
  // Mistral's tokenizers); here, that the file holds them for every id.
  const auto tok = mftk::Tokenizer::load(model);
  const auto& tokens = file.get("tokenizer.ggml.tokens", GgufValueType::array);
  const auto& types = file.get("tokenizer.ggml.token_type", GgufValueType::array);
  const auto& scores = file.get("tokenizer.ggml.scores", GgufValueType::array);
  ASSERT_EQ(tokens.items.size(), u32("llama.vocab_size"));
  ASSERT_EQ(types.element_type, GgufValueType::int32);
  const auto listed = read_json(fs::path(model) / "tokenizer_config.json").value("added_tokens_decoder", nlohmann::json::object());
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    const std::string key = std::to_string(id);
    const bool added = listed.contains(key), special = added && listed[key].value("special", false);
    EXPECT_EQ(tokens.items[size_t(id)].text, tok->piece(id));
    EXPECT_EQ(types.items[size_t(id)].as_int(), added ? (special ? 3 : 4) : converter_type(tok->type(id))) << id;
    EXPECT_EQ(float(scores.items[size_t(id)].real), added ? -1000.0f : tok->score(id)) << id;
  }
  EXPECT_EQ(types.items[1].as_int(), 3);  // <s>: control either way
  EXPECT_EQ(file.get("tokenizer.ggml.pre", GgufValueType::string).text, "default");
  EXPECT_EQ(u32("tokenizer.ggml.bos_token_id"), uint64_t(tok->bos_id()));
  EXPECT_EQ(u32("tokenizer.ggml.eos_token_id"), uint64_t(tok->eos_id()));
  EXPECT_EQ(file.get("tokenizer.ggml.add_bos_token", GgufValueType::boolean).integer, 1u);
  EXPECT_EQ(file.get("tokenizer.ggml.add_eos_token", GgufValueType::boolean).integer, 0u);
  EXPECT_NE(file.get("tokenizer.chat_template", GgufValueType::string).text.find("[INST]"), std::string::npos);

  // 1 embedding + 2 x 9 + final norm + output (not tied).
  ASSERT_EQ(file.tensors().size(), 21u);
  const auto ckpt = mftk::CheckpointReader::open(model);
  auto hf = [&](const std::string& name) {
    at::Tensor t = ckpt.get(name).to(at::kFloat).contiguous();
    return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
  };
  const auto* embd = file.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->ne, (std::vector<uint64_t>{64, tokens.items.size()}));
  EXPECT_EQ(decode_tensor(file, *embd), hf("model.embed_tokens.weight"));
  EXPECT_EQ(decode_tensor(file, *file.find_tensor("blk.1.ffn_down.weight")), hf("model.layers.1.mlp.down_proj.weight"));
  EXPECT_EQ(decode_tensor(file, *file.find_tensor("blk.0.attn_v.weight")), hf("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_EQ(decode_tensor(file, *file.find_tensor("output.weight")), hf("lm_head.weight"));
  // q: 4 heads, k: 2 KV heads of 16 rows; GGUF row 2k+s of a head = HF row s*8+k.
  for (const auto& [gguf_name, hf_name, heads] :
       {std::tuple<std::string, std::string, int>{"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight", 4},
        {"blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2}}) {
    const auto got = decode_tensor(file, *file.find_tensor(gguf_name));
    const auto want = hf(hf_name);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(got.size(), size_t(heads) * 16 * 64);
    for (int h = 0; h < heads; ++h)
      for (int k = 0; k < 8; ++k)
        for (int s = 0; s < 2; ++s)
          for (int c = 0; c < 64; ++c)
            ASSERT_EQ(got[size_t((h * 16 + 2 * k + s) * 64 + c)], want[size_t((h * 16 + s * 8 + k) * 64 + c)])
                << gguf_name << " head " << h << " pair " << k;
  }
  EXPECT_EQ(file.find_tensor("blk.0.attn_norm.weight")->type, GgmlType::f32);
}

TEST(GgufExport, TinyMistralAtQ8_0) {
  tt::ScratchDir dir("gguf");
  const std::string model = tt::tiny_checkpoint(2);
  const std::string out = dir.sub("tiny-q8_0.gguf");
  mftk::gguf::export_gguf(model, out, options(mftk::gguf::Encoding::q8_0));
  const auto file = GgufFile::open(out);
  EXPECT_EQ(file.get("general.file_type", GgufValueType::uint32).integer, 7u);
  const auto ckpt = mftk::CheckpointReader::open(model);
  for (const auto& t : file.tensors()) {
    if (t.ne.size() == 1) {
      EXPECT_EQ(t.type, GgmlType::f32) << t.name << ": norms stay F32";
      continue;
    }
    EXPECT_EQ(t.type, GgmlType::q8_0) << t.name;
  }
  // Exactly the bytes quantize_row_q8_0 makes of the (unpermuted) v rows.
  const auto* v = file.find_tensor("blk.0.attn_v.weight");
  at::Tensor w = ckpt.get("model.layers.0.self_attn.v_proj.weight").contiguous();
  std::vector<uint8_t> want(v->nbytes);
  const int64_t cols = w.size(1);
  for (int64_t r = 0; r < w.size(0); ++r)
    mftk::gguf::quantize_row_q8_0(w.data_ptr<float>() + r * cols, want.data() + r * (cols / 32 * 34), size_t(cols));
  const auto got = file.data(*v);
  EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size()), 0);
}

TEST(GgufExport, TiedEmbeddingsOmitTheOutputTensor) {
  tt::ScratchDir dir("gguf");
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 1}, {"hidden_size", 64}, {"intermediate_size", 96},
                 {"num_attention_heads", 2}, {"num_key_value_heads", 1}, {"head_dim", 16}};
  o.tie_word_embeddings = true;
  o.dtype = "bf16";
  o.out = dir.sub("tied");
  o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
  o.tokenizer_vocab = 512;
  {
    tt::QuietLog quiet;
    mftk::core::write_random_checkpoint(o);
  }
  const std::string out = dir.sub("tied.gguf");
  mftk::gguf::export_gguf(o.out, out, options(mftk::gguf::Encoding::bf16));
  const auto file = GgufFile::open(out);
  EXPECT_EQ(file.find_tensor("output.weight"), nullptr);
  EXPECT_EQ(file.tensors().size(), 1u + 9u + 1u);
  EXPECT_EQ(file.find_tensor("blk.0.attn_q.weight")->type, GgmlType::bf16);
  EXPECT_EQ(file.get("general.file_type", GgufValueType::uint32).integer, 32u);
  // head_dim 16 != 64 / 2: llama.cpp must be told the head size.
  EXPECT_EQ(file.get("llama.attention.key_length", GgufValueType::uint32).integer, 16u);
  EXPECT_EQ(file.get("llama.attention.value_length", GgufValueType::uint32).integer, 16u);
  EXPECT_EQ(file.get("llama.rope.dimension_count", GgufValueType::uint32).integer, 16u);
  // bf16 checkpoint -> BF16 file: the bits are carried over unchanged.
  const auto ckpt = mftk::CheckpointReader::open(o.out);
  at::Tensor q = ckpt.get("model.layers.0.self_attn.k_proj.weight").contiguous();
  const auto* k = file.find_tensor("blk.0.attn_k.weight");
  const auto order = mftk::gguf::llama_rope_row_order(16, 1);
  const auto bytes = file.data(*k);
  for (int64_t r = 0; r < 16; ++r)
    EXPECT_EQ(std::memcmp(bytes.data() + r * 128, static_cast<const char*>(q.data_ptr()) + order[size_t(r)] * 128, 128), 0);
}

TEST(GgufExport, Q4_K_MMixFollowsLlamaQuantize) {
  tt::ScratchDir dir("gguf");
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.overrides = {{"num_hidden_layers", 8}, {"hidden_size", 256}, {"intermediate_size", 512},
                 {"num_attention_heads", 4}, {"num_key_value_heads", 2}};
  o.dtype = "f32";
  o.out = dir.sub("k");
  o.corpus = MFTK_SOURCE_DIR "/data/tokenizer/corpus.txt";
  o.tokenizer_vocab = 512;
  {
    tt::QuietLog quiet;
    mftk::core::write_random_checkpoint(o);
  }
  const std::string out = dir.sub("k.gguf");
  mftk::gguf::export_gguf(o.out, out, options(mftk::gguf::Encoding::q4_k_m));
  const auto file = GgufFile::open(out);
  EXPECT_EQ(file.get("general.file_type", GgufValueType::uint32).integer, 15u);
  // use_more_bits(i, 8): i < 1, i >= 7, (i - 1) % 3 == 2.
  const std::set<int> more_bits = {0, 3, 6, 7};
  for (int layer = 0; layer < 8; ++layer) {
    const GgmlType extra = more_bits.count(layer) ? GgmlType::q6_k : GgmlType::q4_k;
    const std::string blk = "blk." + std::to_string(layer) + ".";
    EXPECT_EQ(file.find_tensor(blk + "attn_v.weight")->type, extra) << layer;
    EXPECT_EQ(file.find_tensor(blk + "ffn_down.weight")->type, extra) << layer;
    EXPECT_EQ(file.find_tensor(blk + "attn_q.weight")->type, GgmlType::q4_k) << layer;
    EXPECT_EQ(file.find_tensor(blk + "ffn_up.weight")->type, GgmlType::q4_k) << layer;
    EXPECT_EQ(file.find_tensor(blk + "attn_norm.weight")->type, GgmlType::f32) << layer;
  }
  EXPECT_EQ(file.find_tensor("output.weight")->type, GgmlType::q6_k);
  EXPECT_EQ(file.find_tensor("token_embd.weight")->type, GgmlType::q4_k);
  // The stored bytes are the quantiser's, in GGUF row order.
  const auto ckpt = mftk::CheckpointReader::open(o.out);
  at::Tensor w = ckpt.get("model.layers.3.mlp.down_proj.weight").contiguous();
  const auto* t = file.find_tensor("blk.3.ffn_down.weight");
  std::vector<uint8_t> want(t->nbytes);
  for (int64_t r = 0; r < w.size(0); ++r)
    mftk::gguf::quantize_row_q6_k(w.data_ptr<float>() + r * 512, want.data() + r * 2 * 210, 512);
  EXPECT_EQ(std::memcmp(file.data(*t).data(), want.data(), want.size()), 0);
}

TEST(GgufExport, KQuantsFallBackToQ8_0OnShortRows) {
  // hidden 64 is not a whole 256-value super-block: every 2-D weight is Q8_0.
  tt::ScratchDir dir("gguf");
  const std::string out = dir.sub("short.gguf");
  const auto report = mftk::gguf::export_gguf(tt::tiny_checkpoint(2), out, options(mftk::gguf::Encoding::q4_k));
  EXPECT_NE(report.summary.find("fallback"), std::string::npos) << report.summary;
  const auto file = GgufFile::open(out);
  EXPECT_EQ(file.find_tensor("blk.0.attn_q.weight")->type, GgmlType::q8_0);
  EXPECT_EQ(file.find_tensor("blk.0.ffn_norm.weight")->type, GgmlType::f32);
}

TEST(GgufExport, RefusesEncodingsNotBuilt) {
  auto config_with_type = [](const std::string& type) {
    std::map<std::string, mftk::Config::Entry> entries;
    entries["type"] = {mftk::Value(type), {"recipe.toml", 7, 1}, true};
    entries["name"] = {mftk::Value(std::string()), {"recipe.toml", 6, 1}, false};
    return mftk::Config("export[0]", {"recipe.toml", 6, 1}, std::move(entries));
  };
  for (const char* type : {"q5_0", "q2_k", "iq4_xs", "Q8_0"}) {
    try {
      mftk::gguf::gguf_options_from_config(config_with_type(type));
      ADD_FAILURE() << type << " accepted";
    } catch (const mftk::UsageError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(type), std::string::npos) << what;
      EXPECT_NE(what.find("f32, f16, bf16, q8_0, q4_k, q6_k, q4_k_m"), std::string::npos) << what;
      EXPECT_NE(what.find("recipe.toml:7"), std::string::npos) << what;
    }
  }
  EXPECT_EQ(mftk::gguf::gguf_options_from_config(config_with_type("q8_0")).encoding, mftk::gguf::Encoding::q8_0);
  EXPECT_EQ(mftk::gguf::gguf_options_from_config(config_with_type("q4_k_m")).encoding, mftk::gguf::Encoding::q4_k_m);
}

// ------------------------------------------------------------------ vocabulary
//
// The tokens, scores and types llama.cpp's own converter (convert_hf_to_gguf.py,
// _create_vocab_sentencepiece) writes for a Mistral checkpoint, on Mistral's
// real tokenizer.model files with the added_tokens_decoder Hugging Face
// writes beside them. transformers' sentencepiece conversion lists every
// control piece and the unknown piece as "special": true and every
// user-defined piece as "special": false: for v1, <unk>, <s>, </s> (ids 0-2);
// for v3 also [INST], [/INST], [TOOL_CALLS], ..., [control_748] (special)
// and [REFERENCE_DOC_19] ... [REFERENCE_DOC_0] (not), ids 0-770.

std::string mistral_tokenizer(const std::string& version) {
  const char* from_env = std::getenv("MFTK_SHARED_DIR");
  const fs::path path =
      fs::path(from_env != nullptr ? from_env : MFTK_SHARED_DIR) / "data/mistral-tokenizers" / ("tokenizer.model." + version);
  return fs::exists(path) ? path.string() : std::string();
}

nlohmann::json hf_added_token(const std::string& content, bool special) {
  return {{"content", content}, {"lstrip", false}, {"normalized", false}, {"rstrip", false},
          {"single_word", false}, {"special", special}};
}

// Hugging Face's added_tokens_decoder for a sentencepiece tokenizer, by
// transformers' rule above.
nlohmann::json hf_added_tokens_decoder(const mftk::Tokenizer& tok) {
  nlohmann::json decoder = nlohmann::json::object();
  for (int32_t id = 0; id < tok.vocab_size(); ++id) {
    const auto t = tok.type(id);
    if (t == mftk::PieceType::unknown || t == mftk::PieceType::control || t == mftk::PieceType::user_defined)
      decoder[std::to_string(id)] = hf_added_token(tok.piece(id), t != mftk::PieceType::user_defined);
  }
  return decoder;
}

TEST(GgufVocabulary, MistralSpecialTokensAreControlWithScoreMinus1000AsTheConverterWrites) {
  for (const std::string version : {"v1", "v3"}) {
    SCOPED_TRACE(version);
    const std::string model = mistral_tokenizer(version);
    if (model.empty()) GTEST_SKIP() << "no Mistral tokenizers under " << MFTK_SHARED_DIR << " (set MFTK_SHARED_DIR)";
    tt::ScratchDir dir("gguf_vocab");
    const fs::path folder = dir.sub("model");
    fs::create_directories(folder);
    fs::copy_file(model, folder / "tokenizer.model");
    const auto tok = mftk::Tokenizer::load(folder.string());
    const int64_t n = tok->vocab_size();
    ASSERT_EQ(n, version == "v1" ? 32000 : 32768);

    // What Hugging Face lists, against the published configs: v1 ids 0-2,
    // v3 ids 0-770 with [INST] at 3 and the 20 reference-document pieces
    // (751-770) not special.
    const auto hf_decoder = hf_added_tokens_decoder(*tok);
    size_t special_count = 0, plain_count = 0;
    for (const auto& [key, entry] : hf_decoder.items()) (entry["special"].get<bool>() ? special_count : plain_count)++;
    ASSERT_EQ(hf_decoder.size(), version == "v1" ? 3u : 771u);
    ASSERT_EQ(plain_count, version == "v1" ? 0u : 20u);
    EXPECT_TRUE(hf_decoder.contains(std::to_string(hf_decoder.size() - 1)));  // ids 0..N-1, no gap
    if (version == "v3") {
      EXPECT_EQ(hf_decoder["3"]["content"], "[INST]");
      EXPECT_EQ(hf_decoder["751"]["special"], false);
    }

    // Without tokenizer_config.json: sentencepiece's own types and scores,
    // user-defined pieces as NORMAL.
    {
      const auto f = mftk::gguf::load_tokenizer_facts(folder.string(), n);
      EXPECT_EQ(f.types[0], 2);  // <unk>: UNKNOWN
      EXPECT_EQ(f.types[1], 3);  // <s>: CONTROL
      EXPECT_EQ(f.scores[0], tok->score(0));
      EXPECT_EQ(f.scores[1], 0.0f);  // sentencepiece scores control pieces 0
      for (int32_t id = 0; id < n; ++id) ASSERT_EQ(f.types[size_t(id)], converter_type(tok->type(id))) << id;
    }

    // With Hugging Face's tokenizer_config.json, plus what the other rules
    // need: a non-special added token over a normal piece (its "▁" becomes a
    // space), one that only looks special, one past the vocabulary, an
    // added_tokens.json entry, and 3 ids of padding past the tokenizer.
    std::vector<int32_t> words;  // three ordinary word pieces ("▁..."), from id 1000 on
    for (int32_t id = 1000; words.size() < 3; ++id)
      if (tok->type(id) == mftk::PieceType::normal && tok->piece(id).rfind("\xe2\x96\x81", 0) == 0) words.push_back(id);
    const int32_t hello = words[0], the = words[1], looks_special = words[2];
    auto decoder = hf_decoder;
    decoder[std::to_string(hello)] = hf_added_token("\xe2\x96\x81hello\xe2\x96\x81there", false);
    decoder[std::to_string(looks_special)] = hf_added_token("<|im_start|>", false);
    decoder[std::to_string(n + 40)] = hf_added_token("<beyond>", true);
    write_json(folder / "tokenizer_config.json",
               {{"add_bos_token", true}, {"add_eos_token", false}, {"added_tokens_decoder", decoder}});
    write_json(folder / "added_tokens.json", {{"<extra>", the}, {"<far>", n + 50}});
    const int64_t vocab = n + 3;
    const auto f = mftk::gguf::load_tokenizer_facts(folder.string(), vocab);
    ASSERT_EQ(f.tokens.size(), size_t(vocab));
    ASSERT_EQ(f.scores.size(), size_t(vocab));
    ASSERT_EQ(f.types.size(), size_t(vocab));

    // Every listed id: score -1000, its content; CONTROL when special,
    // USER_DEFINED otherwise.
    for (const auto& [key, entry] : hf_decoder.items()) {
      const size_t id = std::stoul(key);
      EXPECT_EQ(f.types[id], entry["special"].get<bool>() ? 3 : 4) << key;
      EXPECT_EQ(f.scores[id], -1000.0f) << key;
      EXPECT_EQ(f.tokens[id], entry["content"].get<std::string>()) << key;
    }
    EXPECT_EQ(f.tokens[0], "<unk>");
    EXPECT_EQ(f.types[0], 3);  // CONTROL, no longer UNKNOWN: the converter's choice for a listed <unk>
    EXPECT_EQ(f.unk, 0u);      // unknown_token_id still says which one it is
    if (version == "v3") {
      EXPECT_EQ(f.tokens[3], "[INST]");
      EXPECT_EQ(f.types[3], 3);
      EXPECT_EQ(f.tokens[770], "[REFERENCE_DOC_0]");
      EXPECT_EQ(f.types[770], 4);
    }
    // Added, not special: USER_DEFINED, -1000, "▁" written as a space.
    EXPECT_EQ(f.types[size_t(hello)], 4);
    EXPECT_EQ(f.scores[size_t(hello)], -1000.0f);
    EXPECT_EQ(f.tokens[size_t(hello)], " hello there");
    // Not marked special but looks like a control token: CONTROL.
    EXPECT_EQ(f.types[size_t(looks_special)], 3);
    EXPECT_EQ(f.tokens[size_t(looks_special)], "<|im_start|>");
    // added_tokens.json: USER_DEFINED, -1000, its text kept as written.
    EXPECT_EQ(f.types[size_t(the)], 4);
    EXPECT_EQ(f.scores[size_t(the)], -1000.0f);
    EXPECT_EQ(f.tokens[size_t(the)], "<extra>");
    // Past the tokenizer: "[PAD<id>]", -10000, UNUSED.
    for (int64_t id = n; id < vocab; ++id) {
      EXPECT_EQ(f.tokens[size_t(id)], "[PAD" + std::to_string(id) + "]");
      EXPECT_EQ(f.scores[size_t(id)], -10000.0f);
      EXPECT_EQ(f.types[size_t(id)], 5);
    }
    // Everything else: sentencepiece's piece and score, BYTE for the 256
    // byte pieces, NORMAL for the rest.
    std::map<int32_t, size_t> count;
    for (int32_t id = 0; id < n; ++id) {
      ++count[f.types[size_t(id)]];
      if (hf_decoder.contains(std::to_string(id)) || id == hello || id == looks_special || id == the) continue;
      EXPECT_EQ(f.tokens[size_t(id)], tok->piece(id)) << id;
      EXPECT_EQ(f.scores[size_t(id)], tok->score(id)) << id;
      EXPECT_EQ(f.types[size_t(id)], tok->type(id) == mftk::PieceType::byte ? 6 : 1) << id;
    }
    EXPECT_EQ(count[3], special_count + 1);  // + <|im_start|>
    EXPECT_EQ(count[4], plain_count + 2);    // + the non-special added token and added_tokens.json's
    EXPECT_EQ(count[6], 256u);
    EXPECT_EQ(count[2], 0u);
    EXPECT_EQ(count[1], size_t(n) - hf_decoder.size() - 256 - 3);
  }
}

TEST(GgufVocabulary, InitWritesHuggingFacesAddedTokensSoItsCheckpointsExportLikeRealOnes) {
  // mftk init with Mistral's own tokenizer writes the added_tokens_decoder
  // transformers writes (hf_added_tokens_decoder's rule), and the GGUF
  // vocabulary of such a checkpoint types <unk>, <s>, </s> and v3's
  // controls as the converter does for a real Mistral checkpoint.
  for (const std::string version : {"v1", "v3"}) {
    SCOPED_TRACE(version);
    const std::string model = mistral_tokenizer(version);
    if (model.empty()) GTEST_SKIP() << "no Mistral tokenizers under " << MFTK_SHARED_DIR << " (set MFTK_SHARED_DIR)";
    tt::ScratchDir dir("gguf_init");
    mftk::core::InitOptions o;
    o.preset = "tiny";
    o.overrides = {{"num_hidden_layers", 1}, {"hidden_size", 32}, {"intermediate_size", 64},
                   {"num_attention_heads", 2}, {"num_key_value_heads", 1}};
    o.dtype = "f32";
    o.out = dir.sub("model");
    o.tokenizer = model;
    {
      tt::QuietLog quiet;
      mftk::core::write_random_checkpoint(o);
    }
    const auto config = read_json(fs::path(o.out) / "tokenizer_config.json");
    ASSERT_TRUE(config.contains("added_tokens_decoder"));
    const auto tok = mftk::Tokenizer::load(o.out);
    EXPECT_EQ(config["added_tokens_decoder"], hf_added_tokens_decoder(*tok));
    EXPECT_EQ(config["added_tokens_decoder"].size(), version == "v1" ? 3u : 771u);
    EXPECT_EQ(config["added_tokens_decoder"]["0"], hf_added_token("<unk>", true));
    const auto f = mftk::gguf::load_tokenizer_facts(o.out, tok->vocab_size());
    for (size_t id : {0, 1, 2}) {
      EXPECT_EQ(f.types[id], 3) << id;
      EXPECT_EQ(f.scores[id], -1000.0f) << id;
    }
    if (version == "v3") {
      EXPECT_EQ(f.types[3], 3);          // [INST]
      EXPECT_EQ(f.types[770], 4);        // [REFERENCE_DOC_0]
      EXPECT_EQ(f.scores[770], -1000.0f);
    }
  }
}

TEST(GgufVocabulary, RefusesMalformedAddedTokens) {
  const std::string model = mistral_tokenizer("v1");
  if (model.empty()) GTEST_SKIP() << "no Mistral tokenizers under " << MFTK_SHARED_DIR << " (set MFTK_SHARED_DIR)";
  tt::ScratchDir dir("gguf_vocab");
  const fs::path folder = dir.sub("model");
  fs::create_directories(folder);
  fs::copy_file(model, folder / "tokenizer.model");
  for (const auto& [decoder, needle] :
       std::vector<std::pair<nlohmann::json, std::string>>{{{{"x1", hf_added_token("<a>", true)}}, "\"x1\" is not a token id"},
                                                           {{{"5", {{"special", true}}}}, "has no \"content\""},
                                                           {{{"-2", hf_added_token("<a>", true)}}, "negative id -2"},
                                                           {nlohmann::json::array(), "added_tokens_decoder is not an object"}}) {
    write_json(folder / "tokenizer_config.json", {{"added_tokens_decoder", decoder}});
    try {
      (void)mftk::gguf::load_tokenizer_facts(folder.string(), 32000);
      ADD_FAILURE() << "accepted " << decoder.dump();
    } catch (const mftk::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("tokenizer_config.json"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
