// JSONL datasets -> examples: each row type against the tokenizer API
// (expected ids are assembled here from encode / encode_chat / BOS / EOS),
// bad rows, the eval split and the prepared-data cache. Tokenizers are
// trained in the test (v1-style without controls, v3-style with [INST]).
#include <gtest/gtest.h>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <fstream>
#include <random>
#include <set>
#include <sstream>

#include "batching.h"
#include "chat_template.h"
#include "dataset.h"
#include "utf8.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"
#include "recipe.h"
#include "tokenizer_train.h"

namespace fs = std::filesystem;
using mftk::Example;
using mftk::Tokenizer;
using mftk::UsageError;
using mftk::core::CacheMode;
using mftk::core::ChatFormat;
using mftk::core::ChatMessage;
using mftk::core::PreparedData;
using mftk::core::Recipe;
using Ids = std::vector<int32_t>;
using Mask = std::vector<uint8_t>;

namespace {

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = fs::temp_directory_path() / ("mftk_dataset_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

std::string training_corpus() {
  const char* subjects[] = {"The cat", "A small dog", "My neighbour", "The old sailor", "Every student", "You"};
  const char* verbs[] = {"reads", "watches", "paints", "finds", "remembers", "answers"};
  const char* objects[] = {"the red book", "a quiet river", "seven green apples", "the morning news",
                           "an empty café", "the question"};
  std::ostringstream out;
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 6; ++j)
      for (int k = 0; k < 6; ++k)
        out << subjects[i] << " " << verbs[j] << " " << objects[k] << " at " << (i * 36 + j * 6 + k)
            << " o'clock. What is it? Tell me a story, please!\n";
  return out.str();
}

// Both trained tokenizers, made once for the whole test program (the
// model files are deleted once loaded; the tokenizers live in memory).
struct Tokenizers {
  std::shared_ptr<Tokenizer> v1;  // no control pieces: mistral_v1 format
  std::shared_ptr<Tokenizer> v3;  // [INST] / [/INST] control pieces: mistral_v3 format
};

const Tokenizers& tokenizers() {
  static const Tokenizers made = [] {
    TempDir dir;
    write_file(dir.path() / "corpus.txt", training_corpus());
    const std::string corpus = (dir.path() / "corpus.txt").string();
    mftk::core::train_sentencepiece(corpus, (dir.path() / "v1.model").string(), 360, false);
    mftk::core::train_sentencepiece(corpus, (dir.path() / "v3.model").string(), 360, true);
    return Tokenizers{Tokenizer::load((dir.path() / "v1.model").string()),
                      Tokenizer::load((dir.path() / "v3.model").string())};
  }();
  return made;
}

Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

// The ids whose mask is 1, in order.
Ids trained_ids(const Example& e) {
  Ids out;
  for (size_t t = 0; t < e.ids.size(); ++t)
    if (e.loss_mask[t]) out.push_back(e.ids[t]);
  return out;
}

// A recipe with [[datasets]] tables and [data] lines, parsed like `mftk run` would.
Recipe make_recipe(const std::string& datasets_toml, const std::string& data_toml,
                   const std::string& training_toml = "") {
  std::string text = datasets_toml + "\n[data]\n" + data_toml + "\n[training]\n" + training_toml + "\n";
  return Recipe::parse(text, "recipe.toml");
}

std::string dataset_table(const fs::path& path, const std::string& type, const std::string& extra = "") {
  return "[[datasets]]\npath = \"" + path.string() + "\"\ntype = \"" + type + "\"\n" + extra + "\n";
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const UsageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("NOT A UsageError: ") + e.what();
  }
  return "no error";
}

// Captures what the default spdlog logger writes while alive.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink));
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return stream_.str(); }

 private:
  std::shared_ptr<spdlog::logger> previous_;
  std::ostringstream stream_;
};

class Dataset : public ::testing::Test {
 protected:
  void SetUp() override {
    v1_ = tokenizers().v1.get();
    v3_ = tokenizers().v3.get();
    prepared_ = (dir_.path() / "prepared").string();
  }
  std::string data_toml(const std::string& extra = "") const {
    return "dataset_prepared_path = \"" + prepared_ + "\"\n" + extra;
  }
  PreparedData prepare(const Recipe& recipe, const Tokenizer& tok, CacheMode mode = CacheMode::off) const {
    return mftk::core::prepare_data(recipe, tok, mode);
  }

  TempDir dir_;
  std::string prepared_;
  const Tokenizer* v1_ = nullptr;
  const Tokenizer* v3_ = nullptr;
};

}  // namespace

// ---------------------------------------------------------------- row types --

TEST_F(Dataset, InstructionRowsAreChatConversations) {
  const fs::path file = dir_.path() / "instr.jsonl";
  write_file(file,
             R"({"instruction": "Tell me a story", "output": "The cat reads the red book."})" "\n"
             R"({"instruction": "What is it?", "input": "seven green apples", "output": "Apples.", "system": "You answer."})" "\n"
             R"({"instruction": "Read", "input": "", "output": "The old sailor", "system": null})" "\n");
  for (const Tokenizer* tok : {v1_, v3_}) {
    const ChatFormat format = mftk::core::detect_chat_format(*tok);
    ASSERT_EQ(format, tok == v3_ ? ChatFormat::v3 : ChatFormat::v1);
    PreparedData data = prepare(make_recipe(dataset_table(file, "instruction"), data_toml()), *tok);
    ASSERT_EQ(data.train.size(), 3u);
    EXPECT_TRUE(data.eval.empty());
    EXPECT_EQ(data.stats.chat_format, mftk::core::chat_format_name(format));
    // The rule of dataset.h: [system?], user = instruction (+ "\n\n" + input), assistant = output.
    const std::vector<std::vector<ChatMessage>> conversations = {
        {{"user", "Tell me a story"}, {"assistant", "The cat reads the red book."}},
        {{"system", "You answer."}, {"user", "What is it?\n\nseven green apples"}, {"assistant", "Apples."}},
        {{"user", "Read"}, {"assistant", "The old sailor"}},
    };
    const char* outputs[] = {"The cat reads the red book.", "Apples.", "The old sailor"};
    for (size_t i = 0; i < 3; ++i) {
      auto expected = mftk::core::encode_chat(*tok, format, conversations[i], false);
      EXPECT_EQ(data.train[i].ids, expected.ids) << i;
      EXPECT_EQ(data.train[i].loss_mask, expected.loss_mask) << i;
      // Independently of encode_chat: the loss is on the answer and its EOS only.
      EXPECT_EQ(trained_ids(data.train[i]), cat({tok->encode(outputs[i]), {tok->eos_id()}})) << i;
      EXPECT_EQ(data.train[i].ids.front(), tok->bos_id());
    }
    const auto& f = data.stats.files.at(0);
    EXPECT_EQ(f.rows, 3);
    EXPECT_EQ(f.examples, 3);
    int64_t tokens = 0, trainable = 0;
    for (const Example& e : data.train) {
      tokens += int64_t(e.ids.size());
      trainable += int64_t(trained_ids(e).size());
    }
    EXPECT_EQ(f.tokens, tokens);
    EXPECT_EQ(f.trainable_tokens, trainable);
  }
}

TEST_F(Dataset, TrainOnInputsPutsLossOnEveryToken) {
  const fs::path file = dir_.path() / "instr.jsonl";
  write_file(file, R"({"instruction": "Tell me a story", "output": "The cat reads."})" "\n");
  PreparedData data =
      prepare(make_recipe(dataset_table(file, "instruction"), data_toml("train_on_inputs = true")), *v3_);
  ASSERT_EQ(data.train.size(), 1u);
  auto expected = mftk::core::encode_chat(
      *v3_, ChatFormat::v3, {{"user", "Tell me a story"}, {"assistant", "The cat reads."}}, true);
  EXPECT_EQ(data.train[0].ids, expected.ids);
  EXPECT_EQ(data.train[0].loss_mask, Mask(expected.ids.size(), 1));
}

TEST_F(Dataset, CustomInstructionFieldNames) {
  const fs::path file = dir_.path() / "renamed.jsonl";
  write_file(file, R"({"q": "Tell me", "ctx": "a story", "a": "The cat reads.", "sys": "Be brief."})" "\n");
  PreparedData data = prepare(
      make_recipe(dataset_table(file, "instruction",
                                "field_instruction = \"q\"\nfield_input = \"ctx\"\nfield_output = \"a\"\n"
                                "field_system = \"sys\""),
                  data_toml()),
      *v1_);
  auto expected = mftk::core::encode_chat(
      *v1_, ChatFormat::v1, {{"system", "Be brief."}, {"user", "Tell me\n\na story"}, {"assistant", "The cat reads."}},
      false);
  ASSERT_EQ(data.train.size(), 1u);
  EXPECT_EQ(data.train[0].ids, expected.ids);
  EXPECT_EQ(data.train[0].loss_mask, expected.loss_mask);
  // `field` belongs to chat and completion rows.
  std::string msg = error_of([&] {
    mftk::core::data_options_from_recipe(make_recipe(dataset_table(file, "instruction", "field = \"x\""), data_toml()));
  });
  EXPECT_NE(msg.find("[datasets[0]] field"), std::string::npos) << msg;
}

TEST_F(Dataset, ChatRowsMatchEncodeChat) {
  const fs::path file = dir_.path() / "chat.jsonl";
  write_file(file,
             R"({"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": "A book."}]})" "\n"
             R"({"messages": [{"role": "system", "content": "You answer."}, {"role": "user", "content": "Hi"},)"
             R"( {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "A story?"},)"
             R"( {"role": "assistant", "content": "The cat reads."}], "extra": 1})" "\n");
  const std::vector<std::vector<ChatMessage>> conversations = {
      {{"user", "What is it?"}, {"assistant", "A book."}},
      {{"system", "You answer."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "A story?"},
       {"assistant", "The cat reads."}},
  };
  for (const Tokenizer* tok : {v1_, v3_}) {
    const ChatFormat format = mftk::core::detect_chat_format(*tok);
    PreparedData data = prepare(make_recipe(dataset_table(file, "chat"), data_toml()), *tok);
    ASSERT_EQ(data.train.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
      auto expected = mftk::core::encode_chat(*tok, format, conversations[i], false);
      EXPECT_EQ(data.train[i].ids, expected.ids);
      EXPECT_EQ(data.train[i].loss_mask, expected.loss_mask);
    }
    // Both replies and their EOS, nothing else.
    EXPECT_EQ(trained_ids(data.train[1]),
              cat({tok->encode("Hello."), {tok->eos_id()}, tok->encode("The cat reads."), {tok->eos_id()}}));
  }
  // `field` renames the messages list.
  const fs::path renamed = dir_.path() / "conv.jsonl";
  write_file(renamed, R"({"conversation": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]})" "\n");
  PreparedData data =
      prepare(make_recipe(dataset_table(renamed, "chat", "field = \"conversation\""), data_toml()), *v3_);
  ASSERT_EQ(data.train.size(), 1u);
  EXPECT_EQ(data.train[0].ids,
            mftk::core::encode_chat(*v3_, ChatFormat::v3, {{"user", "Hi"}, {"assistant", "Yo."}}, false).ids);
}

TEST_F(Dataset, CompletionRowsAreBosTextEosWithLossEverywhere) {
  const fs::path file = dir_.path() / "text.jsonl";
  write_file(file, "{\"text\": \"The cat reads the red book.\"}\r\n\n   \n{\"text\": \"Seven green apples\"}\n");
  for (const std::string& train_on_inputs : {"false", "true"}) {
    PreparedData data = prepare(
        make_recipe(dataset_table(file, "completion"), data_toml("train_on_inputs = " + train_on_inputs)), *v1_);
    ASSERT_EQ(data.train.size(), 2u);
    EXPECT_EQ(data.train[0].ids, cat({{v1_->bos_id()}, v1_->encode("The cat reads the red book."), {v1_->eos_id()}}));
    EXPECT_EQ(data.train[1].ids, cat({{v1_->bos_id()}, v1_->encode("Seven green apples"), {v1_->eos_id()}}));
    for (const Example& e : data.train) EXPECT_EQ(e.loss_mask, Mask(e.ids.size(), 1));
    EXPECT_EQ(data.stats.files[0].rows, 2);
    EXPECT_EQ(data.stats.files[0].blank_lines, 2);
    EXPECT_EQ(data.stats.chat_format, "");  // no chat rows, no chat format
  }
  const fs::path renamed = dir_.path() / "content.jsonl";
  write_file(renamed, "{\"content\": \"an empty café\"}\n");
  PreparedData data = prepare(make_recipe(dataset_table(renamed, "completion", "field = \"content\""), data_toml()), *v3_);
  ASSERT_EQ(data.train.size(), 1u);
  EXPECT_EQ(data.train[0].ids, cat({{v3_->bos_id()}, v3_->encode("an empty café"), {v3_->eos_id()}}));
}

// ---------------------------------------------------------------- bad data --

TEST(DatasetUtf8, FindsTheFirstBadByte) {
  using mftk::core::find_invalid_utf8;
  EXPECT_EQ(find_invalid_utf8("plain ascii"), std::nullopt);
  EXPECT_EQ(find_invalid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"), std::nullopt);  // é € 😀
  EXPECT_EQ(find_invalid_utf8("\xF4\x8F\xBF\xBF"), std::nullopt);                       // U+10FFFF
  EXPECT_EQ(find_invalid_utf8("ab\xFF"), 2u);                  // never valid
  EXPECT_EQ(find_invalid_utf8("a\x80"), 1u);                   // stray continuation byte
  EXPECT_EQ(find_invalid_utf8("a\xC3"), 1u);                   // truncated sequence
  EXPECT_EQ(find_invalid_utf8("\xC3\x28"), 0u);                // bad continuation
  EXPECT_EQ(find_invalid_utf8("xy\xC0\xAF"), 2u);              // overlong '/'
  EXPECT_EQ(find_invalid_utf8("\xE0\x80\xAF"), 0u);            // overlong, 3 bytes
  EXPECT_EQ(find_invalid_utf8("\xED\xA0\x80"), 0u);            // surrogate U+D800
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0u);        // U+110000
}

TEST_F(Dataset, EveryBadRowNamesFileLineAndProblem) {
  struct Case {
    std::string type;
    std::string row;
    std::string problem;  // expected in the message
    std::string reason;   // stats key with skip_bad_rows
  };
  const std::vector<Case> cases = {
      {"instruction", R"({"instruction": "Hi", "output": "Yo")", "malformed JSON", "malformed JSON"},
      {"instruction", R"(["Hi", "Yo"])", "not an object", "not a JSON object"},
      {"instruction", R"({"instruction": "Hi"})", "missing field 'output'", "missing field"},
      {"instruction", R"({"output": "Yo"})", "missing field 'instruction'", "missing field"},
      {"instruction", R"({"instruction": 3, "output": "Yo"})", "field 'instruction' is a JSON number, not a string",
       "wrong field type"},
      {"instruction", R"({"instruction": "Hi", "input": ["x"], "output": "Yo"})", "field 'input' is a JSON array",
       "wrong field type"},
      {"instruction", R"({"instruction": "Hi", "output": ""})", "(the response) is empty", "empty response"},
      {"instruction", "{\"instruction\": \"H\xC3\x28i\", \"output\": \"Yo\"}", "invalid UTF-8 at byte 19",
       "invalid UTF-8"},
      {"chat", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]})",
       "messages[1] has unknown role 'bot'", "unknown role"},
      {"chat", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]})",
       "messages[1] is an empty assistant message", "empty response"},
      {"chat", R"({"messages": [{"role": "user", "content": "Hi"}]})", "no assistant message", "empty response"},
      {"chat", R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "Yo"}]})",
       "messages[0] has no 'content'", "missing field"},
      {"chat", R"({"messages": "Hi"})", "field 'messages' is a JSON string, not a list", "wrong field type"},
      {"chat", R"({"turns": []})", "missing field 'messages'", "missing field"},
      {"chat", R"({"messages": [{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "Hi"}]})",
       "expected role 'user'", "bad conversation"},
      {"completion", R"({"text": null})", "field 'text' is a JSON null", "wrong field type"},
      {"completion", R"({"text": ""})", "field 'text' is empty", "empty response"},
  };
  const std::map<std::string, std::string> good = {
      {"instruction", R"({"instruction": "Hi", "output": "Yo"})"},
      {"chat", R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]})"},
      {"completion", R"({"text": "Hi"})"},
  };
  int index = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.row);
    // The bad row is on physical line 3: a good row, a blank line, the bad one.
    const fs::path file = dir_.path() / ("bad" + std::to_string(index++) + ".jsonl");
    write_file(file, good.at(c.type) + "\n\n" + c.row + "\n" + good.at(c.type) + "\n");
    const std::string msg =
        error_of([&] { prepare(make_recipe(dataset_table(file, c.type), data_toml()), *v3_); });
    EXPECT_EQ(msg.rfind(file.string() + ":3: ", 0), 0u) << msg;
    EXPECT_NE(msg.find(c.problem), std::string::npos) << msg;

    // skip_bad_rows: the two good rows survive and the bad one is counted under its reason.
    PreparedData data =
        prepare(make_recipe(dataset_table(file, c.type), data_toml("skip_bad_rows = true")), *v3_);
    EXPECT_EQ(data.train.size(), 2u);
    const auto& f = data.stats.files.at(0);
    EXPECT_EQ(f.rows, 3);
    EXPECT_EQ(f.examples, 2);
    EXPECT_EQ(f.skipped, (std::map<std::string, int64_t>{{c.reason, 1}}));
    EXPECT_EQ(data.stats.skipped_total(), 1);
  }
}

TEST_F(Dataset, SkippedRowsAreCountedPerReasonAndReported) {
  const fs::path file = dir_.path() / "mixed.jsonl";
  write_file(file,
             "{\"instruction\": \"Hi\", \"output\": \"Yo\"}\n"
             "{\"instruction\": \"Hi\", \"output\": \"\"}\n"
             "not json\n"
             "{\"instruction\": \"Hi\", \"output\": \"\"}\n"
             "{\"output\": \"Yo\"}\n"
             "{\"instruction\": \"Hi \xFF\", \"output\": \"Yo\"}\n"
             "{\"instruction\": \"Hello\", \"output\": \"Yo\"}\n");
  LogCapture log;
  PreparedData data =
      prepare(make_recipe(dataset_table(file, "instruction"), data_toml("skip_bad_rows = true")), *v1_);
  EXPECT_EQ(data.train.size(), 2u);
  const auto& f = data.stats.files.at(0);
  EXPECT_EQ(f.rows, 7);
  EXPECT_EQ(f.skipped, (std::map<std::string, int64_t>{
                           {"empty response", 2}, {"malformed JSON", 1}, {"missing field", 1}, {"invalid UTF-8", 1}}));
  // Never silent: each skipped row is logged, and the summary names the counts.
  EXPECT_NE(log.text().find(file.string() + ":3: malformed JSON"), std::string::npos) << log.text();
  EXPECT_NE(log.text().find("skipped 5 of 7 rows"), std::string::npos) << log.text();
  const auto lines = mftk::core::describe_data(data);
  EXPECT_NE(lines.at(0).find("skipped 5 bad rows: empty response 2, invalid UTF-8 1, malformed JSON 1, "
                             "missing field 1"),
            std::string::npos)
      << lines.at(0);
}

// Found by fuzz_jsonl_chat: a number too large for a double made the JSON
// parser throw out_of_range, which escaped as a bare library error with no
// file or line. It is a malformed row like any other.
TEST_F(Dataset, ANumberTooLargeForADoubleIsAMalformedRow) {
  const fs::path file = dir_.path() / "overflow.jsonl";
  write_file(file,
             "{\"instruction\": \"Hi\", \"output\": \"Yo\"}\n"
             "{\"instruction\": \"Hi\", \"output\": \"Yo\", \"weight\": 1e400}\n");
  std::string msg = error_of([&] { prepare(make_recipe(dataset_table(file, "instruction"), data_toml()), *v1_); });
  EXPECT_NE(msg.find(file.string() + ":2: malformed JSON: number overflow"), std::string::npos) << msg;
  LogCapture log;
  PreparedData data =
      prepare(make_recipe(dataset_table(file, "instruction"), data_toml("skip_bad_rows = true")), *v1_);
  EXPECT_EQ(data.train.size(), 1u);
  EXPECT_EQ(data.stats.files.at(0).skipped, (std::map<std::string, int64_t>{{"malformed JSON", 1}}));
}

TEST_F(Dataset, EmptyOrAllBadFilesAreErrors) {
  const fs::path empty = dir_.path() / "empty.jsonl";
  write_file(empty, "");
  std::string msg = error_of([&] { prepare(make_recipe(dataset_table(empty, "chat"), data_toml()), *v3_); });
  EXPECT_NE(msg.find(empty.string() + ":1: the file has no rows"), std::string::npos) << msg;
  const fs::path blank = dir_.path() / "blank.jsonl";
  write_file(blank, "\n  \n\n");
  msg = error_of([&] {
    prepare(make_recipe(dataset_table(blank, "chat"), data_toml("skip_bad_rows = true")), *v3_);
  });
  EXPECT_NE(msg.find(blank.string() + ":3: the file has no rows"), std::string::npos) << msg;
  const fs::path all_bad = dir_.path() / "all_bad.jsonl";
  write_file(all_bad, "{\"text\": 1}\n{\"text\": 2}\n");
  msg = error_of([&] {
    prepare(make_recipe(dataset_table(all_bad, "completion"), data_toml("skip_bad_rows = true")), *v3_);
  });
  EXPECT_NE(msg.find("every one of its 2 rows was bad (wrong field type 2)"), std::string::npos) << msg;
  msg = error_of([&] {
    prepare(make_recipe(dataset_table(dir_.path() / "missing.jsonl", "chat"), data_toml()), *v3_);
  });
  EXPECT_NE(msg.find("[datasets[0]] path: cannot open"), std::string::npos) << msg;
  msg = error_of([&] { prepare(make_recipe("", data_toml()), *v3_); });
  EXPECT_NE(msg.find("no [[datasets]]"), std::string::npos) << msg;
}

// ------------------------------------------------------------- chat format --

TEST_F(Dataset, ForcedChatTemplateIsCheckedAgainstTheTokenizer) {
  const fs::path file = dir_.path() / "chat.jsonl";
  write_file(file, R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]})" "\n");
  const std::vector<ChatMessage> conversation = {{"user", "Hi"}, {"assistant", "Yo."}};
  // v3 markers need the [INST] control pieces a v1 tokenizer lacks.
  std::string msg = error_of([&] {
    prepare(make_recipe(dataset_table(file, "chat"), data_toml("chat_template = \"mistral_v3\"")), *v1_);
  });
  EXPECT_NE(msg.find("chat_template = \"mistral_v3\" needs [INST]"), std::string::npos) << msg;
  // v1 on a v3 tokenizer works (plain-text markers) but is warned about.
  LogCapture log;
  PreparedData data =
      prepare(make_recipe(dataset_table(file, "chat"), data_toml("chat_template = \"mistral_v1\"")), *v3_);
  EXPECT_EQ(data.train.at(0).ids, mftk::core::encode_chat(*v3_, ChatFormat::v1, conversation, false).ids);
  EXPECT_EQ(data.stats.chat_format, "v1");
  EXPECT_NE(log.text().find("chat_template = \"mistral_v1\" but tokenizer"), std::string::npos) << log.text();
  // Matching forced formats are silent and equal to auto.
  for (const Tokenizer* tok : {v1_, v3_}) {
    const std::string name = tok == v1_ ? "mistral_v1" : "mistral_v3";
    PreparedData forced =
        prepare(make_recipe(dataset_table(file, "chat"), data_toml("chat_template = \"" + name + "\"")), *tok);
    PreparedData automatic = prepare(make_recipe(dataset_table(file, "chat"), data_toml()), *tok);
    EXPECT_EQ(forced.train.at(0).ids, automatic.train.at(0).ids);
  }
}

// -------------------------------------------------------------- eval split --

TEST(DatasetSplit, SplitMix64MatchesThePublishedSequence) {
  // Vigna's splitmix64.c from seed 1234567 (also the reference vector of
  // several ports, e.g. the rand_xoshiro crate).
  mftk::core::SplitMix64 rng(1234567);
  const uint64_t expected[] = {6457827717110365317ULL, 3203168211198807973ULL, 9817491932198370423ULL,
                               4593380528125082431ULL, 16408922859458223821ULL};
  for (uint64_t e : expected) EXPECT_EQ(rng.next(), e);
}

TEST(DatasetSplit, HeldOutIndicesFollowSeededFisherYates) {
  // Written out: swap order[i] with order[i + below(n - i)] for the first k positions.
  const size_t n = 20, k = 5;
  mftk::core::SplitMix64 rng(99);
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  for (size_t i = 0; i < k; ++i) {
    // below(m) by rejection of the values under 2^64 mod m.
    const uint64_t m = n - i, threshold = (0 - m) % m;
    uint64_t r;
    do r = rng.next(); while (r < threshold);
    std::swap(order[i], order[i + r % m]);
  }
  std::vector<size_t> expected(order.begin(), order.begin() + k);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(mftk::core::split_eval(n, k, 99), expected);
  EXPECT_EQ(mftk::core::split_eval(n, 0, 99), std::vector<size_t>{});
  EXPECT_EQ(mftk::core::split_eval(3, 3, 1), (std::vector<size_t>{0, 1, 2}));
}

TEST_F(Dataset, ValSetSizeHoldsOutADeterministicDisjointFraction) {
  const fs::path file = dir_.path() / "many.jsonl";
  std::string rows;
  const int n = 40;
  for (int i = 0; i < n; ++i) rows += "{\"text\": \"The cat reads at " + std::to_string(i) + " o'clock.\"}\n";
  write_file(file, rows);
  auto run = [&](int seed) {
    return prepare(make_recipe(dataset_table(file, "completion"), data_toml("val_set_size = 0.25"),
                               "seed = " + std::to_string(seed)),
                   *v1_);
  };
  PreparedData a = run(7), b = run(7), c = run(8);
  ASSERT_EQ(a.eval.size(), 10u);  // round(0.25 * 40)
  ASSERT_EQ(a.train.size(), 30u);
  EXPECT_EQ(a.stats.eval_examples, 10);
  EXPECT_EQ(a.stats.train_examples, 30);
  // Each row is identified by its ids; build the original order independently.
  std::vector<Ids> all;
  for (int i = 0; i < n; ++i)
    all.push_back(cat({{v1_->bos_id()}, v1_->encode("The cat reads at " + std::to_string(i) + " o'clock."),
                       {v1_->eos_id()}}));
  auto positions = [&](const std::vector<Example>& set) {
    std::vector<size_t> out;
    for (const Example& e : set) out.push_back(size_t(std::find(all.begin(), all.end(), e.ids) - all.begin()));
    return out;
  };
  const auto train_pos = positions(a.train), eval_pos = positions(a.eval);
  // Disjoint, complete, each side in file order, and exactly split_eval's choice.
  std::set<size_t> seen(train_pos.begin(), train_pos.end());
  seen.insert(eval_pos.begin(), eval_pos.end());
  EXPECT_EQ(seen.size(), size_t(n));
  EXPECT_EQ(*seen.rbegin(), size_t(n - 1));
  EXPECT_TRUE(std::is_sorted(train_pos.begin(), train_pos.end()));
  EXPECT_EQ(eval_pos, mftk::core::split_eval(n, 10, 7));
  // Same seed, same split; another seed, another split.
  EXPECT_EQ(positions(b.eval), eval_pos);
  EXPECT_NE(positions(c.eval), eval_pos);
  EXPECT_EQ(c.eval.size(), 10u);
}

TEST_F(Dataset, EvalDatasetsFormTheEvalSet) {
  const fs::path train = dir_.path() / "train.jsonl", eval = dir_.path() / "eval.jsonl";
  write_file(train, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"three\"}\n");
  write_file(eval, "{\"text\": \"four\"}\n");
  LogCapture log;
  PreparedData data = prepare(make_recipe(dataset_table(train, "completion") +
                                              dataset_table(eval, "completion", "split = \"eval\""),
                                          data_toml("val_set_size = 0.5")),
                              *v1_);
  ASSERT_EQ(data.train.size(), 3u);  // val_set_size is ignored when an eval file exists
  ASSERT_EQ(data.eval.size(), 1u);
  EXPECT_EQ(data.eval[0].ids, cat({{v1_->bos_id()}, v1_->encode("four"), {v1_->eos_id()}}));
  EXPECT_NE(log.text().find("val_set_size = 0.5 is ignored"), std::string::npos) << log.text();
  EXPECT_EQ(data.stats.files.at(1).split, "eval");
  // Only eval files: nothing to train on.
  std::string msg = error_of(
      [&] { prepare(make_recipe(dataset_table(eval, "completion", "split = \"eval\""), data_toml()), *v1_); });
  EXPECT_NE(msg.find("nothing to train on"), std::string::npos) << msg;
}

// ------------------------------------------------------------------- cache --

TEST_F(Dataset, CacheIsReusedOnlyWhenEveryInputMatches) {
  const fs::path file = dir_.path() / "chat.jsonl";
  const std::string row1 =
      R"({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo."}]})" "\n";
  const std::string row2 =
      R"({"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]})" "\n";
  write_file(file, row1 + row2 + row1 + row2);
  auto recipe = [&](const std::string& data_extra, const std::string& training_extra = "") {
    return make_recipe(dataset_table(file, "chat"), data_toml(data_extra), training_extra);
  };
  auto same = [](const PreparedData& a, const PreparedData& b) {
    if (a.train.size() != b.train.size() || a.eval.size() != b.eval.size()) return false;
    for (size_t i = 0; i < a.train.size(); ++i)
      if (a.train[i].ids != b.train[i].ids || a.train[i].loss_mask != b.train[i].loss_mask) return false;
    for (size_t i = 0; i < a.eval.size(); ++i)
      if (a.eval[i].ids != b.eval[i].ids || a.eval[i].loss_mask != b.eval[i].loss_mask) return false;
    return true;
  };
  const std::string base = "val_set_size = 0.25";
  PreparedData first = prepare(recipe(base), *v3_, CacheMode::read_write);
  EXPECT_FALSE(first.from_cache);
  ASSERT_TRUE(fs::exists(first.cache_file));
  EXPECT_EQ(fs::path(first.cache_file).parent_path(), fs::path(prepared_) / first.cache_key);
  EXPECT_EQ(first.cache_key.size(), 64u);

  PreparedData again = prepare(recipe(base), *v3_, CacheMode::read_write);
  EXPECT_TRUE(again.from_cache);
  EXPECT_EQ(again.cache_key, first.cache_key);
  EXPECT_TRUE(same(first, again));
  EXPECT_EQ(again.stats.files.at(0).tokens, first.stats.files.at(0).tokens);
  EXPECT_EQ(again.stats.eval_source, first.stats.eval_source);
  // Keys that do not change the examples keep the cache.
  EXPECT_TRUE(prepare(recipe(base + "\ndrop_long_examples = true", "sequence_len = 64"), *v3_,
                      CacheMode::read_write)
                  .from_cache);

  // Each input that changes the result gives a new key and a fresh build.
  std::set<std::string> keys = {first.cache_key};
  auto expect_rebuilt = [&](const PreparedData& d, const char* what) {
    EXPECT_FALSE(d.from_cache) << what;
    EXPECT_TRUE(keys.insert(d.cache_key).second) << what << ": key reused";
  };
  expect_rebuilt(prepare(recipe(base), *v1_, CacheMode::read_write), "tokenizer");
  expect_rebuilt(prepare(recipe(base + "\ntrain_on_inputs = true"), *v3_, CacheMode::read_write), "train_on_inputs");
  expect_rebuilt(prepare(recipe(base + "\nchat_template = \"mistral_v3\""), *v3_, CacheMode::read_write),
                 "chat_template");
  expect_rebuilt(prepare(recipe(base + "\nskip_bad_rows = true"), *v3_, CacheMode::read_write), "skip_bad_rows");
  expect_rebuilt(prepare(recipe("val_set_size = 0.5"), *v3_, CacheMode::read_write), "val_set_size");
  expect_rebuilt(prepare(recipe(base, "seed = 1"), *v3_, CacheMode::read_write), "seed");
  expect_rebuilt(prepare(make_recipe(dataset_table(file, "chat", "field = \"messages\"\nsplit = \"eval\"") +
                                         dataset_table(file, "chat"),
                                     data_toml(base)),
                         *v3_, CacheMode::read_write),
                 "datasets");

  // Same bytes under another name: the same key, so the cache is reused.
  const fs::path copy = dir_.path() / "copy.jsonl";
  fs::copy_file(file, copy);
  PreparedData moved = prepare(make_recipe(dataset_table(copy, "chat"), data_toml(base)), *v3_, CacheMode::read_write);
  EXPECT_TRUE(moved.from_cache);
  EXPECT_EQ(moved.stats.files.at(0).path, copy.string());

  // A changed data file is never served from the stale cache.
  write_file(file, row2 + row1 + row2 + row2);
  PreparedData edited = prepare(recipe(base), *v3_, CacheMode::read_write);
  expect_rebuilt(edited, "data file");
  EXPECT_TRUE(same(edited, prepare(recipe(base), *v3_, CacheMode::off)));
  EXPECT_FALSE(same(edited, first));
}

TEST_F(Dataset, CacheModesAndDamagedFiles) {
  const fs::path file = dir_.path() / "text.jsonl";
  write_file(file, "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
  const Recipe recipe = make_recipe(dataset_table(file, "completion"), data_toml());
  PreparedData off = prepare(recipe, *v1_, CacheMode::off);
  EXPECT_TRUE(off.cache_file.empty());
  EXPECT_FALSE(fs::exists(prepared_));

  PreparedData built = prepare(recipe, *v1_, CacheMode::read_write);
  EXPECT_FALSE(built.from_cache);
  EXPECT_FALSE(prepare(recipe, *v1_, CacheMode::rebuild).from_cache);
  // Only the final file is left behind (written as tmp + rename).
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(fs::path(built.cache_file).parent_path()))
    names.push_back(entry.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"examples.bin"});

  // Layout (dataset.cpp): magic 8 + version 4 + key 64 + stats length 8 + stats
  // + counts 16 + lengths 8 per example + ids 4 per token + masks 1 per token + end 8.
  const uint64_t tokens = built.train[0].ids.size() + built.train[1].ids.size();
  const uint64_t size = fs::file_size(built.cache_file);
  std::ifstream in(built.cache_file, std::ios::binary);
  std::string head(84, '\0');
  in.read(head.data(), 84);
  EXPECT_EQ(head.substr(0, 8), "MFTKPREP");
  EXPECT_EQ(head.substr(12, 64), built.cache_key);
  uint64_t stats_size = 0;
  std::memcpy(&stats_size, head.data() + 76, 8);
  EXPECT_EQ(size, 84 + stats_size + 16 + 2 * 8 + tokens * 5 + 8);
  in.close();

  // Truncated: rebuilt with a warning, then readable again.
  fs::resize_file(built.cache_file, size - 3);
  {
    LogCapture log;
    PreparedData rebuilt = prepare(recipe, *v1_, CacheMode::read_write);
    EXPECT_FALSE(rebuilt.from_cache);
    EXPECT_NE(log.text().find("rebuilding"), std::string::npos) << log.text();
  }
  EXPECT_EQ(fs::file_size(built.cache_file), size);
  PreparedData reread = prepare(recipe, *v1_, CacheMode::read_write);
  EXPECT_TRUE(reread.from_cache);
  EXPECT_EQ(reread.train[1].ids, built.train[1].ids);
  EXPECT_EQ(reread.train[1].loss_mask, built.train[1].loss_mask);
}
