// The CUDA kernels of the built-in network, as host functions that launch them on the legacy
// default stream of the current device. Each does what the CPU kernel of the same name in
// nn_kernels.hpp does, with the same argument meanings, by calling the element-wise functions
// of nn_math.hpp once per thread; see nn_kernels.hpp for the contracts. All pointers are device
// pointers; sizes of zero launch nothing. A launch failure throws CudaError (check.hpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "nn_math.hpp"

namespace sparkbatch::cuda {

using nn::Activation;
using nn::Loss;
using nn::Updater;

using nn::LossWeights;
using nn::UpdaterHyper;

template <typename T>
void bias_activation(T* z, const T* bias, T* a, std::size_t n, std::size_t m, Activation act,
                     T alpha);

template <typename T>
void activation_backward(const T* da, const T* z, const T* a, T* dz, T* db, std::size_t n,
                         std::size_t m, Activation act, T alpha);

// Doubles of scratch that output_layer and loss_sum need for n rows.
std::size_t rows_scratch(std::size_t n);

// Returns the sum of the weighted loss terms, reduced on the device; `scratch` holds
// rows_scratch(n) doubles. Synchronises (it copies the sum back).
template <typename T>
double output_layer(Loss loss, Activation act, T alpha, T* z, const T* bias, const T* labels,
                    LossWeights<T> weights, T* a, T* dz, T* db, std::size_t n, std::size_t m,
                    T scale, double* scratch);

template <typename T>
double loss_sum(Loss loss, Activation act, const T* z, const T* a, const T* labels,
                LossWeights<T> weights, std::size_t n, std::size_t m, double* scratch);

template <typename T>
void updater_step(Updater u, T* params, const T* grads, T* state, std::size_t count,
                  const UpdaterHyper& h);

// The most buffers one average() call takes (their pointers travel as a kernel argument).
constexpr std::size_t kMaxAverage = 64;

template <typename T>
void average(const T* const* buffers, std::size_t k, T* out, std::size_t count, double divisor);

template <typename T>
void add_into(T* acc, const T* x, std::size_t count);

template <typename T>
void axpy(T* y, const T* x, T alpha, std::size_t count);

template <typename T>
void dropout(T* x, std::size_t count, double rate, uint64_t seed);

// Doubles of scratch that sum_squares needs.
std::size_t sum_scratch();

// sum(x_i^2) accumulated in double, for the L2 penalty; synchronises.
template <typename T>
double sum_squares(const T* x, std::size_t count, double* scratch);

// How many values of x are NaN or infinite (scratch: sum_scratch() doubles); synchronises. The
// GPU step's check of its gradient buffer, the CPU's first_non_finite (nn_kernels.hpp) counted.
template <typename T>
std::size_t count_non_finite(const T* x, std::size_t count, double* scratch);

// -- the computation graph's vertices (kernels_elementwise.cu) ---------------------------------

// Merge (concatenation along the features), row-major matrices: dst[:, column:column + w] = src
// for src [rows, w] and dst [rows, width], as one device-to-device cudaMemcpy2DAsync (no kernel);
// column + w <= width and the two must not overlap.
template <typename T>
void copy_columns(const T* src, T* dst, std::size_t rows, std::size_t w, std::size_t width,
                  std::size_t column);

// The reverse copy, Merge's gradient: dst = src[:, column:column + w] for src [rows, width] and
// dst [rows, w].
template <typename T>
void take_columns(const T* src, T* dst, std::size_t rows, std::size_t w, std::size_t width,
                  std::size_t column);

// ElementWise product: out = a * b; out may be a or b.
template <typename T>
void multiply(const T* a, const T* b, T* out, std::size_t count);

// ElementWise max: out = max(a, b), NaN if either is (numpy.maximum); out may be a or b.
template <typename T>
void maximum(const T* a, const T* b, T* out, std::size_t count);

// The gradient of a max vertex for one of its inputs x, called for each input in order with
// `remaining` first a copy of the max: where x == remaining, dx = dout and remaining becomes NaN
// (so a tie gives the gradient to the first input only); elsewhere dx = 0. dx is neither dout nor
// x, and remaining is none of the others.
template <typename T>
void max_backward(const T* dout, const T* x, T* remaining, T* dx, std::size_t count);

// -- the LSTM's gate arithmetic (kernels_recurrent.cu) -------------------------------------------

// One LSTM step, forward and backward: see lstm_forward_step and lstm_backward_step in
// nn_kernels.hpp (the structs are in nn_math.hpp). `act` and `gate` are identity, tanh or sigmoid.
template <typename T>
void lstm_forward_step(const nn::LstmForwardStep<T>& p, Activation act, Activation gate);

template <typename T>
void lstm_backward_step(const nn::LstmBackwardStep<T>& p, Activation act, Activation gate);

// -- the convolutional layers (kernels_conv.cu) ---------------------------------------------------

// One convolution or pooling call: n images of c channels, h x w pixels (NCHW, C-contiguous), a
// kh x kw window moved by (sh, sw) over the image padded by (ph, pw) on each side, giving
// oh x ow output positions: oh = (h + 2 ph - kh) / sh + 1, ow likewise (the caller checks that
// both are >= 1, and for pooling that ph < kh and pw < kw, so that every window holds a pixel).
struct ConvGeometry {
  std::size_t n, c, h, w, kh, kw, sh, sw, ph, pw, oh, ow;
};

// col [n * oh * ow, c * kh * kw]: row i * P + oy * ow + ox, column ci * kh * kw + ky * kw + kx
// holds x[i, ci, oy * sh - ph + ky, ox * sw - pw + kx] (0 outside the image). x and col apart.
template <typename T>
void im2col(const T* x, T* col, const ConvGeometry& g);

// The adjoint of im2col: x (overwritten) = the sum of the col entries that map to each pixel.
template <typename T>
void col2im(const T* col, T* x, const ConvGeometry& g);

// src [n, channels, positions] -> dst [n, positions, channels] (NCHW -> NHWC), and back; src and
// dst apart.
template <typename T>
void channels_last(const T* src, T* dst, std::size_t n, std::size_t channels,
                   std::size_t positions);

template <typename T>
void channels_first(const T* src, T* dst, std::size_t n, std::size_t channels,
                    std::size_t positions);

// out [n, c, oh, ow] = the maximum of each window's pixels (NaN if one is NaN).
template <typename T>
void max_pool(const T* x, T* out, const ConvGeometry& g);

// d_in (overwritten) = each window's d_out given to its first pixel (row-major) equal to its
// out (a NaN out: its first NaN); overlapping windows add.
template <typename T>
void max_pool_backward(const T* x, const T* out, const T* d_out, T* d_in, const ConvGeometry& g);

// out = the mean of each window's pixels (the padding is not counted).
template <typename T>
void avg_pool(const T* x, T* out, const ConvGeometry& g);

// d_in (overwritten) = each window's d_out / its pixel count, spread over its pixels.
template <typename T>
void avg_pool_backward(const T* d_out, T* d_in, const ConvGeometry& g);

}  // namespace sparkbatch::cuda
