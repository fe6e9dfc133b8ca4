#include "conv_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>

#include "thread_pool.hpp"

namespace sparkbatch::nn {
namespace {

using Index = std::ptrdiff_t;

// Below this many elements touched a kernel runs on the calling thread: waking the pool costs
// more (the element-wise kernels' threshold, lower since these passes do more per element).
constexpr std::size_t kParallelMin = std::size_t{1} << 15;

// Calls fn(k) for k in [0, count) (examples or image planes), split over the pool when `work`
// elements are many enough. Each k is handled by one thread.
template <typename F>
void for_each_item(std::size_t count, std::size_t work, F&& fn) {
  const std::size_t threads = pool_threads();
  if (work < kParallelMin || threads < 2 || count < 2) {
    for (std::size_t k = 0; k < count; ++k) fn(k);
    return;
  }
  const std::size_t pieces = std::min(count, threads * 4);
  const std::size_t step = (count + pieces - 1) / pieces;
  parallel_for(pieces, [&](std::size_t p) {
    const std::size_t end = std::min(count, (p + 1) * step);
    for (std::size_t k = p * step; k < end; ++k) fn(k);
  });
}

// The in-image part [begin, end) of a window starting at `start` (may be negative) of `size`.
struct Span {
  Index begin, end;
};
inline Span clip(Index start, std::size_t size, std::size_t limit) {
  return {std::max<Index>(start, 0), std::min<Index>(start + static_cast<Index>(size),
                                                     static_cast<Index>(limit))};
}

// Calls f with the kernel width as a compile-time constant for the common small widths (so the
// innermost loops unroll), else as a runtime value.
template <typename F>
void with_width(std::size_t kw, F&& f) {
  switch (kw) {
    case 1:
      return f(std::integral_constant<Index, 1>{});
    case 2:
      return f(std::integral_constant<Index, 2>{});
    case 3:
      return f(std::integral_constant<Index, 3>{});
    case 5:
      return f(std::integral_constant<Index, 5>{});
    default:
      return f(static_cast<Index>(kw));
  }
}

// Visits every (row of col, its window origin) of example i: fn(row pointer, iy0, ix0).
template <typename T, typename F>
void for_each_window(T* base, const ConvShape& s, F&& fn) {
  const std::size_t oh = s.out_h(), ow = s.out_w(), k = s.patch();
  for (std::size_t oy = 0; oy < oh; ++oy) {
    const Index iy0 = static_cast<Index>(oy * s.sh) - static_cast<Index>(s.ph);
    for (std::size_t ox = 0; ox < ow; ++ox) {
      const Index ix0 = static_cast<Index>(ox * s.sw) - static_cast<Index>(s.pw);
      fn(base + (oy * ow + ox) * k, iy0, ix0);
    }
  }
}

}  // namespace

template <typename T>
void im2col(const T* x, T* col, const ConvShape& s) {
  const std::size_t image = s.image(), rows = s.positions() * s.patch(), plane = s.h * s.w;
  const Index h = static_cast<Index>(s.h), w = static_cast<Index>(s.w);
  with_width(s.kw, [&](auto width) {
    const Index kw = static_cast<Index>(width);
    for_each_item(s.n, s.n * rows, [&](std::size_t i) {
      const T* xi = x + i * image;
      for_each_window(col + i * rows, s, [&](T* row, Index iy0, Index ix0) {
        const bool inside = ix0 >= 0 && ix0 + kw <= w;
        for (std::size_t ch = 0; ch < s.c; ++ch) {
          const T* src_plane = xi + ch * plane;
          for (std::size_t ky = 0; ky < s.kh; ++ky, row += kw) {
            const Index iy = iy0 + static_cast<Index>(ky);
            if (iy < 0 || iy >= h) {
              for (Index kx = 0; kx < kw; ++kx) row[kx] = T(0);
              continue;
            }
            // Indexed from the image row: row + ix0 would point before the array when ix0 < 0.
            const T* src = src_plane + iy * w;
            if (inside) {
              for (Index kx = 0; kx < kw; ++kx) row[kx] = src[ix0 + kx];
              continue;
            }
            for (Index kx = 0; kx < kw; ++kx) {
              const Index ix = ix0 + kx;
              row[kx] = ix >= 0 && ix < w ? src[ix] : T(0);
            }
          }
        }
      });
    });
  });
}

template <typename T>
void col2im(const T* col, T* x, const ConvShape& s) {
  const std::size_t image = s.image(), rows = s.positions() * s.patch(), plane = s.h * s.w;
  const Index h = static_cast<Index>(s.h), w = static_cast<Index>(s.w);
  with_width(s.kw, [&](auto width) {
    const Index kw = static_cast<Index>(width);
    for_each_item(s.n, s.n * rows, [&](std::size_t i) {
      T* xi = x + i * image;
      std::fill(xi, xi + image, T(0));
      for_each_window(col + i * rows, s, [&](const T* row, Index iy0, Index ix0) {
        const bool inside = ix0 >= 0 && ix0 + kw <= w;
        const Index lo = std::max<Index>(0, -ix0), hi = std::min<Index>(kw, w - ix0);
        for (std::size_t ch = 0; ch < s.c; ++ch) {
          T* dst_plane = xi + ch * plane;
          for (std::size_t ky = 0; ky < s.kh; ++ky, row += kw) {
            const Index iy = iy0 + static_cast<Index>(ky);
            if (iy < 0 || iy >= h) continue;
            T* dst = dst_plane + iy * w;  // indexed by ix0 + kx, never formed below the row
            if (inside) {
              for (Index kx = 0; kx < kw; ++kx) dst[ix0 + kx] += row[kx];
              continue;
            }
            for (Index kx = lo; kx < hi; ++kx) dst[ix0 + kx] += row[kx];
          }
        }
      });
    });
  });
}

namespace {

// dst [cols, rows] = src [rows, cols] transposed, in tiles that stay in cache.
template <typename T>
void transpose(const T* src, T* dst, std::size_t rows, std::size_t cols) {
  constexpr std::size_t kTile = 16;
  for (std::size_t r0 = 0; r0 < rows; r0 += kTile) {
    const std::size_t r1 = std::min(rows, r0 + kTile);
    for (std::size_t c0 = 0; c0 < cols; c0 += kTile) {
      const std::size_t c1 = std::min(cols, c0 + kTile);
      // The strided side of the tile steps by the shorter row: a stride of a long power-of-two
      // row (4 KiB for 1024 floats) maps every line of the tile to one cache set.
      if (cols <= rows) {
        for (std::size_t c = c0; c < c1; ++c)
          for (std::size_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
      } else {
        for (std::size_t r = r0; r < r1; ++r)
          for (std::size_t c = c0; c < c1; ++c) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
}

}  // namespace

template <typename T>
void channels_last(const T* src, T* dst, std::size_t n, std::size_t channels,
                   std::size_t positions) {
  const std::size_t each = channels * positions;
  for_each_item(n, n * each, [&](std::size_t i) {
    transpose(src + i * each, dst + i * each, channels, positions);
  });
}

template <typename T>
void channels_first(const T* src, T* dst, std::size_t n, std::size_t channels,
                    std::size_t positions) {
  const std::size_t each = channels * positions;
  for_each_item(n, n * each, [&](std::size_t i) {
    transpose(src + i * each, dst + i * each, positions, channels);
  });
}

namespace {

// Calls fn(plane index, y span, first x, x count, output index within the plane) for every
// window of every image plane (n*c of them, split over the pool), after start(plane) for each
// plane. The x count of a window wholly inside the image is a compile-time constant for the
// common kernel widths (the innermost loops unroll); clipped windows get a runtime count.
template <typename Start, typename F>
void for_each_pool_window(const ConvShape& s, std::size_t work, Start&& start, F&& fn) {
  const std::size_t oh = s.out_h(), ow = s.out_w();
  with_width(s.kw, [&](auto width) {
    for_each_item(s.n * s.c, work, [&](std::size_t p) {
      start(p);
      for (std::size_t oy = 0; oy < oh; ++oy) {
        const Span ys =
            clip(static_cast<Index>(oy * s.sh) - static_cast<Index>(s.ph), s.kh, s.h);
        for (std::size_t ox = 0; ox < ow; ++ox) {
          const Index x0 = static_cast<Index>(ox * s.sw) - static_cast<Index>(s.pw);
          if (x0 >= 0 && x0 + static_cast<Index>(width) <= static_cast<Index>(s.w)) {
            fn(p, ys, x0, width, oy * ow + ox);
          } else {
            const Span xs = clip(x0, s.kw, s.w);
            fn(p, ys, xs.begin, xs.end - xs.begin, oy * ow + ox);
          }
        }
      }
    });
  });
}

}  // namespace

template <typename T>
void max_pool(const T* x, T* out, const ConvShape& s) {
  const std::size_t plane = s.h * s.w, pooled = s.positions();
  const Index w = static_cast<Index>(s.w);
  const std::size_t work = s.n * s.c * pooled * s.kh * s.kw;
  for_each_pool_window(
      s, work, [](std::size_t) {},
      [&](std::size_t p, Span ys, Index x0, auto count, std::size_t o) {
        const T* xp = x + p * plane + x0;
        T m = xp[ys.begin * w];
        bool nan = false;
        // Branch-free (the comparisons of random data are unpredictable): the max, and
        // whether any value was NaN.
        for (Index y = ys.begin; y < ys.end; ++y)
          for (Index k = 0; k < static_cast<Index>(count); ++k) {
            const T v = xp[y * w + k];
            m = v > m ? v : m;
            nan |= v != v;
          }
        out[p * pooled + o] = nan ? std::numeric_limits<T>::quiet_NaN() : m;
      });
}

namespace {

// Whether v is the window's maximum m (a NaN maximum matches the first NaN).
template <typename T>
inline bool is_max(T v, T m) {
  return (v == m) | ((v != v) & (m != m));
}

// max_pool_backward for 2x2 windows with stride 2 that tile the image (the usual pooling):
// every position belongs to one window and is written once (its window's gradient or 0), no
// zeroing, no read-modify-write, and the first match of each window is found with independent
// selects (ties, ReLU's zeros, would make branches unpredictable).
template <typename T>
void max_pool_backward_2x2(const T* x, const T* out, const T* d_out, T* d_in,
                           const ConvShape& s, std::size_t work) {
  const std::size_t plane = s.h * s.w, oh = s.out_h(), ow = s.out_w(), w = s.w;
  for_each_item(s.n * s.c, work, [&](std::size_t p) {
    const T* m = out + p * oh * ow;
    const T* g = d_out + p * oh * ow;
    for (std::size_t oy = 0; oy < oh; ++oy, m += ow, g += ow) {
      const T* r0 = x + p * plane + 2 * oy * w;
      const T* r1 = r0 + w;
      T* d0 = d_in + p * plane + 2 * oy * w;
      T* d1 = d0 + w;
      for (std::size_t ox = 0; ox < ow; ++ox) {
        const T mx = m[ox], gx = g[ox];
        const bool e0 = is_max(r0[2 * ox], mx);
        const bool e1 = !e0 & is_max(r0[2 * ox + 1], mx);
        const bool e2 = !(e0 | e1) & is_max(r1[2 * ox], mx);
        const bool e3 = !(e0 | e1 | e2) & is_max(r1[2 * ox + 1], mx);
        d0[2 * ox] = e0 ? gx : T(0);
        d0[2 * ox + 1] = e1 ? gx : T(0);
        d1[2 * ox] = e2 ? gx : T(0);
        d1[2 * ox + 1] = e3 ? gx : T(0);
      }
    }
  });
}

}  // namespace

template <typename T>
void max_pool_backward(const T* x, const T* out, const T* d_out, T* d_in, const ConvShape& s) {
  const std::size_t plane = s.h * s.w, pooled = s.positions();
  const Index w = static_cast<Index>(s.w);
  const std::size_t work = s.n * s.c * (plane + pooled * s.kh * s.kw);
  if (s.kh == 2 && s.kw == 2 && s.sh == 2 && s.sw == 2 && s.ph == 0 && s.pw == 0 &&
      s.h % 2 == 0 && s.w % 2 == 0)
    return max_pool_backward_2x2(x, out, d_out, d_in, s, work);
  for_each_pool_window(
      s, work, [&](std::size_t p) { std::fill(d_in + p * plane, d_in + (p + 1) * plane, T(0)); },
      [&](std::size_t p, Span ys, Index x0, auto count, std::size_t o) {
        const T* xp = x + p * plane;
        const T m = out[p * pooled + o];
        const bool nan = m != m;
        // The first match in row-major order: scan backwards, keeping the last match seen.
        Index first = -1;
        for (Index y = ys.end - 1; y >= ys.begin; --y)
          for (Index k = static_cast<Index>(count) - 1; k >= 0; --k) {
            const Index at = y * w + x0 + k;
            const T v = xp[at];
            // -1 (all bits) on a match, else 0: a select without a branch, since ties (ReLU's
            // zeros) make the comparison unpredictable and mispredictions cost more than this
            const Index match = -static_cast<Index>((v == m) | (nan & (v != v)));
            first = (at & match) | (first & ~match);
          }
        if (first >= 0) d_in[p * plane + static_cast<std::size_t>(first)] += d_out[p * pooled + o];
      });
}

template <typename T>
void avg_pool(const T* x, T* out, const ConvShape& s) {
  const std::size_t plane = s.h * s.w, pooled = s.positions();
  const Index w = static_cast<Index>(s.w);
  const std::size_t work = s.n * s.c * pooled * s.kh * s.kw;
  for_each_pool_window(
      s, work, [](std::size_t) {},
      [&](std::size_t p, Span ys, Index x0, auto count, std::size_t o) {
        const T* xp = x + p * plane + x0;
        T sum = 0;
        for (Index y = ys.begin; y < ys.end; ++y)
          for (Index k = 0; k < static_cast<Index>(count); ++k) sum += xp[y * w + k];
        out[p * pooled + o] = sum / static_cast<T>((ys.end - ys.begin) * count);
      });
}

template <typename T>
void avg_pool_backward(const T* d_out, T* d_in, const ConvShape& s) {
  const std::size_t plane = s.h * s.w, pooled = s.positions();
  const Index w = static_cast<Index>(s.w);
  const std::size_t work = s.n * s.c * (plane + pooled * s.kh * s.kw);
  for_each_pool_window(
      s, work, [&](std::size_t p) { std::fill(d_in + p * plane, d_in + (p + 1) * plane, T(0)); },
      [&](std::size_t p, Span ys, Index x0, auto count, std::size_t o) {
        T* dp = d_in + p * plane + x0;
        const T g = d_out[p * pooled + o] / static_cast<T>((ys.end - ys.begin) * count);
        for (Index y = ys.begin; y < ys.end; ++y)
          for (Index k = 0; k < static_cast<Index>(count); ++k) dp[y * w + k] += g;
      });
}

#define SPARKBATCH_CONV_INSTANTIATE(T)                                                         \
  template void im2col<T>(const T*, T*, const ConvShape&);                                     \
  template void col2im<T>(const T*, T*, const ConvShape&);                                     \
  template void channels_last<T>(const T*, T*, std::size_t, std::size_t, std::size_t);        \
  template void channels_first<T>(const T*, T*, std::size_t, std::size_t, std::size_t);       \
  template void max_pool<T>(const T*, T*, const ConvShape&);                                   \
  template void max_pool_backward<T>(const T*, const T*, const T*, T*, const ConvShape&);      \
  template void avg_pool<T>(const T*, T*, const ConvShape&);                                   \
  template void avg_pool_backward<T>(const T*, T*, const ConvShape&);

SPARKBATCH_CONV_INSTANTIATE(float)
SPARKBATCH_CONV_INSTANTIATE(double)
#undef SPARKBATCH_CONV_INSTANTIATE

}  // namespace sparkbatch::nn
