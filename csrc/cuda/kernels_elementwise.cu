// The computation graph's vertices on the GPU: the column copies of Merge (concatenation along
// the features) and its gradient, and the element-wise product and max of ElementWise with the
// max's gradient. The copies are one cudaMemcpy2DAsync each; the element-wise kernels are
// grid-stride loops in which each thread reads its element of every input before it writes, so
// an output may be one of the inputs (the same buffer, not a shifted view of it).
#include <cuda_runtime.h>

#include <limits>
#include <stdexcept>

#include "check.hpp"
#include "kernels.hpp"
#include "launch.hpp"

namespace sparkbatch::cuda {
namespace {

// numpy.maximum: NaN when either is NaN (a != a only for a NaN), a on ties, as numpy's loop.
template <typename T>
__device__ __forceinline__ T maximum_of(T a, T b) {
  return (a >= b || a != a) ? a : b;
}

template <typename T>
__global__ void multiply_kernel(const T* a, const T* b, T* out, std::size_t count) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) out[i] = a[i] * b[i];
}

template <typename T>
__global__ void maximum_kernel(const T* a, const T* b, T* out, std::size_t count) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride())
    out[i] = maximum_of(a[i], b[i]);
}

// `claimed` (a NaN) marks an element whose gradient an earlier input took: it equals no x.
template <typename T>
__global__ void max_backward_kernel(const T* dout, const T* x, T* remaining, T* dx,
                                    std::size_t count, T claimed) {
  for (std::size_t i = thread_index(); i < count; i += thread_stride()) {
    if (x[i] == remaining[i]) {
      dx[i] = dout[i];
      remaining[i] = claimed;
    } else {
      dx[i] = T(0);
    }
  }
}

// `rows` rows of `w` elements from src + src_column to dst + dst_column, row-major with the given
// pitches (in elements). Nothing to copy: no call (and no arithmetic on a null pointer).
template <typename T>
void copy_2d(T* dst, std::size_t dst_pitch, std::size_t dst_column, const T* src,
             std::size_t src_pitch, std::size_t src_column, std::size_t rows, std::size_t w,
             const char* what) {
  if (rows == 0 || w == 0) return;
  check(cudaMemcpy2DAsync(dst + dst_column, dst_pitch * sizeof(T), src + src_column,
                          src_pitch * sizeof(T), w * sizeof(T), rows, cudaMemcpyDeviceToDevice,
                          nullptr),
        what);
}

}  // namespace

template <typename T>
void copy_columns(const T* src, T* dst, std::size_t rows, std::size_t w, std::size_t width,
                  std::size_t column) {
  if (column > width || w > width - column)
    throw std::invalid_argument("copy_columns: the columns do not fit in the destination");
  copy_2d(dst, width, column, src, w, 0, rows, w, "cudaMemcpy2DAsync of copy_columns");
}

template <typename T>
void take_columns(const T* src, T* dst, std::size_t rows, std::size_t w, std::size_t width,
                  std::size_t column) {
  if (column > width || w > width - column)
    throw std::invalid_argument("take_columns: the columns do not fit in the source");
  copy_2d(dst, w, 0, src, width, column, rows, w, "cudaMemcpy2DAsync of take_columns");
}

template <typename T>
void multiply(const T* a, const T* b, T* out, std::size_t count) {
  if (count == 0) return;
  multiply_kernel<<<grid_blocks(count), kThreads>>>(a, b, out, count);
  check_launch("multiply_kernel");
}

template <typename T>
void maximum(const T* a, const T* b, T* out, std::size_t count) {
  if (count == 0) return;
  maximum_kernel<<<grid_blocks(count), kThreads>>>(a, b, out, count);
  check_launch("maximum_kernel");
}

template <typename T>
void max_backward(const T* dout, const T* x, T* remaining, T* dx, std::size_t count) {
  if (count == 0) return;
  max_backward_kernel<<<grid_blocks(count), kThreads>>>(dout, x, remaining, dx, count,
                                                        std::numeric_limits<T>::quiet_NaN());
  check_launch("max_backward_kernel");
}

#define SPARKBATCH_CUDA_ELEMENTWISE_INSTANTIATE(T)                                               \
  template void copy_columns<T>(const T*, T*, std::size_t, std::size_t, std::size_t,           \
                                std::size_t);                                                   \
  template void take_columns<T>(const T*, T*, std::size_t, std::size_t, std::size_t,           \
                                std::size_t);                                                   \
  template void multiply<T>(const T*, const T*, T*, std::size_t);                               \
  template void maximum<T>(const T*, const T*, T*, std::size_t);                                \
  template void max_backward<T>(const T*, const T*, T*, T*, std::size_t);

SPARKBATCH_CUDA_ELEMENTWISE_INSTANTIATE(float)
SPARKBATCH_CUDA_ELEMENTWISE_INSTANTIATE(double)

}  // namespace sparkbatch::cuda
