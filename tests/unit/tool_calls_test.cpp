// Function calling in the v3 chat format (Mistral-7B v0.3), checked against
// the rules mistral-common's InstructTokenizerV3 follows, written out here:
//   tools    [AVAILABLE_TOOLS] enc(json) [/AVAILABLE_TOOLS] before the [INST] of the last user turn only
//   calls    [TOOL_CALLS] enc(json) </s>, json = [{"name", "arguments", "id"}, ...]
//   results  [TOOL_RESULTS] enc(json) [/TOOL_RESULTS], json = {"content", "call_id"}
// where enc() is the plain sentencepiece encoding (no BOS/EOS) and json is
// Python's json.dumps(..., ensure_ascii=False) text. Every JSON string below
// is written out literally as Python prints it; control ids are looked up by
// piece; expected ids are assembled from those parts, never by the encoder
// under test. Runs on Mistral's real v3 tokenizer (MFTK_SHARED_DIR).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>

#include "chat_template.h"
#include "dataset.h"
#include "init_checkpoint.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"
#include "python_json.h"
#include "tokenizer_train.h"

namespace fs = std::filesystem;
using mftk::Tokenizer;
using mftk::core::ChatConversation;
using mftk::core::ChatFormat;
using mftk::core::ChatMessage;
using mftk::core::ChatTool;
using mftk::core::JsonValue;
using mftk::core::python_json_dumps;
using mftk::core::python_json_loads;
using mftk::core::ToolCall;
using Ids = std::vector<int32_t>;
using Mask = std::vector<uint8_t>;

namespace {

// ------------------------------------------------------- Python's json ----

std::string roundtrip(const std::string& text) {
  std::string error;
  auto value = python_json_loads(text, &error);
  EXPECT_TRUE(value.has_value()) << text << ": " << error;
  return value ? python_json_dumps(*value) : std::string();
}

}  // namespace

TEST(PythonJson, DumpsLikeJsonDumpsEnsureAsciiFalse) {
  // Separators ", " and ": ", key order as written, nothing sorted.
  EXPECT_EQ(roundtrip(R"({"z":1,"a":[true,false,null],"m":{}})"), R"({"z": 1, "a": [true, false, null], "m": {}})");
  EXPECT_EQ(roundtrip("[ ]"), "[]");
  // Non-ASCII stays UTF-8; \u escapes of it are decoded, surrogate pairs joined.
  EXPECT_EQ(roundtrip(R"(["Météo", "\u00e9\ud83d\ude00", "東京"])"), "[\"Météo\", \"é\xF0\x9F\x98\x80\", \"東京\"]");
  // Escapes: quote, backslash, the five short ones, other controls as lowercase \u00XX; "/" is not escaped.
  EXPECT_EQ(roundtrip(R"("a\"b\\c\/d\n\r\t\b\f\u0001\u001f\u007f")"), "\"a\\\"b\\\\c/d\\n\\r\\t\\b\\f\\u0001\\u001f\x7f\"");
  // Python ints keep every digit; int("-0") is 0.
  EXPECT_EQ(roundtrip("[123456789012345678901234567890, -0, -12]"), "[123456789012345678901234567890, 0, -12]");
  // A later duplicate key replaces the value where the first one stood (a dict).
  EXPECT_EQ(roundtrip(R"({"a": 1, "b": 2, "a": 3})"), R"({"a": 3, "b": 2})");
  // NaN and the infinities are read and written with Python's words; 1e400 overflows to inf.
  EXPECT_EQ(roundtrip("[NaN, Infinity, -Infinity, 1e400]"), "[NaN, Infinity, -Infinity, Infinity]");
}

TEST(PythonJson, FloatsAsPythonRepr) {
  // repr(float): shortest round-trip digits; fixed notation while the
  // decimal exponent is in [-4, 16), else d.ddde+XX with two exponent digits.
  const std::pair<const char*, const char*> cases[] = {
      {"1.0", "1.0"},           {"1.50", "1.5"},         {"0.1", "0.1"},
      {"100e0", "100.0"},       {"1E5", "100000.0"},     {"0.0001", "0.0001"},
      {"0.00001", "1e-05"},     {"1e15", "1000000000000000.0"}, {"1e16", "1e+16"},
      {"12345678901234567.0", "1.2345678901234568e+16"},  {"-0.0", "-0.0"},
      {"0.30000000000000004", "0.30000000000000004"},     {"5e-324", "5e-324"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"}, {"2.5e-7", "2.5e-07"},
      {"123.456", "123.456"},   {"-3.25e2", "-325.0"},
  };
  for (auto [in, out] : cases) EXPECT_EQ(roundtrip(in), out) << in;
  EXPECT_EQ(mftk::core::python_float_repr(1.0 / 3.0), "0.3333333333333333");
}

TEST(PythonJson, RefusesWhatJsonLoadsRefuses) {
  for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "01", "1.", ".5", "+1", "'a'", "\"a\nb\"", "[1] x",
                          "{\"a\": 1,}", "\"\\x\"", "\"\\ud800\"", "nul", "tru"}) {
    EXPECT_FALSE(python_json_loads(bad).has_value()) << bad;
  }
  // Deep nesting is refused, not a stack overflow.
  EXPECT_FALSE(python_json_loads(std::string(100000, '[')).has_value());
  // Whitespace around a value is fine; "1e" is not a number.
  EXPECT_EQ(roundtrip(" \t\n 7 \r\n"), "7");
  EXPECT_FALSE(python_json_loads("1e").has_value());
}

// ------------------------------------------------------ v3 tool encoding ----

namespace {

std::string v3_tokenizer_path() {
  const char* from_env = std::getenv("MFTK_SHARED_DIR");
  const std::string shared = from_env != nullptr ? from_env : MFTK_SHARED_DIR;
  const fs::path path = fs::path(shared) / "data/mistral-tokenizers/tokenizer.model.v3";
  return fs::exists(path) ? path.string() : std::string();
}

std::string v1_tokenizer_path() {
  const std::string v3 = v3_tokenizer_path();
  return v3.empty() ? v3 : v3.substr(0, v3.size() - 1) + "1";
}

class ToolCalls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!v3_tokenizer_path().empty()) {
      v3() = Tokenizer::load(v3_tokenizer_path());
      v1() = Tokenizer::load(v1_tokenizer_path());
    }
  }
  static void TearDownTestSuite() {
    v3().reset();
    v1().reset();
  }
  static std::shared_ptr<Tokenizer>& v3() {
    static std::shared_ptr<Tokenizer> tok;
    return tok;
  }
  static std::shared_ptr<Tokenizer>& v1() {
    static std::shared_ptr<Tokenizer> tok;
    return tok;
  }
  void SetUp() override {
    if (!v3()) GTEST_SKIP() << "Mistral tokenizer files not found (set MFTK_SHARED_DIR)";
    tok_ = v3().get();
    for (const char* piece : {"[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                              "[TOOL_RESULTS]", "[/TOOL_RESULTS]"}) {
      auto id = tok_->piece_to_id(piece);
      ASSERT_TRUE(id.has_value()) << piece;
      ASSERT_EQ(tok_->type(*id), mftk::PieceType::control) << piece;
    }
    inst_ = *tok_->piece_to_id("[INST]");
    end_inst_ = *tok_->piece_to_id("[/INST]");
    calls_ = *tok_->piece_to_id("[TOOL_CALLS]");
    tools_ = *tok_->piece_to_id("[AVAILABLE_TOOLS]");
    end_tools_ = *tok_->piece_to_id("[/AVAILABLE_TOOLS]");
    results_ = *tok_->piece_to_id("[TOOL_RESULTS]");
    end_results_ = *tok_->piece_to_id("[/TOOL_RESULTS]");
    // Mistral's v0.3 vocabulary puts them right after [INST] and [/INST].
    EXPECT_EQ((Ids{inst_, end_inst_, calls_, tools_, end_tools_, results_, end_results_}), (Ids{3, 4, 5, 6, 7, 8, 9}));
  }

  Ids enc(const std::string& text) const { return tok_->encode(text); }

  // Parses a chat document with the production reader (its shape checks are
  // tested below) and encodes it.
  mftk::core::ChatEncoding encode_doc(const std::string& doc, bool train_on_inputs = false,
                                      bool generation_prompt = false) const {
    ChatConversation chat = mftk::core::parse_chat_document(doc, "test");
    return mftk::core::encode_chat(*tok_, ChatFormat::v3, chat.messages, train_on_inputs, generation_prompt,
                                   chat.tools);
  }

  const Tokenizer* tok_ = nullptr;
  int32_t inst_ = 0, end_inst_ = 0, calls_ = 0, tools_ = 0, end_tools_ = 0, results_ = 0, end_results_ = 0;
  static constexpr int32_t bos_ = 1, eos_ = 2;
};

// Concatenates id chunks, and builds the mask alongside: each chunk is a
// target (1) or not (0).
struct Expected {
  Ids ids;
  Mask mask;
  Expected& add(const Ids& part, bool target) {
    ids.insert(ids.end(), part.begin(), part.end());
    mask.insert(mask.end(), part.size(), target ? 1 : 0);
    return *this;
  }
  Expected& add(int32_t id, bool target) { return add(Ids{id}, target); }
};

// Two tools, written the way TRL/OpenAI rows carry them.
const char* kTools =
    R"([{"type": "function", "function": {"name": "calculator", "description": "Evaluate an arithmetic expression",
         "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}},
        {"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
         "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}}])";
// ...and as json.dumps(ensure_ascii=False) prints mistral-common's Tool dump of them.
const char* kToolsJson =
    R"([{"type": "function", "function": {"name": "calculator", "description": "Evaluate an arithmetic expression", )"
    R"("parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}, )"
    R"({"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville", )"
    R"("parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}}}}}])";

}  // namespace

TEST_F(ToolCalls, ParallelCallsWithSystemPromptAndResults) {
  // Arguments once as a JSON string (with a float and odd spacing), once as
  // an object with its keys in a non-sorted order.
  const std::string doc = std::string(R"({"messages": [
      {"role": "system", "content": "Use the tools."},
      {"role": "user", "content": "What is 6*7, and how warm is Zürich?"},
      {"role": "assistant", "content": null, "tool_calls": [
        {"id": "a1B2c3D4e", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\" , \"scale\": 2.50}"}},
        {"id": "Zz9Yy8Xx7", "type": "function", "function": {"name": "get_weather", "arguments": {"unit": "c", "city": "Zürich"}}}]},
      {"role": "tool", "tool_call_id": "Zz9Yy8Xx7", "content": "{\"temp\": 21.0, \"sky\": \"clear\"}"},
      {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "42"},
      {"role": "assistant", "content": "42, and 21 °C in Zürich.  "}],
    "tools": )") + kTools + "}";
  Expected e;
  e.add(bos_, false)
      .add(tools_, false)
      .add(enc(kToolsJson), false)
      .add(end_tools_, false)
      .add(inst_, false)
      .add(enc("Use the tools.\n\nWhat is 6*7, and how warm is Zürich?"), false)  // system on the last user turn
      .add(end_inst_, false)
      .add(calls_, true)
      .add(enc(R"([{"name": "calculator", "arguments": {"expression": "6*7", "scale": 2.5}, "id": "a1B2c3D4e"}, )"
               R"({"name": "get_weather", "arguments": {"unit": "c", "city": "Zürich"}, "id": "Zz9Yy8Xx7"}])"),
           true)
      .add(eos_, true)
      .add(results_, false)
      .add(enc(R"({"content": {"temp": 21.0, "sky": "clear"}, "call_id": "Zz9Yy8Xx7"})"), false)
      .add(end_results_, false)
      .add(results_, false)
      .add(enc(R"({"content": 42, "call_id": "a1B2c3D4e"})"), false)
      .add(end_results_, false)
      .add(enc("42, and 21 °C in Zürich."), true)  // v3 strips trailing spaces of a reply
      .add(eos_, true);
  auto got = encode_doc(doc);
  EXPECT_EQ(got.ids, e.ids);
  EXPECT_EQ(got.loss_mask, e.mask);

  // train_on_inputs: every token is a target except the tool list.
  auto all = encode_doc(doc, /*train_on_inputs=*/true);
  EXPECT_EQ(all.ids, e.ids);
  const size_t list_end = 1 + 1 + enc(kToolsJson).size() + 1;
  Mask expected_all(e.ids.size(), 1);
  std::fill(expected_all.begin() + 1, expected_all.begin() + long(list_end), 0);
  EXPECT_EQ(all.loss_mask, expected_all);
}

TEST_F(ToolCalls, ToolHistoryBeforeTheLastUserTurnIsKeptAndToolsMoveToIt) {
  const std::string doc = std::string(R"({"messages": [
      {"role": "user", "content": "Weather in Oslo?"},
      {"role": "assistant", "tool_calls": [{"id": "k9k9k9k9k", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
      {"role": "tool", "tool_call_id": "k9k9k9k9k", "content": "cloudy, 4 degrees"},
      {"role": "assistant", "content": "Cloudy and 4 degrees."},
      {"role": "user", "content": "And 2+3?"},
      {"role": "assistant", "tool_calls": [{"id": "Q1w2E3r4T", "type": "function", "function": {"name": "calculator", "arguments": {"expression": "2+3"}}}]}],
    "tools": )") + kTools + "}";
  Expected e;
  e.add(bos_, false)
      .add(inst_, false)
      .add(enc("Weather in Oslo?"), false)
      .add(end_inst_, false)
      .add(calls_, true)
      .add(enc(R"([{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "k9k9k9k9k"}])"), true)
      .add(eos_, true)
      .add(results_, false)
      // Not JSON: the content goes in as a JSON string.
      .add(enc(R"({"content": "cloudy, 4 degrees", "call_id": "k9k9k9k9k"})"), false)
      .add(end_results_, false)
      .add(enc("Cloudy and 4 degrees."), true)
      .add(eos_, true)
      .add(tools_, false)  // only before the LAST user turn
      .add(enc(kToolsJson), false)
      .add(end_tools_, false)
      .add(inst_, false)
      .add(enc("And 2+3?"), false)
      .add(end_inst_, false)
      .add(calls_, true)
      .add(enc(R"([{"name": "calculator", "arguments": {"expression": "2+3"}, "id": "Q1w2E3r4T"}])"), true)
      .add(eos_, true);
  auto got = encode_doc(doc);
  EXPECT_EQ(got.ids, e.ids);
  EXPECT_EQ(got.loss_mask, e.mask);
}

TEST_F(ToolCalls, ToolResultContentIsParsedOnlyWhenItIsJson) {
  // Each content string and the JSON value mistral-common writes for it.
  const std::pair<const char*, const char*> cases[] = {
      {R"(sunny, 20 °C)", R"("sunny, 20 °C")"},
      {R"(12)", R"(12)"},
      {R"( [1, 2.50, "東京"] )", R"([1, 2.5, "東京"])"},
      {R"(true)", R"(true)"},
      {R"({"a": 1e-7})", R"({"a": 1e-07})"},
      {R"(not {json})", R"("not {json}")"},
      {R"("quoted")", R"("quoted")"},
      {R"(line1
line2)", R"("line1\nline2")"},
      {"", R"("")"},
  };
  for (auto [content, json] : cases) {
    std::vector<ChatMessage> chat = {{"user", "go"}, {"assistant", ""}, {"tool", content}, {"assistant", "ok"}};
    chat[1].tool_calls = {ToolCall{"abcdefghi", "calculator", JsonValue::object()}};
    chat[2].tool_call_id = "abcdefghi";
    auto got = mftk::core::encode_chat(*tok_, ChatFormat::v3, chat, false);
    Expected e;
    e.add(bos_, false)
        .add(inst_, false)
        .add(enc("go"), false)
        .add(end_inst_, false)
        .add(calls_, true)
        .add(enc(R"([{"name": "calculator", "arguments": {}, "id": "abcdefghi"}])"), true)
        .add(eos_, true)
        .add(results_, false)
        .add(enc(std::string(R"({"content": )") + json + R"(, "call_id": "abcdefghi"})"), false)
        .add(end_results_, false)
        .add(enc("ok"), true)
        .add(eos_, true);
    EXPECT_EQ(got.ids, e.ids) << content;
    EXPECT_EQ(got.loss_mask, e.mask) << content;
  }
}

TEST_F(ToolCalls, LastCallsMayGoWithoutIdAndToolsMayBeAString) {
  // The final message's calls may leave the id out (mistral-common's
  // fine-tuning rule); then the JSON has no "id". Tools stored as a JSON
  // string (as Arrow-backed datasets keep them) read the same.
  std::string tools_as_string = python_json_dumps(JsonValue::string(kTools));
  const std::string doc = R"({"messages": [{"role": "user", "content": "7 times 8"},
      {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"7*8\"}"}}]}],
      "tools": )" + tools_as_string + "}";
  Expected e;
  e.add(bos_, false)
      .add(tools_, false)
      .add(enc(kToolsJson), false)
      .add(end_tools_, false)
      .add(inst_, false)
      .add(enc("7 times 8"), false)
      .add(end_inst_, false)
      .add(calls_, true)
      .add(enc(R"([{"name": "calculator", "arguments": {"expression": "7*8"}}])"), true)
      .add(eos_, true);
  auto got = encode_doc(doc);
  EXPECT_EQ(got.ids, e.ids);
  EXPECT_EQ(got.loss_mask, e.mask);
}

TEST_F(ToolCalls, GenerationPromptWithTools) {
  const std::string doc = std::string(R"({"messages": [{"role": "user", "content": "Weather in Rome?"}], "tools": )") +
                          kTools + "}";
  Expected e;
  e.add(bos_, false).add(tools_, false).add(enc(kToolsJson), false).add(end_tools_, false);
  e.add(inst_, false).add(enc("Weather in Rome?"), false).add(end_inst_, false);
  EXPECT_EQ(encode_doc(doc, false, /*generation_prompt=*/true).ids, e.ids);

  // After the results of the last calls the model continues too.
  const std::string after_results = std::string(R"({"messages": [{"role": "user", "content": "Weather in Rome?"},
      {"role": "assistant", "tool_calls": [{"id": "r0m3r0m3r", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}]},
      {"role": "tool", "tool_call_id": "r0m3r0m3r", "content": "hot"}], "tools": )") + kTools + "}";
  auto got = encode_doc(after_results, false, true);
  Ids expected_tail = enc(R"({"content": "hot", "call_id": "r0m3r0m3r"})");
  expected_tail.insert(expected_tail.begin(), results_);
  expected_tail.push_back(end_results_);
  ASSERT_GE(got.ids.size(), expected_tail.size());
  EXPECT_EQ(Ids(got.ids.end() - long(expected_tail.size()), got.ids.end()), expected_tail);
}

TEST_F(ToolCalls, ModelOutputRoundTripsIntoAChatRow) {
  // What generate parses after [TOOL_CALLS], turned into the assistant
  // message a chat row holds, reads back as the same calls.
  auto calls = mftk::core::tool_calls_from_output(
      R"([{"name": "calculator", "arguments": {"expression": "6*7"}, "id": "a1B2c3D4e"}])");
  ASSERT_TRUE(calls.has_value());
  const std::string message = python_json_dumps(mftk::core::tool_calls_message_json(*calls));
  EXPECT_EQ(message, R"({"role": "assistant", "tool_calls": [{"id": "a1B2c3D4e", "type": "function", )"
                     R"("function": {"name": "calculator", "arguments": {"expression": "6*7"}}}]})");
  ChatConversation back =
      mftk::core::parse_chat_document("[{\"role\": \"user\", \"content\": \"q\"}, " + message + "]", "test");
  ASSERT_EQ(back.messages.size(), 2u);
  ASSERT_EQ(back.messages[1].tool_calls.size(), 1u);
  EXPECT_EQ(back.messages[1].tool_calls[0].id, "a1B2c3D4e");
  EXPECT_EQ(python_json_dumps(back.messages[1].tool_calls[0].arguments), R"({"expression": "6*7"})");
  // Not a list of {"name", "arguments": {...}}: no calls.
  for (const char* bad : {"", "[]", "{\"name\": \"x\"}", "[{\"name\": \"x\"}]", "[{\"name\": 1, \"arguments\": {}}]",
                          "[{\"name\": \"x\", \"arguments\": \"{}\"}]", "[{\"name\": \"x\", \"arguments\": {}}"})
    EXPECT_FALSE(mftk::core::tool_calls_from_output(bad).has_value()) << bad;
}

// ------------------------------------------------------------ bad rows ----

namespace {

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    path_ = fs::temp_directory_path() / ("mftk_tool_calls_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter()++) + ".jsonl");
    std::ofstream(path_) << text;
  }
  ~TempFile() { fs::remove(path_); }
  std::string path() const { return path_.string(); }

 private:
  static int& counter() {
    static int n = 0;
    return n;
  }
  fs::path path_;
};

const char* kGoodRow =
    R"({"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]})";

}  // namespace

TEST_F(ToolCalls, EveryBadRowIsRefusedWithItsLineAndReason) {
  struct Case {
    std::string row, message, reason;
  };
  const std::string user = R"({"role": "user", "content": "q"})";
  auto call = [](const std::string& id, const std::string& arguments) {
    return R"({"role": "assistant", "tool_calls": [{"id": ")" + id +
           R"(", "type": "function", "function": {"name": "calculator", "arguments": )" + arguments + "}}]}";
  };
  auto row = [](std::initializer_list<std::string> messages) {
    std::string out = R"({"messages": [)";
    bool first = true;
    for (const auto& m : messages) {
      out += (first ? "" : ", ") + m;
      first = false;
    }
    return out + "]}";
  };
  const std::string result_a = R"({"role": "tool", "tool_call_id": "abcdefghi", "content": "4"})";
  const std::string reply = R"({"role": "assistant", "content": "4"})";
  const std::vector<Case> cases = {
      {row({user, call("abc", "{}")}), "tool call id 'abc' is not 9 letters or digits", "bad conversation"},
      {row({user, call("abcdefgh_", "{}")}), "tool call id 'abcdefgh_' is not 9 letters or digits",
       "bad conversation"},
      {row({user, call("abcdefghi", "{}"), R"({"role": "tool", "tool_call_id": "zzzzzzzzz", "content": "4"})",
            reply}),
       "tool_call_id 'zzzzzzzzz' matches no earlier tool call", "bad conversation"},
      {row({user, R"({"role": "assistant", "content": "Let me compute.", "tool_calls": [{"id": "abcdefghi", "type": "function", "function": {"name": "calculator", "arguments": {}}}]})"}),
       "an assistant message has both content and tool calls", "bad conversation"},
      {row({user, call("abcdefghi", "3")}),
       "messages[1].tool_calls[0].function.arguments is a JSON number, neither an object nor a string holding one",
       "bad tool call"},
      {row({user, call("abcdefghi", R"("x = 1")")}),
       "messages[1].tool_calls[0].function.arguments is a string that does not hold a JSON object",
       "bad tool call"},
      {row({user, call("abcdefghi", R"("[1, 2]")")}), "does not hold a JSON object (it holds a JSON array)",
       "bad tool call"},
      {row({user, call("abcdefghi", "{}"), reply}), "expected the result of tool call 'abcdefghi'",
       "bad conversation"},
      {row({user, call("abcdefghi", "{}"), result_a, result_a, reply}),
       "a second result for tool call 'abcdefghi'", "bad conversation"},
      {row({user, R"({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "calculator", "arguments": {}}}]})",
            result_a, reply}),
       "tool call 0 ('calculator') has no id", "bad conversation"},
      {row({user, call("abcdefghi", "{}"), R"({"role": "tool", "content": "4"})", reply}),
       "messages[2] has no 'tool_call_id'", "missing field"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": {"x": 1}})",
       "tools is a JSON object, not a list of tools", "wrong field type"},
      {R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": [{"type": "function", "function": {"name": "bad name"}}]})",
       "the function name 'bad name' is not 1 to 64 letters", "bad conversation"},
  };
  for (const Case& c : cases) {
    TempFile file(std::string(kGoodRow) + "\n" + c.row + "\n");
    mftk::core::DatasetSpec spec;
    spec.path = file.path();
    spec.type = mftk::core::DatasetType::chat;
    mftk::core::DatasetFileStats stats;
    try {
      mftk::core::load_dataset(spec, *tok_, ChatFormat::v3, false, /*skip_bad_rows=*/false, stats);
      ADD_FAILURE() << "accepted: " << c.row;
    } catch (const mftk::UsageError& e) {
      // The message names the file and line of the row.
      EXPECT_NE(std::string(e.what()).find(file.path() + ":2: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
    // With skip_bad_rows the row is counted under its reason and the good row stays.
    auto examples = mftk::core::load_dataset(spec, *tok_, ChatFormat::v3, false, /*skip_bad_rows=*/true, stats);
    EXPECT_EQ(examples.size(), 1u) << c.row;
    EXPECT_EQ(stats.skipped, (std::map<std::string, int64_t>{{c.reason, 1}})) << c.row;
  }
}

TEST_F(ToolCalls, V1TokenizerRefusesToolsEvenWhenSkippingBadRows) {
  const std::string tool_row =
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], )"
      R"("tools": [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]})";
  TempFile file(std::string(kGoodRow) + "\n" + tool_row + "\n");
  mftk::core::DatasetSpec spec;
  spec.path = file.path();
  mftk::core::DatasetFileStats stats;
  for (bool skip : {false, true}) {
    try {
      mftk::core::load_dataset(spec, *v1(), ChatFormat::v1, false, skip, stats);
      ADD_FAILURE() << "a v1 tokenizer accepted a row with tools (skip_bad_rows " << skip << ")";
    } catch (const mftk::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(file.path() + ":2: the row has tools: the v1 chat format"),
                std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("cannot encode tools"), std::string::npos) << e.what();
    }
  }
  // The encoder itself refuses too.
  std::vector<ChatMessage> chat = {{"user", "q"}, {"assistant", ""}};
  chat[1].tool_calls = {ToolCall{"abcdefghi", "calculator", JsonValue::object()}};
  EXPECT_THROW(mftk::core::encode_chat(*v1(), ChatFormat::v1, chat, false), mftk::UsageError);
}

TEST_F(ToolCalls, TokenizeCommandPrintsIdsAndMaskAndExitsTwoForV1) {
  const std::string mftk = (fs::path(MFTK_BINARY_DIR) / "bin" / "mftk").string();
  if (!fs::exists(mftk)) GTEST_SKIP() << "no mftk binary at " << mftk;
  const std::string doc = std::string(R"({"messages": [{"role": "user", "content": "7 times 8"},
      {"role": "assistant", "tool_calls": [{"id": "a1B2c3D4e", "function": {"name": "calculator", "arguments": {"expression": "7*8"}}}]}],
      "tools": )") + kTools + "}";
  TempFile chat(doc);
  TempFile out("");
  auto run = [&](const std::string& tokenizer) {
    const std::string cmd = mftk + " tokenize --model " + tokenizer + " --chat-json " + chat.path() + " > " +
                            out.path() + " 2>&1";
    const int status = std::system(cmd.c_str());
    std::ifstream in(out.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return std::make_pair(WIFEXITED(status) ? WEXITSTATUS(status) : -1, text);
  };
  auto [code, text] = run(v3_tokenizer_path());
  ASSERT_EQ(code, 0) << text;
  auto printed = python_json_loads(text);
  ASSERT_TRUE(printed.has_value()) << text;
  Expected e;
  e.add(bos_, false).add(tools_, false).add(enc(kToolsJson), false).add(end_tools_, false);
  e.add(inst_, false).add(enc("7 times 8"), false).add(end_inst_, false);
  e.add(calls_, true)
      .add(enc(R"([{"name": "calculator", "arguments": {"expression": "7*8"}, "id": "a1B2c3D4e"}])"), true)
      .add(eos_, true);
  Ids ids;
  Mask mask;
  for (const JsonValue& v : printed->find("ids")->items()) ids.push_back(std::stoi(v.text()));
  for (const JsonValue& v : printed->find("label_mask")->items()) mask.push_back(uint8_t(std::stoi(v.text())));
  EXPECT_EQ(ids, e.ids);
  EXPECT_EQ(mask, e.mask);

  auto [v1_code, v1_text] = run(v1_tokenizer_path());
  EXPECT_EQ(v1_code, 2) << v1_text;
  EXPECT_NE(v1_text.find("cannot encode tools"), std::string::npos) << v1_text;
}

// ------------------------------------------- tiny tokenizers with tools ----

TEST(ToolTokens, TinyTokenizerCarriesTheV3ToolControlsWhereMistralHasThem) {
  const std::string corpus = (fs::path(MFTK_SOURCE_DIR) / "data/tokenizer/corpus.txt").string();
  const fs::path dir = fs::temp_directory_path() / ("mftk_tool_tokens_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string with_tools = (dir / "tools.model").string(), without = (dir / "plain.model").string();
  mftk::core::train_sentencepiece(corpus, with_tools, 400, /*mistral_v3_controls=*/true, /*tool_controls=*/true);
  mftk::core::train_sentencepiece(corpus, without, 400, true, false);
  auto tok = Tokenizer::load(with_tools);
  auto plain = Tokenizer::load(without);
  fs::remove_all(dir);

  // Mistral v0.3's layout: <unk> <s> </s>, then the seven controls, then the 256 bytes.
  const char* pieces[] = {"<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                          "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"};
  for (int id = 0; id < 10; ++id) {
    EXPECT_EQ(tok->piece(id), pieces[id]) << id;
    EXPECT_EQ(tok->type(id), id == 0 ? mftk::PieceType::unknown : mftk::PieceType::control) << id;
  }
  EXPECT_EQ(tok->piece(10), "<0x00>");
  EXPECT_EQ(tok->vocab_size(), 400);
  EXPECT_EQ(mftk::core::detect_chat_format(*tok), ChatFormat::v3);
  EXPECT_NO_THROW(mftk::core::check_tools_supported(*tok, ChatFormat::v3));

  // A call encodes with the control ids, the JSON as plain text.
  std::vector<ChatMessage> chat = {{"user", "7 times 8"}, {"assistant", ""}};
  chat[1].tool_calls = {ToolCall{"", "calculator", *python_json_loads(R"({"a": 7, "b": 8})")}};
  auto encoded = mftk::core::encode_chat(*tok, ChatFormat::v3, chat, false);
  Ids expected = {1, 3};
  for (int32_t id : tok->encode("7 times 8")) expected.push_back(id);
  expected.push_back(4);
  expected.push_back(5);
  for (int32_t id : tok->encode(R"([{"name": "calculator", "arguments": {"a": 7, "b": 8}}])")) expected.push_back(id);
  expected.push_back(2);
  EXPECT_EQ(encoded.ids, expected);

  // Without the tool pieces a v3 tokenizer still chats, but refuses tools.
  EXPECT_EQ(mftk::core::detect_chat_format(*plain), ChatFormat::v3);
  try {
    mftk::core::encode_chat(*plain, ChatFormat::v3, chat, false);
    ADD_FAILURE() << "a tokenizer without [TOOL_CALLS] encoded a tool call";
  } catch (const mftk::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("has no CONTROL piece [TOOL_CALLS]"), std::string::npos) << e.what();
    EXPECT_NE(e.hint().find("--tool-tokens"), std::string::npos) << e.hint();
  }
  // The tool pieces without the [INST] ones make no sense.
  EXPECT_THROW(mftk::core::train_sentencepiece(corpus, with_tools, 400, false, true), mftk::UsageError);
}

// The chat template `mftk init` writes (GGUF exports copy it) must render
// what the v3 encoder builds. Rendered here by jinja2 the way transformers
// sets it up (tojson = json.dumps(ensure_ascii=False)); the expected text
// is the rules at text level: each control piece, then " " + the JSON,
// which a sentencepiece tokenizer encodes as the "▁"-prefixed JSON alone.
TEST(ToolTokens, InitChatTemplateRendersToolsAsTheEncoderDoes) {
  if (std::system("python3 -c 'import jinja2' > /dev/null 2>&1") != 0) GTEST_SKIP() << "no python3 jinja2";
  const fs::path dir = fs::temp_directory_path() / ("mftk_tool_template_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  mftk::core::InitOptions o;
  o.preset = "tiny";
  o.out = (dir / "model").string();
  o.corpus = (fs::path(MFTK_SOURCE_DIR) / "data/tokenizer/corpus.txt").string();
  o.tokenizer_vocab = 400;
  o.tool_controls = true;
  o.overrides = {{"num_hidden_layers", 1}, {"hidden_size", 32}, {"intermediate_size", 64}};
  mftk::core::write_random_checkpoint(o);
  {
    std::ofstream script(dir / "render.py");
    script << R"PY(import json, sys, jinja2
cfg = json.load(open(sys.argv[1]))
env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
    x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
def fail(message): raise Exception(message)
env.globals["raise_exception"] = fail
tools = [{"type": "function", "function": {"name": "calculator", "description": "Math",
          "parameters": {"type": "object", "properties": {"b": {"type": "number"}, "a": {"type": "number"}}}}},
         {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
messages = [{"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "6*7 and Zürich?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "a1B2c3D4e", "type": "function", "function": {"name": "calculator", "arguments": {"a": 6, "b": 7.0}}},
                {"id": "Zz9Yy8Xx7", "type": "function", "function": {"name": "lookup", "arguments": {"city": "Zürich"}}}]},
            {"role": "tool", "tool_call_id": "a1B2c3D4e", "content": "sunny, 20 °C"},
            {"role": "tool", "tool_call_id": "Zz9Yy8Xx7", "content": "42"},
            {"role": "assistant", "content": "Done."}]
text = env.from_string(cfg["chat_template"]).render(messages=messages, tools=tools, bos_token="<s>", eos_token="</s>")
open(sys.argv[2], "w", encoding="utf-8").write(text)
)PY";
  }
  const std::string cmd = "python3 " + (dir / "render.py").string() + " " +
                          (dir / "model" / "tokenizer_config.json").string() + " " + (dir / "out.txt").string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(dir / "out.txt");
  const std::string rendered((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove_all(dir);
  const std::string expected =
      "<s>[INST] Hi[/INST] Hello</s>"
      R"([AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "calculator", "description": "Math", )"
      R"("parameters": {"type": "object", "properties": {"b": {"type": "number"}, "a": {"type": "number"}}}}}, )"
      R"({"type": "function", "function": {"name": "lookup", "description": "", "parameters": {"type": "object"}}}])"
      "[/AVAILABLE_TOOLS][INST] Use tools.\n\n6*7 and Zürich?[/INST]"
      R"([TOOL_CALLS] [{"name": "calculator", "arguments": {"a": 6, "b": 7.0}, "id": "a1B2c3D4e"}, )"
      R"({"name": "lookup", "arguments": {"city": "Zürich"}, "id": "Zz9Yy8Xx7"}]</s>)"
      R"([TOOL_RESULTS] {"content": "sunny, 20 °C", "call_id": "a1B2c3D4e"}[/TOOL_RESULTS])"
      R"([TOOL_RESULTS] {"content": 42, "call_id": "Zz9Yy8Xx7"}[/TOOL_RESULTS])"
      " Done.</s>";
  EXPECT_EQ(rendered, expected);
}
