// A small strict JSON reader for safetensors headers.
//
// Only what a header needs: objects (key order kept, duplicate keys rejected), arrays, strings
// with every escape, integers, and the other JSON literals so that valid-but-unexpected headers
// get a precise error instead of a parse failure. The text's size is bounded by the caller;
// nesting (64 levels) and the number of values (2^20, which bounds the memory a parse takes)
// by the parser.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sparkbatch::json {

struct Value {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  bool is_uint = false;     // a number written as a plain non-negative integer that fits in 64 bits
  uint64_t uint_value = 0;  // valid when is_uint
  std::string text;         // string contents (decoded), or the number as written
  std::vector<Value> items;                            // Array
  std::vector<std::pair<std::string, Value>> members;  // Object, in file order

  const Value* find(std::string_view key) const;
};

const char* type_name(Value::Type type);

// Parses `text` as one JSON value (surrounding whitespace allowed). Throws ParseError.
Value parse(std::string_view text);

struct ParseError {
  std::string message;
  std::size_t offset;
};

// Appends `s` to `out` as a quoted JSON string.
void append_quoted(std::string& out, std::string_view s);

}  // namespace sparkbatch::json
