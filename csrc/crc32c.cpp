#include "crc32c.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <nmmintrin.h>
#define SPARKBATCH_CRC_X86 1
#elif defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define SPARKBATCH_CRC_ARM 1
#endif

namespace sparkbatch {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

using Tables = std::array<std::array<uint32_t, 256>, 8>;

Tables make_tables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (std::size_t s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  return t;
}

const Tables& tables() {
  static const Tables t = make_tables();
  return t;
}

// All helpers below work on the raw (unconditioned) CRC state.
uint32_t raw_table(uint32_t state, const uint8_t* p, std::size_t n) {
  const Tables& t = tables();
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);  // little-endian hosts only (checked in CMake)
    word ^= state;
    state = t[7][word & 0xFF] ^ t[6][(word >> 8) & 0xFF] ^ t[5][(word >> 16) & 0xFF] ^
            t[4][(word >> 24) & 0xFF] ^ t[3][(word >> 32) & 0xFF] ^ t[2][(word >> 40) & 0xFF] ^
            t[1][(word >> 48) & 0xFF] ^ t[0][word >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) state = (state >> 8) ^ t[0][(state ^ *p++) & 0xFF];
  return state;
}

// Multiplication modulo the polynomial in the reflected representation (zlib's multmodp).
uint32_t mult_mod_p(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

// x^(2^k) mod p for k = 0..31.
const std::array<uint32_t, 32>& x2n_table() {
  static const std::array<uint32_t, 32> table = [] {
    std::array<uint32_t, 32> t{};
    uint32_t p = 1u << 30;  // x^1
    t[0] = p;
    for (std::size_t k = 1; k < 32; ++k) t[k] = p = mult_mod_p(p, p);
    return t;
  }();
  return table;
}

// x^(8 * n) mod p: multiplying a state by it appends n zero bytes.
uint32_t shift_bytes(std::size_t n) {
  uint32_t p = 1u << 31;  // x^0
  unsigned k = 3;
  while (n) {
    if (n & 1) p = mult_mod_p(x2n_table()[k & 31], p);
    n >>= 1;
    ++k;
  }
  return p;
}

#if defined(SPARKBATCH_CRC_X86)
#define SPARKBATCH_HW_TARGET __attribute__((target("sse4.2")))
SPARKBATCH_HW_TARGET inline uint64_t hw_u64(uint64_t s, uint64_t v) { return _mm_crc32_u64(s, v); }
SPARKBATCH_HW_TARGET inline uint32_t hw_u8(uint32_t s, uint8_t v) { return _mm_crc32_u8(s, v); }
bool detect_hardware() { return __builtin_cpu_supports("sse4.2"); }
#elif defined(SPARKBATCH_CRC_ARM)
#define SPARKBATCH_HW_TARGET __attribute__((target("+crc")))
SPARKBATCH_HW_TARGET inline uint64_t hw_u64(uint64_t s, uint64_t v) {
  return __builtin_aarch64_crc32cx(static_cast<uint32_t>(s), v);
}
SPARKBATCH_HW_TARGET inline uint32_t hw_u8(uint32_t s, uint8_t v) {
  return __builtin_aarch64_crc32cb(s, v);
}
bool detect_hardware() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
#endif

#ifdef SPARKBATCH_HW_TARGET
constexpr std::size_t kStripe = 8192;  // bytes per stream in the 3-way interleaved loop

SPARKBATCH_HW_TARGET uint32_t raw_hw_serial(uint32_t state, const uint8_t* p, std::size_t n) {
  uint64_t s = state;
  while (n >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    s = hw_u64(s, word);
    p += 8;
    n -= 8;
  }
  uint32_t s32 = static_cast<uint32_t>(s);
  while (n--) s32 = hw_u8(s32, *p++);
  return s32;
}

// Three independent streams hide the instruction's 3-cycle latency; their states are combined
// by multiplying with x^(8 * stripe) mod p.
SPARKBATCH_HW_TARGET uint32_t raw_hw(uint32_t state, const uint8_t* p, std::size_t n) {
  static const uint32_t shift1 = shift_bytes(kStripe);
  static const uint32_t shift2 = shift_bytes(2 * kStripe);
  while (n >= 3 * kStripe) {
    uint64_t a = state, b = 0, c = 0;
    const uint8_t* pa = p;
    const uint8_t* pb = p + kStripe;
    const uint8_t* pc = p + 2 * kStripe;
    for (std::size_t i = 0; i < kStripe; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, pa + i, 8);
      std::memcpy(&wb, pb + i, 8);
      std::memcpy(&wc, pc + i, 8);
      a = hw_u64(a, wa);
      b = hw_u64(b, wb);
      c = hw_u64(c, wc);
    }
    state = mult_mod_p(shift2, static_cast<uint32_t>(a)) ^
            mult_mod_p(shift1, static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
    p += 3 * kStripe;
    n -= 3 * kStripe;
  }
  return raw_hw_serial(state, p, n);
}
#endif

bool use_hardware() {
#ifdef SPARKBATCH_HW_TARGET
  static const bool hw = detect_hardware();
  return hw;
#else
  return false;
#endif
}

uint32_t raw_update(uint32_t state, const uint8_t* p, std::size_t n) {
#ifdef SPARKBATCH_HW_TARGET
  if (use_hardware()) return raw_hw(state, p, n);
#endif
  return raw_table(state, p, n);
}

}  // namespace

bool crc32c_hardware() { return use_hardware(); }

uint32_t crc32c(uint32_t crc, const void* data, std::size_t size) {
  return ~raw_update(~crc, static_cast<const uint8_t*>(data), size);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, std::size_t len_b) {
  return mult_mod_p(shift_bytes(len_b), crc_a) ^ crc_b;
}

uint32_t crc32c_parallel(uint32_t crc, const void* data, std::size_t size, unsigned threads) {
  constexpr std::size_t kMinPerThread = std::size_t{8} << 20;
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  const std::size_t useful = std::max<std::size_t>(1, size / kMinPerThread);
  const std::size_t n = std::min<std::size_t>(threads, useful);
  if (n <= 1) return crc32c(crc, data, size);

  const auto* bytes = static_cast<const uint8_t*>(data);
  const std::size_t chunk = size / n;
  std::vector<uint32_t> parts(n, 0);
  std::vector<std::thread> workers;
  workers.reserve(n - 1);
  for (std::size_t i = 1; i < n; ++i) {
    const std::size_t begin = i * chunk;
    const std::size_t len = (i + 1 == n) ? size - begin : chunk;
    workers.emplace_back([&parts, i, bytes, begin, len] { parts[i] = crc32c(0, bytes + begin, len); });
  }
  uint32_t result = crc32c(crc, bytes, chunk);
  for (auto& w : workers) w.join();
  for (std::size_t i = 1; i < n; ++i) {
    const std::size_t len = (i + 1 == n) ? size - i * chunk : chunk;
    result = crc32c_combine(result, parts[i], len);
  }
  return result;
}

}  // namespace sparkbatch
