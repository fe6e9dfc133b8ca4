// The minibatch file format: a safetensors file with 64-byte aligned tensors and a CRC32C of the
// data section in its metadata. docs/format.md is the specification; this header and
// minibatch_format.cpp are its only implementation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sparkbatch {

// A file (or buffer) that is not a valid minibatch/safetensors file. The message says what is
// wrong; the caller prefixes the file name.
struct FormatError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // as the safetensors reference reader
constexpr uint64_t kAlignment = 64;                // of every tensor and of the data section
constexpr const char* kPadPrefix = "__pad.";       // names of the filler tensors between tensors
constexpr std::size_t kMaxDims = 64;               // of a tensor's shape (numpy's limit)

// Bytes per element of a safetensors dtype name, or 0 for a name that is not a dtype.
std::size_t dtype_size(const std::string& dtype);

struct TensorEntry {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // offsets relative to the start of the data section
  uint64_t end = 0;
};

struct Header {
  uint64_t data_start = 0;           // absolute offset of the data section in the file
  std::vector<TensorEntry> tensors;  // in data order, filler tensors removed
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Reads and checks the header of a file held in `data[0, size)`: every size and offset is checked
// before use, tensors must cover the data section exactly (no gaps, no overlaps, no extra bytes).
Header parse_header(const uint8_t* data, uint64_t size);

// One tensor to write: its bytes are C-ordered little-endian data of `nbytes` bytes.
struct TensorSource {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;
  uint64_t nbytes = 0;
};

// What goes into a file: the header bytes (length prefix included) followed by `pieces`, each
// either tensor bytes or `pad` zero bytes.
struct Layout {
  struct Piece {
    const uint8_t* data;  // nullptr for zero padding
    uint64_t size;
  };
  std::string header;
  std::vector<Piece> pieces;
  uint64_t total_size = 0;
  std::size_t crc_position = 0;  // where the 8 hex digits of "crc32c" sit in `header`
};

// Plans a file: aligns tensors to 64 bytes (filler U8 tensors keep offsets contiguous, as
// safetensors requires) and writes the header JSON with `metadata` plus a "crc32c" entry whose
// fixed-width value set_crc fills in, so the header's length is known before the CRC is.
Layout plan_layout(const std::vector<TensorSource>& tensors,
                   const std::vector<std::pair<std::string, std::string>>& metadata);

// CRC32C of the data section (tensors and padding), on up to `threads` threads (0 = all cores).
uint32_t data_crc(const Layout& layout, unsigned threads = 0);

// Stores `crc` in the header.
void set_crc(Layout& layout, uint32_t crc);

// Writes a whole file to an open file descriptor: the data section is written while another
// thread computes its CRC (for large files paced just ahead of the write, so that the arrays are
// read from memory once), then the header with the CRC (throws std::system_error on failure).
void write_file(int fd, Layout& layout);

// Fills in the CRC and copies the whole file into `out`, which holds layout.total_size bytes.
void serialize(Layout& layout, uint8_t* out);

}  // namespace sparkbatch
