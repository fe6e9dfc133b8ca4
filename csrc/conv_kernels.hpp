// The CPU kernels of the convolutional layers (Conv2D, MaxPool2D, AvgPool2D): im2col and its
// adjoint col2im, the batched NCHW <-> NHWC transposes around the convolution's matrix product,
// and max and average pooling with their gradients. The CUDA kernels (csrc/cuda) share these
// contracts, which docs/convolution.md and sparkbatch.nn.backend.Backend describe.
//
// Layout: x is [n, c, h, w] (NCHW, C-contiguous). With oh = (h + 2*ph - kh) / sh + 1,
// ow = (w + 2*pw - kw) / sw + 1, P = oh*ow and K = c*kh*kw, col is [n*P, K]: row i*P + oy*ow + ox
// holds the receptive field of output position (oy, ox) of example i, column ci*kh*kw + ky*kw + kx
// the pixel x[i, ci, oy*sh - ph + ky, ox*sw - pw + kx] (0 outside the image). Pooled outputs are
// [n, c, oh, ow]. Padding is zeros for im2col; pooling ignores it (windows count only their
// in-image positions, and must hold at least one: ph < kh and pw < kw).
//
// Work is split over the thread pool by example (or by image plane) when it is large enough;
// every output element is written by one thread, so results do not depend on the thread count.
#pragma once

#include <cstddef>

namespace sparkbatch::nn {

// The sizes of one convolution or pooling window over an image batch.
struct ConvShape {
  std::size_t n = 0, c = 0, h = 0, w = 0;  // input [n, c, h, w]
  std::size_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;

  // Output height and width; 0 when the window does not fit (callers refuse that).
  std::size_t out_h() const { return h + 2 * ph < kh ? 0 : (h + 2 * ph - kh) / sh + 1; }
  std::size_t out_w() const { return w + 2 * pw < kw ? 0 : (w + 2 * pw - kw) / sw + 1; }
  std::size_t positions() const { return out_h() * out_w(); }  // P
  std::size_t patch() const { return c * kh * kw; }            // K
  std::size_t image() const { return c * h * w; }
};

// col [n*P, K] = the receptive fields of x [n, c*h*w] (zeros for padding).
template <typename T>
void im2col(const T* x, T* col, const ConvShape& s);

// The adjoint of im2col: x [n, c*h*w] is overwritten with the sum of the col entries that map to
// each pixel (0 where none does).
template <typename T>
void col2im(const T* col, T* x, const ConvShape& s);

// dst[i, p, ch] = src[i, ch, p] for src [n, channels, positions] (NCHW -> NHWC).
template <typename T>
void channels_last(const T* src, T* dst, std::size_t n, std::size_t channels,
                   std::size_t positions);

// dst[i, ch, p] = src[i, p, ch] for src [n, positions, channels] (NHWC -> NCHW).
template <typename T>
void channels_first(const T* src, T* dst, std::size_t n, std::size_t channels,
                    std::size_t positions);

// out [n, c*P] = the max over each window's in-image positions; a NaN in a window gives NaN.
template <typename T>
void max_pool(const T* x, T* out, const ConvShape& s);

// d_in [n, c*h*w] overwritten: each window's d_out goes to the first in-image position
// (row-major in the window) whose x equals the window's out (a NaN out: the first NaN);
// overlapping windows accumulate.
template <typename T>
void max_pool_backward(const T* x, const T* out, const T* d_out, T* d_in, const ConvShape& s);

// out [n, c*P] = the mean over each window's in-image positions (padding not counted).
template <typename T>
void avg_pool(const T* x, T* out, const ConvShape& s);

// d_in [n, c*h*w] overwritten: each window's d_out / count spread over its in-image positions.
template <typename T>
void avg_pool_backward(const T* d_out, T* d_in, const ConvShape& s);

}  // namespace sparkbatch::nn
