// Inputs the fuzz targets (fuzz/, scripts/fuzz.sh) found or were built
// against, replayed through the same parsers in the normal test build: each
// must be refused with an mftk::Error that names the input and says what is
// wrong, never crash, never escape as another exception type. The few that
// are valid input are listed by name with the reason, and must be read.
//
// Files under tests/data/fuzz/<target>/ are replayed by target; a crash
// found by scripts/fuzz.sh goes there once its parser is fixed.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <typeinfo>
#include <vector>

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

// A corpus file that is valid input, with the reason it is.
using Accepted = std::map<std::string, std::string>;  // file name -> why it is valid

// Runs `parse` on every file of tests/data/fuzz/<target>/. Each must be
// refused with an mftk::Error whose message names one of `sources` (the
// names the parser was given for the input) and then says what is wrong, in
// printable text; or, for the files in `accepted`, be read without error.
// Nothing else may come out.
template <class Parse>
void replay(const std::string& target, const std::vector<std::string>& sources, Parse parse,
            const Accepted& accepted = {}) {
  const fs::path dir = kCorpus / target;
  ASSERT_TRUE(fs::is_directory(dir)) << dir << " is missing: each target keeps a sample of its corpus there";
  int refused = 0;
  std::set<std::string> seen;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    seen.insert(name);
    SCOPED_TRACE(e.path().string());
    const auto valid = accepted.find(name);
    try {
      parse(bytes_of(e.path()));
      if (valid == accepted.end()) ADD_FAILURE() << "accepted, but it is not valid input";
    } catch (const mftk::Error& error) {
      const std::string what = error.what();
      if (std::getenv("MFTK_FUZZ_VERBOSE")) std::cerr << target << "/" << name << ": " << what << "\n";
      if (valid != accepted.end()) {
        ADD_FAILURE() << "refused, but it is valid input (" << valid->second << "): " << what;
        continue;
      }
      ++refused;
      size_t after_name = std::string::npos;
      for (const auto& source : sources)
        if (const size_t at = what.find(source); at != std::string::npos) after_name = at + source.size();
      EXPECT_NE(after_name, std::string::npos) << "the message does not name the input: " << what;
      // Something after the name: what is wrong with it.
      if (after_name != std::string::npos)
        EXPECT_GT(what.size(), after_name + 8) << "the message does not say what is wrong: " << what;
      // No control bytes of the input quoted raw: a NUL ends the message
      // early, others garble the terminal. (A DEL or a stray UTF-8 byte,
      // which JSON parsers quote as they read them, does neither.)
      for (const char ch : what)
        EXPECT_FALSE(static_cast<unsigned char>(ch) < 0x20 && ch != '\n' && ch != '\t')
            << "control byte " << int(ch) << " in the message: " << what;
    } catch (const std::exception& other) {
      ADD_FAILURE() << "escaped as " << typeid(other).name() << ", not mftk::Error: " << other.what();
    }
  }
  for (const auto& [name, why] : accepted) EXPECT_TRUE(seen.count(name)) << name << " is listed as valid but is missing";
  EXPECT_GT(refused, 0) << dir << " holds no input that must be refused";
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
  replay("safetensors_header", {"fuzz.safetensors"}, [](const std::string& file) {
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
  replay("safetensors_index", {"fuzz.index.json"},
         [](const std::string& text) { (void)mftk::detail::parse_checkpoint_index("fuzz.index.json", text); });
  try {
    (void)mftk::detail::parse_checkpoint_index("m.index.json", R"({"weight_map": {"a": "../../etc/passwd"}})");
    ADD_FAILURE() << "accepted a shard outside the folder";
  } catch (const mftk::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("shard file name '../../etc/passwd' is not a plain relative path"));
  }
}

TEST(FuzzRegressions, GgufInputsAreRefusedWithAMessage) {
  replay("gguf", {"fuzz.gguf"}, [](const std::string& file) { (void)mftk::core::GgufFile::parse("fuzz.gguf", file); });
}

TEST(FuzzRegressions, RecipeInputsAreRefusedWithAMessage) {
  replay("recipe", {"fuzz.toml", "--set"}, [](const std::string& text) {
    // As fuzz_recipe: leading "#@table.key=value" lines are --set overrides.
    std::vector<std::string> overrides;
    size_t pos = 0;
    while (text.compare(pos, 2, "#@") == 0) {
      const size_t end = text.find('\n', pos);
      overrides.push_back(text.substr(pos + 2, end == std::string::npos ? std::string::npos : end - pos - 2));
      if (end == std::string::npos) break;
      pos = end + 1;
    }
    const auto recipe = mftk::core::Recipe::parse(text, "fuzz.toml", overrides);
    for (const auto& [table, keys] : mftk::core::core_tables())
      if (table != "datasets") (void)recipe.section(table);
    (void)mftk::core::data_options_from_recipe(recipe);
  });
}

TEST(FuzzRegressions, PeftConfigInputsAreRefusedWithAMessage) {
  replay("peft_config", {"adapter_config.json"},
         [](const std::string& text) { (void)mftk::lora::parse_peft_config(text, "adapter_config.json"); });
}

TEST(FuzzRegressions, ConfigJsonInputsAreRefusedWithAMessage) {
  replay("config_json", {"config.json"},
         [](const std::string& text) { (void)mftk::mistral::MistralConfig::parse(text, "config.json"); });
}

TEST(FuzzRegressions, JsonlInputsAreRefusedWithAMessage) {
  const auto tokenizer = mftk::Tokenizer::load(mftk::train_test::tiny_checkpoint(1));
  mftk::train_test::ScratchDir dir("fuzz");
  // Files whose first byte sets skip_bad_rows (bit 4) and that hold valid
  // rows next to broken ones: the broken rows are skipped with a warning, as
  // documented, and the valid ones load. Checked below: something was
  // skipped, something loaded.
  const std::string skipped = "skip_bad_rows is set: its malformed rows are skipped, its valid rows load";
  const Accepted valid = {{"382fc0cf5cecd8d222f21b365226f3b255e268fa", skipped},
                          {"783fa79d28b930975e3960732940cd9723907dff", skipped},
                          {"888c1c96891db28f67d1be41d92974bf1f769cf1", skipped},
                          {"ab45b651f1f8dd93fb66f8256f5a7f88fc96d965", skipped},
                          {"aecfee9b22e6207ff9256a1bc27e2dc2ae8eb415", skipped},
                          {"d368709a9c2be409e17108d938c1fa23fef54015", skipped},
                          // The row whose number overflows a double is malformed, and skipped.
                          {"number-overflow-escaped-as-json-out-of-range.jsonl", skipped}};
  replay(
      "jsonl_chat", {"rows.jsonl"},
      [&](const std::string& file) {
        ASSERT_FALSE(file.empty());
        // As fuzz_jsonl_chat: the first byte picks type and options.
        const auto flags = static_cast<uint8_t>(file[0]);
        mftk::core::DatasetSpec spec;
        spec.path = dir.sub("rows.jsonl");
        std::ofstream(spec.path, std::ios::binary | std::ios::trunc) << file.substr(1);
        spec.type = static_cast<mftk::core::DatasetType>((flags & 3) % 3);
        const auto format = (flags & 4) ? mftk::core::ChatFormat::v1 : mftk::core::detect_chat_format(*tokenizer);
        const bool skip_bad_rows = flags & 16;
        mftk::core::DatasetFileStats stats;
        const auto examples = mftk::core::load_dataset(spec, *tokenizer, format, flags & 8, skip_bad_rows, stats);
        // Accepted only because broken rows were skipped; what loaded is what
        // the packer relies on (one mask entry per id, something to train on).
        EXPECT_TRUE(skip_bad_rows);
        EXPECT_GT(stats.skipped_total(), 0);
        EXPECT_FALSE(examples.empty());
        for (const auto& e : examples) {
          EXPECT_EQ(e.ids.size(), e.loss_mask.size());
          EXPECT_NE(std::count(e.loss_mask.begin(), e.loss_mask.end(), 1), 0);
        }
      },
      valid);
}
