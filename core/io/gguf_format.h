// The GGUF container is the SDK's (mftk/gguf_format.h); the core's code and
// tests use it under the mftk::core names it had before it moved there.
#pragma once

#include "mftk/gguf_format.h"

namespace mftk::core {

using ::mftk::ggml_row_bytes;
using ::mftk::ggml_type_traits;
using ::mftk::GgmlType;
using ::mftk::GgmlTypeTraits;
using ::mftk::GgufValue;
using ::mftk::GgufValueType;
using ::mftk::is_known;
using ::mftk::kGgufDefaultAlignment;
using ::mftk::kGgufMagic;
using ::mftk::kGgufVersion;
using ::mftk::to_string;

}  // namespace mftk::core
