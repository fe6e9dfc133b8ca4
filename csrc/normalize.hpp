// Column statistics and the per-column affine map of the fitted normalizers
// (sparkbatch.data.Standardize, MinMaxScale; DL4J's NormalizerStandardize, NormalizerMinMaxScaler).
//
// An array is viewed as [outer, cols, inner]: features [n, f] are [n, f, 1], sequences [n, f, t]
// are [n, f, t] with an optional mask [n, t] (nonzero: a real step), images [n, c, h, w] are
// [n, c, h * w]. A "column" is one feature or channel; its values are every element with that
// column index (over examples, unmasked time steps and pixels).
#pragma once

#include <cstddef>
#include <cstdint>

namespace sparkbatch::normalize {

struct Layout {
  std::size_t outer;
  std::size_t cols;
  std::size_t inner;
};

// Per column over the values the mask keeps (all without a mask): the mean, the sum of squared
// deviations from it (M2; population variance = M2 / count), the minimum and the maximum, all in
// float64, each of `layout.cols` values. Returns the count of values per column (the same for
// every column). With a count of 0: mean and M2 are 0, min +inf and max -inf.
//
// One read of the array: blocks of examples that fit in cache are summed, then their deviations
// from the block's mean are summed (two passes over cached data), and blocks are merged with
// Chan et al.'s parallel formula, so the result is as accurate as a two-pass computation.
// M is the mask's element type (uint8_t, float or double); `mask` may be null.
template <typename T, typename M>
std::uint64_t column_moments(const T* x, const M* mask, Layout layout, double* mean, double* m2,
                             double* min, double* max);

// out = (x - center[c]) * scale[c] + offset[c] per column c, computed in float64 and rounded
// once to T; where the mask is 0 the output is 0 (DL4J zeroes masked steps after normalising).
// `out` may be `x` itself (in place) but must not otherwise overlap it.
template <typename T, typename M>
void affine(const T* x, const M* mask, Layout layout, const double* center, const double* scale,
            const double* offset, T* out);

}  // namespace sparkbatch::normalize
