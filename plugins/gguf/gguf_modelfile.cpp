// The Modelfile beside a GGUF (see gguf_modelfile.h).
#include "gguf_modelfile.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

#include "mftk/chat_format.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"

namespace mftk::gguf {

namespace fs = std::filesystem;

ModelfileBeside::ModelfileBeside(const std::string& gguf_target)
    : path_(modelfile_path_for(gguf_target)),
      guard_(path_, "ollama-modelfile", OutputShape::file, is_ollama_modelfile_written_by_mftk) {}

void ModelfileBeside::commit(const OllamaModelfile& modelfile) {
  {
    std::ofstream out(guard_.path(), std::ios::binary | std::ios::trunc);
    out << modelfile.text();
    out.flush();
    if (!out) throw Error(fmt::format("gguf: cannot write {}", guard_.path()), "check free disk space");
  }
  guard_.commit();
}

ChatFormat checkpoint_chat_format(const std::string& model_dir) {
  return detect_chat_format(*Tokenizer::load(model_dir));
}

std::string modelfile_reference(const std::string& file, const std::string& modelfile_path) {
  const fs::path folder = fs::absolute(modelfile_path).lexically_normal().parent_path();
  const fs::path target = fs::absolute(file).lexically_normal();
  if (target.parent_path() == folder) return "./" + target.filename().string();
  if (fs::path(file).is_absolute()) return file;
  const fs::path relative = target.lexically_relative(folder);
  if (relative.empty()) return target.string();
  const std::string text = relative.string();
  return text.rfind("..", 0) == 0 ? text : "./" + text;
}

}  // namespace mftk::gguf
