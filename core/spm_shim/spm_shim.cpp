// libmftk_spm: the C ABI of spm_shim.h over sentencepiece 0.1.97.
//
// Loaded by core/data/tokenizer.cpp with dlmopen(LM_ID_NEWLM), never linked into a
// torch process. Every exported function catches everything: a C++ exception
// must not unwind into the caller's (different) libstdc++.
#include "spm_shim.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#define MFTK_SPM_EXPORT __attribute__((visibility("default")))

struct MftkSpm {
  sentencepiece::SentencePieceProcessor processor;
  // Piece types from the ModelProto: the processor answers IsControl/IsByte/...
  // but has no IsUserDefined, and Debian ships no sentencepiece_model.pb.h.
  std::vector<int32_t> piece_types;
};

namespace {

void copy_error(const std::string& message, char* err, size_t err_cap) {
  if (err == nullptr || err_cap == 0) return;
  size_t n = message.size() < err_cap - 1 ? message.size() : err_cap - 1;
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

// --- a minimal protobuf wire-format reader ----------------------------------
// Only what ModelProto's piece list needs: ModelProto field 1 is
// `repeated SentencePiece pieces`, and SentencePiece field 3 is `Type type`
// (default NORMAL = 1). Other fields are skipped by wire type.

struct WireReader {
  const unsigned char* pos;
  const unsigned char* end;

  bool read_varint(uint64_t& value) {
    value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= end) return false;
      unsigned char byte = *pos++;
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) return true;
    }
    return false;
  }

  // Reads one field header and hands back a length-delimited payload or
  // skips a scalar; returns false on malformed input.
  bool next(uint32_t& field, uint32_t& wire_type, uint64_t& varint_value, WireReader& payload) {
    uint64_t key = 0;
    if (!read_varint(key)) return false;
    field = static_cast<uint32_t>(key >> 3);
    wire_type = static_cast<uint32_t>(key & 7);
    switch (wire_type) {
      case 0:
        return read_varint(varint_value);
      case 1:
        if (end - pos < 8) return false;
        pos += 8;
        return true;
      case 2: {
        uint64_t length = 0;
        if (!read_varint(length) || length > static_cast<uint64_t>(end - pos)) return false;
        payload = WireReader{pos, pos + length};
        pos += length;
        return true;
      }
      case 5:
        if (end - pos < 4) return false;
        pos += 4;
        return true;
      default:
        return false;
    }
  }
};

bool parse_piece_types(const std::string& serialized, std::vector<int32_t>& types) {
  const auto* data = reinterpret_cast<const unsigned char*>(serialized.data());
  WireReader model{data, data + serialized.size()};
  while (model.pos < model.end) {
    uint32_t field = 0, wire_type = 0;
    uint64_t value = 0;
    WireReader piece{nullptr, nullptr};
    if (!model.next(field, wire_type, value, piece)) return false;
    if (field != 1 || wire_type != 2) continue;
    int32_t type = 1;
    while (piece.pos < piece.end) {
      uint32_t piece_field = 0, piece_wire = 0;
      uint64_t piece_value = 0;
      WireReader unused{nullptr, nullptr};
      if (!piece.next(piece_field, piece_wire, piece_value, unused)) return false;
      if (piece_field == 3 && piece_wire == 0) type = static_cast<int32_t>(piece_value);
    }
    types.push_back(type);
  }
  return true;
}

bool valid_id(const MftkSpm* spm, int32_t id) {
  return spm != nullptr && id >= 0 && id < spm->processor.GetPieceSize();
}

}  // namespace

extern "C" {

MFTK_SPM_EXPORT int32_t mftk_spm_abi_version(void) { return MFTK_SPM_ABI_VERSION; }

MFTK_SPM_EXPORT MftkSpm* mftk_spm_load(const char* model_path, char* err, size_t err_cap) {
  try {
    auto spm = std::make_unique<MftkSpm>();
    auto status = spm->processor.Load(model_path);
    if (!status.ok()) {
      copy_error(std::string("sentencepiece cannot load '") + model_path + "': " + status.ToString(),
                 err, err_cap);
      return nullptr;
    }
    if (!parse_piece_types(spm->processor.serialized_model_proto(), spm->piece_types) ||
        static_cast<int>(spm->piece_types.size()) != spm->processor.GetPieceSize()) {
      copy_error(std::string("'") + model_path +
                     "': sentencepiece loaded it but its piece list could not be read back "
                     "(corrupt or unknown ModelProto layout)",
                 err, err_cap);
      return nullptr;
    }
    return spm.release();
  } catch (const std::exception& e) {
    copy_error(std::string("loading '") + model_path + "': " + e.what(), err, err_cap);
  } catch (...) {
    copy_error(std::string("loading '") + model_path + "': unknown exception", err, err_cap);
  }
  return nullptr;
}

MFTK_SPM_EXPORT void mftk_spm_free(MftkSpm* spm) { delete spm; }

MFTK_SPM_EXPORT int32_t mftk_spm_vocab_size(const MftkSpm* spm) {
  return spm == nullptr ? 0 : spm->processor.GetPieceSize();
}
MFTK_SPM_EXPORT int32_t mftk_spm_bos_id(const MftkSpm* spm) { return spm->processor.bos_id(); }
MFTK_SPM_EXPORT int32_t mftk_spm_eos_id(const MftkSpm* spm) { return spm->processor.eos_id(); }
MFTK_SPM_EXPORT int32_t mftk_spm_unk_id(const MftkSpm* spm) { return spm->processor.unk_id(); }
MFTK_SPM_EXPORT int32_t mftk_spm_pad_id(const MftkSpm* spm) { return spm->processor.pad_id(); }

MFTK_SPM_EXPORT int64_t mftk_spm_encode(const MftkSpm* spm, const char* text, size_t text_len,
                                        int32_t* ids, size_t ids_cap, char* err, size_t err_cap) {
  try {
    std::vector<int> out;
    auto status = spm->processor.Encode(absl::string_view(text, text_len), &out);
    if (!status.ok()) {
      copy_error("sentencepiece encode failed: " + status.ToString(), err, err_cap);
      return -1;
    }
    if (out.size() <= ids_cap) {
      for (size_t i = 0; i < out.size(); ++i) ids[i] = out[i];
    }
    return static_cast<int64_t>(out.size());
  } catch (const std::exception& e) {
    copy_error(std::string("sentencepiece encode failed: ") + e.what(), err, err_cap);
  } catch (...) {
    copy_error("sentencepiece encode failed: unknown exception", err, err_cap);
  }
  return -1;
}

MFTK_SPM_EXPORT int64_t mftk_spm_decode(const MftkSpm* spm, const int32_t* ids, size_t n_ids,
                                        char* text, size_t text_cap, char* err, size_t err_cap) {
  try {
    std::vector<int> in(ids, ids + n_ids);
    for (int id : in) {
      if (!valid_id(spm, id)) {
        copy_error("cannot decode id " + std::to_string(id) + ": the vocabulary has ids 0.." +
                       std::to_string(spm->processor.GetPieceSize() - 1),
                   err, err_cap);
        return -1;
      }
    }
    std::string out;
    auto status = spm->processor.Decode(in, &out);
    if (!status.ok()) {
      copy_error("sentencepiece decode failed: " + status.ToString(), err, err_cap);
      return -1;
    }
    if (out.size() <= text_cap) std::memcpy(text, out.data(), out.size());
    return static_cast<int64_t>(out.size());
  } catch (const std::exception& e) {
    copy_error(std::string("sentencepiece decode failed: ") + e.what(), err, err_cap);
  } catch (...) {
    copy_error("sentencepiece decode failed: unknown exception", err, err_cap);
  }
  return -1;
}

MFTK_SPM_EXPORT int64_t mftk_spm_id_to_piece(const MftkSpm* spm, int32_t id, char* buf,
                                             size_t buf_cap) {
  if (!valid_id(spm, id)) return -1;
  const std::string& piece = spm->processor.IdToPiece(id);
  if (piece.size() <= buf_cap) std::memcpy(buf, piece.data(), piece.size());
  return static_cast<int64_t>(piece.size());
}

MFTK_SPM_EXPORT float mftk_spm_score(const MftkSpm* spm, int32_t id) {
  return valid_id(spm, id) ? spm->processor.GetScore(id) : 0.0f;
}

MFTK_SPM_EXPORT int32_t mftk_spm_piece_type(const MftkSpm* spm, int32_t id) {
  return valid_id(spm, id) ? spm->piece_types[static_cast<size_t>(id)] : 0;
}

MFTK_SPM_EXPORT int32_t mftk_spm_piece_to_id(const MftkSpm* spm, const char* piece,
                                             size_t piece_len) {
  try {
    absl::string_view wanted(piece, piece_len);
    int id = spm->processor.PieceToId(wanted);
    // PieceToId answers unk_id for an unknown piece; only the unk piece itself maps there.
    if (id == spm->processor.unk_id() && spm->processor.IdToPiece(id) != std::string(piece, piece_len))
      return -1;
    return id;
  } catch (...) {
    return -1;
  }
}

MFTK_SPM_EXPORT int32_t mftk_spm_train_args(const char* args, char* err, size_t err_cap) {
  try {
    auto status = sentencepiece::SentencePieceTrainer::Train(absl::string_view(args));
    if (!status.ok()) {
      copy_error("sentencepiece training failed: " + status.ToString(), err, err_cap);
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    copy_error(std::string("sentencepiece training failed: ") + e.what(), err, err_cap);
  } catch (...) {
    copy_error("sentencepiece training failed: unknown exception", err, err_cap);
  }
  return -1;
}

MFTK_SPM_EXPORT int32_t mftk_spm_train_to_file(const char* const* keys, const char* const* values,
                                               size_t n_pairs, const char* model_out_path,
                                               char* err, size_t err_cap) {
  try {
    std::unordered_map<std::string, std::string> kwargs;
    for (size_t i = 0; i < n_pairs; ++i) kwargs[keys[i]] = values[i];
    if (kwargs.count("model_prefix") != 0) {
      copy_error("mftk_spm_train_to_file writes model_out_path itself; drop the model_prefix key",
                 err, err_cap);
      return -1;
    }
    std::string serialized;
    auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, nullptr, &serialized);
    if (!status.ok()) {
      copy_error("sentencepiece training failed: " + status.ToString(), err, err_cap);
      return -1;
    }
    // Write next to the target, then rename: a reader never sees half a model.
    std::string temp_path = std::string(model_out_path) + ".part";
    {
      std::ofstream out(temp_path, std::ios::binary | std::ios::trunc);
      out.write(serialized.data(), static_cast<std::streamsize>(serialized.size()));
      out.close();
      if (!out) {
        std::remove(temp_path.c_str());
        copy_error("cannot write '" + temp_path + "' (directory missing or not writable?)", err,
                   err_cap);
        return -1;
      }
    }
    if (std::rename(temp_path.c_str(), model_out_path) != 0) {
      std::remove(temp_path.c_str());
      copy_error(std::string("cannot rename '") + temp_path + "' to '" + model_out_path + "'", err,
                 err_cap);
      return -1;
    }
    return 0;
  } catch (const std::exception& e) {
    copy_error(std::string("sentencepiece training failed: ") + e.what(), err, err_cap);
  } catch (...) {
    copy_error("sentencepiece training failed: unknown exception", err, err_cap);
  }
  return -1;
}

}  // extern "C"
