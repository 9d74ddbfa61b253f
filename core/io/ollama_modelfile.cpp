// Ollama Modelfiles for mftk's GGUF files (see mftk/ollama_modelfile.h).
#include "mftk/ollama_modelfile.h"

#include <filesystem>
#include <fstream>

#include <fmt/format.h>

namespace mftk {

namespace fs = std::filesystem;

std::string ollama_chat_template(ChatFormat format) {
  // Every action trims the newline before it ({{-), so the only text the
  // template emits is the [INST] markup, the messages and the blank line
  // after a system prompt. $pos is the user turn that carries the system
  // prompt: the first one (v1) or the last one (v3), found in a first pass
  // (Go templates keep a variable's assignments across range iterations).
  if (format == ChatFormat::v1) {
    // v1: "[INST] " + content + " [/INST]" is one plain-text piece, the reply
    // another; the space before the reply stands for the word boundary
    // sentencepiece puts at the start of the separately encoded reply.
    return "{{- $pos := -1 }}"
           "{{- range $i, $m := .Messages }}{{ if and (eq $m.Role \"user\") (lt $pos 0) }}{{ $pos = $i }}{{ end }}"
           "{{ end }}\n"
           "{{- range $i, $m := .Messages }}\n"
           "{{- if eq $m.Role \"user\" }}[INST] {{ if and $.System (eq $i $pos) }}{{ $.System }}\n\n{{ end }}"
           "{{ $m.Content }} [/INST]\n"
           "{{- else if eq $m.Role \"assistant\" }} {{ $m.Content }}</s>\n"
           "{{- end }}\n"
           "{{- end }}";
  }
  // v3: [INST] and [/INST] are control tokens; the text after each starts a
  // new piece, so no spaces around them.
  return "{{- $pos := -1 }}"
         "{{- range $i, $m := .Messages }}{{ if eq $m.Role \"user\" }}{{ $pos = $i }}{{ end }}{{ end }}\n"
         "{{- range $i, $m := .Messages }}\n"
         "{{- if eq $m.Role \"user\" }}[INST]{{ if and $.System (eq $i $pos) }}{{ $.System }}\n\n{{ end }}"
         "{{ $m.Content }}[/INST]\n"
         "{{- else if eq $m.Role \"assistant\" }}{{ $m.Content }}</s>\n"
         "{{- end }}\n"
         "{{- end }}";
}

bool is_ollama_modelfile_written_by_mftk(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::string first;
  std::getline(in, first);
  return first == kOllamaModelfileMark;
}

std::string modelfile_path_for(const std::string& gguf_path) {
  fs::path p(gguf_path);
  return (p.parent_path() / (p.stem().string() + ".Modelfile")).string();
}

std::string OllamaModelfile::text() const {
  std::string out = std::string(kOllamaModelfileMark) + "\n";
  if (!comment.empty()) {
    size_t begin = 0;
    while (begin <= comment.size()) {
      const size_t end = comment.find('\n', begin);
      out += "# " + comment.substr(begin, end == std::string::npos ? std::string::npos : end - begin) + "\n";
      if (end == std::string::npos) break;
      begin = end + 1;
    }
  }
  out += fmt::format("# Mistral {} chat format. Make an Ollama model of it: ollama create NAME -f <this file>\n",
                     chat_format_name(format));
  if (from.empty()) {
    out += "# The base model's GGUF is not known to this export. Replace the FROM path below with it\n"
           "# (mftk export --plugin gguf --model BASE_CHECKPOINT --out base.gguf writes one); the adapter\n"
           "# only works on the base it was trained on.\n";
    out += "FROM " + from_placeholder + "\n";
  } else {
    out += "FROM " + from + "\n";
  }
  if (!adapter.empty()) out += "ADAPTER " + adapter + "\n";
  out += "TEMPLATE \"\"\"" + ollama_chat_template(format) + "\"\"\"\n";
  out += "PARAMETER stop \"</s>\"\n";
  out += "PARAMETER stop \"[INST]\"\n";
  return out;
}

}  // namespace mftk
