// Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) found or were built
// against, replayed through the same parsers in the normal test build: each
// must be refused with an mftk::Error that says what is wrong, never crash,
// never escape as another exception type, never be accepted when it is bad.
//
// Files under tests/data/fuzz/<target>/ are replayed by target; a crash
// found by scripts/fuzz.sh goes there once its parser is fixed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "dataset.h"
#include "gguf_reader.h"
#include "lora/peft_config.h"
#include "mftk/error.h"
#include "mftk/tokenizer.h"
#include "mistral/mistral_config.h"
#include "recipe.h"
#include "safetensors_parse.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
using testing::HasSubstr;

const fs::path kCorpus = fs::path(MFTK_SOURCE_DIR) / "tests" / "data" / "fuzz";

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A GGUF v3 image with no metadata and one tensor of type `type` and shape `ne`.
std::string gguf_with_one_tensor(uint32_t type, std::vector<uint64_t> ne) {
  std::string out;
  auto put = [&](auto v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  out += "GGUF";
  put(uint32_t(3));
  put(uint64_t(1));  // tensors
  put(uint64_t(0));  // metadata
  put(uint64_t(1));
  out += "w";
  put(uint32_t(ne.size()));
  for (uint64_t d : ne) put(d);
  put(type);
  put(uint64_t(0));  // offset
  out.resize((out.size() + 31) / 32 * 32, '\0');
  return out;
}

// Runs `parse` on every file of tests/data/fuzz/<target>/: only mftk::Error may come out.
template <class Parse>
void replay(const std::string& target, Parse parse) {
  const fs::path dir = kCorpus / target;
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " is missing: each target keeps a sample of its corpus there";
  int replayed = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    ++replayed;
    SCOPED_TRACE(e.path().string());
    try {
      parse(bytes_of(e.path()));
    } catch (const mftk::Error& error) {
      EXPECT_FALSE(std::string(error.what()).empty());
    }
  }
  EXPECT_GT(replayed, 0) << dir << " holds no inputs";
}

}  // namespace

// Found while writing fuzz_gguf's byte-count invariant: elements x type size
// wrapped past 2^64 to a small number, so a tensor of 2^62 f32 values
// "fit" in an empty data section and data() handed out a view that
// disagreed with elements().
TEST(FuzzRegressions, GgufTensorWhoseByteCountWrapsIsRefused) {
  for (const auto& [type, ne] : std::vector<std::pair<uint32_t, std::vector<uint64_t>>>{
           {0, {uint64_t(1) << 62}},                    // f32: 2^64 bytes
           {28, {uint64_t(1) << 61}},                   // f64: 2^64 bytes
           {0, {uint64_t(1) << 31, uint64_t(1) << 31}}}) {  // 2-D, same product
    try {
      (void)mftk::core::GgufFile::parse("wrap.gguf", gguf_with_one_tensor(type, ne));
      ADD_FAILURE() << "accepted a tensor of type " << type << " needing 2^64 bytes";
    } catch (const mftk::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("wrap.gguf: tensor 'w'"));
      EXPECT_THAT(e.what(), HasSubstr("need more than 2^64 bytes"));
    }
  }
  // The same layout with a real size is read, and its bytes are where they should be.
  std::string ok = gguf_with_one_tensor(0, {4});
  ok.append(16, '\x7f');
  const auto file = mftk::core::GgufFile::parse("ok.gguf", ok);
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.data(file.tensors()[0]).size(), 16u);
}

// The in-memory entry point checks exactly what open() checks: the same
// bytes give the same verdict from a file.
TEST(FuzzRegressions, GgufParseAndOpenAgree) {
  mftk::train_test::ScratchDir dir("fuzz");
  const std::string bad = gguf_with_one_tensor(0, {uint64_t(1) << 62});
  const std::string path = dir.sub("bad.gguf");
  std::ofstream(path, std::ios::binary) << bad;
  EXPECT_THROW((void)mftk::core::GgufFile::open(path), mftk::Error);
}

TEST(FuzzRegressions, SafetensorsHeaderInputsAreRefusedWithAMessage) {
  replay("safetensors_header", [](const std::string& file) {
    const auto n = mftk::detail::safetensors_header_length(
        "fuzz.safetensors", file.size(), file.size() >= 8 ? reinterpret_cast<const unsigned char*>(file.data())
                                                          : nullptr);
    (void)mftk::detail::parse_safetensors_header("fuzz.safetensors", file.substr(8, n), file.size() - 8 - n);
  });
  // A length that points past the end, the shortest header, and a data
  // section one byte short, each named.
  const std::string past_end("\xff\x00\x00\x00\x00\x00\x00\x00{}", 10);
  EXPECT_THROW((void)mftk::detail::safetensors_header_length(
                   "a.safetensors", past_end.size(), reinterpret_cast<const unsigned char*>(past_end.data())),
               mftk::Error);
  EXPECT_THROW((void)mftk::detail::safetensors_header_length("a.safetensors", 3, nullptr), mftk::Error);
  try {
    (void)mftk::detail::parse_safetensors_header(
        "a.safetensors", R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 7);
    ADD_FAILURE() << "accepted 7 bytes of data for 8";
  } catch (const mftk::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("a.safetensors: the tensors need 8 bytes of data but only 7 follow"));
  }
}

TEST(FuzzRegressions, CheckpointIndexInputsAreRefusedWithAMessage) {
  replay("safetensors_index",
         [](const std::string& text) { (void)mftk::detail::parse_checkpoint_index("fuzz.index.json", text); });
  try {
    (void)mftk::detail::parse_checkpoint_index("m.index.json", R"({"weight_map": {"a": "../../etc/passwd"}})");
    ADD_FAILURE() << "accepted a shard outside the folder";
  } catch (const mftk::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("shard file name '../../etc/passwd' is not a plain relative path"));
  }
}

TEST(FuzzRegressions, GgufInputsAreRefusedWithAMessage) {
  replay("gguf", [](const std::string& file) { (void)mftk::core::GgufFile::parse("fuzz.gguf", file); });
}

TEST(FuzzRegressions, RecipeInputsAreRefusedWithAMessage) {
  replay("recipe", [](const std::string& text) {
    const auto recipe = mftk::core::Recipe::parse(text, "fuzz.toml");
    (void)mftk::core::data_options_from_recipe(recipe);
  });
}

TEST(FuzzRegressions, PeftConfigInputsAreRefusedWithAMessage) {
  replay("peft_config",
         [](const std::string& text) { (void)mftk::lora::parse_peft_config(text, "adapter_config.json"); });
}

TEST(FuzzRegressions, ConfigJsonInputsAreRefusedWithAMessage) {
  replay("config_json",
         [](const std::string& text) { (void)mftk::mistral::MistralConfig::parse(text, "config.json"); });
}

TEST(FuzzRegressions, JsonlInputsAreRefusedWithAMessage) {
  const auto tokenizer = mftk::Tokenizer::load(mftk::train_test::tiny_checkpoint(1));
  mftk::train_test::ScratchDir dir("fuzz");
  replay("jsonl_chat", [&](const std::string& file) {
    if (file.empty()) return;
    // As fuzz_jsonl_chat: the first byte picks type and options.
    const auto flags = static_cast<uint8_t>(file[0]);
    mftk::core::DatasetSpec spec;
    spec.path = dir.sub("rows.jsonl");
    std::ofstream(spec.path, std::ios::binary | std::ios::trunc) << file.substr(1);
    spec.type = static_cast<mftk::core::DatasetType>((flags & 3) % 3);
    const auto format = (flags & 4) ? mftk::core::ChatFormat::v1 : mftk::core::detect_chat_format(*tokenizer);
    mftk::core::DatasetFileStats stats;
    (void)mftk::core::load_dataset(spec, *tokenizer, format, flags & 8, flags & 16, stats);
  });
}
