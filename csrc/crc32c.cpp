#include "crc32c.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "thread_pool.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
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

// x^n mod p in the reflected representation (bit 31 holds x^0), one multiplication by x per step:
// for compile-time constants only.
constexpr uint32_t x_pow_mod(uint32_t n, uint32_t poly = kPoly) {
  uint32_t p = 1u << 31;
  for (; n; --n) p = (p & 1) ? (p >> 1) ^ poly : p >> 1;
  return p;
}

// Carry-less multiplication folding (see raw_clmul): the 64-bit operand that moves a 64-bit lane
// of a 128-bit accumulator forward by `distance` bits is [x^(distance +- 32) mod p]' << 1, +32 for
// the low lane (the lane holding the earlier bytes), -32 for the high lane.
constexpr uint64_t fold_constant(uint32_t exponent, uint32_t poly = kPoly) {
  return uint64_t{x_pow_mod(exponent, poly)} << 1;
}
// The formula checked against the published constants for the IEEE CRC-32 (Linux
// arch/x86/crypto/crc32-pclmul_asm.S: R1..R4 for fold-by-4 and fold-by-1).
static_assert(fold_constant(4 * 128 + 32, 0xEDB88320u) == 0x154442bd4u, "R1");
static_assert(fold_constant(4 * 128 - 32, 0xEDB88320u) == 0x1c6e41596u, "R2");
static_assert(fold_constant(128 + 32, 0xEDB88320u) == 0x1751997d0u, "R3");
static_assert(fold_constant(128 - 32, 0xEDB88320u) == 0x0ccaa009eu, "R4");

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
// by multiplying with x^(8 * stripe) mod p. Consumes the whole 3-stripe blocks at the front of
// [p, p + n), advancing p and n.
SPARKBATCH_HW_TARGET uint32_t hw_stripes(uint32_t state, const uint8_t*& p, std::size_t& n) {
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
  return state;
}

SPARKBATCH_HW_TARGET uint32_t raw_hw(uint32_t state, const uint8_t* p, std::size_t n) {
  state = hw_stripes(state, p, n);
  return raw_hw_serial(state, p, n);
}
#endif

#if defined(SPARKBATCH_CRC_X86)
// Carry-less multiplication folding (Intel, "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ"), for CPUs with PCLMULQDQ and, 32 bytes at a time, VPCLMULQDQ + AVX2.
//
// A 16-byte block read as a little-endian 128-bit lane is, in the reflected domain, a polynomial
// whose low 64 bits hold its high-degree half. Moving a lane `d` bits further into the message
// multiplies it by x^d; mod p that is a 32-bit remainder, so each half costs one 64x33-bit
// carry-less product (fold_constant). Several lanes, `N` blocks apart, each absorb every N-th
// block of the message; at the end they are folded onto the last one. The result is congruent to
// the message so far (with the initial state XORed into its first 4 bytes), so running its 16
// bytes through the CRC instruction from state 0 gives the CRC state: no Barrett reduction needed.
#define SPARKBATCH_CLMUL_TARGET __attribute__((target("sse4.2,pclmul")))
#define SPARKBATCH_VCLMUL_TARGET __attribute__((target("sse4.2,pclmul,avx2,vpclmulqdq")))

// The constant pair {low lane, high lane} that moves a 128-bit lane forward by `distance` bits.
struct FoldPair {
  uint64_t lo, hi;
};
constexpr FoldPair fold_pair(uint32_t distance) {
  return {fold_constant(distance + 32), fold_constant(distance - 32)};
}

// Pairs for distances 128 * 1 .. 128 * N (index i: 128 * (i + 1)), to merge N lanes.
template <int N>
struct MergePairs {
  FoldPair k[N];
  constexpr MergePairs() : k{} {
    for (int i = 0; i < N; ++i) k[i] = fold_pair(128u * static_cast<uint32_t>(i + 1));
  }
};

SPARKBATCH_CLMUL_TARGET inline __m128i pair128(FoldPair k) {
  return _mm_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo));
}

SPARKBATCH_CLMUL_TARGET inline __m128i load128(const uint8_t* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

// lane * x^distance, congruent mod p (k = pair128(fold_pair(distance))).
SPARKBATCH_CLMUL_TARGET inline __m128i fold128(__m128i lane, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(lane, k, 0x00), _mm_clmulepi64_si128(lane, k, 0x11));
}

// The raw CRC state of a message congruent to the 16 bytes of `lane`.
SPARKBATCH_CLMUL_TARGET inline uint32_t lane_state(__m128i lane) {
  uint64_t s = _mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(lane)));
  s = _mm_crc32_u64(s, static_cast<uint64_t>(_mm_extract_epi64(lane, 1)));
  return static_cast<uint32_t>(s);
}

// N lanes of 16 bytes: needs n >= 16 * N. Consumes whole 16 * N byte blocks; the rest goes through
// the CRC instruction.
constexpr int kClmulLanes = 8;
constexpr std::size_t kClmulBlock = 16 * kClmulLanes;

SPARKBATCH_CLMUL_TARGET uint32_t raw_clmul(uint32_t state, const uint8_t* p, std::size_t n) {
  constexpr int N = kClmulLanes;
  static constexpr MergePairs<N> merge{};
  const __m128i k = pair128(merge.k[N - 1]);
  __m128i lane[N];
  for (int i = 0; i < N; ++i) lane[i] = load128(p + 16 * i);
  lane[0] = _mm_xor_si128(lane[0], _mm_cvtsi32_si128(static_cast<int>(state)));
  p += kClmulBlock;
  n -= kClmulBlock;
  for (; n >= kClmulBlock; p += kClmulBlock, n -= kClmulBlock)
    for (int i = 0; i < N; ++i) lane[i] = _mm_xor_si128(fold128(lane[i], k), load128(p + 16 * i));
  __m128i folded = lane[N - 1];
  for (int i = 0; i < N - 1; ++i)
    folded = _mm_xor_si128(folded, fold128(lane[i], pair128(merge.k[N - 2 - i])));
  return raw_hw_serial(lane_state(folded), p, n);
}

// N lanes of 32 bytes (two 128-bit lanes each): needs n >= 32 * N.
constexpr int kVclmulLanes = 8;
constexpr std::size_t kVclmulBlock = 32 * kVclmulLanes;

SPARKBATCH_VCLMUL_TARGET inline __m256i pair256(FoldPair k) {
  return _mm256_set_epi64x(static_cast<long long>(k.hi), static_cast<long long>(k.lo),
                           static_cast<long long>(k.hi), static_cast<long long>(k.lo));
}

SPARKBATCH_VCLMUL_TARGET inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

SPARKBATCH_VCLMUL_TARGET inline __m256i fold256(__m256i lane, __m256i k) {
  return _mm256_xor_si256(_mm256_clmulepi64_epi128(lane, k, 0x00),
                          _mm256_clmulepi64_epi128(lane, k, 0x11));
}

// Loads kVclmulLanes lanes from p, with the CRC state XORed into the first 4 bytes.
SPARKBATCH_VCLMUL_TARGET inline void start256(__m256i* lane, uint32_t state, const uint8_t* p) {
  for (int i = 0; i < kVclmulLanes; ++i) lane[i] = load256(p + 32 * i);
  const __m256i s = _mm256_setr_epi32(static_cast<int>(state), 0, 0, 0, 0, 0, 0, 0);
  lane[0] = _mm256_xor_si256(lane[0], s);
}

// Folds the lanes over the next kVclmulBlock bytes at p.
SPARKBATCH_VCLMUL_TARGET inline void step256(__m256i* lane, __m256i k, const uint8_t* p) {
  for (int i = 0; i < kVclmulLanes; ++i)
    lane[i] = _mm256_xor_si256(fold256(lane[i], k), load256(p + 32 * i));
}

// The CRC state of the message congruent to the lanes (consecutive, lane i 32 * i bytes in).
SPARKBATCH_VCLMUL_TARGET inline uint32_t finish256(const __m256i* lane) {
  constexpr int N = kVclmulLanes;
  static constexpr MergePairs<2 * N> merge{};  // distances in 128-bit steps
  __m256i folded = lane[N - 1];
  for (int i = 0; i < N - 1; ++i)  // lane i is 32 * (N - 1 - i) bytes before the last
    folded = _mm256_xor_si256(folded, fold256(lane[i], pair256(merge.k[2 * (N - 1 - i) - 1])));
  const __m128i first = fold128(_mm256_castsi256_si128(folded), pair128(merge.k[0]));
  return lane_state(_mm_xor_si128(_mm256_extracti128_si256(folded, 1), first));
}

// The operand of fold256 that moves each lane past the next kVclmulBlock bytes.
SPARKBATCH_VCLMUL_TARGET inline __m256i step_constant256() {
  constexpr FoldPair k = fold_pair(8 * kVclmulBlock);
  return pair256(k);
}

SPARKBATCH_VCLMUL_TARGET uint32_t raw_vclmul(uint32_t state, const uint8_t* p, std::size_t n) {
  const __m256i k = step_constant256();
  __m256i lane[kVclmulLanes];
  start256(lane, state, p);
  p += kVclmulBlock;
  n -= kVclmulBlock;
  for (; n >= kVclmulBlock; p += kVclmulBlock, n -= kVclmulBlock) step256(lane, k, p);
  return raw_hw_serial(finish256(lane), p, n);
}

// a * x^33 * b mod p for 32-bit states/remainders a and b: with b = x^(8 * len - 33) mod p,
// appends len zero bytes to state a (the 128-bit product, read reflected, is a * b * x; its low
// 64 bits hold all of it, and the CRC instruction multiplies by x^32 and reduces).
SPARKBATCH_CLMUL_TARGET inline uint32_t clmul_mod_p(uint32_t a, uint32_t b) {
  const __m128i product = _mm_clmulepi64_si128(_mm_cvtsi32_si128(static_cast<int>(a)),
                                               _mm_cvtsi32_si128(static_cast<int>(b)), 0x00);
  return static_cast<uint32_t>(_mm_crc32_u64(0, static_cast<uint64_t>(_mm_cvtsi128_si64(product))));
}

// The carry-less multiplier and the CRC instruction use different execution units, so each chunk
// of the buffer is split into a region folded with VPCLMULQDQ and three streams for the CRC
// instruction, all advanced in the same loop; the four states are joined with clmul_mod_p.
// Chunk layout: [vector: Iters * 256 B][stream 0][stream 1][stream 2], each stream Iters * Step
// bytes. On Zen 3 this runs at about 1.5 times the speed of either unit alone.
template <std::size_t Step, std::size_t Iters>
struct MixLayout {
  static constexpr std::size_t kStep = Step;
  static constexpr std::size_t kIters = Iters;
  static constexpr std::size_t kVector = Iters * kVclmulBlock;
  static constexpr std::size_t kStripe = Iters * Step;
  static constexpr std::size_t kChunk = kVector + 3 * kStripe;
};
using MixLarge = MixLayout<64, 32>;  // 14 KiB chunks
using MixSmall = MixLayout<64, 8>;   // 3.5 KiB chunks, for what is left

// Consumes the whole chunks at the front of [p, p + n), advancing p and n.
template <class L>
SPARKBATCH_VCLMUL_TARGET uint32_t mixed_chunks(uint32_t state, const uint8_t*& p, std::size_t& n) {
  static constexpr uint32_t shift1 = x_pow_mod(8 * L::kStripe - 33);
  static constexpr uint32_t shift2 = x_pow_mod(2 * 8 * L::kStripe - 33);
  static constexpr uint32_t shift3 = x_pow_mod(3 * 8 * L::kStripe - 33);
  const __m256i k = step_constant256();
  for (; n >= L::kChunk; p += L::kChunk, n -= L::kChunk) {
    const uint8_t* v = p;
    const uint8_t* s = p + L::kVector;
    __m256i lane[kVclmulLanes];
    start256(lane, state, v);
    uint64_t a = 0, b = 0, c = 0;
    for (std::size_t it = 0;;) {
      for (std::size_t j = 0; j < L::kStep; j += 8) {
        uint64_t wa, wb, wc;
        std::memcpy(&wa, s + j, 8);
        std::memcpy(&wb, s + L::kStripe + j, 8);
        std::memcpy(&wc, s + 2 * L::kStripe + j, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
      }
      s += L::kStep;
      if (++it == L::kIters) break;
      v += kVclmulBlock;
      step256(lane, k, v);
    }
    state = clmul_mod_p(finish256(lane), shift3) ^ clmul_mod_p(static_cast<uint32_t>(a), shift2) ^
            clmul_mod_p(static_cast<uint32_t>(b), shift1) ^ static_cast<uint32_t>(c);
  }
  return state;
}

SPARKBATCH_VCLMUL_TARGET uint32_t raw_mixed(uint32_t state, const uint8_t* p, std::size_t n) {
  state = mixed_chunks<MixLarge>(state, p, n);
  state = mixed_chunks<MixSmall>(state, p, n);
  if (n >= 2 * kVclmulBlock) return raw_vclmul(state, p, n);
  if (n >= 2 * kClmulBlock) return raw_clmul(state, p, n);
  return raw_hw_serial(state, p, n);
}
#endif

enum class Method { table, hw, clmul, vclmul };

Method detect_method() {
#if defined(SPARKBATCH_CRC_X86)
  if (!detect_hardware()) return Method::table;
  if (!__builtin_cpu_supports("pclmul")) return Method::hw;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("vpclmulqdq")) return Method::vclmul;
  return Method::clmul;
#elif defined(SPARKBATCH_HW_TARGET)
  return detect_hardware() ? Method::hw : Method::table;
#else
  return Method::table;
#endif
}

Method method() {
  static const Method m = detect_method();
  return m;
}

bool use_hardware() { return method() != Method::table; }

uint32_t raw_update(uint32_t state, const uint8_t* p, std::size_t n) {
  switch (method()) {
#if defined(SPARKBATCH_CRC_X86)
    case Method::vclmul:
      if (n >= 2 * kVclmulBlock) return raw_mixed(state, p, n);
      if (n >= 2 * kClmulBlock) return raw_clmul(state, p, n);
      return raw_hw_serial(state, p, n);
    case Method::clmul:
      // 128-bit folding alone is no faster than three CRC instruction streams (both are bound by
      // one instruction a cycle, or less), but beats the single stream left for short inputs.
      state = hw_stripes(state, p, n);
      if (n >= 2 * kClmulBlock) return raw_clmul(state, p, n);
      return raw_hw_serial(state, p, n);
#endif
#ifdef SPARKBATCH_HW_TARGET
    case Method::hw:
      return raw_hw(state, p, n);
#endif
    default:
      return raw_table(state, p, n);
  }
}

}  // namespace

bool crc32c_hardware() { return use_hardware(); }

const char* crc32c_method() {
  switch (method()) {
    case Method::vclmul: return "sse4.2+vpclmul";
    case Method::clmul: return "sse4.2+pclmul";
#if defined(SPARKBATCH_CRC_ARM)
    case Method::hw: return "armv8-crc";
#else
    case Method::hw: return "sse4.2";
#endif
    default: return "table";
  }
}

uint32_t crc32c(uint32_t crc, const void* data, std::size_t size) {
  return ~raw_update(~crc, static_cast<const uint8_t*>(data), size);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, std::size_t len_b) {
  return mult_mod_p(shift_bytes(len_b), crc_a) ^ crc_b;
}

uint32_t crc32c_parallel(uint32_t crc, const void* data, std::size_t size, unsigned threads) {
  // Waking a pooled worker costs tens of microseconds on some machines: only buffers of several
  // megabytes per thread gain from splitting.
  constexpr std::size_t kMinPerThread = std::size_t{4} << 20;
  if (threads == 0) threads = pool_threads();
  const std::size_t n = std::min<std::size_t>(threads, std::max<std::size_t>(1, size / kMinPerThread));
  if (n <= 1) return crc32c(crc, data, size);

  const auto* bytes = static_cast<const uint8_t*>(data);
  const std::size_t chunk = size / n;
  auto length = [&](std::size_t i) { return i + 1 == n ? size - i * chunk : chunk; };
  std::vector<uint32_t> parts(n, 0);
  parallel_for(n, [&](std::size_t i) {
    parts[i] = crc32c(i == 0 ? crc : 0, bytes + i * chunk, length(i));
  });
  uint32_t result = parts[0];
  for (std::size_t i = 1; i < n; ++i) result = crc32c_combine(result, parts[i], length(i));
  return result;
}

}  // namespace sparkbatch
