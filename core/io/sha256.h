// SHA-256 (FIPS 180-4) for content fingerprints: tokenizer files, cache keys,
// checkpoint manifests. Not constant-time; not for secrets.
//
// defines: mftk::core::Sha256, mftk::core::sha256_hex
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace mftk::core {

// Streaming hasher: update() any number of times, then digest()/hex_digest()
// once (a finished hasher throws mftk::Error on further use).
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  void update(const std::string& bytes) { update(bytes.data(), bytes.size()); }
  std::array<uint8_t, 32> digest();
  std::string hex_digest();  // 64 lowercase hex characters

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

std::string sha256_hex(const void* data, size_t size);
inline std::string sha256_hex(const std::string& bytes) { return sha256_hex(bytes.data(), bytes.size()); }

// Hashes a whole file in chunks; throws mftk::Error naming the path if it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace mftk::core
