// Fuzz target: a PEFT adapter_config.json through the lora plugin's parse
// (what LoRAAdapter::load reads before any tensor).
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "peft_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  mftk::fuzz::run_parser([&] {
    const auto options = mftk::lora::parse_peft_config(mftk::fuzz::bytes(data, size), "adapter_config.json");
    if (options.r < 1 || options.target_modules.empty()) __builtin_trap();
    if (!(options.dropout >= 0.0 && options.dropout < 1.0)) __builtin_trap();
  });
  return 0;
}
