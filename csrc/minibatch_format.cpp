#include "minibatch_format.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <system_error>
#include <thread>

#include "crc32c.hpp"
#include "json.hpp"

namespace sparkbatch {
namespace {

const uint8_t kZeros[kAlignment] = {};
constexpr uint64_t kOverlapMinBytes = uint64_t{4} << 20;  // smaller files: CRC first, one write
// From this size on (well past a last-level cache) the CRC is paced to the write; see kCrcLead.
constexpr uint64_t kPacedCrcMinBytes = uint64_t{64} << 20;

std::string quoted(const std::string& s) {
  std::string out;
  json::append_quoted(out, s);
  return out;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

uint64_t read_u64_pair_item(const json::Value& v, const std::string& what) {
  if (v.type != json::Value::Type::Number || !v.is_uint)
    throw FormatError(what + " must be a non-negative integer, found " +
                      (v.type == json::Value::Type::Number ? v.text : json::type_name(v.type)));
  return v.uint_value;
}

TensorEntry read_entry(const std::string& name, const json::Value& v) {
  const std::string where = "tensor " + quoted(name);
  if (v.type != json::Value::Type::Object)
    throw FormatError(where + " must be an object, found " + json::type_name(v.type));
  TensorEntry e;
  e.name = name;

  const json::Value* dtype = v.find("dtype");
  if (dtype == nullptr || dtype->type != json::Value::Type::String)
    throw FormatError(where + " has no \"dtype\" string");
  e.dtype = dtype->text;
  if (dtype_size(e.dtype) == 0) {
    if (e.dtype == "BF16" || e.dtype.rfind("F8_", 0) == 0)
      throw FormatError(where + " has dtype " + quoted(e.dtype) + ", which numpy cannot hold");
    throw FormatError(where + " has unknown dtype " + quoted(e.dtype));
  }

  const json::Value* shape = v.find("shape");
  if (shape == nullptr || shape->type != json::Value::Type::Array)
    throw FormatError(where + " has no \"shape\" array");
  if (shape->items.size() > kMaxDims)
    throw FormatError(where + " has " + std::to_string(shape->items.size()) +
                      " dimensions; at most " + std::to_string(kMaxDims) + " are supported");
  for (const auto& d : shape->items) e.shape.push_back(read_u64_pair_item(d, where + " shape"));

  const json::Value* offsets = v.find("data_offsets");
  if (offsets == nullptr || offsets->type != json::Value::Type::Array || offsets->items.size() != 2)
    throw FormatError(where + " has no \"data_offsets\" array of two integers");
  e.begin = read_u64_pair_item(offsets->items[0], where + " data_offsets");
  e.end = read_u64_pair_item(offsets->items[1], where + " data_offsets");
  if (e.end < e.begin)
    throw FormatError(where + " has data_offsets [" + std::to_string(e.begin) + ", " +
                      std::to_string(e.end) + "] that end before they begin");

  // As numpy: the size in bytes, leaving out zero dimensions, must fit in a signed 64-bit integer
  // (else numpy refuses the array, empty or not); a zero dimension makes it 0.
  uint64_t nbytes = dtype_size(e.dtype);
  bool empty = false;
  for (uint64_t d : e.shape) {
    if (d == 0) {
      empty = true;
    } else if (!checked_mul(nbytes, d, &nbytes) || nbytes > uint64_t{INT64_MAX}) {
      throw FormatError(where + " has shape " + shape_text(e.shape) + " whose size overflows");
    }
  }
  if (empty) nbytes = 0;
  if (nbytes != e.end - e.begin)
    throw FormatError(where + " has shape " + shape_text(e.shape) + " and dtype " + e.dtype +
                      " (" + std::to_string(nbytes) + " bytes) but its data_offsets span " +
                      std::to_string(e.end - e.begin) + " bytes");
  return e;
}

}  // namespace

std::size_t dtype_size(const std::string& dtype) {
  static const std::pair<const char*, std::size_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},  {"BOOL", 1}};
  for (const auto& [name, size] : kSizes)
    if (dtype == name) return size;
  return 0;
}

Header parse_header(const uint8_t* data, uint64_t size) {
  if (size < 8)
    throw FormatError("file is " + std::to_string(size) +
                      " bytes, too short for the 8-byte header length of a safetensors file");
  uint64_t header_len;
  std::memcpy(&header_len, data, 8);  // little-endian hosts only (checked in CMake)
  if (header_len > kMaxHeaderBytes)
    throw FormatError("header length " + std::to_string(header_len) +
                      " exceeds the 100,000,000-byte limit: not a safetensors file, or corrupt");
  if (header_len > size - 8)
    throw FormatError("header length " + std::to_string(header_len) + " runs past the end of the " +
                      std::to_string(size) + "-byte file (truncated?)");
  if (header_len < 2 || data[8] != '{')
    throw FormatError("header does not start with '{': not a safetensors file");

  const std::string_view text(reinterpret_cast<const char*>(data + 8), header_len);
  json::Value root;
  try {
    root = json::parse(text);
  } catch (const json::ParseError& e) {
    throw FormatError("header is not valid JSON: " + e.message + " at header byte " +
                      std::to_string(e.offset));
  }
  if (root.type != json::Value::Type::Object) throw FormatError("header is not a JSON object");

  Header h;
  h.data_start = 8 + header_len;
  const uint64_t data_size = size - h.data_start;
  std::vector<TensorEntry> entries;
  for (const auto& [name, value] : root.members) {
    if (name == "__metadata__") {
      if (value.type != json::Value::Type::Object)
        throw FormatError("__metadata__ must be an object of strings, found " +
                          std::string(json::type_name(value.type)));
      for (const auto& [key, item] : value.members) {
        if (item.type != json::Value::Type::String)
          throw FormatError("__metadata__ value " + quoted(key) + " must be a string, found " +
                            json::type_name(item.type));
        h.metadata.emplace_back(key, item.text);
      }
      continue;
    }
    entries.push_back(read_entry(name, value));
  }

  std::stable_sort(entries.begin(), entries.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  for (const auto& e : entries) {
    if (e.begin < expected)
      throw FormatError("tensor " + quoted(e.name) + " at bytes [" + std::to_string(e.begin) + ", " +
                        std::to_string(e.end) + ") overlaps the tensor before it, which ends at " +
                        std::to_string(expected));
    if (e.begin > expected)
      throw FormatError("tensor " + quoted(e.name) + " starts at byte " + std::to_string(e.begin) +
                        " of the data section, leaving a gap after byte " + std::to_string(expected));
    expected = e.end;
  }
  if (expected > data_size)
    throw FormatError("tensors need " + std::to_string(expected) + " data bytes but the file holds " +
                      std::to_string(data_size) + " after its header (truncated?)");
  if (expected < data_size)
    throw FormatError("the file holds " + std::to_string(data_size - expected) +
                      " bytes after the last tensor, which ends at data byte " +
                      std::to_string(expected));

  for (auto& e : entries) {
    const bool filler = e.name.rfind(kPadPrefix, 0) == 0 && e.dtype == "U8" &&
                        e.shape.size() == 1 && e.end - e.begin < kAlignment;
    if (!filler) h.tensors.push_back(std::move(e));
  }
  return h;
}

Layout plan_layout(const std::vector<TensorSource>& tensors,
                   const std::vector<std::pair<std::string, std::string>>& metadata) {
  Layout layout;
  std::string entries;
  uint64_t offset = 0;
  int pads = 0;
  auto add_entry = [&entries](const std::string& name, const std::string& dtype,
                              const std::vector<uint64_t>& shape, uint64_t begin, uint64_t end) {
    entries += ',';
    json::append_quoted(entries, name);
    entries += ":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape_text(shape) +
               ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
  };
  for (const auto& t : tensors) {
    if (offset % kAlignment != 0) {
      const uint64_t pad = kAlignment - offset % kAlignment;
      add_entry(kPadPrefix + std::to_string(pads++), "U8", {pad}, offset, offset + pad);
      layout.pieces.push_back({nullptr, pad});
      offset += pad;
    }
    add_entry(t.name, t.dtype, t.shape, offset, offset + t.nbytes);
    layout.pieces.push_back({t.data, t.nbytes});
    offset += t.nbytes;
  }

  std::string header = "{\"__metadata__\":{";
  for (const auto& [key, value] : metadata) {
    json::append_quoted(header, key);
    header += ':';
    json::append_quoted(header, value);
    header += ',';
  }
  header += "\"crc32c\":\"";
  const std::size_t crc_in_json = header.size();
  header += "00000000\"}" + entries + "}";
  // Pad with spaces (valid JSON whitespace) so that the data section starts 64-byte aligned.
  header.append((kAlignment - (8 + header.size()) % kAlignment) % kAlignment, ' ');
  const uint64_t header_len = header.size();
  layout.header.resize(8);
  std::memcpy(layout.header.data(), &header_len, 8);
  layout.header += header;
  layout.crc_position = 8 + crc_in_json;
  layout.total_size = layout.header.size() + offset;
  return layout;
}

uint32_t data_crc(const Layout& layout, unsigned threads) {
  uint32_t crc = 0;
  for (const auto& p : layout.pieces) {
    const uint32_t piece = p.data ? crc32c_parallel(0, p.data, p.size, threads) : crc32c(0, kZeros, p.size);
    crc = crc32c_combine(crc, piece, p.size);
  }
  return crc;
}

void set_crc(Layout& layout, uint32_t crc) {
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", crc);
  layout.header.replace(layout.crc_position, 8, hex, 8);
}

namespace {

// pwritev of every iovec from `offset` on, resuming after partial writes.
void write_all(int fd, std::vector<iovec> iov, off_t offset) {
  std::size_t first = 0;
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX));
    const ssize_t written = ::pwritev(fd, iov.data() + first, count, offset);
    if (written < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "pwritev");
    }
    offset += written;
    auto left = static_cast<std::size_t>(written);
    while (first < iov.size() && left >= iov[first].iov_len) {
      left -= iov[first].iov_len;
      ++first;
    }
    if (left > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + left;
      iov[first].iov_len -= left;
    }
  }
}

}  // namespace

namespace {

// How the writer and the CRC thread share a large data section: the CRC runs at most kCrcLead
// bytes ahead of the write, in kWriteChunk pieces, so the bytes the kernel copies into the page
// cache were read from memory by the CRC a moment before and still sit in the shared cache. The
// arrays then cross the memory bus once, as in a plain write (np.save); a CRC running free reads
// them a second time and slows the write beside it (at 512 MB: 0.95-1.0x np.save free, 1.03-1.16x
// paced, paired runs; bench/serialize.py). Below kPacedCrcMinBytes the data largely fits in the
// caches and the free CRC is as fast.
constexpr uint64_t kWriteChunk = uint64_t{1} << 20;
constexpr uint64_t kCrcLead = uint64_t{4} << 20;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Waits until `ready()`: spins briefly (the other side is usually a few microseconds away), then
// naps, 20 µs at first and longer (up to 200 µs) while nothing changes, so that a waiting thread
// leaves the core to other work; the CRC's lead covers a nap several times over.
template <class Ready>
void wait_until(Ready ready) {
  for (int i = 0; i < 2048; ++i) {
    if (ready()) return;
    cpu_relax();
  }
  for (long nap_ns = 20000; !ready(); nap_ns = std::min(2 * nap_ns, 200000L)) {
    timespec nap{0, nap_ns};
    ::nanosleep(&nap, nullptr);
  }
}

// Hands out the data section's bytes in order, as (pointer, size) segments of the layout's pieces;
// zero padding (shorter than kAlignment) is served from kZeros.
class PieceCursor {
 public:
  explicit PieceCursor(const std::vector<Layout::Piece>& pieces) : pieces_(pieces) {}

  template <class Segment>
  void next(uint64_t n, Segment&& segment) {
    while (n > 0 && index_ < pieces_.size()) {
      const Layout::Piece& p = pieces_[index_];
      const uint64_t take = std::min(n, p.size - offset_);
      if (take > 0) segment(p.data ? p.data + offset_ : kZeros, static_cast<std::size_t>(take));
      n -= take;
      offset_ += take;
      if (offset_ == p.size) {
        ++index_;
        offset_ = 0;
      }
    }
  }

 private:
  const std::vector<Layout::Piece>& pieces_;
  std::size_t index_ = 0;
  uint64_t offset_ = 0;
};

// The file's bytes as iovecs: the header (if `with_header`), then every piece of the data section.
std::vector<iovec> file_iovecs(const Layout& layout, bool with_header) {
  std::vector<iovec> iov;
  iov.reserve(layout.pieces.size() + 1);
  if (with_header) iov.push_back({const_cast<char*>(layout.header.data()), layout.header.size()});
  for (const auto& p : layout.pieces) {
    if (p.size == 0) continue;
    const uint8_t* base = p.data ? p.data : kZeros;
    iov.push_back({const_cast<uint8_t*>(base), static_cast<std::size_t>(p.size)});
  }
  return iov;
}

// Writes the data section from file offset `start` on while a second thread computes its CRC (see
// kCrcLead). Writes end at multiples of kWriteChunk in the file, so that the kernel can keep
// using its largest page-cache folios.
uint32_t write_data_with_crc(int fd, const Layout& layout, uint64_t start, uint64_t data_size) {
  // End (in data-section bytes) of the chunk that begins at `pos`.
  auto chunk_end = [&](uint64_t pos) {
    const uint64_t file_end = (start + pos) / kWriteChunk * kWriteChunk + kWriteChunk;
    return std::min(file_end - start, data_size);
  };
  std::atomic<uint64_t> crc_done{0};  // bytes whose CRC is known
  std::atomic<uint64_t> written{0};   // bytes handed to the kernel
  std::atomic<bool> stop{false};      // the writer failed
  uint32_t crc = 0;
  std::thread crc_thread([&] {
    PieceCursor cursor(layout.pieces);
    uint32_t state = 0;
    for (uint64_t pos = 0, end; pos < data_size; pos = end) {
      end = chunk_end(pos);
      wait_until([&] {
        return stop.load(std::memory_order_relaxed) ||
               pos < written.load(std::memory_order_acquire) + kCrcLead;
      });
      if (stop.load(std::memory_order_relaxed)) return;
      cursor.next(end - pos,
                  [&state](const uint8_t* p, std::size_t n) { state = crc32c(state, p, n); });
      crc_done.store(end, std::memory_order_release);
    }
    crc = state;
  });
  try {
    PieceCursor cursor(layout.pieces);
    std::vector<iovec> iov;
    for (uint64_t pos = 0, end; pos < data_size; pos = end) {
      end = chunk_end(pos);
      wait_until([&] { return crc_done.load(std::memory_order_acquire) >= end; });
      iov.clear();
      cursor.next(end - pos, [&iov](const uint8_t* p, std::size_t size) {
        iov.push_back({const_cast<uint8_t*>(p), size});
      });
      write_all(fd, iov, static_cast<off_t>(start + pos));
      written.store(end, std::memory_order_release);
    }
  } catch (...) {
    stop.store(true, std::memory_order_relaxed);
    crc_thread.join();
    throw;
  }
  crc_thread.join();
  return crc;
}

}  // namespace

void write_file(int fd, Layout& layout) {
#ifdef __linux__
  // Reserving the blocks up front (as numpy's tofile does) makes the write itself faster; file
  // systems without fallocate simply skip it.
  (void)::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(layout.total_size));
#endif
  const uint64_t data_size = layout.total_size - layout.header.size();
  if (data_size < kOverlapMinBytes) {
    // Starting a thread would cost more than it saves: CRC first, then the file in one write.
    set_crc(layout, data_crc(layout, 1));
    write_all(fd, file_iovecs(layout, true), 0);
    return;
  }
  // The data section goes first while another thread takes its CRC; the header, whose length does
  // not depend on the CRC, is written last.
  if (data_size >= kPacedCrcMinBytes) {
    set_crc(layout, write_data_with_crc(fd, layout, layout.header.size(), data_size));
  } else {
    // Data that (mostly) fits in the caches: the CRC runs free beside one large write.
    uint32_t crc = 0;
    std::thread crc_thread([&layout, &crc] { crc = data_crc(layout, 1); });
    try {
      write_all(fd, file_iovecs(layout, false), static_cast<off_t>(layout.header.size()));
    } catch (...) {
      crc_thread.join();
      throw;
    }
    crc_thread.join();
    set_crc(layout, crc);
  }
  write_all(fd, {{layout.header.data(), layout.header.size()}}, 0);
}

void serialize(Layout& layout, uint8_t* out) {
  set_crc(layout, data_crc(layout));
  std::memcpy(out, layout.header.data(), layout.header.size());
  out += layout.header.size();
  for (const auto& p : layout.pieces) {
    if (p.data) std::memcpy(out, p.data, p.size);
    else std::memset(out, 0, p.size);
    out += p.size;
  }
}

}  // namespace sparkbatch
