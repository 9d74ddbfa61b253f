// The first-party plugins the core falls back to when nothing else is named:
// the one place in core/ that spells their names (issue 17: the core names
// no plugin). Code that needs a default reads it from here.
//
// defines: mftk::core::kDefaultModelPlugin, mftk::core::kDefaultAdapterPlugin,
//          mftk::core::kDefaultObjectivePlugin, mftk::core::kDefaultPackingPacker,
//          mftk::core::kDefaultOneRowPerExamplePacker, mftk::core::default_packer,
//          mftk::core::kDefaultOptimizerPlugin, mftk::core::kDefaultQuantizerPlugin
#pragma once

namespace mftk::core {

// The model `mftk plugin check` builds its tiny checkpoint for, and runs
// adapters, quantizers and exporters against.
inline constexpr const char* kDefaultModelPlugin = "mistral";
// The adapter a folder is loaded with when nothing names one.
inline constexpr const char* kDefaultAdapterPlugin = "lora";
// The loss a run minimises when the recipe has no [objective] table.
inline constexpr const char* kDefaultObjectivePlugin = "sft";
// The packer a run uses when the recipe has no [packer] table:
// [training] sample_packing picks several documents per row or one.
inline constexpr const char* kDefaultPackingPacker = "swa_packer";
inline constexpr const char* kDefaultOneRowPerExamplePacker = "padding";
inline const char* default_packer(bool sample_packing) {
  return sample_packing ? kDefaultPackingPacker : kDefaultOneRowPerExamplePacker;
}
// The optimizer a run uses when the recipe has no [optimizer] table.
inline constexpr const char* kDefaultOptimizerPlugin = "adamw";
// The quantizer `mftk quantize` writes with when --plugin is not given.
inline constexpr const char* kDefaultQuantizerPlugin = "nf4";

}  // namespace mftk::core
