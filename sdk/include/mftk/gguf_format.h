// GGUF v3, the file format llama.cpp reads (docs/formats.md §4, GGUF): the constants,
// the metadata value model and the ggml tensor types mftk reads and writes.
// Part of the SDK (implemented in libmftk_core): shared by the reader
// (mftk/gguf_reader.h; `mftk inspect`) and any plugin that writes GGUF (the
// gguf exporter); no torch here.
//
// File layout (all little-endian):
//   1. magic "GGUF" (u32 0x46554747), version u32 = 3, tensor_count u64,
//      metadata_kv_count u64
//   2. metadata: key (gguf string), value_type u32, value; an array value is
//      element_type u32 + count u64 + elements
//   3. tensor infos: name (gguf string), n_dims u32, ne u64 x n_dims (ne[0]
//      is the fastest-varying dimension: a torch [out, in] matrix is
//      ne = [in, out]), ggml_type u32, offset u64 (relative to the data)
//   4. zero padding to the alignment, then the tensor data, each tensor at
//      its offset, padded to the alignment
// gguf string = u64 byte length + bytes (no terminator).
//
// defines: mftk::kGgufMagic, kGgufVersion, kGgufDefaultAlignment,
//          mftk::GgufValueType, mftk::GgufValue,
//          mftk::GgmlType, mftk::GgmlTypeTraits,
//          mftk::ggml_type_traits, mftk::ggml_row_bytes,
//          mftk::to_string(GgufValueType)
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mftk {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kGgufVersion = 3;
constexpr uint32_t kGgufDefaultAlignment = 32;

enum class GgufValueType : uint32_t {
  uint8 = 0,
  int8 = 1,
  uint16 = 2,
  int16 = 3,
  uint32 = 4,
  int32 = 5,
  float32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  uint64 = 10,
  int64 = 11,
  float64 = 12,
};

// "uint32", "string", ...; "type 42" for an id that is not one.
std::string to_string(GgufValueType type);
bool is_known(GgufValueType type);

// One metadata value with its exact GGUF type (a u32 and an i32 holding the
// same number are different values: llama.cpp checks the type of each key).
// Integers live in `integer` (unsigned ones are stored losslessly as their
// bit pattern for uint64), floats in `real` (float32 values are exact).
struct GgufValue {
  GgufValueType type = GgufValueType::uint32;
  uint64_t integer = 0;  // every integer type and bool (two's complement for signed)
  double real = 0;       // float32, float64
  std::string text;      // string
  GgufValueType element_type = GgufValueType::uint32;  // array
  std::vector<GgufValue> items;                        // array

  static GgufValue u32(uint32_t v);
  static GgufValue i32(int32_t v);
  static GgufValue u64(uint64_t v);
  static GgufValue f32(float v);
  static GgufValue boolean(bool v);
  static GgufValue str(std::string v);
  static GgufValue array(GgufValueType element_type, std::vector<GgufValue> items);
  static GgufValue strings(const std::vector<std::string>& v);
  static GgufValue f32s(const std::vector<float>& v);
  static GgufValue i32s(const std::vector<int32_t>& v);

  // The value as a signed number (signed types are sign-extended).
  int64_t as_int() const;
  bool operator==(const GgufValue& other) const;
  bool operator!=(const GgufValue& other) const { return !(*this == other); }
};

// ggml tensor types mftk knows the layout of (ids as in ggml.h).
enum class GgmlType : uint32_t {
  f32 = 0,
  f16 = 1,
  q4_0 = 2,
  q4_1 = 3,
  q5_0 = 6,
  q5_1 = 7,
  q8_0 = 8,
  q8_1 = 9,
  q2_k = 10,
  q3_k = 11,
  q4_k = 12,
  q5_k = 13,
  q6_k = 14,
  q8_k = 15,
  i8 = 24,
  i16 = 25,
  i32 = 26,
  i64 = 27,
  f64 = 28,
  bf16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;     // "F32", "Q8_0" as llama.cpp prints them
  uint32_t block_size;  // elements per block along ne[0]
  uint32_t type_size;   // bytes per block
};

// nullopt for a type id mftk does not know (the reader reports it).
std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t type_id);
const GgmlTypeTraits& ggml_type_traits(GgmlType type);

// Bytes of one row of ne0 elements; throws when ne0 is not a multiple of the
// block size.
uint64_t ggml_row_bytes(GgmlType type, uint64_t ne0);

}  // namespace mftk
