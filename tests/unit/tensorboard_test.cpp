// The TensorBoard events file (core/io/tensorboard_writer.h), read back by a
// reader written here from the format's definition, not from the writer:
// TFRecord framing (uint64 length, masked CRC32C of it, data, masked CRC32C
// of the data), CRCs from a bit-by-bit CRC32C (no table), and the protobuf
// wire format decoded field by field (Event: wall_time 1, step 2,
// file_version 3, summary 5, session_log 7; Summary.value 1; Value: tag 1,
// simple_value 2; from tensorboard/compat/proto/event.proto, summary.proto).
// Then a real `mftk run`: its events hold metrics.jsonl's losses.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "child_process.h"
#include "mftk/error.h"
#include "tensorboard_writer.h"
#include "train_test_support.h"

namespace {

namespace fs = std::filesystem;
namespace tt = mftk::train_test;
using json = nlohmann::json;
using mftk::core::TensorBoardWriter;

// CRC-32C bit by bit: reflected Castagnoli polynomial 0x82F63B78, initial
// value and final xor 0xFFFFFFFF.
uint32_t bitwise_crc32c(const std::string& bytes) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    c ^= b;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

uint32_t mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

uint64_t little_endian(const std::string& bytes, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t(uint8_t(bytes.at(at + size_t(i)))) << (8 * i);
  return v;
}

// One protobuf field: number, wire type and its payload (an integer for
// varint/fixed, the bytes for length-delimited).
struct Field {
  uint32_t number;
  int wire;
  uint64_t integer = 0;
  std::string bytes;
};

uint64_t read_varint(const std::string& s, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    if (at >= s.size() || shift > 63) throw std::runtime_error("truncated varint");
    const uint8_t b = uint8_t(s[at++]);
    v |= uint64_t(b & 0x7F) << shift;
    if (!(b & 0x80)) return v;
  }
}

std::vector<Field> decode_message(const std::string& s) {
  std::vector<Field> fields;
  size_t at = 0;
  while (at < s.size()) {
    const uint64_t key = read_varint(s, at);
    Field f{uint32_t(key >> 3), int(key & 7)};
    switch (f.wire) {
      case 0: f.integer = read_varint(s, at); break;
      case 1: f.integer = little_endian(s, at, 8), at += 8; break;
      case 5: f.integer = little_endian(s, at, 4), at += 4; break;
      case 2: {
        const uint64_t n = read_varint(s, at);
        if (at + n > s.size()) throw std::runtime_error("length past the end of the message");
        f.bytes = s.substr(at, n), at += n;
        break;
      }
      default: throw std::runtime_error(fmt::format("unexpected wire type {}", f.wire));
    }
    if (at > s.size()) throw std::runtime_error("field past the end of the message");
    fields.push_back(std::move(f));
  }
  return fields;
}

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  int session_status = -1;                          // SessionLog.status, -1 when absent
  std::vector<std::pair<std::string, float>> scalars;  // (tag, simple_value)
};

Event decode_event(const std::string& data) {
  Event e;
  for (const Field& f : decode_message(data)) {
    if (f.number == 1 && f.wire == 1) std::memcpy(&e.wall_time, &f.integer, 8);
    else if (f.number == 2 && f.wire == 0) e.step = int64_t(f.integer);
    else if (f.number == 3 && f.wire == 2) e.file_version = f.bytes;
    else if (f.number == 7 && f.wire == 2) {
      e.session_status = 0;
      for (const Field& s : decode_message(f.bytes))
        if (s.number == 1 && s.wire == 0) e.session_status = int(s.integer);
    } else if (f.number == 5 && f.wire == 2) {
      for (const Field& v : decode_message(f.bytes)) {
        if (v.number != 1 || v.wire != 2) throw std::runtime_error("Summary holds a field other than value");
        std::string tag;
        float value = NAN;
        bool has_value = false;
        for (const Field& x : decode_message(v.bytes)) {
          if (x.number == 1 && x.wire == 2) tag = x.bytes;
          else if (x.number == 2 && x.wire == 5) {
            const uint32_t bits = uint32_t(x.integer);
            std::memcpy(&value, &bits, 4);
            has_value = true;
          }
        }
        if (tag.empty() || !has_value) throw std::runtime_error("a Value without tag or simple_value");
        e.scalars.emplace_back(tag, value);
      }
    } else {
      throw std::runtime_error(fmt::format("unexpected Event field {} (wire type {})", f.number, f.wire));
    }
  }
  return e;
}

// Every record of a file, both CRCs checked; fails the test on any damage.
std::vector<Event> read_events(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string file = ss.str();
  std::vector<Event> events;
  size_t at = 0;
  while (at < file.size()) {
    if (file.size() - at < 12) throw std::runtime_error(fmt::format("truncated header at byte {}", at));
    const std::string length_bytes = file.substr(at, 8);
    const uint64_t length = little_endian(file, at, 8);
    if (uint32_t(little_endian(file, at + 8, 4)) != mask(bitwise_crc32c(length_bytes)))
      throw std::runtime_error(fmt::format("bad length CRC at byte {}", at));
    at += 12;
    if (file.size() - at < length + 4) throw std::runtime_error(fmt::format("truncated record at byte {}", at));
    const std::string data = file.substr(at, length);
    if (uint32_t(little_endian(file, at + length, 4)) != mask(bitwise_crc32c(data)))
      throw std::runtime_error(fmt::format("bad data CRC at byte {}", at));
    at += length + 4;
    events.push_back(decode_event(data));
  }
  return events;
}

std::vector<std::string> event_files(const std::string& output_dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(output_dir) / "tensorboard", ec))
    files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  return files;
}

double now_s() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

TEST(TensorBoard, Crc32cMatchesTheCheckValueAndTheMaskWorkedByHand) {
  const std::string check = "123456789";
  // The CRC-32C check value from the CRC catalogue (and RFC 3720's iSCSI tests).
  EXPECT_EQ(mftk::core::crc32c(check.data(), check.size()), 0xE3069283u);
  EXPECT_EQ(bitwise_crc32c(check), 0xE3069283u);
  // RFC 3720 B.4: 32 bytes of zeros -> 0x8A9136AA.
  const std::string zeros(32, '\0');
  EXPECT_EQ(mftk::core::crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  // By hand: 0xE3069283 >> 15 = 0x0001C60D; << 17 keeps the low 15 bits
  // 0x1283 -> 0x25060000; or: 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5.
  EXPECT_EQ(mftk::core::masked_crc32c(check.data(), check.size()), 0xC78AB0E5u);
  EXPECT_EQ(mftk::core::crc32c("", 0), 0u);
  // The table-driven code agrees with the bitwise one on every length up to 300.
  std::string bytes;
  for (int i = 0; i < 300; ++i) {
    ASSERT_EQ(mftk::core::crc32c(bytes.data(), bytes.size()), bitwise_crc32c(bytes)) << "length " << i;
    bytes += char((i * 131 + 7) & 0xFF);
  }
}

TEST(TensorBoard, TagsFollowTransformersNames) {
  EXPECT_EQ(TensorBoardWriter::tag_for("loss"), "train/loss");
  EXPECT_EQ(TensorBoardWriter::tag_for("lr"), "train/learning_rate");
  EXPECT_EQ(TensorBoardWriter::tag_for("grad_norm"), "train/grad_norm");
  EXPECT_EQ(TensorBoardWriter::tag_for("epoch"), "train/epoch");
  EXPECT_EQ(TensorBoardWriter::tag_for("eval_loss"), "eval/loss");
  EXPECT_EQ(TensorBoardWriter::tag_for("eval_ppl"), "eval/ppl");
  EXPECT_EQ(TensorBoardWriter::tag_for("tokens_per_s"), "train/tokens_per_s");
}

TEST(TensorBoard, AnIndependentReaderGetsBackEveryTagStepAndValue) {
  tt::ScratchDir dir("tensorboard");
  const double before = now_s();
  std::string path;
  {
    TensorBoardWriter writer(dir.str());
    path = writer.path();
    writer.write_scalars(1, {{"train/loss", 2.5f}, {"train/learning_rate", 1e-4f}});
    writer.write_scalars(300, {{"x", -0.0f}, {"y", NAN}, {"z", 3.4028235e38f}});
    writer.write_metrics(json{{"step", 7}, {"loss", 1.25}, {"lr", 2e-4}, {"eval_loss", 0.1}, {"tokens", 100},
                              {"note", "text"}});
    // Read while the writer is open: each record is on disk once written.
    EXPECT_EQ(read_events(path).size(), 4u);
  }
  const std::string name = fs::path(path).filename().string();
  EXPECT_TRUE(std::regex_match(name, std::regex(R"(events\.out\.tfevents\.[0-9]{10}\..+\.[0-9]+\.[0-9]+)"))) << name;
  EXPECT_NE(name.find(fmt::format(".{}.", getpid())), std::string::npos) << name;
  EXPECT_EQ(fs::path(path).parent_path(), fs::path(dir.str()) / "tensorboard");

  const auto events = read_events(path);
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[0].step, 0);
  EXPECT_TRUE(events[0].scalars.empty());
  for (const auto& e : events) {
    EXPECT_GE(e.wall_time, before - 1);
    EXPECT_LE(e.wall_time, now_s() + 1);
  }
  EXPECT_EQ(events[1].step, 1);
  ASSERT_EQ(events[1].scalars.size(), 2u);
  EXPECT_EQ(events[1].scalars[0], std::make_pair(std::string("train/loss"), 2.5f));
  EXPECT_EQ(events[1].scalars[1], std::make_pair(std::string("train/learning_rate"), 1e-4f));
  EXPECT_EQ(events[2].step, 300);  // a two-byte varint
  ASSERT_EQ(events[2].scalars.size(), 3u);
  EXPECT_TRUE(std::signbit(events[2].scalars[0].second));
  EXPECT_TRUE(std::isnan(events[2].scalars[1].second));
  EXPECT_EQ(events[2].scalars[2].second, 3.4028235e38f);
  EXPECT_EQ(events[3].step, 7);
  std::map<std::string, float> got(events[3].scalars.begin(), events[3].scalars.end());
  const std::map<std::string, float> want = {
      {"train/loss", 1.25f}, {"train/learning_rate", float(2e-4)}, {"eval/loss", float(0.1)}, {"train/tokens", 100.0f}};
  EXPECT_EQ(got, want);
}

TEST(TensorBoard, EachWriterMakesItsOwnFileAndAResumeMarksItsStart) {
  tt::ScratchDir dir("tensorboard");
  TensorBoardWriter first(dir.str());
  TensorBoardWriter resumed(dir.str(), 40);
  EXPECT_NE(first.path(), resumed.path());
  EXPECT_EQ(event_files(dir.str()).size(), 2u);
  const auto events = read_events(resumed.path());
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_EQ(events[1].step, 40);
  EXPECT_EQ(events[1].session_status, 1);  // SessionLog.START
}

TEST(TensorBoard, AFileInThePlaceOfTheFolderIsAnErrorNamingIt) {
  tt::ScratchDir dir("tensorboard");
  std::ofstream(dir.sub("tensorboard")) << "mine";
  try {
    TensorBoardWriter writer(dir.str());
    FAIL() << "no error";
  } catch (const mftk::Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir.sub("tensorboard")), std::string::npos) << e.what();
    EXPECT_NE(e.hint().find("tensorboard = false"), std::string::npos) << e.hint();
  }
  std::ifstream in(dir.sub("tensorboard"));
  std::string text;
  in >> text;
  EXPECT_EQ(text, "mine");
}

// A real run: 3 steps, logging every step, eval at the end.
std::string recipe_text(const std::string& dir, bool tensorboard) {
  std::ofstream(dir + "/train.jsonl") << R"({"instruction": "What color is the sky?", "output": "blue"}
{"instruction": "What color is grass?", "output": "green"}
{"instruction": "What is two plus two?", "output": "four"}
{"instruction": "How many legs has a bird?", "output": "two"}
)";
  std::ofstream(dir + "/eval.jsonl") << R"({"instruction": "What color is snow?", "output": "white"}
)";
  return fmt::format(R"([model]
plugin = "mistral"
path = "{base}"

[adapter]
plugin = "lora"
r = 4
alpha = 8

[[datasets]]
path = "{dir}/train.jsonl"
type = "instruction"

[[datasets]]
path = "{dir}/eval.jsonl"
type = "instruction"
split = "eval"

[data]
dataset_prepared_path = "{dir}/prepared"

[optimizer]
plugin = "adamw"

[schedule]
learning_rate = 1e-2
lr_scheduler = "linear"

[training]
sequence_len = 64
micro_batch_size = 2
max_steps = 3
logging_steps = 1
output_dir = "{dir}/run"
threads = 1
tensorboard = {tensorboard}

[validate]
parity_rows = 0
)",
                     fmt::arg("base", tt::tiny_checkpoint(1)), fmt::arg("dir", dir),
                     fmt::arg("tensorboard", tensorboard ? "true" : "false"));
}

int run_mftk(const tt::ScratchDir& dir, bool tensorboard) {
  std::ofstream(dir.sub("recipe.toml")) << recipe_text(dir.str(), tensorboard);
  namespace cp = mftk::child_process;
  return cp::exit_code(cp::wait_status(cp::spawn(cp::mftk_binary(), {"run", dir.sub("recipe.toml")}, dir.sub("log")),
                                       std::chrono::seconds(120)));
}

std::string text_of(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(TensorBoard, ARunLogsMetricsJsonlsLossesAsScalars) {
  tt::ScratchDir dir("tensorboard_run");
  ASSERT_EQ(run_mftk(dir, true), 0) << text_of(dir.sub("log"));
  const auto files = event_files(dir.sub("run"));
  ASSERT_EQ(files.size(), 1u);

  // metrics.jsonl: the reference, read as floats as TensorBoard stores them.
  std::map<int64_t, float> train_loss, learning_rate;
  std::optional<std::pair<int64_t, float>> eval_loss;
  std::istringstream lines(text_of(dir.sub("run/metrics.jsonl")));
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line);
    if (j.contains("loss")) {
      train_loss[j["step"]] = j["loss"].get<float>();
      learning_rate[j["step"]] = j["lr"].get<float>();
    }
    if (j.contains("eval_loss")) eval_loss = {j["step"].get<int64_t>(), j["eval_loss"].get<float>()};
  }
  ASSERT_EQ(train_loss.size(), 3u);
  ASSERT_TRUE(eval_loss);

  std::map<int64_t, float> tb_loss, tb_lr;
  std::vector<std::pair<int64_t, float>> tb_eval;
  std::set<std::string> tags;
  for (const auto& e : read_events(files[0]))
    for (const auto& [tag, value] : e.scalars) {
      tags.insert(tag);
      if (tag == "train/loss") EXPECT_TRUE(tb_loss.emplace(e.step, value).second) << "step " << e.step << " twice";
      if (tag == "train/learning_rate") tb_lr.emplace(e.step, value);
      if (tag == "eval/loss") tb_eval.emplace_back(e.step, value);
    }
  EXPECT_EQ(tb_loss, train_loss);
  EXPECT_EQ(tb_lr, learning_rate);
  ASSERT_EQ(tb_eval.size(), 1u);
  EXPECT_EQ(tb_eval[0], *eval_loss);
  for (const char* tag : {"train/grad_norm", "train/epoch", "train/tokens_per_s", "eval/ppl"})
    EXPECT_TRUE(tags.count(tag)) << tag;
}

TEST(TensorBoard, TurnedOffARunWritesNoEventsFolder) {
  tt::ScratchDir dir("tensorboard_off");
  ASSERT_EQ(run_mftk(dir, false), 0) << text_of(dir.sub("log"));
  EXPECT_TRUE(fs::exists(dir.sub("run/metrics.jsonl")));
  EXPECT_FALSE(fs::exists(dir.sub("run/tensorboard")));
}

}  // namespace
