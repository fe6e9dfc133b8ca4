#include "json.hpp"

#include <set>

namespace sparkbatch::json {
namespace {

constexpr int kMaxDepth = 64;
// A parsed value takes about 100 bytes (twice that in a growing vector) whatever its text, and
// "0," is two bytes: without a bound a 100 MB header would take some 10 GB. A million values is
// ten times what a header of 100,000 tensors needs.
constexpr std::size_t kMaxValues = std::size_t{1} << 20;
// Objects with more members than this look keys up in an ordered set instead of member by member
// (which is quadratic: 40,000 keys took 2.4 s).
constexpr std::size_t kLinearKeys = 16;

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected text after the JSON value");
    return v;
  }

 private:
  std::string_view s_;
  std::size_t pos_ = 0;
  std::size_t values_ = 0;  // values parsed so far (kMaxValues)

  [[noreturn]] void fail(const std::string& what) const { throw ParseError{what, pos_}; }

  void skip_ws() {
    while (pos_ < s_.size() &&
           (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
      ++pos_;
  }

  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }

  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }

  Value parse_value(int depth) {
    if (depth > kMaxDepth) fail("nesting deeper than 64 levels");
    if (++values_ > kMaxValues) fail("more than 1048576 values");
    switch (peek()) {
      case '{': return parse_object(depth);
      case '[': return parse_array(depth);
      case '"': {
        Value v;
        v.type = Value::Type::String;
        v.text = parse_string();
        return v;
      }
      case 't': return parse_literal("true", Value::Type::Bool, true);
      case 'f': return parse_literal("false", Value::Type::Bool, false);
      case 'n': return parse_literal("null", Value::Type::Null, false);
      default:
        if (peek() == '-' || (peek() >= '0' && peek() <= '9')) return parse_number();
        fail(pos_ >= s_.size() ? "unexpected end of JSON" : "unexpected character");
    }
  }

  Value parse_literal(std::string_view word, Value::Type type, bool b) {
    if (s_.substr(pos_, word.size()) != word) fail("invalid literal");
    pos_ += word.size();
    Value v;
    v.type = type;
    v.boolean = b;
    return v;
  }

  Value parse_number() {
    const std::size_t start = pos_;
    bool plain = true;
    if (peek() == '-') {
      plain = false;
      ++pos_;
    }
    if (peek() == '0') {
      ++pos_;
    } else if (peek() >= '1' && peek() <= '9') {
      while (peek() >= '0' && peek() <= '9') ++pos_;
    } else {
      fail("invalid number");
    }
    if (peek() == '.') {
      plain = false;
      ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("invalid number");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      plain = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!(peek() >= '0' && peek() <= '9')) fail("invalid number");
      while (peek() >= '0' && peek() <= '9') ++pos_;
    }
    Value v;
    v.type = Value::Type::Number;
    v.text = std::string(s_.substr(start, pos_ - start));
    if (plain) {
      uint64_t acc = 0;
      bool fits = true;
      for (char c : v.text) {
        const uint64_t d = static_cast<uint64_t>(c - '0');
        if (acc > (UINT64_MAX - d) / 10) {
          fits = false;
          break;
        }
        acc = acc * 10 + d;
      }
      v.is_uint = fits;
      v.uint_value = fits ? acc : 0;
    }
    return v;
  }

  unsigned parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    unsigned cp = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      cp <<= 4;
      if (c >= '0' && c <= '9') cp |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') cp |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') cp |= static_cast<unsigned>(c - 'A' + 10);
      else fail("invalid \\u escape");
    }
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Checks one UTF-8 sequence starting at pos_ and copies it.
  void copy_utf8(std::string& out) {
    const auto lead = static_cast<unsigned char>(s_[pos_]);
    std::size_t len;
    unsigned min_cp, cp;
    if (lead < 0x80) { out += s_[pos_++]; return; }
    if ((lead & 0xE0) == 0xC0) { len = 2; min_cp = 0x80; cp = lead & 0x1F; }
    else if ((lead & 0xF0) == 0xE0) { len = 3; min_cp = 0x800; cp = lead & 0x0F; }
    else if ((lead & 0xF8) == 0xF0) { len = 4; min_cp = 0x10000; cp = lead & 0x07; }
    else fail("invalid UTF-8");
    if (pos_ + len > s_.size()) fail("truncated UTF-8 sequence");
    for (std::size_t i = 1; i < len; ++i) {
      const auto c = static_cast<unsigned char>(s_[pos_ + i]);
      if ((c & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (c & 0x3F);
    }
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8");
    out.append(s_.substr(pos_, len));
    pos_ += len;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        copy_utf8(out);
        continue;
      }
      ++pos_;
      const char e = peek();
      ++pos_;
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
          unsigned cp = parse_hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u") fail("unpaired surrogate in \\u escape");
            pos_ += 2;
            const unsigned low = parse_hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("unpaired surrogate in \\u escape");
          }
          append_utf8(out, cp);
          break;
        }
        default: --pos_; fail("invalid escape in string");
      }
    }
  }

  Value parse_array(int depth) {
    expect('[');
    Value v;
    v.type = Value::Type::Array;
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(parse_value(depth + 1));
      skip_ws();
      if (peek() == ',') { ++pos_; continue; }
      expect(']');
      return v;
    }
  }

  Value parse_object(int depth) {
    expect('{');
    Value v;
    v.type = Value::Type::Object;
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    std::set<std::string> keys;  // every key, once there are more than kLinearKeys
    for (;;) {
      skip_ws();
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      bool duplicate;
      if (v.members.size() < kLinearKeys) {
        duplicate = v.find(key) != nullptr;
      } else {
        if (keys.empty())
          for (const auto& m : v.members) keys.insert(m.first);
        duplicate = !keys.insert(key).second;
      }
      if (duplicate) {
        pos_ = key_pos;
        fail("duplicate key \"" + key + "\"");
      }
      skip_ws();
      expect(':');
      skip_ws();
      Value item = parse_value(depth + 1);
      v.members.emplace_back(std::move(key), std::move(item));
      skip_ws();
      if (peek() == ',') { ++pos_; continue; }
      expect('}');
      return v;
    }
  }
};

}  // namespace

const Value* Value::find(std::string_view key) const {
  for (const auto& m : members)
    if (m.first == key) return &m.second;
  return nullptr;
}

const char* type_name(Value::Type type) {
  switch (type) {
    case Value::Type::Null: return "null";
    case Value::Type::Bool: return "a boolean";
    case Value::Type::Number: return "a number";
    case Value::Type::String: return "a string";
    case Value::Type::Array: return "an array";
    case Value::Type::Object: return "an object";
  }
  return "?";
}

Value parse(std::string_view text) { return Parser(text).parse_document(); }

void append_quoted(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out += '"';
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (u < 0x20) {
          out += "\\u00";
          out += hex[u >> 4];
          out += hex[u & 0xF];
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

}  // namespace sparkbatch::json
