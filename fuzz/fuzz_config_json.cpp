// Fuzz target: a Hugging Face config.json through the mistral plugin's
// MistralConfig::parse (what MistralConfig::load runs on the file's text).
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "fuzz_support.h"
#include "mistral_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mftk::fuzz::run_parser([&] {
    const auto config = mftk::mistral::MistralConfig::parse(mftk::fuzz::bytes(data, size), "config.json");
    // A config that validated is written back by `mftk init`/merge: what we
    // write must read back to the same shape.
    mftk::mistral::MistralConfig again;
    try {
      again = mftk::mistral::MistralConfig::from_json(config.to_json(), "config.json (re-read)");
    } catch (const mftk::Error&) {
      __builtin_trap();  // we accepted it but cannot read back what we write
    }
    if (again.q_dim() != config.q_dim() || again.kv_dim() != config.kv_dim() ||
        again.sliding_window != config.sliding_window || again.vocab_size != config.vocab_size)
      __builtin_trap();
  });
  return 0;
}
