// The [INST] chat format against mistral-common's assembly rules
// (docs/formats.md §3.2, [INST] token ids): expected ids are built here from BOS/EOS, control ids
// and plain encodes of the text chunks, and a few cases are written out as
// literal ids worked out from the piece table.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <map>

#include "chat_template.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"

namespace fs = std::filesystem;
using mftk::Tokenizer;
using mftk::core::ChatFormat;
using mftk::core::ChatMessage;
using mftk::core::encode_chat;
using Ids = std::vector<int32_t>;
using Mask = std::vector<uint8_t>;

namespace {

std::string chat_tokenizer_path(const std::string& version) {
  const char* from_env = std::getenv("MFTK_SHARED_DIR");
  std::string shared = from_env != nullptr ? from_env : MFTK_SHARED_DIR;
  fs::path path = fs::path(shared) / "data/mistral-tokenizers" / ("tokenizer.model." + version);
  return fs::exists(path) ? path.string() : std::string();
}

class ChatTemplate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    for (const char* version : {"v1", "v3"}) {
      std::string path = chat_tokenizer_path(version);
      if (!path.empty()) tokenizers()[version] = Tokenizer::load(path);
    }
  }
  static void TearDownTestSuite() { tokenizers().clear(); }
  static std::map<std::string, std::shared_ptr<Tokenizer>>& tokenizers() {
    static std::map<std::string, std::shared_ptr<Tokenizer>> loaded;
    return loaded;
  }
  void SetUp() override {
    if (tokenizers().size() != 2) {
      GTEST_SKIP() << "Mistral tokenizer files not found under " << MFTK_SHARED_DIR
                   << "/data/mistral-tokenizers (set MFTK_SHARED_DIR)";
    }
    v1_ = tokenizers()["v1"].get();
    v3_ = tokenizers()["v3"].get();
  }

  const Tokenizer* v1_ = nullptr;
  const Tokenizer* v3_ = nullptr;
};

// Concatenates id chunks.
Ids cat(std::initializer_list<Ids> parts) {
  Ids out;
  for (const Ids& part : parts) out.insert(out.end(), part.begin(), part.end());
  return out;
}

// A mask of `zeros` zeros then `ones` ones, repeated per (zeros, ones) pair.
Mask runs(std::initializer_list<std::pair<size_t, size_t>> zero_one_runs) {
  Mask out;
  for (auto [zeros, ones] : zero_one_runs) {
    out.insert(out.end(), zeros, 0);
    out.insert(out.end(), ones, 1);
  }
  return out;
}

const std::vector<ChatMessage> kSingleTurn = {{"user", "hi"}, {"assistant", "Hello"}};

}  // namespace

TEST_F(ChatTemplate, DetectsFormatFromControlPieces) {
  EXPECT_EQ(mftk::core::detect_chat_format(*v1_), ChatFormat::v1);
  EXPECT_EQ(mftk::core::detect_chat_format(*v3_), ChatFormat::v3);
  EXPECT_EQ(mftk::core::parse_chat_format("v3", "test"), ChatFormat::v3);
  EXPECT_STREQ(mftk::core::chat_format_name(ChatFormat::v1), "v1");
  EXPECT_THROW(mftk::core::parse_chat_format("v2", "test"), mftk::UsageError);
}

TEST_F(ChatTemplate, V1SingleTurnLiteralIds) {
  // <s> ▁[ INST ] ▁hi ▁[ / INST ] ▁Hello </s>
  ASSERT_EQ(v1_->piece(12014), "\u2581hi");
  ASSERT_EQ(v1_->piece(22557), "\u2581Hello");
  auto encoded = encode_chat(*v1_, ChatFormat::v1, kSingleTurn, false);
  EXPECT_EQ(encoded.ids, (Ids{1, 733, 16289, 28793, 12014, 733, 28748, 16289, 28793, 22557, 2}));
  EXPECT_EQ(encoded.loss_mask, (Mask{0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1}));
}

TEST_F(ChatTemplate, V3SingleTurnLiteralIds) {
  // <s> [INST] ▁hi [/INST] ▁Hello </s>: the v1 pieces shifted by 768.
  ASSERT_EQ(v3_->piece(12782), "\u2581hi");
  ASSERT_EQ(v3_->piece(23325), "\u2581Hello");
  auto encoded = encode_chat(*v3_, ChatFormat::v3, kSingleTurn, false);
  EXPECT_EQ(encoded.ids, (Ids{1, 3, 12014 + 768, 4, 22557 + 768, 2}));
  EXPECT_EQ(encoded.loss_mask, (Mask{0, 0, 0, 0, 1, 1}));
}

TEST_F(ChatTemplate, V3MultiTurnWithSystemLiteralIds) {
  // System goes on the LAST user turn: "You are terse.\n\nWhat is 2+2?" is
  // ▁You ▁are ▁ter se . <0x0A> <0x0A> What ▁is ▁ 2 + 2 ? (v1 ids + 768); the
  // reply "4" is ▁ 4.
  std::vector<ChatMessage> chat = {{"system", "You are terse."},
                                   {"user", "hi"},
                                   {"assistant", "Hello"},
                                   {"user", "What is 2+2?"},
                                   {"assistant", "4"}};
  Ids system_and_question = {995, 460, 3636, 331, 28723, 13, 13, 3195, 349, 28705, 28750, 28806, 28750, 28804};
  Ids reply = {28705, 28781};
  for (int32_t& id : system_and_question) id += 768;
  for (int32_t& id : reply) id += 768;
  Ids expected = cat({{1, 3, 12782, 4, 23325, 2, 3}, system_and_question, {4}, reply, {2}});
  auto encoded = encode_chat(*v3_, ChatFormat::v3, chat, false);
  EXPECT_EQ(encoded.ids, expected);
  EXPECT_EQ(encoded.loss_mask, runs({{4, 2}, {1 + 14 + 1, 3}}));
  // The newline really is the byte piece <0x0A> = 771 + 0x0A.
  EXPECT_EQ(v3_->piece(781), "<0x0A>");
}

TEST_F(ChatTemplate, V1AssembledFromChunks) {
  const std::string system = "Answer in one word.";
  std::vector<ChatMessage> chat = {{"system", system},
                                   {"user", "Capital of France?"},
                                   {"assistant", "Paris."},
                                   {"user", "And of Italy?"},
                                   {"assistant", "Rome."}};
  // v1: system on the FIRST user turn; markers are plain text.
  Ids turn1 = v1_->encode("[INST] " + system + "\n\nCapital of France? [/INST]");
  Ids reply1 = v1_->encode("Paris.");
  Ids turn2 = v1_->encode("[INST] And of Italy? [/INST]");
  Ids reply2 = v1_->encode("Rome.");
  auto encoded = encode_chat(*v1_, ChatFormat::v1, chat, false);
  EXPECT_EQ(encoded.ids, cat({{1}, turn1, reply1, {2}, turn2, reply2, {2}}));
  EXPECT_EQ(encoded.loss_mask, runs({{1 + turn1.size(), reply1.size() + 1}, {turn2.size(), reply2.size() + 1}}));

  // Without a system prompt the first turn is just the user text.
  std::vector<ChatMessage> no_system(chat.begin() + 1, chat.end());
  Ids plain_turn1 = v1_->encode("[INST] Capital of France? [/INST]");
  EXPECT_EQ(encode_chat(*v1_, ChatFormat::v1, no_system, false).ids,
            cat({{1}, plain_turn1, reply1, {2}, turn2, reply2, {2}}));
  // v1 keeps trailing spaces of a reply.
  std::vector<ChatMessage> spaced = {{"user", "hi"}, {"assistant", "Sure.  "}};
  EXPECT_EQ(encode_chat(*v1_, ChatFormat::v1, spaced, false).ids,
            cat({{1}, v1_->encode("[INST] hi [/INST]"), v1_->encode("Sure.  "), {2}}));
}

TEST_F(ChatTemplate, V3AssembledFromChunks) {
  const std::string system = "Answer in one word.";
  std::vector<ChatMessage> chat = {{"system", system},
                                   {"user", "Capital of France?"},
                                   {"assistant", "Paris.  "},
                                   {"user", "And of Italy?"},
                                   {"assistant", "Rome."}};
  // v3: system on the LAST user turn; [INST]=3 and [/INST]=4 are control
  // ids; replies lose trailing spaces.
  Ids turn1 = v3_->encode("Capital of France?");
  Ids reply1 = v3_->encode("Paris.");
  Ids turn2 = v3_->encode(system + "\n\nAnd of Italy?");
  Ids reply2 = v3_->encode("Rome.");
  ASSERT_NE(v3_->encode("Paris.  "), reply1);  // the strip matters: "▁▁" would be a piece
  auto encoded = encode_chat(*v3_, ChatFormat::v3, chat, false);
  EXPECT_EQ(encoded.ids, cat({{1, 3}, turn1, {4}, reply1, {2}, {3}, turn2, {4}, reply2, {2}}));
  EXPECT_EQ(encoded.loss_mask,
            runs({{2 + turn1.size() + 1, reply1.size() + 1}, {1 + turn2.size() + 1, reply2.size() + 1}}));

  // Single turn with a system prompt: the only user turn is the last one.
  std::vector<ChatMessage> single = {{"system", system}, {"user", "Capital of France?"}, {"assistant", "Paris."}};
  EXPECT_EQ(encode_chat(*v3_, ChatFormat::v3, single, false).ids,
            cat({{1, 3}, v3_->encode(system + "\n\nCapital of France?"), {4}, reply1, {2}}));
  // And in v1 the same system prompt lands on that same (first) turn.
  EXPECT_EQ(encode_chat(*v1_, ChatFormat::v1, single, false).ids,
            cat({{1}, v1_->encode("[INST] " + system + "\n\nCapital of France? [/INST]"), v1_->encode("Paris."), {2}}));
}

TEST_F(ChatTemplate, GenerationPromptEndsAfterLastUserTurn) {
  std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "hi"}, {"assistant", "Hello"}, {"user", "Bye?"}};
  auto v3 = encode_chat(*v3_, ChatFormat::v3, chat, false, true);
  EXPECT_EQ(v3.ids, cat({{1, 3}, v3_->encode("hi"), {4}, v3_->encode("Hello"), {2, 3},
                         v3_->encode("Be brief.\n\nBye?"), {4}}));
  EXPECT_EQ(v3.ids.back(), 4);
  auto v1 = encode_chat(*v1_, ChatFormat::v1, chat, false, true);
  EXPECT_EQ(v1.ids, cat({{1}, v1_->encode("[INST] Be brief.\n\nhi [/INST]"), v1_->encode("Hello"), {2},
                         v1_->encode("[INST] Bye? [/INST]")}));
  // Only the finished assistant turn is a target.
  Ids hello = v1_->encode("Hello");
  EXPECT_EQ(std::count(v1.loss_mask.begin(), v1.loss_mask.end(), 1), static_cast<long>(hello.size() + 1));
  // A generation prompt after an assistant turn is an error.
  EXPECT_THROW(encode_chat(*v3_, ChatFormat::v3, kSingleTurn, false, true), mftk::UsageError);
}

TEST_F(ChatTemplate, TrainOnInputsMasksEverything) {
  for (ChatFormat format : {ChatFormat::v1, ChatFormat::v3}) {
    const Tokenizer& tok = format == ChatFormat::v1 ? *v1_ : *v3_;
    auto masked = encode_chat(tok, format, kSingleTurn, false);
    auto all = encode_chat(tok, format, kSingleTurn, true);
    EXPECT_EQ(all.ids, masked.ids);
    EXPECT_EQ(all.loss_mask, Mask(all.ids.size(), 1));
    ASSERT_EQ(masked.loss_mask.size(), masked.ids.size());
    // Without it: ones exactly on the reply and its EOS, i.e. the tail.
    size_t reply = tok.encode("Hello").size() + 1;
    EXPECT_EQ(masked.loss_mask, runs({{masked.ids.size() - reply, reply}}));
  }
}

TEST_F(ChatTemplate, RejectsMalformedConversations) {
  auto expect_usage_error = [&](const std::vector<ChatMessage>& chat, const std::string& fragment) {
    try {
      encode_chat(*v3_, ChatFormat::v3, chat, false);
      ADD_FAILURE() << "expected a UsageError containing '" << fragment << "'";
    } catch (const mftk::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_usage_error({}, "empty");
  expect_usage_error({{"system", "S"}}, "no user message");
  expect_usage_error({{"user", "a"}, {"bot", "b"}}, "unknown role 'bot'");
  expect_usage_error({{"user", "a"}, {"tool", "b"}}, "tool message has no tool_call_id");
  expect_usage_error({{"assistant", "a"}}, "expected role 'user'");
  expect_usage_error({{"user", "a"}, {"user", "b"}}, "expected role 'assistant'");
  expect_usage_error({{"user", "a"}, {"assistant", "b"}, {"assistant", "c"}}, "expected role 'user'");
  expect_usage_error({{"user", "a"}, {"system", "b"}}, "system message may only come first");
  expect_usage_error({{"user", "a"}, {"assistant", ""}}, "assistant message is empty");
  // The v3 format needs the control pieces, which the v1 tokenizer lacks.
  EXPECT_THROW(encode_chat(*v1_, ChatFormat::v3, kSingleTurn, false), mftk::UsageError);
}
