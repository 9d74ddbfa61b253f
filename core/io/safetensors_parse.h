// The byte-level parsers behind SafetensorsFile::open and
// CheckpointReader::open, exposed so that the fuzz targets (fuzz/) and the
// fuzz regression tests feed bytes to exactly the code production runs,
// without a file or a mapping in between.
//
// defines: mftk::detail::SafetensorsHeader, mftk::detail::safetensors_header_length,
//          mftk::detail::parse_safetensors_header, mftk::detail::CheckpointIndex,
//          mftk::detail::parse_checkpoint_index
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mftk/safetensors.h"

namespace mftk::detail {

// The 8-byte little-endian header length at the start of a file of
// file_size bytes (length_bytes may be null when file_size < 8). Throws
// mftk::Error naming `path` when the length cannot be right for the file.
uint64_t safetensors_header_length(const std::string& path, uint64_t file_size,
                                   const unsigned char* length_bytes);

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in offset order
  std::map<std::string, std::string> metadata;
};

// The JSON header (the bytes after the length field) of a file whose data
// section holds data_size bytes: UTF-8, schema and layout checks, as open().
SafetensorsHeader parse_safetensors_header(const std::string& path, const std::string& header,
                                           uint64_t data_size);

// model.safetensors.index.json, before any shard is opened.
struct CheckpointIndex {
  std::map<std::string, std::vector<std::string>> tensors_by_shard;  // shard file -> tensor names
  std::map<std::string, std::string> shard_of;                       // tensor name -> shard file
  std::optional<uint64_t> total_size;                                // metadata.total_size
};

// Parses and checks an index's text (JSON, the weight_map, shard names that
// stay inside the folder); index_name names the file in messages.
CheckpointIndex parse_checkpoint_index(const std::string& index_name, const std::string& text);

}  // namespace mftk::detail
