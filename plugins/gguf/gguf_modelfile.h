// The Ollama Modelfile every GGUF export writes beside its file
// (mftk/ollama_modelfile.h has the text): "<stem>.Modelfile" in the GGUF's
// folder, claimed through OutputGuard when the export starts, so a foreign
// file of that name is refused before any work and never overwritten.
//
// defines: mftk::gguf::ModelfileBeside, mftk::gguf::checkpoint_chat_format,
//          mftk::gguf::modelfile_reference
#pragma once

#include <string>

#include "mftk/ollama_modelfile.h"
#include "mftk/output_path.h"

namespace mftk::gguf {

class ModelfileBeside {
 public:
  // Claims modelfile_path_for(gguf_target); UsageError when a file there is not mftk's.
  explicit ModelfileBeside(const std::string& gguf_target);
  const std::string& path() const { return path_; }
  // Writes the text and puts it in place; call after the GGUF is in place.
  void commit(const OllamaModelfile& modelfile);

 private:
  std::string path_;
  OutputGuard guard_;
};

// The chat format of the checkpoint's tokenizer (v3 when "[INST]" is a
// control piece): what training encoded with [data] chat_template = "auto".
ChatFormat checkpoint_chat_format(const std::string& model_dir);

// How the Modelfile names `file`: "./name.gguf" beside it, else a path
// relative to the Modelfile's folder when `file` is relative, else `file`.
std::string modelfile_reference(const std::string& file, const std::string& modelfile_path);

}  // namespace mftk::gguf
