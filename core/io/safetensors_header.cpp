// The byte-level parse of a safetensors file (safetensors_parse.h): the
// 8-byte length field, the JSON header and the layout of the data section,
// checked exactly like the reference Rust reader (docs/formats.md §1.1,
// safetensors layout). No file or mapping here: SafetensorsFile::open and the
// fuzz targets hand in bytes.

#include <algorithm>
#include <map>
#include <unordered_set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mftk/error.h"
#include "safetensors_internal.h"
#include "safetensors_parse.h"
#include "utf8.h"

namespace mftk {
namespace {

using namespace safetensors_impl;

// serde_json's default recursion limit; deeper headers fail to parse there.
constexpr int kMaxJsonDepth = 128;

// Header parsing: a SAX handler that checks the schema as it goes, so a
// hostile header never builds a large DOM and every problem gets a message
// naming the tensor. Accepts what serde_json accepts for the reference
// reader's types: unknown keys inside a tensor entry are ignored, a null
// __metadata__ means "no metadata", everything else must have the right type.

class HeaderParser final : public nlohmann::json_sax<nlohmann::json> {
 public:
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;
  std::string error;  // the first problem found; empty when the header is fine

  bool null() override {
    // serde reads a null __metadata__ as "no metadata".
    if (state_ == State::kMetadataValue) {
      state_ = State::kTopKey;
      return true;
    }
    return other_value();
  }
  bool boolean(bool) override { return other_value(); }
  bool number_integer(number_integer_t v) override {
    return number(v < 0, v < 0 ? 0 : static_cast<uint64_t>(v), false);
  }
  bool number_unsigned(number_unsigned_t v) override { return number(false, v, false); }
  bool number_float(number_float_t, const string_t&) override { return number(false, 0, true); }
  bool binary(binary_t&) override { return other_value(); }

  bool string(string_t& s) override {
    switch (state_) {
      case State::kMetadataString:
        metadata.emplace(metadata_key_, s);
        state_ = State::kMetadataKey;
        return true;
      case State::kDtype:
        if (dtype_rank(s) < 0) {
          return fail(fmt::format("tensor '{}': unknown dtype '{}' (known: {})", current_.name, s,
                                  known_dtype_names()));
        }
        current_.dtype = s;
        have_dtype_ = true;
        state_ = State::kEntryKey;
        return true;
      default:
        return other_value();
    }
  }

  bool start_object(std::size_t) override {
    if (!enter()) return false;
    switch (state_) {
      case State::kRoot: state_ = State::kTopKey; return true;
      case State::kMetadataValue: state_ = State::kMetadataKey; return true;
      case State::kEntryValue:
        state_ = State::kEntryKey;
        have_dtype_ = have_shape_ = have_offsets_ = false;
        return true;
      case State::kSkipValue: state_ = State::kSkipping; skip_depth_ = 1; return true;
      case State::kSkipping: ++skip_depth_; return true;
      default: return wrong_type();
    }
  }

  bool start_array(std::size_t) override {
    if (!enter()) return false;
    switch (state_) {
      case State::kShapeOpen: state_ = State::kShapeItem; return true;
      case State::kOffsetsOpen: state_ = State::kOffsetsItem; offset_count_ = 0; return true;
      case State::kSkipValue: state_ = State::kSkipping; skip_depth_ = 1; return true;
      case State::kSkipping: ++skip_depth_; return true;
      default: return wrong_type();
    }
  }

  bool key(string_t& k) override {
    switch (state_) {
      case State::kTopKey:
        if (k == "__metadata__") {
          if (seen_metadata_) return fail("'__metadata__' appears twice");
          seen_metadata_ = true;
          state_ = State::kMetadataValue;
          return true;
        }
        if (!names_.insert(k).second) return fail(fmt::format("tensor '{}' appears twice", k));
        current_ = TensorInfo{};
        current_.name = k;
        state_ = State::kEntryValue;
        return true;
      case State::kMetadataKey:
        if (metadata.count(k)) return fail(fmt::format("__metadata__ key '{}' appears twice", k));
        metadata_key_ = k;
        state_ = State::kMetadataString;
        return true;
      case State::kEntryKey: {
        bool* seen = nullptr;
        if (k == "dtype") {
          seen = &have_dtype_;
          state_ = State::kDtype;
        } else if (k == "shape") {
          seen = &have_shape_;
          state_ = State::kShapeOpen;
        } else if (k == "data_offsets") {
          seen = &have_offsets_;
          state_ = State::kOffsetsOpen;
        } else {
          state_ = State::kSkipValue;
          return true;
        }
        if (*seen) return fail(fmt::format("tensor '{}': field '{}' appears twice", current_.name, k));
        return true;
      }
      case State::kSkipping:
        return true;
      default:
        return fail("unexpected key");  // the JSON grammar makes this unreachable
    }
  }

  bool end_object() override {
    --depth_;
    switch (state_) {
      case State::kTopKey: state_ = State::kDone; return true;
      case State::kMetadataKey: state_ = State::kTopKey; return true;
      case State::kEntryKey: {
        const char* missing = !have_dtype_ ? "dtype" : !have_shape_ ? "shape"
                              : !have_offsets_ ? "data_offsets" : nullptr;
        if (missing) {
          return fail(fmt::format("tensor '{}': entry has no '{}' (needs dtype, shape, data_offsets)",
                                  current_.name, missing));
        }
        tensors.push_back(std::move(current_));
        state_ = State::kTopKey;
        return true;
      }
      case State::kSkipping: return leave_skipped();
      default: return fail("unexpected end of object");
    }
  }

  bool end_array() override {
    --depth_;
    switch (state_) {
      case State::kShapeItem:
        have_shape_ = true;
        state_ = State::kEntryKey;
        return true;
      case State::kOffsetsItem:
        if (offset_count_ != 2) {
          return fail(fmt::format("tensor '{}': data_offsets has {} entries, needs exactly 2 [begin, end]",
                                  current_.name, offset_count_));
        }
        have_offsets_ = true;
        state_ = State::kEntryKey;
        return true;
      case State::kSkipping: return leave_skipped();
      default: return fail("unexpected end of array");
    }
  }

  bool parse_error(std::size_t position, const std::string& last_token,
                   const nlohmann::detail::exception& ex) override {
    if (error.empty()) {
      std::string near = last_token.substr(0, 40);
      error = fmt::format("header is not valid JSON (at header byte {}, near '{}'): {}", position, near,
                          ex.what());
    }
    return false;
  }

 private:
  enum class State {
    kRoot,            // before the top-level value
    kTopKey,          // in the top-level object: a key or '}'
    kMetadataValue,   // after "__metadata__":
    kMetadataKey,     // in __metadata__: a key or '}'
    kMetadataString,  // after a key in __metadata__
    kEntryValue,      // after "<tensor name>":
    kEntryKey,        // in a tensor entry: a key or '}'
    kDtype,
    kShapeOpen,
    kShapeItem,
    kOffsetsOpen,
    kOffsetsItem,
    kSkipValue,       // value of an unknown key in a tensor entry (ignored)
    kSkipping,        // inside an ignored object or array
    kDone,
  };

  bool fail(std::string message) {
    if (error.empty()) error = std::move(message);
    return false;
  }

  bool enter() {
    if (++depth_ > kMaxJsonDepth) {
      return fail(fmt::format("header JSON is nested deeper than {} levels", kMaxJsonDepth));
    }
    return true;
  }

  bool leave_skipped() {
    if (--skip_depth_ == 0) state_ = State::kEntryKey;
    return true;
  }

  // A value whose JSON type does not fit where it appears.
  bool wrong_type() {
    switch (state_) {
      case State::kRoot: return fail("header is not a JSON object");
      case State::kMetadataValue: return fail("__metadata__ is not an object of strings");
      case State::kMetadataString:
        return fail(fmt::format("__metadata__ value for key '{}' is not a string (only string -> string "
                                "metadata is allowed)", metadata_key_));
      case State::kEntryValue:
        return fail(fmt::format("entry for tensor '{}' is not an object", current_.name));
      case State::kDtype: return fail(fmt::format("tensor '{}': dtype is not a string", current_.name));
      case State::kShapeOpen:
      case State::kShapeItem:
        return fail(fmt::format("tensor '{}': shape must be an array of non-negative integers",
                                current_.name));
      case State::kOffsetsOpen:
      case State::kOffsetsItem:
        return fail(fmt::format("tensor '{}': data_offsets must be an array of two non-negative integers",
                                current_.name));
      default: return fail("unexpected JSON value");
    }
  }

  bool other_value() {
    switch (state_) {
      case State::kSkipValue: state_ = State::kEntryKey; return true;
      case State::kSkipping: return true;
      default: break;
    }
    return wrong_type();
  }

  bool number(bool negative, uint64_t value, bool is_float) {
    switch (state_) {
      case State::kShapeItem:
        if (is_float || negative) {
          return fail(fmt::format("tensor '{}': shape must be an array of non-negative integers{}",
                                  current_.name, negative ? " (negative dimension)" : ""));
        }
        // TensorInfo and libtorch hold dimensions as int64 (extra check: the
        // reference allows up to 2^64-1 when another dimension is 0).
        if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
          return fail(fmt::format("tensor '{}': dimension {} is larger than 2^63-1", current_.name, value));
        }
        current_.shape.push_back(static_cast<int64_t>(value));
        return true;
      case State::kOffsetsItem:
        if (is_float || negative) {
          return fail(fmt::format("tensor '{}': data_offsets must be two non-negative integers",
                                  current_.name));
        }
        if (offset_count_ >= 2) {
          return fail(fmt::format("tensor '{}': data_offsets has more than 2 entries", current_.name));
        }
        (offset_count_ == 0 ? current_.begin : current_.end) = value;
        ++offset_count_;
        return true;
      case State::kSkipValue: state_ = State::kEntryKey; return true;
      case State::kSkipping: return true;
      default: return wrong_type();
    }
  }

  State state_ = State::kRoot;
  int depth_ = 0;
  int skip_depth_ = 0;
  int offset_count_ = 0;
  bool seen_metadata_ = false;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  TensorInfo current_;
  std::string metadata_key_;
  std::unordered_set<std::string> names_;
};

// Checks the offsets and sizes like the reference reader's validate():
// sorted by offsets, contiguous from 0, byte count == dtype x shape, and the
// last end == data section size.
void validate_layout(const std::string& path, std::vector<TensorInfo>& tensors, uint64_t data_size) {
  std::stable_sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected_begin = 0;
  const TensorInfo* previous = nullptr;
  for (const TensorInfo& t : tensors) {
    if (t.end < t.begin) {
      throw Error(fmt::format("{}: tensor '{}': data_offsets [{}, {}] end before they begin", path, t.name,
                              t.begin, t.end), kBadFileHint);
    }
    if (t.begin > expected_begin) {
      throw Error(fmt::format("{}: hole of {} bytes in the data section before tensor '{}' (data_offsets "
                              "[{}, {}]; {})", path, t.begin - expected_begin, t.name, t.begin, t.end,
                              previous ? fmt::format("previous tensor '{}' ends at {}", previous->name,
                                                     expected_begin)
                                       : std::string("the first tensor must start at 0")),
                  kBadFileHint);
    }
    if (t.begin < expected_begin) {
      throw Error(fmt::format("{}: tensor '{}' (data_offsets [{}, {}]) overlaps tensor '{}' which ends at {}",
                              path, t.name, t.begin, t.end, previous->name, expected_begin), kBadFileHint);
    }
    expected_begin = t.end;

    const int bits = kDtypes[dtype_rank(t.dtype)].bits;
    uint64_t elements = 1;
    uint64_t total_bits = 0;
    bool overflow = false;
    for (const int64_t d : t.shape) {
      overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements);
    }
    overflow = overflow || __builtin_mul_overflow(elements, static_cast<uint64_t>(bits), &total_bits);
    if (overflow) {
      throw Error(fmt::format("{}: tensor '{}': shape {} x {} overflows 64-bit arithmetic", path, t.name,
                              shape_text(t.shape), t.dtype), kBadFileHint);
    }
    if (total_bits % 8 != 0) {
      throw Error(fmt::format("{}: tensor '{}': {} elements of {} ({} bits each) is not a whole number of "
                              "bytes", path, t.name, elements, t.dtype, bits), kBadFileHint);
    }
    if (total_bits / 8 != t.nbytes()) {
      throw Error(fmt::format("{}: tensor '{}': dtype {} x shape {} needs {} bytes, but data_offsets [{}, {}] "
                              "hold {} bytes", path, t.name, t.dtype, shape_text(t.shape), total_bits / 8,
                              t.begin, t.end, t.nbytes()), kBadFileHint);
    }
    previous = &t;
  }
  if (expected_begin < data_size) {
    throw Error(fmt::format("{}: {} trailing bytes after the last tensor (data section is {} bytes, the "
                            "tensors cover {})", path, data_size - expected_begin, data_size, expected_begin),
                kBadFileHint);
  }
  if (expected_begin > data_size) {
    throw Error(fmt::format("{}: the tensors need {} bytes of data but only {} follow the header "
                            "(file truncated?)", path, expected_begin, data_size), kBadFileHint);
  }
}

}  // namespace

namespace detail {

uint64_t safetensors_header_length(const std::string& path, uint64_t file_size,
                                   const unsigned char* length_bytes) {
  if (file_size < 8) {
    throw Error(fmt::format("{}: file is {} bytes, shorter than the 8-byte header length field (header too "
                            "small)", path, file_size), kBadFileHint);
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size > kMaxHeaderBytes) {
    throw Error(fmt::format("{}: header length {} is larger than the {}-byte limit (header too large)", path,
                            header_size, kMaxHeaderBytes), kBadFileHint);
  }
  if (8 + header_size > file_size) {
    throw Error(fmt::format("{}: header length {} reaches past the end of the {}-byte file (invalid header "
                            "length; truncated file?)", path, header_size, file_size), kBadFileHint);
  }
  return header_size;
}

SafetensorsHeader parse_safetensors_header(const std::string& path, const std::string& header,
                                           uint64_t data_size) {
  if (const auto bad = core::find_invalid_utf8(header)) {
    throw Error(fmt::format("{}: header is not valid UTF-8 (bad byte at header offset {})", path, *bad),
                kBadFileHint);
  }
  // nlohmann skips a leading byte-order mark; serde_json (the reference) does not.
  if (header.size() >= 3 && header.compare(0, 3, "\xEF\xBB\xBF") == 0) {
    throw Error(fmt::format("{}: header starts with a UTF-8 byte-order mark, which is not JSON", path),
                kBadFileHint);
  }
  HeaderParser sax;
  const bool parsed = nlohmann::json::sax_parse(header.data(), header.data() + header.size(), &sax);
  if (!parsed || !sax.error.empty()) {
    throw Error(fmt::format("{}: {}", path, sax.error.empty() ? "header is not valid JSON"
                                                                   : sax.error),
                kBadFileHint);
  }

  detail::SafetensorsHeader out{std::move(sax.tensors), std::move(sax.metadata)};
  validate_layout(path, out.tensors, data_size);
  return out;
}

}  // namespace detail

}  // namespace mftk
