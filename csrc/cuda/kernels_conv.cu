// The convolutional layers' kernels: im2col and its adjoint col2im, the NCHW <-> NHWC batched
// transposes, and max and average pooling with their gradients (the contract is in kernels.hpp,
// the same as the CPU kernels' in conv_kernels.hpp).
//
// NOTE(gather, no atomics): every kernel gives each thread one element of its output and
// computes it whole. The adjoints (col2im, the pools' backward passes) would scatter-add from
// overlapping windows; here instead each thread owns one input pixel and sums, in a fixed order
// (windows by output row, then output column), the contributions of the windows that cover it.
// No atomics, no races, and the same inputs give bit-identical results on every run. That order
// is the one in which the CPU kernels (conv_kernels.cpp) add into each pixel, so with the
// module's --fmad=false the two devices add the same numbers in the same order.
//
// NOTE(32-bit indices): index arithmetic (divisions above all) costs twice as much in 64 bits, so
// every kernel is instantiated for uint32_t and uint64_t indices and the host picks uint32_t
// when every flat index and padded coordinate of the call stays below 2^31. All arithmetic is
// unsigned: a coordinate in the image is the padded coordinate minus the padding, tested against
// the padding before it is subtracted.
#include <cuda_runtime.h>
#include <math.h>

#include <algorithm>
#include <cstdint>

#include "check.hpp"
#include "kernels.hpp"
#include "launch.hpp"

namespace sparkbatch::cuda {
namespace {

// The geometry in the kernels' index type.
template <typename I>
struct Geo {
  I c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

template <typename I>
Geo<I> geo_of(const ConvGeometry& g) {
  return {static_cast<I>(g.c),  static_cast<I>(g.h),  static_cast<I>(g.w),  static_cast<I>(g.kh),
          static_cast<I>(g.kw), static_cast<I>(g.sh), static_cast<I>(g.sw), static_cast<I>(g.ph),
          static_cast<I>(g.pw), static_cast<I>(g.oh), static_cast<I>(g.ow)};
}

#define SPARKBATCH_HD __host__ __device__ __forceinline__

template <typename I>
SPARKBATCH_HD I lesser(I a, I b) {
  return a < b ? a : b;
}

// The rows (or columns) of the image that window `o` covers: [lo, hi) in image coordinates,
// for a window of `k` starting at padded coordinate o * s.
template <typename I>
SPARKBATCH_HD void window_span(I o, I s, I k, I pad, I size, I& lo, I& hi) {
  const I start = o * s;  // padded
  lo = start > pad ? start - pad : I(0);
  hi = start + k > pad ? lesser(start + k - pad, size) : I(0);
}

// The windows that cover image coordinate `y`: [first, last] (empty when first > last).
template <typename I>
SPARKBATCH_HD void covering(I y, I s, I k, I pad, I outs, I& first, I& last) {
  const I yp = y + pad;  // padded coordinate: window o covers it when o*s <= yp < o*s + k
  first = yp >= k ? (yp - k) / s + 1 : I(0);
  last = lesser(yp / s, outs - 1);
}

// NOTE(one element per call): each kernel below is a grid-stride loop around one of these
// functions, which compute one output element from flat index idx. They are __host__ too, but
// nothing calls them on the host (this file is nvcc's alone): the GPU tests check them.

// col[idx] of im2col.
template <typename T, typename I>
SPARKBATCH_HD T im2col_at(const T* x, const Geo<I>& g, I idx) {
  const I taps = g.kh * g.kw;
  const I width = g.c * taps;  // K
  const I positions = g.oh * g.ow;
  const I row = idx / width;
  const I k = idx - row * width;
  const I i = row / positions;
  const I p = row - i * positions;
  const I oy = p / g.ow;
  const I ox = p - oy * g.ow;
  const I ci = k / taps;
  const I tap = k - ci * taps;
  const I ky = tap / g.kw;
  const I kx = tap - ky * g.kw;
  const I yy = oy * g.sh + ky;  // padded coordinates
  const I xx = ox * g.sw + kx;
  if (yy < g.ph || xx < g.pw || yy - g.ph >= g.h || xx - g.pw >= g.w) return T(0);
  return x[((i * g.c + ci) * g.h + (yy - g.ph)) * g.w + (xx - g.pw)];
}

// x[idx] of col2im: the sum over the windows covering the pixel, by output row then column.
template <typename T, typename I>
SPARKBATCH_HD T col2im_at(const T* col, const Geo<I>& g, I idx) {
  const I taps = g.kh * g.kw;
  const I width = g.c * taps;
  const I positions = g.oh * g.ow;
  const I px = idx % g.w;
  I t = idx / g.w;
  const I py = t % g.h;
  t /= g.h;
  const I ci = t % g.c;
  const I i = t / g.c;
  I oy0, oy1, ox0, ox1;
  covering(py, g.sh, g.kh, g.ph, g.oh, oy0, oy1);
  covering(px, g.sw, g.kw, g.pw, g.ow, ox0, ox1);
  const T* rows = col + i * positions * width + ci * taps;
  T sum = T(0);
  for (I oy = oy0; oy <= oy1; ++oy) {
    const I ky = py + g.ph - oy * g.sh;
    for (I ox = ox0; ox <= ox1; ++ox) {
      const I kx = px + g.pw - ox * g.sw;
      sum += rows[(oy * g.ow + ox) * width + ky * g.kw + kx];
    }
  }
  return sum;
}

// The image plane and output position of pooled element `idx` ([n * c, oh, ow] flattened).
template <typename I>
SPARKBATCH_HD void pooled(I idx, const Geo<I>& g, I& plane, I& oy, I& ox) {
  ox = idx % g.ow;
  const I t = idx / g.ow;
  oy = t % g.oh;
  plane = t / g.oh;
}

// NaN propagates: the maximum of a window holding a NaN is NaN (as numpy.max).
template <typename T>
SPARKBATCH_HD T nan_max(T m, T v) {
  return (v > m || v != v) ? v : m;
}

template <typename T, typename I>
SPARKBATCH_HD T max_pool_at(const T* x, const Geo<I>& g, I idx) {
  I plane, oy, ox, y0, y1, x0, x1;
  pooled(idx, g, plane, oy, ox);
  window_span(oy, g.sh, g.kh, g.ph, g.h, y0, y1);
  window_span(ox, g.sw, g.kw, g.pw, g.w, x0, x1);
  const T* img = x + plane * g.h * g.w;
  // Every window holds a pixel (the host checks padding < kernel); an empty one reads -inf.
  T m = T(-INFINITY);
  if (y0 < y1 && x0 < x1) m = img[y0 * g.w + x0];
  for (I y = y0; y < y1; ++y)
    for (I xx = x0; xx < x1; ++xx) m = nan_max(m, img[y * g.w + xx]);
  return m;
}

// Whether pixel v is the window's maximum m: equal, or both NaN (a NaN maximum's gradient goes to
// the window's first NaN, as on the CPU).
template <typename T>
SPARKBATCH_HD bool holds_max(T v, T m) {
  return v == m || (v != v && m != m);
}

// d_in[idx] of max pooling: d_out summed over the windows whose FIRST (row-major) pixel holding
// the window's maximum is this pixel; scanning each window up to the pixel tells.
template <typename T, typename I>
SPARKBATCH_HD T max_pool_backward_at(const T* x, const T* out, const T* d_out, const Geo<I>& g,
                                     I idx) {
  const I outs = g.oh * g.ow;
  const I px = idx % g.w;
  const I t = idx / g.w;
  const I py = t % g.h;
  const I plane = t / g.h;
  const T* img = x + plane * g.h * g.w;
  const T* o = out + plane * outs;
  const T* d = d_out + plane * outs;
  const T mine = img[py * g.w + px];
  I oy0, oy1, ox0, ox1;
  covering(py, g.sh, g.kh, g.ph, g.oh, oy0, oy1);
  covering(px, g.sw, g.kw, g.pw, g.ow, ox0, ox1);
  T sum = T(0);
  for (I oy = oy0; oy <= oy1; ++oy) {
    I y0, y1;
    window_span(oy, g.sh, g.kh, g.ph, g.h, y0, y1);
    for (I ox = ox0; ox <= ox1; ++ox) {
      const T m = o[oy * g.ow + ox];
      if (!holds_max(mine, m)) continue;
      I x0, x1;
      window_span(ox, g.sw, g.kw, g.pw, g.w, x0, x1);
      bool first = true;  // no earlier pixel of the window holds m
      for (I y = y0; y <= py && first; ++y) {
        const I end = y < py ? x1 : px;
        for (I xx = x0; xx < end; ++xx)
          if (holds_max(img[y * g.w + xx], m)) {
            first = false;
            break;
          }
      }
      if (first) sum += d[oy * g.ow + ox];
    }
  }
  return sum;
}

template <typename T, typename I>
SPARKBATCH_HD T avg_pool_at(const T* x, const Geo<I>& g, I idx) {
  I plane, oy, ox, y0, y1, x0, x1;
  pooled(idx, g, plane, oy, ox);
  window_span(oy, g.sh, g.kh, g.ph, g.h, y0, y1);
  window_span(ox, g.sw, g.kw, g.pw, g.w, x0, x1);
  const T* img = x + plane * g.h * g.w;
  T sum = T(0);
  for (I y = y0; y < y1; ++y)
    for (I xx = x0; xx < x1; ++xx) sum += img[y * g.w + xx];
  return sum / static_cast<T>((y1 - y0) * (x1 - x0));
}

template <typename T, typename I>
SPARKBATCH_HD T avg_pool_backward_at(const T* d_out, const Geo<I>& g, I idx) {
  const I px = idx % g.w;
  const I t = idx / g.w;
  const I py = t % g.h;
  const I plane = t / g.h;
  const T* d = d_out + plane * g.oh * g.ow;
  I oy0, oy1, ox0, ox1;
  covering(py, g.sh, g.kh, g.ph, g.oh, oy0, oy1);
  covering(px, g.sw, g.kw, g.pw, g.ow, ox0, ox1);
  T sum = T(0);
  for (I oy = oy0; oy <= oy1; ++oy) {
    I y0, y1;
    window_span(oy, g.sh, g.kh, g.ph, g.h, y0, y1);
    for (I ox = ox0; ox <= ox1; ++ox) {
      I x0, x1;
      window_span(ox, g.sw, g.kw, g.pw, g.w, x0, x1);
      sum += d[oy * g.ow + ox] / static_cast<T>((y1 - y0) * (x1 - x0));
    }
  }
  return sum;
}

#undef SPARKBATCH_HD

// The grid-stride loops: out[idx] = at(idx) for idx in [0, total).
#define SPARKBATCH_CONV_KERNEL(name, params, call)                                  \
  template <typename T, typename I>                                                 \
  __global__ void name##_kernel params {                                            \
    for (I idx = static_cast<I>(thread_index()); idx < total;                       \
         idx += static_cast<I>(thread_stride()))                                    \
      out[idx] = call;                                                              \
  }

SPARKBATCH_CONV_KERNEL(im2col, (const T* x, T* out, Geo<I> g, I total), im2col_at(x, g, idx))
SPARKBATCH_CONV_KERNEL(col2im, (const T* col, T* out, Geo<I> g, I total),
                       col2im_at(col, g, idx))
SPARKBATCH_CONV_KERNEL(max_pool, (const T* x, T* out, Geo<I> g, I total),
                       max_pool_at(x, g, idx))
SPARKBATCH_CONV_KERNEL(max_pool_backward,
                       (const T* x, const T* pooled, const T* d_out, T* out, Geo<I> g, I total),
                       max_pool_backward_at(x, pooled, d_out, g, idx))
SPARKBATCH_CONV_KERNEL(avg_pool, (const T* x, T* out, Geo<I> g, I total),
                       avg_pool_at(x, g, idx))
SPARKBATCH_CONV_KERNEL(avg_pool_backward, (const T* d_out, T* out, Geo<I> g, I total),
                       avg_pool_backward_at(d_out, g, idx))
#undef SPARKBATCH_CONV_KERNEL

// NOTE(batched transpose): src [n, rows, cols] -> dst [n, cols, rows] through a 32 x 33 tile of
// shared memory (the extra column keeps the transposed reads free of bank conflicts), so both
// the reads and the writes are coalesced. Blocks of 32 x 8 threads loop over the tiles of all n
// matrices; a tile's index is uniform over its block, so every thread reaches each barrier.
constexpr unsigned kTile = 32;
constexpr unsigned kTileRows = kThreads / kTile;
static_assert(kTile * kTileRows == kThreads, "a transpose block is kThreads threads");

template <typename T, typename I>
__global__ void transpose_kernel(const T* src, T* dst, I rows, I cols, I tiles_r, I tiles_c,
                                 I tiles) {
  __shared__ T tile[kTile][kTile + 1];
  const I per_matrix = tiles_r * tiles_c;
  for (I t = blockIdx.x; t < tiles; t += gridDim.x) {
    const I b = t / per_matrix;
    const I rest = t - b * per_matrix;
    const I r0 = rest / tiles_c * kTile;
    const I c0 = rest % tiles_c * kTile;
    const T* s = src + b * rows * cols;
    T* d = dst + b * rows * cols;
    const I cc = c0 + threadIdx.x;
    for (unsigned j = threadIdx.y; j < kTile; j += kTileRows) {
      const I r = r0 + j;
      if (r < rows && cc < cols) tile[j][threadIdx.x] = s[r * cols + cc];
    }
    __syncthreads();
    const I r = r0 + threadIdx.x;
    for (unsigned j = threadIdx.y; j < kTile; j += kTileRows) {
      const I dc = c0 + j;
      if (dc < cols && r < rows) d[dc * rows + r] = tile[threadIdx.x][j];
    }
    __syncthreads();  // the tile is rewritten by the next iteration
  }
}

constexpr std::size_t kSmall = std::size_t{1} << 31;

// Whether 32-bit indices suffice: every flat index below `largest` and every padded coordinate
// (at most the padded size plus a kernel) below 2^31.
bool small(const ConvGeometry& g, std::size_t largest) {
  return largest < kSmall && g.h + 2 * g.ph + g.kh < kSmall && g.w + 2 * g.pw + g.kw < kSmall;
}

// Calls launch(Geo<I>, I total) with I = uint32_t when that suffices, else uint64_t.
template <typename F>
void dispatch(const ConvGeometry& g, std::size_t total, std::size_t largest, F&& launch) {
  if (small(g, largest))
    launch(geo_of<uint32_t>(g), static_cast<uint32_t>(total));
  else
    launch(geo_of<uint64_t>(g), static_cast<uint64_t>(total));
}

std::size_t image_size(const ConvGeometry& g) { return g.n * g.c * g.h * g.w; }
std::size_t col_size(const ConvGeometry& g) {
  return g.n * g.oh * g.ow * g.c * g.kh * g.kw;
}
std::size_t pooled_size(const ConvGeometry& g) { return g.n * g.c * g.oh * g.ow; }

template <typename T>
void transpose(const T* src, T* dst, std::size_t n, std::size_t rows, std::size_t cols) {
  const std::size_t total = n * rows * cols;
  if (total == 0) return;
  if (rows == 1 || cols == 1) {  // the same memory order either way
    check(cudaMemcpyAsync(dst, src, total * sizeof(T), cudaMemcpyDeviceToDevice),
          "cudaMemcpyAsync (batched transpose)");
    return;
  }
  const std::size_t tiles_r = (rows + kTile - 1) / kTile;
  const std::size_t tiles_c = (cols + kTile - 1) / kTile;
  const std::size_t tiles = n * tiles_r * tiles_c;
  const auto blocks = static_cast<unsigned>(std::min(tiles, kMaxGridBlocks));
  const dim3 block(kTile, kTileRows);
  if (total < kSmall)
    transpose_kernel<T, uint32_t><<<blocks, block>>>(
        src, dst, static_cast<uint32_t>(rows), static_cast<uint32_t>(cols),
        static_cast<uint32_t>(tiles_r), static_cast<uint32_t>(tiles_c),
        static_cast<uint32_t>(tiles));
  else
    transpose_kernel<T, uint64_t><<<blocks, block>>>(src, dst, rows, cols, tiles_r, tiles_c,
                                                     tiles);
  check_launch("transpose_kernel");
}

}  // namespace

template <typename T>
void im2col(const T* x, T* col, const ConvGeometry& g) {
  const std::size_t total = col_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, image_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    im2col_kernel<T, I><<<grid_blocks(total), kThreads>>>(x, col, geo, count);
  });
  check_launch("im2col_kernel");
}

template <typename T>
void col2im(const T* col, T* x, const ConvGeometry& g) {
  const std::size_t total = image_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, col_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    col2im_kernel<T, I><<<grid_blocks(total), kThreads>>>(col, x, geo, count);
  });
  check_launch("col2im_kernel");
}

template <typename T>
void channels_last(const T* src, T* dst, std::size_t n, std::size_t channels,
                   std::size_t positions) {
  transpose(src, dst, n, channels, positions);
}

template <typename T>
void channels_first(const T* src, T* dst, std::size_t n, std::size_t channels,
                    std::size_t positions) {
  transpose(src, dst, n, positions, channels);
}

template <typename T>
void max_pool(const T* x, T* out, const ConvGeometry& g) {
  const std::size_t total = pooled_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, image_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    max_pool_kernel<T, I><<<grid_blocks(total), kThreads>>>(x, out, geo, count);
  });
  check_launch("max_pool_kernel");
}

template <typename T>
void max_pool_backward(const T* x, const T* out, const T* d_out, T* d_in,
                       const ConvGeometry& g) {
  const std::size_t total = image_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, pooled_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    max_pool_backward_kernel<T, I><<<grid_blocks(total), kThreads>>>(x, out, d_out, d_in, geo,
                                                                     count);
  });
  check_launch("max_pool_backward_kernel");
}

template <typename T>
void avg_pool(const T* x, T* out, const ConvGeometry& g) {
  const std::size_t total = pooled_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, image_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    avg_pool_kernel<T, I><<<grid_blocks(total), kThreads>>>(x, out, geo, count);
  });
  check_launch("avg_pool_kernel");
}

template <typename T>
void avg_pool_backward(const T* d_out, T* d_in, const ConvGeometry& g) {
  const std::size_t total = image_size(g);
  if (total == 0) return;
  dispatch(g, total, std::max(total, pooled_size(g)), [&](auto geo, auto count) {
    using I = decltype(count);
    avg_pool_backward_kernel<T, I><<<grid_blocks(total), kThreads>>>(d_out, d_in, geo, count);
  });
  check_launch("avg_pool_backward_kernel");
}

#define SPARKBATCH_CUDA_CONV_INSTANTIATE(T)                                                   \
  template void im2col<T>(const T*, T*, const ConvGeometry&);                                 \
  template void col2im<T>(const T*, T*, const ConvGeometry&);                                 \
  template void channels_last<T>(const T*, T*, std::size_t, std::size_t, std::size_t);        \
  template void channels_first<T>(const T*, T*, std::size_t, std::size_t, std::size_t);       \
  template void max_pool<T>(const T*, T*, const ConvGeometry&);                               \
  template void max_pool_backward<T>(const T*, const T*, const T*, T*, const ConvGeometry&);  \
  template void avg_pool<T>(const T*, T*, const ConvGeometry&);                               \
  template void avg_pool_backward<T>(const T*, T*, const ConvGeometry&);

SPARKBATCH_CUDA_CONV_INSTANTIATE(float)
SPARKBATCH_CUDA_CONV_INSTANTIATE(double)

}  // namespace sparkbatch::cuda
