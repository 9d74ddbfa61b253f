// Fuzz target: model.safetensors.index.json text through the parse
// CheckpointReader::open runs before it opens any shard.
#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "fuzz_support.h"
#include "safetensors_parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mftk::fuzz::run_parser([&] {
    const auto index = mftk::detail::parse_checkpoint_index("fuzz.safetensors.index.json",
                                                            mftk::fuzz::bytes(data, size));
    // A shard name that was accepted must stay inside the checkpoint folder:
    // the reader opens folder / name.
    for (const auto& [shard, names] : index.tensors_by_shard) {
      const std::filesystem::path p(shard);
      if (shard.empty() || p.is_absolute()) __builtin_trap();
      for (const auto& part : p)
        if (part == "..") __builtin_trap();
      for (const auto& name : names)
        if (index.shard_of.at(name) != shard) __builtin_trap();
    }
  });
  return 0;
}
