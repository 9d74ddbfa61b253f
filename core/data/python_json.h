// JSON values read and written exactly as Python's json module does it, for
// the function-calling parts of Mistral v0.3 chat rows: mistral-common
// builds those token ids from json.dumps(..., ensure_ascii=False) text, so
// every byte of the serialisation decides a token.
//
// defines: mftk::core::JsonValue, mftk::core::python_json_loads,
//          mftk::core::python_json_dumps, mftk::core::python_float_repr
//
// What nlohmann::json cannot give here, and this does: objects keep their
// keys in input order (a later duplicate replaces the value in the first
// key's place, as a Python dict does), integers keep every digit (Python
// ints are unbounded), floats print as Python's repr, separators are ", "
// and ": ", and non-ASCII text is written as UTF-8, not as \u escapes.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mftk::core {

class JsonValue {
 public:
  enum class Kind { null, boolean, integer, real, string, array, object };

  JsonValue() = default;  // null
  static JsonValue boolean(bool value);
  // `digits`: an optional '-' and decimal digits, as JSON writes an integer.
  static JsonValue integer(std::string digits);
  static JsonValue real(double value);
  static JsonValue string(std::string text);
  static JsonValue array(std::vector<JsonValue> items = {});
  static JsonValue object();

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::null; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }
  // "null", "boolean", "number", "string", "array", "object": the words
  // nlohmann::json's type_name() uses, so messages read the same everywhere.
  const char* type_name() const;

  bool as_bool() const { return boolean_; }
  double as_real() const { return real_; }
  const std::string& text() const { return text_; }  // a string's UTF-8, or an integer's digits

  const std::vector<JsonValue>& items() const { return items_; }  // array elements
  void push_back(JsonValue item) { items_.push_back(std::move(item)); }

  // Object members, in order.
  size_t size() const { return kind_ == Kind::object ? keys_.size() : items_.size(); }
  const std::string& key(size_t i) const { return keys_[i]; }
  const JsonValue& value(size_t i) const { return items_[i]; }
  const JsonValue* find(std::string_view key) const;  // nullptr when absent
  // Replaces the value of an existing key in place, else appends.
  void set(std::string key, JsonValue value);

 private:
  Kind kind_ = Kind::null;
  bool boolean_ = false;
  double real_ = 0;
  std::string text_;
  std::vector<std::string> keys_;  // object keys, parallel to items_
  std::vector<JsonValue> items_;   // array elements or object values
};

// Python's json.loads: strict JSON plus NaN, Infinity and -Infinity; an
// integer stays an integer, a number with a fraction or exponent becomes a
// double (1e400 is inf). Returns nullopt for anything json.loads refuses
// (then *error says why and where), and for nesting deeper than 512.
std::optional<JsonValue> python_json_loads(std::string_view text, std::string* error = nullptr);

// Python's json.dumps(value, ensure_ascii=False).
std::string python_json_dumps(const JsonValue& value);

// Python's repr(float): the shortest digits that round-trip, fixed notation
// for exponents -4..15 ("0.0001", "1e-05", "100.0", "1e+16").
std::string python_float_repr(double value);

}  // namespace mftk::core
