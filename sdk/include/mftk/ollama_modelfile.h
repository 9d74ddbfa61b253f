// Ollama's Modelfile for a GGUF mftk writes (docs/formats.md §4.9): FROM
// (and ADAPTER for a LoRA adapter file), a TEMPLATE in Ollama's Go-template
// syntax that renders Mistral's [INST] chat format exactly as the core's
// encode_chat (core/data/chat_template.h) builds it, and the stop strings. Part of
// the SDK (implemented in libmftk_core), so every exporter that writes a GGUF
// writes the same Modelfile beside it.
//
// The template renders the conversation up to the generation point; Ollama
// (through llama.cpp's tokenizer) adds BOS itself and reads "[INST]",
// "[/INST]" and "</s>" as control tokens where the vocabulary has them, and
// starts every text piece that follows a control token with a word
// boundary, as sentencepiece does for each piece encode_chat encodes. So the
// rendered text gives encode_chat's ids, token for token (tested in
// tests/unit/ollama_modelfile_test.cpp with a small Go-template renderer).
// Tools are not rendered: Ollama would write the tool list with Go's JSON
// encoder, not with the Python json.dumps text the v3 format needs.
//
// defines: mftk::ollama_chat_template, mftk::OllamaModelfile,
//          mftk::kOllamaModelfileMark, mftk::is_ollama_modelfile_written_by_mftk,
//          mftk::modelfile_path_for
#pragma once

#include <string>

#include "mftk/chat_format.h"

namespace mftk {

// The TEMPLATE body for a chat format. System prompt ($.System, which Ollama
// fills from the conversation's system messages and the Modelfile's SYSTEM):
// on the first user turn in v1, on the last one in v3, followed by a blank
// line, as encode_chat places it. Assistant replies are rendered as given
// (encode_chat also strips trailing spaces from v3 replies; Go templates
// cannot).
std::string ollama_chat_template(ChatFormat format);

// The first line of every Modelfile mftk writes: how a later export proves
// an existing Modelfile is its own to replace (mftk/output_path.h).
inline constexpr const char* kOllamaModelfileMark = "# Ollama Modelfile written by mftk";
bool is_ollama_modelfile_written_by_mftk(const std::string& path);

// The Modelfile of a GGUF file: "<folder>/<stem>.Modelfile" ("model.gguf" ->
// "model.Modelfile"), one per GGUF, so a run's output_dir can hold a merged
// GGUF and an adapter GGUF side by side, each with its own.
std::string modelfile_path_for(const std::string& gguf_path);

struct OllamaModelfile {
  ChatFormat format = ChatFormat::v3;
  // FROM: a GGUF path (relative paths are taken from the Modelfile's folder,
  // as Ollama takes them), or empty with from_placeholder set.
  std::string from;
  // When the base GGUF is not known: the FROM line names this path and a
  // comment above it says to replace it with the base model's GGUF.
  std::string from_placeholder;
  std::string adapter;  // ADAPTER: a LoRA adapter GGUF; empty for a whole model
  std::string comment;  // extra lines for the header comment (what it was exported from)

  std::string text() const;
};

}  // namespace mftk
