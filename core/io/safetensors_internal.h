// What the safetensors sources share and nothing else includes: the dtype
// table in the reference library's order, the limits every reader enforces,
// and a few small text helpers. The public API stays in mftk/safetensors.h
// and the byte-level parsers in safetensors_parse.h.
//
// The sources: safetensors_dtypes.cpp (the dtype table and its libtorch
// mapping), safetensors_header.cpp (length field, JSON header and layout
// checks), safetensors_mapped_file.cpp (SafetensorsFile: the mapped reader),
// safetensors_writer.cpp (SafetensorsWriter, save_safetensors),
// safetensors_checkpoint_reader.cpp (CheckpointReader: single files, sharded
// indexes, pickle refusal), safetensors_sharded_save.cpp (save_checkpoint).
//
// defines: mftk::safetensors_impl::DtypeSpec, kDtypes, kDtypeCount, dtype_rank,
//          known_dtype_names, torch_dtype_names, kMaxHeaderBytes, kBadFileHint,
//          errno_text, shape_text, ends_with
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <fmt/format.h>

// Assumes a little-endian host: safetensors data are little-endian and are
// mapped and written as-is.
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mftk's safetensors I/O maps little-endian data as-is; big-endian hosts are not supported"
#endif

namespace mftk::safetensors_impl {

// The reference reader refuses headers above this size ("header too large");
// the writer refuses to write one.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

inline constexpr const char* kBadFileHint =
    "the file is damaged or is not a safetensors file: re-download it or export it again";

struct DtypeSpec {
  const char* name;
  int bits;
  at::ScalarType torch;  // Undefined: libtorch 1.13 has no such type
};

// In the reference library's enum order (ascending); the writer puts larger
// ranks first. Index in this table == rank.
inline constexpr DtypeSpec kDtypes[] = {
    {"BOOL", 8, at::kBool},
    {"F4", 4, at::ScalarType::Undefined},
    {"F6_E2M3", 6, at::ScalarType::Undefined},
    {"F6_E3M2", 6, at::ScalarType::Undefined},
    {"U8", 8, at::kByte},
    {"I8", 8, at::kChar},
    {"F8_E5M2", 8, at::ScalarType::Undefined},
    {"F8_E4M3", 8, at::ScalarType::Undefined},
    {"F8_E8M0", 8, at::ScalarType::Undefined},
    {"F8_E4M3FNUZ", 8, at::ScalarType::Undefined},
    {"F8_E5M2FNUZ", 8, at::ScalarType::Undefined},
    {"I16", 16, at::kShort},
    {"U16", 16, at::ScalarType::Undefined},
    {"F16", 16, at::kHalf},
    {"BF16", 16, at::kBFloat16},
    {"I32", 32, at::kInt},
    {"U32", 32, at::ScalarType::Undefined},
    {"F32", 32, at::kFloat},
    {"C64", 64, at::kComplexFloat},
    {"F64", 64, at::kDouble},
    {"I64", 64, at::kLong},
    {"U64", 64, at::ScalarType::Undefined},
};
inline constexpr int kDtypeCount = static_cast<int>(sizeof(kDtypes) / sizeof(kDtypes[0]));

// Rank of a safetensors dtype name in kDtypes, or -1.
int dtype_rank(const std::string& name);
// Every safetensors dtype name, space-separated, for messages.
std::string known_dtype_names();
// The names libtorch 1.13 can hold, space-separated, for messages.
std::string torch_dtype_names();

inline std::string errno_text(int err) { return std::strerror(err); }

inline std::string shape_text(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

inline bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace mftk::safetensors_impl
