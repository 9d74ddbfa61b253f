// Python's json.loads / json.dumps(ensure_ascii=False); see python_json.h.
#include "python_json.h"

#include <charconv>
#include <cmath>
#include <cstdlib>

#include <fmt/format.h>

namespace mftk::core {

// ----------------------------------------------------------------- value ----

JsonValue JsonValue::boolean(bool value) {
  JsonValue v;
  v.kind_ = Kind::boolean;
  v.boolean_ = value;
  return v;
}

JsonValue JsonValue::integer(std::string digits) {
  JsonValue v;
  v.kind_ = Kind::integer;
  // int("-0") is 0 in Python, and json.dumps writes it so.
  v.text_ = digits == "-0" ? "0" : std::move(digits);
  return v;
}

JsonValue JsonValue::real(double value) {
  JsonValue v;
  v.kind_ = Kind::real;
  v.real_ = value;
  return v;
}

JsonValue JsonValue::string(std::string text) {
  JsonValue v;
  v.kind_ = Kind::string;
  v.text_ = std::move(text);
  return v;
}

JsonValue JsonValue::array(std::vector<JsonValue> items) {
  JsonValue v;
  v.kind_ = Kind::array;
  v.items_ = std::move(items);
  return v;
}

JsonValue JsonValue::object() {
  JsonValue v;
  v.kind_ = Kind::object;
  return v;
}

const char* JsonValue::type_name() const {
  switch (kind_) {
    case Kind::null: return "null";
    case Kind::boolean: return "boolean";
    case Kind::integer:
    case Kind::real: return "number";
    case Kind::string: return "string";
    case Kind::array: return "array";
    case Kind::object: return "object";
  }
  return "value";
}

const JsonValue* JsonValue::find(std::string_view key) const {
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i] == key) return &items_[i];
  return nullptr;
}

void JsonValue::set(std::string key, JsonValue value) {
  for (size_t i = 0; i < keys_.size(); ++i) {
    if (keys_[i] == key) {
      items_[i] = std::move(value);
      return;
    }
  }
  keys_.push_back(std::move(key));
  items_.push_back(std::move(value));
}

// ---------------------------------------------------------------- loads ----

namespace {

constexpr int kMaxDepth = 512;

struct ParseFailure {
  std::string what;
  size_t at;
};

class PythonJsonParser {
 public:
  explicit PythonJsonParser(std::string_view text) : s_(text) {}

  JsonValue parse_document() {
    skip_space();
    JsonValue v = parse_value(0);
    skip_space();
    if (pos_ != s_.size()) fail("extra data after the value");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw ParseFailure{what, pos_}; }

  // json.loads skips exactly these four.
  void skip_space() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool consume(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  JsonValue parse_value(int depth) {
    if (depth > kMaxDepth) fail(fmt::format("nesting deeper than {}", kMaxDepth));
    if (pos_ >= s_.size()) fail("expecting a value");
    const char c = s_[pos_];
    if (c == '{') return parse_object(depth);
    if (c == '[') return parse_array(depth);
    if (c == '"') return JsonValue::string(parse_string());
    if (consume("null")) return JsonValue();
    if (consume("true")) return JsonValue::boolean(true);
    if (consume("false")) return JsonValue::boolean(false);
    if (consume("NaN")) return JsonValue::real(std::nan(""));
    if (consume("Infinity")) return JsonValue::real(HUGE_VAL);
    if (consume("-Infinity")) return JsonValue::real(-HUGE_VAL);
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    fail("expecting a value");
  }

  JsonValue parse_object(int depth) {
    ++pos_;  // '{'
    JsonValue object = JsonValue::object();
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == '}') {
      ++pos_;
      return object;
    }
    while (true) {
      skip_space();
      if (pos_ >= s_.size() || s_[pos_] != '"') fail("expecting a property name in double quotes");
      std::string key = parse_string();
      skip_space();
      if (pos_ >= s_.size() || s_[pos_] != ':') fail("expecting ':' delimiter");
      ++pos_;
      skip_space();
      object.set(std::move(key), parse_value(depth + 1));
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == '}') {
        ++pos_;
        return object;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') fail("expecting ',' delimiter");
      ++pos_;
    }
  }

  JsonValue parse_array(int depth) {
    ++pos_;  // '['
    JsonValue array = JsonValue::array();
    skip_space();
    if (pos_ < s_.size() && s_[pos_] == ']') {
      ++pos_;
      return array;
    }
    while (true) {
      skip_space();
      array.push_back(parse_value(depth + 1));
      skip_space();
      if (pos_ < s_.size() && s_[pos_] == ']') {
        ++pos_;
        return array;
      }
      if (pos_ >= s_.size() || s_[pos_] != ',') fail("expecting ',' delimiter");
      ++pos_;
    }
  }

  // The grammar json.loads matches: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?
  JsonValue parse_number() {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (s_[pos_] == '-') ++pos_;
    if (pos_ < s_.size() && s_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      fail("expecting a value");
    }
    bool is_real = false;
    if (pos_ + 1 < s_.size() && s_[pos_] == '.' && s_[pos_ + 1] >= '0' && s_[pos_ + 1] <= '9') {
      ++pos_;
      digits();
      is_real = true;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      const size_t mark = pos_;
      ++pos_;
      if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
      if (digits() == 0) {
        pos_ = mark;  // "1e" is the number 1 followed by junk, as in Python
      } else {
        is_real = true;
      }
    }
    std::string text(s_.substr(start, pos_ - start));
    if (!is_real) return JsonValue::integer(std::move(text));
    // float(text): correctly rounded; out of range gives +-inf or 0 as in Python.
    return JsonValue::real(std::strtod(text.c_str(), nullptr));
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  uint32_t parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("invalid \\uXXXX escape");
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      value <<= 4;
      if (c >= '0' && c <= '9') value |= uint32_t(c - '0');
      else if (c >= 'a' && c <= 'f') value |= uint32_t(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') value |= uint32_t(c - 'A' + 10);
      else fail("invalid \\uXXXX escape");
    }
    return value;
  }

  std::string parse_string() {
    ++pos_;  // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("invalid control character in a string");  // json.loads is strict by default
      if (c != '\\') {
        out += char(c);
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= s_.size()) fail("unterminated string");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(pos_, 2) == "\\u") {
            const size_t mark = pos_;
            pos_ += 2;
            const uint32_t low = parse_hex4();
            if (low >= 0xDC00 && low <= 0xDFFF) cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            else pos_ = mark;
          }
          // Python keeps a lone surrogate in its str, but it has no UTF-8
          // form, so no tokenizer could encode the text: refuse it here.
          if (cp >= 0xD800 && cp <= 0xDFFF) fail("lone UTF-16 surrogate in a \\u escape");
          append_utf8(out, cp);
          break;
        }
        default: fail("invalid escape");
      }
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------- dumps ----

void dump_string(std::string& out, const std::string& text) {
  out += '"';
  for (const char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", unsigned(c));
        else out += ch;  // ensure_ascii=False: UTF-8 as is, DEL included
    }
  }
  out += '"';
}

void dump(std::string& out, const JsonValue& v) {
  switch (v.kind()) {
    case JsonValue::Kind::null: out += "null"; return;
    case JsonValue::Kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case JsonValue::Kind::integer: out += v.text(); return;
    case JsonValue::Kind::real: {
      const double x = v.as_real();
      // json.dumps' own words for the values JSON has no number for.
      if (std::isnan(x)) out += "NaN";
      else if (std::isinf(x)) out += x > 0 ? "Infinity" : "-Infinity";
      else out += python_float_repr(x);
      return;
    }
    case JsonValue::Kind::string: dump_string(out, v.text()); return;
    case JsonValue::Kind::array:
      out += '[';
      for (size_t i = 0; i < v.items().size(); ++i) {
        if (i > 0) out += ", ";
        dump(out, v.items()[i]);
      }
      out += ']';
      return;
    case JsonValue::Kind::object:
      out += '{';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) out += ", ";
        dump_string(out, v.key(i));
        out += ": ";
        dump(out, v.value(i));
      }
      out += '}';
      return;
  }
}

}  // namespace

std::optional<JsonValue> python_json_loads(std::string_view text, std::string* error) {
  try {
    return PythonJsonParser(text).parse_document();
  } catch (const ParseFailure& failure) {
    if (error) *error = fmt::format("{} at character {}", failure.what, failure.at);
    return std::nullopt;
  }
}

std::string python_json_dumps(const JsonValue& value) {
  std::string out;
  dump(out, value);
  return out;
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  // The shortest round-trip digits, as "d.ddde[+-]x"; Python picks the same
  // digits (David Gay's shortest mode) and only lays them out differently.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof buf, value, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  std::string sign;
  if (!sci.empty() && sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  if (digits.size() > 1) digits.erase(1, 1);  // drop the '.'
  const int exponent = std::stoi(sci.substr(e + 1));
  const int decpt = exponent + 1;  // digits are 0.DIGITS x 10^decpt
  const int n = int(digits.size());
  if (decpt <= -4 || decpt > 16) {
    std::string out = sign + digits.substr(0, 1);
    if (n > 1) out += "." + digits.substr(1);
    return out + fmt::format("e{}{:02d}", exponent < 0 ? '-' : '+', std::abs(exponent));
  }
  if (decpt <= 0) return sign + "0." + std::string(size_t(-decpt), '0') + digits;
  if (decpt < n) return sign + digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
  return sign + digits + std::string(size_t(decpt - n), '0') + ".0";
}

}  // namespace mftk::core
