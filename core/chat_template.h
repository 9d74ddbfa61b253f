// Mistral's [INST] chat format, token for token as mistral-common builds it
// (docs/formats.md §3.2, [INST] token ids), with a loss mask for fine-tuning.
//
// defines: mftk::core::ChatFormat, mftk::core::ChatMessage, mftk::core::ChatEncoding,
//          mftk::core::detect_chat_format, mftk::core::encode_chat,
//          mftk::core::chat_format_name, mftk::core::parse_chat_format
//
// Ids are assembled piece by piece (BOS, encoded text chunks, control ids,
// EOS) instead of tokenizing a rendered template string, so label masks line
// up exactly with turn boundaries.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mftk {
class Tokenizer;
}

namespace mftk::core {

enum class ChatFormat {
  v1,  // Mistral-7B v0.1/v0.2: "[INST]" / "[/INST]" are plain text; system on the first user turn
  v3,  // Mistral-7B v0.3: [INST]/[/INST] control tokens; system on the last user turn
};

const char* chat_format_name(ChatFormat format);  // "v1" | "v3"
// "v1" or "v3"; anything else is a UsageError naming what_for (e.g. "recipe [data] chat_format").
ChatFormat parse_chat_format(const std::string& name, const std::string& what_for);

// v3 iff the tokenizer has "[INST]" as a CONTROL piece (Mistral v0.3 files,
// and tokenizers trained with mistral_v3_controls).
ChatFormat detect_chat_format(const Tokenizer& tokenizer);

struct ChatMessage {
  std::string role;  // "system" (first message only), "user", "assistant"
  std::string content;
};

struct ChatEncoding {
  std::vector<int32_t> ids;        // starts with BOS
  std::vector<uint8_t> loss_mask;  // same length as ids; 1 = train on this token
};

// Encodes a conversation: an optional system message, then user and
// assistant turns alternating, starting with user. loss_mask is 1 exactly on
// assistant tokens and their EOS, or on every token with train_on_inputs.
// add_generation_prompt: the conversation must end with a user turn, and the
// ids end right after it (the model continues with the assistant reply).
// Throws mftk::UsageError for an empty conversation, an unknown role, a
// misplaced system message, broken alternation or an empty assistant message.
ChatEncoding encode_chat(const Tokenizer& tokenizer, ChatFormat format, const std::vector<ChatMessage>& messages,
                         bool train_on_inputs, bool add_generation_prompt = false);

}  // namespace mftk::core
