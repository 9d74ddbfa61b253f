// mftk::Tokenizer over sentencepiece, run in its own link namespace through
// libmftk_spm.so (see spm_loader.h). The vocabulary (pieces, scores, types)
// is copied out once at load, so only encode/decode cross into the shim.
#include "mftk/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "sha256.h"
#include "spm_loader.h"

namespace mftk {

namespace fs = std::filesystem;

namespace {

struct SpecialTokenFlags {
  bool add_bos = true;
  bool add_eos = false;
};

// HF tokenizer_config.json: only add_bos_token / add_eos_token matter here.
SpecialTokenFlags read_tokenizer_config(const fs::path& folder) {
  SpecialTokenFlags flags;
  fs::path config_path = folder / "tokenizer_config.json";
  if (!fs::exists(config_path)) return flags;
  std::ifstream in(config_path);
  if (!in) throw Error(fmt::format("cannot open '{}'", config_path.string()), "check its permissions");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw UsageError(fmt::format("'{}' is not valid JSON: {}", config_path.string(), e.what()),
                     "fix the file or delete it to use the defaults (add_bos_token=true, add_eos_token=false)");
  }
  auto read_flag = [&](const char* key, bool& out) {
    auto it = config.find(key);
    if (it == config.end() || it->is_null()) return;
    if (!it->is_boolean()) {
      throw UsageError(fmt::format("'{}': {} must be true or false, found {}", config_path.string(), key, it->dump()),
                       "set it to true or false");
    }
    out = it->get<bool>();
  };
  read_flag("add_bos_token", flags.add_bos);
  read_flag("add_eos_token", flags.add_eos);
  return flags;
}

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot open tokenizer model '{}'", path.string()), "check its permissions");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(fmt::format("read error on tokenizer model '{}'", path.string()));
  return bytes;
}

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const core::SpmShim& shim, MftkSpm* handle, std::string model_path,
                         std::string fingerprint, SpecialTokenFlags flags)
      : shim_(shim),
        handle_(handle),
        model_path_(std::move(model_path)),
        fingerprint_(std::move(fingerprint)),
        flags_(flags) {
    vocab_size_ = shim_.vocab_size(handle_);
    bos_id_ = shim_.bos_id(handle_);
    eos_id_ = shim_.eos_id(handle_);
    unk_id_ = shim_.unk_id(handle_);
    pieces_.resize(static_cast<size_t>(vocab_size_));
    scores_.resize(static_cast<size_t>(vocab_size_));
    types_.resize(static_cast<size_t>(vocab_size_));
    piece_ids_.reserve(static_cast<size_t>(vocab_size_));
    std::string buffer(64, '\0');
    for (int32_t id = 0; id < vocab_size_; ++id) {
      int64_t size = shim_.id_to_piece(handle_, id, buffer.data(), buffer.size());
      if (size > static_cast<int64_t>(buffer.size())) {
        buffer.resize(static_cast<size_t>(size));
        size = shim_.id_to_piece(handle_, id, buffer.data(), buffer.size());
      }
      MFTK_CHECK(size >= 0, "'{}': sentencepiece reports no piece for id {} < vocab size {}", model_path_, id,
                 vocab_size_);
      auto& piece = pieces_[static_cast<size_t>(id)];
      piece.assign(buffer.data(), static_cast<size_t>(size));
      scores_[static_cast<size_t>(id)] = shim_.score(handle_, id);
      int32_t type = shim_.piece_type(handle_, id);
      MFTK_CHECK(type >= 1 && type <= 6, "'{}': piece {} has unknown sentencepiece type {}", model_path_, id, type);
      types_[static_cast<size_t>(id)] = static_cast<PieceType>(type);
      piece_ids_.emplace(piece, id);  // first id wins, as in sentencepiece
    }
  }

  ~SentencePieceTokenizer() override { shim_.free(handle_); }
  SentencePieceTokenizer(const SentencePieceTokenizer&) = delete;
  SentencePieceTokenizer& operator=(const SentencePieceTokenizer&) = delete;

  std::vector<int32_t> encode(const std::string& text) const override {
    // Identity-normalized text gives at most one id per byte plus the dummy
    // prefix, so this size almost always fits on the first call.
    std::vector<int32_t> ids(text.size() + 16);
    char err[core::kSpmErrorCapacity] = {0};
    int64_t count = shim_.encode(handle_, text.data(), text.size(), ids.data(), ids.size(), err, sizeof err);
    if (count > static_cast<int64_t>(ids.size())) {
      ids.resize(static_cast<size_t>(count));
      count = shim_.encode(handle_, text.data(), text.size(), ids.data(), ids.size(), err, sizeof err);
    }
    if (count < 0) throw Error(fmt::format("tokenizer '{}': {}", model_path_, err));
    ids.resize(static_cast<size_t>(count));
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string text(ids.size() * 8 + 16, '\0');
    char err[core::kSpmErrorCapacity] = {0};
    int64_t size = shim_.decode(handle_, ids.data(), ids.size(), text.data(), text.size(), err, sizeof err);
    if (size > static_cast<int64_t>(text.size())) {
      text.resize(static_cast<size_t>(size));
      size = shim_.decode(handle_, ids.data(), ids.size(), text.data(), text.size(), err, sizeof err);
    }
    if (size < 0) throw Error(fmt::format("tokenizer '{}': {}", model_path_, err));
    text.resize(static_cast<size_t>(size));
    return text;
  }

  int32_t vocab_size() const override { return vocab_size_; }
  std::string piece(int32_t id) const override { return pieces_[checked(id)]; }
  float score(int32_t id) const override { return scores_[checked(id)]; }
  PieceType type(int32_t id) const override { return types_[checked(id)]; }
  std::optional<int32_t> piece_to_id(const std::string& piece) const override {
    auto it = piece_ids_.find(piece);
    if (it == piece_ids_.end()) return std::nullopt;
    return it->second;
  }

  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  int32_t unk_id() const override { return unk_id_; }
  bool add_bos() const override { return flags_.add_bos; }
  bool add_eos() const override { return flags_.add_eos; }
  const std::string& fingerprint() const override { return fingerprint_; }
  const std::string& model_path() const override { return model_path_; }

 private:
  size_t checked(int32_t id) const {
    if (id < 0 || id >= vocab_size_) {
      throw Error(fmt::format("token id {} is outside the vocabulary of '{}' (ids 0..{})", id, model_path_,
                              vocab_size_ - 1));
    }
    return static_cast<size_t>(id);
  }

  const core::SpmShim& shim_;
  MftkSpm* handle_;
  std::string model_path_;
  std::string fingerprint_;
  SpecialTokenFlags flags_;
  int32_t vocab_size_ = 0, bos_id_ = -1, eos_id_ = -1, unk_id_ = -1;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string, int32_t> piece_ids_;
};

}  // namespace

std::shared_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  fs::path given(path);
  fs::path model_file;
  SpecialTokenFlags flags;
  std::error_code ec;
  if (fs::is_directory(given, ec)) {
    model_file = given / "tokenizer.model";
    if (!fs::is_regular_file(model_file, ec)) {
      throw UsageError(fmt::format("checkpoint folder '{}' has no tokenizer.model", path),
                       "mftk reads sentencepiece tokenizers only (tokenizer.model); pass the .model file "
                       "itself or a folder that holds one");
    }
    flags = read_tokenizer_config(given);
  } else if (fs::is_regular_file(given, ec)) {
    model_file = given;  // a bare .model file: HF defaults for BOS/EOS
  } else {
    throw UsageError(fmt::format("tokenizer path '{}' does not exist", path),
                     "pass a checkpoint folder holding tokenizer.model, or the .model file");
  }

  // Check the shim first: a missing shim is a build problem, not a model problem.
  const core::SpmShim& shim = core::spm_shim();
  std::string bytes = read_file_bytes(model_file);
  std::string fingerprint = core::sha256_hex(bytes.data(), bytes.size());

  char err[core::kSpmErrorCapacity] = {0};
  MftkSpm* handle = shim.load(model_file.string().c_str(), err, sizeof err);
  if (handle == nullptr) {
    throw UsageError(fmt::format("cannot load tokenizer '{}': {}", model_file.string(), err),
                     "the file must be a sentencepiece model (tokenizer.model); HF tokenizer.json is not supported");
  }
  try {
    return std::make_shared<SentencePieceTokenizer>(shim, handle, model_file.string(), std::move(fingerprint),
                                                    flags);
  } catch (...) {
    shim.free(handle);  // the constructor threw before the object took ownership
    throw;
  }
}

}  // namespace mftk
