// Which of Mistral's [INST] chat formats a tokenizer speaks (implemented in
// libmftk_core, whose encoder builds the conversations training sees). A
// plugin that writes something a chat front end reads (an Ollama Modelfile,
// a chat template) asks here, so it renders what training encoded.
//
// defines: mftk::ChatFormat, mftk::chat_format_name, mftk::detect_chat_format
#pragma once

namespace mftk {

class Tokenizer;

enum class ChatFormat {
  v1,  // Mistral-7B v0.1/v0.2: "[INST]" / "[/INST]" are plain text; system on the first user turn
  v3,  // Mistral-7B v0.3: [INST]/[/INST] control tokens; system on the last user turn
};

const char* chat_format_name(ChatFormat format);  // "v1" | "v3"

// v3 iff the tokenizer has "[INST]" as a CONTROL piece (Mistral v0.3 files,
// and tokenizers trained with mistral_v3_controls): what training encodes
// with [data] chat_template = "auto".
ChatFormat detect_chat_format(const Tokenizer& tokenizer);

}  // namespace mftk
