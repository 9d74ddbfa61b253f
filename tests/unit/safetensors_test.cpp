// safetensors reader/writer and HF checkpoint folders (core/safetensors_*.cpp).
//
// Expected bytes are assembled by hand from the format rules in
// docs/formats.md §1 (safetensors; and two vectors from the reference library's own tests);
// nothing here is a recorded output of the code under test.

#include "mftk/safetensors.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"

namespace {

namespace fs = std::filesystem;

// A fresh folder under the test temp dir, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::path(testing::TempDir()) / "mftk_st_XXXXXX").string();
    char* made = ::mkdtemp(pattern.data());
    if (!made) throw std::runtime_error("mkdtemp failed");
    path_ = made;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string le64(uint64_t n) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out;
}

// length field + header + data, the layout of docs/formats.md §1.1 (safetensors layout).
std::string file_bytes(const std::string& header, const std::string& data = {}) {
  return le64(header.size()) + header + data;
}

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string hex(const std::string& bytes) {
  std::string out;
  char buf[4];
  for (const unsigned char c : bytes) {
    std::snprintf(buf, sizeof buf, "%02x ", c);
    out += buf;
  }
  return out;
}

// Runs f, which must throw an mftk::Error; returns "message | hint".
template <class F>
std::string mftk_error_of(F&& f) {
  try {
    f();
  } catch (const mftk::Error& e) {
    return std::string(e.what()) + " | " + e.hint();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected mftk::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected mftk::Error, nothing was thrown";
  return {};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Tensor from raw element bits, reinterpreted as `type` (same element size).
template <class T>
at::Tensor from_bits(std::vector<T> bits, at::ScalarType bits_type, at::ScalarType type,
                     std::vector<int64_t> shape) {
  at::Tensor raw = at::from_blob(bits.data(), {static_cast<int64_t>(bits.size())}, bits_type).clone();
  return raw.view(type).reshape(shape);
}

// Bit-exact equality, NaN payloads and signed zeros included.
bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

// The address ranges /proc/self/maps shows for `file`, with permissions.
struct MapRange {
  uintptr_t begin, end;
  std::string perms;
};
std::vector<MapRange> mappings_of(const fs::path& file) {
  const std::string target = fs::canonical(file).string();
  std::ifstream maps("/proc/self/maps");
  std::vector<MapRange> out;
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream ls(line);
    std::string range, perms, offset, dev, inode, path;
    ls >> range >> perms >> offset >> dev >> inode;
    std::getline(ls, path);
    path.erase(0, path.find_first_not_of(' '));
    if (path != target) continue;
    const size_t dash = range.find('-');
    out.push_back({std::stoull(range.substr(0, dash), nullptr, 16),
                   std::stoull(range.substr(dash + 1), nullptr, 16), perms});
  }
  return out;
}

// ---------------------------------------------------------------------------

TEST(SafetensorsDtype, MapsTheTenTorchTypesBothWays) {
  const std::vector<std::pair<std::string, at::ScalarType>> table = {
      {"F64", at::kDouble}, {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16},
      {"I64", at::kLong},   {"I32", at::kInt},   {"I16", at::kShort}, {"I8", at::kChar},
      {"U8", at::kByte},    {"BOOL", at::kBool}};
  for (const auto& [name, type] : table) {
    EXPECT_EQ(mftk::dtype_from_safetensors(name), type) << name;
    EXPECT_EQ(mftk::dtype_to_safetensors(type), name) << name;
  }
  EXPECT_TRUE(has(mftk_error_of([] { mftk::dtype_from_safetensors("F8_E4M3"); }), "F8_E4M3"));
  EXPECT_TRUE(has(mftk_error_of([] { mftk::dtype_from_safetensors("U16"); }), "U16"));
  EXPECT_TRUE(has(mftk_error_of([] { mftk::dtype_from_safetensors("f32"); }), "unknown"));
  EXPECT_TRUE(has(mftk_error_of([] { mftk::dtype_to_safetensors(at::kComplexDouble); }), "no safetensors"));
}

TEST(SafetensorsFormat, ExactBytesOfASmallFile) {
  TempDir dir;
  // Inserted in an order that is neither the data order nor name order.
  const mftk::NamedTensors tensors = {
      {"bias", at::tensor(std::vector<uint8_t>{1, 2, 3}, at::kByte)},
      {"weight", at::tensor(std::vector<float>{1.0f, -2.0f})},
      {"scale", at::scalar_tensor(0.5, at::kFloat)},
      {"step", at::scalar_tensor(7, at::kLong)},
  };
  mftk::save_safetensors((dir / "t.safetensors").string(), tensors);

  // Data order: I64 before F32 before U8 (dtype descending); the two F32
  // tensors by name. __metadata__ first; keys dtype, shape, data_offsets.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},)"
      R"("step":{"dtype":"I64","shape":[],"data_offsets":[0,8]},)"
      R"("scale":{"dtype":"F32","shape":[],"data_offsets":[8,12]},)"
      R"("weight":{"dtype":"F32","shape":[2],"data_offsets":[12,20]},)"
      R"("bias":{"dtype":"U8","shape":[3],"data_offsets":[20,23]}})";
  ASSERT_EQ(header.size(), 261u);
  const std::string padded = header + "   ";  // 261 -> 264, a multiple of 8
  const std::string data = std::string("\x07\0\0\0\0\0\0\0", 8)    // 7 as int64 LE
                           + std::string("\0\0\0\x3f", 4)          // 0.5f
                           + std::string("\0\0\x80\x3f", 4)        // 1.0f
                           + std::string("\0\0\0\xc0", 4)          // -2.0f
                           + std::string("\x01\x02\x03", 3);
  const std::string expected = std::string("\x08\x01\0\0\0\0\0\0", 8) + padded + data;  // 264 = 0x108
  const std::string actual = read_file(dir / "t.safetensors");
  EXPECT_EQ(actual, expected) << "actual:   " << hex(actual) << "\nexpected: " << hex(expected);
}

TEST(SafetensorsFormat, MatchesTheReferenceLibrarysOwnTestVectors) {
  TempDir dir;
  // safetensors' Rust tests: an F32 [1,2,3] tensor 0..5 named "attn.0" with no
  // metadata serializes to a 64-byte header; no tensors and no metadata is
  // "{}" plus 6 spaces; {"framework":"pt"} metadata alone is 40 bytes.
  const auto attn = at::arange(6, at::kFloat).reshape({1, 2, 3});
  mftk::save_safetensors((dir / "a.safetensors").string(), {{"attn.0", attn}}, {});
  const std::string header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  const std::string floats = std::string("\0\0\0\0" "\0\0\x80\x3f" "\0\0\0\x40" "\0\0\x40\x40"
                                         "\0\0\x80\x40" "\0\0\xa0\x40", 24);
  EXPECT_EQ(read_file(dir / "a.safetensors"), le64(64) + header + floats);

  mftk::save_safetensors((dir / "e.safetensors").string(), {}, {});
  EXPECT_EQ(read_file(dir / "e.safetensors"), le64(8) + "{}      ");

  mftk::save_safetensors((dir / "m.safetensors").string(), {}, {{"framework", "pt"}});
  EXPECT_EQ(read_file(dir / "m.safetensors"), le64(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
}

TEST(SafetensorsFormat, EscapesNamesLikeSerdeJson) {
  TempDir dir;
  // '"' and '\' escaped, \n short escape, U+0001 as \u0001, UTF-8 and DEL raw.
  const std::string name = std::string("q\"\\\x01\n") + "\xC3\xA9" + "\x7F";
  mftk::save_safetensors((dir / "n.safetensors").string(), {{name, at::ones({1}, at::kBool)}}, {});
  const std::string header = std::string(R"({"q\"\\\u0001\n)") + "\xC3\xA9\x7F" +
                             R"(":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}})";
  ASSERT_EQ(header.size(), 70u);
  EXPECT_EQ(read_file(dir / "n.safetensors"), le64(72) + header + "  " + "\x01");
  auto file = mftk::SafetensorsFile::open((dir / "n.safetensors").string());
  ASSERT_EQ(file->tensors().size(), 1u);
  EXPECT_EQ(file->tensors()[0].name, name);
}

TEST(SafetensorsFormat, RoundTripIsBitExact) {
  TempDir dir;
  const int64_t i64_min = std::numeric_limits<int64_t>::min();
  const int64_t i64_max = std::numeric_limits<int64_t>::max();
  const mftk::NamedTensors tensors = {
      // NaN with payload, -0, +inf, smallest denormal, ordinary values.
      {"f32", from_bits<int32_t>({0x7FC00123, int32_t(0x80000000u), 0x7F800000, 0x00000001, 0x3FC00000,
                                  int32_t(0xC0500000u)}, at::kInt, at::kFloat, {2, 3})},
      {"f16", from_bits<int16_t>({0x3C00, int16_t(0x8000), 0x7E01, 0x0001}, at::kShort, at::kHalf, {4})},
      {"bf16", from_bits<int16_t>({0x3F80, int16_t(0xC000), 0x7FC1, 0x0001}, at::kShort, at::kBFloat16, {2, 2})},
      {"i64", at::tensor(std::vector<int64_t>{i64_min, -1, i64_max})},
      {"u8", at::arange(256, at::kLong).to(at::kByte)},
      {"bool", at::tensor(std::vector<int64_t>{1, 0, 1, 1, 0}).to(at::kBool)},
      {"scalar", at::scalar_tensor(2.5, at::kFloat)},
      {"empty_f16", at::empty({0, 5}, at::kHalf)},
      {"empty_i64", at::empty({3, 0}, at::kLong)},
      {"transposed", at::arange(6, at::kFloat).reshape({3, 2}).t()},
  };
  const auto path = dir / "r.safetensors";
  mftk::save_safetensors(path.string(), tensors);

  auto file = mftk::SafetensorsFile::open(path.string());
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(file->tensors().size(), tensors.size());
  for (const auto& [name, original] : tensors) {
    const at::Tensor loaded = file->get(name);
    EXPECT_EQ(loaded.scalar_type(), original.scalar_type()) << name;
    EXPECT_EQ(loaded.sizes(), original.sizes()) << name;
    EXPECT_TRUE(same_bits(loaded, original)) << name;
  }
  EXPECT_EQ(file->get("scalar").dim(), 0);
  EXPECT_FLOAT_EQ(file->get("scalar").item<float>(), 2.5f);
  EXPECT_FLOAT_EQ(file->get("transposed")[0][1].item<float>(), 2.0f);  // logical order written

  // Data order rule (FORMATS §1.3): rank descending, ties by name; contiguous.
  const std::map<std::string, int> rank = {{"I64", 5}, {"F32", 4}, {"BF16", 3}, {"F16", 2}, {"U8", 1}, {"BOOL", 0}};
  uint64_t expected_begin = 0, data_bytes = 0;
  const auto& infos = file->tensors();
  for (size_t i = 0; i < infos.size(); ++i) {
    EXPECT_EQ(infos[i].begin, expected_begin) << infos[i].name;
    expected_begin = infos[i].end;
    if (i > 0) {
      const int a = rank.at(infos[i - 1].dtype), b = rank.at(infos[i].dtype);
      EXPECT_TRUE(a > b || (a == b && infos[i - 1].name < infos[i].name))
          << infos[i - 1].name << " before " << infos[i].name;
    }
  }
  for (const auto& [name, t] : tensors) data_bytes += t.numel() * t.element_size();
  const std::string bytes = read_file(path);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.size(), 8 + header_size + data_bytes);
}

TEST(SafetensorsFormat, ReadsFilesFromOtherWriters) {
  TempDir dir;
  // Name-ordered (not dtype-ordered) offsets, an unpadded header (so the F32
  // data are misaligned), an unknown extra field, a null __metadata__.
  const std::string header =
      R"({"__metadata__":null,"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"note":{"x":[1,2]}},)"
      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
  const std::string data = std::string("\x09") + std::string("\0\0\x80\x3f", 4);
  ASSERT_NE((8 + header.size() + 1) % 4, 0u) << "the F32 tensor should be misaligned";
  write_file(dir / "o.safetensors", file_bytes(header, data));
  auto file = mftk::SafetensorsFile::open((dir / "o.safetensors").string());
  EXPECT_TRUE(file->metadata().empty());
  ASSERT_EQ(file->tensors().size(), 2u);
  EXPECT_EQ(file->tensors()[0].name, "a");
  EXPECT_EQ(file->get("a").item<uint8_t>(), 9);
  EXPECT_FLOAT_EQ(file->get("b").item<float>(), 1.0f);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file->get("b").data_ptr()) % 4, 0u);
}

TEST(SafetensorsFormat, UnsupportedDtypesOpenButGetFails) {
  TempDir dir;
  const std::string header =
      R"({"f8":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]},)"
      R"("u16":{"dtype":"U16","shape":[1],"data_offsets":[2,4]},)"
      R"("f4":{"dtype":"F4","shape":[2],"data_offsets":[4,5]}})";
  write_file(dir / "u.safetensors", file_bytes(header, std::string(5, '\0')));
  auto file = mftk::SafetensorsFile::open((dir / "u.safetensors").string());
  ASSERT_NE(file->find("f8"), nullptr);
  EXPECT_EQ(file->find("f8")->dtype, "F8_E4M3");
  EXPECT_TRUE(has(mftk_error_of([&] { file->get("f8"); }), "F8_E4M3"));
  EXPECT_TRUE(has(mftk_error_of([&] { file->get("u16"); }), "U16"));
  EXPECT_TRUE(has(mftk_error_of([&] { file->get("f4"); }), "F4"));
  EXPECT_TRUE(has(mftk_error_of([&] { file->get("nope"); }), "nope"));
}

TEST(SafetensorsFormat, EmptyTensorWithHugeDimsOpensButGetRefuses) {
  TempDir dir;
  // Valid for the reference reader (0 elements, 0 bytes), but libtorch's
  // strides 2^62 * 2^62 would overflow int64.
  const std::string header =
      R"({"z":{"dtype":"U8","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})";
  write_file(dir / "z.safetensors", file_bytes(header));
  auto file = mftk::SafetensorsFile::open((dir / "z.safetensors").string());
  EXPECT_TRUE(has(mftk_error_of([&] { file->get("z"); }), "too large"));
}

// ---------------------------------------------------------------------------
// Rejection of damaged or hostile files.

class SafetensorsReject : public testing::Test {
 protected:
  // Opens `bytes` as a file; returns the mftk::Error text (fails if none).
  std::string reject(const std::string& bytes) {
    const auto path = dir_ / "bad.safetensors";
    write_file(path, bytes);
    std::string message = mftk_error_of([&] { mftk::SafetensorsFile::open(path.string()); });
    EXPECT_TRUE(has(message, path.string())) << "message does not name the file: " << message;
    return message;
  }
  static std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                           uint64_t begin, uint64_t end) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(begin) + "," + std::to_string(end) + "]}";
  }
  TempDir dir_;
};

TEST_F(SafetensorsReject, TruncatedFile) {
  EXPECT_TRUE(has(reject(std::string("\x05\0\0", 3)), "header too small"));
  EXPECT_TRUE(has(reject(""), "header too small"));
}

TEST_F(SafetensorsReject, HeaderLengthPastEndOfFile) {
  EXPECT_TRUE(has(reject(le64(100) + "{}"), "past the end"));
}

TEST_F(SafetensorsReject, HeaderClaimsMoreThan100MB) {
  EXPECT_TRUE(has(reject(le64(100'000'001) + "{}"), "header too large"));
  EXPECT_TRUE(has(reject(le64(std::numeric_limits<uint64_t>::max()) + "{}"), "header too large"));
}

TEST_F(SafetensorsReject, NotJson) {
  EXPECT_TRUE(has(reject(file_bytes("{not json}")), "not valid JSON"));
  EXPECT_TRUE(has(reject(file_bytes("{\"a\":")), "not valid JSON"));
  EXPECT_TRUE(has(reject(file_bytes("{}x")), "not valid JSON"));
  EXPECT_TRUE(has(reject(file_bytes("{\"\xff\":1}")), "UTF-8"));
  EXPECT_TRUE(has(reject(file_bytes("\xEF\xBB\xBF{}")), "byte-order mark"));
  EXPECT_TRUE(has(reject(file_bytes("[1,2]")), "not a JSON object"));
  EXPECT_TRUE(has(reject(file_bytes(std::string(300, '[') + std::string(300, ']'))), "not a JSON object"));
}

TEST_F(SafetensorsReject, OverlappingOffsets) {
  const std::string h = "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}";
  const std::string message = reject(file_bytes(h, std::string(12, '\0')));
  EXPECT_TRUE(has(message, "overlaps")) << message;
  EXPECT_TRUE(has(message, "'b'")) << message;
}

TEST_F(SafetensorsReject, HoleBetweenTensors) {
  const std::string h = "{" + entry("a", "F32", "[1]", 0, 4) + "," + entry("b", "F32", "[1]", 8, 12) + "}";
  EXPECT_TRUE(has(reject(file_bytes(h, std::string(12, '\0'))), "hole of 4 bytes"));
  // The first tensor must start at 0.
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "F32", "[1]", 4, 8) + "}", std::string(8, '\0'))),
                  "hole of 4 bytes"));
}

TEST_F(SafetensorsReject, ByteCountDoesNotMatchDtypeTimesShape) {
  const std::string message = reject(file_bytes("{" + entry("a", "F32", "[3]", 0, 8) + "}", std::string(8, '\0')));
  EXPECT_TRUE(has(message, "needs 12 bytes")) << message;
  EXPECT_TRUE(has(message, "hold 8 bytes")) << message;
  // F4 x 3 = 12 bits, not whole bytes.
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "F4", "[3]", 0, 2) + "}", std::string(2, '\0'))),
                  "whole number of bytes"));
  // Element count overflowing 64 bits.
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[4294967296,4294967296]", 0, 1) + "}",
                                    std::string(1, '\0'))),
                  "overflows"));
}

TEST_F(SafetensorsReject, TrailingOrMissingData) {
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[2]", 0, 2) + "}", "abc")), "1 trailing bytes"));
  EXPECT_TRUE(has(reject(file_bytes("{}", "x")), "trailing"));
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[4]", 0, 4) + "}", "ab")), "truncated"));
}

TEST_F(SafetensorsReject, UnknownDtype) {
  const std::string message = reject(file_bytes("{" + entry("a", "F31", "[1]", 0, 4) + "}", "abcd"));
  EXPECT_TRUE(has(message, "unknown dtype 'F31'")) << message;
}

TEST_F(SafetensorsReject, WrongEntries) {
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":{"dtype":"U8","shape":[1]}})", "x")), "no 'data_offsets'"));
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[-1]", 0, 0) + "}")), "negative dimension"));
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[1.0]", 0, 1) + "}", "x")), "non-negative integers"));
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[1]", 0, 1) + "," + entry("a", "U8", "[0]", 1, 1) + "}",
                                    "x")), "'a' appears twice"));
  EXPECT_TRUE(has(reject(file_bytes("{" + entry("a", "U8", "[0]", 4, 0) + "}")), "end before they begin"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", "x")),
                  "more than 2"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[1]}})", "x")),
                  "exactly 2"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":{"dtype":8,"shape":[1],"data_offsets":[0,1]}})", "x")),
                  "dtype is not a string"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":[1]})")), "not an object"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"__metadata__":{"k":1}})")), "not a string"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"__metadata__":{"k":{"x":"y"}}})")), "not a string"));
  EXPECT_TRUE(has(reject(file_bytes(R"({"__metadata__":{"k":"v","k":"w"}})")), "appears twice"));
  // Ignored extra fields still may not nest without bound.
  const std::string deep = std::string(200, '[') + std::string(200, ']');
  EXPECT_TRUE(has(reject(file_bytes(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":)" + deep + "}}")),
                  "nested deeper"));
}

TEST_F(SafetensorsReject, PathsThatAreNotFiles) {
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::SafetensorsFile::open((dir_ / "missing").string()); }),
                  "cannot open"));
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::SafetensorsFile::open(dir_.path().string()); }), "not a regular file"));
}

TEST_F(SafetensorsReject, RandomDamageNeverCrashes) {
  // Valid file, then thousands of deterministic random mutations: each must
  // either open (and then every get() works or throws mftk::Error) or throw
  // mftk::Error. Anything else (crash, other exception) fails the test.
  const auto good_path = dir_ / "good.safetensors";
  mftk::save_safetensors(good_path.string(), {{"w", at::arange(6, at::kFloat).reshape({2, 3})},
                                              {"b", at::ones({3}, at::kHalf)},
                                              {"m", at::ones({2}, at::kBool)}});
  const std::string good = read_file(good_path);
  std::mt19937 rng(1234);
  int opened = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = good;
    const int kind = static_cast<int>(rng() % 5);
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits; ++e) {
      if (bytes.empty()) break;
      const size_t pos = rng() % bytes.size();
      switch (kind) {
        case 0: bytes[pos] = static_cast<char>(rng() & 0xFF); break;
        case 1: bytes[pos] = "{}[],:\"0123456789 -.e"[rng() % 21]; break;
        case 2: bytes.resize(pos); break;
        case 3: bytes.insert(pos, 1, static_cast<char>(rng() & 0xFF)); break;
        case 4: bytes.replace(0, 8, le64(rng() % (bytes.size() + 16))); break;
      }
    }
    // A new name each time: truncating a just-written file makes ext4 flush it.
    const auto path = dir_ / ("fuzz" + std::to_string(iter) + ".safetensors");
    write_file(path, bytes);
    try {
      auto file = mftk::SafetensorsFile::open(path.string());
      ++opened;
      for (const auto& t : file->tensors()) {
        try {
          at::Tensor v = file->get(t.name);
          (void)v.clone();  // touches every mapped byte
        } catch (const mftk::Error&) {
        }
      }
    } catch (const mftk::Error&) {
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iter << ": non-mftk exception " << e.what();
    }
    fs::remove(path);
  }
  EXPECT_GT(opened, 0);  // some mutations (e.g. in the data) keep the file valid
}

// ---------------------------------------------------------------------------
// Zero-copy views.

TEST(SafetensorsView, SharesTheReadOnlyMappingAndOutlivesTheFile) {
  TempDir dir;
  const auto path = dir / "v.safetensors";
  const at::Tensor w = at::arange(1024, at::kFloat).reshape({32, 32});
  const at::Tensor b = at::arange(16, at::kFloat);
  mftk::save_safetensors(path.string(), {{"w", w}, {"b", b}});

  auto file = mftk::SafetensorsFile::open(path.string());
  at::Tensor view_w = file->get("w");
  const at::Tensor view_b = file->get("b");
  const auto ranges = mappings_of(path);
  ASSERT_FALSE(ranges.empty()) << "file is not mapped";
  auto inside = [&](const at::Tensor& t) {
    const auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
    for (const auto& r : ranges) {
      if (p >= r.begin && p + t.nbytes() <= r.end) return r.perms.substr(0, 2) == "r-";
    }
    return false;
  };
  EXPECT_TRUE(inside(view_w)) << "view_w is not inside a read-only mapping of the file";
  EXPECT_TRUE(inside(view_b));
  // Views of one buffer laid out like the file, not copies.
  EXPECT_EQ(file->get("w").data_ptr(), view_w.data_ptr());
  const auto* wi = file->find("w");
  const auto* bi = file->find("b");
  EXPECT_EQ(static_cast<char*>(view_w.data_ptr()) - static_cast<char*>(view_b.data_ptr()),
            static_cast<ptrdiff_t>(wi->begin) - static_cast<ptrdiff_t>(bi->begin));

  file.reset();
  EXPECT_FALSE(mappings_of(path).empty()) << "mapping released while views exist";
  EXPECT_TRUE(at::equal(view_w, w));
  at::Tensor writable = view_w.clone();  // the documented way to modify
  writable.add_(1);
  EXPECT_TRUE(at::equal(view_w, w));

  view_w = at::Tensor();
  EXPECT_FALSE(mappings_of(path).empty());  // view_b still holds it
  EXPECT_TRUE(at::equal(view_b, b));
}

TEST(SafetensorsView, MappingIsReleasedWithTheLastView) {
  TempDir dir;
  const auto path = dir / "v.safetensors";
  mftk::save_safetensors(path.string(), {{"w", at::ones({4096}, at::kFloat)}});
  {
    auto file = mftk::SafetensorsFile::open(path.string());
    at::Tensor view = file->get("w");
    file.reset();
    EXPECT_FALSE(mappings_of(path).empty());
  }
  EXPECT_TRUE(mappings_of(path).empty());
}

// ---------------------------------------------------------------------------
// Streaming writer.

TEST(SafetensorsWriter, NoFileAtPathWithoutFinish) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  {
    mftk::SafetensorsWriter writer(path.string(), {{"a", at::kFloat, {2}}, {"b", at::kLong, {1}}});
    writer.write("a", at::ones({2}, at::kFloat));
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(dir.path())) << "temporary file left behind";
  { mftk::SafetensorsWriter writer(path.string(), {{"a", at::kFloat, {2}}}); }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

TEST(SafetensorsWriter, UnfinishedWriteKeepsTheOldFile) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  mftk::save_safetensors(path.string(), {{"old", at::zeros({3}, at::kFloat)}});
  const std::string before = read_file(path);
  {
    mftk::SafetensorsWriter writer(path.string(), {{"new", at::kFloat, {1}}});
    EXPECT_EQ(read_file(path), before);
  }
  EXPECT_EQ(read_file(path), before);
}

TEST(SafetensorsWriter, FinishRequiresEveryTensor) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  {
    mftk::SafetensorsWriter writer(path.string(), {{"a", at::kFloat, {2}}, {"b", at::kLong, {1}}});
    writer.write("a", at::ones({2}, at::kFloat));
    const std::string message = mftk_error_of([&] { writer.finish(); });
    EXPECT_TRUE(has(message, "missing 1: b")) << message;
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST(SafetensorsWriter, RejectsWritesThatDoNotMatchTheDeclaration) {
  TempDir dir;
  mftk::SafetensorsWriter writer((dir / "w.safetensors").string(), {{"a", at::kFloat, {2, 3}}});
  EXPECT_TRUE(has(mftk_error_of([&] { writer.write("a", at::ones({2, 3}, at::kHalf)); }), "declared Float"));
  EXPECT_TRUE(has(mftk_error_of([&] { writer.write("a", at::ones({3, 2}, at::kFloat)); }), "[3, 2]"));
  EXPECT_TRUE(has(mftk_error_of([&] { writer.write("zz", at::ones({1}, at::kFloat)); }), "not declared"));
  writer.write("a", at::ones({2, 3}, at::kFloat));
  EXPECT_TRUE(has(mftk_error_of([&] { writer.write("a", at::ones({2, 3}, at::kFloat)); }), "twice"));
  EXPECT_TRUE(has(mftk_error_of([&] {
                    mftk::SafetensorsWriter((dir / "x.safetensors").string(),
                                            {{"a", at::kFloat, {1}}, {"a", at::kFloat, {1}}});
                  }), "declared twice"));
  EXPECT_TRUE(has(mftk_error_of([&] {
                    mftk::SafetensorsWriter((dir / "no_such_dir" / "x.safetensors").string(), {});
                  }), "cannot create"));
}

TEST(SafetensorsWriter, StreamingInAnyOrderEqualsOneShotSave) {
  TempDir dir;
  const mftk::NamedTensors tensors = {{"z", at::arange(5, at::kLong)},
                                      {"a", at::rand({3, 4}).to(at::kBFloat16)},
                                      {"m", at::rand({7})}};
  mftk::save_safetensors((dir / "one.safetensors").string(), tensors);
  std::vector<mftk::SafetensorsWriter::Decl> decls;
  for (const auto& [n, t] : tensors) decls.push_back({n, t.scalar_type(), t.sizes().vec()});
  mftk::SafetensorsWriter writer((dir / "stream.safetensors").string(), decls);
  for (auto it = tensors.rbegin(); it != tensors.rend(); ++it) writer.write(it->first, it->second);
  writer.finish();
  EXPECT_EQ(read_file(dir / "stream.safetensors"), read_file(dir / "one.safetensors"));
}

// ---------------------------------------------------------------------------
// Checkpoint folders.

mftk::NamedTensors five_tensors() {
  // Byte sizes 40, 40, 120, 5, 20 (total 225).
  return {{"t0", at::arange(10, at::kFloat)},
          {"t1", at::arange(10, at::kFloat) * 2},
          {"t2", at::arange(30, at::kFloat).reshape({3, 10})},
          {"t3", at::arange(5, at::kLong).to(at::kByte)},
          {"t4", at::arange(5, at::kFloat) - 3}};
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

std::set<std::string> names_in(const fs::path& file) {
  std::set<std::string> out;
  const auto opened = mftk::SafetensorsFile::open(file.string());
  for (const auto& t : opened->tensors()) out.insert(t.name);
  return out;
}

void expect_reads_back(const mftk::CheckpointReader& reader, const mftk::NamedTensors& tensors) {
  std::vector<std::string> expected_names;
  for (const auto& [n, t] : tensors) expected_names.push_back(n);
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(reader.names(), expected_names);
  uint64_t total = 0;
  for (const auto& [n, t] : tensors) {
    EXPECT_TRUE(same_bits(reader.get(n), t)) << n;
    EXPECT_EQ(reader.info(n).nbytes(), static_cast<uint64_t>(t.numel() * t.element_size())) << n;
    total += t.numel() * t.element_size();
  }
  EXPECT_EQ(reader.total_bytes(), total);
}

TEST(SafetensorsCheckpoint, ShardsLikeHuggingFaceHub) {
  TempDir dir;
  const auto tensors = five_tensors();
  mftk::save_checkpoint(dir.path().string(), tensors, 100);
  // huggingface_hub with limit 100: t0+t1 = 80; t2 (120 > limit) becomes its
  // own shard at once, ahead of the open one; t3 -> 85; t4 would make 105,
  // so the open shard {t0,t1,t3} closes and t4 starts the last one.
  const std::string s1 = "model-00001-of-00003.safetensors", s2 = "model-00002-of-00003.safetensors",
                    s3 = "model-00003-of-00003.safetensors";
  EXPECT_EQ(files_in(dir.path()), (std::set<std::string>{s1, s2, s3, "model.safetensors.index.json"}));
  EXPECT_EQ(names_in(dir / s1), (std::set<std::string>{"t2"}));
  EXPECT_EQ(names_in(dir / s2), (std::set<std::string>{"t0", "t1", "t3"}));
  EXPECT_EQ(names_in(dir / s3), (std::set<std::string>{"t4"}));
  EXPECT_EQ(mftk::SafetensorsFile::open((dir / s1).string())->metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}}));

  const std::string index_text = read_file(dir / "model.safetensors.index.json");
  ASSERT_FALSE(index_text.empty());
  EXPECT_EQ(index_text.back(), '\n');
  const auto index = nlohmann::json::parse(index_text);
  const nlohmann::json expected = {
      {"metadata", {{"total_size", 225}}},
      {"weight_map", {{"t0", s2}, {"t1", s2}, {"t2", s1}, {"t3", s2}, {"t4", s3}}}};
  EXPECT_EQ(index, expected) << index_text;

  expect_reads_back(mftk::CheckpointReader::open(dir.path().string()), tensors);
  // A path straight to one shard reads just that file.
  const auto one = mftk::CheckpointReader::open((dir / s1).string());
  EXPECT_EQ(one.names(), std::vector<std::string>{"t2"});
  // ... and a path to the index reads the whole checkpoint.
  expect_reads_back(mftk::CheckpointReader::open((dir / "model.safetensors.index.json").string()), tensors);
}

TEST(SafetensorsCheckpoint, ResavingRemovesStaleFiles) {
  TempDir dir;
  const auto tensors = five_tensors();
  mftk::save_checkpoint(dir.path().string(), tensors, 100);  // 3 shards
  mftk::save_checkpoint(dir.path().string(), tensors, 200);  // {t0,t1,t2} = 200, {t3,t4}
  EXPECT_EQ(files_in(dir.path()),
            (std::set<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                   "model.safetensors.index.json"}));
  expect_reads_back(mftk::CheckpointReader::open(dir.path().string()), tensors);

  write_file(dir / "config.json", "{}");  // not ours: must survive
  mftk::save_checkpoint(dir.path().string(), tensors);  // fits in one file
  EXPECT_EQ(files_in(dir.path()), (std::set<std::string>{"model.safetensors", "config.json"}));
  expect_reads_back(mftk::CheckpointReader::open(dir.path().string()), tensors);

  mftk::save_checkpoint(dir.path().string(), tensors, 100);
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  expect_reads_back(mftk::CheckpointReader::open(dir.path().string()), tensors);

  // A new folder is created.
  mftk::save_checkpoint((dir / "sub" / "ckpt").string(), tensors);
  expect_reads_back(mftk::CheckpointReader::open((dir / "sub" / "ckpt").string()), tensors);
}

TEST(SafetensorsCheckpoint, BrokenIndexesAreRefused) {
  TempDir dir;
  mftk::save_checkpoint(dir.path().string(), five_tensors(), 100);
  const auto index_path = dir / "model.safetensors.index.json";
  auto index = nlohmann::json::parse(read_file(index_path));

  auto missing = index;
  missing["weight_map"]["t9"] = "model-00009-of-00009.safetensors";
  write_file(index_path, missing.dump());
  std::string message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, "model-00009-of-00009.safetensors")) << message;
  EXPECT_TRUE(has(message, "missing")) << message;

  auto moved = index;
  moved["weight_map"]["t4"] = "model-00001-of-00003.safetensors";
  write_file(index_path, moved.dump());
  message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, "'t4'")) << message;

  auto unlisted = index;
  unlisted["weight_map"].erase("t3");
  write_file(index_path, unlisted.dump());
  message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, "'t3'") && has(message, "does not list")) << message;

  auto escaping = index;
  escaping["weight_map"]["t0"] = "../model-00002-of-00003.safetensors";
  write_file(index_path, escaping.dump());
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); }), "relative path"));

  write_file(index_path, "{\"metadata\":{}}");
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); }), "weight_map"));
  write_file(index_path, "{oops");
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); }), "not valid JSON"));
}

TEST(SafetensorsCheckpoint, AdapterStemAndSingleFile) {
  TempDir dir;
  const mftk::NamedTensors adapter = {{"base_model.model.lora_A.weight", at::rand({4, 8})}};
  mftk::save_safetensors((dir / "adapter_model.safetensors").string(), adapter);
  expect_reads_back(mftk::CheckpointReader::open(dir.path().string(), "adapter_model"), adapter);
  expect_reads_back(mftk::CheckpointReader::open((dir / "adapter_model.safetensors").string()), adapter);
  // With the default stem nothing is found, and the message says what was tried
  // and points at the file that is there.
  const std::string message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, "model.safetensors.index.json")) << message;
  EXPECT_TRUE(has(message, "adapter_model.safetensors")) << message;
}

TEST(SafetensorsCheckpoint, PickleCheckpointsAreRefusedWithAConversionHint) {
  TempDir dir;
  write_file(dir / "pytorch_model.bin", "PK\x03\x04 not really a zip");
  write_file(dir / "config.json", "{}");
  const std::string message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, "pytorch_model.bin")) << message;
  EXPECT_TRUE(has(message, "pickle")) << message;
  EXPECT_TRUE(has(message, "execute")) << message;
  EXPECT_TRUE(has(message, "save_pretrained")) << message;
  EXPECT_TRUE(has(message, "safe_serialization=True")) << message;
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::CheckpointReader::open((dir / "pytorch_model.bin").string()); }),
                  "pickle"));
  write_file(dir / "adapter_model.pt", "x");
  EXPECT_TRUE(has(mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string(), "adapter_model"); }),
                  "adapter_model.pt"));
}

TEST(SafetensorsCheckpoint, NothingFound) {
  TempDir dir;
  std::string message = mftk_error_of([&] { mftk::CheckpointReader::open(dir.path().string()); });
  EXPECT_TRUE(has(message, (dir / "model.safetensors").string())) << message;
  EXPECT_TRUE(has(message, (dir / "model.safetensors.index.json").string())) << message;
  message = mftk_error_of([&] { mftk::CheckpointReader::open((dir / "nope").string()); });
  EXPECT_TRUE(has(message, "does not exist")) << message;
  mftk::save_checkpoint(dir.path().string(), five_tensors());
  const auto reader = mftk::CheckpointReader::open(dir.path().string());
  EXPECT_TRUE(reader.contains("t1"));
  EXPECT_FALSE(reader.contains("t9"));
  EXPECT_TRUE(has(mftk_error_of([&] { reader.get("t9"); }), "t9"));
}

// Resident file-backed memory of this process (RssFile in /proc/self/status).
int64_t rss_file_bytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("RssFile:", 0) == 0) return std::stoll(line.substr(8)) * 1024;
  return -1;
}

TEST(SafetensorsView, ReleasedPagesLeaveTheResidentSetAndReadBackTheSame) {
  TempDir dir;
  const at::Tensor big = at::arange(4 << 20, at::kFloat);  // 16 MiB
  mftk::save_safetensors((dir / "big.safetensors").string(), {{"w", big}});
  auto file = mftk::SafetensorsFile::open((dir / "big.safetensors").string());
  const at::Tensor view = file->get("w");
  const double sum = view.sum().item<double>();  // faults every page in
  const int64_t before = rss_file_bytes();
  mftk::release_mapped_pages(view);
  const int64_t after = rss_file_bytes();
  EXPECT_GT(before - after, int64_t(15) << 20) << "before " << before << " after " << after;
  EXPECT_EQ(view.sum().item<double>(), sum);  // read again from the file
  EXPECT_TRUE(at::equal(view, big));

  // A heap tensor is not a mapping: left alone.
  const at::Tensor heap = at::arange(4 << 20, at::kFloat);
  mftk::release_mapped_pages(heap);
  EXPECT_TRUE(at::equal(heap, big));
}

}  // namespace

