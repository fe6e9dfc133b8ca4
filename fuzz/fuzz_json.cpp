// libFuzzer target: the strict JSON reader of safetensors headers (csrc/json.cpp).
//
// Every input either parses or throws json::ParseError with an offset inside the input. A parsed
// value is written back as JSON (strings through json::append_quoted, numbers as written) and
// read again: the two trees must be equal, and every decoded string must be valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "json.hpp"

namespace {

using sparkbatch::json::Value;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_json: invariant violated: %s\n", what);
  std::abort();
}

bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len;
    uint32_t cp, min_cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1Fu; min_cp = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0Fu; min_cp = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07u; min_cp = 0x10000; }
    else return false;
    if (i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (t & 0x3Fu);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

void write(std::string& out, const Value& v) {
  switch (v.type) {
    case Value::Type::Null: out += "null"; break;
    case Value::Type::Bool: out += v.boolean ? "true" : "false"; break;
    case Value::Type::Number: out += v.text; break;
    case Value::Type::String: sparkbatch::json::append_quoted(out, v.text); break;
    case Value::Type::Array:
      out += '[';
      for (std::size_t i = 0; i < v.items.size(); ++i) {
        if (i) out += ',';
        write(out, v.items[i]);
      }
      out += ']';
      break;
    case Value::Type::Object:
      out += '{';
      for (std::size_t i = 0; i < v.members.size(); ++i) {
        if (i) out += ',';
        sparkbatch::json::append_quoted(out, v.members[i].first);
        out += ':';
        write(out, v.members[i].second);
      }
      out += '}';
      break;
  }
}

void check(const Value& v) {
  switch (v.type) {
    case Value::Type::String:
      if (!valid_utf8(v.text)) fail("a decoded string is not valid UTF-8");
      break;
    case Value::Type::Number:
      if (v.is_uint && std::to_string(v.uint_value) != v.text)
        fail("is_uint number whose value differs from its text");
      if (!v.is_uint && !v.text.empty() && v.text.find_first_not_of("0123456789") == std::string::npos &&
          v.text.size() < 20)
        fail("a plain integer below 2^64 not marked is_uint");
      break;
    case Value::Type::Array:
      for (const auto& item : v.items) check(item);
      break;
    case Value::Type::Object:
      for (std::size_t i = 0; i < v.members.size(); ++i) {
        if (!valid_utf8(v.members[i].first)) fail("a key is not valid UTF-8");
        if (v.find(v.members[i].first) != &v.members[i].second) fail("duplicate key accepted");
        check(v.members[i].second);
      }
      break;
    default: break;
  }
}

bool same(const Value& a, const Value& b) {
  if (a.type != b.type || a.boolean != b.boolean || a.text != b.text || a.is_uint != b.is_uint ||
      a.uint_value != b.uint_value || a.items.size() != b.items.size() ||
      a.members.size() != b.members.size())
    return false;
  for (std::size_t i = 0; i < a.items.size(); ++i)
    if (!same(a.items[i], b.items[i])) return false;
  for (std::size_t i = 0; i < a.members.size(); ++i)
    if (a.members[i].first != b.members[i].first || !same(a.members[i].second, b.members[i].second))
      return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Value v;
  try {
    v = sparkbatch::json::parse(text);
  } catch (const sparkbatch::json::ParseError& e) {
    if (e.offset > size) fail("ParseError offset past the end of the input");
    if (e.message.empty()) fail("ParseError without a message");
    return 0;
  }
  check(v);
  std::string again;
  write(again, v);
  Value w;
  try {
    w = sparkbatch::json::parse(again);
  } catch (const sparkbatch::json::ParseError& e) {
    std::fprintf(stderr, "re-parse of %s failed: %s at %zu\n", again.c_str(), e.message.c_str(),
                 e.offset);
    fail("a parsed value written back is not valid JSON");
  }
  if (!same(v, w)) fail("a parsed value written back reads differently");
  return 0;
}
