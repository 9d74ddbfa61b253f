// The tokenizer of a checkpoint folder (sentencepiece tokenizer.model plus
// tokenizer_config.json / special_tokens_map.json).
//
// defines: mftk::PieceType, mftk::Tokenizer
//
// libsentencepiece cannot share a link namespace with libtorch (their
// protobuf versions clash), so the implementation runs sentencepiece in its
// own namespace behind a C shim; see docs/architecture.md.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace mftk {

// sentencepiece's piece types (also GGUF's tokenizer.ggml.token_type).
enum class PieceType : int { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

class Tokenizer {
 public:
  // path: a checkpoint folder holding tokenizer.model, or the .model file.
  static std::shared_ptr<Tokenizer> load(const std::string& path);
  virtual ~Tokenizer() = default;

  // Plain sentencepiece encoding: no BOS/EOS, a dummy-prefix "▁" as the model says.
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual std::string piece(int32_t id) const = 0;
  virtual float score(int32_t id) const = 0;
  virtual PieceType type(int32_t id) const = 0;
  virtual std::optional<int32_t> piece_to_id(const std::string& piece) const = 0;

  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t unk_id() const = 0;
  virtual bool add_bos() const = 0;  // from tokenizer_config.json (default true)
  virtual bool add_eos() const = 0;  // (default false)
  // SHA-256 of tokenizer.model, for cache keys.
  virtual const std::string& fingerprint() const = 0;
  virtual const std::string& model_path() const = 0;
};

}  // namespace mftk
