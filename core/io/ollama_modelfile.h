// The Ollama Modelfile is the SDK's (mftk/ollama_modelfile.h); the core's
// code and tests use it under the mftk::core names it had before it moved.
#pragma once

#include "chat_template.h"
#include "mftk/ollama_modelfile.h"

namespace mftk::core {

using ::mftk::is_ollama_modelfile_written_by_mftk;
using ::mftk::kOllamaModelfileMark;
using ::mftk::modelfile_path_for;
using ::mftk::ollama_chat_template;
using ::mftk::OllamaModelfile;

}  // namespace mftk::core
