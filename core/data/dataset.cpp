// JSONL datasets -> examples, the eval split and the prepared-data cache;
// see dataset.h.
#include "dataset.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "mftk/log.h"
#include "batching.h"
#include "fs_util.h"
#include "mftk/tokenizer.h"
#include "recipe.h"
#include "sha256.h"
#include "utf8.h"

namespace mftk::core {

namespace fs = std::filesystem;
using nlohmann::json;

// ------------------------------------------------------------ small helpers --

const char* to_string(DatasetType type) {
  switch (type) {
    case DatasetType::instruction: return "instruction";
    case DatasetType::chat: return "chat";
    case DatasetType::completion: return "completion";
    case DatasetType::preference: return "preference";
  }
  return "?";
}

namespace {

DatasetType parse_dataset_type(const std::string& name) {
  if (name == "instruction") return DatasetType::instruction;
  if (name == "completion") return DatasetType::completion;
  if (name == "preference") return DatasetType::preference;
  return DatasetType::chat;  // the recipe schema allows only these three
}

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

}  // namespace

int64_t DatasetFileStats::skipped_total() const {
  int64_t total = 0;
  for (const auto& [reason, count] : skipped) total += count;
  return total;
}

int64_t DataStats::skipped_total() const {
  int64_t total = 0;
  for (const auto& file : files) total += file.skipped_total();
  return total;
}

// ------------------------------------------------------------------ options --

DataOptions data_options_from_recipe(const Recipe& recipe) {
  DataOptions options;
  for (const Config& table : recipe.datasets()) {
    DatasetSpec spec;
    spec.table = table.table();
    spec.path = recipe.resolve_path(table.get_string("path"));
    spec.type = parse_dataset_type(table.get_string("type"));
    spec.eval_split = table.get_string("split") == "eval";
    const std::string& field = table.get_string("field");
    if (!field.empty()) {
      if (spec.type == DatasetType::chat) spec.field_messages = field;
      else if (spec.type == DatasetType::completion) spec.field_text = field;
      else if (spec.type == DatasetType::preference)
        table.fail("field", "preference rows do not use 'field'",
                   "their fields are prompt, chosen, rejected and (optional) system, as TRL names them");
      else
        table.fail("field", "instruction rows do not use 'field'",
                   "name their fields with field_instruction, field_input, field_output and field_system");
    }
    spec.field_instruction = table.get_string("field_instruction");
    spec.field_input = table.get_string("field_input");
    spec.field_output = table.get_string("field_output");
    spec.field_system = table.get_string("field_system");
    options.datasets.push_back(std::move(spec));
  }
  const Config& data = recipe.section("data");
  options.train_on_inputs = data.get_bool("train_on_inputs");
  options.skip_bad_rows = data.get_bool("skip_bad_rows");
  options.chat_template = data.get_string("chat_template");
  options.val_set_size = data.get_number("val_set_size");
  options.prepared_path = recipe.resolve_path(data.get_string("dataset_prepared_path"));
  options.seed = static_cast<uint64_t>(recipe.section("training").get_int("seed"));
  return options;
}

ChatFormat resolve_chat_format(const std::string& chat_template, const Tokenizer& tokenizer) {
  const ChatFormat native = detect_chat_format(tokenizer);
  if (chat_template == "auto") return native;
  if (chat_template == "mistral_v1") {
    if (native == ChatFormat::v3) {
      log::warn("[data] chat_template = \"mistral_v1\" but tokenizer '{}' has [INST] control pieces (a v0.3 "
                "tokenizer): [INST] will be spelled as plain text, which this model was not trained on; "
                "\"auto\" would pick mistral_v3",
                tokenizer.model_path());
    }
    return ChatFormat::v1;
  }
  if (chat_template == "mistral_v3") {
    if (native != ChatFormat::v3) {
      throw UsageError(fmt::format("[data] chat_template = \"mistral_v3\" needs [INST] and [/INST] control pieces, "
                                   "and tokenizer '{}' has none (a v0.1/v0.2 tokenizer)",
                                   tokenizer.model_path()),
                       "set [data] chat_template = \"auto\" (or \"mistral_v1\") for this tokenizer");
    }
    return ChatFormat::v3;
  }
  throw UsageError(fmt::format("[data] chat_template: unknown value '{}'", chat_template),
                   "use \"auto\", \"mistral_v1\" or \"mistral_v3\"");
}

// -------------------------------------------------------------- one row ----

namespace {

// Reasons a row is rejected; also the keys of DatasetFileStats::skipped.
constexpr const char* kMalformedJson = "malformed JSON";
constexpr const char* kNotAnObject = "not a JSON object";
constexpr const char* kMissingField = "missing field";
constexpr const char* kWrongType = "wrong field type";
constexpr const char* kEmptyResponse = "empty response";
constexpr const char* kInvalidUtf8 = "invalid UTF-8";
constexpr const char* kUnknownRole = "unknown role";
constexpr const char* kBadConversation = "bad conversation";
constexpr const char* kBadToolCall = "bad tool call";
constexpr const char* kIdenticalSides = "identical sides";

struct BadRow {
  const char* reason;
  std::string message;
  std::string hint;
  bool fatal = false;  // the data cannot work with this tokenizer at all: never skipped
};

// Builds one example from one JSON line; throws BadRow.
class RowReader {
 public:
  RowReader(const DatasetSpec& spec, const Tokenizer& tokenizer, ChatFormat format, bool train_on_inputs)
      : spec_(spec), tokenizer_(tokenizer), format_(format), train_on_inputs_(train_on_inputs) {}

  Example read(const std::string& line) const {
    const json row = parse_row(line);
    switch (spec_.type) {
      case DatasetType::instruction: return read_instruction(row);
      case DatasetType::chat: return read_chat(row, line);
      case DatasetType::completion: return read_completion(row);
      case DatasetType::preference: break;
    }
    throw Error("internal: RowReader::read on a preference row (read_pair reads those)");
  }

  // A preference row: its chosen example, then its rejected one.
  std::pair<Example, Example> read_pair(const std::string& line) const {
    const json row = parse_row(line);
    std::string error;
    std::optional<JsonValue> ordered = python_json_loads(line, &error);
    if (!ordered || !ordered->is_object()) {
      throw BadRow{kMalformedJson, fmt::format("malformed JSON: {}", error),
                   "each line must be one complete JSON object (JSON Lines)"};
    }
    for (const char* name : {"prompt", "chosen", "rejected"}) {
      if (!row.contains(name))
        throw BadRow{kMissingField, fmt::format("missing field '{}' (preference rows need prompt, chosen and rejected)", name),
                     "fix the row, or set [data] skip_bad_rows = true"};
    }
    const std::string system = optional_string(row, spec_.field_system, "field_system");
    std::vector<ChatMessage> prompt;
    if (!system.empty()) prompt.push_back({"system", system});
    const std::vector<ChatMessage> turns = messages_of(*ordered->find("prompt"), "prompt", "user");
    if (!system.empty() && !turns.empty() && turns.front().role == "system")
      throw BadRow{kBadConversation, fmt::format("the row has both a '{}' field and a system message in its prompt", spec_.field_system),
                   "keep one of them"};
    prompt.insert(prompt.end(), turns.begin(), turns.end());
    if (prompt.empty() || prompt.back().role != "user")
      throw BadRow{kBadConversation, "the prompt must end with a user turn (the sides answer it)",
                   "end the prompt's messages with the user's question"};
    // The prompt alone, as the model sees it before the reply: every token
    // up to here is context, whatever role it had (multi-turn prompts).
    const Example context = encode(prompt, /*generation_prompt=*/true);
    Example chosen = side(*ordered, "chosen", prompt, context.ids.size());
    Example rejected = side(*ordered, "rejected", prompt, context.ids.size());
    if (chosen.ids == rejected.ids)
      throw BadRow{kIdenticalSides, "chosen and rejected are the same reply: the pair states no preference",
                   "drop the row, or set [data] skip_bad_rows = true"};
    return {std::move(chosen), std::move(rejected)};
  }

 private:
  json parse_row(const std::string& line) const {
    if (auto bad = find_invalid_utf8(line)) {
      throw BadRow{kInvalidUtf8, fmt::format("invalid UTF-8 at byte {} of the line", *bad + 1),
                   "re-encode the file as UTF-8"};
    }
    json row;
    try {
      row = json::parse(line);
    } catch (const json::exception& e) {
      // parse_error, and out_of_range for a number too large for a double
      // (found by fuzz_jsonl_chat): both mean the line is not usable JSON.
      throw BadRow{kMalformedJson, fmt::format("malformed JSON: {}", strip_json_prefix(e.what())),
                   "each line must be one complete JSON object (JSON Lines)"};
    }
    if (!row.is_object()) {
      throw BadRow{kNotAnObject, fmt::format("row is a JSON {}, not an object", row.type_name()),
                   "each line must be one JSON object"};
    }
    return row;
  }

  // A preference field: a string (one message of `string_role`) or a list
  // of {"role", "content"} messages.
  std::vector<ChatMessage> messages_of(const JsonValue& value, const std::string& name,
                                       const std::string& string_role) const {
    if (value.is_string()) {
      if (value.text().empty())
        throw BadRow{kEmptyResponse, fmt::format("field '{}' is empty", name), "drop the row, or set [data] skip_bad_rows = true"};
      return {ChatMessage{string_role, value.text()}};
    }
    if (!value.is_array())
      throw BadRow{kWrongType, fmt::format("field '{}' is neither a string nor a list of messages", name),
                   "TRL's preference rows hold strings, or lists of {\"role\", \"content\"} messages"};
    if (value.items().empty())
      throw BadRow{kEmptyResponse, fmt::format("field '{}' is an empty list", name), "drop the row, or set [data] skip_bad_rows = true"};
    try {
      ChatConversation conversation = chat_conversation_from_json(value, nullptr, name);
      if (conversation.uses_tools())
        throw BadRow{kBadConversation, fmt::format("field '{}' uses tools, which preference rows do not support", name),
                     "drop the row"};
      return conversation.messages;
    } catch (const ChatJsonError& e) {
      throw BadRow{reason_of(e.kind()), e.what(), e.hint()};
    }
  }

  // One side of a pair: the prompt, then the side's assistant reply; the
  // loss on the reply's tokens (and its </s>) only.
  Example side(const JsonValue& ordered, const char* name, const std::vector<ChatMessage>& prompt,
               size_t context_tokens) const {
    const std::vector<ChatMessage> reply = messages_of(*ordered.find(name), name, "assistant");
    if (reply.size() != 1 || reply.front().role != "assistant")
      throw BadRow{kBadConversation, fmt::format("field '{}' must hold exactly one assistant message", name),
                   "the other turns belong in the prompt"};
    if (reply.front().content.empty())
      throw BadRow{kEmptyResponse, fmt::format("field '{}' is an empty reply", name), "drop the row, or set [data] skip_bad_rows = true"};
    std::vector<ChatMessage> messages = prompt;
    messages.push_back(reply.front());
    Example example = encode(messages);
    if (example.ids.size() <= context_tokens)
      throw BadRow{kBadConversation, fmt::format("field '{}': the encoding is no longer than the prompt's", name), ""};
    std::fill(example.loss_mask.begin(), example.loss_mask.begin() + long(context_tokens), uint8_t{0});
    return example;
  }
  static std::string strip_json_prefix(const std::string& what) {
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..." -> "parse error at ..."
    size_t close = what.find("] ");
    return close == std::string::npos ? what : what.substr(close + 2);
  }

  std::string field_hint(const std::string& recipe_key) const {
    return fmt::format("fix the row, name the field with [{}] {}, or set [data] skip_bad_rows = true",
                       spec_.table, recipe_key);
  }

  // A required string field.
  const std::string& required_string(const json& row, const std::string& name, const char* recipe_key) const {
    auto it = row.find(name);
    if (it == row.end()) {
      throw BadRow{kMissingField, fmt::format("missing field '{}' ({} rows need it)", name, to_string(spec_.type)),
                   field_hint(recipe_key)};
    }
    if (!it->is_string()) {
      throw BadRow{kWrongType, fmt::format("field '{}' is a JSON {}, not a string", name, it->type_name()),
                   field_hint(recipe_key)};
    }
    return it->get_ref<const std::string&>();
  }

  // An optional string field: absent or null -> empty.
  std::string optional_string(const json& row, const std::string& name, const char* recipe_key) const {
    auto it = row.find(name);
    if (it == row.end() || it->is_null()) return {};
    if (!it->is_string()) {
      throw BadRow{kWrongType, fmt::format("field '{}' is a JSON {}, not a string", name, it->type_name()),
                   field_hint(recipe_key)};
    }
    return it->get<std::string>();
  }

  Example encode(const std::vector<ChatMessage>& messages, bool generation_prompt = false,
                 const std::vector<ChatTool>& tools = {}) const {
    try {
      // Preference sides train on the reply alone (the prompt is shared context).
      const bool train_on_inputs = train_on_inputs_ && spec_.type != DatasetType::preference;
      ChatEncoding encoding = encode_chat(tokenizer_, format_, messages, train_on_inputs, generation_prompt, tools);
      return Example{std::move(encoding.ids), std::move(encoding.loss_mask)};
    } catch (const UsageError& e) {
      throw BadRow{kBadConversation, e.what(), e.hint()};
    }
  }

  Example read_instruction(const json& row) const {
    const std::string& instruction = required_string(row, spec_.field_instruction, "field_instruction");
    const std::string input = optional_string(row, spec_.field_input, "field_input");
    const std::string& output = required_string(row, spec_.field_output, "field_output");
    const std::string system = optional_string(row, spec_.field_system, "field_system");
    if (output.empty()) {
      throw BadRow{kEmptyResponse, fmt::format("field '{}' (the response) is empty", spec_.field_output),
                   "an empty answer teaches nothing: drop the row or set [data] skip_bad_rows = true"};
    }
    std::vector<ChatMessage> messages;
    if (!system.empty()) messages.push_back({"system", system});
    messages.push_back({"user", input.empty() ? instruction : instruction + "\n\n" + input});
    messages.push_back({"assistant", output});
    return encode(messages);
  }

  static const char* reason_of(ChatJsonError::Kind kind) {
    switch (kind) {
      case ChatJsonError::Kind::missing_field: return kMissingField;
      case ChatJsonError::Kind::wrong_type: return kWrongType;
      case ChatJsonError::Kind::unknown_role: return kUnknownRole;
      case ChatJsonError::Kind::empty_reply: return kEmptyResponse;
      case ChatJsonError::Kind::bad_tool_call: return kBadToolCall;
    }
    return kBadConversation;
  }

  Example read_chat(const json& row, const std::string& line) const {
    const std::string& name = spec_.field_messages;
    auto it = row.find(name);
    if (it == row.end()) {
      throw BadRow{kMissingField, fmt::format("missing field '{}' (chat rows need a list of messages)", name),
                   field_hint("field")};
    }
    if (!it->is_array()) {
      throw BadRow{kWrongType, fmt::format("field '{}' is a JSON {}, not a list of messages", name, it->type_name()),
                   field_hint("field")};
    }
    if (it->empty()) {
      throw BadRow{kBadConversation, fmt::format("field '{}' is an empty list", name),
                   "give at least a user and an assistant message"};
    }
    // The line once more, keeping key order and every digit: tool schemas
    // and call arguments go into the token ids re-serialised as written.
    std::string error;
    std::optional<JsonValue> ordered = python_json_loads(line, &error);
    if (!ordered || !ordered->is_object()) {
      throw BadRow{kMalformedJson, fmt::format("malformed JSON: {}", error),
                   "each line must be one complete JSON object (JSON Lines)"};
    }
    ChatConversation conversation;
    try {
      conversation = chat_conversation_from_json(*ordered->find(name), ordered->find("tools"), name);
    } catch (const ChatJsonError& e) {
      throw BadRow{reason_of(e.kind()), e.what(), e.hint()};
    }
    const bool has_reply = std::any_of(conversation.messages.begin(), conversation.messages.end(),
                                       [](const ChatMessage& m) { return m.role == "assistant"; });
    if (!has_reply) {
      throw BadRow{kEmptyResponse, "the conversation has no assistant message",
                   "add the assistant's reply; without one there is nothing to train on"};
    }
    if (conversation.uses_tools()) {
      try {
        check_tools_supported(tokenizer_, format_);
      } catch (const UsageError& e) {
        throw BadRow{kBadConversation, fmt::format("the row has tools: {}", e.what()), e.hint(), /*fatal=*/true};
      }
    }
    return encode(conversation.messages, false, conversation.tools);
  }

  Example read_completion(const json& row) const {
    const std::string& text = required_string(row, spec_.field_text, "field");
    if (text.empty()) {
      throw BadRow{kEmptyResponse, fmt::format("field '{}' is empty", spec_.field_text),
                   "drop the row or set [data] skip_bad_rows = true"};
    }
    Example example;
    example.ids.push_back(tokenizer_.bos_id());
    std::vector<int32_t> body = tokenizer_.encode(text);
    example.ids.insert(example.ids.end(), body.begin(), body.end());
    example.ids.push_back(tokenizer_.eos_id());
    example.loss_mask.assign(example.ids.size(), 1);
    return example;
  }

  const DatasetSpec& spec_;
  const Tokenizer& tokenizer_;
  ChatFormat format_;
  bool train_on_inputs_;
};

std::string describe_skipped(const std::map<std::string, int64_t>& skipped) {
  std::vector<std::string> parts;
  for (const auto& [reason, count] : skipped) parts.push_back(fmt::format("{} {}", reason, count));
  return fmt::format("{}", fmt::join(parts, ", "));
}

}  // namespace

// ------------------------------------------------------------- one file ----

std::vector<Example> load_dataset(const DatasetSpec& spec, const Tokenizer& tokenizer, ChatFormat format,
                                  bool train_on_inputs, bool skip_bad_rows, DatasetFileStats& stats) {
  stats = DatasetFileStats{};
  stats.path = spec.path;
  stats.type = to_string(spec.type);
  stats.split = spec.eval_split ? "eval" : "train";

  std::ifstream in(spec.path, std::ios::binary);
  if (!in) {
    throw UsageError(fmt::format("[{}] path: cannot open '{}': {}", spec.table, spec.path,
                                 fs::exists(spec.path) ? "permission denied or not a file" : "no such file"),
                     "relative paths are relative to the working directory");
  }
  constexpr int kLoggedSkips = 5;  // per file; the rest only count
  RowReader reader(spec, tokenizer, format, train_on_inputs);
  std::vector<Example> examples;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_number == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // UTF-8 BOM
    if (is_blank(line)) {
      ++stats.blank_lines;
      continue;
    }
    ++stats.rows;
    try {
      std::vector<Example> read;
      if (spec.type == DatasetType::preference) {
        auto [chosen, rejected] = reader.read_pair(line);
        read.push_back(std::move(chosen));
        read.push_back(std::move(rejected));
      } else {
        read.push_back(reader.read(line));
      }
      for (Example& example : read) {
        stats.tokens += static_cast<int64_t>(example.ids.size());
        stats.trainable_tokens += std::count(example.loss_mask.begin(), example.loss_mask.end(), uint8_t{1});
        examples.push_back(std::move(example));
      }
    } catch (const BadRow& bad) {
      const std::string message = fmt::format("{}:{}: {}", spec.path, line_number, bad.message);
      if (!skip_bad_rows || bad.fatal) throw UsageError(message, bad.hint);
      if (stats.skipped_total() < kLoggedSkips) log::warn("skipping bad row: {}", message);
      ++stats.skipped[bad.reason];
    }
  }
  if (in.bad()) throw Error(fmt::format("read error in '{}' after line {}", spec.path, line_number));
  if (stats.rows == 0) {
    throw UsageError(fmt::format("{}:{}: the file has no rows", spec.path, std::max<int64_t>(line_number, 1)),
                     fmt::format("[{}] path must name a JSON Lines file with one {} row per line", spec.table,
                                 to_string(spec.type)));
  }
  if (stats.skipped_total() > 0) {
    log::warn("{}: skipped {} of {} rows ({})", spec.path, stats.skipped_total(), stats.rows,
              describe_skipped(stats.skipped));
  }
  if (examples.empty()) {
    throw UsageError(fmt::format("{}: every one of its {} rows was bad ({})", spec.path, stats.rows,
                                 describe_skipped(stats.skipped)),
                     fmt::format("check [{}] type = \"{}\" and its field names against the file", spec.table,
                                 to_string(spec.type)));
  }
  stats.examples = static_cast<int64_t>(examples.size());
  return examples;
}

std::vector<size_t> split_eval(size_t n, size_t n_eval, uint64_t seed) {
  MFTK_CHECK(n_eval <= n, "split_eval: cannot hold out {} of {} examples", n_eval, n);
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  // Fisher-Yates, only as far as the held-out prefix needs.
  SplitMix64 rng(seed);
  for (size_t i = 0; i < n_eval; ++i) {
    size_t j = i + static_cast<size_t>(rng.below(n - i));
    std::swap(order[i], order[j]);
  }
  order.resize(n_eval);
  std::sort(order.begin(), order.end());
  return order;
}

// ------------------------------------------------------------------- cache --

std::string prepared_cache_key(const DataOptions& options, const Tokenizer& tokenizer) {
  Sha256 hasher;
  // Every value is length-prefixed so that no two inputs hash the same bytes.
  auto add = [&](const std::string& name, const std::string& value) {
    hasher.update(fmt::format("{}:{}={}:", name.size(), name, value.size()));
    hasher.update(value);
  };
  add("format_version", std::to_string(kPreparedDataVersion));
  add("tokenizer", tokenizer.fingerprint());
  add("train_on_inputs", options.train_on_inputs ? "true" : "false");
  add("chat_template", options.chat_template);
  add("skip_bad_rows", options.skip_bad_rows ? "true" : "false");
  add("val_set_size", fmt::format("{}", options.val_set_size));
  add("seed", std::to_string(options.seed));
  add("datasets", std::to_string(options.datasets.size()));
  for (const DatasetSpec& spec : options.datasets) {
    add("type", to_string(spec.type));
    add("split", spec.eval_split ? "eval" : "train");
    add("field_messages", spec.field_messages);
    add("field_text", spec.field_text);
    add("field_instruction", spec.field_instruction);
    add("field_input", spec.field_input);
    add("field_output", spec.field_output);
    add("field_system", spec.field_system);
    if (!fs::is_regular_file(spec.path)) {
      throw UsageError(fmt::format("[{}] path: '{}' is not a readable file", spec.table, spec.path),
                       "relative paths are relative to the working directory");
    }
    add("data", sha256_file_hex(spec.path));
  }
  return hasher.hex_digest();
}

namespace {

// examples.bin, all integers little-endian (the only byte order we build for):
//   char[8]  magic "MFTKPREP"
//   u32      kPreparedDataVersion
//   char[64] cache key (hex)
//   u64      stats JSON length, then the JSON bytes
//   u64      train examples, u64 eval examples
//   u64      length of every example (train first, then eval)
//   i32      ids of all examples, concatenated
//   u8       loss masks, concatenated
//   char[8]  end marker "MFTKEND\0" (catches truncated files)
constexpr char kMagic[8] = {'M', 'F', 'T', 'K', 'P', 'R', 'E', 'P'};
constexpr char kEndMarker[8] = {'M', 'F', 'T', 'K', 'E', 'N', 'D', '\0'};
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "examples.bin is written in host byte order");

json stats_to_json(const DataStats& stats) {
  json files = json::array();
  for (const auto& f : stats.files) {
    files.push_back({{"path", f.path},
                     {"type", f.type},
                     {"split", f.split},
                     {"rows", f.rows},
                     {"blank_lines", f.blank_lines},
                     {"examples", f.examples},
                     {"tokens", f.tokens},
                     {"trainable_tokens", f.trainable_tokens},
                     {"skipped", f.skipped}});
  }
  return {{"files", files},
          {"chat_format", stats.chat_format},
          {"eval_source", stats.eval_source},
          {"train_examples", stats.train_examples},
          {"eval_examples", stats.eval_examples}};
}

DataStats stats_from_json(const json& j) {
  DataStats stats;
  for (const auto& f : j.at("files")) {
    DatasetFileStats file;
    file.path = f.at("path").get<std::string>();
    file.type = f.at("type").get<std::string>();
    file.split = f.at("split").get<std::string>();
    file.rows = f.at("rows").get<int64_t>();
    file.blank_lines = f.at("blank_lines").get<int64_t>();
    file.examples = f.at("examples").get<int64_t>();
    file.tokens = f.at("tokens").get<int64_t>();
    file.trainable_tokens = f.at("trainable_tokens").get<int64_t>();
    file.skipped = f.at("skipped").get<std::map<std::string, int64_t>>();
    stats.files.push_back(std::move(file));
  }
  stats.chat_format = j.at("chat_format").get<std::string>();
  stats.eval_source = j.at("eval_source").get<std::string>();
  stats.train_examples = j.at("train_examples").get<int64_t>();
  stats.eval_examples = j.at("eval_examples").get<int64_t>();
  return stats;
}

template <class T>
void write_pod(std::ofstream& out, const T& value) {
  out.write(reinterpret_cast<const char*>(&value), sizeof(T));
}

// An existing cache file is replaced only when it starts with kMagic (mftk
// wrote it; an old version or a damaged one is rebuilt); the cache folders
// must be folders. Anything else at those paths is the user's: refused.
void check_cache_path(const fs::path& file) {
  auto refuse = [](const fs::path& p, const std::string& what) {
    throw UsageError(fmt::format("the prepared-data cache {} {}: mftk never replaces what it did not write",
                                 p.string(), what),
                     "point [data] dataset_prepared_path at a new or empty folder, or move or remove it yourself");
  };
  std::error_code ec;
  for (const fs::path& dir : {file.parent_path().parent_path(), file.parent_path()}) {
    const auto st = fs::status(dir, ec);
    if (fs::exists(st) && !fs::is_directory(st)) refuse(dir, "is a file, not a folder");
  }
  const auto st = fs::symlink_status(file, ec);
  if (!fs::exists(st)) return;
  if (!fs::is_regular_file(st)) refuse(file, "is not a regular file");
  std::ifstream in(file, std::ios::binary);
  char magic[sizeof(kMagic)] = {};
  if (!in.read(magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(kMagic)) != 0)
    refuse(file, "exists and is not an mftk data cache");
}

void write_cache(const fs::path& file, const std::string& key, const PreparedData& data) {
  check_cache_path(file);
  fs::create_directories(file.parent_path());
  // Written beside the target under a fresh name and renamed over it, so
  // readers never see half a file.
  AtomicFile atomic(file.string());
  const fs::path tmp = atomic.temp_path();
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("cannot write the data cache '{}'", tmp.string()),
                          "check [data] dataset_prepared_path and its permissions");
    out.write(kMagic, sizeof(kMagic));
    write_pod(out, kPreparedDataVersion);
    out.write(key.data(), 64);
    const std::string stats = stats_to_json(data.stats).dump();
    write_pod(out, uint64_t(stats.size()));
    out.write(stats.data(), std::streamsize(stats.size()));
    write_pod(out, uint64_t(data.train.size()));
    write_pod(out, uint64_t(data.eval.size()));
    for (const auto* set : {&data.train, &data.eval})
      for (const Example& e : *set) write_pod(out, uint64_t(e.ids.size()));
    for (const auto* set : {&data.train, &data.eval})
      for (const Example& e : *set) out.write(reinterpret_cast<const char*>(e.ids.data()),
                                              std::streamsize(e.ids.size() * sizeof(int32_t)));
    for (const auto* set : {&data.train, &data.eval})
      for (const Example& e : *set) out.write(reinterpret_cast<const char*>(e.loss_mask.data()),
                                              std::streamsize(e.loss_mask.size()));
    out.write(kEndMarker, sizeof(kEndMarker));
    out.close();
    if (!out) throw Error(fmt::format("write error on the data cache '{}' (disk full?)", tmp.string()));
  }
  atomic.commit();
}

// nullopt (with the reason) when the file is missing or unusable.
std::optional<PreparedData> read_cache(const fs::path& file, const std::string& key, std::string& why_not) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    why_not = "no cache yet";
    return std::nullopt;
  }
  auto read_bytes = [&](void* out, size_t size) {
    in.read(static_cast<char*>(out), std::streamsize(size));
    return bool(in);
  };
  auto fail = [&](const std::string& reason) -> std::optional<PreparedData> {
    why_not = reason;
    return std::nullopt;
  };
  char magic[8];
  uint32_t version = 0;
  std::string stored_key(64, '\0');
  uint64_t stats_size = 0;
  if (!read_bytes(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return fail("not an mftk data cache");
  if (!read_bytes(&version, 4) || version != kPreparedDataVersion)
    return fail(fmt::format("cache format {}, this mftk writes {}", version, kPreparedDataVersion));
  if (!read_bytes(stored_key.data(), 64) || stored_key != key) return fail("the cache belongs to other inputs");
  if (!read_bytes(&stats_size, 8) || stats_size > (uint64_t(1) << 32)) return fail("truncated header");
  std::string stats_text(stats_size, '\0');
  if (!read_bytes(stats_text.data(), stats_size)) return fail("truncated header");
  PreparedData data;
  try {
    data.stats = stats_from_json(json::parse(stats_text));
  } catch (const json::exception& e) {
    return fail(fmt::format("unreadable statistics ({})", e.what()));
  }
  uint64_t counts[2] = {0, 0};
  if (!read_bytes(counts, sizeof(counts))) return fail("truncated header");
  const uint64_t file_size = fs::file_size(file);
  if (counts[0] + counts[1] > file_size / 8) return fail("corrupt example counts");
  std::vector<uint64_t> lengths(counts[0] + counts[1]);
  if (!read_bytes(lengths.data(), lengths.size() * 8)) return fail("truncated lengths");
  uint64_t total = 0;
  for (uint64_t len : lengths) total += len;
  if (total > file_size) return fail("corrupt lengths");
  data.train.resize(counts[0]);
  data.eval.resize(counts[1]);
  auto each = [&](auto&& fn) {
    size_t k = 0;
    for (auto* set : {&data.train, &data.eval})
      for (Example& e : *set) fn(e, lengths[k++]);
  };
  bool ok = true;
  each([&](Example& e, uint64_t len) {
    e.ids.resize(len);
    ok = ok && read_bytes(e.ids.data(), len * sizeof(int32_t));
  });
  each([&](Example& e, uint64_t len) {
    e.loss_mask.resize(len);
    ok = ok && read_bytes(e.loss_mask.data(), len);
  });
  char end[8];
  if (!ok || !read_bytes(end, 8) || std::memcmp(end, kEndMarker, 8) != 0) return fail("truncated data");
  if (in.peek() != std::char_traits<char>::eof()) return fail("trailing bytes");
  data.from_cache = true;
  return data;
}

}  // namespace

// ----------------------------------------------------------------- prepare --

PreparedData prepare_data(const DataOptions& options, const Tokenizer& tokenizer, CacheMode mode) {
  if (options.datasets.empty()) {
    throw UsageError("the recipe has no [[datasets]]",
                     "add one: [[datasets]] path = \"data/train.jsonl\" type = \"chat\"");
  }
  const bool has_train = std::any_of(options.datasets.begin(), options.datasets.end(),
                                     [](const DatasetSpec& s) { return !s.eval_split; });
  if (!has_train) {
    throw UsageError("every [[datasets]] entry has split = \"eval\": there is nothing to train on",
                     "set split = \"train\" on at least one dataset");
  }

  const bool pairs = is_preference_data(options);  // examples come two by two (chosen, rejected)
  std::string key;
  fs::path cache_file;
  if (mode != CacheMode::off) {
    key = prepared_cache_key(options, tokenizer);
    cache_file = fs::path(options.prepared_path) / key / "examples.bin";
    if (mode == CacheMode::read_write) {
      std::string why_not;
      if (auto cached = read_cache(cache_file, key, why_not)) {
        // Paths are not part of the key (moving a file keeps its cache): show today's.
        for (size_t i = 0; i < cached->stats.files.size() && i < options.datasets.size(); ++i)
          cached->stats.files[i].path = options.datasets[i].path;
        cached->cache_key = key;
        cached->cache_file = cache_file.string();
        log::info("data: reusing {}", cache_file.string());
        return std::move(*cached);
      }
      if (fs::exists(cache_file)) log::warn("data: rebuilding {}: {}", cache_file.string(), why_not);
    }
  }

  PreparedData data;
  data.cache_key = key;
  data.cache_file = cache_file.string();
  const bool needs_chat = std::any_of(options.datasets.begin(), options.datasets.end(),
                                      [](const DatasetSpec& s) { return s.type != DatasetType::completion; });
  ChatFormat format = ChatFormat::v1;
  if (needs_chat) {
    format = resolve_chat_format(options.chat_template, tokenizer);
    data.stats.chat_format = chat_format_name(format);
  }

  bool has_eval_files = false;
  for (const DatasetSpec& spec : options.datasets) {
    DatasetFileStats file_stats;
    std::vector<Example> examples =
        load_dataset(spec, tokenizer, format, options.train_on_inputs, options.skip_bad_rows, file_stats);
    auto& target = spec.eval_split ? data.eval : data.train;
    has_eval_files = has_eval_files || spec.eval_split;
    std::move(examples.begin(), examples.end(), std::back_inserter(target));
    data.stats.files.push_back(std::move(file_stats));
  }

  if (has_eval_files) {
    data.stats.eval_source = "datasets with split = \"eval\"";
    if (options.val_set_size > 0)
      log::warn("[data] val_set_size = {} is ignored: datasets with split = \"eval\" form the eval set",
                options.val_set_size);
  } else if (options.val_set_size > 0) {
    // Preference data is split by pairs: held-out index i stands for examples 2i and 2i+1.
    const size_t per = pairs ? 2 : 1;
    const size_t n = data.train.size() / per;
    if (n < 2) {
      log::warn("[data] val_set_size = {}: only {} training example, so there is no eval set",
                options.val_set_size, n);
    } else {
      size_t n_eval = static_cast<size_t>(std::llround(options.val_set_size * double(n)));
      n_eval = std::min(std::max<size_t>(n_eval, 1), n - 1);  // at least one example on each side
      std::vector<size_t> held_out = split_eval(n, n_eval, options.seed);
      std::vector<Example> kept;
      kept.reserve((n - n_eval) * per);
      size_t next = 0;
      for (size_t i = 0; i < n; ++i) {
        const bool eval = next < held_out.size() && held_out[next] == i;
        for (size_t j = i * per; j < (i + 1) * per; ++j) (eval ? data.eval : kept).push_back(std::move(data.train[j]));
        next += eval;
      }
      data.train = std::move(kept);
      data.stats.eval_source =
          fmt::format("val_set_size {} of the training examples (seed {})", options.val_set_size, options.seed);
    }
  }
  if (data.stats.eval_source.empty()) data.stats.eval_source = "none";
  data.stats.train_examples = static_cast<int64_t>(data.train.size());
  data.stats.eval_examples = static_cast<int64_t>(data.eval.size());

  if (mode != CacheMode::off) {
    write_cache(cache_file, key, data);
    log::info("data: wrote {}", cache_file.string());
  }
  return data;
}

PreparedData prepare_data(const Recipe& recipe, const Tokenizer& tokenizer, CacheMode mode) {
  return prepare_data(data_options_from_recipe(recipe), tokenizer, mode);
}

bool is_preference_data(const DataOptions& options) {
  const auto preference = std::count_if(options.datasets.begin(), options.datasets.end(),
                                        [](const DatasetSpec& s) { return s.type == DatasetType::preference; });
  if (preference > 0 && size_t(preference) != options.datasets.size())
    throw UsageError("the recipe mixes type = \"preference\" datasets with other types",
                     "a run trains on preference pairs (a preference [objective]) or on documents, not both: "
                     "give every [[datasets]] entry the same kind");
  return preference > 0;
}

std::vector<std::string> describe_data(const PreparedData& data) {
  const DataStats& s = data.stats;
  std::vector<std::string> lines;
  for (const DatasetFileStats& f : s.files) {
    std::string line = fmt::format("{} ({}, {}): {} rows -> {} examples, {} tokens ({} trainable)", f.path, f.type,
                                   f.split, f.rows, f.examples, f.tokens, f.trainable_tokens);
    if (f.skipped_total() > 0)
      line += fmt::format("; skipped {} bad rows: {}", f.skipped_total(), describe_skipped(f.skipped));
    lines.push_back(std::move(line));
  }
  if (!s.chat_format.empty()) lines.push_back(fmt::format("chat format: mistral_{}", s.chat_format));
  lines.push_back(fmt::format("train: {} examples; eval: {} examples ({})", s.train_examples, s.eval_examples,
                              s.eval_source));
  if (!data.cache_file.empty())
    lines.push_back(fmt::format("cache: {} {}", data.from_cache ? "reused" : "wrote", data.cache_file));
  return lines;
}

}  // namespace mftk::core
