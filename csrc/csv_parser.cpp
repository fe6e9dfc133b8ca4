#include "csv_parser.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "thread_pool.hpp"

#include <sys/mman.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>  // AVX2, under a target attribute: NOTE(csv-blocks)
#endif

namespace sparkbatch {

void FloatBuffer::reallocate(std::size_t n) {
  if (n == 0) {
    std::free(data_);
    data_ = nullptr;
    size_ = capacity_ = 0;
    return;
  }
  if (n > std::numeric_limits<std::size_t>::max() / sizeof(float)) throw std::bad_alloc();
  const std::size_t bytes = n * sizeof(float);
  void* grown = std::realloc(data_, bytes);
  if (grown == nullptr) throw std::bad_alloc();
  data_ = static_cast<float*>(grown);
  capacity_ = n;
  size_ = std::min(size_, n);
#ifdef MADV_HUGEPAGE
  // Huge pages for big blocks: a fresh 4 KiB page costs a fault, and the parse writes tens of MB.
  constexpr std::uintptr_t kHuge = std::uintptr_t{1} << 21;
  if (bytes >= 2 * kHuge) {
    const auto first = (reinterpret_cast<std::uintptr_t>(grown) + kHuge - 1) & ~(kHuge - 1);
    const auto last = (reinterpret_cast<std::uintptr_t>(grown) + bytes) & ~(kHuge - 1);
    if (last > first) ::madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
}

namespace {

// NOTE(csv-threads): with several threads a buffer is cut into chunks of at least kMinChunkBytes,
// kChunksPerThread per thread (threads take the next chunk when done, so a slow one holds no one
// up), at record boundaries. Without the quote character in the buffer a boundary is the first
// newline after the cut; with it, a newline may lie inside quotes, and the boundary is found by
// reading from the cut in every quote state at once until the states agree
// (NOTE(csv-quote-states)), so quoted CSV is parsed in parallel too. A first parallel pass counts each chunk's newlines: a chunk holds at most that many
// records (one more without a final newline), and no more rows than its bytes can hold
// (NOTE(csv-memory)), so every chunk parses straight into its own part of one shared block, and
// the parts are moved together only when a chunk had blank lines, quoted newlines or bad rows.
//
// fuzz/run.sh builds the csv_parallel target with 64-byte chunks and a check every 2 records, so
// that small inputs are cut into several chunks: -DSPARKBATCH_CSV_MIN_CHUNK_BYTES=64
// -DSPARKBATCH_CSV_ABORT_CHECK_RECORDS=2.
#ifndef SPARKBATCH_CSV_MIN_CHUNK_BYTES
#define SPARKBATCH_CSV_MIN_CHUNK_BYTES (std::size_t{1} << 20)
#endif
#ifndef SPARKBATCH_CSV_ABORT_CHECK_RECORDS
#define SPARKBATCH_CSV_ABORT_CHECK_RECORDS 1024
#endif
constexpr std::size_t kMinChunkBytes = SPARKBATCH_CSV_MIN_CHUNK_BYTES;
constexpr std::size_t kChunksPerThread = 4;
// How often a chunk looks for an earlier error.
constexpr std::size_t kAbortCheckRecords = SPARKBATCH_CSV_ABORT_CHECK_RECORDS;
static_assert(kMinChunkBytes > 0 && kAbortCheckRecords > 0);
constexpr std::size_t kMaxListedCategories = 20;  // in "one of [...]"
constexpr std::size_t kSlack = 32;  // bytes the fast path may read past a newline

// ------------------------------------------------------------------------------------------------
// Numbers

inline unsigned digit(char c) { return static_cast<unsigned>(static_cast<unsigned char>(c)) - 48u; }

// 10^k: exact for k <= 22, the correctly rounded double beyond (the compiler rounds literals).
constexpr double kPow10[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14,
    1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29,
    1e30, 1e31, 1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39, 1e40, 1e41, 1e42, 1e43, 1e44,
    1e45, 1e46, 1e47, 1e48, 1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59,
    1e60, 1e61, 1e62, 1e63, 1e64};
// 10^-k, correctly rounded: multiplying is several times faster than dividing by 10^k.
constexpr double kPow10Negative[] = {
    1e-0,  1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,  1e-8,  1e-9,  1e-10, 1e-11, 1e-12,
    1e-13, 1e-14, 1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22, 1e-23, 1e-24, 1e-25,
    1e-26, 1e-27, 1e-28, 1e-29, 1e-30, 1e-31, 1e-32, 1e-33, 1e-34, 1e-35, 1e-36, 1e-37, 1e-38,
    1e-39, 1e-40, 1e-41, 1e-42, 1e-43, 1e-44, 1e-45, 1e-46, 1e-47, 1e-48, 1e-49, 1e-50, 1e-51,
    1e-52, 1e-53, 1e-54, 1e-55, 1e-56, 1e-57, 1e-58, 1e-59, 1e-60, 1e-61, 1e-62, 1e-63, 1e-64};
constexpr int kMaxPow10 = 64;

// NOTE(csv-rounding): mantissa * 10^exp10 (0 < mantissa < 2^63) rounded to float32, when one
// double multiplication settles it; false sends the caller to std::from_chars (correctly rounded).
// The mantissa is exact up to 2^53 and 10^k for 0 <= k <= 22, so the product is at most three
// roundings of half a unit in the last place away from the true value, usually fewer. Rounding it
// on to float gives the correctly rounded float unless a float midpoint (the low 29 bits of the
// double's mantissa equal to 0x10000000) lies within 8 units of the product: then the true value
// might lie on the other side of it, or on it (ties go to even). That covers Clinger's exact case
// too: a product exactly on a midpoint goes to from_chars. Results outside float's normal range
// also go to from_chars (subnormals round at another bit; overflow). (fast_number has a float
// division for short cells: NOTE(csv-simd).)
inline bool fast_convert(uint64_t mantissa, int64_t exp10, float& out) {
  if (exp10 < -kMaxPow10 || exp10 > kMaxPow10) return false;
  const double v = static_cast<double>(static_cast<int64_t>(mantissa)) *
                   (exp10 < 0 ? kPow10Negative[-exp10] : kPow10[exp10]);
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  const uint64_t exponent = bits >> 52;  // v > 0: no sign bit
  const uint32_t low = static_cast<uint32_t>(bits) & 0x1FFFFFFFu;
  // exponent - 1023 in [-126, 127): float normal range, below 2^127
  if (exponent - (1023 - 126) >= 253 || low - (0x10000000u - 8u) <= 16u) return false;
  out = static_cast<float>(v);
  return true;
}

bool equals_lower(std::string_view text, std::string_view lower) {
  if (text.size() != lower.size()) return false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((text[i] | 0x20) != lower[i]) return false;
  }
  return true;
}

// A number split into (up to) 18 significant digits and a power of ten.
struct Decimal {
  bool negative = false;
  bool special = false;  // nan or inf: special_value holds it
  float special_value = 0.0f;
  uint64_t mantissa = 0;
  int digits = 0;  // significant digits in mantissa
  int64_t exp10 = 0;
  bool truncated = false;  // nonzero digits beyond the 18th were dropped
  const char* text = nullptr;  // the number after its sign, for from_chars
  const char* text_end = nullptr;
};

// Parses [p, e) (trimmed): [+-] (digits [. digits] | . digits) [(e|E) [+-] digits], or nan, inf,
// infinity (any case).
bool parse_decimal(const char* p, const char* e, Decimal& out) {
  if (p < e && (*p == '+' || *p == '-')) {
    out.negative = *p == '-';
    ++p;
  }
  out.text = p;
  out.text_end = e;
  if (p == e) return false;
  if (digit(*p) >= 10 && *p != '.') {
    const std::string_view word(p, static_cast<std::size_t>(e - p));
    if (equals_lower(word, "nan")) {
      out.special_value = std::numeric_limits<float>::quiet_NaN();
    } else if (equals_lower(word, "inf") || equals_lower(word, "infinity")) {
      out.special_value = std::numeric_limits<float>::infinity();
    } else {
      return false;
    }
    out.special = true;
    return true;
  }
  bool any = false;
  unsigned dg = 0;
  for (; p < e && (dg = digit(*p)) < 10; ++p) {
    any = true;
    if (out.digits == 18) {
      ++out.exp10;
      out.truncated |= dg != 0;
    } else if (out.mantissa != 0 || dg != 0) {
      out.mantissa = out.mantissa * 10 + dg;
      ++out.digits;
    }
  }
  if (p < e && *p == '.') {
    for (++p; p < e && (dg = digit(*p)) < 10; ++p) {
      any = true;
      if (out.digits == 18) {
        out.truncated |= dg != 0;
        continue;
      }
      if (out.mantissa != 0 || dg != 0) {
        out.mantissa = out.mantissa * 10 + dg;
        ++out.digits;
      }
      --out.exp10;
    }
  }
  if (!any) return false;
  if (p < e && (*p == 'e' || *p == 'E')) {
    ++p;
    bool negative = false;
    if (p < e && (*p == '+' || *p == '-')) {
      negative = *p == '-';
      ++p;
    }
    if (p == e || digit(*p) >= 10) return false;
    int64_t x = 0;
    for (; p < e && (dg = digit(*p)) < 10; ++p) {
      if (x < 1'000'000) x = x * 10 + dg;
    }
    out.exp10 += negative ? -x : x;
  }
  return p == e;
}

bool decimal_to_float(const Decimal& dec, float& out) {
  float v = 0.0f;
  if (dec.special) {
    v = dec.special_value;
  } else if (dec.mantissa != 0 && (dec.truncated || !fast_convert(dec.mantissa, dec.exp10, v))) {
    const auto r = std::from_chars(dec.text, dec.text_end, v);
    if (r.ec == std::errc::result_out_of_range) {
      // Beyond float's range: the magnitude says whether it overflowed or underflowed.
      v = dec.exp10 + dec.digits - 1 >= 0 ? std::numeric_limits<float>::infinity() : 0.0f;
    } else if (r.ec != std::errc() || r.ptr != dec.text_end) {
      return false;
    }
  }
  out = dec.negative ? -v : v;
  return true;
}

// The integer the decimal spells, when it is one in [0, num_classes).
bool class_index(const Decimal& dec, int64_t num_classes, int64_t& out) {
  if (dec.special || dec.truncated) return false;
  if (dec.mantissa == 0) {
    out = 0;
    return true;
  }
  if (dec.negative) return false;
  const auto limit = static_cast<uint64_t>(num_classes);
  uint64_t v = dec.mantissa;
  if (dec.exp10 < 0) {
    if (dec.exp10 < -19) return false;
    uint64_t divisor = 1;
    for (int64_t i = 0; i < -dec.exp10; ++i) divisor *= 10;
    if (v % divisor != 0) return false;
    v /= divisor;
  } else {
    for (int64_t i = 0; i < dec.exp10; ++i) {
      if (v >= limit) return false;
      v *= 10;  // v < limit < 2^63: no overflow
    }
  }
  if (v >= limit) return false;
  out = static_cast<int64_t>(v);
  return true;
}

// ------------------------------------------------------------------------------------------------
// Fields

struct Dialect {
  char delimiter = ',';
  char quote = '"';
  bool quoting = true;
  bool quoted_newlines = true;  // false: NOTE(csv-lines)
  char space_a = ' ';  // the blanks trimmed around values: space and tab, less the delimiter
  char space_b = '\t';
  bool is_space(char c) const { return c == space_a || c == space_b; }
};

enum class Term : uint8_t {
  kNone,   // the fast path gave up on this field
  kDelim,  // the field ended at a delimiter
  kEnd,    // the field ended its record (newline, CRLF or the end of the buffer)
  kBad,    // the cell is bad (bad_cell_ says why)
  kTail,   // the record runs past the last newline: parse it again from a padded copy
};

// One field found by scan_field.
struct Field {
  const char* begin = nullptr;    // raw text [begin, raw_end): as in the buffer
  const char* raw_end = nullptr;  // the terminator (delimiter, CR of CRLF, LF) or the buffer end
  const char* next = nullptr;     // after the terminator
  const char* content_begin = nullptr;  // quoted: between the quotes; unquoted: the raw text
  const char* content_end = nullptr;
  uint64_t inner_newlines = 0;  // newlines inside quotes
  Term term = Term::kEnd;       // kDelim or kEnd
  bool quoted = false;
  bool doubled = false;       // the quoted text holds doubled quotes
  bool unterminated = false;  // no closing quote before the end of the buffer (or line)
  bool after_quote = false;   // something other than blanks between closing quote and terminator
};

const char* find_char(const char* p, const char* end, char c) {
  return static_cast<const char*>(std::memchr(p, c, static_cast<std::size_t>(end - p)));
}

// NOTE(csv-lines): with quoted_newlines false a record is one line, whatever its quotes, so any
// cut of a file at newlines gives the same records (Spark's CSV reader without multiLine does
// the same). A quoted field still open at the end of its line is unterminated there: the record
// is bad and the next line is a record of its own.

// Finds the extent of the field starting at p, reading no byte at or beyond `end`. A field is
// quoted when its first non-blank byte is the quote; quotes anywhere else are ordinary text. The
// record structure it defines is the one find_boundaries follows.
Field scan_field(const char* p, const char* end, const Dialect& d) {
  Field f;
  f.begin = p;
  const char* q = p;
  while (q < end && d.is_space(*q)) ++q;
  const char* scan = p;
  if (d.quoting && q < end && *q == d.quote) {
    f.quoted = true;
    f.content_begin = q + 1;
    const char* s = q + 1;
    for (;;) {
      const auto* hit =
          static_cast<const char*>(std::memchr(s, d.quote, static_cast<std::size_t>(end - s)));
      if (!d.quoted_newlines) {  // the field ends with its line
        const char* nl = find_char(s, hit != nullptr ? hit : end, '\n');
        if (nl != nullptr) {
          f.unterminated = true;
          f.content_end = f.raw_end = nl > f.content_begin && nl[-1] == '\r' ? nl - 1 : nl;
          f.next = nl + 1;
          return f;
        }
      }
      if (hit == nullptr) {
        f.unterminated = true;
        f.content_end = f.raw_end = f.next = end;
        f.inner_newlines = static_cast<uint64_t>(std::count(f.content_begin, end, '\n'));
        return f;
      }
      if (hit + 1 < end && hit[1] == d.quote) {
        f.doubled = true;
        s = hit + 2;
        continue;
      }
      f.content_end = hit;
      s = hit + 1;
      break;
    }
    f.inner_newlines = static_cast<uint64_t>(std::count(f.content_begin, f.content_end, '\n'));
    q = s;
    while (q < end && d.is_space(*q)) ++q;
    f.after_quote = !(q == end || *q == d.delimiter || *q == '\n' ||
                      (*q == '\r' && (q + 1 == end || q[1] == '\n')));
    scan = s;
  }
  q = scan;
  while (q < end && *q != d.delimiter && *q != '\n') ++q;
  if (q < end && *q == d.delimiter) {
    f.raw_end = q;
    f.next = q + 1;
    f.term = Term::kDelim;
  } else {
    f.raw_end = q > scan && q[-1] == '\r' ? q - 1 : q;
    f.next = q < end ? q + 1 : end;
    f.term = Term::kEnd;
  }
  if (!f.quoted) {
    f.content_begin = f.begin;
    f.content_end = f.raw_end;
  }
  return f;
}

// [b, e) without the blanks around it.
void trim(const char*& b, const char*& e, const Dialect& d) {
  while (b < e && d.is_space(*b)) ++b;
  while (e > b && d.is_space(e[-1])) --e;
}

// The quoted text with each doubled quote collapsed, appended to out.
void append_unquoted(const Field& f, char quote, std::string& out) {
  if (!f.doubled) {
    out.append(f.content_begin, f.content_end);
    return;
  }
  for (const char* s = f.content_begin; s < f.content_end; ++s) {
    out.push_back(*s);
    if (*s == quote) ++s;  // the second of a pair
  }
}

std::string clip(const char* b, const char* e) {
  while (e > b && (e[-1] == '\n' || e[-1] == '\r')) --e;  // a record's or buffer's line ending
  return std::string(b, std::min(static_cast<std::size_t>(e - b), kCsvMaxErrorText));
}

// ------------------------------------------------------------------------------------------------
// The parse

enum class Kind : uint8_t { kNumber, kClass, kCategory, kString };

inline uint64_t load8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof w);
  return w;
}

// NOTE(csv-categories): a category cell is looked up by its bytes as they stand, without the field
// scanner, trimming or a std::hash: a name of 1 to 16 bytes is kept as two 8-byte words (zeros past
// its end) in an open-addressing table, and a cell of the same length whose two words (read with
// one 16-byte load, masked to its length) equal a name's is that name. Only names the general path
// would find from the same bytes are kept: no delimiter, quote, CR or newline in them and no blank
// at either end (the general path trims the cell and unquotes it first). Any other cell (a miss, a
// quoted or blank-padded name, a name the table does not keep) goes to the general path, which
// finds it or reports it.
class CategoryTable {
 public:
  static constexpr std::size_t kMaxLength = 16;

  // The table of `names` (their indices as values), with the names `d` would read differently left
  // out.
  CategoryTable(const std::vector<std::string>& names, const Dialect& d);

  // Whether the `length` bytes at p (1 to 16; the 16 bytes at p readable) are a kept name; its
  // index to out.
  bool find(const char* p, std::size_t length, float& out) const {
    if (length - 1 >= kMaxLength) return false;
    const uint64_t w0 = load8(p) & kMasks[length][0];
    const uint64_t w1 = load8(p + 8) & kMasks[length][1];
    for (std::size_t i = slot_of(w0, w1, length);; i = (i + 1) & mask_) {
      const Entry& e = entries_[i];
      if (e.length == 0) return false;
      if (e.w0 == w0 && e.w1 == w1 && e.length == length) {
        out = e.value;
        return true;
      }
    }
  }

 private:
  struct Entry {
    uint64_t w0 = 0, w1 = 0;
    uint32_t length = 0;  // 0: empty
    float value = 0;
  };
  std::size_t slot_of(uint64_t w0, uint64_t w1, std::size_t length) const {
    const uint64_t h = (w0 * 0x9E3779B97F4A7C15u) ^ ((w1 + length) * 0xC2B2AE3D27D4EB4Fu);
    return static_cast<std::size_t>(h >> shift_);
  }
  // kMasks[n]: the words' bytes below n.
  static constexpr auto kMasks = [] {
    std::array<std::array<uint64_t, 2>, kMaxLength + 1> m{};
    for (std::size_t n = 0; n <= kMaxLength; ++n) {
      m[n][0] = n >= 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * n)) - 1;
      m[n][1] = n >= 16 ? ~uint64_t{0} : n <= 8 ? 0 : (uint64_t{1} << (8 * (n - 8))) - 1;
    }
    return m;
  }();

  std::vector<Entry> entries_;
  std::size_t mask_ = 0;
  int shift_ = 64;
};

CategoryTable::CategoryTable(const std::vector<std::string>& names, const Dialect& d) {
  auto kept = [&](const std::string& name) {
    if (name.empty() || name.size() > kMaxLength) return false;
    if (d.is_space(name.front()) || d.is_space(name.back())) return false;
    return std::none_of(name.begin(), name.end(), [&](char c) {
      return c == d.delimiter || c == '\n' || c == '\r' || (d.quoting && c == d.quote);
    });
  };
  const auto count = static_cast<std::size_t>(std::count_if(names.begin(), names.end(), kept));
  std::size_t size = 8;
  int bits = 3;
  while (size < 2 * count) {
    size *= 2;
    ++bits;
  }
  entries_.resize(size);
  mask_ = size - 1;
  shift_ = 64 - bits;
  for (std::size_t k = 0; k < names.size(); ++k) {
    if (!kept(names[k])) continue;
    const std::size_t length = names[k].size();
    char padded[kMaxLength] = {};
    std::memcpy(padded, names[k].data(), length);
    Entry e;
    e.w0 = load8(padded);
    e.w1 = load8(padded + 8);
    e.length = static_cast<uint32_t>(length);
    e.value = static_cast<float>(k);
    std::size_t i = slot_of(e.w0, e.w1, length);
    while (entries_[i].length != 0) i = (i + 1) & mask_;
    entries_[i] = e;
  }
}

// NOTE(csv-memory): what a parse holds is bounded by the buffer, never by a number in the options
// or a row's width alone, so that a small hostile input cannot exhaust memory:
// - The plan keeps one byte per column (its Kind), and four more (its slot) only when some column
//   is not a number; what a bad cell should have been is spelled out only when it is reported.
// - A record of B bytes has at most B + 1 fields, so the per-column arrays stop at
//   reach(B) = min(columns, B + 1): columns named far beyond any row (class_columns={10**8: 2})
//   cost nothing, and every row is bad for lacking them.
// - A good row of c columns, e of them string or category columns (the only cells that may be
//   empty), spans at least c - 1 delimiters and c - e value bytes, and good rows are separated by
//   newlines: B bytes hold at most max_rows(B) = (B + 1) / (2c - e) of them. A chunk's rows never
//   need more than max_rows(B) * c + reach(B) floats (the record being parsed writes its cells
//   past the rows kept), at most 2 (B + 1): the estimate from a sample is capped by that, and
//   grows geometrically when it was low.

// What every chunk parser reads; built once, never moved (category_index points into names).
struct Plan {
  Dialect dialect;
  std::size_t columns = 0;        // the fields of a good row
  std::size_t reachable = 0;      // reach(the bytes parsed): the per-column arrays' size
  std::size_t may_be_empty = 0;   // string and category columns below `columns`
  std::vector<Kind> kinds;        // per column below `reachable`
  std::vector<uint32_t> slot;     // per column below `reachable`, empty when all are numbers:
                                  // the column's class, category or string slot
  std::vector<int64_t> num_classes;  // per class slot
  std::vector<std::vector<std::string>> category_names;  // per category slot
  std::vector<std::unordered_map<std::string_view, float>> category_index;
  std::vector<CategoryTable> category_tables;  // per category slot: NOTE(csv-categories)
  std::vector<uint32_t> number_columns;  // of numbers and class indices, when block_columns
  std::size_t string_slots = 0;   // string columns below `columns` (not only `reachable`)
  bool skip_bad = false;
  bool plain_numbers = false;     // every column a number or a class index
  bool block_columns = false;     // every column a number, class index or category: NOTE(csv-blocks)
  const char* closing_quote = "a closing quote";  // what an unterminated field lacks
  Dialect inside_quotes;          // the dialect with the quote as delimiter (quoted_number)
  bool quoted_numbers = false;    // quoted_number may be tried

  // The most fields a record within `bytes` bytes can have, capped at `columns`.
  std::size_t reach(std::size_t bytes) const { return std::min(columns, bytes + 1); }
  // The most good rows `bytes` bytes can hold (NOTE(csv-memory)); columns > 0.
  std::size_t max_rows(std::size_t bytes) const {
    if (columns > bytes + 1) return 0;  // 2c - e >= c (and 2c cannot overflow below)
    return (bytes + 1) / (2 * columns - may_be_empty);
  }
  // The floats that the rows of `bytes` bytes holding at most `records` records can need.
  std::size_t storage_bound(std::size_t bytes, std::size_t records) const {
    if (columns == 0 || records == 0) return 0;
    return std::min(records - 1, max_rows(bytes)) * columns + reach(bytes);
  }
  // What a good cell of column `col` (< reachable) is, for the error message.
  std::string expected(std::size_t col) const;
};

std::string python_list(const std::vector<std::string>& names) {
  std::string s = "[";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) s += ", ";
    if (i == kMaxListedCategories) {
      s += "...";
      break;
    }
    s += '\'';
    for (char c : names[i]) {
      if (c == '\'' || c == '\\') s += '\\';
      s += c;
    }
    s += '\'';
  }
  return s + "]";
}

std::string Plan::expected(std::size_t col) const {
  switch (kinds[col]) {
    case Kind::kClass:
      return "a class index in [0, " + std::to_string(num_classes[slot[col]]) + ")";
    case Kind::kCategory:
      return "one of " + python_list(category_names[slot[col]]);
    case Kind::kString:
      return "text";
    case Kind::kNumber:
      break;
  }
  return "a number";
}

// `bytes`: the bytes to parse (after the skipped lines).
void build_plan(Plan& plan, const CsvOptions& o, std::size_t columns, std::size_t bytes) {
  constexpr std::size_t kMaxSlots = std::numeric_limits<uint32_t>::max();
  if (o.class_columns.size() > kMaxSlots || o.categories.size() > kMaxSlots ||
      o.string_columns.size() > kMaxSlots) {
    throw std::invalid_argument("parse_csv: more than 2^32 - 1 columns of one kind in the options");
  }
  plan.columns = columns;
  plan.reachable = plan.reach(bytes);
  plan.kinds.assign(plan.reachable, Kind::kNumber);
  plan.skip_bad = o.skip_bad_rows;
  if (!o.quoted_newlines) plan.closing_quote = "a closing quote before the end of the line";
  auto in_table = [&](int64_t col) { return static_cast<uint64_t>(col) < columns; };
  // Sets column col's kind and slot (nothing for a column beyond every record).
  auto mark = [&](int64_t col, Kind kind, std::size_t slot) {
    const auto c = static_cast<std::size_t>(col);
    if (c >= plan.reachable) return;
    if (plan.slot.empty()) plan.slot.assign(plan.reachable, 0);
    plan.kinds[c] = kind;
    plan.slot[c] = static_cast<uint32_t>(slot);
  };
  for (const auto& [col, n] : o.class_columns) {
    if (!in_table(col)) continue;
    mark(col, Kind::kClass, plan.num_classes.size());
    plan.num_classes.push_back(n);
  }
  plan.category_names.reserve(o.categories.size());
  for (const auto& [col, names] : o.categories) {
    if (!in_table(col)) continue;
    ++plan.may_be_empty;
    mark(col, Kind::kCategory, plan.category_names.size());
    plan.category_names.push_back(names);
  }
  plan.category_index.resize(plan.category_names.size());
  for (std::size_t i = 0; i < plan.category_names.size(); ++i) {
    const auto& names = plan.category_names[i];
    for (std::size_t k = 0; k < names.size(); ++k) {
      plan.category_index[i].emplace(std::string_view(names[k]), static_cast<float>(k));
    }
    plan.category_tables.emplace_back(names, plan.dialect);
  }
  std::vector<int64_t> strings = o.string_columns;
  std::sort(strings.begin(), strings.end());
  for (int64_t col : strings) {  // slots in column order, as CsvResult::string_columns
    if (!in_table(col)) continue;
    ++plan.may_be_empty;
    mark(col, Kind::kString, plan.string_slots++);
  }
  const bool every_column = columns > 0 && plan.reachable == columns;
  plan.plain_numbers = every_column && std::all_of(plan.kinds.begin(), plan.kinds.end(), [](Kind k) {
                         return k == Kind::kNumber || k == Kind::kClass;
                       });
  plan.block_columns = every_column && std::none_of(plan.kinds.begin(), plan.kinds.end(),
                                                    [](Kind k) { return k == Kind::kString; });
  for (std::size_t col = 0; plan.block_columns && col < columns; ++col) {
    if (plan.kinds[col] != Kind::kCategory) plan.number_columns.push_back(static_cast<uint32_t>(col));
  }
}

// Digits eight bytes at a time (SWAR), so that the number of digits in a cell costs no mispredicted
// branch. The host is little-endian (CMakeLists.txt checks): the first byte is the lowest.
constexpr uint64_t kZeros = 0x3030303030303030u;  // "00000000"
constexpr uint64_t kIntPow10[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

// How many of the 8 bytes (t = bytes ^ "00000000") are leading ASCII digits.
inline unsigned leading_digits(uint64_t t) {
  const uint64_t non_digit =
      (((t & 0x7F7F7F7F7F7F7F7Fu) + 0x7676767676767676u) | t) & 0x8080808080808080u;
  return non_digit == 0 ? 8u : static_cast<unsigned>(__builtin_ctzll(non_digit)) >> 3;
}

// The value of the first n (0..8) digit bytes of t.
inline uint64_t digits_value(uint64_t t, unsigned n) {
  uint64_t v = n == 0 ? 0 : t << ((64 - 8 * n) & 63);  // the digits to the top, zeros below
  v = v * 10 + (v >> 8);
  v = (((v & 0x000000FF000000FFu) * 0x000F424000000064u) +
       (((v >> 16) & 0x000000FF000000FFu) * 0x0000271000000001u)) >> 32;
  return v;
}

// Appends the digits at p to m (wrapping past 19 digits: the caller checks the count) and returns
// how many there were, eight at a time. Reads 8 bytes at once, never more than 7 past the first
// byte that is not a digit: the caller guarantees kSlack readable bytes after the newline that
// ends the cell (NOTE(csv-tail)).
inline std::size_t read_digits(const char*& p, uint64_t& m) {
  const char* const start = p;
  for (;;) {
    const uint64_t t = load8(p) ^ kZeros;
    const unsigned n = leading_digits(t);
    m = m * kIntPow10[n] + digits_value(t, n);
    p += n;
    if (n < 8) return static_cast<std::size_t>(p - start);
  }
}

// Stores v, negated when `negative`, without a branch (signs are random in real data).
inline void store_signed(float* out, float v, bool negative) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits ^= static_cast<uint32_t>(negative) << 31;
  std::memcpy(out, &bits, sizeof bits);
}

// The scalar fast path for a number cell: blanks, [+-], digits [. digits] [e [+-] digits], blanks,
// then a delimiter or line end. Reads past `pos` freely: the caller guarantees a newline ahead and
// kSlack readable bytes after it (NOTE(csv-tail)); every loop here stops at a newline. Returns
// kNone, consuming nothing, for anything else (quotes, words, more than 18 digits, values needing
// from_chars, errors): scan_field and parse_decimal decide those.
inline Term scalar_number(const char*& pos, float* out, const Dialect& d) {
  const char* p = pos;
  if (static_cast<unsigned char>(*p) <= ' ') {
    while (d.is_space(*p)) ++p;
  }
  const bool negative = *p == '-';
  p += (*p == '-' || *p == '+');
  uint64_t m = 0;
  std::size_t count = read_digits(p, m);  // digits, and (below) the fraction's significant ones
  int64_t exp10 = 0;
  if (*p == '.') {
    const char* const first = ++p;
    if (m == 0) {
      while (*p == '0') ++p;  // 0.000123: the fraction's leading zeros only scale
    }
    const std::size_t fraction = read_digits(p, m);
    exp10 = -static_cast<int64_t>(p - first);
    count += fraction;
  }
  // No digits, or more than 19 (m may have wrapped), or m of 2^63 and up (fast_convert's limit)
  if (count - 1 >= 19 || m >> 63 != 0) return Term::kNone;
  if ((*p | 0x20) == 'e') {
    ++p;
    const bool exp_negative = *p == '-';
    p += (*p == '-' || *p == '+');
    unsigned dg = digit(*p);
    if (dg >= 10) return Term::kNone;
    int64_t x = 0;
    do {
      x = x * 10 + dg;
      ++p;
    } while ((dg = digit(*p)) < 10 && x < 100'000);
    if (dg < 10) return Term::kNone;
    exp10 += exp_negative ? -x : x;
  }
  Term t = Term::kDelim;
  if (*p != d.delimiter) {
    while (d.is_space(*p)) ++p;
    if (*p == d.delimiter) {
      t = Term::kDelim;
    } else if (*p == '\n') {
      t = Term::kEnd;
    } else if (*p == '\r' && p[1] == '\n') {
      ++p;
      t = Term::kEnd;
    } else {
      return Term::kNone;
    }
  }
  float v = 0.0f;
  if (m != 0 && !fast_convert(m, exp10, v)) return Term::kNone;
  store_signed(out, v, negative);
  pos = p + 1;
  return t;
}

#if defined(__SSE2__)
// kWindow + 16 - k, read as 16 bytes, is 0xFF in the bytes at index >= k (0 <= k <= 16).
alignas(64) constexpr unsigned char kWindow[32] = {
    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,    0,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

// kScale[16 * negative + k] = (negative ? -1 : 1) * 10^-k.
alignas(64) constexpr double kScale[32] = {
    1e0,  1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,
    1e-8, 1e-9,  1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15,
    -1e0,  -1e-1,  -1e-2,  -1e-3,  -1e-4,  -1e-5,  -1e-6,  -1e-7,
    -1e-8, -1e-9,  -1e-10, -1e-11, -1e-12, -1e-13, -1e-14, -1e-15};

inline __m128i load16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline unsigned bitmask(__m128i v) { return static_cast<unsigned>(_mm_movemask_epi8(v)); }
inline __m128i bytes_from(int k) { return load16(kWindow + 16 - k); }

// kDivisor[16 * negative + k] = (negative ? -1 : 1) * 10^k, exact floats for k <= 10.
alignas(64) constexpr float kDivisor[32] = {
    1e0f,  1e1f,  1e2f,  1e3f,  1e4f,  1e5f,  1e6f,  1e7f,  1e8f,  1e9f,  1e10f, 1, 1, 1, 1, 1,
    -1e0f, -1e1f, -1e2f, -1e3f, -1e4f, -1e5f, -1e6f, -1e7f, -1e8f, -1e9f, -1e10f, 1, 1, 1, 1, 1};

// 16 digits (byte values 0..9, the first the most significant) as two int32 in lanes 0 and 1:
// the value of the first 8 digits and of the last 8.
inline __m128i eight_digit_halves(__m128i z) {
  const __m128i high = _mm_and_si128(z, _mm_set1_epi16(0x00FF));  // the first of each pair
  const __m128i tens = _mm_mullo_epi16(high, _mm_set1_epi16(10));
  const __m128i pairs = _mm_add_epi16(tens, _mm_srli_epi16(z, 8));
  const __m128i quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x00010064));  // 100, 1
  return _mm_madd_epi16(_mm_packs_epi32(quads, quads), _mm_set1_epi32(0x00012710));  // 10000, 1
}
#endif

#if defined(__SSE2__)
// The digits of the cell [p, p + length) (length <= 15; a sign bit `sign`, digits and at most the
// one dot in `dots`, as fast_number checked) as two 32-bit lanes, the high eight digits and the
// low eight, and in `fraction` how many follow the dot. Reads the 16 bytes before p + length.
__attribute__((always_inline)) inline __m128i cell_digits(const char* p, unsigned length,
                                                          unsigned dots, unsigned sign,
                                                          unsigned& fraction) {
  const int shift = 16 - static_cast<int>(length);  // where the cell starts once end-aligned
  const unsigned has_dot = dots != 0;
  const auto dot = static_cast<unsigned>(__builtin_ctz(dots | 1u << length));  // length: none
  fraction = length - dot - has_dot;
  const __m128i y = _mm_sub_epi8(load16(p + length - 16), _mm_set1_epi8('0'));
  const __m128i after_dot = bytes_from(has_dot ? shift + static_cast<int>(dot) + 1 : 0);
  const __m128i squeezed = _mm_or_si128(_mm_and_si128(after_dot, y),
                                        _mm_andnot_si128(after_dot, _mm_slli_si128(y, 1)));
  const int first = shift + static_cast<int>(has_dot + sign);  // the first digit, once squeezed
  const __m128i z = _mm_and_si128(squeezed, bytes_from(first));
  return eight_digit_halves(z);
}

// The float of a cell of at most 15 bytes whose digits cell_digits gave as `halves`, with
// `fraction` of them after the dot; false when the double product lies too near a float midpoint
// (NOTE(csv-rounding)): scalar_number decides those.
__attribute__((always_inline)) inline bool digits_to_float(__m128i halves, bool negative,
                                                           unsigned fraction, float* out) {
  const auto both = static_cast<uint64_t>(_mm_cvtsi128_si64(halves));
  const unsigned table = 16 * negative + fraction;
  if ((both & 0xFF000000FFFFFFFFu) == 0 && fraction <= 10) {
    // Below 2^24 the integer is an exact float, and so is 10^k: one correctly rounded division
    // gives the float nearest the decimal.
    const __m128 m = _mm_cvtepi32_ps(_mm_srli_si128(halves, 4));
    _mm_store_ss(out, _mm_div_ss(m, _mm_load_ss(&kDivisor[table])));
    return true;
  }
  // Otherwise the integer (< 10^15) is exact in a double, 10^-k is not: NOTE(csv-rounding).
  const __m128d parts = _mm_cvtepi32_pd(halves);
  const __m128d high = _mm_mul_sd(parts, _mm_set_sd(1e8));
  const __m128d v = _mm_mul_sd(_mm_add_sd(high, _mm_unpackhi_pd(parts, parts)),
                               _mm_load_sd(&kScale[table]));
  const auto low = static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_castpd_si128(v)));
  if ((low & 0x1FFFFFFFu) - (0x10000000u - 8u) > 16u) {
    _mm_store_ss(out, _mm_cvtsd_ss(_mm_setzero_ps(), v));
    return true;
  }
  return false;
}

// fast_number's cell with an exponent, [+-]digits[.digits](e|E)[+-]digits (at most three): the
// part before the e by cell_digits, the product rounded by fast_convert (NOTE(csv-rounding)).
// `es` marks the cell's e bytes; the other masks are fast_number's. kNone, consuming nothing, for
// anything else.
__attribute__((noinline)) Term exponent_number(const char*& pos, float* out, unsigned length,
                                               unsigned end, unsigned newlines, unsigned digits,
                                               unsigned dots, unsigned sign, unsigned es) {
  const char* const p = pos;
  const auto e = static_cast<unsigned>(__builtin_ctz(es));
  const unsigned before = (1u << e) - 1;  // the bytes before the e
  if ((es & (es - 1)) != 0 || ((digits | dots | sign) & before) != before ||
      (dots & ~before) != 0 || (dots & (dots - 1)) != 0 || (digits & before) == 0) {
    return Term::kNone;
  }
  const char* q = p + e + 1;
  const char* const stop = p + length;
  const bool exp_negative = *q == '-';
  q += (*q == '-' || *q == '+');
  if (q == stop || stop - q > 3) return Term::kNone;
  int64_t x = 0;
  for (; q < stop; ++q) {
    const unsigned dg = digit(*q);
    if (dg >= 10) return Term::kNone;
    x = x * 10 + dg;
  }
  unsigned fraction = 0;
  const __m128i halves = cell_digits(p, e, dots, sign, fraction);
  const uint64_t m =
      static_cast<uint64_t>(static_cast<uint32_t>(_mm_cvtsi128_si32(halves))) * 100000000u +
      static_cast<uint32_t>(_mm_cvtsi128_si32(_mm_srli_si128(halves, 4)));
  float v = 0.0f;
  if (m != 0 && !fast_convert(m, (exp_negative ? -x : x) - static_cast<int64_t>(fraction), v)) {
    return Term::kNone;
  }
  store_signed(out, v, p[0] == '-');
  pos = p + end + 1;
  return (newlines >> end) & 1 ? Term::kEnd : Term::kDelim;
}
#endif

#if defined(__SSE2__)
// The value of the digits in [b, e) (at most 19, all digits), eight at a time, appended to m.
inline uint64_t append_digits(uint64_t m, const char* b, const char* e) {
  for (; e - b > 8; b += 8) m = m * kIntPow10[8] + digits_value(load8(b) ^ kZeros, 8);
  const auto n = static_cast<unsigned>(e - b);
  return m * kIntPow10[n] + digits_value(load8(b) ^ kZeros, n);
}

// fast_number's cell of 16 to 31 bytes ("%.17g" writes 18 to 20), [+-]digits[.digits] with at
// most 19 significant digits: the masks of both 16-byte halves give the cell's end, its dot and
// its first significant digit at once, so the digits are read eight at a time with no loop
// that waits on the previous chunk's length (scalar_number's). kNone, consuming nothing, for
// anything else. Reads 32 bytes at pos and 8 past the cell's end (NOTE(csv-tail)).
__attribute__((noinline)) Term long_number(const char*& pos, float* out, const Dialect& d,
                                           __m128i x0) {
  const char* const p = pos;
  const __m128i x1 = load16(p + 16);
  const unsigned newlines = bitmask(_mm_cmpeq_epi8(x1, _mm_set1_epi8('\n')));
  const unsigned ends = bitmask(_mm_cmpeq_epi8(x1, _mm_set1_epi8(d.delimiter))) | newlines;
  if (ends == 0) return Term::kNone;
  const unsigned end = 16 + static_cast<unsigned>(__builtin_ctz(ends));
  const bool line_end = (newlines >> (end - 16)) & 1;
  const unsigned length = end - (line_end && p[end - 1] == '\r');
  auto mask32 = [&](__m128i a, __m128i b) {
    return bitmask(a) | bitmask(b) << 16;
  };
  const __m128i zero = _mm_set1_epi8('0');
  const __m128i t0 = _mm_sub_epi8(x0, zero);
  const __m128i t1 = _mm_sub_epi8(x1, zero);
  const __m128i nine = _mm_set1_epi8(9);
  const unsigned in_cell = (1u << length) - 1;
  const unsigned digits = mask32(_mm_cmpeq_epi8(_mm_min_epu8(t0, nine), t0),
                                 _mm_cmpeq_epi8(_mm_min_epu8(t1, nine), t1)) & in_cell;
  const unsigned dots = mask32(_mm_cmpeq_epi8(x0, _mm_set1_epi8('.')),
                               _mm_cmpeq_epi8(x1, _mm_set1_epi8('.'))) & in_cell;
  const bool negative = p[0] == '-';
  const unsigned sign = negative || p[0] == '+';
  if ((digits | dots | sign) != in_cell || (dots & (dots - 1)) != 0 || digits == 0) {
    return Term::kNone;
  }
  const unsigned zeros = mask32(_mm_cmpeq_epi8(x0, zero), _mm_cmpeq_epi8(x1, zero));
  const unsigned significant = digits & ~zeros;
  const unsigned dot = dots != 0 ? static_cast<unsigned>(__builtin_ctz(dots)) : length;
  const int64_t exp10 = dots != 0 ? -static_cast<int64_t>(length - dot - 1) : 0;
  float v = 0.0f;
  if (significant != 0) {
    const auto first = static_cast<unsigned>(__builtin_ctz(significant));
    if (length - first - (dots != 0 && first < dot) > 19) return Term::kNone;  // digits left
    uint64_t m = 0;
    if (first < dot) m = append_digits(m, p + first, p + dot);
    const unsigned after = std::max(first, dot + 1);
    if (after < length) m = append_digits(m, p + after, p + length);
    if (m >> 63 != 0 || !fast_convert(m, exp10, v)) return Term::kNone;
  }
  store_signed(out, v, negative);
  pos = p + end + 1;
  return line_end ? Term::kEnd : Term::kDelim;
}
#endif

// NOTE(csv-simd): the common cell, [+-]digits[.digits] in at most 15 bytes, is parsed with 16-byte
// operations and no data-dependent branch. The delimiter or newline ending it comes first, from a
// compare mask, so the next cell is known a few cycles after this one starts and the CPU overlaps
// successive cells (finding the end digit by digit chains every cell to the previous one: half the
// speed). The cell is then reloaded so that it ends at byte 15, the dot squeezed out with one byte
// shift, the bytes before it (and a sign) cleared, and its at most 14 digits summed with
// multiply-adds. Up to 7 significant digits and 10 decimals (the usual case) the integer and 10^k
// are exact floats and one float division rounds correctly; otherwise one double multiplication
// by -+10^-k and the midpoint test of NOTE(csv-rounding). A cell with an exponent (1.5e-03) goes
// to exponent_number, one of 16 to 31 bytes to long_number; anything else (blanks, words,
// quotes, errors) to scalar_number. Reads the 16 bytes at pos (NOTE(csv-tail)) and the 16 before it when pos >= floor.
// Always inlined: with two callers (record and quoted_number) GCC's size limits would keep it out
// of record's loop, a sixth slower.
__attribute__((always_inline)) inline Term fast_number(const char*& pos, float* out,
                                                       const Dialect& d, const char* floor) {
#if defined(__SSE2__)
  const char* const p = pos;
  const __m128i x = load16(p);
  const unsigned newlines = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('\n')));
  const unsigned ends = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8(d.delimiter))) | newlines;
  if (ends != 0 && p >= floor) {
    const auto end = static_cast<unsigned>(__builtin_ctz(ends));
    const unsigned crlf = (bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('\r'))) << 1) & newlines;
    const unsigned length = end - ((crlf >> end) & 1);
    const __m128i t = _mm_sub_epi8(x, _mm_set1_epi8('0'));
    const unsigned digits = bitmask(_mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t));
    const unsigned in_cell = (1u << length) - 1;
    const unsigned dots = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('.'))) & in_cell;
    const bool negative = p[0] == '-';
    const unsigned sign = negative || p[0] == '+';
    if (((digits | dots | sign) & in_cell) == in_cell && (dots & (dots - 1)) == 0 &&
        (digits & in_cell) != 0) {
      unsigned fraction = 0;
      const __m128i halves = cell_digits(p, length, dots, sign, fraction);
      if (digits_to_float(halves, negative, fraction, out)) {
        pos = p + end + 1;
        return (newlines >> end) & 1 ? Term::kEnd : Term::kDelim;
      }
    } else if (const unsigned es = bitmask(_mm_cmpeq_epi8(_mm_or_si128(x, _mm_set1_epi8(0x20)),
                                                          _mm_set1_epi8('e'))) & in_cell;
               es != 0) {
      const Term term = exponent_number(pos, out, length, end, newlines, digits, dots, sign, es);
      if (term != Term::kNone) return term;
    }
  } else if (ends == 0 && p >= floor) {
    const Term t = long_number(pos, out, d, x);
    if (t != Term::kNone) return t;
  }
#else
  (void)floor;
#endif
  return scalar_number(pos, out, d);
}

// NOTE(csv-categories): record's category cell when it ends within 16 bytes and is a name of the
// table as it stands (a CR before its newline left out, as scan_field leaves it out); kNone,
// reading nothing past the 16 bytes at pos (NOTE(csv-tail)), for anything else.
inline Term fast_category(const char*& pos, float* out, const Dialect& d,
                          const CategoryTable& table) {
#if defined(__SSE2__)
  const __m128i x = load16(pos);
  const unsigned newlines = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('\n')));
  const unsigned ends = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8(d.delimiter))) | newlines;
  if (ends == 0) return Term::kNone;
  const auto end = static_cast<unsigned>(__builtin_ctz(ends));
  const unsigned crlf = (bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('\r'))) << 1) & newlines;
  if (!table.find(pos, end - ((crlf >> end) & 1), *out)) return Term::kNone;
  pos += end + 1;
  return (newlines >> end) & 1 ? Term::kEnd : Term::kDelim;
#else
  (void)pos, (void)out, (void)d, (void)table;
  return Term::kNone;
#endif
}

// NOTE(csv-quoted-numbers): a number cell in quotes ("1.5": writers that quote every field) takes
// the fast paths between the quotes. `inside` is the dialect with the quote as its delimiter, so
// that the number ends at the closing quote; the delimiter or the line's end must follow it at
// once. Anything else (blanks outside the quotes, an empty cell, doubled quotes, a newline inside,
// words) gives kNone, consuming nothing, and slow_cell decides the field as any quoted field; the
// blanks inside the quotes are trimmed alike by both (scalar_number and trim skip the same two).
__attribute__((noinline)) Term quoted_number(const char*& pos, float* out, const Dialect& d,
                                             const Dialect& inside, const char* floor) {
  const char* p = pos + 1;
  if (fast_number(p, out, inside, floor) != Term::kDelim) return Term::kNone;
  if (*p == d.delimiter) {
    pos = p + 1;
    return Term::kDelim;
  }
  if (*p == '\n') {
    pos = p + 1;
    return Term::kEnd;
  }
  if (*p == '\r' && p[1] == '\n') {
    pos = p + 2;
    return Term::kEnd;
  }
  return Term::kNone;
}

// NOTE(csv-blocks): a table of numbers (every column a number, a class index or a category, no
// CR, a cell in quotes only whole: "1.5") is parsed a block of rows at a time in two passes. The
// first finds every delimiter and newline of the block (index_terminators: 64 bytes per step, the
// positions taken from the compare masks), so that each cell's start and end are known before any
// is converted; the second converts the cells, which no longer wait on one another (record's loop
// learns where a cell starts only once the previous one is parsed), two at a time with AVX2
// where the CPU has it (known_pair; once a block had cells for fast_number, an exponent of a
// sign and two digits, as printf's %e writes it, is split off each cell first and taken as a
// power of ten: split_exponent). Without AVX2 only tables in quotes take it: on bare numbers the
// first pass costs more than the second saves. The block is kept only when it is exactly rows of
// `columns` cells and every cell converted as fast_number converts it; anything else (a word, a
// blank line, a row of another width, a quoted comma) leaves the block to record, which gives the
// same values, errors and line numbers. A category cell is left to a last pass over its columns,
// which finds it in the column's CategoryTable (NOTE(csv-categories)) and overwrites whatever the
// number pass wrote there; a cell the table does not find gives the block back. Two blocks in a
// row given back, or two with over a quarter of their cells left to fast_number (17 digits:
// record's own loop is faster for those), turn the block path off for the chunk.
// tests/test_csv_native.py compares both paths on the same text, and fuzz/run.sh's csv_blocks
// target does so with 64-byte blocks.
#ifndef SPARKBATCH_CSV_BLOCK_BYTES
#define SPARKBATCH_CSV_BLOCK_BYTES (std::size_t{1} << 16)
#endif
constexpr std::size_t kBlockBytes = SPARKBATCH_CSV_BLOCK_BYTES;
static_assert(kBlockBytes >= 64 && kBlockBytes < (std::size_t{1} << 31));
std::atomic<CsvBlocks> g_blocks{CsvBlocks::kBest};

// A block's cells: cell i of a block at b ends at its terminator b[ends[i]] and starts after the
// previous one's (the first at b). A cell in quotes ("1.5", the quote its first and last byte)
// is the number between them, as quoted_number reads it (NOTE(csv-quoted-numbers)). The
// converters below read from 16 bytes before b to kSlack bytes past the last terminator (a
// newline: NOTE(csv-tail)).
struct BlockCells {
  const char* b;
  const uint32_t* ends;
  const Dialect& dialect;
  const Dialect& inside;  // the dialect with the quote as delimiter
  bool quotes;            // cells may be in quotes (Plan::quoted_numbers)
  const char* floor;
  const Kind* kinds;      // per column
  std::size_t columns;
  // Whether cells of column `col` are left to the category pass.
  bool later(std::size_t col) const { return kinds[col] == Kind::kCategory; }
  std::size_t next(std::size_t col) const { return col + 1 == columns ? 0 : col + 1; }
};

// [start, end) less its quotes when the cell is in quotes; false when it starts with the quote
// but does not end with it (a quote left open, blanks after it: record decides).
inline bool unquote(const BlockCells& c, uint32_t& start, uint32_t& end, bool& quoted) {
  quoted = c.quotes && c.b[start] == c.dialect.quote;
  if (!quoted) return true;
  if (end - start < 2 || c.b[end - 1] != c.dialect.quote) return false;
  ++start;
  --end;
  return true;
}

#if defined(__SSE2__)
// Appends the offsets (from base) of the set bits of `ends` to out[n...], four at a time and
// unconditionally: past the last one, ctz of the top bit writes 63, unused (out has room).
__attribute__((always_inline)) inline std::size_t append_offsets(uint64_t ends, uint32_t base,
                                                                 uint32_t* out, std::size_t n) {
  const auto count = static_cast<std::size_t>(__builtin_popcountll(ends));
  uint32_t* w = out + n;
  for (std::size_t i = 0; i < count; i += 4) {
    for (std::size_t j = 0; j < 4; ++j) {
      w[i + j] = base + static_cast<uint32_t>(__builtin_ctzll(ends | uint64_t{1} << 63));
      ends &= ends - 1;
    }
  }
  return n + count;
}

// index_terminators on the bytes [p, e) left after its 64-byte steps.
inline std::size_t index_tail(const char* b, const char* p, const char* e, char delimiter,
                              char refused, uint32_t* out, std::size_t n, std::size_t& newlines) {
  for (; p < e; ++p) {
    if (*p == '\r' || (refused != '\0' && *p == refused)) return SIZE_MAX;
    if (*p == delimiter || *p == '\n') {
      out[n++] = static_cast<uint32_t>(p - b);
      newlines += *p == '\n';
    }
  }
  return n;
}

// The offsets from b of the delimiters and newlines in [b, e), in order, into out (room for
// e - b + 4 of them); the count, or SIZE_MAX when [b, e) holds a CR or `refused` (when nonzero).
// `newlines` gets how many are newlines. Reads only [b, e).
std::size_t index_terminators(const char* b, const char* e, char delimiter, char refused,
                              uint32_t* out, std::size_t& newlines) {
  const __m128i delim = _mm_set1_epi8(delimiter);
  const __m128i newline = _mm_set1_epi8('\n');
  const __m128i cr = _mm_set1_epi8('\r');
  const __m128i q = _mm_set1_epi8(refused != '\0' ? refused : '\r');
  std::size_t n = 0;
  newlines = 0;
  const char* p = b;
  for (; e - p >= 64; p += 64) {
    // Ahead of the loads: the popcount below ends a loop that mispredicts, after which the CPU
    // would otherwise wait on memory for each 64 bytes in turn (index 23 to 7 ms for 40 MB).
    _mm_prefetch(p + 1024, _MM_HINT_T0);
    uint64_t ends = 0, lf = 0, other = 0;
    for (int k = 0; k < 4; ++k) {
      const __m128i x = load16(p + 16 * k);
      const __m128i is_lf = _mm_cmpeq_epi8(x, newline);
      ends |= uint64_t{bitmask(_mm_or_si128(_mm_cmpeq_epi8(x, delim), is_lf))} << (16 * k);
      lf |= uint64_t{bitmask(is_lf)} << (16 * k);
      other |= uint64_t{bitmask(_mm_or_si128(_mm_cmpeq_epi8(x, cr), _mm_cmpeq_epi8(x, q)))}
               << (16 * k);
    }
    if (other != 0) return SIZE_MAX;
    newlines += static_cast<std::size_t>(__builtin_popcountll(lf));
    n = append_offsets(ends, static_cast<uint32_t>(p - b), out, n);
  }
  return index_tail(b, p, e, delimiter, refused, out, n, newlines);
}

// fast_number's common cell, [+-]digits[.digits], when its length (1 to 15) is already known:
// one load that ends with the cell, and no search for its end. False, writing nothing, for
// anything else. Reads the 16 bytes before p + length.
__attribute__((always_inline)) inline bool known_number(const char* p, unsigned length,
                                                        float* out) {
  if (length - 1 >= 15) return false;
  const int shift = 16 - static_cast<int>(length);  // the cell is bytes [shift, 16)
  const __m128i x = load16(p + length - 16);
  const unsigned in_cell = (0xFFFFu << shift) & 0xFFFFu;
  const __m128i t = _mm_sub_epi8(x, _mm_set1_epi8('0'));
  const unsigned digits = bitmask(_mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(9)), t)) & in_cell;
  const unsigned dots = bitmask(_mm_cmpeq_epi8(x, _mm_set1_epi8('.'))) & in_cell;
  const bool negative = p[0] == '-';
  const unsigned sign = negative || p[0] == '+';
  if ((digits | dots | sign << shift) != in_cell || (dots & (dots - 1)) != 0 || digits == 0) {
    return false;
  }
  const unsigned has_dot = dots != 0;
  const auto dot = static_cast<unsigned>(__builtin_ctz(dots | 1u << 16));
  const __m128i after_dot = bytes_from(has_dot ? static_cast<int>(dot) + 1 : 0);
  const __m128i squeezed = _mm_or_si128(_mm_and_si128(after_dot, t),
                                        _mm_andnot_si128(after_dot, _mm_slli_si128(t, 1)));
  const __m128i z = _mm_and_si128(squeezed, bytes_from(shift + static_cast<int>(has_dot + sign)));
  return digits_to_float(eight_digit_halves(z), negative, has_dot ? 15 - dot : 0, out);
}

// A cell known_number does not take (exponents, long cells, blanks), as record would take it:
// false when fast_number does not, or ends it elsewhere than at its terminator (or quote).
__attribute__((noinline)) bool slow_cell_number(const BlockCells& c, uint32_t start, uint32_t end,
                                                bool quoted, float* out) {
  const char* p = c.b + start;
  if (quoted) return fast_number(p, out, c.inside, c.floor) == Term::kDelim && p == c.b + end + 1;
  const Term t = fast_number(p, out, c.dialect, c.floor);
  return t != Term::kNone && p == c.b + end + 1 && (t == Term::kEnd) == (c.b[end] == '\n');
}

// Cell [start, end) to *out: 0 when known_number took it, 1 when fast_number did, SIZE_MAX when
// neither.
inline std::size_t convert_cell(const BlockCells& c, uint32_t start, uint32_t end, float* out) {
  bool quoted = false;
  if (!unquote(c, start, end, quoted)) return SIZE_MAX;
  if (known_number(c.b + start, end - start, out)) return 0;
  return slow_cell_number(c, start, end, quoted, out) ? 1 : SIZE_MAX;
}

// convert_pair's cells one at a time, out of its loop: 2, or SIZE_MAX when one is not a number.
__attribute__((noinline)) std::size_t convert_two_cells(const BlockCells& c, uint32_t start0,
                                                        uint32_t end0, uint32_t start1,
                                                        uint32_t end1, float* out0, float* out1) {
  if (convert_cell(c, start0, end0, out0) == SIZE_MAX) return SIZE_MAX;
  return convert_cell(c, start1, end1, out1) == SIZE_MAX ? SIZE_MAX : 2;
}

// Converts cells [first, n) to out[i], the first of them in column `col`; returns how many
// known_number did not take (fast_number did), or SIZE_MAX when a cell is not fast_number's either
// and not one the category pass takes (BlockCells::later).
std::size_t convert_cells(const BlockCells& c, std::size_t first, std::size_t n, std::size_t col,
                          float* out) {
  std::size_t slow = 0;
  uint32_t start = first == 0 ? 0 : c.ends[first - 1] + 1;
  for (std::size_t i = first; i < n; ++i) {
    if (!c.later(col)) {
      const std::size_t s = convert_cell(c, start, c.ends[i], out + i);
      if (s == SIZE_MAX) return SIZE_MAX;
      slow += s;
    }
    start = c.ends[i] + 1;
    col = c.next(col);
  }
  return slow;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPARKBATCH_CSV_AVX2 1
#define SPARKBATCH_AVX2_TARGET __attribute__((target("avx2")))

#define lanes(low, high) _mm256_inserti128_si256(_mm256_castsi128_si256(low), (high), 1)

// eight_digit_halves on two 16-byte lanes.
SPARKBATCH_AVX2_TARGET __attribute__((always_inline)) inline __m256i eight_digit_halves2(__m256i z) {
  const __m256i high = _mm256_and_si256(z, _mm256_set1_epi16(0x00FF));
  const __m256i tens = _mm256_mullo_epi16(high, _mm256_set1_epi16(10));
  const __m256i pairs = _mm256_add_epi16(tens, _mm256_srli_epi16(z, 8));
  const __m256i quads = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x00010064));
  return _mm256_madd_epi16(_mm256_packs_epi32(quads, quads), _mm256_set1_epi32(0x00012710));
}

// known_number on two cells at once, one per 16-byte lane, when both are [-]digits[.digits] with
// at most 7 significant digits and 10 decimals (the float division of digits_to_float); false,
// writing nothing, otherwise. *out0 and *out1 (out0 + 1 when kAdjacent) get the two floats, each
// times 10^scale (an exponent: the decimals less the scale must still be 0 to 10).
template <bool kAdjacent>
SPARKBATCH_AVX2_TARGET __attribute__((always_inline)) inline bool known_pair(
    const char* p0, unsigned length0, const char* p1, unsigned length1, float* out0, float* out1,
    int scale0 = 0, int scale1 = 0) {
  if (length0 - 1 >= 15 || length1 - 1 >= 15) return false;
  const unsigned shift0 = 16 - length0, shift1 = 16 - length1;
  const __m256i x = lanes(load16(p0 + length0 - 16), load16(p1 + length1 - 16));
  const __m256i t = _mm256_sub_epi8(x, _mm256_set1_epi8('0'));
  const auto digit_bytes = static_cast<unsigned>(
      _mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_min_epu8(t, _mm256_set1_epi8(9)), t)));
  const auto dot_bytes =
      static_cast<unsigned>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(x, _mm256_set1_epi8('.'))));
  const unsigned in_cell = ((0xFFFFu << shift0) & 0xFFFFu) | (0xFFFF0000u << shift1);
  const unsigned negative0 = p0[0] == '-', negative1 = p1[0] == '-';
  const unsigned sign = negative0 << shift0 | negative1 << (shift1 + 16);
  const unsigned dots = dot_bytes & in_cell;
  const unsigned digits = digit_bytes & in_cell;
  const unsigned dots0 = dots & 0xFFFFu, dots1 = dots >> 16;
  if ((digits | dots | sign) != in_cell || ((dots0 & (dots0 - 1)) | (dots1 & (dots1 - 1))) != 0 ||
      (digits & 0xFFFFu) == 0 || (digits >> 16) == 0) {
    return false;
  }
  const unsigned has_dot0 = dots0 != 0, has_dot1 = dots1 != 0;
  const auto dot0 = static_cast<unsigned>(__builtin_ctz(dots0 | 1u << 16));
  const auto dot1 = static_cast<unsigned>(__builtin_ctz(dots1 | 1u << 16));
  // below 0 (an exponent above the decimals) they wrap past 10
  const unsigned fraction0 = (has_dot0 ? 15 - dot0 : 0) - static_cast<unsigned>(scale0);
  const unsigned fraction1 = (has_dot1 ? 15 - dot1 : 0) - static_cast<unsigned>(scale1);
  if (fraction0 > 10 || fraction1 > 10) return false;
  const __m256i after_dot = lanes(bytes_from(has_dot0 ? static_cast<int>(dot0) + 1 : 0),
                                  bytes_from(has_dot1 ? static_cast<int>(dot1) + 1 : 0));
  const __m256i first = lanes(bytes_from(static_cast<int>(shift0 + has_dot0 + negative0)),
                              bytes_from(static_cast<int>(shift1 + has_dot1 + negative1)));
  const __m256i squeezed = _mm256_blendv_epi8(_mm256_slli_si256(t, 1), t, after_dot);
  const __m256i halves = eight_digit_halves2(_mm256_and_si256(squeezed, first));
  // [high 8 digits of cell 0, of cell 1, low 8 digits of cell 0, of cell 1]
  const __m128i h = _mm256_castsi256_si128(
      _mm256_permutevar8x32_epi32(halves, _mm256_setr_epi32(0, 4, 1, 5, 0, 0, 0, 0)));
  const auto highs = static_cast<uint64_t>(_mm_cvtsi128_si64(h));
  const auto lows = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_unpackhi_epi64(h, h)));
  if (highs != 0 || (lows & 0xFF000000FF000000u) != 0) return false;  // both below 2^24
  const __m128 divisors = _mm_unpacklo_ps(_mm_load_ss(&kDivisor[16 * negative0 + fraction0]),
                                          _mm_load_ss(&kDivisor[16 * negative1 + fraction1]));
  const __m128 v = _mm_div_ps(_mm_cvtepi32_ps(_mm_unpackhi_epi64(h, h)), divisors);
  if constexpr (kAdjacent) {
    (void)out1;
    _mm_storel_pi(reinterpret_cast<__m64*>(out0), v);
  } else {
    _mm_store_ss(out0, v);
    _mm_store_ss(out1, _mm_shuffle_ps(v, v, 1));
  }
  return true;
}

// The `length` bytes at p less an exponent of a sign and two digits at their end (e+05, E-12:
// what printf's %e writes), and that exponent; the cell as it is and 0 otherwise. Reads only the
// cell.
inline unsigned split_exponent(const char* p, unsigned length, int& exponent) {
  exponent = 0;
  if (length < 5) return length;
  const char* const x = p + length - 4;
  const unsigned tens = digit(x[2]), ones = digit(x[3]);
  if ((x[0] | 0x20) != 'e' || (x[1] != '+' && x[1] != '-') || tens > 9 || ones > 9) return length;
  const auto value = static_cast<int>(10 * tens + ones);
  exponent = x[1] == '-' ? -value : value;
  return length - 4;
}

// Cells [start0, end0) and [start1, end1) to *out0 and *out1 (out0 + 1 when kAdjacent): 0 when
// known_pair took both (with kExponents, cells with split_exponent's exponents too), 2 when
// convert_cell did, SIZE_MAX when a cell is not a number.
template <bool kAdjacent, bool kExponents>
SPARKBATCH_AVX2_TARGET __attribute__((always_inline)) inline std::size_t convert_pair(
    const BlockCells& c, uint32_t start0, uint32_t end0, uint32_t start1, uint32_t end1,
    float* out0, float* out1) {
  uint32_t b0 = start0, e0 = end0, b1 = start1, e1 = end1;
  bool quoted0 = false, quoted1 = false;
  if (!unquote(c, b0, e0, quoted0) || !unquote(c, b1, e1, quoted1)) return SIZE_MAX;
  if constexpr (kExponents) {
    int x0 = 0, x1 = 0;
    const unsigned m0 = split_exponent(c.b + b0, e0 - b0, x0);
    const unsigned m1 = split_exponent(c.b + b1, e1 - b1, x1);
    if (known_pair<kAdjacent>(c.b + b0, m0, c.b + b1, m1, out0, out1, x0, x1)) return 0;
  } else if (known_pair<kAdjacent>(c.b + b0, e0 - b0, c.b + b1, e1 - b1, out0, out1)) {
    return 0;
  }
  // slow_cell_number's callees are compiled without AVX: each of their SSE instructions would pay
  // for the upper halves known_pair leaves dirty (ten times slower in all).
  _mm256_zeroupper();
  return convert_two_cells(c, start0, end0, start1, end1, out0, out1);
}

// convert_cells with known_pair, for a table without category columns: the count is of cells in
// pairs known_pair did not take.
template <bool kExponents>
SPARKBATCH_AVX2_TARGET std::size_t convert_cells_avx2(const BlockCells& c, std::size_t n,
                                                      float* out) {
  uint32_t start = 0;
  std::size_t i = 0;
  std::size_t slow = 0;
  for (; i + 1 < n; i += 2) {
    const uint32_t end0 = c.ends[i], end1 = c.ends[i + 1];
    const std::size_t s =
        convert_pair<true, kExponents>(c, start, end0, end0 + 1, end1, out + i, out + i + 1);
    if (s == SIZE_MAX) return SIZE_MAX;
    slow += s;
    start = end1 + 1;
  }
  if (i == n) return slow;
  const std::size_t last = convert_cells(c, i, n, i % c.columns, out);
  return last == SIZE_MAX ? SIZE_MAX : slow + last;
}

// convert_cells_avx2 for a table with category columns: each row's number cells (`numbers`, the
// columns of numbers and class indices) in pairs, an odd one alone; the category cells are left to
// find_categories.
template <bool kExponents>
SPARKBATCH_AVX2_TARGET std::size_t convert_listed_avx2(const BlockCells& c, std::size_t rows,
                                                       const std::vector<uint32_t>& numbers,
                                                       float* out) {
  const std::size_t count = numbers.size();
  std::size_t slow = 0;
  auto start_of = [&](std::size_t i) { return i == 0 ? 0 : c.ends[i - 1] + 1; };
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t base = r * c.columns;
    std::size_t k = 0;
    for (; k + 1 < count; k += 2) {
      const std::size_t i0 = base + numbers[k], i1 = base + numbers[k + 1];
      const std::size_t s = convert_pair<false, kExponents>(c, start_of(i0), c.ends[i0],
                                                            start_of(i1), c.ends[i1], out + i0,
                                                            out + i1);
      if (s == SIZE_MAX) return SIZE_MAX;
      slow += s;
    }
    if (k < count) {
      _mm256_zeroupper();
      const std::size_t i = base + numbers[k];
      const std::size_t s = convert_cell(c, start_of(i), c.ends[i], out + i);
      if (s == SIZE_MAX) return SIZE_MAX;
      slow += s;
    }
  }
  return slow;
}

// index_terminators with 32-byte compares.
SPARKBATCH_AVX2_TARGET std::size_t index_terminators_avx2(const char* b, const char* e,
                                                          char delimiter, char refused,
                                                          uint32_t* out, std::size_t& newlines) {
  const __m256i delim = _mm256_set1_epi8(delimiter);
  const __m256i newline = _mm256_set1_epi8('\n');
  const __m256i cr = _mm256_set1_epi8('\r');
  const __m256i q = _mm256_set1_epi8(refused != '\0' ? refused : '\r');
  std::size_t n = 0;
  newlines = 0;
  const char* p = b;
  for (; e - p >= 64; p += 64) {
    _mm_prefetch(p + 1024, _MM_HINT_T0);  // as in index_terminators
    const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    auto mask = [](__m256i low, __m256i high) SPARKBATCH_AVX2_TARGET {
      return uint64_t{static_cast<uint32_t>(_mm256_movemask_epi8(low))} |
             uint64_t{static_cast<uint32_t>(_mm256_movemask_epi8(high))} << 32;
    };
    const __m256i lf0 = _mm256_cmpeq_epi8(x0, newline), lf1 = _mm256_cmpeq_epi8(x1, newline);
    const uint64_t other =
        mask(_mm256_or_si256(_mm256_cmpeq_epi8(x0, cr), _mm256_cmpeq_epi8(x0, q)),
             _mm256_or_si256(_mm256_cmpeq_epi8(x1, cr), _mm256_cmpeq_epi8(x1, q)));
    if (other != 0) return SIZE_MAX;
    newlines += static_cast<std::size_t>(__builtin_popcountll(mask(lf0, lf1)));
    const uint64_t ends = mask(_mm256_or_si256(_mm256_cmpeq_epi8(x0, delim), lf0),
                               _mm256_or_si256(_mm256_cmpeq_epi8(x1, delim), lf1));
    n = append_offsets(ends, static_cast<uint32_t>(p - b), out, n);
  }
  _mm256_zeroupper();
  return index_tail(b, p, e, delimiter, refused, out, n, newlines);
}

#undef lanes

bool has_avx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2;
}
#endif
#endif  // __SSE2__

// Parses one chunk of records into its own storage.
class ChunkParser {
 public:
  ChunkParser(const Plan& plan, std::size_t index, std::atomic<std::size_t>& first_error)
      : strings(plan.string_slots), plan_(plan), index_(index), first_error_(first_error) {}

  // Rows go to out[0, capacity) instead of `values`; capacity must be at least
  // plan.storage_bound(the chunk's bytes, its records).
  void use_storage(float* out, std::size_t capacity) {
    out_ = out;
    capacity_ = capacity;
    external_ = true;
  }

  // Parses [begin, end); bytes in [readable_begin, readable_end) around it may be read.
  void run(const char* begin, const char* end, const char* readable_begin,
           const char* readable_end);

  FloatBuffer values;
  std::size_t rows = 0;
  std::vector<CsvStrings> strings;  // per string slot
  uint64_t skipped = 0;
  std::optional<CsvError> error;  // line relative to the chunk's first line
  uint64_t lines = 0;
  uint64_t block_rows = 0;  // of `rows`, those parse_block kept

 private:
  struct BadCell {
    std::size_t column = 0;
    Field field;
    const char* expected = nullptr;  // a literal, or nullptr: plan_.expected(column)
  };

  const char* parse_records(const char* p, const char* end, const char* last_nl);
  bool parse_block(const char* p, const char* last_nl, const char*& block_end);
  bool class_cells_fit(const BlockCells& c, std::size_t rows) const;
  bool find_categories(const BlockCells& c, std::size_t rows, float* out) const;
  std::size_t convert_block(const BlockCells& c, std::size_t cells, std::size_t rows,
                            float* out) const;
  Term record(const char*& pos, const char* end, const char* last_nl);
  Term slow_cell(std::size_t col, const char*& pos, const char* end, const char* last_nl,
                 float* row, uint64_t& inner);
  Term bad_record(const char*& pos, const char* rec, const char* resume, bool ended,
                  std::size_t fields, const BadCell* cell, const char* end, const char* last_nl);
  Term bad(std::size_t col, const Field& f, const char* expected) {
    bad_cell_ = BadCell{col, f, expected};
    return Term::kBad;
  }
  void rollback_strings() {
    for (auto& s : strings) {
      if (s.ends.size() > rows) s.ends.resize(rows);
      s.chars.resize(s.ends.empty() ? 0 : s.ends.back());
    }
  }
  // Room for the record about to be parsed, after `more` floats of rows known to be in the chunk:
  // geometric growth up to what the chunk's rows can need (NOTE(csv-memory)).
  void grow(std::size_t more = 0) {
    if (external_) throw std::logic_error("parse_csv: more rows than a chunk can hold");
    const std::size_t need = size_ + more + reach_;
    const std::size_t want = std::max(std::min(std::max(values.capacity() * 2, need), limit_), need);
    values.set_size(size_);
    values.reallocate(want);
    out_ = values.data();
    capacity_ = want;
  }
  bool earlier_error() const { return first_error_.load(std::memory_order_relaxed) < index_; }

  const Plan& plan_;
  const std::size_t index_;
  std::atomic<std::size_t>& first_error_;  // lowest chunk index with an error (raise mode)
  float* out_ = nullptr;  // values' block, written without bounds checks after grow()
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
  bool external_ = false;  // out_ is not values'
  std::size_t reach_ = 0;  // the most cells a record of the chunk writes: plan_.reach(its bytes)
  std::size_t limit_ = 0;  // the most floats the chunk's rows need: plan_.storage_bound
  const char* floor_ = nullptr;  // fast_number may read 16 bytes before this
  uint64_t line_ = 0;  // lines consumed so far
  bool stopped_ = false;
  std::size_t records_ = 0;
  BadCell bad_cell_;
  std::string scratch_;
  bool blocks_ = false;           // parse_block may be tried (NOTE(csv-blocks))
  unsigned block_misses_ = 0;     // blocks given back in a row
  unsigned slow_blocks_ = 0;      // blocks in a row with over a quarter of their cells slow
  bool avx2_ = false;             // parse_block converts with convert_cells_avx2
  bool category_tables_ = false;  // record looks category cells up in their tables
  bool exponents_ = false;        // blocks split exponents off their cells (split_exponent)
  std::vector<uint32_t> ends_;    // parse_block's terminator offsets, grown to the largest block
};

void ChunkParser::run(const char* begin, const char* end, const char* readable_begin,
                      const char* readable_end) {
  // Room for the estimated rows up front (untouched pages cost nothing), from a sample's newlines,
  // but never more than the chunk can hold (NOTE(csv-memory)).
  const auto bytes = static_cast<std::size_t>(end - begin);
  reach_ = plan_.reach(bytes);
  limit_ = plan_.storage_bound(bytes, bytes + 1);  // at most bytes + 1 records
  if (!external_ && plan_.columns > 0 && bytes > 0) {
    const std::size_t sample = std::min<std::size_t>(bytes, 64 * 1024);
    const auto newlines = static_cast<std::size_t>(std::count(begin, begin + sample, '\n'));
    const double rows_per_byte = static_cast<double>(newlines + 1) / static_cast<double>(sample);
    const double estimate = static_cast<double>(bytes) * rows_per_byte * 1.02 + 16;
    const std::size_t max_rows = plan_.max_rows(bytes);
    const std::size_t reserved = estimate < static_cast<double>(max_rows)
                                     ? static_cast<std::size_t>(estimate)
                                     : max_rows;
    values.reallocate(reserved * plan_.columns + reach_);
    out_ = values.data();
    capacity_ = values.capacity();
  }
  // NOTE(csv-tail): the fast path reads without bounds checks up to kSlack bytes past a newline, so
  // the records it parses in place end at or before the last newline with kSlack bytes after it.
  // The rest (the last record or two: one without a newline, one whose quoted newline the parse ran
  // past) is parsed from a padded copy.
  const char* last_nl = nullptr;
  if (readable_end - begin > static_cast<std::ptrdiff_t>(kSlack)) {
    for (const char* q = std::min(end, readable_end - kSlack); q > begin;) {
      if (*--q == '\n') {
        last_nl = q;
        break;
      }
    }
  }
  floor_ = readable_end - readable_begin >= 16 ? readable_begin + 16 : readable_end;
  const CsvBlocks mode = g_blocks.load(std::memory_order_relaxed);
  blocks_ = plan_.block_columns && mode != CsvBlocks::kOff;
  category_tables_ = mode != CsvBlocks::kOff;
#if defined(SPARKBATCH_CSV_AVX2)
  avx2_ = mode == CsvBlocks::kBest && has_avx2();
#endif
  const char* p = last_nl != nullptr ? parse_records(begin, end, last_nl) : begin;
  blocks_ = false;  // the padded tail is a record or two
  if (!stopped_ && p < end) {
    std::string tail(p, end);
    if (tail.back() != '\n') tail.push_back('\n');
    const std::size_t size = tail.size();
    tail.append(kSlack, '\0');
    floor_ = tail.data() + 16;  // tail.size() >= kSlack
    parse_records(tail.data(), tail.data() + size, tail.data() + size - 1);
  }
  if (!external_) values.set_size(size_);
  lines = line_;
}

// Parses records while they start at or before last_nl (the buffer's last newline); returns where
// it stopped: after the last one, or at a record to parse again from a padded copy.
const char* ChunkParser::parse_records(const char* p, const char* end, const char* last_nl) {
  const char* by_record = p;  // records before this are not tried as a block
  while (p <= last_nl && !stopped_) {
    if (blocks_ && p >= by_record) {
      if (!plan_.skip_bad && earlier_error()) {
        stopped_ = true;
        break;
      }
      const char* block_end = p;
      if (parse_block(p, last_nl, block_end)) {
        p = block_end;
        continue;
      }
      by_record = block_end;  // the block's rows go record by record
    }
    if (++records_ % kAbortCheckRecords == 0 && !plan_.skip_bad && earlier_error()) {
      stopped_ = true;  // an earlier chunk stops the parse: nothing after it is kept
      break;
    }
#if defined(__SSE2__)
    // A table of numbers the block path left to record (17 digits: 37 to 32 ms for 40 MB; with
    // categories or quotes it costs 1-3 %, so not there).
    if (plan_.plain_numbers) _mm_prefetch(p + 1024, _MM_HINT_T0);
#endif
    const char* rec = p;
    if (record(p, end, last_nl) == Term::kTail) return rec;
  }
  return p;
}

// NOTE(csv-blocks): the rows from p to the last newline within kBlockBytes (and at or before
// last_nl), when they are all plain numbers; block_end gets the end of the rows tried. False, with
// nothing kept, when the block is to be parsed record by record.
bool ChunkParser::parse_block(const char* p, const char* last_nl, const char*& block_end) {
#if defined(__SSE2__)
  if (p < floor_) return false;  // known_number reads 16 bytes before a cell's end
  if (!avx2_ && !(plan_.quoted_numbers && *p == plan_.dialect.quote)) {
    // Without AVX2 the block path gains only on quoted cells (783 to 1,201 MB/s from memory);
    // on bare ones the index costs more than it saves (f6 1,127 to 977, bench/csv_blocks.py).
    blocks_ = false;
    return false;
  }
  const char* const limit = std::min(p + kBlockBytes, last_nl + 1);
  const char* nl = limit;  // the last newline before limit (last_nl is one)
  while (nl > p && *--nl != '\n') {
  }
  if (*nl != '\n') {  // a record longer than a block
    block_end = find_char(p, last_nl + 1, '\n') + 1;
  } else {
    block_end = nl + 1;
    // Room for every byte to be a terminator, and the 3 written past the last (append_offsets):
    // as much as the block needs, so that a small parse pays for little.
    const auto bytes = static_cast<std::size_t>(block_end - p);
    if (ends_.size() < bytes + 4) ends_.resize(bytes + 4);
    const Dialect& d = plan_.dialect;
    std::size_t rows_found = 0;
    // With quoted_numbers, a quote is looked at cell by cell (unquote); without, it ends the
    // block path here, as a CR does.
    const char refused = d.quoting && !plan_.quoted_numbers ? d.quote : '\0';
#if defined(SPARKBATCH_CSV_AVX2)
    const std::size_t cells =
        avx2_ ? index_terminators_avx2(p, block_end, d.delimiter, refused, ends_.data(), rows_found)
              : index_terminators(p, block_end, d.delimiter, refused, ends_.data(), rows_found);
#else
    const std::size_t cells =
        index_terminators(p, block_end, d.delimiter, refused, ends_.data(), rows_found);
#endif
    const std::size_t ncols = plan_.columns;
    bool kept = cells != SIZE_MAX && cells % ncols == 0 && cells / ncols == rows_found;
    for (std::size_t r = 1; kept && r <= rows_found; ++r) kept = p[ends_[r * ncols - 1]] == '\n';
    // Room for the cells, unless more than the chunk's rows can need: then they are not all
    // rows (blank lines in a table of one column), and record decides (NOTE(csv-memory)).
    if (kept && capacity_ - size_ < cells) {
      kept = !external_ && cells <= limit_ - size_;
      if (kept) grow(cells);
    }
    if (kept) {
      float* const out = out_ + size_;
      const BlockCells block{p,      ends_.data(),        d,    plan_.inside_quotes,
                             plan_.quoted_numbers, floor_, plan_.kinds.data(), ncols};
      const std::size_t slow = convert_block(block, cells, rows_found, out);
      kept = slow != SIZE_MAX && class_cells_fit(block, rows_found) &&
             find_categories(block, rows_found, out);
      // Cells for fast_number: perhaps exponents, which known_pair takes once split off.
      if (kept && slow > 0) exponents_ = true;
      // Mostly cells for fast_number (exponents, 17 digits): record's loop is faster for those.
      slow_blocks_ = kept && slow > cells / 4 ? slow_blocks_ + 1 : 0;
    }
    if (kept) {
      size_ += cells;
      rows += rows_found;
      block_rows += rows_found;
      line_ += rows_found;
      records_ += rows_found;
      block_misses_ = 0;
      if (slow_blocks_ == 2) blocks_ = false;
      return true;
    }
  }
  if (++block_misses_ == 2) blocks_ = false;
#else
  (void)p;
  (void)last_nl;
  (void)block_end;
  blocks_ = false;
#endif
  return false;
}

// Whether every class cell of the block's rows (ends_, as parse_block found them) is 1 to 8
// digits spelling an index below its column's number of classes, as class_index would take it
// (the float parse_block wrote is then static_cast<float>(index), as record writes). Anything
// else ("-0", "1.0", 9 digits) goes record by record.
bool ChunkParser::class_cells_fit(const BlockCells& c, std::size_t rows_found) const {
  const std::size_t ncols = plan_.columns;
  for (std::size_t col = 0; col < ncols; ++col) {
    if (plan_.kinds[col] != Kind::kClass) continue;
    const auto limit = static_cast<uint64_t>(plan_.num_classes[plan_.slot[col]]);
    for (std::size_t r = 0; r < rows_found; ++r) {
      const std::size_t i = r * ncols + col;
      uint32_t start = i == 0 ? 0 : c.ends[i - 1] + 1;
      uint32_t end = c.ends[i];
      bool quoted = false;
      unquote(c, start, end, quoted);  // the cell converted: its quotes close
      const unsigned length = end - start;
      const uint64_t t = load8(c.b + start) ^ kZeros;  // 8 bytes: the terminator and kSlack after
      if (length - 1 >= 8 || leading_digits(t) < length || digits_value(t, length) >= limit) {
        return false;
      }
    }
  }
  return true;
}

// The block's number cells to out (convert_cells' count, or SIZE_MAX): with AVX2 two at a time,
// in rows of their columns when the table has categories, exponents split off once a block had
// cells for fast_number.
std::size_t ChunkParser::convert_block(const BlockCells& c, std::size_t cells, std::size_t rows,
                                       float* out) const {
#if defined(SPARKBATCH_CSV_AVX2)
  if (avx2_) {
    const std::vector<uint32_t>& numbers = plan_.number_columns;
    if (plan_.category_tables.empty()) {
      return exponents_ ? convert_cells_avx2<true>(c, cells, out)
                        : convert_cells_avx2<false>(c, cells, out);
    }
    return exponents_ ? convert_listed_avx2<true>(c, rows, numbers, out)
                      : convert_listed_avx2<false>(c, rows, numbers, out);
  }
#endif
  (void)rows;
  return convert_cells(c, 0, cells, 0, out);
}

// NOTE(csv-blocks): each category cell of the block's rows found in its column's table
// (NOTE(csv-categories)), its index written over what the number pass left in out; false when a
// cell is not found there (record decides: a blank-padded name, an error).
bool ChunkParser::find_categories(const BlockCells& c, std::size_t rows_found, float* out) const {
  const std::size_t ncols = plan_.columns;
  for (std::size_t col = 0; col < ncols; ++col) {
    if (plan_.kinds[col] != Kind::kCategory) continue;
    const CategoryTable& table = plan_.category_tables[plan_.slot[col]];
    for (std::size_t r = 0; r < rows_found; ++r) {
      const std::size_t i = r * ncols + col;
      uint32_t start = i == 0 ? 0 : c.ends[i - 1] + 1;
      uint32_t end = c.ends[i];
      bool quoted = false;
      if (!unquote(c, start, end, quoted) || !table.find(c.b + start, end - start, out[i])) {
        return false;
      }
    }
  }
  return true;
}

Term ChunkParser::record(const char*& pos, const char* end, const char* last_nl) {
  const Dialect& d = plan_.dialect;
  const char* p = pos;
  {
    const char* q = p;
    while (d.is_space(*q) || *q == '\r') ++q;
    if (*q == '\n') {  // a blank line
      pos = q + 1;
      ++line_;
      return Term::kEnd;
    }
  }
  const std::size_t ncols = plan_.columns;
  if (ncols == 0) return bad_record(pos, p, p, false, 0, nullptr, end, last_nl);
  if (capacity_ - size_ < reach_) grow();  // a good row has ncols == reach_ cells
  float* const row = out_ + size_;
  const Kind* const kinds = plan_.kinds.data();
  uint64_t inner = 0;  // newlines inside quoted fields
  std::size_t col = 0;
  for (;;) {
    Term t = Term::kNone;
    if (kinds[col] == Kind::kNumber) {
      t = fast_number(p, row + col, d, floor_);
    } else if (kinds[col] == Kind::kCategory && category_tables_) {
      t = fast_category(p, row + col, d, plan_.category_tables[plan_.slot[col]]);
    }
    if (t == Term::kNone) t = slow_cell(col, p, end, last_nl, row, inner);
    if (t == Term::kDelim) {
      if (++col == ncols) return bad_record(pos, pos, p, false, ncols, nullptr, end, last_nl);
      continue;
    }
    if (t == Term::kEnd) break;
    if (t == Term::kTail) {
      rollback_strings();
      return Term::kTail;
    }
    const Field& f = bad_cell_.field;
    return bad_record(pos, pos, f.next, f.term == Term::kEnd, col + 1, &bad_cell_, end, last_nl);
  }
  if (col + 1 != ncols) return bad_record(pos, pos, p, true, col + 1, nullptr, end, last_nl);
  line_ += 1 + inner;
  size_ += ncols;
  ++rows;
  pos = p;
  return Term::kEnd;
}

Term ChunkParser::slow_cell(std::size_t col, const char*& pos, const char* end, const char* last_nl,
                            float* row, uint64_t& inner) {
  const Dialect& d = plan_.dialect;
  // Off record's loop: a quoted cell pays one call, the unquoted cells nothing.
  if (plan_.quoted_numbers && *pos == d.quote && plan_.kinds[col] == Kind::kNumber) {
    const Term t = quoted_number(pos, row + col, d, plan_.inside_quotes, floor_);
    if (t != Term::kNone) return t;
  }
  const Field f = scan_field(pos, end, d);
  if (f.next > last_nl + 1) return Term::kTail;
  if (f.unterminated) return bad(col, f, plan_.closing_quote);
  if (f.after_quote) return bad(col, f, "a delimiter after the closing quote");
  const Kind kind = plan_.kinds[col];
  if (kind == Kind::kString) {
    CsvStrings& s = strings[plan_.slot[col]];
    if (f.quoted) {
      append_unquoted(f, d.quote, s.chars);
    } else {
      s.chars.append(f.content_begin, f.content_end);
    }
    s.ends.push_back(s.chars.size());
    row[col] = std::numeric_limits<float>::quiet_NaN();
  } else {
    const char* b = f.content_begin;
    const char* e = f.content_end;
    if (f.doubled) {
      scratch_.clear();
      append_unquoted(f, d.quote, scratch_);
      b = scratch_.data();
      e = b + scratch_.size();
    }
    trim(b, e, d);
    if (kind == Kind::kCategory) {
      const auto& index = plan_.category_index[plan_.slot[col]];
      const auto it = index.find(std::string_view(b, static_cast<std::size_t>(e - b)));
      if (it == index.end()) return bad(col, f, nullptr);
      row[col] = it->second;
    } else {
      Decimal dec;
      if (!parse_decimal(b, e, dec)) return bad(col, f, nullptr);
      if (kind == Kind::kClass) {
        int64_t index = 0;
        if (!class_index(dec, plan_.num_classes[plan_.slot[col]], index)) {
          return bad(col, f, nullptr);
        }
        row[col] = static_cast<float>(index);
      } else if (!decimal_to_float(dec, row[col])) {
        return bad(col, f, nullptr);
      }
    }
  }
  inner += f.inner_newlines;
  pos = f.next;
  return f.term;
}

// A bad record starting at `rec`: the rest of it is scanned from `resume` (unless `ended`), its
// fields counted, and the first problem reported: an unterminated quote, then a wrong number of
// fields, then the bad cell.
Term ChunkParser::bad_record(const char*& pos, const char* rec, const char* resume, bool ended,
                             std::size_t fields, const BadCell* cell, const char* end,
                             const char* last_nl) {
  const Dialect& d = plan_.dialect;
  const char* next = resume;
  std::optional<BadCell> unterminated;
  if (cell != nullptr && cell->field.unterminated) unterminated = *cell;
  for (bool done = ended; !done;) {
    const Field f = scan_field(next, end, d);
    if (f.unterminated && !unterminated) unterminated = BadCell{fields, f, plan_.closing_quote};
    ++fields;
    next = f.next;
    done = f.term == Term::kEnd;
  }
  if (next > last_nl + 1) {
    rollback_strings();
    return Term::kTail;
  }
  if (!error) {  // only the first is kept: later ones cost no message
    CsvError e;
    e.line = line_ + 1;
    const BadCell* reported = unterminated ? &*unterminated : nullptr;
    if (reported == nullptr && fields != plan_.columns) {
      e.column = -1;
      e.text = clip(rec, next);
      e.expected = std::to_string(plan_.columns) + " columns, found " + std::to_string(fields);
    } else {
      if (reported == nullptr) reported = cell;
      e.column = static_cast<int64_t>(reported->column);
      e.text = clip(reported->field.begin, reported->field.raw_end);
      e.expected = reported->expected != nullptr ? std::string(reported->expected)
                                                 : plan_.expected(reported->column);
    }
    error = std::move(e);
  }
  line_ += static_cast<uint64_t>(std::count(rec, next, '\n'));
  rollback_strings();
  pos = next;
  if (plan_.skip_bad) {
    ++skipped;
  } else {
    stopped_ = true;
    std::size_t seen = first_error_.load();
    while (index_ < seen && !first_error_.compare_exchange_weak(seen, index_)) {
    }
  }
  return Term::kEnd;
}

// The number of fields of the first non-blank record in [p, end), or 0 when there is none.
std::size_t first_row_fields(const char* p, const char* end, const Dialect& d) {
  while (p < end) {
    const char* q = p;
    while (q < end && (d.is_space(*q) || *q == '\r')) ++q;
    if (q == end) return 0;
    if (*q == '\n') {
      p = q + 1;
      continue;
    }
    std::size_t n = 1;
    for (Field f = scan_field(p, end, d); f.term == Term::kDelim; f = scan_field(f.next, end, d)) {
      ++n;
    }
    return n;
  }
  return 0;
}

std::size_t count_newlines(const char* p, const char* end) {
  std::size_t n = 0;
#if defined(__SSE2__)
  const __m128i newline = _mm_set1_epi8('\n');
  while (end - p >= 16 * 255) {  // 255 rounds of byte counters, then their sum
    __m128i counts = _mm_setzero_si128();
    for (int i = 0; i < 255; ++i, p += 16) {
      counts = _mm_sub_epi8(counts, _mm_cmpeq_epi8(load16(p), newline));
    }
    const __m128i sums = _mm_sad_epu8(counts, _mm_setzero_si128());
    n += static_cast<std::size_t>(_mm_cvtsi128_si64(sums) +
                                  _mm_cvtsi128_si64(_mm_unpackhi_epi64(sums, sums)));
  }
#endif
  return n + static_cast<std::size_t>(std::count(p, end, '\n'));
}

// Calls fn(i) for every chunk i < n from at most `threads` threads, each taking the next chunk.
void for_each_chunk(std::size_t threads, std::size_t n,
                    const std::function<void(std::size_t)>& fn) {
  std::atomic<std::size_t> next{0};
  parallel_for(std::min(threads, n), [&](std::size_t) {
    for (std::size_t i; (i = next.fetch_add(1)) < n;) fn(i);
  });
}

// The first c in [p, end), or nullptr: memchr without its call and set-up, which cost more than
// the search where the hits are a few bytes apart (every field quoted: two quotes per field).
inline const char* find_near(const char* p, const char* end, char c) {
#if defined(__SSE2__)
  const __m128i needle = _mm_set1_epi8(c);
  for (; end - p >= 16; p += 16) {
    const unsigned hits = bitmask(_mm_cmpeq_epi8(load16(p), needle));
    if (hits != 0) return p + __builtin_ctz(hits);
  }
#endif
  for (; p < end; ++p) {
    if (*p == c) return p;
  }
  return nullptr;
}

// NOTE(csv-quote-states): scan_field's record structure is a machine of four states read a byte
// at a time (quote_step). Where a newline ends a record depends on every quote before it, but
// the machine forgets its past quickly: started in each of the four states at the same byte, the
// four copies agree after a few fields of ordinary CSV (a delimiter right after a closing quote
// joins them all, "1","2" after at most two quotes), and from there the state is known whatever
// came before. So a chunk boundary needs no pass from the buffer's start: from each cut, the four
// copies read until they agree, and the agreed one reads on to the next newline outside quotes.
// Where they do not agree before the next cut (a quoted field of many lines, or quotes too rare),
// find_boundaries falls back to the sequential pass from the last boundary it has.
enum class QuoteState : uint8_t {
  kFieldStart,     // outside quotes, only blanks since the record or field began
  kUnquoted,       // outside quotes, in a field past its first non-blank byte or closing quote
  kQuoted,         // inside a quoted field
  kQuoteInQuoted,  // just after a quote in a quoted field: its closing one or the first of ""
};

// The state after `c` read in state `s`; a newline read outside kQuoted ends a record.
inline QuoteState quote_step(QuoteState s, char c, const Dialect& d) {
  switch (s) {
    case QuoteState::kQuoted:
      return c == d.quote ? QuoteState::kQuoteInQuoted : QuoteState::kQuoted;
    case QuoteState::kQuoteInQuoted:
      if (c == d.quote) return QuoteState::kQuoted;  // "" inside quotes
      break;                                         // else as after the closing quote
    case QuoteState::kFieldStart:
      if (c == d.quote) return QuoteState::kQuoted;
      if (d.is_space(c)) return QuoteState::kFieldStart;  // (never the delimiter)
      break;
    case QuoteState::kUnquoted:
      break;
  }
  return c == d.delimiter || c == '\n' ? QuoteState::kFieldStart : QuoteState::kUnquoted;
}

// A record start in (from, end) found without the quote state at `from`: nullptr when the four
// copies of the machine do not agree before `limit`, `end` when they agree but no record starts
// after that before `end`. See NOTE(csv-quote-states).
const char* record_start_near(const char* from, const char* limit, const char* end,
                              const Dialect& d) {
  QuoteState s[4] = {QuoteState::kFieldStart, QuoteState::kUnquoted, QuoteState::kQuoted,
                     QuoteState::kQuoteInQuoted};
  const char* p = from;
  for (;;) {
    if (p >= limit) return nullptr;
    for (QuoteState& x : s) x = quote_step(x, *p, d);
    ++p;
    if (s[0] == s[1] && s[1] == s[2] && s[2] == s[3]) break;
  }
  for (QuoteState state = s[0]; p < end; ++p) {
    if (*p == '\n' && state != QuoteState::kQuoted) return p + 1;
    state = quote_step(state, *p, d);
  }
  return end;
}

// Chunk starts: `begin`, then for each cut the first record boundary at or after it (see
// NOTE(csv-threads)); with quotes in the buffer, a record boundary near it. Follows scan_field's
// rules: a quote opens a quoted field only as the first non-blank byte of a field; a quoted
// field ends at a quote not followed by another.
std::vector<const char*> find_boundaries(const char* begin, const char* end, std::size_t chunks,
                                         const Dialect& d) {
  std::vector<const char*> bounds{begin};
  const auto bytes = static_cast<std::size_t>(end - begin);
  auto cut = [&](std::size_t k) { return begin + bytes / chunks * k; };
  std::size_t k = 1;
  const bool quotes =
      d.quoting && d.quoted_newlines && find_char(begin, end, d.quote) != nullptr;
  if (!quotes) {
    for (; k < chunks; ++k) {
      const char* from = std::max(cut(k) - 1, bounds.back());
      const char* nl = find_char(from, end, '\n');
      if (nl == nullptr || nl + 1 >= end) break;
      if (nl + 1 > bounds.back()) bounds.push_back(nl + 1);
    }
    return bounds;
  }
  while (k < chunks) {  // NOTE(csv-quote-states)
    const char* from = std::max(cut(k), bounds.back());
    const char* rec = record_start_near(from, k + 1 < chunks ? cut(k + 1) : end, end, d);
    if (rec == nullptr) break;  // no agreement: the sequential pass below
    if (rec >= end) return bounds;
    bounds.push_back(rec);
    while (k < chunks && rec >= cut(k)) ++k;
  }
  // The sequential pass, from the last boundary found (outside quotes, at a record start).
  const char* s = bounds.back();  // scan position, outside quotes
  const char* rec = s;            // start of the current record
  const char* nl = find_char(s, end, '\n');
  const char* q = find_near(s, end, d.quote);
  while (k < chunks && nl != nullptr) {
    if (nl < s) nl = find_char(s, end, '\n');
    if (nl == nullptr) break;
    if (q != nullptr && q < s) q = find_near(s, end, d.quote);
    if (q == nullptr || nl < q) {
      s = rec = nl + 1;
      if (rec >= end) break;
      if (rec >= cut(k)) {
        bounds.push_back(rec);
        while (k < chunks && rec >= cut(k)) ++k;
      }
      continue;
    }
    const char* b = q;
    while (b > rec && d.is_space(b[-1])) --b;
    if (b == rec || b[-1] == d.delimiter) {  // an opening quote: find its closing one
      const char* c = q + 1;
      for (;;) {
        c = find_near(c, end, d.quote);
        if (c == nullptr || c + 1 >= end || c[1] != d.quote) break;
        c += 2;
      }
      if (c == nullptr) break;  // unterminated: the rest is one record
      s = c + 1;
    } else {
      s = q + 1;
    }
  }
  return bounds;
}

}  // namespace

void validate_csv_options(const CsvOptions& o) {
  auto bad_char = [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 128 || c == '\n' || c == '\r' || c == '+' || c == '-' || c == '.' ||
           (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  };
  if (bad_char(o.delimiter))
    throw std::invalid_argument(
        "delimiter must be one ASCII character other than a letter, digit, '+', '-', '.', CR or "
        "LF, got " + std::string(1, o.delimiter));
  if (o.quoting) {
    if (bad_char(o.quote) || o.quote == ' ' || o.quote == '\t')
      throw std::invalid_argument(
          "quote must be '' or one ASCII character other than a letter, digit, '+', '-', '.', "
          "space, tab, CR or LF, got " + std::string(1, o.quote));
    if (o.quote == o.delimiter) throw std::invalid_argument("quote and delimiter must differ");
  }
  if (o.columns < -1 || o.columns == 0)
    throw std::invalid_argument("columns must be positive or -1 (from the first row), got " +
                                std::to_string(o.columns));
  if (o.columns > kCsvMaxColumns)
    throw std::invalid_argument("columns must be at most " + std::to_string(kCsvMaxColumns) +
                                " (a row of floats must fit in memory), got " +
                                std::to_string(o.columns));
  auto check_column = [&](int64_t col, const char* what) {
    if (col < 0)
      throw std::invalid_argument(std::string(what) + " names column " + std::to_string(col) +
                                  "; columns are numbered from 0");
    if (col >= kCsvMaxColumns)
      throw std::invalid_argument(std::string(what) + " names column " + std::to_string(col) +
                                  "; a table has at most " + std::to_string(kCsvMaxColumns) +
                                  " columns (a row of floats must fit in memory)");
    if (o.columns > 0 && col >= o.columns)
      throw std::invalid_argument(std::string(what) + " names column " + std::to_string(col) +
                                  " but columns=" + std::to_string(o.columns));
  };
  std::map<int64_t, const char*> owner;
  auto claim = [&](int64_t col, const char* what) {
    check_column(col, what);
    const auto [it, inserted] = owner.emplace(col, what);
    if (!inserted)
      throw std::invalid_argument("column " + std::to_string(col) + " is named in both " +
                                  it->second + " and " + what);
  };
  for (const auto& [col, n] : o.class_columns) {
    claim(col, "class_columns");
    if (n <= 0)
      throw std::invalid_argument("class_columns[" + std::to_string(col) +
                                  "] must be a positive number of classes, got " +
                                  std::to_string(n));
  }
  for (const auto& [col, names] : o.categories) {
    claim(col, "categories");
    if (names.empty())
      throw std::invalid_argument("categories[" + std::to_string(col) + "] is empty");
    std::vector<std::string> sorted = names;
    std::sort(sorted.begin(), sorted.end());
    const auto dup = std::adjacent_find(sorted.begin(), sorted.end());
    if (dup != sorted.end())
      throw std::invalid_argument("categories[" + std::to_string(col) + "] lists '" + *dup +
                                  "' twice");
  }
  for (int64_t col : o.string_columns) claim(col, "string_columns");
}

CsvBlocks set_csv_blocks(CsvBlocks mode) { return g_blocks.exchange(mode); }

CsvResult parse_csv(const char* data, std::size_t size, const CsvOptions& o) {
  validate_csv_options(o);
  Dialect d;
  d.delimiter = o.delimiter;
  d.quote = o.quoting ? o.quote : '\0';
  d.quoting = o.quoting;
  d.quoted_newlines = o.quoted_newlines;
  if (d.delimiter == ' ') d.space_a = '\t';
  if (d.delimiter == '\t') d.space_b = ' ';

  CsvResult result;
  const char* const end = data + size;
  const char* p = data;
  uint64_t skipped_lines = 0;
  for (; skipped_lines < o.skip_lines && p < end; ++skipped_lines) {
    const char* nl = find_char(p, end, '\n');
    p = nl != nullptr ? nl + 1 : end;
  }

  std::size_t columns = 0;
  if (o.columns > 0) {
    columns = static_cast<std::size_t>(o.columns);
  } else {
    columns = first_row_fields(p, end, d);
    if (columns > 0) {  // columns named in the options exist (rows lacking them are bad)
      auto cover = [&](int64_t col) {
        columns = std::max(columns, static_cast<std::size_t>(col) + 1);
      };
      for (const auto& entry : o.class_columns) cover(entry.first);
      for (const auto& entry : o.categories) cover(entry.first);
      for (int64_t col : o.string_columns) cover(col);
    }
  }
  Plan plan;
  plan.dialect = d;
  plan.inside_quotes = d;
  plan.inside_quotes.delimiter = d.quote;
  plan.quoted_numbers = d.quoting && !d.is_space(d.quote) && d.quote != '\n' && d.quote != '\r';
  const auto bytes = static_cast<std::size_t>(end - p);
  build_plan(plan, o, columns, bytes);

  const std::size_t threads = o.threads != 0 ? o.threads : pool_threads();
  std::vector<const char*> bounds{p};
  if (threads > 1 && bytes >= 2 * kMinChunkBytes) {
    const std::size_t chunks = std::min(threads * kChunksPerThread, bytes / kMinChunkBytes);
    bounds = find_boundaries(p, end, chunks, d);
  }
  bounds.push_back(end);
  const std::size_t n = bounds.size() - 1;

  std::atomic<std::size_t> first_error{std::numeric_limits<std::size_t>::max()};
  std::vector<ChunkParser> parsers;
  parsers.reserve(n);
  for (std::size_t i = 0; i < n; ++i) parsers.emplace_back(plan, i, first_error);
  FloatBuffer shared;  // the rows of every chunk when n > 1
  std::vector<std::size_t> float_bound(n + 1, 0);  // chunk i may write [float_bound[i], [i + 1])
  if (n == 1) {
    parsers[0].run(bounds[0], bounds[1], data, end);
  } else {
    for_each_chunk(threads, n, [&](std::size_t i) {
      const std::size_t records =
          count_newlines(bounds[i], bounds[i + 1]) + (bounds[i + 1][-1] != '\n');
      float_bound[i + 1] = plan.storage_bound(
          static_cast<std::size_t>(bounds[i + 1] - bounds[i]), records);
    });
    for (std::size_t i = 0; i < n; ++i) float_bound[i + 1] += float_bound[i];
    shared.reallocate(float_bound[n]);
    for (std::size_t i = 0; i < n; ++i) {
      parsers[i].use_storage(shared.data() + float_bound[i], float_bound[i + 1] - float_bound[i]);
    }
    for_each_chunk(threads, n, [&](std::size_t i) {
      if (!o.skip_bad_rows && first_error.load() < i) return;  // nothing after it is kept
      parsers[i].run(bounds[i], bounds[i + 1], data, end);
    });
  }

  // Join the chunks in file order; without skipping, nothing is kept after an error.
  result.columns = columns;
  result.string_columns.reserve(plan.string_slots);
  for (int64_t col : o.string_columns) {
    if (static_cast<uint64_t>(col) < columns) result.string_columns.push_back(col);
  }
  std::sort(result.string_columns.begin(), result.string_columns.end());
  result.strings.resize(plan.string_slots);
  uint64_t line_offset = skipped_lines;
  for (ChunkParser& c : parsers) {
    if (c.error && !result.error) {
      result.error = std::move(c.error);
      result.error->line += line_offset;
      if (!o.skip_bad_rows) {  // no rows; lines up to the bad record
        result.lines = line_offset + c.lines;
        return result;
      }
    }
    result.skipped += c.skipped;
    result.block_rows += c.block_rows;
    line_offset += c.lines;
  }
  result.lines = line_offset;
  for (std::size_t s = 0; s < plan.string_slots; ++s) {
    for (auto& c : parsers) result.strings[s].push_back(std::move(c.strings[s]));
  }
  if (n == 1) {
    result.rows = parsers[0].rows;
    result.values = std::move(parsers[0].values);
  } else {
    for (std::size_t i = 0; i < n; ++i) {  // close the gaps left by rows a chunk did not have
      const std::size_t count = parsers[i].rows * columns;
      if (float_bound[i] != result.rows * columns && count > 0) {
        std::memmove(shared.data() + result.rows * columns, shared.data() + float_bound[i],
                     count * sizeof(float));
      }
      result.rows += parsers[i].rows;
    }
    result.values = std::move(shared);
  }
  result.values.reallocate(result.rows * columns);  // gives the unused reserve back
  result.values.set_size(result.rows * columns);
  return result;
}

}  // namespace sparkbatch
