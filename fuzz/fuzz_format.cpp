// libFuzzer target: the minibatch/safetensors reader (csrc/minibatch_format.cpp), as read_header,
// read_file and from_bytes use it: parse_header over a whole file held in memory, then what the
// bindings do with a checked header (every tensor's bytes read, the CRC-32C of the data section,
// compact class labels one-hot encoded).
//
// Every input either throws FormatError or yields a header whose tensors tile the data section,
// lie inside the input and match their dtype and shape. A file that reads is written again by the
// writer (plan_layout + serialize, as sparkbatch.data.save_tensors) and read back: the tensors and
// metadata must survive unchanged and the recorded CRC must match the data.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "crc32c.hpp"
#include "minibatch_format.hpp"
#include "one_hot.hpp"

namespace {

using sparkbatch::FormatError;
using sparkbatch::Header;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_format: invariant violated: %s\n", what);
  std::abort();
}

// What the bindings rely on after parse_header returns.
void check_header(const Header& h, const uint8_t* data, uint64_t size) {
  if (h.data_start < 8 || h.data_start > size) fail("data_start outside the file");
  uint64_t touched = 0;
  for (const auto& t : h.tensors) {
    const std::size_t item = sparkbatch::dtype_size(t.dtype);
    if (item == 0) fail("a tensor with an unknown dtype");
    if (t.end < t.begin || t.end > size - h.data_start) fail("tensor bytes outside the file");
    uint64_t n = item;
    for (uint64_t d : t.shape)
      if (__builtin_mul_overflow(n, d, &n)) fail("a tensor whose size overflows");
    if (n != t.end - t.begin) fail("tensor size differs from its data_offsets");
    // The bindings build numpy arrays of these bytes: read them all.
    touched += sparkbatch::crc32c(0, data + h.data_start + t.begin, t.end - t.begin);
  }
  (void)touched;
}

bool is_filler(const std::string& name) { return name.rfind(sparkbatch::kPadPrefix, 0) == 0; }

void round_trip(const Header& h, const uint8_t* data) {
  std::vector<sparkbatch::TensorSource> sources;
  for (const auto& t : h.tensors) {
    // The writer names its own filler tensors "__pad.<k>": a tensor of that name would clash.
    if (is_filler(t.name)) return;
    sparkbatch::TensorSource s;
    s.name = t.name;
    s.dtype = t.dtype;
    s.shape = t.shape;
    s.data = data + h.data_start + t.begin;
    s.nbytes = t.end - t.begin;
    sources.push_back(std::move(s));
  }
  std::vector<std::pair<std::string, std::string>> metadata;
  for (const auto& kv : h.metadata)
    if (kv.first != "crc32c") metadata.push_back(kv);  // the writer adds its own (bindings refuse one)

  sparkbatch::Layout layout = sparkbatch::plan_layout(sources, metadata);
  std::vector<uint8_t> file(layout.total_size);
  sparkbatch::serialize(layout, file.data());
  if (layout.total_size < layout.header.size()) fail("layout smaller than its header");
  if (layout.header.size() % sparkbatch::kAlignment != 0) fail("data section not 64-byte aligned");

  Header back;
  try {
    back = sparkbatch::parse_header(file.data(), file.size());
  } catch (const FormatError& e) {
    std::fprintf(stderr, "re-read failed: %s\n", e.what());
    fail("a file written from a readable file does not read");
  }
  if (back.tensors.size() != h.tensors.size()) fail("round trip changed the number of tensors");
  for (std::size_t i = 0; i < back.tensors.size(); ++i) {
    const auto& a = h.tensors[i];
    const auto& b = back.tensors[i];
    if (a.name != b.name || a.dtype != b.dtype || a.shape != b.shape ||
        a.end - a.begin != b.end - b.begin)
      fail("round trip changed a tensor's entry");
    if (b.begin % sparkbatch::kAlignment != 0) fail("a written tensor is not 64-byte aligned");
    if (a.end != a.begin &&
        std::memcmp(data + h.data_start + a.begin, file.data() + back.data_start + b.begin,
                    a.end - a.begin) != 0)
      fail("round trip changed a tensor's bytes");
  }
  std::vector<std::pair<std::string, std::string>> meta_back;
  std::string crc;
  for (const auto& kv : back.metadata) {
    if (kv.first == "crc32c") crc = kv.second;
    else meta_back.push_back(kv);
  }
  if (meta_back != metadata) fail("round trip changed the metadata");
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x",
                sparkbatch::crc32c(0, file.data() + back.data_start, file.size() - back.data_start));
  if (crc != hex) fail("written crc32c differs from the data's");
}

// As loading compact labels: a tensor named in a "num_classes:<name>" entry is one-hot encoded
// (sparkbatch.data.format._minibatch through _native.one_hot, which takes I8..I64 and U8 arrays of
// one or two dimensions and a positive class count).
void one_hot_labels(const Header& h, const uint8_t* data) {
  for (const auto& [key, value] : h.metadata) {
    if (key.rfind("num_classes:", 0) != 0) continue;
    const std::string name = key.substr(12);
    int64_t classes = 0;
    for (char c : value) {
      if (c < '0' || c > '9' || classes > 100000) return;
      classes = classes * 10 + (c - '0');
    }
    if (classes <= 0 || classes > 1000) continue;  // bounds the output, not what is checked
    for (const auto& t : h.tensors) {
      if (t.name != name || t.shape.empty() || t.shape.size() > 2) continue;
      const std::size_t n = static_cast<std::size_t>(t.shape[0]);
      const std::size_t steps = t.shape.size() == 2 ? static_cast<std::size_t>(t.shape[1]) : 1;
      if (n * steps > 4096) continue;
      std::vector<float> out(n * steps * static_cast<std::size_t>(classes));
      const uint8_t* p = data + h.data_start + t.begin;
      try {
        if (t.dtype == "I32")
          sparkbatch::one_hot(reinterpret_cast<const int32_t*>(p), n, steps, classes, out.data());
        else if (t.dtype == "I64")
          sparkbatch::one_hot(reinterpret_cast<const int64_t*>(p), n, steps, classes, out.data());
        else if (t.dtype == "I16")
          sparkbatch::one_hot(reinterpret_cast<const int16_t*>(p), n, steps, classes, out.data());
        else if (t.dtype == "U8")
          sparkbatch::one_hot(p, n, steps, classes, out.data());
      } catch (const sparkbatch::LabelRangeError&) {
      }
    }
  }
}

void read_bytes(const uint8_t* data, std::size_t size) {
  Header h;
  try {
    h = sparkbatch::parse_header(data, size);
  } catch (const FormatError& e) {
    if (std::strlen(e.what()) == 0) fail("FormatError without a message");
    return;
  }
  check_header(h, data, size);
  // As read_header/read_file with verify=True: the CRC-32C of the whole data section.
  (void)sparkbatch::crc32c_parallel(0, data + h.data_start, size - h.data_start, 1);
  one_hot_labels(h, data);
  round_trip(h, data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  read_bytes(data, size);
  // Mutations rarely keep the 8-byte header length right; so the header's JSON gets fuzzed as
  // much as the length, the input is also read with its length repaired: the header runs from
  // byte 8 to the last '}' before the first NUL byte, the data section is the rest.
  if (size <= 8) return 0;
  const auto* json = data + 8;
  const auto* stop = static_cast<const uint8_t*>(std::memchr(json, 0, size - 8));
  if (stop == nullptr) stop = data + size;
  const uint8_t* close = nullptr;
  for (const uint8_t* p = json; p < stop; ++p)
    if (*p == '}') close = p;
  if (close == nullptr) return 0;
  const uint64_t header_len = static_cast<uint64_t>(close + 1 - json);
  uint64_t recorded;
  std::memcpy(&recorded, data, 8);
  if (recorded == header_len) return 0;
  std::vector<uint8_t> fixed(data, data + size);
  std::memcpy(fixed.data(), &header_len, 8);
  read_bytes(fixed.data(), fixed.size());
  return 0;
}
