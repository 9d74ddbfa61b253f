#include "tensorboard_writer.h"

#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"

namespace mftk::core {

namespace fs = std::filesystem;

namespace {

const std::array<uint32_t, 256>& crc32c_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

// Protocol-buffer wire format, only what an Event with scalars needs.
// A field's key is (field number << 3) | wire type.
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += char(uint8_t(v) | 0x80);
    v >>= 7;
  }
  out += char(uint8_t(v));
}

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (uint64_t(field) << 3) | type); }

void put_little_endian(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out += char(uint8_t(v >> (8 * i)));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event fields 1 (wall_time) and 2 (step), which every event carries.
std::string event_head(int64_t step) {
  std::string event;
  const double wall_time =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  uint64_t bits;
  std::memcpy(&bits, &wall_time, 8);
  put_key(event, 1, kFixed64);
  put_little_endian(event, bits, 8);
  put_key(event, 2, kVarint);
  put_varint(event, uint64_t(step));
  return event;
}

// The n of the file name: TensorBoard's writers count theirs per process, so
// two writers started in the same second get different names.
std::atomic<int> g_writers{0};

std::string host_name() {
  char name[HOST_NAME_MAX + 1] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || !name[0]) return "localhost";
  return name;
}

}  // namespace

uint32_t crc32c(const void* data, size_t size) {
  const auto& table = crc32c_table();
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; ++i) c = table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  const uint32_t c = crc32c(data, size);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& output_dir, int64_t first_step) {
  const fs::path dir = fs::path(output_dir) / "tensorboard";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    throw Error(fmt::format("cannot create {} for the TensorBoard events: {}", dir.string(),
                            ec ? ec.message() : "a file of that name is in the way"),
                "check the permissions of output_dir, or set [training] tensorboard = false");
  const std::string stem = fmt::format("events.out.tfevents.{}.{}.{}.", int64_t(std::time(nullptr)), host_name(),
                                       int64_t(::getpid()));
  // O_EXCL: mftk only ever writes a file it has just made.
  for (;;) {
    path_ = (dir / (stem + std::to_string(g_writers++))).string();
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ >= 0) break;
    if (errno != EEXIST)
      throw Error(fmt::format("cannot create {}: {}", path_, std::strerror(errno)),
                  "check the permissions of output_dir, or set [training] tensorboard = false");
  }
  // The first event names the file format; readers check it.
  std::string version = event_head(0);
  put_bytes(version, 3, "brain.Event:2");
  write_event(version);
  if (first_step > 0) {
    // SessionLog{status: START} (Event field 7; status is field 1, START = 1).
    std::string session_log;
    put_key(session_log, 1, kVarint);
    put_varint(session_log, 1);
    std::string start = event_head(first_step);
    put_bytes(start, 7, session_log);
    write_event(start);
  }
}

TensorBoardWriter::~TensorBoardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TensorBoardWriter::tag_for(const std::string& key) {
  if (key == "lr") return "train/learning_rate";
  if (key.rfind("eval_", 0) == 0) return "eval/" + key.substr(5);
  return "train/" + key;
}

void TensorBoardWriter::write_metrics(const nlohmann::json& record) {
  if (!record.is_object() || !record.contains("step") || !record["step"].is_number_integer()) return;
  std::vector<std::pair<std::string, float>> values;
  for (const auto& [key, value] : record.items())
    if (key != "step" && value.is_number()) values.emplace_back(tag_for(key), value.get<float>());
  if (!values.empty()) write_scalars(record["step"].get<int64_t>(), values);
}

void TensorBoardWriter::write_scalars(int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  // Summary{value: [Value{tag: 1, simple_value: 2}, ...]} as Event field 5.
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    put_key(value, 2, kFixed32);
    put_little_endian(value, bits, 4);
    put_bytes(summary, 1, value);
  }
  std::string event = event_head(step);
  put_bytes(event, 5, summary);
  write_event(event);
}

// A TFRecord: uint64 length, masked CRC of those 8 bytes, the data, masked
// CRC of the data (all little-endian), sent in one write.
void TensorBoardWriter::write_event(const std::string& event) {
  std::string record;
  put_little_endian(record, event.size(), 8);
  put_little_endian(record, masked_crc32c(record.data(), 8), 4);
  record += event;
  put_little_endian(record, masked_crc32c(event.data(), event.size()), 4);
  size_t done = 0;
  while (done < record.size()) {
    const ssize_t n = ::write(fd_, record.data() + done, record.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(fmt::format("cannot write {}: {}", path_, n < 0 ? std::strerror(errno) : "nothing written"),
                  "free some disk space, or set [training] tensorboard = false");
    done += size_t(n);
  }
}

}  // namespace mftk::core
