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
};

// Plans a file: aligns tensors to 64 bytes (filler U8 tensors keep offsets contiguous, as
// safetensors requires), computes the CRC32C of the data section and writes the header JSON with
// `metadata` plus "crc32c". Computing the CRC is the long part; it runs without the GIL.
Layout plan_layout(const std::vector<TensorSource>& tensors,
                   const std::vector<std::pair<std::string, std::string>>& metadata);

// Writes a planned file to an open file descriptor (all of it, or throws std::system_error).
void write_layout(int fd, const Layout& layout);

// Copies a planned file into `out`, which holds layout.total_size bytes.
void copy_layout(const Layout& layout, uint8_t* out);

}  // namespace sparkbatch
