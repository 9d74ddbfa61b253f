// Fuzz target: a .safetensors file image through the checks
// SafetensorsFile::open runs before it maps the file (the 8-byte header
// length, then the JSON header: UTF-8, schema, offsets and byte counts).
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "safetensors_parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mftk::fuzz::run_parser([&] {
    const std::string path = "fuzz.safetensors";
    const uint64_t header_size = mftk::detail::safetensors_header_length(path, size, size >= 8 ? data : nullptr);
    const std::string header(reinterpret_cast<const char*>(data) + 8, header_size);
    const uint64_t data_size = size - 8 - header_size;
    const auto parsed = mftk::detail::parse_safetensors_header(path, header, data_size);
    // What get() relies on once a header is accepted: contiguous offsets
    // that stay inside the data section, so a view never reads past the map.
    uint64_t expected_begin = 0;
    for (const auto& t : parsed.tensors) {
      if (t.begin != expected_begin || t.end < t.begin || t.end > data_size) __builtin_trap();
      expected_begin = t.end;
    }
    if (expected_begin != data_size) __builtin_trap();
  });
  return 0;
}
