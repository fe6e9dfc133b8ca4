// libFuzzer target: the native CSV parser (csrc/csv_parser.cpp), as _native.parse_csv calls it.
//
// The first kOptionBytes (6) bytes of an input choose the options (see decode_options); the rest is
// the CSV text, parsed from an exactly sized buffer so that AddressSanitizer sees any read past
// it. Bad options must throw std::invalid_argument; bad data must never throw. The result must be
// what the bindings rely on (rows x columns floats, one string per row in each string column,
// class and category cells in range, no rows after an error in raise mode), and the same text
// framed by a header line and trailing blank lines (one more line skipped) must give the same
// rows and the same error one line further down, as tests/test_csv_native.py checks by hand.
//
// With FUZZ_CSV_PARALLEL defined (target csv_parallel; fuzz/run.sh builds csv_parser.cpp with
// -DSPARKBATCH_CSV_MIN_CHUNK_BYTES=64 -DSPARKBATCH_CSV_ABORT_CHECK_RECORDS=2: chunks of 64 bytes
// instead of 1 MiB, and a look for an earlier chunk's error every 2 records instead of 1024) the text, repeated to at least 128 bytes, is cut into
// chunks parsed by several threads: the result must equal the single-threaded parse.
//
// With FUZZ_CSV_BLOCKS defined (target csv_blocks; csv_parser.cpp built with
// -DSPARKBATCH_CSV_BLOCK_BYTES=64 -DSPARKBATCH_CSV_MIN_CHUNK_BYTES=64) tables of plain numbers are
// parsed 64 bytes of rows at a time (NOTE(csv-blocks)), with SSE2 and with AVX2 where the CPU has
// it: the result must equal the parse record by record.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "csv_parser.hpp"

namespace {

using sparkbatch::CsvOptions;
using sparkbatch::CsvResult;

constexpr std::size_t kOptionBytes = 6;

// CsvOptions::quoted_newlines where the parser has it (it is newer than this harness's first
// version): false when `lines_only`.
template <class T, class = void>
struct HasQuotedNewlines : std::false_type {};
template <class T>
struct HasQuotedNewlines<T, std::void_t<decltype(T::quoted_newlines)>> : std::true_type {};
template <class T>
void set_lines_only(T& options, bool lines_only) {
  if constexpr (HasQuotedNewlines<T>::value) options.quoted_newlines = !lines_only;
  else (void)lines_only;
}

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_csv: invariant violated: %s\n", what);
  std::abort();
}

const std::vector<std::vector<std::string>>& category_lists() {
  static const std::vector<std::vector<std::string>> lists = [] {
    std::vector<std::vector<std::string>> l = {
        {"a", "b", "c"},
        {"", "x"},
        {"cat", "dog", "\"q\"", "a,b"},
        {"1", "2", "10", "-0"},
        {" a", "b ", "\t"},
        {"a", "a"},  // a duplicate: invalid options
        {},          // empty: invalid options
    };
    std::vector<std::string> many;  // more names than an error message lists
    for (int i = 0; i < 25; ++i) many.push_back("n" + std::to_string(i));
    l.push_back(many);
    return l;
  }();
  return lists;
}

// Byte 0: delimiter (bits 0-2), no quoting (bit 3), quote (bits 4-5), skip_lines (bits 6-7).
// Byte 1: columns (bits 0-2: -1, 1..7; bit 7 with them: 0 (invalid) or a wide 300), skip bad rows
//         (bit 3), threads 1 or 2 (bit 4), number of column specs in bytes 2..4 (bits 5-6).
// Bytes 2-4: a column spec each: column (bits 0-2, or 300/-1 by bit 7 with kind), kind (bits
//         3-4: class, category, string, class), parameter (bits 5-6).
// Byte 5: every line one record, quoted_newlines=false (bit 0); huge column numbers (bit 1): the
//         wide 300 becomes kCsvMaxColumns and a column spec's 300 kCsvMaxColumns - 1, which must
//         cost no memory (libFuzzer stops at a malloc over -rss_limit_mb; NOTE(csv-memory)).
CsvOptions decode_options(const uint8_t* o) {
  static const char kDelimiters[] = {',', ';', '\t', ' ', '|', ':', '\0', 'x'};
  static const char kQuotes[] = {'"', '\'', ',', '\t'};
  static const int64_t kClasses[] = {1, 3, 10, std::numeric_limits<int64_t>::max()};
  CsvOptions opt;
  opt.delimiter = kDelimiters[o[0] & 7];
  opt.quoting = (o[0] & 8) == 0;
  opt.quote = kQuotes[(o[0] >> 4) & 3];
  opt.skip_lines = (o[0] >> 6) & 3u;
  const int cols = o[1] & 7;
  opt.columns = cols == 0 ? -1 : cols;
  const bool huge = (o[5] & 2) != 0;
  const int64_t wide = huge ? sparkbatch::kCsvMaxColumns : 300;
  if (o[1] & 0x80) opt.columns = cols == 0 ? 0 : wide;
  opt.skip_bad_rows = (o[1] & 8) != 0;
  opt.threads = (o[1] & 16) ? 2 : 1;
  set_lines_only(opt, (o[5] & 1) != 0);
  const int specs = (o[1] >> 5) & 3;
  for (int i = 0; i < specs; ++i) {
    const uint8_t s = o[2 + i];
    int64_t col = s & 7;
    if (s & 0x80) col = (s & 1) ? -1 : (huge ? sparkbatch::kCsvMaxColumns - 1 : 300);
    const int kind = (s >> 3) & 3;
    const int param = (s >> 5) & 3;
    if (kind == 0 || kind == 3) {
      opt.class_columns[col] = kind == 3 && param == 0 ? 0 : kClasses[param];
    } else if (kind == 1) {
      const auto& lists = category_lists();
      opt.categories[col] = lists[static_cast<std::size_t>(param + 4 * (s & 1)) % lists.size()];
    } else {
      opt.string_columns.push_back(col);
    }
  }
  return opt;
}

void check_result(const CsvResult& r, const CsvOptions& opt) {
  if (r.values.size() != r.rows * r.columns) fail("values hold other than rows x columns floats");
  if (r.rows > 0 && r.values.data() == nullptr) fail("rows without values");
  if (r.error && !opt.skip_bad_rows && r.rows != 0) fail("rows kept after an error in raise mode");
  if (!r.error && r.skipped != 0) fail("rows skipped without an error");
  if (r.error) {
    if (r.error->line == 0) fail("an error at line 0");
    if (r.error->text.size() > sparkbatch::kCsvMaxErrorText) fail("error text too long");
    // A column past the last one is possible: an unterminated quote in an extra field.
    if (r.error->column < -1) fail("error column below -1");
    if (r.error->expected.empty()) fail("an error without what was expected");
  }
  if (r.strings.size() != r.string_columns.size()) fail("string columns and their cells differ");
  for (std::size_t i = 0; i < r.strings.size(); ++i) {
    if (static_cast<uint64_t>(r.string_columns[i]) >= r.columns) fail("string column out of range");
    std::size_t cells = 0;
    for (const auto& piece : r.strings[i]) {
      std::size_t last = 0;
      for (std::size_t e : piece.ends) {
        if (e < last || e > piece.chars.size()) fail("string cell bounds out of order");
        last = e;
      }
      cells += piece.ends.size();
    }
    if (cells != r.rows) fail("string cells do not match the rows");  // the bindings' logic_error
  }
  const float* v = r.values.data();
  for (std::size_t row = 0; row < r.rows; ++row) {
    for (const auto& [col, n] : opt.class_columns) {
      if (static_cast<uint64_t>(col) >= r.columns) continue;
      const float x = v[row * r.columns + static_cast<std::size_t>(col)];
      if (!(x >= 0.0f) || static_cast<double>(x) >= static_cast<double>(n) || x != std::floor(x))
        fail("class index out of range");
    }
    for (const auto& [col, names] : opt.categories) {
      if (static_cast<uint64_t>(col) >= r.columns) continue;
      const float x = v[row * r.columns + static_cast<std::size_t>(col)];
      if (!(x >= 0.0f) || x >= static_cast<float>(names.size()) || x != std::floor(x))
        fail("category index out of range");
    }
    for (int64_t col : r.string_columns)
      if (!std::isnan(v[row * r.columns + static_cast<std::size_t>(col)]))
        fail("a string column's value is not NaN");
  }
}

// A string column's cells: their text end to end and each one's length.
std::pair<std::string, std::vector<std::size_t>> cells(const CsvResult& r, std::size_t i) {
  std::pair<std::string, std::vector<std::size_t>> out;
  for (const auto& piece : r.strings[i]) {
    std::size_t begin = 0;
    for (std::size_t e : piece.ends) {
      out.second.push_back(e - begin);
      begin = e;
    }
    out.first.append(piece.chars, 0, begin);
  }
  return out;
}

// Same rows, strings, skipped count and error (line shifted by `line_shift`).
void check_same(const CsvResult& a, const CsvResult& b, uint64_t line_shift, const char* what) {
  auto differ = [what](const char* field) {
    std::fprintf(stderr, "fuzz_csv: %s: %s differs\n", what, field);
    std::abort();
  };
  if (a.rows != b.rows || a.columns != b.columns) differ("rows or columns");
  if (a.rows * a.columns != 0 &&
      std::memcmp(a.values.data(), b.values.data(), a.rows * a.columns * sizeof(float)) != 0)
    differ("values");
  if (a.skipped != b.skipped) differ("skipped");
  if (a.string_columns != b.string_columns) differ("string columns");
  for (std::size_t i = 0; i < a.strings.size(); ++i)
    if (cells(a, i) != cells(b, i)) differ("string cells");
  if (a.error.has_value() != b.error.has_value()) differ("whether there is an error");
  if (a.error) {
    if (a.error->line + line_shift != b.error->line) differ("error line");
    if (a.error->column != b.error->column) differ("error column");
    if (a.error->text != b.error->text) differ("error text");
    if (a.error->expected != b.error->expected) differ("error expected");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < kOptionBytes) return 0;
  CsvOptions opt = decode_options(data);
  try {
    sparkbatch::validate_csv_options(opt);
  } catch (const std::invalid_argument&) {
    return 0;
  }
  const std::size_t n = size - kOptionBytes;
#ifndef FUZZ_CSV_PARALLEL
  // An exactly sized copy: the parser must read nothing past it.
  std::vector<char> text(data + kOptionBytes, data + size);
  CsvResult r = sparkbatch::parse_csv(text.data(), n, opt);
  check_result(r, opt);

  // Framed: a header line before, blank lines after; skip one more line.
  std::string framed(40, '#');
  framed += '\n';
  framed.append(text.begin(), text.end());
  framed.append(40, '\n');
  CsvOptions fopt = opt;
  fopt.skip_lines += 1;
  CsvResult f = sparkbatch::parse_csv(framed.data(), framed.size(), fopt);
  check_result(f, fopt);
  // The trailing blank lines can only matter inside an unterminated quote; with no columns given
  // and no data row the framed text has none either.
  check_same(r, f, 1, "framed text");
#elif defined(FUZZ_CSV_BLOCKS)
  // The text repeated to at least 256 bytes, exactly sized: parsed a block of rows at a time
  // (64-byte blocks) and record by record, one thread or several, it must give the same result.
  if (n == 0) return 0;
  std::vector<char> text;
  while (text.size() < 256) text.insert(text.end(), data + kOptionBytes, data + size);
  std::vector<char> exact(text);  // an exactly sized copy: nothing may be read past it
  exact.shrink_to_fit();
  using sparkbatch::CsvBlocks;
  sparkbatch::set_csv_blocks(CsvBlocks::kOff);
  const CsvResult by_record = sparkbatch::parse_csv(exact.data(), exact.size(), opt);
  for (CsvBlocks mode : {CsvBlocks::kSse2, CsvBlocks::kBest}) {
    sparkbatch::set_csv_blocks(mode);
    const CsvResult blocks = sparkbatch::parse_csv(exact.data(), exact.size(), opt);
    check_result(blocks, opt);
    check_same(by_record, blocks, 0, "blocks of rows");
    if (by_record.lines != blocks.lines) fail("lines differ with blocks of rows");
  }
#else
  if (n == 0) return 0;
  constexpr std::size_t kMinBytes = 128;  // 2 chunks of 64 bytes: the parallel threshold
  std::vector<char> text;
  while (text.size() < kMinBytes) text.insert(text.end(), data + kOptionBytes, data + size);
  const unsigned threads = (data[1] & 16) ? 5 : 2;  // up to 20 or 8 chunks
  opt.threads = 1;
  CsvResult one = sparkbatch::parse_csv(text.data(), text.size(), opt);
  check_result(one, opt);
  opt.threads = threads;
  CsvResult many = sparkbatch::parse_csv(text.data(), text.size(), opt);
  check_result(many, opt);
  check_same(one, many, 0, "several threads");
  if (one.lines != many.lines) fail("lines differ with several threads");
#endif
  return 0;
}
