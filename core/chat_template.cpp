// The [INST] chat format; see chat_template.h and docs/formats.md §3.2 ([INST] token ids).
#include "chat_template.h"

#include <optional>

#include "mftk/error.h"
#include "mftk/tokenizer.h"

namespace mftk::core {

namespace {

// mistral-common strips only trailing spaces (not newlines) from v3 replies.
std::string rstrip_spaces(const std::string& text) {
  size_t end = text.find_last_not_of(' ');
  return end == std::string::npos ? std::string() : text.substr(0, end + 1);
}

int32_t control_id(const Tokenizer& tokenizer, const std::string& piece) {
  std::optional<int32_t> id = tokenizer.piece_to_id(piece);
  if (!id || tokenizer.type(*id) != PieceType::control) {
    throw UsageError(fmt::format("tokenizer '{}' has no CONTROL piece {}, which the v3 chat format needs",
                                 tokenizer.model_path(), piece),
                     "use chat_format v1 for this tokenizer, or a Mistral v0.3 tokenizer");
  }
  return *id;
}

class ChatBuilder {
 public:
  explicit ChatBuilder(bool train_on_inputs) : train_on_inputs_(train_on_inputs) {}
  void add(const std::vector<int32_t>& ids, bool is_target) {
    encoding_.ids.insert(encoding_.ids.end(), ids.begin(), ids.end());
    encoding_.loss_mask.insert(encoding_.loss_mask.end(), ids.size(), (is_target || train_on_inputs_) ? 1 : 0);
  }
  void add(int32_t id, bool is_target) { add(std::vector<int32_t>{id}, is_target); }
  ChatEncoding take() { return std::move(encoding_); }

 private:
  bool train_on_inputs_;
  ChatEncoding encoding_;
};

}  // namespace

const char* chat_format_name(ChatFormat format) { return format == ChatFormat::v3 ? "v3" : "v1"; }

ChatFormat parse_chat_format(const std::string& name, const std::string& what_for) {
  if (name == "v1") return ChatFormat::v1;
  if (name == "v3") return ChatFormat::v3;
  throw UsageError(fmt::format("{}: unknown chat format '{}'", what_for, name),
                   "use \"v1\" (Mistral-7B v0.1/v0.2) or \"v3\" (Mistral-7B v0.3)");
}

ChatFormat detect_chat_format(const Tokenizer& tokenizer) {
  std::optional<int32_t> inst = tokenizer.piece_to_id("[INST]");
  return inst && tokenizer.type(*inst) == PieceType::control ? ChatFormat::v3 : ChatFormat::v1;
}

ChatEncoding encode_chat(const Tokenizer& tokenizer, ChatFormat format, const std::vector<ChatMessage>& messages,
                         bool train_on_inputs, bool add_generation_prompt) {
  if (messages.empty()) {
    throw UsageError("chat conversation is empty", "give at least one user message");
  }
  // Validate roles first so that no error depends on how far encoding got.
  std::optional<std::string> system_prompt;
  size_t first_turn = 0;
  if (messages[0].role == "system") {
    system_prompt = messages[0].content;
    first_turn = 1;
  }
  if (first_turn == messages.size()) {
    throw UsageError("chat conversation has a system message but no user message",
                     "add a user message after the system message");
  }
  size_t last_user = first_turn;
  for (size_t i = first_turn; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    const char* expected = (i - first_turn) % 2 == 0 ? "user" : "assistant";
    if (role != "system" && role != "user" && role != "assistant") {
      throw UsageError(fmt::format("chat message {}: unknown role '{}'", i, role),
                       "roles are system (first message only), user and assistant");
    }
    if (role == "system") {
      throw UsageError(fmt::format("chat message {}: a system message may only come first", i),
                       "merge the system text into the first message");
    }
    if (role != expected) {
      throw UsageError(fmt::format("chat message {}: expected role '{}', found '{}'", i, expected, role),
                       "after the optional system message, user and assistant must alternate, starting with user");
    }
    if (role == "user") last_user = i;
    if (role == "assistant" && messages[i].content.empty()) {
      throw UsageError(fmt::format("chat message {}: assistant message is empty", i),
                       "drop the conversation or give the reply text");
    }
  }
  if (add_generation_prompt && messages.back().role != "user") {
    throw UsageError("chat conversation for generation must end with a user message",
                     "drop the final assistant message, or encode without a generation prompt");
  }

  const int32_t bos = tokenizer.bos_id();
  const int32_t eos = tokenizer.eos_id();
  MFTK_CHECK(bos >= 0 && eos >= 0, "tokenizer '{}' has no BOS/EOS ids (bos {}, eos {}); the chat format needs both",
             tokenizer.model_path(), bos, eos);
  int32_t begin_inst = -1, end_inst = -1;
  if (format == ChatFormat::v3) {
    begin_inst = control_id(tokenizer, "[INST]");
    end_inst = control_id(tokenizer, "[/INST]");
  }

  ChatBuilder builder(train_on_inputs);
  builder.add(bos, false);
  for (size_t i = first_turn; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (message.role == "assistant") {
      const std::string reply = format == ChatFormat::v3 ? rstrip_spaces(message.content) : message.content;
      builder.add(tokenizer.encode(reply), true);
      builder.add(eos, true);
      continue;
    }
    // v1 puts the system prompt on the first user turn, v2/v3 on the last one.
    const size_t system_turn = format == ChatFormat::v1 ? first_turn : last_user;
    std::string content = system_prompt && !system_prompt->empty() && i == system_turn
                              ? *system_prompt + "\n\n" + message.content
                              : message.content;
    if (format == ChatFormat::v1) {
      builder.add(tokenizer.encode("[INST] " + content + " [/INST]"), false);
    } else {
      builder.add(begin_inst, false);
      builder.add(tokenizer.encode(content), false);
      builder.add(end_inst, false);
    }
  }
  return builder.take();
}

}  // namespace mftk::core
