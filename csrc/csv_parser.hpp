// CSV text to a float32 matrix in one call: the hot path of every CSV pipeline.
//
// A buffer of CSV bytes becomes a row-major float matrix (plus the text of string columns) in one
// pass: the common number cell is found and converted with 16-byte operations, the rest by a
// scalar parser. Numbers are correctly rounded to float32. Large buffers are cut at record
// boundaries and parsed by several threads, each straight into its own part of the result.
//
// Bad data never throws: the parser reports the first bad row (line, column, text, what was
// expected) and, when asked, skips bad rows and counts them. Bad options throw
// std::invalid_argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sparkbatch {

struct CsvOptions {
  char delimiter = ',';
  char quote = '"';
  bool quoting = true;      // false: the quote character has no meaning
  // false: every newline ends a record, and a quoted field left open at the end of its line is
  // bad (NOTE(csv-lines)); true: a quoted field may hold newlines.
  bool quoted_newlines = true;
  uint64_t skip_lines = 0;  // physical lines skipped at the start (headers)
  int64_t columns = -1;     // -1: the number of fields of the first data row
  std::map<int64_t, int64_t> class_columns;              // column -> number of classes
  std::map<int64_t, std::vector<std::string>> categories;  // column -> names, index = value
  std::vector<int64_t> string_columns;                   // kept as text, NaN in the matrix
  bool skip_bad_rows = false;  // false: stop at the first bad row
  unsigned threads = 0;        // 0: every thread of the pool
};

// The first bad row. `line` is 1-based, counted from the start of the buffer (header and blank
// lines included; a record spanning lines is reported at its first line). `column` is 0-based,
// or -1 when the row as a whole is wrong (its number of fields); `text` is then the whole record.
struct CsvError {
  uint64_t line = 0;
  int64_t column = -1;
  std::string text;      // at most kCsvMaxErrorText bytes
  std::string expected;  // "a number", "21 columns, found 20", ...
};

constexpr std::size_t kCsvMaxErrorText = 200;

// The most columns a table may have (and one more than the highest column named in the options):
// one row of floats must be addressable. Rows never cost memory for columns they do not have, so
// any number up to this is cheap to refuse row by row (NOTE(csv-memory) in csv_parser.cpp).
constexpr int64_t kCsvMaxColumns =
    static_cast<int64_t>(std::numeric_limits<std::ptrdiff_t>::max() / sizeof(float));

// Floats in a malloc'd block, so the block can be handed to numpy without a copy (free() it).
class FloatBuffer {
 public:
  FloatBuffer() = default;
  ~FloatBuffer() { std::free(data_); }
  FloatBuffer(FloatBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  FloatBuffer& operator=(FloatBuffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
  }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;

  float* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t capacity() const { return capacity_; }
  // Grows (or shrinks) the block to `n` floats; the first min(size, n) are kept. Throws
  // std::bad_alloc.
  void reallocate(std::size_t n);
  void set_size(std::size_t n) { size_ = n; }
  // Gives up the block (nullptr when nothing was allocated); the caller free()s it.
  float* release() {
    size_ = capacity_ = 0;
    return std::exchange(data_, nullptr);
  }

 private:
  float* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

// The cells of one string column over a run of rows: cell i is chars[ends[i-1], ends[i]).
struct CsvStrings {
  std::string chars;
  std::vector<std::size_t> ends;
};

struct CsvResult {
  FloatBuffer values;  // rows * columns floats, row-major
  std::size_t rows = 0;
  std::size_t columns = 0;
  std::vector<int64_t> string_columns;           // ascending
  std::vector<std::vector<CsvStrings>> strings;  // [i][piece]: string_columns[i], in row order
  uint64_t skipped = 0;                          // bad rows skipped (skip_bad_rows)
  std::optional<CsvError> error;                 // the first bad row, in file order
  uint64_t lines = 0;                            // physical lines consumed
  uint64_t block_rows = 0;  // rows parsed a block at a time (NOTE(csv-blocks)): a diagnostic
};

// Checks the options alone (not the data); throws std::invalid_argument saying what is wrong.
void validate_csv_options(const CsvOptions& options);

// Parses data[0, size). With skip_bad_rows false and an error, `values` holds no rows and `lines`
// counts up to the bad record. Safe to call without the GIL.
CsvResult parse_csv(const char* data, std::size_t size, const CsvOptions& options);

// For tests and fuzzing: whether tables of numbers and categories may be parsed a block of rows at
// a time (NOTE(csv-blocks) in csv_parser.cpp), and with which instructions. kBest (the default)
// takes AVX2 where the CPU has it; kSse2 never does; kOff parses every row record by record and
// every category cell by the general path, without the category tables (NOTE(csv-categories)).
// All three must give the same result. Returns the previous setting.
enum class CsvBlocks { kOff, kSse2, kBest };
CsvBlocks set_csv_blocks(CsvBlocks mode);

}  // namespace sparkbatch
