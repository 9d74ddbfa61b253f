// What first-party plugins share through the SDK (issue 17): the row rules
// (mftk/rows.h), the GGUF reader (mftk/gguf_reader.h), the one atomic file
// write (mftk/atomic_file.h) and PEFT's adapter_config.json reader with the
// LoRA scaling rule (mftk/peft_config.h), and the optimizer state reader
// (mftk/optimizer_state.h). Each is checked through its SDK
// name, against hand-worked cases and written-out formulas.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "lora/peft_config.h"
#include "mftk/atomic_file.h"
#include "mftk/batch.h"
#include "mftk/chat_format.h"
#include "mftk/error.h"
#include "mftk/gguf_reader.h"
#include "mftk/optimizer_state.h"
#include "mftk/output_path.h"
#include "mftk/peft_config.h"
#include "mftk/rows.h"
#include "mftk/tensor.h"

namespace {

namespace fs = std::filesystem;

constexpr int32_t kIgnore = static_cast<int32_t>(mftk::kIgnoreIndex);

TEST(SdkRows, AppendDocumentShiftsTargetsAndNumbersDocuments) {
  mftk::PackedRow row;
  // Document A: prompt 1 10, answer 11 2 (mask on the answer).
  mftk::append_document(row, mftk::Example{{1, 10, 11, 2}, {0, 0, 1, 1}}, 4);
  // Document B, only its first two tokens.
  mftk::append_document(row, mftk::Example{{1, 20, 2}, {0, 1, 1}}, 2);
  mftk::pad_row(row, 8, /*pad_id=*/0);
  // targets[t] = ids[t+1] where loss_mask[t+1], and never across a document's end.
  EXPECT_EQ(row.ids, (std::vector<int32_t>{1, 10, 11, 2, 1, 20, 0, 0}));
  EXPECT_EQ(row.targets, (std::vector<int32_t>{kIgnore, 11, 2, kIgnore, 20, kIgnore, kIgnore, kIgnore}));
  EXPECT_EQ(row.position_ids, (std::vector<int32_t>{0, 1, 2, 3, 0, 1, 0, 0}));
  EXPECT_EQ(row.doc_ids, (std::vector<int32_t>{0, 0, 0, 0, 1, 1, -1, -1}));
  mftk::pad_row(row, 4, 0);  // shorter than the row: nothing changes
  EXPECT_EQ(row.ids.size(), 8u);
}

TEST(SdkRows, AppendDocumentRefusesBadLengths) {
  mftk::PackedRow row;
  const mftk::Example e{{1, 2, 3}, {0, 1, 1}};
  EXPECT_THROW(mftk::append_document(row, e, 0), mftk::Error);
  EXPECT_THROW(mftk::append_document(row, e, 4), mftk::Error);
  EXPECT_THROW(mftk::append_document(row, mftk::Example{{1, 2}, {1}}, 1), mftk::Error);
  EXPECT_TRUE(row.ids.empty());
}

TEST(SdkRows, SplitMix64BelowStaysInRange) {
  mftk::SplitMix64 a(7), b(7);
  EXPECT_EQ(a.next(), b.next());  // a fixed algorithm: same seed, same stream
  for (int i = 0; i < 1000; ++i) EXPECT_LT(a.below(3), 3u);
  EXPECT_THROW(a.below(0), mftk::Error);
}

// A GGUF v3 image written out byte by byte from the layout in
// mftk/gguf_format.h: one u32 key, one 2x3 F32 tensor.
std::string tiny_gguf() {
  std::string b;
  auto u32 = [&](uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) {
    u64(s.size());
    b += s;
  };
  u32(0x46554747);  // "GGUF"
  u32(3);
  u64(1);  // tensors
  u64(1);  // metadata keys
  str("acme.count");
  u32(4);  // uint32
  u32(42);
  str("w");
  u32(2);  // n_dims
  u64(3);  // ne[0]
  u64(2);  // ne[1]
  u32(0);  // F32
  u64(0);  // offset
  b.append((32 - b.size() % 32) % 32, '\0');
  for (int i = 0; i < 6; ++i) {
    const float v = float(i) + 0.5f;
    b.append(reinterpret_cast<const char*>(&v), 4);
  }
  b.append(8, '\0');  // the tensor padded to the alignment
  return b;
}

TEST(SdkGguf, ReadsAHandWrittenFile) {
  const mftk::GgufFile file = mftk::GgufFile::parse("tiny.gguf", tiny_gguf());
  EXPECT_EQ(file.version(), 3u);
  EXPECT_EQ(file.alignment(), 32u);
  EXPECT_EQ(file.get("acme.count", mftk::GgufValueType::uint32).as_int(), 42);
  ASSERT_EQ(file.tensors().size(), 1u);
  const mftk::GgufTensorInfo& w = file.tensors()[0];
  EXPECT_EQ(w.ne, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(w.nbytes, 24u);
  const std::string_view data = file.data(w);
  ASSERT_EQ(data.size(), 24u);
  float last = 0;
  std::memcpy(&last, data.data() + 20, 4);
  EXPECT_EQ(last, 5.5f);
  EXPECT_EQ(mftk::ggml_row_bytes(mftk::GgmlType::q8_0, 64), 2u * 34u);  // 32-element blocks of 34 bytes
}

TEST(SdkGguf, RefusesATruncatedFile) {
  std::string bytes = tiny_gguf();
  bytes.resize(bytes.size() - 12);  // the tensor's data cut short
  EXPECT_THROW(mftk::GgufFile::parse("cut.gguf", bytes), mftk::Error);
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

size_t entries(const fs::path& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++n;
  return n;
}

TEST(SdkAtomicFile, CommitReplacesAndAbandonLeavesTheOldFile) {
  const fs::path dir = fs::temp_directory_path() / ("mftk_sdk_atomic_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path target = dir / "out.bin";
  mftk::write_file_atomic(target.string(), "old");
  {
    mftk::AtomicFile file(target.string());
    EXPECT_EQ(fs::path(file.temp_path()).parent_path(), dir);  // beside the target: same filesystem
    std::ofstream(file.temp_path(), std::ios::binary) << "abandoned";
    EXPECT_EQ(slurp(target), "old");  // nothing visible before commit()
  }
  EXPECT_EQ(slurp(target), "old");
  EXPECT_EQ(entries(dir), 1u);  // the temporary is gone
  {
    mftk::AtomicFile file(target.string());
    std::ofstream(file.temp_path(), std::ios::binary) << "new";
    file.commit();
  }
  EXPECT_EQ(slurp(target), "new");
  EXPECT_EQ(entries(dir), 1u);
  fs::remove_all(dir);
}

TEST(SdkPeftConfig, DefaultsAndScalingFollowPeft) {
  const mftk::PeftLoraConfig c =
      mftk::parse_peft_lora_config(R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]})", "a.json");
  EXPECT_EQ(c.r, 4);
  EXPECT_EQ(c.alpha, 8.0);  // PEFT's default lora_alpha
  EXPECT_EQ(c.dropout, 0.0);
  EXPECT_FALSE(c.use_rslora);
  EXPECT_EQ(c.target_modules, (std::vector<std::string>{"q_proj"}));
  // scaling = alpha / r, or alpha / sqrt(r) with rsLoRA
  EXPECT_DOUBLE_EQ(mftk::lora_scaling(16, 4, false), 4.0);
  EXPECT_DOUBLE_EQ(mftk::lora_scaling(16, 4, true), 8.0);
  EXPECT_DOUBLE_EQ(mftk::lora_scaling(3, 9, true), 1.0);
  EXPECT_THROW(mftk::lora_scaling(16, 0, false), mftk::Error);
  EXPECT_THROW(mftk::parse_peft_lora_config(
                   R"({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "use_dora": true})", "a.json"),
               mftk::UsageError);
}

TEST(SdkPeftConfig, TheLoraPluginReadsTheSameConfig) {
  const std::string text = R"({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
    "use_rslora": true, "target_modules": "all-linear", "modules_to_save": ["lm_head"]})";
  const mftk::PeftLoraConfig sdk = mftk::parse_peft_lora_config(text, "a.json");
  const mftk::lora::LoRAOptions plugin = mftk::lora::parse_peft_config(text, "a.json");
  EXPECT_EQ(plugin.r, sdk.r);
  EXPECT_EQ(plugin.alpha, 32.0);
  EXPECT_EQ(plugin.dropout, sdk.dropout);
  EXPECT_EQ(plugin.use_rslora, sdk.use_rslora);
  EXPECT_EQ(plugin.target_modules, (std::vector<std::string>{mftk::kPeftAllLinear}));
  EXPECT_EQ(plugin.modules_to_save, sdk.modules_to_save);
}

TEST(SdkChatFormat, Names) {
  EXPECT_STREQ(mftk::chat_format_name(mftk::ChatFormat::v1), "v1");
  EXPECT_STREQ(mftk::chat_format_name(mftk::ChatFormat::v3), "v3");
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mftk::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(SdkOptimizerState, TakesByNameDtypeAndShapeAndRefusesTheRest) {
  const mftk::NamedTensors state = {{"step", at::scalar_tensor(int64_t{7}, at::kLong)},
                                    {"w.m", at::ones({2, 3})},
                                    {"w.q", at::zeros({4}, at::kByte)}};
  {
    mftk::OptimizerStateReader reader(state, "acme");
    EXPECT_EQ(reader.step(), 7);
    EXPECT_TRUE(at::equal(reader.take("w.m", at::kFloat, {2, 3}), at::ones({2, 3})));
    EXPECT_EQ(reader.take("w.q", at::kByte, {4}).numel(), 4);
    EXPECT_NO_THROW(reader.finish());
  }
  mftk::OptimizerStateReader reader(state, "acme");
  EXPECT_NE(error_of([&] { reader.take("w.v", at::kFloat, {2, 3}); }).find("acme state: 'w.v' is missing"),
            std::string::npos);
  EXPECT_NE(error_of([&] { reader.take("w.m", at::kDouble, {2, 3}); }).find("'w.m' has dtype Float, expected Double"),
            std::string::npos);
  EXPECT_NE(error_of([&] { reader.take("w.m", at::kFloat, {3, 2}); }).find("'w.m' has shape [2, 3], expected [3, 2]"),
            std::string::npos);
  // step and w.q were never taken by this reader (w.m was, by the failed calls above).
  EXPECT_NE(error_of([&] { reader.finish(); }).find("2 saved tensor(s) belong to no trainable tensor"),
            std::string::npos);
  EXPECT_THROW(mftk::OptimizerStateReader({{"step", at::scalar_tensor(-1.5)}}, "acme").step(), mftk::Error);
  EXPECT_THROW(mftk::OptimizerStateReader({{"a", at::ones({1})}, {"a", at::ones({1})}}, "acme"), mftk::Error);
}

TEST(SdkOptimizerState, CheckTrainable) {
  EXPECT_NO_THROW(mftk::check_trainable({{"w", at::ones({2})}}, "acme"));
  EXPECT_THROW(mftk::check_trainable({}, "acme"), mftk::Error);
  EXPECT_THROW(mftk::check_trainable({{"step", at::ones({2})}}, "acme"), mftk::Error);
  EXPECT_THROW(mftk::check_trainable({{"w", at::ones({2})}, {"w", at::ones({2})}}, "acme"), mftk::Error);
  EXPECT_THROW(mftk::check_trainable({{"w", at::ones({2}, at::kLong)}}, "acme"), mftk::Error);
}

}  // namespace
