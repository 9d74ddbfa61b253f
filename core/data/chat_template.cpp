// The [INST] chat format; see chat_template.h and docs/formats.md §3.2 ([INST] token ids).
#include "chat_template.h"

#include <algorithm>
#include <optional>
#include <set>

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
  // Tokens that are never a target, whatever train_on_inputs says.
  void add_unsupervised(const std::vector<int32_t>& ids) {
    encoding_.ids.insert(encoding_.ids.end(), ids.begin(), ids.end());
    encoding_.loss_mask.insert(encoding_.loss_mask.end(), ids.size(), 0);
  }
  void add_unsupervised(int32_t id) { add_unsupervised(std::vector<int32_t>{id}); }
  ChatEncoding take() { return std::move(encoding_); }

 private:
  bool train_on_inputs_;
  ChatEncoding encoding_;
};

// The function-calling control pieces of Mistral's v3 tokenizer (ids 5-9 there).
constexpr const char* kToolControlPieces[] = {"[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                                              "[TOOL_RESULTS]", "[/TOOL_RESULTS]"};

struct ToolControls {
  int32_t tool_calls, begin_available_tools, end_available_tools, begin_tool_results, end_tool_results;
  static ToolControls of(const Tokenizer& tokenizer) {
    return {control_id(tokenizer, "[TOOL_CALLS]"), control_id(tokenizer, "[AVAILABLE_TOOLS]"),
            control_id(tokenizer, "[/AVAILABLE_TOOLS]"), control_id(tokenizer, "[TOOL_RESULTS]"),
            control_id(tokenizer, "[/TOOL_RESULTS]")};
  }
};

bool is_alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// mistral-common's rule for function names: ^[a-zA-Z0-9_-]{1,64}$.
void check_tool_name(const std::string& name, const std::string& what) {
  const bool ok = !name.empty() && name.size() <= 64 &&
                  std::all_of(name.begin(), name.end(), [](char c) { return is_alnum(c) || c == '_' || c == '-'; });
  if (!ok)
    throw UsageError(fmt::format("{}: the function name '{}' is not 1 to 64 letters, digits, '_' or '-'", what, name),
                     "rename the function; Mistral's tokenizer library refuses other names");
}

// [{"type": "function", "function": {"name", "description", "parameters"}}, ...]:
// the fields of mistral-common's Tool as of Mistral-7B v0.3 (no "strict").
JsonValue tools_json(const std::vector<ChatTool>& tools) {
  JsonValue list = JsonValue::array();
  for (const ChatTool& tool : tools) {
    JsonValue function = JsonValue::object();
    function.set("name", JsonValue::string(tool.name));
    function.set("description", JsonValue::string(tool.description));
    function.set("parameters", tool.parameters);
    JsonValue entry = JsonValue::object();
    entry.set("type", JsonValue::string("function"));
    entry.set("function", std::move(function));
    list.push_back(std::move(entry));
  }
  return list;
}

// [{"name", "arguments", "id"}, ...]; "id" only when the call has one.
JsonValue calls_json(const std::vector<ToolCall>& calls) {
  JsonValue list = JsonValue::array();
  for (const ToolCall& call : calls) {
    JsonValue entry = JsonValue::object();
    entry.set("name", JsonValue::string(call.name));
    entry.set("arguments", call.arguments);
    if (!call.id.empty()) entry.set("id", JsonValue::string(call.id));
    list.push_back(std::move(entry));
  }
  return list;
}

// {"content", "call_id"}: content parsed when it is JSON, else the string.
JsonValue tool_result_json(const ChatMessage& message) {
  std::optional<JsonValue> parsed = python_json_loads(message.content);
  JsonValue result = JsonValue::object();
  result.set("content", parsed ? std::move(*parsed) : JsonValue::string(message.content));
  result.set("call_id", JsonValue::string(message.tool_call_id));
  return result;
}

// What check_turns learns about a conversation on the way.
struct ChatTurns {
  std::optional<std::string> system_prompt;
  size_t first_turn = 0;  // 1 after a system message
  size_t last_user = 0;
  bool uses_tools = false;
};

std::string quoted_list(const std::vector<std::string>& ids) {
  std::string out;
  for (const std::string& id : ids) out += (out.empty() ? "'" : ", '") + id + "'";
  return out;
}

// Between messages: what may come next, and the tool calls of the last
// assistant message that still wait for their result.
struct TurnState {
  enum class Next { user, assistant, tool_results };
  Next next = Next::user;
  std::vector<std::string> pending;  // ids of the calls still waiting for their result
  std::set<std::string> answered, earlier_calls;
  size_t calls_message = 0;
};

// What holds for message i wherever it stands: a known role, system only
// first, tool calls only from the assistant.
void check_role(const ChatMessage& message, size_t i) {
  const std::string& role = message.role;
  if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
    throw UsageError(fmt::format("chat message {}: unknown role '{}'", i, role),
                     "roles are system (first message only), user, assistant and tool");
  }
  if (role == "system") {
    throw UsageError(fmt::format("chat message {}: a system message may only come first", i),
                     "merge the system text into the first message");
  }
  if (role != "assistant" && !message.tool_calls.empty()) {
    throw UsageError(fmt::format("chat message {}: a {} message makes tool calls", i, role),
                     "only assistant messages make tool calls");
  }
}

// A tool message answers, once, a call of the assistant message just before;
// the last answer lets the assistant speak again.
void accept_tool_result(const ChatMessage& message, size_t i, TurnState& state) {
  const std::string& id = message.tool_call_id;
  if (id.empty()) {
    throw UsageError(fmt::format("chat message {}: tool message has no tool_call_id", i),
                     "set tool_call_id to the id of the call this message answers");
  }
  auto it = std::find(state.pending.begin(), state.pending.end(), id);
  if (it != state.pending.end()) {
    state.pending.erase(it);
    state.answered.insert(id);
    if (state.pending.empty()) state.next = TurnState::Next::assistant;
    return;
  }
  if (state.answered.count(id)) {
    throw UsageError(fmt::format("chat message {}: a second result for tool call '{}'", i, id),
                     "give each call exactly one tool message");
  }
  if (state.earlier_calls.count(id)) {
    throw UsageError(fmt::format("chat message {}: tool_call_id '{}' answers a call of an earlier assistant "
                                 "message, not of the one just before",
                                 i, id),
                     "put tool results right after the assistant message that makes the calls");
  }
  throw UsageError(fmt::format("chat message {}: tool_call_id '{}' matches no earlier tool call", i, id),
                   "set tool_call_id to the id of a call in the assistant message just before");
}

// A user or assistant message i must be the one whose turn it is: calls
// still waiting for results come first, then user and assistant alternate.
void check_turn_order(const std::string& role, size_t i, const TurnState& state) {
  if (state.next == TurnState::Next::tool_results) {
    throw UsageError(fmt::format("chat message {}: expected the result of tool call {} (made in message {}), "
                                 "found role '{}'",
                                 i, quoted_list(state.pending), state.calls_message, role),
                     "follow an assistant message with tool_calls by one tool message per call");
  }
  const char* expected = state.next == TurnState::Next::user ? "user" : "assistant";
  if (role != expected) {
    throw UsageError(fmt::format("chat message {}: expected role '{}', found '{}'", i, expected, role),
                     "after the optional system message, user and assistant must alternate, starting with user "
                     "(tool results come between an assistant's calls and its next message)");
  }
}

// An assistant message is a reply or calls, never both and never neither.
void check_assistant_message(const ChatMessage& message, size_t i) {
  if (!message.content.empty() && !message.tool_calls.empty()) {
    throw UsageError(fmt::format("chat message {}: an assistant message has both content and tool calls", i),
                     "the v3 format encodes either a reply or calls: split it in two messages or drop the text");
  }
  if (message.content.empty() && message.tool_calls.empty()) {
    throw UsageError(fmt::format("chat message {}: assistant message is empty", i),
                     "drop the conversation or give the reply text");
  }
}

// The calls of assistant message i: each with a valid name and its own id
// of 9 letters or digits (the final message's calls may go without one),
// then waiting for their results.
void accept_tool_calls(const ChatMessage& message, size_t i, bool is_last, TurnState& state) {
  std::set<std::string> in_message;
  for (size_t j = 0; j < message.tool_calls.size(); ++j) {
    const ToolCall& call = message.tool_calls[j];
    check_tool_name(call.name, fmt::format("chat message {}, tool call {}", i, j));
    if (call.id.empty()) {
      if (is_last) continue;  // mistral-common lets the final message's calls go without an id
      throw UsageError(fmt::format("chat message {}: tool call {} ('{}') has no id", i, j, call.name),
                       "the v3 format needs an id of 9 letters or digits on every call but those of the last "
                       "message");
    }
    if (call.id.size() != 9 || !std::all_of(call.id.begin(), call.id.end(), is_alnum)) {
      throw UsageError(fmt::format("chat message {}: tool call id '{}' is not 9 letters or digits, which the v3 "
                                   "format requires",
                                   i, call.id),
                       "use ids like 'a1B2c3D4e' and the same id in the tool message's tool_call_id");
    }
    if (!in_message.insert(call.id).second) {
      throw UsageError(fmt::format("chat message {}: tool call id '{}' is used twice", i, call.id),
                       "give every call of a message its own id");
    }
    state.pending.push_back(call.id);
    state.earlier_calls.insert(call.id);
  }
  state.calls_message = i;
  state.next = state.pending.empty() ? TurnState::Next::user : TurnState::Next::tool_results;
}

// The end may leave calls unanswered only when the conversation ends with
// them and asks for no generation; generation needs the user's (or the
// tools') turn to be the last.
void check_conversation_end(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                            const TurnState& state) {
  const bool ends_with_calls = messages.back().role == "assistant" && !messages.back().tool_calls.empty();
  if (state.next == TurnState::Next::tool_results && (!ends_with_calls || add_generation_prompt)) {
    throw UsageError(fmt::format("chat conversation ends before tool call {} (made in message {}) has its result",
                                 quoted_list(state.pending), state.calls_message),
                     "add one tool message per call, or drop the calls");
  }
  if (add_generation_prompt && state.next != TurnState::Next::assistant) {
    throw UsageError("chat conversation for generation must end with a user message (or with tool results)",
                     "drop the final assistant message, or encode without a generation prompt");
  }
}

// Validates roles, turn order, tool call ids and tool results before any
// encoding, so that no error depends on how far encoding got.
ChatTurns check_turns(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  if (messages.empty()) {
    throw UsageError("chat conversation is empty", "give at least one user message");
  }
  ChatTurns turns;
  if (messages[0].role == "system") {
    turns.system_prompt = messages[0].content;
    turns.first_turn = 1;
  }
  if (turns.first_turn == messages.size()) {
    throw UsageError("chat conversation has a system message but no user message",
                     "add a user message after the system message");
  }
  TurnState state;
  turns.last_user = turns.first_turn;
  for (size_t i = turns.first_turn; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    check_role(message, i);
    if (message.role == "tool") {
      turns.uses_tools = true;
      accept_tool_result(message, i, state);
      continue;
    }
    check_turn_order(message.role, i, state);
    if (message.role == "user") {
      turns.last_user = i;
      state.next = TurnState::Next::assistant;
      continue;
    }
    // An assistant message: a reply, or calls.
    check_assistant_message(message, i);
    if (message.tool_calls.empty()) {
      state.next = TurnState::Next::user;
      continue;
    }
    turns.uses_tools = true;
    accept_tool_calls(message, i, i + 1 == messages.size() && !add_generation_prompt, state);
  }
  check_conversation_end(messages, add_generation_prompt, state);
  return turns;
}

}  // namespace

ChatFormat parse_chat_format(const std::string& name, const std::string& what_for) {
  if (name == "v1") return ChatFormat::v1;
  if (name == "v3") return ChatFormat::v3;
  throw UsageError(fmt::format("{}: unknown chat format '{}'", what_for, name),
                   "use \"v1\" (Mistral-7B v0.1/v0.2) or \"v3\" (Mistral-7B v0.3)");
}

ChatEncoding encode_chat(const Tokenizer& tokenizer, ChatFormat format, const std::vector<ChatMessage>& messages,
                         bool train_on_inputs, bool add_generation_prompt, const std::vector<ChatTool>& tools) {
  const ChatTurns turns = check_turns(messages, add_generation_prompt);
  if (format == ChatFormat::v1 && (!tools.empty() || turns.uses_tools)) check_tools_supported(tokenizer, format);
  for (const ChatTool& tool : tools) check_tool_name(tool.name, fmt::format("tool '{}'", tool.name));

  const int32_t bos = tokenizer.bos_id();
  const int32_t eos = tokenizer.eos_id();
  MFTK_CHECK(bos >= 0 && eos >= 0, "tokenizer '{}' has no BOS/EOS ids (bos {}, eos {}); the chat format needs both",
             tokenizer.model_path(), bos, eos);
  int32_t begin_inst = -1, end_inst = -1;
  if (format == ChatFormat::v3) {
    begin_inst = control_id(tokenizer, "[INST]");
    end_inst = control_id(tokenizer, "[/INST]");
  }
  std::optional<ToolControls> controls;
  if (!tools.empty() || turns.uses_tools) {
    check_tools_supported(tokenizer, format);
    controls = ToolControls::of(tokenizer);
  }

  ChatBuilder builder(train_on_inputs);
  builder.add(bos, false);
  for (size_t i = turns.first_turn; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    if (message.role == "assistant" && !message.tool_calls.empty()) {
      builder.add(controls->tool_calls, true);
      builder.add(tokenizer.encode(python_json_dumps(calls_json(message.tool_calls))), true);
      builder.add(eos, true);
      continue;
    }
    if (message.role == "assistant") {
      const std::string reply = format == ChatFormat::v3 ? rstrip_spaces(message.content) : message.content;
      builder.add(tokenizer.encode(reply), true);
      builder.add(eos, true);
      continue;
    }
    if (message.role == "tool") {
      builder.add(controls->begin_tool_results, false);
      builder.add(tokenizer.encode(python_json_dumps(tool_result_json(message))), false);
      builder.add(controls->end_tool_results, false);
      continue;
    }
    // v1 puts the system prompt on the first user turn, v2/v3 on the last one.
    const size_t system_turn = format == ChatFormat::v1 ? turns.first_turn : turns.last_user;
    std::string content = turns.system_prompt && !turns.system_prompt->empty() && i == system_turn
                              ? *turns.system_prompt + "\n\n" + message.content
                              : message.content;
    if (format == ChatFormat::v1) {
      builder.add(tokenizer.encode("[INST] " + content + " [/INST]"), false);
    } else {
      if (i == turns.last_user && !tools.empty()) {
        // Never a target, not even with train_on_inputs: the list is the
        // same in every row and says nothing the model should produce.
        builder.add_unsupervised(controls->begin_available_tools);
        builder.add_unsupervised(tokenizer.encode(python_json_dumps(tools_json(tools))));
        builder.add_unsupervised(controls->end_available_tools);
      }
      builder.add(begin_inst, false);
      builder.add(tokenizer.encode(content), false);
      builder.add(end_inst, false);
    }
  }
  return builder.take();
}

bool ChatConversation::uses_tools() const {
  if (!tools.empty()) return true;
  for (const ChatMessage& m : messages)
    if (m.role == "tool" || !m.tool_calls.empty()) return true;
  return false;
}

void check_tools_supported(const Tokenizer& tokenizer, ChatFormat format) {
  if (format == ChatFormat::v1) {
    throw UsageError(fmt::format("the v1 chat format (tokenizer '{}') cannot encode tools: Mistral-7B v0.1/v0.2 "
                                 "tokenizers have no [AVAILABLE_TOOLS], [TOOL_CALLS] or [TOOL_RESULTS] tokens",
                                 tokenizer.model_path()),
                     "use a Mistral v0.3 (v3) tokenizer and checkpoint, or drop the tools, tool calls and tool "
                     "messages from the data");
  }
  for (const char* piece : kToolControlPieces) {
    std::optional<int32_t> id = tokenizer.piece_to_id(piece);
    if (!id || tokenizer.type(*id) != PieceType::control) {
      throw UsageError(fmt::format("tokenizer '{}' has no CONTROL piece {}, which function calling in the v3 chat "
                                   "format needs",
                                   tokenizer.model_path(), piece),
                       "use Mistral's v0.3 tokenizer, or make a tiny one with `mftk init --tool-tokens`");
    }
  }
}

// ------------------------------------------------------- JSON documents ----

namespace {

using Kind = ChatJsonError::Kind;
constexpr const char* kMessageShape = "each message is {\"role\": ..., \"content\": ...}";
constexpr const char* kCallShape =
    "a tool call is {\"id\": \"<9 letters or digits>\", \"type\": \"function\", \"function\": {\"name\": ..., "
    "\"arguments\": {...} or \"<JSON object>\"}}";
constexpr const char* kToolShape =
    "a tool is {\"type\": \"function\", \"function\": {\"name\": ..., \"description\": ..., \"parameters\": {...}}}";

const JsonValue* member(const JsonValue& object, const char* key) {
  const JsonValue* value = object.find(key);
  return value && !value->is_null() ? value : nullptr;
}

const std::string& string_member(const JsonValue& object, const char* key, const std::string& where,
                                 const char* hint) {
  const JsonValue* value = object.find(key);
  if (!value) throw ChatJsonError(Kind::missing_field, fmt::format("{} has no '{}'", where, key), hint);
  if (!value->is_string())
    throw ChatJsonError(Kind::wrong_type,
                        fmt::format("{}.{} is a JSON {}, not a string", where, key, value->type_name()), hint);
  return value->text();
}

ToolCall read_tool_call(const JsonValue& call, const std::string& where) {
  if (!call.is_object())
    throw ChatJsonError(Kind::wrong_type, fmt::format("{} is a JSON {}, not an object", where, call.type_name()),
                        kCallShape);
  if (const JsonValue* type = member(call, "type"); type && !(type->is_string() && type->text() == "function"))
    throw ChatJsonError(Kind::bad_tool_call, fmt::format("{}.type is {}, not \"function\"", where,
                                                         python_json_dumps(*type)),
                        kCallShape);
  const JsonValue* function = member(call, "function");
  if (!function)
    throw ChatJsonError(Kind::missing_field, fmt::format("{} has no 'function'", where), kCallShape);
  if (!function->is_object())
    throw ChatJsonError(Kind::wrong_type,
                        fmt::format("{}.function is a JSON {}, not an object", where, function->type_name()),
                        kCallShape);
  ToolCall out;
  out.name = string_member(*function, "name", where + ".function", kCallShape);
  if (const JsonValue* id = member(call, "id")) {
    if (!id->is_string())
      throw ChatJsonError(Kind::wrong_type, fmt::format("{}.id is a JSON {}, not a string", where, id->type_name()),
                          kCallShape);
    // mistral-common's placeholder for "no id"; an id of the last message may be left out.
    if (id->text() != "null") out.id = id->text();
  }
  const JsonValue* arguments = member(*function, "arguments");
  if (!arguments) {
    out.arguments = JsonValue::object();  // mistral-common reads a missing or null arguments as {}
  } else if (arguments->is_object()) {
    out.arguments = *arguments;
  } else if (arguments->is_string()) {
    std::string error;
    std::optional<JsonValue> parsed = python_json_loads(arguments->text(), &error);
    if (!parsed || !parsed->is_object())
      throw ChatJsonError(Kind::bad_tool_call,
                          fmt::format("{}.function.arguments is a string that does not hold a JSON object ({})",
                                      where, parsed ? fmt::format("it holds a JSON {}", parsed->type_name()) : error),
                          "arguments are a JSON object, or a string holding one: \"{\\\"x\\\": 1}\"");
    out.arguments = std::move(*parsed);
  } else {
    throw ChatJsonError(Kind::bad_tool_call,
                        fmt::format("{}.function.arguments is a JSON {}, neither an object nor a string holding one",
                                    where, arguments->type_name()),
                        "arguments are a JSON object, or a string holding one: \"{\\\"x\\\": 1}\"");
  }
  return out;
}

ChatMessage read_message(const JsonValue& message, const std::string& where) {
  if (!message.is_object())
    throw ChatJsonError(Kind::wrong_type, fmt::format("{} is a JSON {}, not an object", where, message.type_name()),
                        kMessageShape);
  ChatMessage out;
  out.role = string_member(message, "role", where, kMessageShape);
  if (out.role != "system" && out.role != "user" && out.role != "assistant" && out.role != "tool")
    throw ChatJsonError(Kind::unknown_role, fmt::format("{} has unknown role '{}'", where, out.role),
                        "roles are system (first message only), user, assistant and tool");
  if (out.role == "assistant") {
    if (const JsonValue* calls = member(message, "tool_calls")) {
      if (!calls->is_array())
        throw ChatJsonError(Kind::wrong_type,
                            fmt::format("{}.tool_calls is a JSON {}, not a list", where, calls->type_name()),
                            kCallShape);
      for (size_t j = 0; j < calls->items().size(); ++j)
        out.tool_calls.push_back(read_tool_call(calls->items()[j], fmt::format("{}.tool_calls[{}]", where, j)));
    }
    // A tool-call message may leave content out or null; encode_chat refuses one with both.
    if (out.tool_calls.empty() || member(message, "content")) out.content = string_member(message, "content", where, kMessageShape);
    if (out.content.empty() && out.tool_calls.empty())
      throw ChatJsonError(Kind::empty_reply, fmt::format("{} is an empty assistant message", where),
                          "drop the conversation or give the reply text (or its tool calls)");
    return out;
  }
  out.content = string_member(message, "content", where, kMessageShape);
  if (out.role == "tool") {
    out.tool_call_id = string_member(message, "tool_call_id", where,
                                     "a tool message is {\"role\": \"tool\", \"tool_call_id\": ..., \"content\": ...}");
  } else if (member(message, "tool_calls") && !member(message, "tool_calls")->items().empty()) {
    throw ChatJsonError(Kind::bad_tool_call, fmt::format("{} is a {} message with tool_calls", where, out.role),
                        "only assistant messages make tool calls");
  }
  return out;
}

ChatTool read_tool(const JsonValue& tool, const std::string& where) {
  if (!tool.is_object())
    throw ChatJsonError(Kind::wrong_type, fmt::format("{} is a JSON {}, not an object", where, tool.type_name()),
                        kToolShape);
  if (const JsonValue* type = member(tool, "type"); type && !(type->is_string() && type->text() == "function"))
    throw ChatJsonError(Kind::bad_tool_call,
                        fmt::format("{}.type is {}, not \"function\"", where, python_json_dumps(*type)), kToolShape);
  const JsonValue* function = member(tool, "function");
  if (!function) throw ChatJsonError(Kind::missing_field, fmt::format("{} has no 'function'", where), kToolShape);
  if (!function->is_object())
    throw ChatJsonError(Kind::wrong_type,
                        fmt::format("{}.function is a JSON {}, not an object", where, function->type_name()),
                        kToolShape);
  ChatTool out;
  out.name = string_member(*function, "name", where + ".function", kToolShape);
  // mistral-common fills a missing or null description with "" and parameters with {}.
  if (member(*function, "description"))
    out.description = string_member(*function, "description", where + ".function", kToolShape);
  if (const JsonValue* parameters = member(*function, "parameters")) {
    if (!parameters->is_object())
      throw ChatJsonError(Kind::wrong_type,
                          fmt::format("{}.function.parameters is a JSON {}, not an object (a JSON Schema)", where,
                                      parameters->type_name()),
                          kToolShape);
    out.parameters = *parameters;
  }
  return out;
}

}  // namespace

std::vector<ChatTool> chat_tools_from_json(const JsonValue& tools, const std::string& name) {
  const JsonValue* list = &tools;
  std::optional<JsonValue> parsed;
  if (tools.is_string()) {
    // Datasets stored through Arrow often keep the tool list as a JSON string.
    std::string error;
    parsed = python_json_loads(tools.text(), &error);
    if (!parsed)
      throw ChatJsonError(Kind::wrong_type, fmt::format("{} is a string that is not JSON ({})", name, error),
                          "give the tools as a list, or a string holding that list");
    list = &*parsed;
  }
  if (!list->is_array())
    throw ChatJsonError(Kind::wrong_type, fmt::format("{} is a JSON {}, not a list of tools", name, list->type_name()),
                        kToolShape);
  std::vector<ChatTool> out;
  for (size_t i = 0; i < list->items().size(); ++i)
    out.push_back(read_tool(list->items()[i], fmt::format("{}[{}]", name, i)));
  return out;
}

ChatConversation chat_conversation_from_json(const JsonValue& messages, const JsonValue* tools,
                                             const std::string& list_name) {
  ChatConversation out;
  if (!messages.is_array())
    throw ChatJsonError(Kind::wrong_type,
                        fmt::format("{} is a JSON {}, not a list of messages", list_name, messages.type_name()),
                        kMessageShape);
  for (size_t i = 0; i < messages.items().size(); ++i)
    out.messages.push_back(read_message(messages.items()[i], fmt::format("{}[{}]", list_name, i)));
  if (tools && !tools->is_null()) out.tools = chat_tools_from_json(*tools, "tools");
  return out;
}

ChatConversation parse_chat_document(const std::string& json_text, const std::string& source) {
  const std::string shape_hint =
      R"(write {"messages": [{"role": "user", "content": "..."}, ...], "tools": [...]} or just the list of messages)";
  std::string error;
  std::optional<JsonValue> doc = python_json_loads(json_text, &error);
  if (!doc) throw UsageError(fmt::format("{}: not valid JSON ({})", source, error), shape_hint);
  const JsonValue* list = &*doc;
  const JsonValue* tools = nullptr;
  if (doc->is_object()) {
    list = doc->find("messages");
    if (!list) throw UsageError(fmt::format("{}: no \"messages\" key", source), shape_hint);
    tools = doc->find("tools");
  }
  if (!list->is_array())
    throw UsageError(fmt::format("{}: the messages are a JSON {}, not a list", source, list->type_name()), shape_hint);
  try {
    return chat_conversation_from_json(*list, tools, "messages");
  } catch (const ChatJsonError& e) {
    throw UsageError(fmt::format("{}: {}", source, e.what()), e.hint());
  }
}

std::optional<std::vector<ToolCall>> tool_calls_from_output(const std::string& text) {
  std::optional<JsonValue> list = python_json_loads(text);
  if (!list || !list->is_array() || list->items().empty()) return std::nullopt;
  std::vector<ToolCall> calls;
  for (const JsonValue& item : list->items()) {
    const JsonValue* name = item.is_object() ? item.find("name") : nullptr;
    const JsonValue* arguments = item.is_object() ? item.find("arguments") : nullptr;
    if (!name || !name->is_string() || !arguments || !arguments->is_object()) return std::nullopt;
    ToolCall call;
    call.name = name->text();
    call.arguments = *arguments;
    if (const JsonValue* id = item.find("id"); id && id->is_string()) call.id = id->text();
    calls.push_back(std::move(call));
  }
  return calls;
}

JsonValue tool_calls_message_json(const std::vector<ToolCall>& calls) {
  JsonValue list = JsonValue::array();
  for (const ToolCall& call : calls) {
    JsonValue function = JsonValue::object();
    function.set("name", JsonValue::string(call.name));
    function.set("arguments", call.arguments);
    JsonValue entry = JsonValue::object();
    if (!call.id.empty()) entry.set("id", JsonValue::string(call.id));
    entry.set("type", JsonValue::string("function"));
    entry.set("function", std::move(function));
    list.push_back(std::move(entry));
  }
  JsonValue message = JsonValue::object();
  message.set("role", JsonValue::string("assistant"));
  message.set("tool_calls", std::move(list));
  return message;
}

}  // namespace mftk::core

// mftk/chat_format.h: the SDK's part.
namespace mftk {

const char* chat_format_name(ChatFormat format) { return format == ChatFormat::v3 ? "v3" : "v1"; }

ChatFormat detect_chat_format(const Tokenizer& tokenizer) {
  std::optional<int32_t> inst = tokenizer.piece_to_id("[INST]");
  return inst && tokenizer.type(*inst) == PieceType::control ? ChatFormat::v3 : ChatFormat::v1;
}

}  // namespace mftk
