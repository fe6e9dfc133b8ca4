// Column statistics and the per-column affine map of the fitted normalizers: see normalize.hpp.
#include "normalize.hpp"

#include <algorithm>
#include <limits>
#include <vector>

// The loops are compiled twice on x86-64, for AVX2 and for the baseline, and the loader picks one
// (GCC's target_clones, an ifunc): float32 <-> float64 conversions and float64 arithmetic run at
// twice the SSE2 width where the CPU has AVX2.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define SPARKBATCH_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SPARKBATCH_CLONES
#endif

namespace sparkbatch::normalize {
namespace {

// Rows of [n, f] arrays (inner == 1) summed per block: about 64 KiB of float32, so that the second
// pass over a block (its deviations) reads it from cache.
constexpr std::size_t kBlockValues = 16384;
constexpr std::size_t kLanes = 4;  // independent accumulators of the span loops (latency, not accuracy)

// Whether step j is kept: always without a mask (Masked false: the check compiles away).
template <bool Masked, typename M>
bool kept(const M* mask, std::size_t j) {
  if constexpr (Masked) return mask[j] != M(0);
  return true;
}

// The kept values' sum of one span of `n` values (mask: the span's steps when Masked).
template <bool Masked, typename T, typename M>
double span_sum(const T* x, const M* mask, std::size_t n) {
  double acc[kLanes] = {0.0, 0.0, 0.0, 0.0};
  std::size_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (std::size_t k = 0; k < kLanes; ++k)
      acc[k] += kept<Masked>(mask, j + k) ? static_cast<double>(x[j + k]) : 0.0;
  for (; j < n; ++j) acc[0] += kept<Masked>(mask, j) ? static_cast<double>(x[j]) : 0.0;
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

struct Spread {
  double m2;
  double min;
  double max;
};

// The kept values' squared deviations from `mu`, minimum and maximum, of one span (branch-free:
// a dropped step adds 0 and leaves the extremes).
template <bool Masked, typename T, typename M>
Spread span_spread(const T* x, const M* mask, std::size_t n, double mu) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  double m2[kLanes] = {0.0, 0.0, 0.0, 0.0};
  double lo[kLanes] = {inf, inf, inf, inf};
  double hi[kLanes] = {-inf, -inf, -inf, -inf};
  std::size_t j = 0;
  const auto step = [&](std::size_t k, std::size_t i) {
    const bool keep = kept<Masked>(mask, i);
    const double v = static_cast<double>(x[i]);
    const double d = keep ? v - mu : 0.0;
    m2[k] += d * d;
    lo[k] = keep && v < lo[k] ? v : lo[k];
    hi[k] = keep && v > hi[k] ? v : hi[k];
  };
  for (; j + kLanes <= n; j += kLanes)
    for (std::size_t k = 0; k < kLanes; ++k) step(k, j + k);
  for (; j < n; ++j) step(0, j);
  return {(m2[0] + m2[1]) + (m2[2] + m2[3]), std::min(std::min(lo[0], lo[1]), std::min(lo[2], lo[3])),
          std::max(std::max(hi[0], hi[1]), std::max(hi[2], hi[3]))};
}

// Running per-column totals, merged with Chan et al.'s formula: a part of `count` values per
// column with means `part_mean` and M2 `part_m2` joins `total` values already seen.
struct Totals {
  double* mean;
  double* m2;
  double* min;
  double* max;
  std::size_t cols;
  std::uint64_t total = 0;

  // Weights of one merge of `count` more values: the new values' share of the mean, and the
  // factor of delta^2 in M2.
  struct Weights {
    double share;
    double cross;
  };
  Weights begin(std::uint64_t count) {
    const double a = static_cast<double>(total);
    const double b = static_cast<double>(count);
    total += count;
    const double n = static_cast<double>(total);
    return {b / n, a * b / n};
  }
  void merge(std::size_t c, Weights w, double part_mean, Spread part) {
    const double delta = part_mean - mean[c];
    mean[c] += delta * w.share;
    m2[c] += part.m2 + delta * delta * w.cross;
    min[c] = part.min < min[c] ? part.min : min[c];
    max[c] = part.max > max[c] ? part.max : max[c];
  }
};

// [n, f] without a mask: blocks of rows, each summed per column, then its deviations.
template <typename T>
void rows_moments(const T* x, std::size_t n, Totals& totals) {
  const std::size_t cols = totals.cols;
  const std::size_t block = std::max<std::size_t>(1, kBlockValues / cols);
  constexpr double inf = std::numeric_limits<double>::infinity();
  std::vector<double> sum(cols), m2(cols), lo(cols), hi(cols);
  for (std::size_t r0 = 0; r0 < n; r0 += block) {
    const std::size_t r1 = std::min(n, r0 + block);
    std::fill(sum.begin(), sum.end(), 0.0);
    for (std::size_t r = r0; r < r1; ++r) {
      const T* row = x + r * cols;
      for (std::size_t c = 0; c < cols; ++c) sum[c] += static_cast<double>(row[c]);
    }
    const double count = static_cast<double>(r1 - r0);
    for (std::size_t c = 0; c < cols; ++c) sum[c] /= count;  // now the block's means
    std::fill(m2.begin(), m2.end(), 0.0);
    std::fill(lo.begin(), lo.end(), inf);
    std::fill(hi.begin(), hi.end(), -inf);
    for (std::size_t r = r0; r < r1; ++r) {
      const T* row = x + r * cols;
      for (std::size_t c = 0; c < cols; ++c) {
        const double v = static_cast<double>(row[c]);
        const double d = v - sum[c];
        m2[c] += d * d;
        lo[c] = v < lo[c] ? v : lo[c];
        hi[c] = v > hi[c] ? v : hi[c];
      }
    }
    const auto w = totals.begin(r1 - r0);
    for (std::size_t c = 0; c < cols; ++c) totals.merge(c, w, sum[c], {m2[c], lo[c], hi[c]});
  }
}

}  // namespace

template <typename T, typename M>
SPARKBATCH_CLONES std::uint64_t column_moments(const T* x, const M* mask, Layout layout, double* mean, double* m2,
                             double* min, double* max) {
  const auto [outer, cols, inner] = layout;
  std::fill(mean, mean + cols, 0.0);
  std::fill(m2, m2 + cols, 0.0);
  std::fill(min, min + cols, std::numeric_limits<double>::infinity());
  std::fill(max, max + cols, -std::numeric_limits<double>::infinity());
  Totals totals{mean, m2, min, max, cols};
  if (cols == 0) return 0;
  if (inner == 1 && mask == nullptr) {
    rows_moments(x, outer, totals);
    return totals.total;
  }
  // Sequences and images: each example's span of `inner` values per column is one part (its
  // own two passes, from cache), merged into the totals; every column of an example keeps the
  // same steps, so the weights of a merge are computed once per example.
  for (std::size_t o = 0; o < outer; ++o) {
    const M* steps = mask == nullptr ? nullptr : mask + o * inner;
    std::uint64_t count = inner;
    if (steps != nullptr) {
      count = 0;
      for (std::size_t j = 0; j < inner; ++j) count += steps[j] != M(0) ? 1u : 0u;
    }
    if (count == 0) continue;
    const double n = static_cast<double>(count);
    const auto w = totals.begin(count);
    for (std::size_t c = 0; c < cols; ++c) {
      const T* span = x + (o * cols + c) * inner;
      if (steps == nullptr) {
        const double mu = span_sum<false>(span, steps, inner) / n;
        totals.merge(c, w, mu, span_spread<false>(span, steps, inner, mu));
      } else {
        const double mu = span_sum<true>(span, steps, inner) / n;
        totals.merge(c, w, mu, span_spread<true>(span, steps, inner, mu));
      }
    }
  }
  return totals.total;
}

template <typename T, typename M>
SPARKBATCH_CLONES void affine(const T* x, const M* mask, Layout layout, const double* center, const double* scale,
            const double* offset, T* out) {
  const auto [outer, cols, inner] = layout;
  if (inner == 1 && mask == nullptr) {
    for (std::size_t r = 0; r < outer; ++r) {
      const T* row = x + r * cols;
      T* dst = out + r * cols;
      for (std::size_t c = 0; c < cols; ++c)
        dst[c] = static_cast<T>((static_cast<double>(row[c]) - center[c]) * scale[c] + offset[c]);
    }
    return;
  }
  for (std::size_t o = 0; o < outer; ++o) {
    const M* steps = mask == nullptr ? nullptr : mask + o * inner;
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t at = (o * cols + c) * inner;
      const T* src = x + at;
      T* dst = out + at;
      const double a = center[c], s = scale[c], b = offset[c];
      for (std::size_t j = 0; j < inner; ++j)
        dst[j] = static_cast<T>((static_cast<double>(src[j]) - a) * s + b);
      if (steps != nullptr)  // a second pass over the span, in cache: both loops vectorise
        for (std::size_t j = 0; j < inner; ++j) dst[j] = steps[j] != M(0) ? dst[j] : T(0);
    }
  }
}

#define SPARKBATCH_NORMALIZE(T, M)                                                              \
  template std::uint64_t column_moments<T, M>(const T*, const M*, Layout, double*, double*,    \
                                              double*, double*);                               \
  template void affine<T, M>(const T*, const M*, Layout, const double*, const double*,         \
                             const double*, T*);
SPARKBATCH_NORMALIZE(float, std::uint8_t)
SPARKBATCH_NORMALIZE(float, float)
SPARKBATCH_NORMALIZE(float, double)
SPARKBATCH_NORMALIZE(double, std::uint8_t)
SPARKBATCH_NORMALIZE(double, float)
SPARKBATCH_NORMALIZE(double, double)
#undef SPARKBATCH_NORMALIZE

}  // namespace sparkbatch::normalize
