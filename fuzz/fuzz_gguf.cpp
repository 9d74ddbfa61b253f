// Fuzz target: a GGUF file image through GgufFile's reader (header,
// metadata, tensor infos, data-section bounds), as `mftk inspect` and the
// gguf exporter's self-check read files.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "gguf_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mftk::fuzz::run_parser([&] {
    const auto file = mftk::core::GgufFile::parse("fuzz.gguf", mftk::fuzz::bytes(data, size));
    for (const auto& [key, value] : file.metadata()) {
      if (file.find(key) != &value) __builtin_trap();
    }
    volatile unsigned char sink = 0;
    for (const auto& t : file.tensors()) {
      // The byte count must be what the type and shape say (a wrapped
      // product would let a consumer read elements() values from fewer bytes).
      const auto& traits = mftk::core::ggml_type_traits(t.type);
      unsigned __int128 elements = 1;
      for (uint64_t d : t.ne) elements *= d;
      const unsigned __int128 nbytes = elements / traits.block_size * traits.type_size;
      if (nbytes != t.nbytes) __builtin_trap();
      // Touch the first and last byte: ASan sees a read past the image.
      const auto bytes = file.data(t);
      if (!bytes.empty()) sink = sink + static_cast<unsigned char>(bytes.front() ^ bytes.back());
    }
  });
  return 0;
}
