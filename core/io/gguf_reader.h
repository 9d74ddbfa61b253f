// The GGUF reader is the SDK's (mftk/gguf_reader.h); the core's code and
// tests use it under the mftk::core names it had before it moved there.
#pragma once

#include "gguf_format.h"
#include "mftk/gguf_reader.h"

namespace mftk::core {

using ::mftk::GgufFile;
using ::mftk::GgufTensorInfo;

}  // namespace mftk::core
