// GGUF constants and value model (see mftk/gguf_format.h).
#include "mftk/gguf_format.h"

#include <array>
#include <cstring>

#include <fmt/format.h>

#include "mftk/error.h"

namespace mftk {

std::string to_string(GgufValueType type) {
  switch (type) {
    case GgufValueType::uint8: return "uint8";
    case GgufValueType::int8: return "int8";
    case GgufValueType::uint16: return "uint16";
    case GgufValueType::int16: return "int16";
    case GgufValueType::uint32: return "uint32";
    case GgufValueType::int32: return "int32";
    case GgufValueType::float32: return "float32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::uint64: return "uint64";
    case GgufValueType::int64: return "int64";
    case GgufValueType::float64: return "float64";
  }
  return fmt::format("type {}", uint32_t(type));
}

bool is_known(GgufValueType type) { return uint32_t(type) <= uint32_t(GgufValueType::float64); }

GgufValue GgufValue::u32(uint32_t v) {
  GgufValue g;
  g.type = GgufValueType::uint32;
  g.integer = v;
  return g;
}

GgufValue GgufValue::i32(int32_t v) {
  GgufValue g;
  g.type = GgufValueType::int32;
  g.integer = uint64_t(int64_t(v));
  return g;
}

GgufValue GgufValue::u64(uint64_t v) {
  GgufValue g;
  g.type = GgufValueType::uint64;
  g.integer = v;
  return g;
}

GgufValue GgufValue::f32(float v) {
  GgufValue g;
  g.type = GgufValueType::float32;
  g.real = v;
  return g;
}

GgufValue GgufValue::boolean(bool v) {
  GgufValue g;
  g.type = GgufValueType::boolean;
  g.integer = v ? 1 : 0;
  return g;
}

GgufValue GgufValue::str(std::string v) {
  GgufValue g;
  g.type = GgufValueType::string;
  g.text = std::move(v);
  return g;
}

GgufValue GgufValue::array(GgufValueType element_type, std::vector<GgufValue> items) {
  for (const auto& item : items)
    MFTK_CHECK(item.type == element_type, "gguf: an array of {} holds a {} value", to_string(element_type),
               to_string(item.type));
  GgufValue g;
  g.type = GgufValueType::array;
  g.element_type = element_type;
  g.items = std::move(items);
  return g;
}

GgufValue GgufValue::strings(const std::vector<std::string>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (const auto& s : v) items.push_back(str(s));
  return array(GgufValueType::string, std::move(items));
}

GgufValue GgufValue::f32s(const std::vector<float>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (float x : v) items.push_back(f32(x));
  return array(GgufValueType::float32, std::move(items));
}

GgufValue GgufValue::i32s(const std::vector<int32_t>& v) {
  std::vector<GgufValue> items;
  items.reserve(v.size());
  for (int32_t x : v) items.push_back(i32(x));
  return array(GgufValueType::int32, std::move(items));
}

int64_t GgufValue::as_int() const {
  switch (type) {
    case GgufValueType::int8: return int8_t(integer);
    case GgufValueType::int16: return int16_t(integer);
    case GgufValueType::int32: return int32_t(integer);
    default: return int64_t(integer);
  }
}

bool GgufValue::operator==(const GgufValue& other) const {
  if (type != other.type) return false;
  switch (type) {
    case GgufValueType::float32:
    case GgufValueType::float64:
      // Bit patterns, so that NaN == NaN and -0 != +0: a round trip is exact.
      return std::memcmp(&real, &other.real, sizeof real) == 0;
    case GgufValueType::string: return text == other.text;
    case GgufValueType::array: return element_type == other.element_type && items == other.items;
    default: return integer == other.integer;
  }
}

namespace {

// Sizes from ggml's block structs (ggml-common.h, docs/formats.md §4.7, GGUF blocks).
constexpr std::array<GgmlTypeTraits, 20> kTypes = {{
    {GgmlType::f32, "F32", 1, 4},       {GgmlType::f16, "F16", 1, 2},
    {GgmlType::q4_0, "Q4_0", 32, 18},   {GgmlType::q4_1, "Q4_1", 32, 20},
    {GgmlType::q5_0, "Q5_0", 32, 22},   {GgmlType::q5_1, "Q5_1", 32, 24},
    {GgmlType::q8_0, "Q8_0", 32, 34},   {GgmlType::q8_1, "Q8_1", 32, 36},
    {GgmlType::q2_k, "Q2_K", 256, 84},  {GgmlType::q3_k, "Q3_K", 256, 110},
    {GgmlType::q4_k, "Q4_K", 256, 144}, {GgmlType::q5_k, "Q5_K", 256, 176},
    {GgmlType::q6_k, "Q6_K", 256, 210}, {GgmlType::q8_k, "Q8_K", 256, 292},
    {GgmlType::i8, "I8", 1, 1},         {GgmlType::i16, "I16", 1, 2},
    {GgmlType::i32, "I32", 1, 4},       {GgmlType::i64, "I64", 1, 8},
    {GgmlType::f64, "F64", 1, 8},       {GgmlType::bf16, "BF16", 1, 2},
}};

}  // namespace

std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id) {
  for (const auto& t : kTypes)
    if (uint32_t(t.type) == type_id) return t;
  return std::nullopt;
}

const GgmlTypeTraits& ggml_type_traits(GgmlType type) {
  for (const auto& t : kTypes)
    if (t.type == type) return t;
  throw Error(fmt::format("gguf: ggml type {} has no traits", uint32_t(type)));
}

uint64_t ggml_row_bytes(GgmlType type, uint64_t ne0) {
  const auto& t = ggml_type_traits(type);
  MFTK_CHECK(ne0 % t.block_size == 0, "gguf: a row of {} elements is not a whole number of {} blocks ({} each)",
             ne0, t.name, t.block_size);
  return ne0 / t.block_size * t.type_size;
}

}  // namespace mftk
