// The first-party plugins the core falls back to when nothing else is named:
// the one place in core/ that spells their names (issue 17: the core names
// no plugin). Code that needs a default reads it from here.
//
// defines: mftk::core::kDefaultModelPlugin, mftk::core::kDefaultAdapterPlugin,
//          mftk::core::kDefaultObjectivePlugin
#pragma once

namespace mftk::core {

// The model `mftk plugin check` builds its tiny checkpoint for, and runs
// adapters, quantizers and exporters against.
inline constexpr const char* kDefaultModelPlugin = "mistral";
// The adapter a folder is loaded with when nothing names one.
inline constexpr const char* kDefaultAdapterPlugin = "lora";
// The loss a run minimises when the recipe has no [objective] table.
inline constexpr const char* kDefaultObjectivePlugin = "sft";

}  // namespace mftk::core
