// SHA-256 against the FIPS 180-2 vectors; the sentencepiece tokenizer against
// the facts of Mistral's own tokenizer files (docs/formats.md §3.1, sentencepiece model); training a
// tiny Mistral-style tokenizer. This binary links libtorch, so every test that
// touches a tokenizer also shows the dlmopen'd shim works in a torch process.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "mftk/error.h"
#include "mftk/tokenizer.h"
#include "chat_template.h"
#include "sha256.h"
#include "spm_loader.h"
#include "tokenizer_train.h"

namespace fs = std::filesystem;
using mftk::PieceType;
using mftk::Tokenizer;

namespace {

std::string mistral_tokenizer_dir() {
  const char* from_env = std::getenv("MFTK_SHARED_DIR");
  std::string shared = from_env != nullptr ? from_env : MFTK_SHARED_DIR;
  return shared + "/data/mistral-tokenizers";
}

// The v1 / v3 tokenizer file, or "" when the shared data folder is absent.
std::string mistral_model(const std::string& version) {
  fs::path path = fs::path(mistral_tokenizer_dir()) / ("tokenizer.model." + version);
  return fs::exists(path) ? path.string() : std::string();
}

#define REQUIRE_MISTRAL_MODEL(var, version)                                                          \
  const std::string var = mistral_model(version);                                                    \
  if (var.empty()) GTEST_SKIP() << "no " << mistral_tokenizer_dir() << "/tokenizer.model." version \
                                << " (set MFTK_SHARED_DIR to the folder holding data/)"

// A fresh folder per test, removed at the end.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("mftk_tokenizer_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

const std::shared_ptr<Tokenizer>& cached_tokenizer(const std::string& path) {
  static std::map<std::string, std::shared_ptr<Tokenizer>> cache;
  auto& slot = cache[path];
  if (!slot) slot = Tokenizer::load(path);
  return slot;
}

}  // namespace

// ---------------------------------------------------------------- SHA-256 --

TEST(Sha256, FipsTestVectors) {
  using mftk::core::sha256_hex;
  // FIPS 180-2 Appendix B.1, B.2, and the empty message.
  EXPECT_EQ(sha256_hex(std::string("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(std::string("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, MillionAsStreamedInUnevenChunks) {
  // FIPS 180-2 Appendix B.3: one million 'a'. Chunk sizes 1..127 cross every
  // block-boundary case of the streaming buffer.
  mftk::core::Sha256 hasher;
  std::string chunk(127, 'a');
  size_t left = 1000000;
  for (size_t size = 1; left > 0; size = size % 127 + 1) {
    size_t take = std::min(size, left);
    hasher.update(chunk.data(), take);
    left -= take;
  }
  EXPECT_EQ(hasher.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundariesMatchOneShot) {
  // Lengths around 55/56/64 bytes change the padding layout; streaming one
  // byte at a time must agree with hashing at once.
  for (size_t length : {55u, 56u, 57u, 63u, 64u, 65u, 119u, 120u}) {
    std::string message(length, 'x');
    mftk::core::Sha256 hasher;
    for (char c : message) hasher.update(&c, 1);
    EXPECT_EQ(hasher.hex_digest(), mftk::core::sha256_hex(message)) << "length " << length;
  }
  // 'a' * 64 is a published value (one full block plus a padding block).
  EXPECT_EQ(mftk::core::sha256_hex(std::string(64, 'a')),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

TEST(Sha256, UseAfterDigestIsAnError) {
  mftk::core::Sha256 hasher;
  hasher.update(std::string("abc"));
  hasher.hex_digest();
  EXPECT_THROW(hasher.update(std::string("d")), mftk::Error);
}

TEST(Sha256, FileHashEqualsBufferHash) {
  TempDir dir;
  std::string text(3 * 1024 * 1024 + 17, '\0');
  for (size_t i = 0; i < text.size(); ++i) text[i] = static_cast<char>(i * 131 % 251);
  write_file(dir.path() / "blob.bin", text);
  EXPECT_EQ(mftk::core::sha256_file_hex((dir.path() / "blob.bin").string()), mftk::core::sha256_hex(text));
  EXPECT_THROW(mftk::core::sha256_file_hex((dir.path() / "missing").string()), mftk::Error);
}

// ------------------------------------------------- Mistral tokenizer files --

TEST(Tokenizer, ShimPathHonoursEnvironment) {
  const char* old = std::getenv("MFTK_SPM_SHIM");
  std::string saved = old != nullptr ? old : "";
  ::setenv("MFTK_SPM_SHIM", "/somewhere/libmftk_spm.so", 1);
  EXPECT_EQ(mftk::core::spm_shim_path(), "/somewhere/libmftk_spm.so");
  if (old != nullptr) ::setenv("MFTK_SPM_SHIM", saved.c_str(), 1); else ::unsetenv("MFTK_SPM_SHIM");
  // Without the variable: next to libmftk_core.so, i.e. the build tree's lib/.
  if (old == nullptr) {
    EXPECT_EQ(fs::path(mftk::core::spm_shim_path()).filename(), "libmftk_spm.so");
    EXPECT_TRUE(fs::exists(mftk::core::spm_shim_path())) << mftk::core::spm_shim_path();
  }
}

TEST(Tokenizer, MissingShimSaysWhereItLooked) {
  // The shim loads once per process, so this runs in a fresh child process.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::setenv("MFTK_SPM_SHIM", "/nonexistent/libmftk_spm.so", 1);
        try {
          // Any existing file will do: the shim is looked for before the model is read.
          Tokenizer::load(MFTK_SOURCE_DIR "/CMakeLists.txt");
        } catch (const mftk::Error& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::_Exit(3);
        }
        std::_Exit(0);
      },
      ::testing::ExitedWithCode(3), "missing: looked for '/nonexistent/libmftk_spm.so' \\(from \\$MFTK_SPM_SHIM\\)");
}

TEST(Tokenizer, V1SpecialIdsAndPieceTypes) {
  REQUIRE_MISTRAL_MODEL(path, "v1");
  const auto& tok = cached_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->piece(0), "<unk>");
  EXPECT_EQ(tok->piece(1), "<s>");
  EXPECT_EQ(tok->piece(2), "</s>");
  EXPECT_EQ(tok->type(0), PieceType::unknown);
  EXPECT_EQ(tok->type(1), PieceType::control);
  EXPECT_EQ(tok->type(2), PieceType::control);
  // Byte pieces <0x00>..<0xFF> are ids 3..258.
  for (int byte = 0; byte < 256; ++byte) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", byte);
    ASSERT_EQ(tok->piece(3 + byte), name);
    ASSERT_EQ(tok->type(3 + byte), PieceType::byte);
    ASSERT_EQ(tok->score(3 + byte), 0.0f);
  }
  // Normal pieces from 259 on; the first is "▁▁" with score -1e9, the last scores -31740.
  EXPECT_EQ(tok->piece(259), "\u2581\u2581");
  EXPECT_EQ(tok->type(259), PieceType::normal);
  EXPECT_EQ(tok->score(259), -1e9f);
  EXPECT_EQ(tok->type(31999), PieceType::normal);
  EXPECT_EQ(tok->score(31999), -31740.0f);
  int normal = 0;
  for (int id = 0; id < tok->vocab_size(); ++id) normal += tok->type(id) == PieceType::normal;
  EXPECT_EQ(normal, 31741);
  EXPECT_EQ(tok->piece_to_id("\u2581["), 733);
  EXPECT_EQ(tok->piece_to_id("INST"), 16289);
  EXPECT_EQ(tok->piece_to_id("]"), 28793);
  EXPECT_EQ(tok->piece_to_id("/"), 28748);
  EXPECT_EQ(tok->piece_to_id("\u2581"), 28705);
  EXPECT_EQ(tok->piece_to_id("<0x0A>"), 13);
  EXPECT_EQ(tok->piece_to_id("<unk>"), 0);
  EXPECT_EQ(tok->piece_to_id("[INST]"), std::nullopt);  // plain text in v1
  EXPECT_EQ(tok->piece_to_id("no such piece"), std::nullopt);
  EXPECT_THROW(tok->piece(32000), mftk::Error);
  EXPECT_THROW(tok->type(-1), mftk::Error);
}

TEST(Tokenizer, V1EncodesInstMarkersAsPlainText) {
  REQUIRE_MISTRAL_MODEL(path, "v1");
  const auto& tok = cached_tokenizer(path);
  using Ids = std::vector<int32_t>;
  // docs/formats.md §3.1 (sentencepiece model): "▁[INST]" -> ▁[ INST ], "▁[/INST]" -> ▁[ / INST ].
  EXPECT_EQ(tok->encode("[INST]"), (Ids{733, 16289, 28793}));
  EXPECT_EQ(tok->encode("[/INST]"), (Ids{733, 28748, 16289, 28793}));
  // A newline has no piece of its own: byte fallback to <0x0A> (id 3 + 0x0A).
  Ids ids = tok->encode("a\nb");
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(ids[1], 3 + 0x0A);
  // Byte fallback for a character with no piece (private-use U+E000 = EE 80 80):
  // the dummy-prefix "▁", then <0xEE> <0x80> <0x80> at ids 3 + byte.
  EXPECT_EQ(tok->encode("\xEE\x80\x80"), (Ids{28705, 3 + 0xEE, 3 + 0x80, 3 + 0x80}));
  // split_digits: each digit is its own piece.
  Ids digits = tok->encode("2024");
  ASSERT_EQ(digits.size(), 5u);
  EXPECT_EQ(tok->piece(digits[0]), "\u2581");
  for (size_t i = 1; i < 5; ++i) EXPECT_EQ(tok->piece(digits[i]).size(), 1u);
  // Plain encode adds no BOS/EOS.
  for (int32_t id : tok->encode("Hello world")) {
    EXPECT_NE(id, 1);
    EXPECT_NE(id, 2);
  }
}

TEST(Tokenizer, V3SpecialIdsAndPieceTypes) {
  REQUIRE_MISTRAL_MODEL(path, "v3");
  const auto& tok = cached_tokenizer(path);
  EXPECT_EQ(tok->vocab_size(), 32768);
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->piece(3), "[INST]");
  EXPECT_EQ(tok->piece(4), "[/INST]");
  EXPECT_EQ(tok->piece(5), "[TOOL_CALLS]");
  EXPECT_EQ(tok->piece(13), "[SUFFIX]");
  EXPECT_EQ(tok->piece(14), "[control_12]");
  EXPECT_EQ(tok->piece(750), "[control_748]");
  for (int id = 1; id <= 750; ++id) ASSERT_EQ(tok->type(id), PieceType::control) << id;
  // 751..770: [REFERENCE_DOC_19] .. [REFERENCE_DOC_0], USER_DEFINED.
  for (int id = 751; id <= 770; ++id) {
    ASSERT_EQ(tok->type(id), PieceType::user_defined) << id;
    ASSERT_EQ(tok->piece(id), "[REFERENCE_DOC_" + std::to_string(770 - id) + "]");
  }
  EXPECT_EQ(tok->piece(771), "<0x00>");
  EXPECT_EQ(tok->piece(1026), "<0xFF>");
  EXPECT_EQ(tok->type(771), PieceType::byte);
  EXPECT_EQ(tok->type(1026), PieceType::byte);
  EXPECT_EQ(tok->type(1027), PieceType::normal);
  EXPECT_EQ(tok->piece_to_id("[INST]"), 3);
  EXPECT_EQ(tok->piece_to_id("[/INST]"), 4);
  EXPECT_EQ(tok->piece_to_id("<0x0A>"), 781);
  // Control pieces are never produced from text: "[INST]" typed by a user
  // stays the plain-text pieces (v1 ids + 768).
  EXPECT_EQ(tok->encode("[INST]"), (std::vector<int32_t>{733 + 768, 16289 + 768, 28793 + 768}));
}

TEST(Tokenizer, V3IsV1ShiftedBy768) {
  REQUIRE_MISTRAL_MODEL(v1_path, "v1");
  REQUIRE_MISTRAL_MODEL(v3_path, "v3");
  const auto& v1 = cached_tokenizer(v1_path);
  const auto& v3 = cached_tokenizer(v3_path);
  for (int32_t id = 3; id < v1->vocab_size(); ++id) {
    ASSERT_EQ(v3->piece(id + 768), v1->piece(id)) << id;
    ASSERT_EQ(v3->score(id + 768), v1->score(id)) << id;
    ASSERT_EQ(v3->type(id + 768), v1->type(id)) << id;
  }
  for (const std::string& text : std::vector<std::string>{"Hello world", "What is 2+2?\n\nFour.", "naïve café 日本語 🙂", "  two  spaces  "}) {
    std::vector<int32_t> expected = v1->encode(text);
    for (int32_t& id : expected) id += 768;
    EXPECT_EQ(v3->encode(text), expected) << text;
  }
}

TEST(Tokenizer, DecodeInvertsEncode) {
  REQUIRE_MISTRAL_MODEL(path, "v3");
  const auto& tok = cached_tokenizer(path);
  // remove_extra_whitespaces is off and bytes fall back, so any text survives.
  for (const std::string& text : std::vector<std::string>
       {"Hello world", "two  spaces and a trailing one ", "line\nbreaks\n\n\ttab", "naïve café 日本語 🙂",
        std::string("\x01\x7f", 2), "1234567890", ""}) {
    EXPECT_EQ(tok->decode(tok->encode(text)), text) << text;
  }
  EXPECT_THROW(tok->decode({5, 40000}), mftk::Error);
}

TEST(Tokenizer, EncodeFromSeveralThreads) {
  REQUIRE_MISTRAL_MODEL(path, "v1");
  const auto& tok = cached_tokenizer(path);
  const std::string text = "The quick brown fox jumps over the lazy dog. ";
  const std::vector<int32_t> expected = tok->encode(text);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) mismatches[t] += tok->encode(text) != expected;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(Tokenizer, FingerprintIsSha256OfModelFile) {
  REQUIRE_MISTRAL_MODEL(v1_path, "v1");
  REQUIRE_MISTRAL_MODEL(v3_path, "v3");
  // Values from `sha256sum tokenizer.model.v1 tokenizer.model.v3`.
  EXPECT_EQ(cached_tokenizer(v1_path)->fingerprint(),
            "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055");
  EXPECT_EQ(cached_tokenizer(v3_path)->fingerprint(),
            "9addc8bdce5988448ae81b729336f43a81262160ae8da760674badab9d4c7d33");
  EXPECT_EQ(cached_tokenizer(v1_path)->model_path(), v1_path);
}

TEST(Tokenizer, LoadsCheckpointFolderWithAndWithoutConfig) {
  REQUIRE_MISTRAL_MODEL(path, "v1");
  TempDir dir;
  fs::copy_file(path, dir.path() / "tokenizer.model");
  // No tokenizer_config.json: HF defaults.
  auto plain = Tokenizer::load(dir.path().string());
  EXPECT_TRUE(plain->add_bos());
  EXPECT_FALSE(plain->add_eos());
  EXPECT_EQ(plain->model_path(), (dir.path() / "tokenizer.model").string());
  EXPECT_EQ(plain->vocab_size(), 32000);
  // A bare .model file: defaults too.
  EXPECT_TRUE(cached_tokenizer(path)->add_bos());
  EXPECT_FALSE(cached_tokenizer(path)->add_eos());

  write_file(dir.path() / "tokenizer_config.json",
             R"({"add_bos_token": false, "add_eos_token": true, "legacy": false, "model_max_length": 1000000})");
  auto configured = Tokenizer::load(dir.path().string());
  EXPECT_FALSE(configured->add_bos());
  EXPECT_TRUE(configured->add_eos());
  EXPECT_EQ(configured->fingerprint(), cached_tokenizer(path)->fingerprint());

  // Keys absent or null: defaults.
  write_file(dir.path() / "tokenizer_config.json", R"({"add_bos_token": null, "legacy": true})");
  auto defaults = Tokenizer::load(dir.path().string());
  EXPECT_TRUE(defaults->add_bos());
  EXPECT_FALSE(defaults->add_eos());
}

TEST(Tokenizer, LoadErrorsNameThePath) {
  TempDir dir;
  auto message_of = [](const std::string& path) -> std::string {
    try {
      Tokenizer::load(path);
    } catch (const mftk::UsageError& e) {
      return e.what();
    }
    return "(no UsageError)";
  };
  std::string missing = (dir.path() / "nope").string();
  EXPECT_NE(message_of(missing).find(missing), std::string::npos) << message_of(missing);
  // A folder without tokenizer.model.
  std::string folder_error = message_of(dir.path().string());
  EXPECT_NE(folder_error.find("has no tokenizer.model"), std::string::npos) << folder_error;
  // A file that is not a sentencepiece model.
  write_file(dir.path() / "garbage.model", "this is not a protobuf");
  std::string garbage = (dir.path() / "garbage.model").string();
  EXPECT_NE(message_of(garbage).find(garbage), std::string::npos) << message_of(garbage);

  REQUIRE_MISTRAL_MODEL(path, "v1");
  fs::copy_file(path, dir.path() / "tokenizer.model");
  write_file(dir.path() / "tokenizer_config.json", "{ not json");
  std::string bad_json = message_of(dir.path().string());
  EXPECT_NE(bad_json.find("tokenizer_config.json"), std::string::npos) << bad_json;
  write_file(dir.path() / "tokenizer_config.json", R"({"add_eos_token": "yes"})");
  std::string bad_flag = message_of(dir.path().string());
  EXPECT_NE(bad_flag.find("add_eos_token must be true or false"), std::string::npos) << bad_flag;
}

// --------------------------------------------------- training a tokenizer --

namespace {

// A few hundred lines of varied English plus some digits and accents.
std::string tiny_corpus() {
  const char* subjects[] = {"The cat", "A small dog", "My neighbour", "The old sailor", "Every student"};
  const char* verbs[] = {"reads", "watches", "paints", "finds", "remembers"};
  const char* objects[] = {"the red book", "a quiet river", "seven green apples", "the morning news",
                           "an empty café"};
  std::ostringstream out;
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j)
      for (int k = 0; k < 5; ++k)
        out << subjects[i] << " " << verbs[j] << " " << objects[k] << " at " << (i * 25 + j * 5 + k) << " o'clock.\n";
  return out.str();
}

}  // namespace

TEST(TokenizerTrain, TinyV3StyleTokenizer) {
  TempDir dir;
  write_file(dir.path() / "corpus.txt", tiny_corpus());
  fs::path model = dir.path() / "tiny.model";
  mftk::core::train_sentencepiece((dir.path() / "corpus.txt").string(), model.string(), 400, true);
  // Exactly the requested file: no .vocab, no temporary left behind.
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(dir.path())) files.push_back(entry.path().filename().string());
  std::sort(files.begin(), files.end());
  EXPECT_EQ(files, (std::vector<std::string>{"corpus.txt", "tiny.model"}));

  auto tok = Tokenizer::load(model.string());
  EXPECT_EQ(tok->vocab_size(), 400);
  const std::pair<const char*, PieceType> expected[] = {{"<unk>", PieceType::unknown},
                                                        {"<s>", PieceType::control},
                                                        {"</s>", PieceType::control},
                                                        {"[INST]", PieceType::control},
                                                        {"[/INST]", PieceType::control}};
  for (int id = 0; id < 5; ++id) {
    EXPECT_EQ(tok->piece(id), expected[id].first) << id;
    EXPECT_EQ(tok->type(id), expected[id].second) << id;
  }
  EXPECT_EQ(tok->unk_id(), 0);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  // Byte pieces follow the five specials.
  EXPECT_EQ(tok->piece(5), "<0x00>");
  EXPECT_EQ(tok->piece(5 + 255), "<0xFF>");
  EXPECT_EQ(tok->type(5 + 255), PieceType::byte);
  EXPECT_EQ(tok->type(261), PieceType::normal);
  EXPECT_EQ(mftk::core::detect_chat_format(*tok), mftk::core::ChatFormat::v3);
  // split_digits: no learned piece holds two digits.
  for (int id = 0; id < tok->vocab_size(); ++id) {
    if (tok->type(id) != PieceType::normal) continue;
    const std::string piece = tok->piece(id);
    int digits = 0;
    for (char c : piece) digits += c >= '0' && c <= '9';
    EXPECT_LE(digits, 1) << piece;
  }
  // Round trip, including text the corpus never had (byte fallback) and
  // doubled spaces (no whitespace normalization).
  for (const std::string& text : std::vector<std::string>{"The cat reads the red book at 12 o'clock.", "A  dog   finds\tapples\n",
                                  "Überraschung! 日本語 🙂", "x"}) {
    EXPECT_EQ(tok->decode(tok->encode(text)), text) << text;
  }
  // Frequent words became single pieces (it is a real BPE model, not bytes only).
  EXPECT_LT(tok->encode("The cat reads the red book").size(), 12u);
}

TEST(TokenizerTrain, ShimTrainsFromCommandLineArgs) {
  // The shim's sentencepiece-syntax entry point writes <prefix>.model and .vocab.
  TempDir dir;
  write_file(dir.path() / "corpus.txt", tiny_corpus());
  const auto& shim = mftk::core::spm_shim();
  std::string args = "--input=" + (dir.path() / "corpus.txt").string() + " --model_prefix=" +
                     (dir.path() / "m").string() + " --model_type=bpe --vocab_size=300 --minloglevel=1";
  char err[mftk::core::kSpmErrorCapacity] = {0};
  ASSERT_EQ(shim.train_args(args.c_str(), err, sizeof err), 0) << err;
  EXPECT_TRUE(fs::exists(dir.path() / "m.model"));
  EXPECT_TRUE(fs::exists(dir.path() / "m.vocab"));
  EXPECT_EQ(Tokenizer::load((dir.path() / "m.model").string())->vocab_size(), 300);
  EXPECT_EQ(shim.train_args("--vocab_size=300", err, sizeof err), -1);
  EXPECT_NE(std::string(err).find("sentencepiece training failed"), std::string::npos) << err;
}

TEST(TokenizerTrain, TinyV1StyleTokenizerAndErrors) {
  TempDir dir;
  write_file(dir.path() / "corpus.txt", tiny_corpus());
  fs::path model = dir.path() / "tiny_v1.model";
  mftk::core::train_sentencepiece((dir.path() / "corpus.txt").string(), model.string(), 320, false);
  auto tok = Tokenizer::load(model.string());
  EXPECT_EQ(tok->vocab_size(), 320);
  EXPECT_EQ(tok->piece(3), "<0x00>");  // no controls: bytes right after </s>, as in Mistral v1
  EXPECT_EQ(tok->type(3), PieceType::byte);
  EXPECT_EQ(tok->piece_to_id("[INST]"), std::nullopt);
  EXPECT_EQ(mftk::core::detect_chat_format(*tok), mftk::core::ChatFormat::v1);

  const std::string corpus = (dir.path() / "corpus.txt").string();
  // More pieces than the text can fill: sentencepiece's error, with its maximum.
  try {
    mftk::core::train_sentencepiece(corpus, (dir.path() / "big.model").string(), 50000, false);
    ADD_FAILURE() << "vocab_size 50000 on a tiny corpus should fail";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Vocabulary size too high"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path() / "big.model"));
  EXPECT_THROW(mftk::core::train_sentencepiece(corpus, (dir.path() / "small.model").string(), 200, false),
               mftk::UsageError);
  EXPECT_THROW(mftk::core::train_sentencepiece((dir.path() / "missing.txt").string(),
                                               (dir.path() / "m.model").string(), 400, false),
               mftk::UsageError);
  EXPECT_THROW(mftk::core::train_sentencepiece(corpus, (dir.path() / "no_dir" / "m.model").string(), 400, false),
               mftk::UsageError);
}
