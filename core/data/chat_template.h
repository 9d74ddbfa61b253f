// Mistral's [INST] chat format, token for token as mistral-common builds it
// (docs/formats.md §3.2, [INST] token ids), with a loss mask for fine-tuning.
//
// defines: mftk::core::ChatFormat, mftk::core::ChatMessage, mftk::core::ChatEncoding,
//          mftk::core::ToolCall, mftk::core::ChatTool, mftk::core::ChatConversation,
//          mftk::core::ChatJsonError, mftk::core::detect_chat_format, mftk::core::encode_chat,
//          mftk::core::chat_format_name, mftk::core::parse_chat_format,
//          mftk::core::chat_conversation_from_json, mftk::core::parse_chat_document,
//          mftk::core::chat_tools_from_json,
//          mftk::core::check_tools_supported, mftk::core::tool_calls_from_output,
//          mftk::core::tool_calls_message_json
//
// Ids are assembled piece by piece (BOS, encoded text chunks, control ids,
// EOS) instead of tokenizing a rendered template string, so label masks line
// up exactly with turn boundaries.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mftk/chat_format.h"
#include "mftk/error.h"
#include "python_json.h"

namespace mftk {
class Tokenizer;
}

namespace mftk::core {

// ChatFormat, chat_format_name and detect_chat_format are the SDK's
// (mftk/chat_format.h): plugins that render a chat template ask there.
using ::mftk::chat_format_name;
using ::mftk::ChatFormat;
using ::mftk::detect_chat_format;

// "v1" or "v3"; anything else is a UsageError naming what_for (e.g. "recipe [data] chat_format").
ChatFormat parse_chat_format(const std::string& name, const std::string& what_for);

// Function calling (v3 only), as mistral-common's InstructTokenizerV3 encodes it:
//   the tools          [AVAILABLE_TOOLS] json [/AVAILABLE_TOOLS], right before the [INST] of the last user turn
//   an assistant call  [TOOL_CALLS] json </s>, json = [{"name", "arguments", "id"}, ...]
//   a tool result      [TOOL_RESULTS] json [/TOOL_RESULTS], json = {"content", "call_id"}
// Each json is Python's json.dumps(..., ensure_ascii=False) text (python_json.h),
// encoded without BOS/EOS like any other text chunk.

// A call an assistant message makes (OpenAI's {"id", "type": "function",
// "function": {"name", "arguments"}}).
struct ToolCall {
  std::string id;       // 9 letters or digits; empty only in the last message (then no "id" is written)
  std::string name;
  JsonValue arguments;  // an object: the "arguments" JSON string parsed, or the object given
};

// A tool the model may call (OpenAI's {"type": "function", "function":
// {"name", "description", "parameters"}}).
struct ChatTool {
  std::string name;
  std::string description;
  JsonValue parameters = JsonValue::object();  // a JSON Schema object, key order as given
};

struct ChatMessage {
  std::string role;  // "system" (first message only), "user", "assistant", "tool"
  std::string content;
  std::vector<ToolCall> tool_calls;  // assistant: the calls it makes, instead of content
  std::string tool_call_id;          // tool: the id of the call this result answers
};

// A chat document: its messages and the tools it offers.
struct ChatConversation {
  std::vector<ChatMessage> messages;
  std::vector<ChatTool> tools;
  bool uses_tools() const;  // tools, tool calls or tool results anywhere
};

// A chat JSON document without the shape of a conversation. kind() says
// which, so that datasets can count skipped rows by reason.
class ChatJsonError : public UsageError {
 public:
  enum class Kind { missing_field, wrong_type, unknown_role, empty_reply, bad_tool_call };
  ChatJsonError(Kind kind, std::string message, std::string hint)
      : UsageError(std::move(message), std::move(hint)), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// Reads the OpenAI-style JSON that TRL and Axolotl take: `messages` is the
// list of {"role", "content"} objects, with assistant "tool_calls" and
// {"role": "tool", "tool_call_id", "content"} messages; `tools` (or
// nullptr) the list of tools, or a string holding that list. Errors name
// the place as `list_name`[i]... Only shapes are checked here (and that
// arguments are an object or a string holding one); turn order and ids are
// encode_chat's to check.
ChatConversation chat_conversation_from_json(const JsonValue& messages, const JsonValue* tools,
                                             const std::string& list_name);
// A chat JSON file (`mftk tokenize --chat-json`): {"messages": [...],
// "tools": [...]} or the bare list of messages. Errors are UsageErrors
// naming `source`.
ChatConversation parse_chat_document(const std::string& json_text, const std::string& source);
// The tools alone (for `mftk generate --tools`); `name` is used in errors.
std::vector<ChatTool> chat_tools_from_json(const JsonValue& tools, const std::string& name);

// Throws UsageError unless this tokenizer and format can encode tools: the
// v1 format cannot at all; v3 needs the five tool CONTROL pieces.
void check_tools_supported(const Tokenizer& tokenizer, ChatFormat format);

// The calls in a generated reply that starts with [TOOL_CALLS]: `text` is
// what follows that token (decoded), a JSON list of {"name", "arguments"[,
// "id"]}. nullopt when it is not such a list.
std::optional<std::vector<ToolCall>> tool_calls_from_output(const std::string& text);
// {"role": "assistant", "tool_calls": [{"id", "type": "function", "function":
// {"name", "arguments"}}]}: calls as a chat row holds them ("id" when known).
JsonValue tool_calls_message_json(const std::vector<ToolCall>& calls);

struct ChatEncoding {
  std::vector<int32_t> ids;        // starts with BOS
  std::vector<uint8_t> loss_mask;  // same length as ids; 1 = train on this token
};

// Encodes a conversation: an optional system message, then user and
// assistant turns alternating, starting with user; an assistant message that
// makes tool calls is followed by one tool message per call (any order), then
// by the next assistant message. loss_mask is 1 exactly on assistant tokens
// ([TOOL_CALLS] and the call JSON included) and their EOS; with
// train_on_inputs on every token but the tool list.
// add_generation_prompt: the conversation must end with a user turn (or the
// results of the last calls), and the ids end right after it (the model
// continues with the assistant reply).
// Throws mftk::UsageError for an empty conversation, an unknown role, a
// misplaced system message, broken alternation, an empty assistant message,
// an assistant message with both content and tool calls, a call id that is
// not 9 letters or digits, a tool result answering no pending call, and tools
// in the v1 format.
ChatEncoding encode_chat(const Tokenizer& tokenizer, ChatFormat format, const std::vector<ChatMessage>& messages,
                         bool train_on_inputs, bool add_generation_prompt = false,
                         const std::vector<ChatTool>& tools = {});

}  // namespace mftk::core
